"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer

from models.catalog import Catalog, default_catalog
from models.events import parse_time
from offline.synthetic import History, generate_history, write_history
from offline.train import TrainSettings, train
from stream.children import free_port
from stream.redis_conn import connect
from stream.runtime import drop_prefix
from stream.settings import StreamSettings
from stream.store import RedisFeatureStore
from stream.worker import Output
from tests.kafka_support import KafkaBroker, read_all

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion (the tests are plain functions)."""
    return asyncio.run(coro)


@asynccontextmanager
async def open_store(
    url: str, catalog: Catalog, prefix: str, **options: Any
) -> AsyncIterator[RedisFeatureStore]:
    """A store on a fresh connection, closed afterwards (`options` go to the store)."""
    conn = await connect(url)
    store = RedisFeatureStore(conn.client, catalog, prefix=prefix, **options)
    await store.load()
    try:
        yield store
    finally:
        await conn.close()


async def discard(outputs: list[Output]) -> None:
    """A `Worker.handle` publish callback for tests that read what `handle` returns."""


# --- a worker against a real broker: shared by tests/test_worker.py and tests/test_crash.py

#: Day 75 of a 90-day history: the trained bundle gets 3 churn snapshots.
TRAIN_AS_OF = "2026-03-16T23:59:59Z"


def train_worker_bundle(folder: Path) -> Path:
    """A bundle trained on 600 customers x 90 days (with a churn model), ~15 s; its path."""
    events = write_history(generate_history(600, 90, seed=3), folder / "data")["events"]
    result = train(
        events,
        parse_time(TRAIN_AS_OF),
        folder / "models",
        default_catalog(),
        TrainSettings(seed=0),
        now=datetime(2026, 3, 17, tzinfo=UTC),
    )
    assert result.bundle.churn_model is not None
    return result.bundle.path


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def lines(history: History) -> list[tuple[bytes, bytes]]:
    """(key, value) per event in delivery order, as JSON lines (the file's own encoding)."""
    folder = Path(tempfile.mkdtemp(prefix="seg-hist-"))
    try:
        path = write_history(history, folder)["events"]
        text = path.read_text()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [(json.loads(line)["customer_id"].encode(), line.encode()) for line in text.splitlines()]


def settings_for(broker: KafkaBroker, redis_url: str, **extra: Any) -> StreamSettings:
    """Settings with topics, group and key prefix of their own, on the event clock."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "broker_url": broker.url,
        "redis_url": redis_url,
        "app_id": f"segstream-test-{tag}",
        "key_prefix": f"segstream-test-{tag}",
        "input_topic": f"events-{tag}",
        "assignments_topic": f"assign-{tag}",
        "migrations_topic": f"migrate-{tag}",
        "churn_topic": f"churn-{tag}",
        "population_topic": f"population-{tag}",
        "model_topic": f"model-{tag}",
        "lifecycle_topic": f"lifecycle-{tag}",
        "dlq_topic": f"dlq-{tag}",
        "clock": "event",
        "batch_size": 500,
        "batch_seconds": 0.3,
        "metrics_port": free_port(),
        "web_port": free_port(),
        "rebalance_timeout_seconds": 6.0,
        "rescore_interval_seconds": 3600.0,
    }
    values.update(extra)
    return StreamSettings(**values)


def outputs(settings: StreamSettings) -> list[str]:
    """Every output topic (alerts and dead letters)."""
    return [
        settings.assignments_topic,
        settings.migrations_topic,
        settings.churn_topic,
        settings.population_topic,
        settings.model_topic,
        settings.lifecycle_topic,
        settings.dlq_topic,
    ]


def alert_topics(settings: StreamSettings) -> list[str]:
    """The topics of per-customer alerts (those replay and the worker must agree on)."""
    return [
        settings.assignments_topic,
        settings.migrations_topic,
        settings.churn_topic,
        settings.lifecycle_topic,
    ]


async def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes | None]]
) -> list[Any]:
    """Send everything, then wait for every ack; the RecordMetadata in input order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def records_by_topic(bootstrap: str, topics: list[str]) -> dict[str, list[Any]]:
    """Every record of each topic (all partitions), from the beginning."""
    found = {}
    for topic in topics:
        parts = await read_all(bootstrap, topic)
        found[topic] = [r for rs in parts.values() for r in rs]
    return found


async def drop(redis_url: str, prefix: str) -> None:
    """Delete every key under `prefix`."""
    conn = await connect(redis_url)
    try:
        await drop_prefix(conn, prefix)
    finally:
        await conn.close()


async def replay_alert_ids(
    settings: StreamSettings, bundle: Path, events: Path, out: Path
) -> set[str]:
    """The alert ids `stream.replay` produces for a history file (under a scratch prefix)."""
    from stream.replay import replay
    from stream.runtime import open_runtime

    prefix = unique("segstream-test-replay")
    runtime = await open_runtime(settings, model_path=bundle, prefix=prefix)
    try:
        await replay(runtime.engine, events, out, batch_size=1000)
    finally:
        await drop_prefix(runtime.connection, prefix)
        await runtime.close()
    return {json.loads(line)["alert_id"] for line in out.read_text().splitlines()}
