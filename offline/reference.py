"""The batch reference: the whole feature catalog for every customer at any time, in pandas.

It is the oracle. The streaming store must match it exactly, and the trainer learns from
it, so the model sees the same numbers the stream computes. It favours plain, obviously
right array code over cleverness: filters pick rows, windows pick days, counts and sums go
by customer number (`np.bincount`).

Must not import `stream/`, faust or redis.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd

from models.catalog import (
    DEFAULT_PROFILE_RETENTION_DAYS,
    SECONDS_PER_DAY,
    Catalog,
    EventFilter,
    distinct_key,
    numeric_value,
)
from models.eventfile import ReadStats, Span, jsonl_spans, read_events
from models.events import Event
from models.mapping import HistoryMapping

log = logging.getLogger(__name__)

#: Largest customers x values grid whose distinct pairs are counted with a flag array
#: (bytes); beyond it, hashing (`pd.unique`). Sorting 10 M pairs took 10 s here.
BITMAP_LIMIT = 1 << 27


def _filter_mask(flt: EventFilter, types: np.ndarray, props: list[dict[str, object]]) -> np.ndarray:
    mask = np.isin(types, list(flt.types)) if flt.types else np.ones(len(types), dtype=bool)
    if flt.where:
        # Property equality has JSON semantics (true != 1); use the catalog's own rule.
        rows = np.flatnonzero(mask)
        keep = [flt.matches(str(types[r]), props[r]) for r in rows]
        mask[rows[~np.asarray(keep, dtype=bool)]] = False
    return mask


def events_frame(events: Iterable[Event], catalog: Catalog) -> pd.DataFrame:
    """One row per distinct event (first delivery kept), with the catalog's per-event parts.

    Rows keep the file's order. Columns: `event_id`, `customer_id`, `cust` (the customer as
    a whole number, numbered in sorted id order), `type`, `ts` (Unix seconds),
    `day` (UTC day number), then `m:c{i}` (bool, counter filter i matches), `m:s{j}` (amount
    to add for sum j), `m:d{k}` (the distinct key of distinct k as a whole number, -1 when
    not counted) and `m:l{m}` (bool, last filter m). The numbered columns let the
    aggregates group by integers instead of hashing strings at every snapshot (the trainer
    takes about a hundred).
    """
    return _number(_per_event(events, catalog), catalog)


def _per_event(events: Iterable[Event], catalog: Catalog) -> pd.DataFrame:
    """Every delivery (redeliveries too) with the catalog's per-event parts; distinct keys
    are still text here, so parts read apart can be joined before they are numbered."""
    ids, customers, types, ts, props = [], [], [], [], []
    for e in events:
        ids.append(e.event_id)
        customers.append(e.customer_id)
        types.append(e.type)
        ts.append(e.epoch)
        props.append(e.properties)
    frame = pd.DataFrame(
        {
            "event_id": pd.Series(ids, dtype=object),
            "customer_id": pd.Series(customers, dtype=object),
            "type": pd.Series(types, dtype=object),
            "ts": np.asarray(ts, dtype=float),
        }
    )
    type_arr = frame["type"].to_numpy()
    lay = catalog.layout
    for i, flt in enumerate(lay.counters):
        frame[f"m:c{i}"] = _filter_mask(flt, type_arr, props)
    for j, (flt, prop) in enumerate(lay.sums):
        mask = _filter_mask(flt, type_arr, props)
        frame[f"m:s{j}"] = [
            numeric_value(p.get(prop)) if m else 0.0 for p, m in zip(props, mask, strict=True)
        ]
    for k, (flt, prop) in enumerate(lay.distincts):
        mask = _filter_mask(flt, type_arr, props)
        frame[f"m:d{k}"] = pd.Series(
            [distinct_key(p.get(prop)) if m else None for p, m in zip(props, mask, strict=True)],
            dtype=object,
        )
    for m, flt in enumerate(lay.lasts):
        frame[f"m:l{m}"] = _filter_mask(flt, type_arr, props)
    return frame


def _number(frame: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Keep each event's first delivery; number customers and distinct keys; add `day`."""
    # A redelivery repeats the event_id; the stream counts it once, so does the oracle.
    frame = frame[~frame["event_id"].duplicated(keep="first").to_numpy()].reset_index(drop=True)
    frame.insert(2, "cust", pd.factorize(frame["customer_id"], sort=True)[0].astype(np.int64))
    frame.insert(5, "day", np.floor(frame["ts"].to_numpy() / SECONDS_PER_DAY).astype(np.int64))
    names = []
    for k in range(len(catalog.layout.distincts)):
        codes, uniques = pd.factorize(frame[f"m:d{k}"])
        frame[f"m:d{k}"] = codes.astype(np.int64)
        names.append([str(u) for u in uniques])
    # What the numbers stand for, for the shares the trainer records (`offline.naming`);
    # `offline.steps.load_history` takes them out of attrs.
    frame.attrs["distinct_values"] = names
    return frame


