"""The Redis stores: features (`RedisFeatureStore`) and assignments (`RedisAssignmentStore`).

Both implement the protocols of `stream.stores` on a Redis server or a Redis Cluster; how
calls reach the servers (one call, or one per hash slot in one pipeline) is
`stream.scripts.topology`'s business, not theirs.

`RedisFeatureStore.apply(events)` adds a batch of validated events and returns, for every
event, the features of its customer right after it (so decisions do not depend on how a
stream was cut into batches); `read(customer_ids, at)` returns features at any later time
(a silent customer's recency grows, its windows empty out). Each call is one round trip:
`store.lua` with every customer of the batch and each customer's events in order. The
script does O(events) work and returns each customer's state after each of its events;
`stream.state` sums the windows for the whole batch with numpy.

Staging: the engine calls `apply(stage=True)`, which writes nothing, decides, publishes
the alerts, and then `RedisAssignmentStore.save(features=...)` commits the new feature
states in the same `commit.lua` call as the assignment states (compare-and-set on each
state's SHA1). So after a crash either both were written or neither: a redelivered event
is either new again (and decided into the same alerts) or a duplicate whose decisions were
already published.

Key layout (`stream.stores`): ``{prefix}:f:{<customer>}`` (features, binary format in
`stream/state.py`), ``{prefix}:a:{<customer>}`` (assignment state, msgpack), one hash tag
per customer so both share a slot, with ``{prefix}:o:{<customer>}`` (the owner record:
generation and token of the last save, and what the state counts in; for fencing and the
population transitions); ``{prefix}:due:<partition>`` (sorted set),
``{prefix}:population:<version>`` and ``{prefix}:centers:<version>`` (hashes),
``{prefix}:generation`` (the group's claim counter).

Idempotency and lateness: an event is identified by a 32-bit fingerprint of its event_id
within its customer and UTC day. An event whose day is more than `max_lateness_days`
(default 7) before the day of its customer's newest event is rejected as ``too_late``;
every later day keeps its fingerprints, so a redelivery is either recognised and ignored
or too late, and never counted twice. The bound keeps the idempotency record small
(6 bytes per event for 8 days instead of for the whole retention); the windows still
cover the whole retention. A customer keeps at most `dedupe_max_events` fingerprints
(SEGSTREAM_DEDUPE_MAX_EVENTS): past it the oldest are evicted and counted
(`ApplyResult.evicted`), and a redelivery of an evicted event is applied again.

Expiry: days leaving the retention are trimmed inside the same call; the key itself
expires `retention_days` after its last write, so customers silent that long vanish.

This module knows Redis and the catalog; it knows nothing of faust or Kafka.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgpack
import numpy as np
from redis.asyncio import Redis, RedisCluster

from models.catalog import DEFAULT_PROFILE_RETENTION_DAYS, Catalog
from models.events import Event
from stream.decide import CustomerState
from stream.fold import EventEncoder
from stream.scripts import Call, Script, topology
from stream.state import DEFAULT_DEDUPE_MAX_EVENTS
from stream.stores import (
    DEFAULT_MAX_LATENESS_DAYS,
    STATUSES,
    ApplyResult,
    CustomerApplied,
    EventStatus,
    Features,
    Fenced,
    StagedFeatures,
    StoreResults,
    by_customer,
    centers_key,
    check_dedupe_cap,
    check_lateness,
    count_states,
    counted_as,
    due_key,
    feature_key,
    generation_key,
    owner_key,
    population_key,
    split_population,
    state_key,
    transition,
)

STORE: Final = Script("store.lua")
COMMIT: Final = Script("commit.lua")
CENTERS: Final = Script("centers.lua")
COUNT: Final = Script("population.lua")
#: How long a cluster save's token is kept (its retries come within seconds to minutes).
TOKEN_TTL: Final = 86_400
#: How recent an older generation's uncounted-looking transition must be to be recovered
#: (commit.lua): well inside TOKEN_TTL, so a save that did count still has its token key
#: then, whatever the skew between the workers' clocks.
RECOVER_SECONDS: Final = TOKEN_TTL // 2


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(counts: Counter[str]) -> list[str | int]:
    """Field, change, ... of the non-zero changes (population.lua's arguments)."""
    return [v for name, n in counts.items() if n for v in (name, n)]


class RedisFeatureStore:
    """The catalog's features per customer in Redis (a server or a Redis Cluster).

    `client` is a `redis.asyncio.Redis` or `RedisCluster` made by `stream.redis_conn`.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        catalog: Catalog,
        *,
        prefix: str = "segstream",
        ttl_seconds: int | None = None,
        max_lateness_days: int = DEFAULT_MAX_LATENESS_DAYS,
        profile_days: int = DEFAULT_PROFILE_RETENTION_DAYS,
        dedupe_max_events: int = DEFAULT_DEDUPE_MAX_EVENTS,
    ) -> None:
        check_lateness(catalog, max_lateness_days)
        check_dedupe_cap(dedupe_max_events)
        self.client = client
        self.catalog = catalog
        self.prefix = prefix
        # The key outlives the day windows: it holds the profile (lifetime totals, first
        # and last seen) for `profile_days` after the last event.
        self.profile_days = max(profile_days, catalog.retention_days)
        self.ttl_seconds = ttl_seconds or self.profile_days * 86_400
        self.max_lateness_days = max_lateness_days
        self.dedupe_max_events = dedupe_max_events
        lay = catalog.layout
        self._spec = msgpack.packb(
            [
                catalog.retention_days,
                self.ttl_seconds,
                len(lay.counters),
                len(lay.lasts),
                max_lateness_days,
                len(lay.sums),
                self.profile_days,
                dedupe_max_events,
            ]
        )
        self._encoder = EventEncoder(catalog)
        self._results = StoreResults(catalog, self.profile_days)
        self._net = topology(client)
        #: Round trips made so far (one per `apply` or `read`); tests and metrics read it.
        self.round_trips = 0

    async def load(self) -> None:
        """Load the script (idempotent); called once at start-up."""
        await self._net.load(STORE)

    async def apply(
        self, events: Sequence[Event], *, at: float | None = None, stage: bool = False
    ) -> ApplyResult:
        """Apply a batch; return each event's status and its customer's features after it.

        Features are evaluated at max(`at`, the customer's newest event time). With
        `stage`, nothing is written: the result's `staged` holds the new states for
        `RedisAssignmentStore.save(features=...)` to commit together with what was
        decided from them.
        """
        if not events:
            return self._results.empty()
        mine = by_customer(events)
        customers = list(mine)
        keys = [feature_key(self.prefix, cid) for cid in customers]
        groups = self._net.groups(keys)
        mode = "stage" if stage else "apply"
        calls: list[Call] = []
        for group in groups:
            payload = [[self._encoder.encode(events[i]) for i in mine[customers[c]]] for c in group]
            packed = msgpack.packb(payload, use_bin_type=False)
            calls.append(([keys[c] for c in group], [self._spec, mode, packed]))
        self.round_trips += 1
        replies = await self._net.run(STORE, calls)
        applied = [
            CustomerApplied(keys[c], customers[c], codes, after, digest or b"", evicted)
            for group, reply in zip(groups, replies, strict=True)
            for c, (codes, after, digest, evicted) in zip(group, reply, strict=True)
        ]
        return self._results.apply_result(events, mine, applied, stage=stage, at=at)

    async def read(self, customer_ids: Sequence[str], *, at: float) -> Features:
        """Features of known customers at time `at` (unknown ids are left out)."""
        ids = list(dict.fromkeys(customer_ids))
        if not ids:
            return self._results.features([], [], np.empty(0))
        self.round_trips += 1
        values = await self._net.get_many([feature_key(self.prefix, cid) for cid in ids])
        return self._results.read(ids, values, at)


class RedisAssignmentStore:
    """Customers' assignment states and the per-partition re-score index, in Redis.

    A worker owns its partitions' customers, so it keeps their states in memory and reads
    Redis only for customers it has not seen; `forget()` drops that cache when partitions
    move (a rebalance) so a state another worker wrote is read again. A batch's writes
    (with the staged feature states) are one `commit.lua` call on a server, one call per
    hash slot in one pipeline on a cluster.

    The cache holds each state packed (the bytes written to Redis), not as objects, so
    Python's cycle collector never walks it (the engine benchmark's gain, commit aa60420).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str,
        ttl_seconds: int,
        cache_size: int = 500_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.cache_size = cache_size
        self.clock = clock  # wall clock of the owner records (recovery window only)
        self.round_trips = 0
        self._cache: dict[str, bytes] = {}  # customer id -> packed state
        self._net = topology(client)

    def due_key(self, partition: int) -> str:
        return due_key(self.prefix, partition)

    def population_key(self, version: str) -> str:
        return population_key(self.prefix, version)

    def centers_key(self, version: str) -> str:
        return centers_key(self.prefix, version)

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
            values = await self._net.get_many(keys)
            for cid, v in zip(missing, values, strict=True):
                if v:
                    found[cid] = CustomerState.from_list(msgpack.unpackb(v))
        return found

    async def save(
        self,
        states: Mapping[str, CustomerState | None],
        due: dict[int, dict[str, float]],
        *,
        reschedule: bool = False,
        features: StagedFeatures | None = None,
        feature_ttl: int | None = None,
        unschedule: dict[int, list[str]] | None = None,
        owners: Mapping[str, int] | None = None,
        token: str | None = None,
    ) -> list[int]:
        """Write states (None deletes one: an expired customer), re-score times and the
        staged `features` (with `reschedule` False a customer already scheduled keeps its
        time, so activity never postpones it), remove `unschedule`'s customers from their
        partitions' schedules, and count each state's population transition (read from
        the stored state, so a replayed save or a stale cache counts nothing twice).
        Returns the positions in `features` that met a conflict (another writer changed
        the state since it was read): the caller applies those customers' events again.

        `owners` gives each state's generation (`claim`; default 0) and `token` names the
        save (pass the same one when retrying it). Raises `Fenced`, writing nothing of
        that customer's slot, when a customer's owner record holds a newer generation.

        The in-memory states change only once Redis has them: a failed write leaves this
        worker deciding from what Redis holds, as a restarted one would.
        """
        staged = features or StagedFeatures()
        gone = unschedule or {}
        if not states and not due and not staged.keys and not gone:
            return []
        packed = {
            cid: b"" if st is None else msgpack.packb(st.to_list()) for cid, st in states.items()
        }
        gens = [int((owners or {}).get(cid, 0)) for cid in packed]
        counted = [counted_as(st) for st in states.values()]
        conflicts = await self._commit(
            packed, gens, counted, due, gone, reschedule, staged,
            feature_ttl or self.ttl_seconds, token or os.urandom(8).hex(),
        )  # fmt: skip
        if len(self._cache) + len(packed) > self.cache_size:
            self._cache.clear()
        for cid, value in packed.items():
            if value:
                self._cache[cid] = value
            else:
                self._cache.pop(cid, None)
        return conflicts

    async def _commit(
        self,
        states: dict[str, bytes],
        gens: list[int],
        counted: list[str],
        due: dict[int, dict[str, float]],
        gone: dict[int, list[str]],
        reschedule: bool,
        staged: StagedFeatures,
        feature_ttl: int,
        token: str,
    ) -> list[int]:
        """One `commit.lua` call per group of keys `topology` allows together: on a
        server one call, which counts the population too. On a cluster, the states' slots
        first; then, with the fenced customers left out, the due keys' slots (a due key
        sits in another slot than its customers, so it cannot check their owners) and the
        population changes the states' calls returned (`_count`, once per token)."""
        self.round_trips += 1
        nf, ns = len(staged.keys), len(states)
        cids = list(states)
        s_values = list(states.values())
        parts = sorted(set(due) | set(gone))
        mode = "SET" if reschedule else "NX"
        keys = [*staged.keys, *(state_key(self.prefix, cid) for cid in cids),
                *(self.due_key(p) for p in parts)]  # fmt: skip
        owner_keys = [owner_key(self.prefix, cid) for cid in cids]
        inline = f"{self.prefix}:population:" if self._net.together else ""
        clock = int(self.clock())

        def due_args(skip: set[str]) -> list[list[Any]]:
            out: list[list[Any]] = []
            for p in parts:
                kept = [(m, t) for m, t in due.get(p, {}).items() if m not in skip]
                times = [v for m, t in kept for v in (m, repr(t))]
                out.append([mode, times, [m for m in gone.get(p, []) if m not in skip]])
            return out

        def calls_for(groups: list[list[int]], dues: list[list[Any]]) -> list[Call]:
            calls: list[Call] = []
            for group in groups:
                f = [i for i in group if i < nf]
                s = [i - nf for i in group if nf <= i < nf + ns]
                d = [i - nf - ns for i in group if nf + ns <= i]
                blob = msgpack.packb(
                    [feature_ttl, self.ttl_seconds, len(f), len(s), len(d),
                     [staged.digests[i] for i in f], [staged.states[i] for i in f],
                     [s_values[i] for i in s], [dues[i] for i in d],
                     [gens[i] for i in s], token, inline, [counted[i] for i in s],
                     clock, RECOVER_SECONDS],
                    use_bin_type=False,
                )  # fmt: skip
                call_keys = [*(keys[i] for i in group if i < nf + ns),
                             *(owner_keys[i] for i in s),
                             *(keys[i] for i in group if i >= nf + ns)]  # fmt: skip
                calls.append((call_keys, [blob]))
            return calls

        if self._net.together:
            groups = self._net.groups(keys)
            replies = await self._net.run(COMMIT, calls_for(groups, due_args(set())))
        else:
            groups = self._net.groups(keys[: nf + ns])
            replies = await self._net.run(COMMIT, calls_for(groups, []))
            skip = {cids[i - nf] for group, reply in zip(groups, replies, strict=True)
                    if int(reply[0]) for i in group if i >= nf}  # fmt: skip
            later = [[nf + ns + i for i in g] for g in self._net.groups(keys[nf + ns :])]
            if later:
                await self._net.run(COMMIT, calls_for(later, due_args(skip)))
        fenced = any(int(reply[0]) for reply in replies)
        changes: dict[str, Counter[str]] = {}
        recovered: list[list[str]] = []
        for reply in replies:
            flat = reply[2]
            for j in range(0, len(flat), 3):
                version, name = _text(flat[j]), _text(flat[j + 1])
                changes.setdefault(version, Counter())[name] += int(flat[j + 2])
            flat = reply[3]
            recovered += [[_text(v) for v in flat[j : j + 4]] for j in range(0, len(flat), 4)]
        # The slots that were written count their changes even when another was fenced.
        await self._count(changes, token, recovered)
        if fenced:
            raise Fenced(f"a newer owner holds customers of this save (token {token})")
        return [group[int(i) - 1] for group, reply in zip(groups, replies, strict=True)
                for i in reply[1]]  # fmt: skip

    async def _count(
        self, changes: dict[str, Counter[str]], token: str, recovered: list[list[str]]
    ) -> None:
        """Add a cluster save's population changes, once per token and version, and the
        transitions its calls recovered from older generations' saves (`recovered`: old
        token, state key, counted before, counted; see commit.lua), once per customer and
        only where that save never counted (population.lua)."""
        olders: dict[str, list[tuple[str, str, Counter[str]]]] = {}
        for old, member, was, now in recovered:
            for version, counts in transition(was, now).items():
                olders.setdefault(version, []).append((old, member, counts))
        calls: list[Call] = []
        for version in sorted(set(changes) | set(olders)):
            key = self.population_key(version)
            items = _pairs(changes.get(version, Counter()))
            keys, args = [key, f"{{{key}}}:save:{token}"], [TOKEN_TTL, len(items) // 2, *items]
            for old, member, counts in olders.get(version, []):
                keys.append(f"{{{key}}}:save:{old}")
                args += [member, len(counts), *_pairs(counts)]
            if items or len(keys) > 2:
                calls.append((keys, args))
        if calls:
            await self._net.run(COUNT, calls)

    async def claim(self) -> int:
        """A new generation for the partitions just assigned (see `AssignmentStore.claim`)."""
        self.round_trips += 1
        return int(await self.client.incr(generation_key(self.prefix)))

    async def recount(self, version: str) -> tuple[dict[int, int], dict[str, int]]:
        """Customers per segment and stage under `version`, from a scan of the stored
        assignment states (O(customers): for tests and operators, not the hot path)."""
        keys = await self._net.scan(f"{self.prefix}:a:{{*")
        values: list[bytes | None] = []
        for i in range(0, len(keys), 1000):
            values += await self._net.get_many(keys[i : i + 1000])
        return count_states(values, version)

    async def unschedule(self, partition: int, customer_ids: Sequence[str]) -> None:
        """Remove customers from a partition's re-score schedule."""
        self.round_trips += 1
        await self.client.zrem(self.due_key(partition), *customer_ids)

    async def due(self, partition: int, now: float, limit: int) -> list[str]:
        """Up to `limit` customers of a partition due at `now`, the longest due first."""
        self.round_trips += 1
        key = self.due_key(partition)
        found = await self.client.zrangebyscore(key, "-inf", float(now), 0, limit)
        return [v.decode() if isinstance(v, bytes) else str(v) for v in found]

    async def sync_centers(
        self, version: str, worker: str, stats: bytes, forget: Mapping[str, bytes] | None = None
    ) -> dict[str, bytes]:
        """Write this worker's center statistics and return every worker's (`centers.lua`):
        one key, so one hash slot, one atomic call. HSET of absolute values, never an
        increment, so a sync retried after a lost reply writes the same value again; a
        stale entry in `forget` is dropped only if it still holds the value seen."""
        self.round_trips += 1
        args: list[str | bytes] = [worker, stats]
        for name, value in (forget or {}).items():
            args += [name, value]
        (flat,) = await self._net.run(CENTERS, [([self.centers_key(version)], args)])
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): bytes(v)
            for k, v in zip(flat[::2], flat[1::2], strict=True)
        }

    async def population(self, version: str) -> dict[int, int]:
        """Customers per segment under `version` (as the saves counted them)."""
        raw = await self.client.hgetall(self.population_key(version))  # type: ignore[misc]
        return split_population(raw)[0]

    async def stages(self, version: str) -> dict[str, int]:
        """Customers per lifecycle stage among those decided under `version`."""
        raw = await self.client.hgetall(self.population_key(version))  # type: ignore[misc]
        return split_population(raw)[1]


__all__ = [
    "COMMIT",
    "DEFAULT_MAX_LATENESS_DAYS",
    "STATUSES",
    "STORE",
    "ApplyResult",
    "EventStatus",
    "Features",
    "RedisAssignmentStore",
    "RedisFeatureStore",
    "StagedFeatures",
    "feature_key",
    "state_key",
]
