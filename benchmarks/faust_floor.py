"""faust's own cost per event: the worker's app and batch loop with no work in the batch.

Run as a process by `benchmarks.e2e.floor_once` (``python -m benchmarks.faust_floor N OUT``),
with the same ``SEGSTREAM_*`` environment a benchmarked worker gets. The app comes from
`stream.app.new_app` (the worker's broker, consumer-group and fetch options) and its agent
reads the input topic with ``take_events(batch_size, within=batch_seconds)`` and builds the
core's `Message` list, as the worker's agent does, then drops the batch. When N events have
arrived it writes ``{"events": N, "seconds": first batch -> N-th event}`` to the file OUT
(faust sends a worker's stdout to its log) and exits.

So the end-to-end figures have a ceiling beside them: no worker built on this faust app
can process events faster than this on the same machine and broker.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust

from stream.app import input_topic, new_app
from stream.settings import StreamSettings
from stream.worker import Message


def main(expected: int, out: Path) -> None:
    settings = StreamSettings()
    app = new_app(settings)
    seen = {"events": 0}
    started: list[float] = []

    @app.agent(input_topic(app, settings))  # type: ignore[untyped-decorator]
    async def drain(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_seconds):
            if not started:
                started.append(time.perf_counter())
            batch = [Message(e.value, e.message.partition, e.message.offset) for e in events]
            seen["events"] += len(batch)
            if seen["events"] >= expected:
                seconds = time.perf_counter() - started[0]
                out.write_text(json.dumps({"events": seen["events"], "seconds": seconds}))
                # The measurement is taken; faust's orderly shutdown (commit, leave the
                # group) would only add seconds the caller does not time.
                os._exit(0)

    faust.Worker(app, loglevel="warning").execute_from_commandline()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
