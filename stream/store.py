"""The feature store: customers' rolling features in Redis, exact, idempotent, one round trip.

`RedisFeatureStore.apply(events)` adds a batch of validated events and returns the features
of every customer it touched; `read(customer_ids, at)` returns features at any later time
(a silent customer's recency grows, its windows empty). Both cost one Redis round trip per
batch: one Lua call (`store.lua`, loaded once, called by SHA) on a single server, one
pipeline of per-slot calls on a Redis Cluster.

Key layout: one string per customer, ``{prefix}:f:{<customer_id>}``. The braces are the
Redis Cluster hash tag, so every key of one customer (the assignment state of the
stream engine lives at ``{prefix}:a:{<customer_id>}``) shares a slot. The value is msgpack:
the first and newest event times, the latest time of each recency filter, and one entry per
UTC day within the retention holding that day's counters, sums, distinct-value
fingerprints and the 6-byte fingerprints of the event ids applied that day.

Idempotency: an event is identified by its event_id within its customer and UTC day. A
redelivery of any event still within the retention is recognised and ignored; an event
older than the retention (counted from the customer's newest event) is rejected as
``too_late``, so it cannot be counted twice either.

Expiry: days leaving the retention are trimmed inside the same call; the key itself
expires `retention_days` after its last write, so customers silent that long vanish.

This module knows Redis and the catalog; it knows nothing of faust or Kafka.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal

import msgpack
import numpy as np
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from models.catalog import Catalog, distinct_key, numeric_value
from models.events import Event

SCRIPT: Final = resources.files("stream").joinpath("store.lua").read_text()
EventStatus = Literal["applied", "duplicate", "too_late"]
_STATUS: Final[tuple[EventStatus, ...]] = ("applied", "duplicate", "too_late")


def feature_key(prefix: str, customer_id: str) -> str:
    """The Redis key of a customer's features.

    Distinct customer ids give distinct keys (the id sits between fixed text), so a
    crafted id cannot reach another customer's state.

    >>> feature_key("segstream", "c42")
    'segstream:f:{c42}'
    """
    return f"{prefix}:f:{{{customer_id}}}"


def event_fingerprint(event_id: str) -> bytes:
    """6 bytes that stand for an event id in the idempotency record.

    48 bits keep a false duplicate below one in 10^9 for a customer with 500 events a day.
    """
    return hashlib.blake2b(event_id.encode(), digest_size=6).digest()


def _value_fingerprint(value: str) -> bytes:
    return hashlib.blake2b(value.encode(), digest_size=8).digest()


@dataclass(frozen=True)
class Features:
    """Features of some customers at their evaluation times (one row each)."""

    names: tuple[str, ...]  # the catalog's feature names, one per column
    customers: list[str]
    at: np.ndarray  # Unix seconds, per customer
    values: np.ndarray  # (customers, features)

    def row(self, customer_id: str) -> dict[str, float] | None:
        """One customer's features by name (None when the customer is not here)."""
        try:
            i = self.customers.index(customer_id)
        except ValueError:
            return None
        return dict(zip(self.names, self.values[i].tolist(), strict=True))


