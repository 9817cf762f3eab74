"""The engine: a batch of events in, features stored, customers assigned, alerts out.

`Engine.process(events)` is what both the live faust worker and `segstream replay` run:
apply the batch to the feature store (one round trip; features after every event),
score the rows with the bundle and the shared online centers and decide with
`stream.decide`. `Engine.rescore(now)` re-evaluates customers that have been silent for a
day, so churn risk rises without new events; replay drives it with the event-time
watermark, the live worker with the wall clock.

Both return the alerts with the writes they imply *staged*, not done: the caller publishes
the alerts first and only then calls `Engine.save(result)`, which writes the assignment
states, the re-score schedule and the population counts (one more round trip) and lets
the decisions take effect in memory (state cache, PSI window, online centers). So a crash
between the two leaves the states as they were before the batch, and the redelivered
events are decided again into the same alerts: saving first would turn the second
decision into a no-op and lose the alerts (the order is the delivery guarantee, see
docs/reliability.md). Features need no such care: the store is idempotent per event.

It depends on the store protocols of `stream.stores` (Redis or in-memory implementations
are passed in), not on Redis, Kafka or faust.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.bundle import Bundle
from models.catalog import Catalog
from models.events import Event
from stream.assign import OnlineCenters
from stream.decide import DAY, Alert, CustomerState, Decider, Decisions, Row, Rules, iso
from stream.detect import bundle_profiles
from stream.shadow import Shadow, ShadowTally
from stream.stores import (
    ApplyResult,
    AssignmentStore,
    EventStatus,
    Features,
    FeatureStore,
    StagedFeatures,
)

log = logging.getLogger(__name__)


@dataclass
class Staged:
    """The writes a batch's decisions imply, held until its alerts are published."""

    states: dict[str, CustomerState | None]  # None: the customer expired, delete it
    due: dict[int, dict[str, float]]
    version: str
    reschedule: bool
    segments: list[int]  # per row of a customer with full windows, for the PSI window
    learn: np.ndarray  # scaled rows of settled customers, for the online centers
    learn_at: np.ndarray  # their event times (a row's weight decays in event time)
    features: StagedFeatures | None = None  # the batch's new feature states
    #: Per state, the generation of this worker's claim on its partition when decided.
    owners: dict[str, int] = field(default_factory=dict)
    #: Customers to take off each partition's schedule (expired ones).
    unschedule: dict[int, list[str]] = field(default_factory=dict)
    #: Names this save: a retry of it (its reply was lost) counts nothing twice.
    token: str = field(default_factory=lambda: os.urandom(8).hex())


@dataclass
class BatchResult:
    """What one batch decided, for the caller to publish, then `Engine.save`, and count."""

    statuses: list[EventStatus] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    churn: list[float] = field(default_factory=list)
    features: Features | None = None
    staged: Staged | None = None
    shadow: ShadowTally | None = None  # what the candidate bundle did, in shadow mode
    #: A re-score that took as many customers as it may: more may be due, call again
    #: (after `save`, which moves the ones just re-scored to the next day).
    more: bool = False
    #: Fingerprints the per-customer cap evicted (`ApplyResult.evicted`).
    evicted: int = 0


