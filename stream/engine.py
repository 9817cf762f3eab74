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

It depends on the store classes passed in, not on Kafka or faust.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from models.bundle import Bundle
from models.catalog import Catalog
from models.events import Event
from stream.assign import OnlineCenters
from stream.decide import DAY, Alert, CustomerState, Decider, Decisions, Row, Rules, iso
from stream.detect import rate_profiles
from stream.redis_conn import get_many
from stream.shadow import Shadow, ShadowTally
from stream.store import (
    ApplyResult,
    EventStatus,
    Features,
    RedisFeatureStore,
    StagedFeatures,
    customer_tag,
)

log = logging.getLogger(__name__)


def state_key(prefix: str, customer_id: str) -> str:
    """Key of a customer's assignment state; same hash tag as its features."""
    return f"{prefix}:a:{{{customer_tag(customer_id)}}}"


_WRITE_SCRIPT = """
-- One batch's writes, atomic: staged feature states (compare-and-set), assignment states,
-- re-score times and population changes.
-- KEYS = feature keys (nf), state keys (ns), due keys (nd), then the population key when
-- there are changes. ARGV[1] = msgpack {feature_ttl, state_ttl, nf, ns, nd, digests,
-- feature states, state values, due, population}; due = one {mode, {member, score, ...}}
-- per due key (mode NX keeps an existing time, SET replaces it); population = {segment,
-- change, ...}. A feature state is written only over the state it was computed from
-- (SHA1 `digest`, '' for none); returns the 1-based indices of the others (conflicts).
local a = cmsgpack.unpack(ARGV[1])
local fttl, sttl, nf, ns, nd = a[1], a[2], a[3], a[4], a[5]
local digests, fstates, svalues, due, pop = a[6], a[7], a[8], a[9], a[10]
local conflicts = {}
for i = 1, nf do
  local current = redis.call('GET', KEYS[i])
  local digest = current and redis.sha1hex(current) or ''
  if digest == digests[i] then
    redis.call('SET', KEYS[i], fstates[i], 'EX', fttl)
  else
    conflicts[#conflicts + 1] = i
  end
end
for i = 1, ns do redis.call('SET', KEYS[nf + i], svalues[i], 'EX', sttl) end
for d = 1, nd do
  local mode, items = due[d][1], due[d][2]
  for j = 1, #items, 2 do
    if mode == 'NX' then
      redis.call('ZADD', KEYS[nf + ns + d], 'NX', items[j + 1], items[j])
    else
      redis.call('ZADD', KEYS[nf + ns + d], items[j + 1], items[j])
    end
  end
end
for j = 1, #pop, 2 do redis.call('HINCRBY', KEYS[nf + ns + nd + 1], pop[j], pop[j + 1]) end
return conflicts
"""


