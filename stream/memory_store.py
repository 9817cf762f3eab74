"""In-memory stores: both protocols of `stream.stores` in one process, no server.

`Keyspace` is the part of Redis the stores use (strings with a time to live, sorted sets,
hashes), under the same keys and with the same values as the Redis stores write: the
feature state of `stream.state`, the msgpack `CustomerState`, the due sets, population
and center hashes. `MemoryFeatureStore` applies events with `stream.fold` (store.lua's
rules in Python); `MemoryAssignmentStore.save` does what `commit.lua` does (the staged
feature states written only over the state they were computed from, SHA1-checked).
`tests/test_store_contract.py` holds them to the Redis stores' behaviour.

For fast tests of the engine and for tools that need no shared state; `memory_stores`
builds a pair over one keyspace. Expiry follows `clock` (wall time, as Redis does, unless
a test passes its own).

Pure: no Redis, no faust.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np

from models.catalog import DEFAULT_PROFILE_RETENTION_DAYS, Catalog
from models.events import Event
from stream.decide import CustomerState
from stream.fold import EventEncoder, FoldSpec, fold
from stream.state import DEFAULT_DEDUPE_MAX_EVENTS
from stream.stores import (
    DEFAULT_MAX_LATENESS_DAYS,
    STATE_TTL_MARGIN_SECONDS,
    ApplyResult,
    CustomerApplied,
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


def digest(value: bytes | None) -> bytes:
    """What the commit compares: the hex SHA1 of a state (``redis.sha1hex``), b"" for none.

    >>> digest(None), digest(b"abc")[:8]
    (b'', b'a9993e36')
    """
    return hashlib.sha1(value).hexdigest().encode() if value is not None else b""


class Keyspace:
    """Strings with expiry, sorted sets and hashes by key, as the stores use Redis."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._strings: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires at)
        self._zsets: dict[str, dict[str, float]] = {}
        self._hashes: dict[str, dict[str, float]] = {}
        self._blobs: dict[str, dict[str, bytes]] = {}  # hashes of bytes values

    def get(self, key: str) -> bytes | None:
        found = self._strings.get(key)
        if found is None:
            return None
        if found[1] <= self.clock():
            del self._strings[key]
            return None
        return found[0]

    def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self._strings[key] = (value, self.clock() + ttl_seconds)

    def ttl(self, key: str) -> float | None:
        """Seconds until the key expires (None: no such string)."""
        return None if self.get(key) is None else self._strings[key][1] - self.clock()

    def delete(self, key: str) -> None:
        self._strings.pop(key, None)
        self._zsets.pop(key, None)
        self._hashes.pop(key, None)
        self._blobs.pop(key, None)

    def keys(self, prefix: str) -> list[str]:
        """Live keys that start with ``prefix:``."""
        start = f"{prefix}:"
        strings = [k for k in list(self._strings) if self.get(k) is not None]
        return [
            k for k in (*strings, *self._zsets, *self._hashes, *self._blobs) if k.startswith(start)
        ]

    def drop(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many."""
        found = self.keys(prefix)
        for key in found:
            self.delete(key)
        return len(found)

    def zadd(self, key: str, members: dict[str, float], *, nx: bool) -> None:
        zset = self._zsets.setdefault(key, {})
        for member, score in members.items():
            if not (nx and member in zset):
                zset[member] = float(score)

    def zrem(self, key: str, members: Sequence[str]) -> None:
        zset = self._zsets.get(key, {})
        for member in members:
            zset.pop(member, None)
        if not zset:
            self._zsets.pop(key, None)

    def zrange(self, key: str, max_score: float = float("inf"), limit: int = -1) -> list[str]:
        """Members by score then name (Redis's order), up to `max_score`, at most `limit`."""
        zset = self._zsets.get(key, {})
        found = sorted((s, m.encode(), m) for m, s in zset.items() if s <= max_score)
        return [m for _, _, m in (found if limit < 0 else found[:limit])]

    def zscore(self, key: str, member: str) -> float | None:
        return self._zsets.get(key, {}).get(member)

    def hincr(self, key: str, name: str, by: float) -> None:
        fields = self._hashes.setdefault(key, {})
        fields[name] = fields.get(name, 0) + by

    def hgetall(self, key: str) -> dict[str, float]:
        return dict(self._hashes.get(key, {}))

    def hset(self, key: str, name: str, value: bytes) -> None:
        self._blobs.setdefault(key, {})[name] = value

    def hdel_blobs(self, key: str, names: Sequence[str]) -> None:
        fields = self._blobs.get(key, {})
        for name in names:
            fields.pop(name, None)

    def hgetall_bytes(self, key: str) -> dict[str, bytes]:
        return dict(self._blobs.get(key, {}))

    def hdel(self, key: str, name: str) -> None:
        fields = self._hashes.get(key, {})
        fields.pop(name, None)
        if not fields:
            self._hashes.pop(key, None)

    def incr(self, key: str) -> int:
        """INCR on a string that does not expire."""
        value = int(self.get(key) or b"0") + 1
        self.set(key, str(value).encode(), float("inf"))
        return value


class MemoryFeatureStore:
    """The catalog's features per customer in a `Keyspace` (see `stream.fold`)."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        keyspace: Keyspace | None = None,
        prefix: str = "segstream",
        ttl_seconds: int | None = None,
        max_lateness_days: int = DEFAULT_MAX_LATENESS_DAYS,
        profile_days: int = DEFAULT_PROFILE_RETENTION_DAYS,
        dedupe_max_events: int = DEFAULT_DEDUPE_MAX_EVENTS,
    ) -> None:
        check_lateness(catalog, max_lateness_days)
        check_dedupe_cap(dedupe_max_events)
        self.keyspace = keyspace or Keyspace()
        self.catalog = catalog
        self.prefix = prefix
        # The key outlives the day windows: it holds the profile (lifetime totals, first
        # and last seen) for `profile_days` after the last event.
        self.profile_days = max(profile_days, catalog.retention_days)
        self.ttl_seconds = ttl_seconds or self.profile_days * 86_400
        self.max_lateness_days = max_lateness_days
        self.dedupe_max_events = dedupe_max_events
        lay = catalog.layout
        self._spec = FoldSpec(
            catalog.retention_days, len(lay.counters), len(lay.lasts), max_lateness_days,
            n_sums=len(lay.sums), profile_days=self.profile_days,
            dedupe_max_events=dedupe_max_events,
        )  # fmt: skip
        self._encoder = EventEncoder(catalog)
        self._results = StoreResults(catalog, self.profile_days)
        self.round_trips = 0  # calls, as the Redis store counts its round trips

    async def load(self) -> None:
        """Nothing to load (the protocol's start-up step)."""

    async def apply(
        self, events: Sequence[Event], *, at: float | None = None, stage: bool = False
    ) -> ApplyResult:
        """As `RedisFeatureStore.apply`: statuses and features after each event; with
        `stage`, nothing is written and `staged` holds the new states."""
        if not events:
            return self._results.empty()
        self.round_trips += 1
        mine = by_customer(events)
        applied = []
        for cid, idxs in mine.items():
            key = feature_key(self.prefix, cid)
            raw = self.keyspace.get(key)
            codes, after, new, evicted = fold(
                raw, [self._encoder.encode(events[i]) for i in idxs], self._spec
            )
            if new is not None and not stage:
                self.keyspace.set(key, new, self.ttl_seconds)
            applied.append(
                CustomerApplied(key, cid, codes, after, digest(raw) if stage else b"", evicted)
            )
        return self._results.apply_result(events, mine, applied, stage=stage, at=at)

    async def read(self, customer_ids: Sequence[str], *, at: float) -> Features:
        """Features of known customers at time `at` (unknown ids are left out)."""
        ids = list(dict.fromkeys(customer_ids))
        if not ids:
            return self._results.features([], [], np.empty(0))
        self.round_trips += 1
        values = [self.keyspace.get(feature_key(self.prefix, cid)) for cid in ids]
        return self._results.read(ids, values, at)


class MemoryAssignmentStore:
    """Assignment states, schedule, population and centers in a `Keyspace`."""

    def __init__(self, *, keyspace: Keyspace, prefix: str, ttl_seconds: int) -> None:
        self.keyspace = keyspace
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.round_trips = 0

    def due_key(self, partition: int) -> str:
        return due_key(self.prefix, partition)

    def forget(self) -> None:
        """Nothing cached: every `load` reads the keyspace."""

    async def load(self, customer_ids: Sequence[str]) -> dict[str, CustomerState]:
        self.round_trips += 1
        found = {}
        for cid in customer_ids:
            value = self.keyspace.get(state_key(self.prefix, cid))
            if value:
                found[cid] = CustomerState.from_list(msgpack.unpackb(value))
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
        """As `RedisAssignmentStore.save` on one server (commit.lua): refuses the whole
        save with `Fenced` when an owner record is newer, returns the conflicting
        positions in `features` (not written), counts each state's transition once."""
        staged = features or StagedFeatures()
        gone = unschedule or {}
        if not states and not due and not staged.keys and not gone:
            return []
        self.round_trips += 1
        ks = self.keyspace
        token = token or os.urandom(8).hex()
        gens = {cid: int((owners or {}).get(cid, 0)) for cid in states}
        records: dict[str, list[str] | None] = {}
        for cid in states:
            raw = ks.get(owner_key(self.prefix, cid))
            record = raw.decode().split("\n") if raw else None
            if record is not None and int(record[0]) > gens[cid]:
                raise Fenced(f"a newer owner holds customers of this save (token {token})")
            records[cid] = record
        conflicts = []
        for i, key in enumerate(staged.keys):
            if digest(ks.get(key)) == staged.digests[i]:
                ks.set(key, staged.states[i], feature_ttl or self.ttl_seconds)
            else:
                conflicts.append(i)
        changes: Counter[tuple[str, str]] = Counter()
        clock = int(ks.clock())
        for cid, st in states.items():
            key = state_key(self.prefix, cid)
            record = records[cid]
            again = record is not None and record[1] == token
            was = "" if record is None else record[2] if again else record[3]
            now = counted_as(st)
            value = b"" if st is None else msgpack.packb(st.to_list())
            if value:
                ks.set(key, value, self.ttl_seconds)
            else:
                ks.delete(key)
            ttl = min(self.ttl_seconds, 86_400) if not value else self.ttl_seconds
            owner = f"{gens[cid]}\n{token}\n{was}\n{now}\n{clock}".encode()
            ks.set(owner_key(self.prefix, cid), owner, ttl)
            if not again:
                for version, counts in transition(was, now).items():
                    changes.update({(version, name): n for name, n in counts.items()})
        for (version, name), change in changes.items():
            if change:
                key = population_key(self.prefix, version)
                ks.hincr(key, name, change)
                if not ks.hgetall(key)[name]:
                    ks.hdel(key, name)
        for partition in sorted(set(due) | set(gone)):
            ks.zadd(self.due_key(partition), due.get(partition, {}), nx=not reschedule)
            if gone.get(partition):
                ks.zrem(self.due_key(partition), gone[partition])
        return conflicts

    async def claim(self) -> int:
        """A new generation (the keyspace's counter, as `INCR` on Redis)."""
        self.round_trips += 1
        return self.keyspace.incr(generation_key(self.prefix))

    async def recount(self, version: str) -> tuple[dict[int, int], dict[str, int]]:
        """Customers per segment and stage under `version`, from the stored states."""
        keys = [k for k in self.keyspace.keys(self.prefix) if k.startswith(f"{self.prefix}:a:{{")]
        return count_states([self.keyspace.get(k) for k in keys], version)

    async def unschedule(self, partition: int, customer_ids: Sequence[str]) -> None:
        """Remove customers from a partition's re-score schedule."""
        self.round_trips += 1
        self.keyspace.zrem(self.due_key(partition), customer_ids)

    async def due(self, partition: int, now: float, limit: int) -> list[str]:
        """Up to `limit` customers of a partition due at `now`, the longest due first."""
        self.round_trips += 1
        return self.keyspace.zrange(self.due_key(partition), float(now), limit)

    async def sync_centers(
        self, version: str, worker: str, stats: bytes, forget: Mapping[str, bytes] | None = None
    ) -> dict[str, bytes]:
        """As `RedisAssignmentStore.sync_centers` (centers.lua): drop the stale entries
        that still hold the value seen, set this worker's entry, return all."""
        self.round_trips += 1
        key = centers_key(self.prefix, version)
        seen = self.keyspace.hgetall_bytes(key)
        self.keyspace.hdel_blobs(key, [n for n, v in (forget or {}).items() if seen.get(n) == v])
        self.keyspace.hset(key, worker, stats)
        return self.keyspace.hgetall_bytes(key)

    async def population(self, version: str) -> dict[int, int]:
        """Customers per segment under `version` (as the saves counted them)."""
        return split_population(self.keyspace.hgetall(population_key(self.prefix, version)))[0]

    async def stages(self, version: str) -> dict[str, int]:
        """Customers per lifecycle stage among those decided under `version`."""
        return split_population(self.keyspace.hgetall(population_key(self.prefix, version)))[1]


def memory_stores(
    catalog: Catalog,
    *,
    prefix: str = "segstream",
    max_lateness_days: int = DEFAULT_MAX_LATENESS_DAYS,
    profile_days: int = DEFAULT_PROFILE_RETENTION_DAYS,
    keyspace: Keyspace | None = None,
    dedupe_max_events: int = DEFAULT_DEDUPE_MAX_EVENTS,
) -> tuple[MemoryFeatureStore, MemoryAssignmentStore]:
    """A feature store and an assignment store over one keyspace (the runtime's pair).

    >>> from models.catalog import default_catalog
    >>> features, assignments = memory_stores(default_catalog(), prefix="t")
    >>> features.keyspace is assignments.keyspace, assignments.ttl_seconds // 86_400
    (True, 760)
    """
    features = MemoryFeatureStore(
        catalog, keyspace=keyspace, prefix=prefix, max_lateness_days=max_lateness_days,
        profile_days=profile_days, dedupe_max_events=dedupe_max_events,
    )  # fmt: skip
    assignments = MemoryAssignmentStore(
        keyspace=features.keyspace,
        prefix=prefix,
        ttl_seconds=features.ttl_seconds + STATE_TTL_MARGIN_SECONDS,
    )
    return features, assignments


@dataclass
class MemoryConnection:
    """What ``memory://`` opens in `stream.runtime`: one process's keyspace.

    Shaped like `stream.redis_conn.Connection` where the runtime's users need it (`url`,
    `drop`, `close`); nothing outlives the process.
    """

    keyspace: Keyspace = field(default_factory=Keyspace)
    url: str = "memory://"

    async def get(self, key: str) -> str | None:
        """A plain string value (a marker such as a backfill's), or None."""
        value = self.keyspace.get(key)
        return None if value is None else value.decode()

    async def put(self, key: str, value: str) -> None:
        """Set a plain string value that does not expire (for this process's life)."""
        self.keyspace.set(key, value.encode(), float("inf"))

    async def drop(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many."""
        return self.keyspace.drop(prefix)

    async def close(self) -> None:
        """Nothing to close: the keyspace goes with its last reference."""
