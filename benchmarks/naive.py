"""The naive baseline: what a first version of the feature store would do, one command at a time.

Per event, each an awaited Redis round trip:

- ``SADD`` the event id to the customer-day's id set (a redelivery is skipped);
- ``HINCRBY`` / ``HINCRBYFLOAT`` per base aggregate the event feeds (`c{i}` counters,
  `s{j}` sums) on a hash per customer and UTC day; ``SADD`` per distinct property to a set
  per customer, day and aggregate; ``ZADD`` the day to the customer's day index;
  ``HSET`` per recency filter and ``HSETNX`` of the first event time on a meta hash;
- the read-back: ``ZRANGEBYSCORE`` for the days in the retention, ``HGETALL`` per day,
  ``SUNION`` per distinct aggregate and window, ``HGETALL`` of the meta hash;
- then the features are assembled (`Catalog.assemble`, as the real store does) and the
  customer is scored with the bundle, one row at a time (early-life classifier while
  younger than `early_days`, else the nearest centroid).

No pipelining, no script, no batching: it computes the same counts (checked against the
real store in `tests/test_benchmarks.py`) at the cost of ~100 round trips per event.
Keys live under a prefix of their own and have no expiry (delete the prefix afterwards).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from redis.asyncio import Redis

from models.bundle import Bundle
from models.catalog import SECONDS_PER_DAY, Catalog, distinct_key, numeric_value
from models.events import Event


class NaiveEngine:
    """Applies and scores one event at a time with one awaited command per field."""

    def __init__(
        self,
        client: Redis,
        catalog: Catalog,
        bundle: Bundle | None,
        prefix: str,
        *,
        early_days: float = 30.0,
    ) -> None:
        self.client = client
        self.catalog = catalog
        self.bundle = bundle
        self.prefix = prefix
        self.early_days = early_days
        self.layout = catalog.layout
        self.tenure = catalog.names.index("tenure_days") if "tenure_days" in catalog.names else -1

    def _key(self, customer: str, *parts: object) -> str:
        return ":".join([self.prefix, "n", "{" + customer + "}", *map(str, parts)])

    async def apply(self, event: Event) -> bool:
        """Add one event to its customer-day; False for a redelivery (nothing changes)."""
        c = self.client
        cid, props = event.customer_id, event.properties
        day = math.floor(event.epoch / SECONDS_PER_DAY)
        if not await c.sadd(self._key(cid, day, "ids"), event.event_id):  # type: ignore[misc]
            return False
        hkey = self._key(cid, day)
        lay = self.layout
        for i, flt in enumerate(lay.counters):
            if flt.matches(event.type, props):
                await c.hincrby(hkey, f"c{i}", 1)  # type: ignore[misc]
        for j, (flt, prop) in enumerate(lay.sums):
            if flt.matches(event.type, props):
                await c.hincrbyfloat(hkey, f"s{j}", numeric_value(props.get(prop)))  # type: ignore[misc]
        for k, (flt, prop) in enumerate(lay.distincts):
            value = distinct_key(props.get(prop))
            if value is not None and flt.matches(event.type, props):
                await c.sadd(self._key(cid, day, f"d{k}"), value)  # type: ignore[misc]
        await c.zadd(self._key(cid, "days"), {str(day): day})
        meta = self._key(cid, "meta")
        for m, flt in enumerate(lay.lasts):
            if flt.matches(event.type, props):
                last = await c.hget(meta, f"l{m}")  # type: ignore[misc]
                if last is None or float(last) < event.epoch:
                    await c.hset(meta, f"l{m}", repr(event.epoch))  # type: ignore[misc]
        first = await c.hget(meta, "first")  # type: ignore[misc]
        if first is None or float(first) > event.epoch:
            await c.hset(meta, "first", repr(event.epoch))  # type: ignore[misc]
        return True

    async def features(self, customer: str, at: float) -> np.ndarray:
        """The customer's catalog row at `at` (at or after its newest event), read back."""
        c = self.client
        lay = self.layout
        today = math.floor(at / SECONDS_PER_DAY)
        # Lifetime features read every day; windows only those inside them.
        oldest = today - self.catalog.retention_days + 1 if not lay.lifetime else "-inf"
        found: list[Any] = await c.zrangebyscore(self._key(customer, "days"), oldest, today)
        days = [int(d) for d in found]
        per_day: dict[int, dict[Any, Any]] = {}
        for day in days:
            per_day[day] = await c.hgetall(self._key(customer, day))  # type: ignore[misc]
        base: dict[str, Any] = {}
        for w in lay.windows:
            inside = [d for d in days if d > today - w]
            for i in range(len(lay.counters)):
                counts = [int(per_day[d].get(f"c{i}".encode(), 0)) for d in inside]
                base[f"c{i}w{w}"] = [sum(counts)]
                if i in lay.actives:
                    base[f"a{i}w{w}"] = [sum(1 for n in counts if n)]
            for j in range(len(lay.sums)):
                base[f"s{j}w{w}"] = [
                    sum(float(per_day[d].get(f"s{j}".encode(), 0)) for d in inside)
                ]
            for k in range(len(lay.distincts)):
                keys = [self._key(customer, d, f"d{k}") for d in inside]
                union = await c.sunion(keys) if keys else set()  # type: ignore[misc]
                base[f"d{k}w{w}"] = [len(union)]
        if lay.lifetime:
            for i in range(len(lay.counters)):
                counts = [int(per_day[d].get(f"c{i}".encode(), 0)) for d in days]
                base[f"c{i}life"] = [sum(counts)]
                if i in lay.actives:
                    base[f"a{i}life"] = [sum(1 for n in counts if n)]
            for j in range(len(lay.sums)):
                base[f"s{j}life"] = [sum(float(per_day[d].get(f"s{j}".encode(), 0)) for d in days)]
        meta: dict[Any, Any] = await c.hgetall(self._key(customer, "meta"))  # type: ignore[misc]
        for m in range(len(lay.lasts)):
            raw = meta.get(f"l{m}".encode())
            base[f"l{m}"] = [float(raw) if raw is not None else math.nan]
        base["first"] = [float(meta.get(b"first", at))]
        row: np.ndarray = self.catalog.assemble(base, at)[0]
        return row

    def score(self, row: np.ndarray) -> int:
        """The segment of one customer row (-1 without a bundle)."""
        if self.bundle is None:
            return -1
        x = row[None, :]
        if self.tenure >= 0 and row[self.tenure] < self.early_days and self.bundle.early_model:
            return int(self.bundle.early_segment(x)[0])
        return int(self.bundle.nearest(x)[0])

    async def process(self, event: Event) -> tuple[np.ndarray, int]:
        """Apply, read back and score one event: the customer's features and segment."""
        await self.apply(event)
        row = await self.features(event.customer_id, event.epoch)
        return row, self.score(row)

    async def run(
        self, events: Iterable[Event], *, max_seconds: float = math.inf
    ) -> tuple[int, float]:
        """Process events in order until done or `max_seconds` passed: (events, seconds)."""
        done = 0
        t0 = time.perf_counter()
        for event in events:
            await self.process(event)
            done += 1
            if time.perf_counter() - t0 > max_seconds:
                break
        return done, time.perf_counter() - t0