class Engine:
    """One segmentation engine over a feature store, an assignment store and a bundle."""

    def __init__(
        self,
        catalog: Catalog,
        features: FeatureStore,
        assignments: AssignmentStore,
        bundle: Bundle,
        *,
        rules: Rules | None = None,
        centers: OnlineCenters | None = None,
        centers_halflife: float = 0.001,
        centers_memory_days: float = 7.0,
        psi_window: int = 5000,
        rescore_batch: int = 5000,
        shadow: Shadow | None = None,
    ) -> None:
        self.catalog = catalog
        self.rescore_batch = rescore_batch
        self.shadow = shadow
        self.features = features
        self.assignments = assignments
        self.rules = rules or Rules()
        self.psi_window = psi_window
        self.centers_halflife = centers_halflife
        self.centers_memory_days = centers_memory_days
        self.recent: deque[int] = deque(maxlen=psi_window)
        #: Partition -> the generation of this worker's claim on it (`AssignmentStore.claim`);
        #: saves carry it, so a claim superseded by a rebalance cannot overwrite the new
        #: owner's states. Without a claim (replay, tools) 0.
        self.generations: dict[int, int] = {}
        self.use(bundle, centers)

    def use(self, bundle: Bundle, centers: OnlineCenters | None = None) -> None:
        """Switch to a (verified) bundle; the next batch is scored with it."""
        self.bundle = bundle
        self.centers = centers or OnlineCenters(
            bundle.centroids,
            bundle.segment_ids,
            halflife=self.centers_halflife,
            memory_days=self.centers_memory_days,
        )
        # The PSI window compares assignments with *this* bundle's shares: assignments
        # made by the previous one would raise a false population shift at every reload.
        self.recent.clear()
        self.decider = Decider(
            bundle,
            bundle.segment_ids,
            self.catalog.names,
            bundle.space.index.tolist(),
            bundle.space.typical_row(len(self.catalog.names)),
            self.rules,
            bundle_profiles(self.catalog, bundle),
        )

    async def process(
        self, events: Sequence[Event], partitions: Sequence[int] | None = None
    ) -> BatchResult:
        """Stage a batch of valid events and decide for every new one.

        Nothing is written yet: the new feature states and the decisions' writes are
        staged in the result for `save`, which the caller runs after publishing the
        alerts, and which writes both at once. So a redelivered event is either new again
        (nothing of its batch was saved: decided again, into the same alerts and ids) or
        a duplicate (its batch was saved after its alerts were published: not decided).
        """
        applied = await self.features.apply(events, stage=True)
        return await self.decide(events, applied, partitions)

    async def decide(
        self,
        events: Sequence[Event],
        applied: ApplyResult,
        partitions: Sequence[int] | None = None,
    ) -> BatchResult:
        """`process` after the store step: decide on what `features.apply(stage=True)`
        returned, and carry its staged feature states to `save`.

        Separate so that a caller retrying a failed decision (a Redis error reading the
        states) reuses the staged features instead of staging the batch again. Only new
        events are decided: a duplicate's decisions were saved with its features, after
        its alerts were published; a too_late event changes nothing.
        """
        keep = [i for i, s in enumerate(applied.statuses) if s == "applied"]
        # Feature rows skip too_late events of customers without state: map, don't index.
        feature_rows = [applied.rows[i] for i in keep]
        when = applied.features.at
        own = applied.features.own
        rows = [
            Row(
                e.customer_id,
                float(when[r]),
                e.event_id,
                e.type,
                e.properties,
                None if own is None else own[r],
            )
            for i, r in zip(keep, feature_rows, strict=True)
            for e in [events[i]]
        ]
        parts = [partitions[i] if partitions else 0 for i in keep]
        x = (
            applied.features.values[feature_rows]
            if keep
            else np.empty((0, len(self.catalog.names)))
        )
        result = await self._decide(rows, x, parts)
        result.statuses = applied.statuses
        result.evicted = applied.evicted
        result.features = applied.features
        if applied.staged is not None and applied.staged.keys:
            if result.staged is None:
                result.staged = Staged({}, {}, self.bundle.version, False, [], x[:0], np.empty(0))
            result.staged.features = applied.staged
        return result

    async def rescore(
        self, now: float, partitions: Sequence[int] = (0,), limit: int | None = None
    ) -> BatchResult:
        """Re-score customers whose daily check is due at time `now` (churn risk included).

        At most `limit` (default `rescore_batch`) customers per partition, the longest
        due first; the result's `more` says some partition may have others due. As
        `process`, the new states and next re-score times are staged for `save`.
        """
        limit = limit or self.rescore_batch
        found: list[tuple[str, int]] = []
        more = False
        for p in partitions:
            due = await self.assignments.due(p, now, limit)
            more = more or len(due) >= limit
            found += [(cid, p) for cid in due]
        if not found:
            return BatchResult()
        feats = await self.features.read([cid for cid, _ in found], at=now)
        owner = dict(found)
        # A customer silent past the day windows has nothing left to decay: its profile
        # stays (queryable, counted, dormant) but it leaves the daily schedule until its
        # next event, or such customers would fill every `limit` and starve the rest. It
        # comes back once, when its profile expires (event time), to leave the counts.
        silence = feats.values[:, self.catalog.names.index("days_since_last_event")]
        active = silence < self.catalog.retention_days
        later: dict[int, dict[str, float]] = {}
        profile = self.features.profile_days
        for cid, ok, days in zip(feats.customers, active.tolist(), silence.tolist(), strict=True):
            if not ok:
                wait = max(DAY, (profile - days) * DAY + 1)
                later.setdefault(owner[cid], {})[cid] = now + wait
        # One whose profile expired has no features at all: its assignment state is
        # deleted with the save and leaves the population counts (event time, the same in
        # replay and live; the state key's own TTL runs later, see the store).
        expired = set(owner) - set(feats.customers)
        if later:
            keep = active
            feats = Features(
                feats.names,
                [cid for cid, ok in zip(feats.customers, keep.tolist(), strict=True) if ok],
                feats.at[keep],
                feats.values[keep],
            )
        trigger = f"rescore:{int(now // DAY)}"
        rows = [Row(cid, now, trigger) for cid in feats.customers]
        parts = [owner[cid] for cid in feats.customers]
        result = await self._decide(rows, feats.values, parts, rescore=True)
        result.features = feats
        result.more = more
        if later or expired:
            if result.staged is None:
                empty = feats.values[:0]
                result.staged = Staged({}, {}, self.bundle.version, True, [], empty, np.empty(0))
            staged = result.staged
            for p, times in later.items():
                staged.due.setdefault(p, {}).update(times)
            for cid in sorted(expired):
                staged.states[cid] = None
                staged.owners[cid] = self.generations.get(owner[cid], 0)
                staged.unschedule.setdefault(owner[cid], []).append(cid)
        return result

    async def _decide(
        self, rows: list[Row], x: np.ndarray, parts: list[int], *, rescore: bool = False
    ) -> BatchResult:
        if not rows:
            return BatchResult()
        customers = list(dict.fromkeys(r.customer_id for r in rows))
        before = await self.assignments.load(customers)
        z = self.bundle.scale(x)
        decisions: Decisions = self.decider.decide(
            rows, x, z, self.centers.distances(z), before, score_churn=rescore
        )
        # Young customers are placed by the classifier; only settled ones teach the centers.
        tenure = x[:, self.catalog.names.index("tenure_days")]
        settled = tenure >= self.rules.early_days
        complete = (tenure >= self.catalog.retention_days).tolist()
        due: dict[int, dict[str, float]] = {}
        for row, p in zip(rows, parts, strict=True):
            due.setdefault(p, {})[row.customer_id] = row.at + DAY
        owners = {row.customer_id: self.generations.get(p, 0)
                  for row, p in zip(rows, parts, strict=True)}  # fmt: skip
        staged = Staged(
            states={cid: decisions.states[cid] for cid in customers},
            due=due,
            owners=owners,
            version=self.bundle.version,
            reschedule=rescore,
            # The bundle's shares describe customers with full windows: a young one (or
            # every one, on a store that starts empty) would read as a population shift.
            segments=[seg for seg, ok in zip(decisions.segments, complete, strict=True) if ok],
            learn=z[settled],
            learn_at=np.array([r.at for r in rows], dtype=float)[settled],
        )
        shadow = (
            self.shadow.observe(rows, x, before, decisions, rescore=rescore)
            if self.shadow is not None
            else None
        )
        return BatchResult(
            rows=rows,
            alerts=decisions.alerts,
            segments=decisions.segments,
            churn=decisions.churn,
            staged=staged,
            shadow=shadow,
        )

    async def save(self, result: BatchResult) -> None:
        """Make a batch's decisions durable and effective; call once its alerts are acked.

        Writes the states, the re-score schedule and the population changes (one round
        trip), then updates what lives in memory: the state cache, the PSI window and the
        online centers. Safe to retry after a Redis error (the in-memory part runs once,
        after the write succeeded); a second call for the same result does nothing.
        """
        staged = result.staged
        if staged is None:
            return
        conflicts = await self.assignments.save(
            staged.states,
            staged.due,
            reschedule=staged.reschedule,
            features=staged.features,
            feature_ttl=self.features.ttl_seconds,
            unschedule=staged.unschedule,
            owners=staged.owners,
            token=staged.token,
        )
        if conflicts and staged.features is not None:
            # Another writer changed these customers' features since they were staged
            # (a rebalance overlap): apply their events for real; the store's idempotency
            # keeps every event counted once.
            log.warning("feature commit conflicts for %d customers: applied again", len(conflicts))
            redo = [e for i in conflicts for e in staged.features.events[i]]
            await self.features.apply(redo)
        result.staged = None
        self.recent.extend(staged.segments)
        if len(staged.learn):
            self.centers.learn_many(staged.learn, staged.learn_at)

    async def sync_centers(self) -> None:
        """Share this worker's center statistics with the group and adopt the merge.

        Safe to retry: the store sets this worker's absolute statistics, not a delta."""
        c = self.centers
        group = await self.assignments.sync_centers(
            self.bundle.version, c.worker, c.stats_.pack(), c.forget_
        )
        c.merge(group)

    def population_shift(self) -> dict[str, Any]:
        """PSI between the recent assignments and the bundle's segment shares."""
        expected = {
            int(s["id"]): float(s["share"]) for s in self.bundle.manifest.get("segments", [])
        }
        counts = Counter(self.recent)
        total = sum(counts.values())
        if not total or not expected:
            return {"psi": 0.0, "observed": {}, "expected": expected, "window": total}
        psi = 0.0
        observed = {}
        for seg, share in expected.items():
            obs = max(counts.get(seg, 0) / total, 1e-4)
            exp = max(share, 1e-4)
            observed[seg] = obs
            psi += (obs - exp) * np.log(obs / exp)
        return {"psi": float(psi), "observed": observed, "expected": expected, "window": total}


__all__ = ["BatchResult", "Engine", "Staged", "iso"]
