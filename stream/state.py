"""A customer's stored feature state and the window aggregation over many states at once.

`stream/store.lua` (and `stream.fold`, its rules in Python for the in-memory store) keeps
each customer's state as one little-endian binary string:

    B version | d first | d newest | d last_1 .. last_L | I nA | I nS | I nE | I nV
    A: nA x (H day, H counter_1 .. counter_C)   one record per active UTC day, by day
    S: nS x (H day, B j, d value)               non-zero sums (sum j of that day), by day
    E: nE x (H day, 4s event fingerprint)       the idempotency record, by day (lateness bound,
                                                at most SEGSTREAM_DEDUPE_MAX_EVENTS records)
    V: nV x (H day, B k, I value fingerprint)   values seen by distinct k that day, by day

R holds the retired totals: what the days that left the retention held (their counts,
how many of them had each counter above 0, their sums), so lifetime totals are R plus the
days still in A, exact however long ago a customer was first seen (8 bytes per counter
and per sum). Version 1 states (before R existed) read as R = 0.

Days are UTC day numbers since 1970 (uint16 lasts until 2149). Counters saturate at
65,535 per customer, day and filter. `StateCodec.aggregate` reads many states with numpy
and returns the catalog's base aggregates (see `models.catalog.Layout`) at given times,
so Redis does O(events) work and the O(days) window sums run vectorized here.

Pure: no Redis, no faust.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import numpy as np

from models.catalog import SECONDS_PER_DAY, Catalog

VERSION: Final = 2
E_WIDTH: Final = 6
#: Event fingerprints kept per customer (the E block's cap; SEGSTREAM_DEDUPE_MAX_EVENTS):
#: 60 KB at most, so a customer id that gets every anonymous event stays bounded.
DEFAULT_DEDUPE_MAX_EVENTS: Final = 10_000
_S_DTYPE: Final = np.dtype([("day", "<u2"), ("j", "u1"), ("v", "<f8")])
_V_DTYPE: Final = np.dtype([("day", "<u2"), ("k", "u1"), ("fp", "<u4")])


class StateCodec:
    """Reads the binary states of one catalog's layout.

    >>> from models.catalog import default_catalog
    >>> codec = StateCodec(default_catalog())
    >>> empty = codec.empty_state(first=86400.0 * 20000, newest=86400.0 * 20000)
    >>> base, at = codec.aggregate([empty], np.array([86400.0 * 20001]))
    >>> float(base["c0w7"][0]), float(at[0] - 86400.0 * 20000)
    (0.0, 86400.0)
    """

    def __init__(self, catalog: Catalog) -> None:
        lay = catalog.layout
        self.layout = lay
        self.n_counters = len(lay.counters)
        self.n_lasts = len(lay.lasts)
        self.n_sums = len(lay.sums)
        self.head = struct.Struct("<Bdd" + "d" * self.n_lasts + "IIII")
        self.retired = retired_struct(self.n_counters, self.n_sums)
        self.a_dtype = np.dtype([("day", "<u2"), ("c", "<u2", (self.n_counters,))])
        self.identity = catalog.identity

    def empty_state(self, *, first: float, newest: float) -> bytes:
        """A state with no days (what a customer looks like once every day expired)."""
        head = self.head.pack(VERSION, first, newest, *([0.0] * self.n_lasts), 0, 0, 0, 0)
        return head + bytes(self.retired.size)

    def upgrade(self, state: bytes) -> bytes:
        """A version 1 state (no retired totals) as version 2; others unchanged."""
        if state[0] != 1:
            return state
        size = self.head.size
        return bytes([VERSION]) + state[1:size] + bytes(self.retired.size) + state[size:]

    def aggregate(
        self, states: Sequence[bytes], at: np.ndarray, probes: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Base aggregates of each state at max(`at`, its newest event); also those times.

        With `probes` (a mask over the states), also `own`: per probed state, on how many
        of its days before the latest `recent_days` (within `long_days`) it used each value
        of the catalog's `identity` ({value fingerprint as a number: days}; None for the
        others): the customer's own use, for the migration evidence."""
        n = len(states)
        states = [self.upgrade(s) for s in states]
        lay, head, nl = self.layout, self.head, self.n_lasts
        heads = np.array([head.unpack_from(s) for s in states], dtype=float).reshape(n, -1)
        retired = np.array(
            [self.retired.unpack_from(s, head.size) for s in states], dtype=float
        ).reshape(n, -1)
        first, newest = heads[:, 1], heads[:, 2]
        lasts = heads[:, 3 : 3 + nl]
        sizes = heads[:, 3 + nl :].astype(np.int64)  # nA, nS, nE, nV
        widths = (self.a_dtype.itemsize, _S_DTYPE.itemsize, E_WIDTH, _V_DTYPE.itemsize)
        parts: list[list[bytes]] = [[], [], []]
        for s, (na, ns, ne, nv) in zip(states, sizes.tolist(), strict=True):
            pos = head.size + self.retired.size
            ends = (na * widths[0], ns * widths[1], ne * widths[2], nv * widths[3])
            parts[0].append(s[pos : pos + ends[0]])
            pos += ends[0]
            parts[1].append(s[pos : pos + ends[1]])
            pos += ends[1] + ends[2]
            parts[2].append(s[pos : pos + ends[3]])
        a = np.frombuffer(b"".join(parts[0]), dtype=self.a_dtype)
        sums = np.frombuffer(b"".join(parts[1]), dtype=_S_DTYPE)
        vals = np.frombuffer(b"".join(parts[2]), dtype=_V_DTYPE)
        rows = np.arange(n)
        row_a = np.repeat(rows, sizes[:, 0])
        row_s = np.repeat(rows, sizes[:, 1])
        row_v = np.repeat(rows, sizes[:, 3])

        t = np.maximum(np.asarray(at, dtype=float), newest)
        day_t = np.floor(t / SECONDS_PER_DAY).astype(np.int64)
        a_day, s_day = a["day"].astype(np.int64), sums["day"].astype(np.int64)
        counts = a["c"].astype(float)
        positive = (counts[:, lay.actives] > 0).astype(float)
        # Sums as columns (one per sum feature) so every window is one grouped reduction.
        by_sum = np.zeros((len(sums), len(lay.sums)))
        by_sum[np.arange(len(sums)), sums["j"].astype(np.int64) - 1] = sums["v"]
        distinct = [_latest_days(vals, row_v, k + 1) for k in range(len(lay.distincts))]
        out: dict[str, np.ndarray] = {}
        for w in lay.windows:
            lo = day_t - w + 1
            in_a = a_day >= lo[row_a]
            counted = _sum_rows(np.where(in_a[:, None], counts, 0.0), sizes[:, 0])
            active = _sum_rows(np.where(in_a[:, None], positive, 0.0), sizes[:, 0])
            summed = _sum_rows(np.where((s_day >= lo[row_s])[:, None], by_sum, 0.0), sizes[:, 1])
            for i in range(self.n_counters):
                out[f"c{i}w{w}"] = counted[:, i]
            for pos, i in enumerate(lay.actives):
                out[f"a{i}w{w}"] = active[:, pos]
            for j in range(len(lay.sums)):
                out[f"s{j}w{w}"] = summed[:, j]
            for k, (owner, latest) in enumerate(distinct):
                seen = owner[latest >= lo[owner]]
                out[f"d{k}w{w}"] = np.bincount(seen, minlength=n).astype(float)
        if lay.lifetime:  # retired totals plus every day still kept
            c = self.n_counters
            counted = _sum_rows(counts, sizes[:, 0]) + retired[:, :c]
            active = _sum_rows((counts > 0).astype(float), sizes[:, 0]) + retired[:, c : 2 * c]
            summed = _sum_rows(by_sum, sizes[:, 1]) + retired[:, 2 * c :]
            for i in range(c):
                out[f"c{i}life"] = counted[:, i]
            for i in lay.actives:
                out[f"a{i}life"] = active[:, i]
            for j in range(len(lay.sums)):
                out[f"s{j}life"] = summed[:, j]
        if probes is not None and self.identity is not None:
            out["own"] = self._own(vals, row_v, day_t, np.asarray(probes, dtype=bool))
        for m in range(nl):
            out[f"l{m}"] = np.where(lasts[:, m] > 0, lasts[:, m], np.nan)
        out["first"] = first
        return out, t

    def _own(
        self, vals: np.ndarray, row_v: np.ndarray, day_t: np.ndarray, probes: np.ndarray
    ) -> np.ndarray:
        ident = self.identity
        assert ident is not None
        day = vals["day"].astype(np.int64)
        lo, hi = day_t - ident.long_days + 1, day_t - ident.recent_days
        mine = (vals["k"] == ident.slot + 1) & (day >= lo[row_v]) & (day <= hi[row_v])
        mine &= probes[row_v]
        # A value is recorded once per day, so its records are its days.
        keys = (row_v[mine].astype(np.uint64) << np.uint64(32)) | vals["fp"][mine]
        found, days = np.unique(keys, return_counts=True)
        out = np.array([{} if p else None for p in probes.tolist()], dtype=object)
        owners = (found >> np.uint64(32)).astype(np.int64).tolist()
        prints = (found & np.uint64(0xFFFFFFFF)).astype(np.int64).tolist()
        for row, fp, d in zip(owners, prints, days.tolist(), strict=True):
            out[row][fp] = float(d)
        return out

    def newest(self, states: Sequence[bytes]) -> np.ndarray:
        """Each state's newest event time."""
        return np.array([self.head.unpack_from(s)[2] for s in states], dtype=float)


def retired_struct(n_counters: int, n_sums: int) -> struct.Struct:
    """The R block: retired counts and active days per counter, retired sums."""
    return struct.Struct("<" + "I" * (2 * n_counters) + "d" * n_sums)


def _sum_rows(records: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per state, the column sums of its records (`counts[i]` consecutive rows each)."""
    out = np.zeros((len(counts), records.shape[1]))
    has = counts > 0
    if has.any():
        starts = np.cumsum(counts) - counts
        out[has] = np.add.reduceat(records, starts[has], axis=0)
    return out


def _latest_days(vals: np.ndarray, row_v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For distinct `k`: each (state, value) pair's owner row and the last day it was seen.

    A value counts in a window when its last day is inside it: one sort serves every
    window, where a `unique` per window sorted three times.
    """
    sel = vals["k"] == k
    keys = (row_v[sel].astype(np.uint64) << np.uint64(32)) | vals["fp"][sel]
    days = vals["day"][sel].astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, days = keys[order], days[order]
    if not len(keys):
        return np.empty(0, dtype=np.int64), days
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    owner = (keys[starts] >> np.uint64(32)).astype(np.int64)
    return owner, np.maximum.reduceat(days, starts)
