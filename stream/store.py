"""The feature store: customers' rolling features in Redis, exact, idempotent, one round trip.

`RedisFeatureStore.apply(events)` adds a batch of validated events and returns, for every
event, the features of its customer right after it (so decisions do not depend on how a
stream was cut into batches); `read(customer_ids, at)` returns features at any later time
(a silent customer's recency grows, its windows empty out).

Each call is one Redis round trip: one `EVALSHA` of `store.lua` (loaded once, called by
SHA) with every customer of the batch and each customer's events in order; on a Redis
Cluster, one call per hash slot in one pipeline. The script does O(events) work and
returns each customer's state after each of its events; `stream.state` sums the windows
for the whole batch with numpy.

Staging: the engine calls `apply(stage=True)`, which writes nothing, decides, publishes
the alerts, and then commits the new feature states in the same script call as the
assignment states (`commit_script`, compare-and-set on each state's SHA1). So after a
crash either both were written or neither: a redelivered event is either new again (and
decided into the same alerts) or a duplicate whose decisions were already published.

Key layout: one string per customer, ``{prefix}:f:{<customer_id>}``. The braces are the
Redis Cluster hash tag, so every key of one customer (the stream engine keeps its
assignment state at ``{prefix}:a:{<customer_id>}``) shares a slot. The value's binary
format is documented in `stream/state.py`.

Idempotency and lateness: an event is identified by a 32-bit fingerprint of its event_id
within its customer and UTC day. An event whose day is more than `max_lateness_days`
(default 7) before the day of its customer's newest event is rejected as ``too_late``;
every later day keeps its fingerprints, so a redelivery is either recognised and ignored
or too late, and never counted twice. The bound keeps the idempotency record small
(6 bytes per event for 8 days instead of for the whole retention); the windows still
cover the whole retention.

Expiry: days leaving the retention are trimmed inside the same call; the key itself
expires `retention_days` after its last write, so customers silent that long vanish.

This module knows Redis and the catalog; it knows nothing of faust or Kafka.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, Literal

import msgpack
import numpy as np
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from models.catalog import Catalog, distinct_key, numeric_value
from models.events import Event
from stream.redis_conn import get_many
from stream.state import StateCodec

SCRIPT: Final = resources.files("stream").joinpath("store.lua").read_text()
EventStatus = Literal["applied", "duplicate", "too_late"]
#: How many days before its customer's newest event an event may still arrive.
DEFAULT_MAX_LATENESS_DAYS: Final = 7
_STATUS: Final[tuple[EventStatus, ...]] = ("applied", "duplicate", "too_late")


def customer_tag(customer_id: str) -> str:
    """A customer's Redis Cluster hash tag: the id, with `%`, `{` and `}` percent-escaped.

    Escaping keeps the tag inside one pair of braces whatever the id holds (an id with a
    `}` would otherwise cut the tag short and scatter its keys over slots), and it is
    reversible, so distinct ids always get distinct tags.

    >>> customer_tag("c42"), customer_tag("x}:f:{y"), customer_tag("100%")
    ('c42', 'x%7D:f:%7By', '100%25')
    """
    return customer_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def feature_key(prefix: str, customer_id: str) -> str:
    """The Redis key of a customer's features.

    Distinct customer ids give distinct keys (the escaped id sits between fixed text),
    so a crafted id cannot reach another customer's state.

    >>> feature_key("segstream", "c42")
    'segstream:f:{c42}'
    """
    return f"{prefix}:f:{{{customer_tag(customer_id)}}}"


def event_fingerprint(event_id: str) -> bytes:
    """4 bytes that stand for an event id in the idempotency record of its day.

    A false duplicate needs two ids of one customer and one UTC day to collide in 32 bits:
    about one in 10^7 for a customer with 30 events that day.
    """
    return hashlib.blake2b(event_id.encode(), digest_size=4).digest()


def _value_fingerprint(value: str) -> bytes:
    return hashlib.blake2b(value.encode(), digest_size=4).digest()


@dataclass(frozen=True)
class Features:
    """Features of some customers at their evaluation times (one row each)."""

    names: tuple[str, ...]  # the catalog's feature names, one per column
    customers: list[str]  # whose features each row holds
    at: np.ndarray  # Unix seconds, per row: when the features were evaluated
    values: np.ndarray  # (rows, features)

    def row(self, customer_id: str) -> dict[str, float] | None:
        """The customer's latest row by feature name (None when the customer is not here)."""
        for i in range(len(self.customers) - 1, -1, -1):
            if self.customers[i] == customer_id:
                return dict(zip(self.names, self.values[i].tolist(), strict=True))
        return None