class AssignmentStore:
    """Customers' assignment states and the per-partition re-score index, in Redis.

    A worker owns its partitions' customers, so it keeps their states in memory and reads
    Redis only for customers it has not seen; `forget()` drops that cache when partitions
    move (a rebalance) so a state another worker wrote is read again. A batch's writes
    are one script call on a single server, one pipeline on a cluster.

    The cache holds each state packed (the bytes written to Redis), not as objects: a dict
    of str to bytes is invisible to Python's cycle collector, while 100k live states made
    every full collection walk them (25% of a 100k-customer replay's time, measured).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str,
        ttl_seconds: int,
        cache_size: int = 500_000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.cache_size = cache_size
        self.round_trips = 0
        self._cache: dict[str, bytes] = {}  # customer id -> packed state
        self._cluster = isinstance(client, RedisCluster)
        self._write = client.register_script(_WRITE_SCRIPT)

    def due_key(self, partition: int) -> str:
        return f"{self.prefix}:due:{partition}"

    def population_key(self, version: str) -> str:
        return f"{self.prefix}:population:{version}"

    def forget(self) -> None:
        """Drop the in-memory states (call when partitions are reassigned)."""
        self._cache.clear()

    async def load(self, customer_ids: Sequence[str]) -> dict[str, CustomerState]:
        cache = self._cache
        found = {
            cid: CustomerState.from_list(msgpack.unpackb(cache[cid]))
            for cid in customer_ids
            if cid in cache
        }
        missing = [cid for cid in customer_ids if cid not in found]
        if missing:
            self.round_trips += 1
            keys = [state_key(self.prefix, cid) for cid in missing]
            values = await get_many(self.client, keys)
            for cid, v in zip(missing, values, strict=True):
                if v:
                    found[cid] = CustomerState.from_list(msgpack.unpackb(v))
        return found

    async def save(
        self,
        states: dict[str, CustomerState],
        due: dict[int, dict[str, float]],
        population: Counter[int],
        version: str,
        *,
        reschedule: bool = False,
        features: StagedFeatures | None = None,
        feature_ttl: int | None = None,
    ) -> list[int]:
        """Write states, population changes, re-score times and the staged `features`
        (with `reschedule` False a customer already scheduled keeps its time, so activity
        never postpones it). Returns the positions in `features` that met a conflict
        (another writer changed the state since it was read): the caller applies those
        customers' events again.

        The in-memory states change only once Redis has them: a failed write leaves this
        worker deciding from what Redis holds, as a restarted one would.
        """
        staged = features or StagedFeatures()
        if not states and not due and not staged.keys:
            return []
        packed = {cid: msgpack.packb(st.to_list()) for cid, st in states.items()}
        conflicts = await self._store(
            packed, due, population, version, reschedule, staged, feature_ttl or self.ttl_seconds
        )
        if len(self._cache) + len(packed) > self.cache_size:
            self._cache.clear()
        self._cache.update(packed)
        return conflicts

    async def _store(
        self,
        states: dict[str, bytes],
        due: dict[int, dict[str, float]],
        population: Counter[int],
        version: str,
        reschedule: bool,
        staged: StagedFeatures,
        feature_ttl: int,
    ) -> list[int]:
        self.round_trips += 1
        packed = {state_key(self.prefix, cid): value for cid, value in states.items()}
        changes = [(str(seg), n) for seg, n in population.items() if n]
        mode = "SET" if reschedule else "NX"
        if not self._cluster:
            keys = [*staged.keys, *packed, *(self.due_key(p) for p in due)]
            pop: list[Any] = [item for pair in changes for item in pair]
            if pop:
                keys.append(self.population_key(version))
            due_args = [
                [mode, [v for m, t in members.items() for v in (m, repr(t))]]
                for members in due.values()
            ]
            blob = msgpack.packb(
                [feature_ttl, self.ttl_seconds, len(staged.keys), len(packed), len(due),
                 staged.digests, staged.states, list(packed.values()), due_args, pop],
                use_bin_type=False,
            )  # fmt: skip
            found = await self._write(keys=keys, args=[blob])
            return [int(i) - 1 for i in found]
        # A cluster: one atomic call per hash slot for each customer's two states (they
        # share the slot), the schedule and the population counts beside them.
        slots: dict[int, tuple[list[int], list[str]]] = {}
        for i, key in enumerate(staged.keys):
            slots.setdefault(key_slot(key.encode()), ([], []))[0].append(i)
        for key in packed:
            slots.setdefault(key_slot(key.encode()), ([], []))[1].append(key)
        calls = []
        for f_idx, s_keys in slots.values():
            blob = msgpack.packb(
                [feature_ttl, self.ttl_seconds, len(f_idx), len(s_keys), 0,
                 [staged.digests[i] for i in f_idx], [staged.states[i] for i in f_idx],
                 [packed[k] for k in s_keys], [], []],
                use_bin_type=False,
            )  # fmt: skip
            keys = [staged.keys[i] for i in f_idx] + s_keys
            calls.append((f_idx, self._write(keys=keys, args=[blob])))
        pipe = self.client.pipeline(transaction=False)
        for partition, members in due.items():
            pipe.zadd(self.due_key(partition), members, nx=not reschedule)  # type: ignore[arg-type]
        for segment, change in changes:
            pipe.hincrby(self.population_key(version), segment, change)
        replies = await asyncio.gather(*(call for _, call in calls))
        await pipe.execute()
        pairs = zip(calls, replies, strict=True)
        return [f_idx[int(i) - 1] for (f_idx, _), found in pairs for i in found]

    async def unschedule(self, partition: int, customer_ids: Sequence[str]) -> None:
        """Remove customers from a partition's re-score schedule."""
        self.round_trips += 1
        await self.client.zrem(self.due_key(partition), *customer_ids)

    async def due(self, partition: int, now: float, limit: int) -> list[str]:
        self.round_trips += 1
        key = self.due_key(partition)
        found = await self.client.zrangebyscore(key, "-inf", float(now), 0, limit)
        return [v.decode() if isinstance(v, bytes) else str(v) for v in found]

    def centers_key(self, version: str) -> str:
        return f"{self.prefix}:centers:{version}"

    async def sync_centers(self, version: str, base: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Add this worker's center movement to the group's and return the group's centers.

        The hash holds every worker's accumulated movement; centers = bundle + movement.
        """
        self.round_trips += 1
        key = self.centers_key(version)
        pipe = self.client.pipeline(transaction=False)
        for (i, j), value in np.ndenumerate(delta):
            if value:
                pipe.hincrbyfloat(key, f"{i}:{j}", float(value))
        pipe.hgetall(key)
        replies = await pipe.execute()
        moved = np.zeros_like(base)
        for field_name, value in replies[-1].items():
            i, j = (int(p) for p in field_name.decode().split(":"))
            moved[i, j] = float(value)
        shared: np.ndarray = base + moved
        return shared

    async def population(self, version: str) -> dict[int, int]:
        raw = await self.client.hgetall(self.population_key(version))  # type: ignore[misc]
        return {int(k): int(v) for k, v in raw.items()}


@dataclass
class Staged:
    """The writes a batch's decisions imply, held until its alerts are published."""

    states: dict[str, CustomerState]
    due: dict[int, dict[str, float]]
    population: Counter[int]
    version: str
    reschedule: bool
    segments: list[int]  # per row, for the PSI window
    learn: np.ndarray  # scaled rows of settled customers, for the online centers
    features: StagedFeatures | None = None  # the batch's new feature states


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


class Engine:
    """One segmentation engine over a feature store, an assignment store and a bundle."""

    def __init__(
        self,
        catalog: Catalog,
        features: RedisFeatureStore,
        assignments: AssignmentStore,
        bundle: Bundle,
        *,
        rules: Rules | None = None,
        centers: OnlineCenters | None = None,
        centers_halflife: float = 0.001,
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
        self.recent: deque[int] = deque(maxlen=psi_window)
        self.use(bundle, centers)

    def use(self, bundle: Bundle, centers: OnlineCenters | None = None) -> None:
        """Switch to a (verified) bundle; the next batch is scored with it."""
        self.bundle = bundle
        self.centers = centers or OnlineCenters(
            bundle.centroids, bundle.segment_ids, halflife=self.centers_halflife
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
            rate_profiles(self.catalog, bundle.space),
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
        rows = [Row(events[i].customer_id, float(when[r]), events[i].event_id, events[i].type)
                for i, r in zip(keep, feature_rows, strict=True)]  # fmt: skip
        parts = [partitions[i] if partitions else 0 for i in keep]
        x = (
            applied.features.values[feature_rows]
            if keep
            else np.empty((0, len(self.catalog.names)))
        )
        result = await self._decide(rows, x, parts)
        result.statuses = applied.statuses
        result.features = applied.features
        if applied.staged is not None and applied.staged.keys:
            if result.staged is None:
                result.staged = Staged({}, {}, Counter(), self.bundle.version, False, [], x[:0])
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
        # A customer silent past the retention has no features left: drop it from the
        # schedule, or expired customers would fill every `limit` and starve the rest.
        gone: dict[int, list[str]] = {}
        for cid in set(owner) - set(feats.customers):
            gone.setdefault(owner[cid], []).append(cid)
        for p, cids in gone.items():
            await self.assignments.unschedule(p, cids)
        trigger = f"rescore:{int(now // DAY)}"
        rows = [Row(cid, now, trigger) for cid in feats.customers]
        parts = [owner[cid] for cid in feats.customers]
        result = await self._decide(rows, feats.values, parts, rescore=True)
        result.features = feats
        result.more = more
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
        settled = x[:, self.catalog.names.index("tenure_days")] >= self.rules.early_days
        # Population counts are kept per model version: a customer first seen under this
        # version (new, or last decided by the previous bundle) joins its segment's count.
        population: Counter[int] = Counter()
        version = self.bundle.version
        for cid in customers:
            prev = before.get(cid)
            new = decisions.states[cid].segment
            if prev is None or prev.model_version != version:
                if new is not None:
                    population[new] += 1
            elif prev.segment != new:
                if prev.segment is not None:
                    population[prev.segment] -= 1
                if new is not None:
                    population[new] += 1
        due: dict[int, dict[str, float]] = {}
        for row, p in zip(rows, parts, strict=True):
            due.setdefault(p, {})[row.customer_id] = row.at + DAY
        staged = Staged(
            states={cid: decisions.states[cid] for cid in customers},
            due=due,
            population=population,
            version=self.bundle.version,
            reschedule=rescore,
            segments=list(decisions.segments),
            learn=z[settled],
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
            staged.population,
            staged.version,
            reschedule=staged.reschedule,
            features=staged.features,
            feature_ttl=self.features.ttl_seconds,
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
            self.centers.learn_many(staged.learn)

    async def sync_centers(self) -> None:
        """Share this worker's online-center movement with the group and adopt the result."""
        c = self.centers
        c.merge(await self.assignments.sync_centers(self.bundle.version, c.base_, c.local_delta()))

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


__all__ = ["AssignmentStore", "BatchResult", "Engine", "Staged", "iso", "state_key"]
