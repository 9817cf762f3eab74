"""Worker processes in one consumer group, for end-to-end tests (issue 8, issue 20).

`Group` runs `segstream worker` subprocesses (each with its own metrics port and log) over
a broker and a Redis URL, knows the last offset produced into each input partition and
waits, with a generous deadline rather than a sleep, until the group's committed offsets
cover them. `Proc` is one worker: its metrics, its batch count, SIGKILL. `check_end_state`
checks what any correct run over a history leaves: features equal to the batch reference
and every customer's first assignment published.

Shared by tests/test_crash.py and tests/test_scale_out.py (tests never import each other).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from models.catalog import default_catalog
from models.eventfile import read_events
from offline.reference import events_frame, features_at
from stream.broker import create_topics
from stream.children import HOST, free_port
from stream.children import stop as stop_process
from stream.redis_conn import connect
from stream.settings import StreamSettings
from stream.store import RedisFeatureStore
from tests.kafka_support import KafkaBroker
from tests.store_checks import assert_matches_reference
from tests.support import alert_topics, outputs, produce, records_by_topic, settings_for

DONE_TIMEOUT = 120.0  # a guard against a hung scenario, not a timing assertion


# --- the history and what it must produce ------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A history's records and what any correct run over it must leave behind."""

    records: list[tuple[bytes, bytes]]
    events_path: Path
    alert_ids: set[str]
    first_ids: set[str]  # each customer's first segment_assigned: order-independent


def check_end_state(
    settings: StreamSettings, redis_url: str, broker: KafkaBroker, expected: Expected
) -> set[str]:
    """Features equal the batch reference, and every customer's first assignment (the alert
    onboarding flows key on) was published with replay's id. Returns the expected alert ids
    that were not published.
    """
    catalog = default_catalog()
    events = list(read_events(expected.events_path))
    at = max(e.epoch for e in events)
    want = features_at(events_frame(events, catalog), catalog, at)

    async def read() -> tuple[Any, dict[str, list[Any]]]:
        conn = await connect(redis_url)
        try:
            store = RedisFeatureStore(conn.client, catalog, prefix=settings.key_prefix)
            got = await store.read(list(want.index), at=at)
        finally:
            await conn.close()
        found = await records_by_topic(broker.bootstrap, alert_topics(settings))
        return got, found

    got, found = asyncio.run(read())
    assert_matches_reference(got.customers, got.values, want, catalog)
    published = {json.loads(r.value)["alert_id"] for rs in found.values() for r in rs}
    missing_firsts = expected.first_ids - published
    assert not missing_firsts, f"{len(missing_firsts)} first assignments missing"
    return expected.alert_ids - published


# --- worker processes --------------------------------------------------------------------


def segstream_command() -> list[str]:
    script = Path(sys.executable).parent / "segstream"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from segstream.cli import app; app()"]


def environment(settings: StreamSettings, **override: Any) -> dict[str, str]:
    """The settings as the `SEGSTREAM_*` variables a worker process reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_")}
    for name, value in {**settings.model_dump(), **override}.items():
        if value is None:
            continue
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        env[f"SEGSTREAM_{name.upper()}"] = text
    return env


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    log: IO[bytes]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def metrics(self) -> dict[str, float]:
        """Sample name (labels summed) -> value; empty until the worker serves."""
        try:
            url = f"http://{HOST}:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] += sample.value
        return out

    def batches(self) -> float:
        return self.metrics().get("segstream_batch_seconds_count", 0.0)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is committed on the way out."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.log.close()

    def stop(self) -> None:
        stop_process(self.process, 10.0)
        if not self.log.closed:
            self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Group:
    """Worker processes of one consumer group, their logs and the group's progress."""

    settings: StreamSettings
    model_dir: Path
    logdir: Path
    broker: KafkaBroker
    partitions: int
    procs: list[Proc] = field(default_factory=list)
    last: dict[int, int] = field(default_factory=dict)  # partition -> last produced offset

    def start(self) -> Proc:
        port = free_port()
        path = self.logdir / f"worker-{len(self.procs)}.log"
        log = path.open("wb")
        env = environment(
            self.settings, model_dir=self.model_dir, metrics_port=port, web_port=free_port()
        )
        process = subprocess.Popen(
            [*segstream_command(), "worker", "--log-level", "info"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.logdir,
            start_new_session=True,
        )
        proc = Proc(process, port, path, log)
        self.procs.append(proc)
        return proc

    def produced(self, metas: list[Any]) -> None:
        for m in metas:
            self.last[m.partition] = max(self.last.get(m.partition, -1), m.offset)

    async def committed(self) -> dict[int, int]:
        """The group's committed offset per input partition (-1: none)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.broker.bootstrap,
            group_id=self.settings.app_id,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            out = {}
            for p in range(self.partitions):
                offset = await consumer.committed(TopicPartition(self.settings.input_topic, p))
                out[p] = -1 if offset is None else offset
            return out
        finally:
            await consumer.stop()

    def done(self) -> bool:
        committed = asyncio.run(self.committed())
        return all(committed[p] > off for p, off in self.last.items())

    def wait(self, what: str, until: Any, timeout: float = DONE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            for proc in self.procs:
                if proc.process.poll() not in (None, -signal.SIGKILL):
                    raise AssertionError(f"a worker exited:\n{proc.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                tails = "\n---\n".join(p.log_text()[-2000:] for p in self.procs)
                raise AssertionError(f"{what} not reached in {timeout}s; logs:\n{tails}")
            time.sleep(0.1)

    def wait_done(self) -> None:
        self.wait("every record committed", self.done)

    def stop(self) -> None:
        """SIGTERM to every worker at once (their shutdowns overlap), then `Proc.stop`
        each: wait, SIGKILL after 10 s."""
        for proc in self.procs:
            if proc.alive:
                proc.process.terminate()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.process.wait(10.0)
            proc.stop()


def new_group(
    broker: KafkaBroker,
    redis_url: str,
    bundle: Path,
    logdir: Path,
    partitions: int,
    **settings: Any,
) -> Group:
    """A `Group` with topics, consumer group and key prefix of its own (`settings_for`),
    the topics created with `partitions` partitions each."""
    made = settings_for(broker, redis_url, input_partitions=partitions, **settings)
    topics = {made.input_topic: partitions, **dict.fromkeys(outputs(made), partitions)}
    asyncio.run(create_topics(broker.bootstrap, topics))
    return Group(made, bundle.parent, logdir, broker, partitions)


def produce_into(group: Group, records: list[tuple[bytes, bytes]]) -> None:
    bootstrap = group.broker.bootstrap
    group.produced(asyncio.run(produce(bootstrap, group.settings.input_topic, records)))