@dataclass
class StagedFeatures:
    """New feature states computed but not yet written (`RedisFeatureStore.apply(stage=True)`).

    `digests` are the SHA1 of each key's state when it was read (empty: none): the commit
    writes a state only over the one it was computed from. Another writer in between (two
    workers briefly owning one partition during a rebalance) makes it a conflict, and the
    customer's `events` are applied again instead, which the idempotent store allows.
    """

    keys: list[str] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    states: list[bytes] = field(default_factory=list)
    events: list[list[Event]] = field(default_factory=list)

    def add(self, key: str, digest: bytes, state: bytes, events: list[Event]) -> None:
        self.keys.append(key)
        self.digests.append(digest)
        self.states.append(state)
        self.events.append(events)


@dataclass(frozen=True)
class ApplyResult:
    """What a batch did: per input event, its status and its customer's features after it.

    `features` has one row per event, in input order (a duplicate's row shows the state it
    found), except a ``too_late`` event of a customer with no stored state, which has none:
    `rows` maps each event to its row; `features.row(c)` is customer c's state after the
    whole batch.
    """

    statuses: list[EventStatus]
    features: Features
    #: Per input event, its row in `features`, or -1 when it has none (a ``too_late``
    #: event of a customer with no stored state has no row).
    rows: list[int] = field(default_factory=list)
    #: With `apply(stage=True)`: the states to commit (customers with an applied event).
    staged: StagedFeatures | None = None

    def count(self, status: EventStatus) -> int:
        return sum(1 for s in self.statuses if s == status)


