"""Fencing a revoked owner (issue 20, finding 9), at the level of the worker.

A batch stuck in its publish step outlives a rebalance: the partition is revoked, the new
owner claims it (a newer generation) and processes the same records. The old owner's
save then meets the new owner's owner records, is refused (`Fenced`), counted in
``segstream_saves_fenced_total`` and dropped without a retry; the new owner's states and
the population counts stay as the new owner left them. The store contract
(`tests/test_store_contract.py::test_a_late_save_of_an_old_generation_is_refused`) holds
the same refusal on every backend; this test holds the worker's reaction to it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from models.bundle import load_bundle
from stream.engine import Engine
from stream.memory_store import Keyspace, memory_stores
from stream.metrics import Metrics
from stream.settings import StreamSettings
from stream.worker import Message, Output, Worker
from tests.bundles import CATALOG, make_bundle
from tests.support import discard


def record(i: int, customer: str, ts: str) -> bytes:
    return json.dumps(
        {"event_id": f"e{i}", "customer_id": customer, "type": "purchase", "ts": ts,
         "properties": {"amount": 10.0 + i}}
    ).encode()  # fmt: skip


def test_a_late_save_after_a_rebalance_is_fenced_counted_and_not_retried(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    settings = StreamSettings(
        redis_url="memory://", key_prefix="fence", model_dir=bundle.path.parent,
        metrics_port=0, web_port=0,
    )  # fmt: skip
    first = [Message(record(i, f"c{i}", "2026-03-01T10:00:00Z"), 0, i) for i in range(5)]
    # New customers: their first assignments are alerts, so the batch publishes.
    second = [Message(record(i, f"d{i - 5}", "2026-03-02T10:00:00Z"), 0, i) for i in range(5, 10)]

    async def scenario() -> None:
        keyspace = Keyspace()
        registry = CollectorRegistry()
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        def worker(metrics: Metrics) -> Worker:
            features, assignments = memory_stores(CATALOG, prefix="fence", keyspace=keyspace)
            engine = Engine(CATALOG, features, assignments, bundle)
            return Worker(engine, settings, metrics, partitions=lambda: [0], sleep=sleep)

        old, new = worker(Metrics(registry)), worker(Metrics(CollectorRegistry()))
        await old.assigned([0])
        await old.run(first, discard)

        async def slow_publish(outputs: list[Output]) -> None:
            # The old owner's batch is still publishing when the group rebalances: the
            # partition moves to `new`, which processes the same records from the last
            # committed offset and saves them.
            old.revoked([0])
            await new.assigned([0])
            await new.run(second, discard)

        assert await old.run(second, slow_publish) == []
        assert registry.get_sample_value("segstream_saves_fenced_total") == 1
        assert waits == []  # dropped, not retried
        assert old.partitions() == []  # a revoked partition is not re-scored
        assert await old.tick(discard) == []
        # The new owner's states survive (the old owner's never overwrote them).
        stores = memory_stores(CATALOG, prefix="fence", keyspace=keyspace)[1]
        ids = [f"d{i}" for i in range(5)]
        assert await stores.load(ids) == await new.engine.assignments.load(ids)
        assert new.engine.generations[0] > 0 and 0 not in old.engine.generations
        version = bundle.version
        assert await stores.recount(version) == (
            await stores.population(version),
            await stores.stages(version),
        )
        assert sum((await stores.population(version)).values()) == 10

    asyncio.run(scenario())
