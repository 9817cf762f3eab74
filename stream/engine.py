"""The engine: a batch of events in, features stored, customers assigned, alerts out.

`Engine.process(events)` is what both the live faust worker and `segstream replay` run:
apply the batch to the feature store (one round trip; features after every event),
score the rows with the bundle and the shared online centers, decide with
`stream.decide`, and persist the customers' assignment states (one more round trip).
`Engine.rescore(now)` re-evaluates customers that have been silent for a day, so churn
risk rises without new events; replay drives it with the event-time watermark, the live
worker with the wall clock. Alerts are returned to the caller, which publishes them.

It depends on the store classes passed in, not on Kafka or faust.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from redis.asyncio import Redis, RedisCluster

from models.bundle import Bundle
from models.catalog import Catalog
from models.events import Event
from stream.assign import OnlineCenters
from stream.decide import DAY, Alert, CustomerState, Decider, Decisions, Row, Rules, iso
from stream.store import EventStatus, Features, RedisFeatureStore, customer_tag


def state_key(prefix: str, customer_id: str) -> str:
    """Key of a customer's assignment state; same hash tag as its features."""
    return f"{prefix}:a:{{{customer_tag(customer_id)}}}"


_WRITE_SCRIPT = """
-- KEYS = state keys..., due keys..., population key; ARGV = ttl, n_states, n_due,
-- state values..., per due key: mode (NX: keep an existing time, SET: replace it),
-- count, then member, score pairs;
-- then segment, change pairs
local ttl, ns, nd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, ns do redis.call('SET', KEYS[i], ARGV[3 + i], 'EX', ttl) end
local a = 4 + ns
for d = 1, nd do
  local mode, n = ARGV[a], tonumber(ARGV[a + 1]); a = a + 2
  for j = 1, n do
    if mode == 'NX' then
      redis.call('ZADD', KEYS[ns + d], 'NX', ARGV[a + 1], ARGV[a])
    else
      redis.call('ZADD', KEYS[ns + d], ARGV[a + 1], ARGV[a])
    end
    a = a + 2
  end
end
while a < #ARGV do
  redis.call('HINCRBY', KEYS[ns + nd + 1], ARGV[a], ARGV[a + 1]); a = a + 2
end
return ns
"""