def current_life(frame: pd.DataFrame, at: float, profile_days: int) -> np.ndarray:
    """Which events count at time `at`: those at or before it in each customer's current
    life. A customer silent for more than `profile_days` is forgotten (the stream's
    profile expires): a later event starts a new life, and one silent that long at `at`
    has no row at all.

    >>> f = pd.DataFrame({"cust": [0, 0, 0, 1], "ts": [0.0, 86400.0, 9 * 86400.0, 0.0]})
    >>> current_life(f, 9 * 86400.0, 5).tolist(), current_life(f, 7 * 86400.0, 5).tolist()
    ([False, False, True, False], [False, False, False, False])
    """
    ts = frame["ts"].to_numpy()
    upto = ts <= at
    if not upto.any():
        return upto
    cust = frame["cust"].to_numpy()
    order = np.lexsort((ts, cust))
    c, t = cust[order], ts[order]
    keep = upto[order]
    limit = profile_days * SECONDS_PER_DAY
    # A life starts at a customer's first event and after every silence longer than
    # `limit`; each event belongs to the latest start at or before it.
    start = np.ones(len(c), dtype=bool)
    start[1:] = (c[1:] != c[:-1]) | (t[1:] - t[:-1] > limit)
    life = np.cumsum(start)
    # The current life at `at`: the one of the customer's last event at or before `at`.
    last_life = np.zeros(int(cust.max()) + 1, dtype=np.int64)
    last_ts = np.full(len(last_life), -np.inf)
    np.maximum.at(last_life, c[keep], life[keep])
    np.maximum.at(last_ts, c[keep], t[keep])
    alive = at - last_ts <= limit
    counted = np.zeros(len(ts), dtype=bool)
    counted[order] = keep & (life == last_life[c]) & alive[c]
    return counted