class _EventEncoder:
    """Turns an event into its per-day contributions, per the catalog's compiled layout."""

    def __init__(self, catalog: Catalog) -> None:
        lay = catalog.layout
        self.layout = lay
        # Filters without `where` depend on the type only: decide once per type.
        self._by_type: dict[str, tuple[list[int], list[int], list[int], list[int]]] = {}
        filters = (*lay.counters, *lay.lasts, *(f for f, _ in (*lay.sums, *lay.distincts)))
        self._simple = all(not f.where for f in filters)

    def _indices(self, event: Event) -> tuple[list[int], list[int], list[int], list[int]]:
        if self._simple and event.type in self._by_type:
            return self._by_type[event.type]
        lay, t, p = self.layout, event.type, event.properties
        found = (
            [i + 1 for i, f in enumerate(lay.counters) if f.matches(t, p)],
            [j + 1 for j, (f, _) in enumerate(lay.sums) if f.matches(t, p)],
            [k + 1 for k, (f, _) in enumerate(lay.distincts) if f.matches(t, p)],
            [m + 1 for m, f in enumerate(lay.lasts) if f.matches(t, p)],
        )
        if self._simple:
            self._by_type[t] = found
        return found

    def encode(self, event: Event) -> list[Any]:
        counters, sums, distincts, lasts = self._indices(event)
        props = event.properties
        sum_parts = [[j, numeric_value(props.get(self.layout.sums[j - 1][1]))] for j in sums]
        distinct_parts = []
        for k in distincts:
            key = distinct_key(props.get(self.layout.distincts[k - 1][1]))
            if key is not None:
                distinct_parts.append([k, _value_fingerprint(key)])
        return [
            event.epoch,
            event_fingerprint(event.event_id),
            counters,
            sum_parts,
            distinct_parts,
            lasts,
        ]


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
    ) -> None:
        if not 0 <= max_lateness_days < catalog.retention_days:
            raise ValueError(
                f"max_lateness_days must be between 0 and the retention minus one "
                f"({catalog.retention_days - 1}), got {max_lateness_days}"
            )
        self.client = client
        self.catalog = catalog
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds or catalog.retention_days * 86_400
        self.max_lateness_days = max_lateness_days
        lay = catalog.layout
        self._spec = msgpack.packb(
            [
                catalog.retention_days,
                self.ttl_seconds,
                len(lay.counters),
                len(lay.lasts),
                max_lateness_days,
            ]
        )
        self._encoder = _EventEncoder(catalog)
        self._codec = StateCodec(catalog)
        self._sha: str | None = None
        self._cluster = isinstance(client, RedisCluster)
        #: Round trips made so far (one per `apply` or `read`); tests and metrics read it.
        self.round_trips = 0

    async def load(self) -> None:
        """Load the script (idempotent); called once at start-up."""
        self._sha = await self.client.script_load(SCRIPT)

    async def apply(
        self, events: Sequence[Event], *, at: float | None = None, stage: bool = False
    ) -> ApplyResult:
        """Apply a batch; return each event's status and its customer's features after it.

        Features are evaluated at max(`at`, the customer's newest event time). With
        `stage`, nothing is written: the result's `staged` holds the new states for the
        caller to commit (`commit_args`) together with what it decided from them.
        """
        if not events:
            return ApplyResult([], self._features([], [], np.empty(0)))
        mine: dict[str, list[int]] = {}
        for idx, event in enumerate(events):
            mine.setdefault(event.customer_id, []).append(idx)
        calls = []
        for group in self._by_slot(list(mine)):
            payload = [[self._encoder.encode(events[i]) for i in mine[cid]] for cid in group]
            keys = [feature_key(self.prefix, cid) for cid in group]
            calls.append((keys, msgpack.packb(payload, use_bin_type=False), group))
        replies = await self._evalsha(
            [(keys, payload) for keys, payload, _ in calls], "stage" if stage else "apply"
        )
        statuses: list[EventStatus] = ["applied"] * len(events)
        states: list[bytes | None] = [None] * len(events)
        staged = StagedFeatures()
        for (keys, _, group), reply in zip(calls, replies, strict=True):
            for key, cid, (codes, after, digest) in zip(keys, group, reply, strict=True):
                changed = False
                for idx, code, state in zip(mine[cid], codes, after, strict=True):
                    statuses[idx] = _STATUS[code]
                    states[idx] = state or None
                    changed = changed or code == 0
                if stage and changed:
                    staged.add(key, digest or b"", after[-1], [events[i] for i in mine[cid]])
        known = [i for i, st in enumerate(states) if st is not None]
        rows = [-1] * len(events)
        for row, i in enumerate(known):
            rows[i] = row
        features = self._features(
            [events[i].customer_id for i in known],
            [states[i] for i in known],  # type: ignore[misc]
            np.full(len(known), at or 0.0),
        )
        return ApplyResult(
            statuses=statuses, features=features, rows=rows, staged=staged if stage else None
        )

    async def read(self, customer_ids: Sequence[str], *, at: float) -> Features:
        """Features of known customers at time `at` (unknown ids are left out)."""
        ids = list(dict.fromkeys(customer_ids))
        if not ids:
            return self._features([], [], np.empty(0))
        self.round_trips += 1
        keys = [feature_key(self.prefix, cid) for cid in ids]
        values = await get_many(self.client, keys)
        found = [(cid, v) for cid, v in zip(ids, values, strict=True) if v]
        return self._features(
            [cid for cid, _ in found], [v for _, v in found], np.full(len(found), at)
        )

    def _by_slot(self, customers: list[str]) -> list[list[str]]:
        if not self._cluster:
            return [customers]
        groups: dict[int, list[str]] = {}
        for cid in customers:
            groups.setdefault(key_slot(feature_key(self.prefix, cid).encode()), []).append(cid)
        return list(groups.values())

    async def _evalsha(self, calls: list[tuple[list[str], bytes]], mode: str) -> list[Any]:
        if self._sha is None:
            await self.load()
        self.round_trips += 1
        try:
            return await self._send(calls, mode)
        except NoScriptError:
            # The server lost its script cache (restart, failover): load and retry once.
            await self.load()
            return await self._send(calls, mode)

    async def _send(self, calls: list[tuple[list[str], bytes]], mode: str) -> list[Any]:
        if len(calls) == 1:
            keys, payload = calls[0]
            return [
                await self.client.evalsha(self._sha, len(keys), *keys, self._spec, mode, payload)  # type: ignore[arg-type]
            ]
        pipe = self.client.pipeline(transaction=False)
        if self._cluster:
            # redis-py's cluster pipeline blocks its `evalsha` method, but routes a raw
            # EVALSHA by its keys (all of one slot): still one pipeline, one per node.
            for keys, payload in calls:
                args = (len(keys), *keys, self._spec, mode, payload)
                pipe.execute_command("EVALSHA", self._sha, *args)  # type: ignore[arg-type]
            replies = list(await pipe.execute(raise_on_error=False))
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):
                    # That node lost its script cache: EVAL runs (and caches) it there,
                    # without re-sending the calls other nodes already applied.
                    keys, payload = calls[i]
                    args = (*keys, self._spec, mode, payload)
                    replies[i] = await self.client.eval(SCRIPT, len(keys), *args)  # type: ignore[arg-type]
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        for keys, payload in calls:
            pipe.evalsha(self._sha, len(keys), *keys, self._spec, mode, payload)  # type: ignore[arg-type]
        return list(await pipe.execute())

    def _features(self, customers: list[str], states: list[bytes], at: np.ndarray) -> Features:
        if not states:
            values = np.empty((0, len(self.catalog.names)))
            return Features(self.catalog.names, [], np.empty(0), values)
        base, when = self._codec.aggregate(states, at)
        values = self.catalog.assemble(base, when)
        return Features(self.catalog.names, customers, when, values)
