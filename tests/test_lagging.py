"""A worker behind its partitions judges silence on their event time, not the wall clock.

After an outage, or while a worker catches up, the customers whose events still wait in
Kafka look silent to the wall clock. A worker that re-scored them at the wall clock raised
`churn_risk` alerts (and a 14-day cool-down) for customers who were active all along.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from offline.synthetic import generate_history
from stream.decide import DAY
from stream.metrics import Metrics
from stream.runtime import drop_prefix, open_runtime
from stream.settings import StreamSettings
from stream.worker import Message, Output, Worker
from tests.support import discard, lines, unique


def churned(
    redis_url: str,
    bundle: Path,
    values: list[bytes],
    handled: int,
    *,
    wall: float,
    owned: Callable[[], list[int]] | None,
) -> dict[str, float]:
    """Handle `values[:handled]` on the wall clock `wall`, with the broker holding all of
    them, then run the periodic re-score: churn alerts as customer -> event time."""
    settings = StreamSettings(
        redis_url=redis_url, key_prefix=unique("segstream-test-lag"), model_dir=bundle.parent,
        clock="wall", metrics_port=0, web_port=0,
    )  # fmt: skip

    async def body() -> list[Output]:
        runtime = await open_runtime(settings, model_path=bundle)
        worker = Worker(
            runtime.engine, settings, Metrics(CollectorRegistry()),
            clock=lambda: wall, partitions=owned,
        )  # fmt: skip
        try:
            for lo in range(0, handled, 500):
                batch = [
                    Message(v, 0, i) for i, v in enumerate(values[lo : min(lo + 500, handled)], lo)
                ]
                await worker.handle(batch, discard)
            worker.lag(0, highwater=len(values))  # what the consumer saw at the broker
            return await worker.tick(discard)
        finally:
            await drop_prefix(runtime.connection, settings.key_prefix)
            await runtime.close()

    out = asyncio.run(body())
    alerts = [json.loads(o.value) for o in out if o.topic == settings.churn_topic]
    return {a["customer_id"]: a["event_time"] for a in alerts}


def test_a_lagging_worker_raises_no_churn_for_customers_in_its_backlog(
    embedded_redis_url: str, trained_bundle: Path
) -> None:
    history = generate_history(150, 70, seed=21)
    values = [v for _, v in lines(history)]
    times = [json.loads(v)["ts"] for v in values]
    handled = next(i for i, t in enumerate(times) if t >= "2026-02-15")  # day 45 of 70
    backlog = {json.loads(v)["customer_id"] for v in values[handled:]}
    reached = max(json.loads(v)["ts"] for v in values[:handled])
    wall = history.events["ts"].max().timestamp() + 10 * DAY  # the outage's end

    lagging = churned(
        embedded_redis_url, trained_bundle, values, handled, wall=wall, owned=lambda: [0]
    )
    # The same worker had it been at day 45 in real time: what event time says.
    at_day_45 = churned(
        embedded_redis_url, trained_bundle, values, handled,
        wall=history.events["ts"][history.events["ts"] <= reached].max().timestamp(), owned=None,
    )  # fmt: skip
    # The old behaviour: silence judged on the wall clock, 35 days after the last handled event.
    by_wall_clock = churned(
        embedded_redis_url, trained_bundle, values, handled, wall=wall, owned=None
    )

    false_churn = set(by_wall_clock) & backlog
    print(
        f"\nchurn alerts of customers with events in the backlog: {len(false_churn)} judged on"
        f" the wall clock, {len(set(lagging) & backlog)} on the partition's event time"
    )
    assert lagging == at_day_45
    assert all(t[:10] <= reached[:10] for t in lagging.values())
    assert len(false_churn) > 2 * len(set(lagging) & backlog), (len(false_churn), len(lagging))


def test_a_worker_that_owns_no_partition_rescores_nobody(
    embedded_redis_url: str, trained_bundle: Path
) -> None:
    """An idle member of the group (more workers than partitions) used to fall back to
    partition 0 and re-score customers another worker owns."""
    settings = StreamSettings(
        redis_url=embedded_redis_url, key_prefix=unique("segstream-test-idle"),
        model_dir=trained_bundle.parent, metrics_port=0, web_port=0,
    )  # fmt: skip

    async def body() -> None:
        runtime = await open_runtime(settings, model_path=trained_bundle)
        try:
            idle = Worker(runtime.engine, settings, Metrics(CollectorRegistry()), partitions=list)
            assert idle.partitions() == []
            assert idle.rescore_steps(1e9) == []
            assert await idle.tick(discard) == []
        finally:
            await drop_prefix(runtime.connection, settings.key_prefix)
            await runtime.close()

    asyncio.run(body())