def base_aggregates(
    frame: pd.DataFrame,
    catalog: Catalog,
    at: float,
    *,
    profile_days: int = DEFAULT_PROFILE_RETENTION_DAYS,
) -> pd.DataFrame:
    """The catalog's base aggregates (see `models.catalog.Layout`) at time `at`.

    One row per customer with an event at or before `at` in its current life
    (`current_life`), sorted by customer id.
    """
    upto = current_life(frame, at, profile_days)

    columns: dict[str, np.ndarray] = {}

    def column(name: str) -> np.ndarray:
        if name not in columns:
            columns[name] = frame[name].to_numpy()[upto]
        return columns[name]

    # Each event's output row: customers seen by `at`, in `cust` (= sorted id) order.
    cust = column("cust")
    seen = np.zeros(int(frame["cust"].max()) + 1 if len(frame) else 0, dtype=bool)
    seen[cust] = True
    row = (np.cumsum(seen) - 1)[cust]
    n = int(seen.sum())
    id_of = np.empty(len(seen), dtype=object)
    id_of[cust] = column("customer_id")
    customers = pd.Index(id_of[seen], name="customer_id")

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(row[mask], minlength=n).astype(float)

    def distinct(mask: np.ndarray, values: np.ndarray, span: int) -> np.ndarray:
        # Distinct (customer, value) pairs, counted per customer; values lie in [0, span).
        pairs = row[mask].astype(np.int64) * span + values[mask]
        if n * span <= BITMAP_LIMIT:  # a flag per possible pair: no sort, no hash
            flags = np.zeros(n * span, dtype=bool)
            flags[pairs] = True
            per_customer: np.ndarray = flags.reshape(n, span).sum(axis=1)
            return per_customer.astype(float)
        unique = np.asarray(pd.unique(pairs))
        return np.bincount(unique // span, minlength=n).astype(float)

    def extreme(mask: np.ndarray, how: np.ufunc, start: float) -> np.ndarray:
        out = np.full(n, start)
        how.at(out, row[mask], ts[mask])
        out[out == start] = np.nan  # no such event
        return out

    ts, day = column("ts"), column("day")
    day_at = int(np.floor(at / SECONDS_PER_DAY))
    lay = catalog.layout
    out: dict[str, np.ndarray] = {}
    for w in lay.windows:
        first_day = day_at - w + 1
        in_window = day >= first_day
        for i in range(len(lay.counters)):
            hits = in_window & column(f"m:c{i}")
            out[f"c{i}w{w}"] = count(hits)
            if i in lay.actives:
                out[f"a{i}w{w}"] = distinct(hits, day - first_day, w)
        for j in range(len(lay.sums)):
            amounts = column(f"m:s{j}")
            out[f"s{j}w{w}"] = np.bincount(row[in_window], amounts[in_window], minlength=n)
        for k in range(len(lay.distincts)):
            keys = column(f"m:d{k}")
            span = int(frame[f"m:d{k}"].max()) + 1 if len(frame) else 1
            out[f"d{k}w{w}"] = distinct(in_window & (keys >= 0), keys, max(span, 1))
    if lay.lifetime:
        for i in range(len(lay.counters)):
            hits = column(f"m:c{i}")
            out[f"c{i}life"] = count(hits)
            if i in lay.actives:
                span = int(day.max() - day.min()) + 1 if len(day) else 1
                out[f"a{i}life"] = distinct(hits, day - (day.min() if len(day) else 0), span)
        for j in range(len(lay.sums)):
            out[f"s{j}life"] = np.bincount(row, column(f"m:s{j}"), minlength=n)
    for m in range(len(lay.lasts)):
        out[f"l{m}"] = extreme(column(f"m:l{m}"), np.maximum, -np.inf)
    out["first"] = extreme(np.ones(len(ts), dtype=bool), np.minimum, np.inf)
    return pd.DataFrame(out, index=customers)[list(lay.columns)]


def features_at(
    frame: pd.DataFrame,
    catalog: Catalog,
    at: float,
    *,
    profile_days: int = DEFAULT_PROFILE_RETENTION_DAYS,
) -> pd.DataFrame:
    """Every feature of the catalog for every customer seen by time `at`.

    >>> from models.catalog import default_catalog
    >>> from models.events import decode_event, parse_time
    >>> raw = ['{"event_id": "1", "customer_id": "a", "type": "purchase",'
    ...        ' "ts": "2026-01-01T10:00:00Z", "properties": {"amount": 30}}',
    ...        '{"event_id": "2", "customer_id": "a", "type": "purchase",'
    ...        ' "ts": "2026-01-03T10:00:00Z", "properties": {"amount": 10}}']
    >>> cat = default_catalog()
    >>> frame = events_frame([decode_event(r) for r in raw], cat)
    >>> at = parse_time("2026-01-04T10:00:00Z")
    >>> row = features_at(frame, cat, at).loc["a"]
    >>> names = ("purchases_7d", "revenue_7d", "avg_order_value_90d", "tenure_days")
    >>> [float(row[f]) for f in names]
    [2.0, 40.0, 20.0, 3.0]
    """
    base = base_aggregates(frame, catalog, at, profile_days=profile_days)
    values = catalog.assemble({c: base[c].to_numpy() for c in base.columns}, at)
    return pd.DataFrame(values, index=base.index, columns=list(catalog.names))


def load_frame(
    path: Path,
    catalog: Catalog,
    stats: ReadStats | None = None,
    processes: int = 1,
    parallel_from_bytes: int = 64 << 20,
    mapping: HistoryMapping | None = None,
) -> pd.DataFrame:
    """Read a history file through the contract into an `events_frame`.

    A plain JSONL file of at least `parallel_from_bytes` is decoded in `processes` processes
    (decoding is most of a read: ~10 us per event here, so 10 M events take minutes on one
    core); the result, rejections included, is the same as a read in this process.
    `mapping` reads a foreign CSV or Parquet log (`models.mapping`), in this process.
    """
    stats = stats if stats is not None else ReadStats()
    big = Path(path).stat().st_size >= parallel_from_bytes
    spans = jsonl_spans(path, processes) if processes > 1 and big and mapping is None else []
    if len(spans) <= 1:
        return events_frame(read_events(path, stats, mapping=mapping), catalog)
    # spawn, not fork: the caller may hold threads (progress display, BLAS pools).
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(len(spans), mp_context=context) as pool:
            parts = list(pool.map(_read_part, repeat(Path(path)), spans, repeat(catalog)))
    except BrokenProcessPool as exc:
        # A reader could not start or died (a main module that cannot be imported again,
        # such as a script piped to python, or memory): slower, but the same result.
        log.warning("%s: reader processes failed (%s); reading in this process", path, exc)
        return events_frame(read_events(path, stats), catalog)
    for _, part_stats in parts:  # in file order, so the examples are the first ones
        stats.add(part_stats)
    return _number(pd.concat([frame for frame, _ in parts], ignore_index=True), catalog)


def _read_part(path: Path, span: Span, catalog: Catalog) -> tuple[pd.DataFrame, ReadStats]:
    stats = ReadStats()
    return _per_event(read_events(path, stats, span), catalog), stats
