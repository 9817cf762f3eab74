"""Events to per-day contributions, and `fold`: store.lua's rules in Python.

`EventEncoder.encode` turns an event into what a feature state records of it (its time,
its fingerprint, the counters, sums, distinct values and "last" times it touches, per the
catalog's compiled layout); the Redis store sends that to `stream/store.lua`, the
in-memory store hands it to `fold`.

`fold(state, events, ...)` applies one customer's encoded events to its binary state
exactly as `store.lua` does: the same statuses (applied, duplicate, too_late), the same
state bytes after every event, the same trimming of days past the retention and of
fingerprints past the lateness bound, the same cap on fingerprints (`dedupe_max_events`,
the oldest go first, counted while their day can still take an event). The state after
an event that is not the customer's last applied one leaves the fingerprints out (nE = 0):
only the window aggregation reads it, and it skips them; so the cost per event does not
grow with the number of fingerprints (a hot customer id, issue 20 finding 6). The byte
format is the one `stream.state` reads.
Both must change together; `tests/test_store_contract.py` compares their states byte for
byte.

Pure: no Redis, no faust.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from models.catalog import DEFAULT_PROFILE_RETENTION_DAYS, Catalog, distinct_key, numeric_value
from models.events import Event
from stream.state import DEFAULT_DEDUPE_MAX_EVENTS, VERSION, retired_struct

DAY: Final = 86_400
MAX_COUNT: Final = 65_535  # counters are uint16 and saturate
_S = struct.Struct("<HBd")
_V = struct.Struct("<HB")
_H = struct.Struct("<H")


def event_fingerprint(event_id: str) -> bytes:
    """4 bytes that stand for an event id in the idempotency record of its day.

    A false duplicate needs two ids of one customer and one UTC day to collide in 32 bits:
    about one in 10^7 for a customer with 30 events that day.
    """
    return hashlib.blake2b(event_id.encode(), digest_size=4).digest()


def value_fingerprint(value: str) -> bytes:
    """4 bytes that stand for a property value in a distinct count."""
    return hashlib.blake2b(value.encode(), digest_size=4).digest()


def value_number(value: str) -> int:
    """`value_fingerprint` as the number `stream.state` reads it (little-endian uint32)."""
    return int.from_bytes(value_fingerprint(value), "little")


class EventEncoder:
    """Turns an event into its per-day contributions, per the catalog's compiled layout.

    `encode` returns ``[ts, fp4, counters, sums, distincts, lasts]`` with 1-based indices
    (Lua's): counters ``[i, ...]``, sums ``[[j, amount], ...]``, distincts ``[[k, fp4],
    ...]``, lasts ``[m, ...]``.
    """

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
                distinct_parts.append([k, value_fingerprint(key)])
        return [
            event.epoch,
            event_fingerprint(event.event_id),
            counters,
            sum_parts,
            distinct_parts,
            lasts,
        ]


@dataclass(frozen=True)
class FoldSpec:
    """What `fold` needs of the catalog and the store (store.lua's ARGV[1])."""

    retention_days: int
    n_counters: int
    n_lasts: int
    max_lateness_days: int
    n_sums: int = 0
    #: A customer silent longer than this (event time) starts afresh: its profile expired.
    profile_days: int = DEFAULT_PROFILE_RETENTION_DAYS
    #: At most this many event fingerprints per customer; the oldest go first.
    dedupe_max_events: int = DEFAULT_DEDUPE_MAX_EVENTS


class _State:
    """A state unpacked into lists of records, each list sorted by day as in the bytes."""

    def __init__(self, raw: bytes | None, spec: FoldSpec) -> None:
        c, nl = spec.n_counters, spec.n_lasts
        self.head = struct.Struct("<Bdd" + "d" * nl + "IIII")
        self.retired_fmt = retired_struct(c, spec.n_sums)
        self.rec = struct.Struct("<" + "H" * (c + 1))
        self.n_lasts = nl
        self.n_counters = c
        # Retired totals: counts and active days per counter, sums (see stream.state).
        self.r_count = [0] * c
        self.r_active = [0] * c
        self.r_sum = [0.0] * spec.n_sums
        self.a: list[list[int]] = []  # [day, counter_1 .. counter_C]
        self.s: list[list[Any]] = []  # [day, j, value]
        # The idempotency record as 6-byte records (day, event fingerprint), sorted by
        # day, and the set of them: a lookup and an in-order insert cost O(1).
        self.e: deque[bytes] = deque()
        self.seen: set[bytes] = set()
        self.v: list[tuple[int, int, bytes]] = []  # (day, k, value fingerprint)
        if raw is None:
            self.version, self.first, self.newest = VERSION, 0.0, 0.0
            self.lasts = [0.0] * nl
            return
        head = self.head.unpack_from(raw)
        self.version, self.first, self.newest = VERSION, head[1], head[2]
        self.lasts = list(head[3 : 3 + nl])
        n_a, n_s, n_e, n_v = head[3 + nl :]
        pos = self.head.size
        if head[0] >= 2:  # version 1 had no retired totals: they start at 0
            r = self.retired_fmt.unpack_from(raw, pos)
            self.r_count, self.r_active = list(r[:c]), list(r[c : 2 * c])
            self.r_sum = list(r[2 * c :])
            pos += self.retired_fmt.size
        for _ in range(n_a):
            self.a.append(list(self.rec.unpack_from(raw, pos)))
            pos += self.rec.size
        for _ in range(n_s):
            self.s.append(list(_S.unpack_from(raw, pos)))
            pos += _S.size
        for _ in range(n_e):
            rec = raw[pos : pos + 6]
            self.e.append(rec)
            self.seen.add(rec)
            pos += 6
        for _ in range(n_v):
            day, k = _V.unpack_from(raw, pos)
            self.v.append((day, k, raw[pos + 3 : pos + 7]))
            pos += 7

    def pack(self, with_e: bool = True) -> bytes:
        """The state's bytes; without the E block (nE = 0) unless `with_e`."""
        parts = [
            self.head.pack(
                self.version,
                self.first,
                self.newest,
                *self.lasts,
                len(self.a),
                len(self.s),
                len(self.e) if with_e else 0,
                len(self.v),
            )
        ]
        parts.append(self.retired_fmt.pack(*self.r_count, *self.r_active, *self.r_sum))
        parts += [self.rec.pack(*r) for r in self.a]
        parts += [_S.pack(*r) for r in self.s]
        if with_e:
            parts += self.e
        parts += [_V.pack(d, k) + fp for d, k, fp in self.v]
        return b"".join(parts)


def _insert_at(records: Sequence[Any], day: int) -> int:
    """Where a record of `day` goes: after the last one of that day or before (store.lua
    scans from the end because events mostly arrive in time order)."""
    pos = len(records)
    while pos > 0 and records[pos - 1][0] > day:
        pos -= 1
    return pos


def _cut_before(records: list[Any], oldest: int) -> list[Any]:
    pos = 0
    while pos < len(records) and records[pos][0] < oldest:
        pos += 1
    return records[pos:] if pos else records


def _retire(st: _State, oldest: int) -> None:
    """Add the days before `oldest` into the retired totals, then drop them."""
    for rec in st.a:
        if rec[0] >= oldest:
            break
        for i in range(st.n_counters):
            st.r_count[i] += rec[i + 1]
            st.r_active[i] += rec[i + 1] > 0
    for day, j, value in st.s:
        if day >= oldest:
            break
        st.r_sum[j - 1] += value
    st.a = _cut_before(st.a, oldest)
    st.s = _cut_before(st.s, oldest)


def fold(
    raw: bytes | None, events: Sequence[Sequence[Any]], spec: FoldSpec
) -> tuple[list[int], list[bytes | None], bytes | None, int]:
    """Apply one customer's encoded events (`EventEncoder.encode`) to its state `raw`.

    Returns the status code per event (0 applied, 1 duplicate, 2 too_late), the state
    right after each event (None while the customer has none; without the fingerprints
    before the last applied event), the new state to store (None when no event was
    applied: nothing to write) and how many fingerprints the cap evicted while their day
    could still take an event.

    >>> spec = FoldSpec(retention_days=90, n_counters=1, n_lasts=0, max_lateness_days=7)
    >>> ev = [86_400.0 * 20_000, event_fingerprint("e1"), [1], [], [], []]
    >>> codes, after, new, evicted = fold(None, [ev, ev], spec)
    >>> codes, after[1] == new, fold(new, [ev], spec)[0]
    ([0, 1], True, [1])
    """
    st = _State(raw, spec)
    c = spec.n_counters
    newest_day = math.floor(st.newest / DAY)
    statuses: list[int] = []
    states: list[bytes | None] = []
    current = raw
    changed = False
    evicted = 0
    for idx, ev in enumerate(events):
        ts, fp = ev[0], ev[1]
        d = math.floor(ts / DAY)
        if st.first != 0 and ts - st.newest > spec.profile_days * DAY:
            st = _State(None, spec)  # silent past the profile retention: a new customer
            newest_day = 0
        if d < newest_day - spec.max_lateness_days or d < 0:
            statuses.append(2)
        elif _H.pack(d) + fp in st.seen:
            statuses.append(1)
        else:
            statuses.append(0)
            changed = True
            erec = _H.pack(d) + fp
            at = len(st.e)  # after the last record of its day or before (store.lua's scan)
            while at > 0 and _H.unpack_from(st.e[at - 1])[0] > d:
                at -= 1
            st.e.insert(at, erec)
            st.seen.add(erec)
            pos = _insert_at(st.a, d)
            if pos > 0 and st.a[pos - 1][0] == d:
                rec = st.a[pos - 1]
            else:
                rec = [d] + [0] * c
                st.a.insert(pos, rec)
            for i in ev[2]:
                if rec[i] < MAX_COUNT:
                    rec[i] += 1
            for j, amount in ev[3]:
                if amount != 0:
                    for s in st.s:
                        if s[0] == d and s[1] == j:
                            s[2] = s[2] + amount
                            break
                    else:
                        st.s.insert(_insert_at(st.s, d), [d, j, float(amount)])
            for k, vfp in ev[4]:
                item = (d, k, vfp)
                if item not in st.v:
                    st.v.insert(_insert_at(st.v, d), item)
            for m in ev[5]:
                st.lasts[m - 1] = max(st.lasts[m - 1], ts)
            if st.first == 0 or ts < st.first:
                st.first = ts
            st.newest = max(st.newest, ts)
            newest_day = max(newest_day, d)
            # The cap: the oldest fingerprints go first; counted when their day can still
            # take an event (then a redelivery of it would be counted twice).
            while len(st.e) > spec.dedupe_max_events:
                old = st.e.popleft()
                st.seen.discard(old)
                if _H.unpack_from(old)[0] >= newest_day - spec.max_lateness_days:
                    evicted += 1
            # Untrimmed in between: days past the retention lie outside every window anyway.
            if idx < len(events) - 1:
                current = st.pack(with_e=False)
        states.append(current)
    if not changed:
        return statuses, states, None, evicted
    oldest = newest_day - spec.retention_days + 1
    _retire(st, oldest)
    # Fingerprints are needed only for days an event can still be accepted on.
    horizon = newest_day - spec.max_lateness_days
    while st.e and _H.unpack_from(st.e[0])[0] < horizon:
        st.e.popleft()
    st.v = _cut_before(st.v, oldest)
    new = st.pack()
    # From the last applied event on, the state is the trimmed one (what is stored).
    for idx in range(len(events) - 1, -1, -1):
        states[idx] = new
        if statuses[idx] == 0:
            break
    return statuses, states, new, evicted
