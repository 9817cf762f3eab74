"""Runs planned steps (`stream.plan`) on the engine: decide, publish, then save.

Replay, backtest and the live worker all run their steps here, the same way:

- `Apply`: stage the events' features, decide (`Engine.decide`), publish the alerts, and
  only once they are published save the states (`Engine.save`): after a crash either
  nothing of the step is saved (the redelivered events are decided again into the same
  alerts) or its alerts were already published (docs/reliability.md);
- `Rescore`: the same for the customers due at the step's time, repeated while the engine
  says more are due when the step drains;
- `SyncCenters`: the group's online centers;
- `CheckHealth`: population shift and center drift, published like alerts.

What differs between the callers is passed in: `publish` (the worker sends to Kafka and
waits for the acks; replay writes a file), `retry` (the worker backs off on Redis errors;
replay lets them raise), `observe` (the worker's shadow-mode metrics) and the partitions
whose re-score schedules this runner owns.

Knows the engine and the health monitor; nothing of Kafka, faust or Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from models.events import Event
from stream.decide import Alert
from stream.engine import BatchResult, Engine
from stream.health import HealthMonitor
from stream.plan import Apply, CheckHealth, Rescore, Step, SyncCenters
from stream.store import EventStatus

T = TypeVar("T")


class Retry(Protocol):
    """Runs `step` (named `what` for the logs) until it succeeds, or lets it raise."""

    async def __call__(self, what: str, step: Callable[[], Awaitable[T]]) -> T: ...


async def once(what: str, step: Callable[[], Awaitable[T]]) -> T:
    """No retry: the error reaches the caller (replay, backtest)."""
    return await step()


#: Publishes a step's alerts (and whatever the adapter adds for it); returns once durable.
Publish = Callable[[Step, BatchResult], Awaitable[None]]


@dataclass
class Outcome:
    """What a run of steps did, for the caller's counters."""

    statuses: list[EventStatus] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    rescored: int = 0  # customers re-scored
    evicted: int = 0  # fingerprints the per-customer dedupe cap evicted


class StepRunner:
    """Runs steps on one engine; see the module docstring.

    `partitions` returns the partitions whose re-score schedules this runner owns (the
    worker: its assigned ones; replay: every partition it scheduled customers in).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        health: HealthMonitor | None = None,
        retry: Retry = once,
        observe: Callable[[BatchResult], None] | None = None,
        partitions: Callable[[], Sequence[int]] = lambda: (0,),
    ) -> None:
        self.engine = engine
        self.health = health
        self.retry = retry
        self.observe = observe
        self.partitions = partitions

    async def run(
        self,
        steps: Sequence[Step],
        events: Sequence[Event],
        partitions: Sequence[int],
        publish: Publish,
    ) -> Outcome:
        """Run `steps` over a batch (`events` with their source `partitions`)."""
        outcome = Outcome()
        for step in steps:
            match step:
                case Apply(lo, hi):
                    result = await self.apply(events[lo:hi], partitions[lo:hi])
                    await self._publish_and_save(step, result, publish, outcome)
                    outcome.statuses += result.statuses
                    outcome.evicted += result.evicted
                case Rescore(at, drain, only):
                    more = True
                    while more:
                        result = await self.rescore(at, only)
                        await self._publish_and_save(step, result, publish, outcome)
                        outcome.rescored += len(result.rows)
                        more = drain and result.more
                case SyncCenters():
                    await self.retry("sync_centers", self.engine.sync_centers)
                case CheckHealth(at):
                    if self.health is not None:
                        engine = self.engine
                        shift, drift = engine.population_shift(), engine.centers.drift()
                        alerts = self.health.check(engine.bundle, shift, drift, at)
                        await publish(step, BatchResult(alerts=alerts))
                        outcome.alerts += alerts
        return outcome

    async def apply(self, events: Sequence[Event], partitions: Sequence[int]) -> BatchResult:
        """Stage and decide a slice of events (nothing saved yet)."""
        engine = self.engine
        # Two retried steps: a failed decision must not stage the events again (see
        # `Engine.decide`).
        applied = await self.retry("process", lambda: engine.features.apply(events, stage=True))
        result = await self.retry("decide", lambda: engine.decide(events, applied, partitions))
        if self.observe is not None:
            self.observe(result)
        return result

    async def rescore(self, at: float, partitions: Sequence[int] | None = None) -> BatchResult:
        """One re-score step at `at` over `partitions` (default: the owned ones); nothing
        is saved yet."""
        parts = list(self.partitions() if partitions is None else partitions)
        result = await self.retry("rescore", lambda: self.engine.rescore(at, parts))
        if self.observe is not None:
            self.observe(result)
        return result

    async def _publish_and_save(
        self, step: Step, result: BatchResult, publish: Publish, outcome: Outcome
    ) -> None:
        await publish(step, result)  # the alerts are durable before the states they imply
        await self.retry("save", lambda: self.engine.save(result))
        outcome.alerts += result.alerts


__all__ = ["Outcome", "Publish", "Retry", "StepRunner", "once"]