class AssignmentStore:
    """Customers' assignment states and the per-partition re-score index, in Redis.

    A worker owns its partitions' customers, so it keeps their states in memory and reads
    Redis only for customers it has not seen; `forget()` drops that cache when partitions
    move (a rebalance) so a state another worker wrote is read again. A batch's writes
    are one script call on a single server, one pipeline on a cluster.
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
        self._cache: dict[str, CustomerState] = {}
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
        found = {cid: self._cache[cid] for cid in customer_ids if cid in self._cache}
        missing = [cid for cid in customer_ids if cid not in found]
        if missing:
            self.round_trips += 1
            keys = [state_key(self.prefix, cid) for cid in missing]
            if self._cluster:
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.get(key)
                values = await pipe.execute()
            else:
                values = await self.client.mget(keys)
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
    ) -> None:
        """Write states, population changes and re-score times (with `reschedule` False
        a customer already scheduled keeps its time, so activity never postpones it)."""
        if not states and not due:
            return
        if len(self._cache) + len(states) > self.cache_size:
            self._cache.clear()
        self._cache.update(states)
        self.round_trips += 1
        packed = {
            state_key(self.prefix, cid): msgpack.packb(st.to_list()) for cid, st in states.items()
        }
        changes = {seg: n for seg, n in population.items() if n}
        if self._cluster:
            pipe = self.client.pipeline(transaction=False)
            for key, value in packed.items():
                pipe.set(key, value, ex=self.ttl_seconds)
            for partition, members in due.items():
                pipe.zadd(self.due_key(partition), members, nx=not reschedule)  # type: ignore[arg-type]
            for segment, change in changes.items():
                pipe.hincrby(self.population_key(version), str(segment), change)
            await pipe.execute()
            return
        keys = [*packed, *(self.due_key(p) for p in due), self.population_key(version)]
        args: list[Any] = [self.ttl_seconds, len(packed), len(due), *packed.values()]
        for members in due.values():
            args += ["SET" if reschedule else "NX", len(members)]
            for member, score in members.items():
                args += [member, repr(score)]
        for segment, change in changes.items():
            args += [str(segment), change]
        await self._write(keys=keys, args=args)

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
class BatchResult:
    """What one batch did, for the caller to publish and count."""

    statuses: list[EventStatus] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    churn: list[float] = field(default_factory=list)
    features: Features | None = None


def _typical(bundle: Bundle, width: int) -> np.ndarray:
    """A catalog row of typical values: the scaled space's centre, transformed back."""
    space = bundle.space
    typical = np.full(width, np.nan)
    centre = np.where(space.log1p, np.expm1(space.mean), space.mean)
    typical[space.index] = centre
    return typical


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
        psi_window: int = 5000,
    ) -> None:
        self.catalog = catalog
        self.features = features
        self.assignments = assignments
        self.rules = rules or Rules()
        self.psi_window = psi_window
        self.recent: deque[int] = deque(maxlen=psi_window)
        self.use(bundle, centers)

    def use(self, bundle: Bundle, centers: OnlineCenters | None = None) -> None:
        """Switch to a (verified) bundle; the next batch is scored with it."""
        self.bundle = bundle
        self.centers = centers or OnlineCenters(bundle.centroids, bundle.segment_ids)
        self.decider = Decider(
            bundle,
            bundle.segment_ids,
            self.catalog.names,
            bundle.space.index.tolist(),
            _typical(bundle, len(self.catalog.names)),
            self.rules,
        )

    async def process(
        self, events: Sequence[Event], partitions: Sequence[int] | None = None
    ) -> BatchResult:
        """Apply a batch of valid events and decide for every one that is not too late.

        A redelivered event (status `duplicate`) changes no feature but is decided again:
        if its first delivery's decisions were lost (a crash or a failed write between the
        store and the alerts), the same decisions and alert ids come out again; if they
        were kept, the saved state makes the decision a no-op.
        """
        applied = await self.features.apply(events)
        keep = [i for i, s in enumerate(applied.statuses) if s != "too_late"]
        # Feature rows skip too_late events of customers without state: map, don't index.
        feature_rows = [applied.rows[i] for i in keep]
        when = applied.features.at
        rows = [Row(events[i].customer_id, float(when[r]), events[i].event_id)
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
        return result

    async def rescore(
        self, now: float, partitions: Sequence[int] = (0,), limit: int = 5000
    ) -> BatchResult:
        """Re-score customers whose daily check is due at time `now` (churn risk included)."""
        found: list[tuple[str, int]] = []
        for p in partitions:
            found += [(cid, p) for cid in await self.assignments.due(p, now, limit)]
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
        if settled.any():
            self.centers.learn_many(z[settled])
        population: Counter[int] = Counter()
        for cid in customers:
            prev = before.get(cid)
            new = decisions.states[cid].segment
            if prev is None or prev.segment != new:
                if prev is not None and prev.segment is not None:
                    population[prev.segment] -= 1
                if new is not None:
                    population[new] += 1
        due: dict[int, dict[str, float]] = {}
        for row, p in zip(rows, parts, strict=True):
            due.setdefault(p, {})[row.customer_id] = row.at + DAY
        changed = {cid: decisions.states[cid] for cid in customers}
        await self.assignments.save(
            changed, due, population, self.bundle.version, reschedule=rescore
        )
        self.recent.extend(decisions.segments)
        return BatchResult(
            rows=rows, alerts=decisions.alerts, segments=decisions.segments, churn=decisions.churn
        )

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


__all__ = ["AssignmentStore", "BatchResult", "Engine", "iso", "state_key"]
