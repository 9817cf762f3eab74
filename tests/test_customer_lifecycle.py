"""Customers kept beyond the windows: lifecycle stages, and nobody onboarded twice.

A customer silent for 110 days used to vanish with its 90-day key and come back as new:
tenure 0, placed by the early-life classifier, a second `first: true` (the onboarding
flow again). Now its profile outlives the windows: it turns `dormant` after
`SEGSTREAM_DORMANT_DAYS`, comes back `returning` (a `lifecycle_changed` alert), keeps its
segment, and replay and the worker (event clock) decide the same alerts.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from stream.decide import DAY
from stream.metrics import Metrics
from stream.replay import replay
from stream.runtime import open_runtime
from stream.settings import StreamSettings
from stream.worker import Message, Worker
from tests.support import discard, unique

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def history(folder: Path) -> tuple[Path, list[bytes]]:
    """Three steady customers (an event a day for 160 days) and three who stop on day 40
    and come back on day 150."""
    lines = []
    for day in range(160):
        for i in range(3):
            for who, active in ((f"steady-{i}", True), (f"back-{i}", day < 40 or day >= 150)):
                if active:
                    ts = START + day * DAY + 3600 * (i + 1)
                    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    kind = "purchase" if day % 7 == 0 else "session_start"
                    props = {"amount": 20.0} if kind == "purchase" else {}
                    lines.append(
                        {
                            "event_id": f"{who}-{day}",
                            "customer_id": who,
                            "type": kind,
                            "ts": stamp,
                            "properties": props,
                        }
                    )
    lines.sort(key=lambda e: e["ts"])
    path = folder / "events.jsonl"
    raw = [json.dumps(e).encode() for e in lines]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path, raw


def settings() -> StreamSettings:
    return StreamSettings(
        redis_url="memory://", key_prefix=unique("segstream-test-life"), clock="event",
        metrics_port=0, web_port=0,
    )  # fmt: skip


def by_kind(bodies: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [b for b in bodies if b["type"] == kind]


def test_a_returning_customer_is_dormant_then_returning_and_never_onboarded_twice(
    tmp_path: Path, trained_bundle: Path
) -> None:
    events, raw = history(tmp_path)

    async def through_replay() -> list[dict[str, Any]]:
        runtime = await open_runtime(settings(), model_path=trained_bundle)
        try:
            await replay(runtime.engine, events, tmp_path / "alerts.jsonl")
        finally:
            await runtime.close()
        return [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]

    async def through_worker() -> list[dict[str, Any]]:
        s = settings()
        runtime = await open_runtime(s, model_path=trained_bundle)
        worker = Worker(
            runtime.engine, s, Metrics(CollectorRegistry()), clock=lambda: START + 400 * DAY
        )
        out = []
        try:
            for lo in range(0, len(raw), 97):  # batches cut anywhere
                batch = [Message(v, 0, i) for i, v in enumerate(raw[lo : lo + 97], lo)]
                out += await worker.handle(batch, discard)
            stages = await runtime.engine.assignments.stages(runtime.engine.bundle.version)
        finally:
            await runtime.close()
        assert {k: n for k, n in stages.items() if n} == {"active": 3, "returning": 3}
        return [json.loads(o.value) for o in out if o.topic != s.dlq_topic]

    replayed = asyncio.run(through_replay())
    lived = asyncio.run(through_worker())

    firsts = Counter(b["customer_id"] for b in by_kind(replayed, "segment_assigned") if b["first"])
    assert set(firsts.values()) == {1} and len(firsts) == 6
    changes = by_kind(replayed, "lifecycle_changed")
    for i in range(3):
        steps = [
            (b["previous_stage"], b["stage"]) for b in changes if b["customer_id"] == f"back-{i}"
        ]
        assert steps == [("new", "active"), ("active", "dormant"), ("dormant", "returning")]
        came_back = [
            b for b in changes if b["customer_id"] == f"back-{i}" and b["stage"] == "returning"
        ]
        assert came_back[0]["days_silent"] >= 109
        assert came_back[0]["segment_id"] is not None  # the segment it had, kept
        steady = [
            (b["previous_stage"], b["stage"]) for b in changes if b["customer_id"] == f"steady-{i}"
        ]
        assert steady == [("new", "active")]
    # The worker on the event clock decides exactly what replay decides.
    ids = {
        k: sorted(b["alert_id"] for b in by_kind(replayed, k))
        for k in ("segment_assigned", "lifecycle_changed")
    }
    assert ids == {k: sorted(b["alert_id"] for b in by_kind(lived, k)) for k in ids}
