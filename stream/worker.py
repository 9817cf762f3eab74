"""The live worker's core: raw Kafka messages of a batch in, records to publish out.

`Worker.handle(messages, publish)` decodes every raw value with the event contract (wall
clock as `now`), sends contract failures and the store's ``too_late`` events to the
dead-letter topic, runs `Engine.process` on the valid events, re-scores silent customers
once per day of event time when the clock is the event-time watermark (exactly as
`stream.replay` does), adds the model-health alerts (population shift, retrain
recommended) and records the metrics. Records to send are ``(topic, key, value)``
`Output` rows handed to the async `publish` callback (the faust agent's: it returns once
the broker acked every record).

The order is the delivery guarantee: for each step (a batch, or the part of it before a
midnight, and each re-score) the features are stored, the decisions made, their outputs
published and acked, and only then the assignment states saved (`Engine.save`). A crash
anywhere leaves either no saved state for the step (so the redelivered events give the
same alerts again) or a step whose alerts are already acked. The agent commits offsets
only after `handle` returns.

Redis errors never escape: the failed step is retried with exponential backoff (0.2 s
doubling to 5 s), each failure counted in ``segstream_redis_errors_total`` and logged with
the redacted URL. The batch is never dropped.

Anything else that escapes `handle` is a fault that retrying may not fix (a record that
trips a bug): `run` retries the batch `batch_attempts` times, then splits it in halves and
runs each, so the one record that keeps failing ends alone in the dead-letter topic with
reason ``processing_error`` and every other record is processed. Dead-letter rows are
bounded (`dlq_record`): whatever the input's size, they stay far below what a producer
may send.

Must not import faust or aiokafka: tests drive it without a broker.

>>> Output("events-dlq", "c1", b"{}").topic
'events-dlq'
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from redis.exceptions import RedisError

from models.events import BUILTIN_TYPES, Event, EventError, decode_event
from stream.decide import Alert
from stream.engine import BatchResult, Engine
from stream.health import HealthMonitor
from stream.metrics import Metrics
from stream.plan import (
    Apply,
    CheckHealth,
    EventClock,
    Rescore,
    Step,
    SyncCenters,
    plan_event_clock,
    plan_wall_clock,
)
from stream.redis_conn import redact
from stream.reload import ModelWatcher
from stream.retry import delays, until_done
from stream.runner import StepRunner
from stream.settings import StreamSettings
from stream.stores import Fenced

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Sends records and returns once the broker acknowledged every one (retrying meanwhile).
Publish = Callable[[list["Output"]], Awaitable[None]]


class Message(NamedTuple):
    """One raw input record: its value (None for a tombstone) and where it came from."""

    value: bytes | None
    partition: int
    offset: int


class Output(NamedTuple):
    """One record to publish."""

    topic: str
    key: str
    value: bytes


#: Input bytes kept in a dead-letter row's ``raw``. JSON escapes one byte into at most 6
#: characters (``\\ufffd``), so a row stays under ~100 KB, far below a producer's 1 MB.
DLQ_RAW_BYTES = 16 * 1024
#: Characters of the error text kept in a dead-letter row.
DLQ_ERROR_CHARS = 1000


def dlq_record(message: Message, topic: str, reason: str, field: str, error: str) -> dict[str, Any]:
    """The dead-letter row of a rejected message: its first `DLQ_RAW_BYTES` as text (bad
    UTF-8 replaced), its full size and SHA-256, so any record gives a row a producer can send.

    >>> row = dlq_record(Message(b"\\xffx", 2, 7), "events", "not_json", "<event>", "bad")
    >>> row["raw"], row["size"], row["truncated"]
    ('\\ufffdx', 2, False)
    >>> dlq_record(Message(None, 0, 1), "events", "null_value", "<event>", "a tombstone")["raw"]
    """
    value = message.value
    return {
        "raw": None if value is None else value[:DLQ_RAW_BYTES].decode("utf-8", errors="replace"),
        "size": None if value is None else len(value),
        "sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "truncated": value is not None and len(value) > DLQ_RAW_BYTES,
        "reason": reason,
        "field": field,
        "error": error[:DLQ_ERROR_CHARS],
        "topic": topic,
        "partition": message.partition,
        "offset": message.offset,
    }


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class Worker:
    """Turns batches of raw messages into alerts and dead-letter rows (see module docstring).

    `clock` is the wall clock (Unix seconds) and `sleep` the backoff wait; both are passed
    in so tests can drive time. `partitions` returns the input partitions this worker owns
    (for the re-score); by default, every partition it has seen.
    """

    def __init__(
        self,
        engine: Engine,
        settings: StreamSettings,
        metrics: Metrics,
        *,
        redis_url: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        partitions: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.redis_url = redact(redis_url)
        self.clock = clock
        self.sleep = sleep
        self._owned = partitions
        self.topics = {
            "segment_assigned": settings.assignments_topic,
            "lifecycle_changed": settings.lifecycle_topic,
            "segment_reassigned": settings.assignments_topic,
            "segment_migration": settings.migrations_topic,
            "churn_risk": settings.churn_topic,
            "population_shift": settings.population_topic,
            "retrain_recommended": settings.model_topic,
        }
        self.tolerance = timedelta(seconds=settings.future_tolerance_seconds)
        self.watermark = 0.0  # newest event time seen
        self.clock_state = EventClock()  # next midnight, newest event time per partition
        self.last_offsets: dict[int, int] = {}  # partition -> last offset handled
        self.highwater: dict[int, int] = {}  # partition -> the broker's next offset, last seen
        self.revoking: set[int] = set()  # partitions revoked and not assigned again
        self.events = 0  # valid events handled
        self.health = HealthMonitor(
            psi_threshold=settings.psi_threshold,
            psi_window=settings.psi_window,
            drift_bound=settings.drift_bound,
        )
        self._lock = asyncio.Lock()  # the batch, the re-score and the sync never interleave
        self.runner = StepRunner(
            engine,
            health=self.health,
            retry=self._retry,
            observe=self._observe_shadow,
            partitions=self.partitions,
        )
        self.watcher = ModelWatcher(settings.model_dir, engine.catalog, serving=engine.bundle.path)
        metrics.known_types = BUILTIN_TYPES | {
            t for spec in engine.catalog.features for t in spec.filter.types
        }
        metrics.set_model(engine.bundle.version)
        # Migration and churn panels draw a 0 rate from the first scrape, not "No data".
        metrics.declare_segments(engine.bundle.segment_names.values())
        if engine.shadow is not None:
            metrics.set_shadow_model(engine.shadow.bundle.version)

    # --- model hot reload ----------------------------------------------------------------

    async def check_model(self) -> bool:
        """Switch to a new `current` bundle once it is verified; True when switched.

        A refused bundle is logged with its reason and counted; the one in service stays.
        The switch happens between batches, so no event is scored half by each model.
        """
        found = self.watcher.poll()
        if found is None:
            return False
        if found.bundle is None:
            self.metrics.model_reloads.labels("refused").inc()
            log.error("refused model bundle %s, keeping %s: %s",
                      found.target, self.engine.bundle.version, found.error)  # fmt: skip
            return False
        async with self._lock:
            previous = self.engine.bundle.version
            self.engine.use(found.bundle)
        self.metrics.model_reloads.labels("loaded").inc()
        self.metrics.set_model(found.bundle.version)
        self.metrics.declare_segments(found.bundle.segment_names.values())
        log.info("switched model bundle %s -> %s", previous, found.bundle.version)
        return True

    # --- batches -------------------------------------------------------------------------

    def decode(
        self, messages: Sequence[Message]
    ) -> tuple[list[Event], list[Message], list[Output]]:
        """Valid events (with their messages) and the dead-letter records of the rest."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        events: list[Event] = []
        sources: list[Message] = []
        dead: list[Output] = []
        for message in messages:
            if message.value is None:  # a tombstone: nothing to decode
                dead.append(self._dead(message, "null_value", "<event>", "the record has no value"))
                continue
            try:
                event = decode_event(message.value, now=now, future_tolerance=self.tolerance)
            except EventError as exc:
                dead.append(self._dead(message, exc.reason, exc.field, exc.message))
                continue
            except Exception as exc:  # the contract's own fault must not stall the partition
                log.exception("cannot decode record %d:%d", message.partition, message.offset)
                dead.append(self._dead(message, "undecodable", "<event>", repr(exc)))
                continue
            events.append(event)
            sources.append(message)
        return events, sources, dead

    async def run(
        self, messages: Sequence[Message], publish: Publish, *, _split: bool = False
    ) -> list[Output]:
        """`handle`, with a budget for failures that retrying cannot fix.

        A batch whose `handle` raises (Redis errors never do: they are retried inside) is
        tried ``settings.batch_attempts`` times, then split in halves, each run the same
        way, so the record at fault ends alone and goes to the dead-letter topic with
        reason ``processing_error``; every other record is processed. Records already
        applied by a failed attempt are recognised as duplicates by the store.
        """
        attempts = self.settings.batch_attempts
        failure: Exception | None = None
        for attempt, delay in zip(range(1, attempts + 1), delays(), strict=False):
            try:
                return await self.handle(messages, publish)
            except Fenced as exc:
                self._fenced(exc, f"a batch of {len(messages)} records")
                return []
            except Exception as exc:
                failure = exc
                if attempt == 1 and not _split:  # logged once per batch, with its cause
                    log.warning("a batch of %d records failed; retrying, then splitting it",
                                len(messages), exc_info=True)  # fmt: skip
                if attempt < attempts:
                    await self.sleep(delay)
        if len(messages) > 1:
            half = len(messages) // 2
            first = await self.run(messages[:half], publish, _split=True)
            return first + await self.run(messages[half:], publish, _split=True)
        message = messages[0]
        log.error("record %d:%d failed %d times (%r): sent to the dead-letter topic",
                  message.partition, message.offset, attempts, failure)  # fmt: skip
        dead = [self._dead(message, "processing_error", "<event>", repr(failure))]
        await publish(dead)
        self.last_offsets[message.partition] = max(
            self.last_offsets.get(message.partition, -1), message.offset
        )
        return dead

    async def handle(self, messages: Sequence[Message], publish: Publish) -> list[Output]:
        """Process one batch, publishing as it goes; return every record it published.

        The batch becomes steps (`stream.plan`), run by the same `StepRunner` as replay:
        each step's outputs go through `publish` (awaited: the acks) before its states are
        saved, so nothing a saved state stands for is unpublished (module docstring). The
        dead-letter rows go out with the first step's outputs.
        """
        async with self._lock:
            started = time.perf_counter()
            events, sources, dead = self.decode(messages)
            parts = [m.partition for m in sources]
            steps, clock = plan_event_clock(
                self.clock_state, [e.epoch for e in events], parts, set(self.partitions())
            )
            if self.settings.clock == "wall":  # the clock keeps only where partitions stand
                steps = plan_wall_clock(len(events), self.clock())
            sent: list[Output] = []
            pending = dead

            async def send(step: Step, result: BatchResult) -> None:
                nonlocal pending
                outputs = pending + [self.output(a) for a in result.alerts]
                pending = []
                if isinstance(step, Apply):
                    why = "older than the customer's retention window"
                    outputs += [
                        self._dead(sources[step.lo + i], "too_late", "ts", why)
                        for i, status in enumerate(result.statuses)
                        if status == "too_late"
                    ]
                if outputs:
                    await publish(outputs)
                    sent.extend(outputs)

            outcome = await self.runner.run(steps, events, parts, send)
            self.clock_state = clock  # adopted once every step succeeded
            if pending:
                await publish(pending)
                sent.extend(pending)
            self.watermark = max([self.watermark, *(e.epoch for e in events)])
            self._observe_health()
            self.metrics.observe(
                outcome.statuses,
                [e.type for e in events],
                outcome.alerts,
                seconds=time.perf_counter() - started,
                events=len(messages),
                evicted=outcome.evicted,
            )
            for message in messages:
                previous = self.last_offsets.get(message.partition, -1)
                self.last_offsets[message.partition] = max(previous, message.offset)
            self.events += len(events)
            await self._refresh_population()
            return sent

    async def rescore(self, publish: Publish, now: float | None = None) -> list[Output]:
        """Re-score customers silent for a day at `now` (default: the worker's clock).

        The clock is the wall clock, or the event-time watermark when
        ``settings.clock == "event"``. The alerts are published before the new states
        are saved, as in `handle`; returns what was published.
        """
        async with self._lock:
            at = self.now() if now is None else now
            sent: list[Output] = []

            async def send(step: Step, result: BatchResult) -> None:
                outputs = [self.output(a) for a in result.alerts]
                if outputs:
                    await publish(outputs)
                    sent.extend(outputs)

            steps = [*self.rescore_steps(at), CheckHealth(at)]
            try:
                outcome = await self.runner.run(steps, [], [], send)
            except Fenced as exc:
                self._fenced(exc, "a re-score")
                return sent
            self._observe_health()
            self.metrics.count_alerts(outcome.alerts)
            await self._refresh_population()
            return sent

    async def tick(self, publish: Publish) -> list[Output]:
        """The periodic job: re-score on the wall clock (the event clock does it at midnights)."""
        if self.settings.clock == "event":
            return []
        return await self.rescore(publish)

    async def sync_centers(self) -> None:
        """Share the online-center statistics with the group (see `Engine.sync_centers`).

        The periodic job of the wall clock; the event clock syncs at each midnight.
        """
        if self.settings.clock == "event":
            return
        async with self._lock:
            started = time.perf_counter()
            await self.runner.run([SyncCenters()], [], [], _nothing)
            self.metrics.store_time("sync_centers", time.perf_counter() - started)
            bundle = self.engine.bundle
            drift = self.engine.centers.drift()
            self.metrics.set_drift(drift.tolist(), bundle.segment_ids, bundle.segment_names)

    def now(self) -> float:
        """What drives re-scores: the wall clock, or the event-time watermark."""
        if self.settings.clock == "event" and self.watermark:
            return self.watermark
        return self.clock()

    def partitions(self) -> list[int]:
        """The input partitions whose customers this worker re-scores: those its consumer
        owns (none for an idle member of the group) and that are not being revoked, or
        without a consumer (tests, tools) every partition it has handled, else 0."""
        if self._owned is not None:
            return sorted(set(self._owned()) - self.revoking)
        return sorted(self.last_offsets) or [0]

    # --- ownership (rebalances) ----------------------------------------------------------

    async def assigned(self, partitions: Iterable[int]) -> None:
        """Claim newly assigned partitions: one new generation (`AssignmentStore.claim`),
        carried by every save of their customers from now on, so the previous owner's
        late saves are refused (`Fenced`). Takes no lock: a batch stuck retrying must
        not hold up the group's rebalance."""
        parts = set(partitions)
        if not parts:
            return
        generation = await self._retry("claim", self.engine.assignments.claim)
        for p in parts:
            self.engine.generations[p] = generation
        self.revoking -= parts
        log.info("claimed partitions %s at generation %d", sorted(parts), generation)

    def revoked(self, partitions: Iterable[int]) -> None:
        """Stop re-scoring revoked partitions at once and read states again later (the
        new owner writes them); a batch of theirs still in flight keeps its generation
        and is fenced if the new owner has written its customers."""
        parts = set(partitions)
        self.revoking |= parts
        for p in parts:
            self.engine.generations.pop(p, None)
        self.engine.assignments.forget()

    def _fenced(self, exc: Fenced, what: str) -> None:
        # Not retried: this worker no longer owns the partition; the new owner processes
        # the events from the last committed offset.
        self.metrics.save_fenced()
        log.warning("%s was fenced and dropped: %s", what, exc)

    def lag(self, partition: int, highwater: int) -> int:
        """Records of `partition` not yet handled, given its highwater (next offset); the
        highwater is remembered for `caught_up`."""
        self.highwater[partition] = highwater
        return highwater - 1 - self.last_offsets.get(partition, -1)

    def caught_up(self, partition: int) -> bool:
        """Every record the broker held for `partition` at the last look has been handled.

        Unknown (no look yet, as right after a start) counts as behind.
        """
        highwater = self.highwater.get(partition)
        return highwater is not None and self.last_offsets.get(partition, -1) >= highwater - 1

    def rescore_steps(self, at: float) -> list[Step]:
        """The re-score steps of a wall-clock tick at `at`.

        A partition that is caught up is judged at `at`; one that is behind (after an
        outage, while catching up) at the newest event time it has reached, so customers
        whose events still wait in Kafka are not scored as silent; one that is behind with
        nothing handled yet is not judged. Without a consumer, everything is judged at `at`.
        """
        if self._owned is None:
            return [Rescore(at, drain=False)]
        reached = self.clock_state.reached
        groups: dict[float, list[int]] = {}
        for p in self.partitions():
            if self.caught_up(p):
                groups.setdefault(at, []).append(p)
            elif p in reached:
                groups.setdefault(min(at, reached[p]), []).append(p)
        return [Rescore(t, drain=False, partitions=tuple(ps)) for t, ps in sorted(groups.items())]

    def output(self, alert: Alert) -> Output:
        return Output(self.topics[alert.kind], alert.key, _json(alert.body))

    # --- internals -----------------------------------------------------------------------

    def _dead(self, message: Message, reason: str, field: str, error: str) -> Output:
        if reason != "too_late":  # too_late is counted with the batch's statuses
            self.metrics.reject(reason)
        row = dlq_record(message, self.settings.input_topic, reason, field, error)
        return Output(self.settings.dlq_topic, f"{message.partition}:{message.offset}", _json(row))

    def _observe_shadow(self, result: BatchResult) -> None:
        shadow = self.engine.shadow
        if result.shadow is None or shadow is None:
            return
        self.metrics.observe_shadow(
            result.shadow,
            self.engine.bundle.segment_names,
            shadow.bundle.segment_names,
            shadow.agreement(),
            shadow.churn_correlation(),
        )

    def _observe_health(self) -> None:
        """The gauges of the last health check (PSI, center drift)."""
        bundle = self.engine.bundle
        self.metrics.set_psi(self.health.psi)
        if self.health.drift.size:
            self.metrics.set_drift(
                self.health.drift.tolist(), bundle.segment_ids, bundle.segment_names
            )

    async def _refresh_population(self) -> None:
        # A gauge only: one failed read is counted and skipped, never retried.
        bundle = self.engine.bundle
        started = time.perf_counter()
        try:
            counts = await self.engine.assignments.population(bundle.version)
            stages = await self.engine.assignments.stages(bundle.version)
        except (RedisError, OSError) as exc:
            self.metrics.redis_error()
            log.warning("Redis at %s: population read failed: %s", self.redis_url, exc)
            return
        self.metrics.store_time("population", time.perf_counter() - started)
        self.metrics.set_population(counts, bundle.segment_names)
        self.metrics.set_stages(stages)
        self.metrics.set_model(bundle.version)

    async def _retry(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        return await until_done(
            what, step, errors=(RedisError, OSError), on_error=self._redis_failed, sleep=self.sleep
        )

    def _redis_failed(self, what: str, exc: BaseException, delay: float) -> None:
        self.metrics.redis_error()
        log.warning(
            "Redis at %s failed during %s (%s: %s); retrying in %.1f s",
            self.redis_url, what, type(exc).__name__, exc, delay,
        )  # fmt: skip


async def _nothing(step: Step, result: BatchResult) -> None:
    """Publish for steps that raise no alert (a center sync)."""


__all__ = ["Message", "Output", "Publish", "Worker", "dlq_record"]