@dataclass(frozen=True)
class ApplyResult:
    """What a batch did: a status per input event and the touched customers' features."""

    statuses: list[EventStatus]
    features: Features

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
    """The catalog's features per customer in Redis (standalone, Sentinel-free or Cluster).

    `client` is a `redis.asyncio.Redis` or `RedisCluster` made by `stream.redis_conn`.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        catalog: Catalog,
        *,
        prefix: str = "segstream",
        ttl_seconds: int | None = None,
    ) -> None:
        self.client = client
        self.catalog = catalog
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds or catalog.retention_days * 86_400
        lay = catalog.layout
        self._spec = msgpack.packb(
            [
                catalog.retention_days,
                self.ttl_seconds,
                list(lay.windows),
                len(lay.counters),
                len(lay.sums),
                len(lay.distincts),
                len(lay.lasts),
                list(lay.actives),
            ]
        )
        self._encoder = _EventEncoder(catalog)
        self._columns = lay.columns
        self._sha: str | None = None
        self._cluster = isinstance(client, RedisCluster)
        #: Round trips made so far (one per `apply` or `read` call); tests and metrics read it.
        self.round_trips = 0

    async def load(self) -> None:
        """Load the script (idempotent); called once at start-up."""
        self._sha = await self.client.script_load(SCRIPT)

    async def apply(self, events: Sequence[Event], *, at: float | None = None) -> ApplyResult:
        """Apply a batch; return each event's status and the touched customers' features.

        Features are evaluated at max(`at`, the customer's newest event time).
        """
        order: dict[str, list[int]] = {}
        for idx, event in enumerate(events):
            order.setdefault(event.customer_id, []).append(idx)
        inputs = {
            cid: [at or 0.0, [self._encoder.encode(events[i]) for i in idxs]]
            for cid, idxs in order.items()
        }
        replies = await self._call(inputs)
        statuses: list[EventStatus] = ["applied"] * len(events)
        for cid, reply in replies.items():
            if reply is not None:
                for idx, code in zip(order[cid], reply[1], strict=True):
                    statuses[idx] = _STATUS[code]
        return ApplyResult(statuses=statuses, features=self._features(replies))

    async def read(self, customer_ids: Sequence[str], *, at: float) -> Features:
        """Features of known customers at time `at` (unknown ids are left out)."""
        replies = await self._call({cid: [at, []] for cid in dict.fromkeys(customer_ids)})
        return self._features(replies)

    async def _call(self, inputs: dict[str, list[Any]]) -> dict[str, list[Any] | None]:
        if not inputs:
            return {}
        if self._sha is None:
            await self.load()
        groups: dict[int, list[str]] = {}
        if self._cluster:
            for cid in inputs:
                groups.setdefault(key_slot(feature_key(self.prefix, cid).encode()), []).append(cid)
        else:
            groups[0] = list(inputs)
        self.round_trips += 1
        try:
            raw = await self._send(groups, inputs)
        except NoScriptError:
            # The server lost its script cache (restart, failover): load and retry once.
            await self.load()
            raw = await self._send(groups, inputs)
        out: dict[str, list[Any] | None] = {}
        for cids, reply in zip(groups.values(), raw, strict=True):
            for cid, item in zip(cids, reply, strict=True):
                out[cid] = msgpack.unpackb(item) if item else None
        return out

    async def _send(self, groups: dict[int, list[str]], inputs: dict[str, list[Any]]) -> list[Any]:
        calls = [
            (
                [feature_key(self.prefix, cid) for cid in cids],
                msgpack.packb([inputs[cid] for cid in cids], use_bin_type=False),
            )
            for cids in groups.values()
        ]
        if len(calls) == 1:
            keys, payload = calls[0]
            return [await self.client.evalsha(self._sha, len(keys), *keys, self._spec, payload)]  # type: ignore[arg-type]
        pipe = self.client.pipeline(transaction=False)
        for keys, payload in calls:
            pipe.evalsha(self._sha, len(keys), *keys, self._spec, payload)  # type: ignore[arg-type]
        return list(await pipe.execute())

    def _features(self, replies: dict[str, list[Any] | None]) -> Features:
        known = [(cid, r) for cid, r in replies.items() if r is not None]
        n, width = len(known), len(self._columns)
        base = np.empty((n, width), dtype=float)
        at = np.empty(n, dtype=float)
        for row, (_, reply) in enumerate(known):
            at[row] = reply[0]
            base[row] = [np.nan if v is None or v is False else v for v in reply[2]]
        columns = {name: base[:, i] for i, name in enumerate(self._columns)}
        values = self.catalog.assemble(columns, at) if n else np.empty((0, len(self.catalog.names)))
        return Features(
            names=self.catalog.names, customers=[cid for cid, _ in known], at=at, values=values
        )
