"""The batch reference: the whole feature catalog for every customer at any time, in pandas.

It is the oracle. The streaming store must match it exactly, and the trainer learns from
it, so the model sees the same numbers the stream computes. It favours plain, obviously
right pandas over cleverness: filters pick rows, windows pick days, groupby aggregates.

Must not import `stream/`, faust or redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from models.catalog import SECONDS_PER_DAY, Catalog, EventFilter, distinct_key, numeric_value
from models.eventfile import ReadStats, read_events
from models.events import Event


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

    Columns: `event_id`, `customer_id`, `type`, `ts` (Unix seconds), `day` (UTC day number),
    then `m:c{i}` (bool, counter filter i matches), `m:s{j}` (amount to add for sum j),
    `m:d{k}` (distinct key for distinct k, or None) and `m:l{m}` (bool, last filter m).
    """
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
    # A redelivery repeats the event_id; the stream counts it once, so does the oracle.
    first = ~frame["event_id"].duplicated(keep="first").to_numpy()
    frame = frame[first].reset_index(drop=True)
    kept_props = [p for p, keep in zip(props, first, strict=True) if keep]
    type_arr = frame["type"].to_numpy()
    frame["day"] = np.floor(frame["ts"].to_numpy() / SECONDS_PER_DAY).astype(np.int64)
    lay = catalog.layout
    for i, flt in enumerate(lay.counters):
        frame[f"m:c{i}"] = _filter_mask(flt, type_arr, kept_props)
    for j, (flt, prop) in enumerate(lay.sums):
        mask = _filter_mask(flt, type_arr, kept_props)
        frame[f"m:s{j}"] = [
            numeric_value(p.get(prop)) if m else 0.0 for p, m in zip(kept_props, mask, strict=True)
        ]
    for k, (flt, prop) in enumerate(lay.distincts):
        mask = _filter_mask(flt, type_arr, kept_props)
        frame[f"m:d{k}"] = pd.Series(
            [
                distinct_key(p.get(prop)) if m else None
                for p, m in zip(kept_props, mask, strict=True)
            ],
            dtype=object,
        )
    for m, flt in enumerate(lay.lasts):
        frame[f"m:l{m}"] = _filter_mask(flt, type_arr, kept_props)
    return frame


def base_aggregates(frame: pd.DataFrame, catalog: Catalog, at: float) -> pd.DataFrame:
    """The catalog's base aggregates (see `models.catalog.Layout`) at time `at`.

    One row per customer with an event at or before `at`, sorted by customer id.
    """
    seen = frame[frame["ts"] <= at]
    customers = pd.Index(np.sort(seen["customer_id"].unique()), name="customer_id")
    day_at = int(np.floor(at / SECONDS_PER_DAY))
    lay = catalog.layout
    out: dict[str, pd.Series] = {}

    def per_customer(rows: pd.DataFrame, column: str, how: str, fill: float) -> pd.Series:
        grouped = rows.groupby("customer_id")[column].agg(how)
        return grouped.reindex(customers, fill_value=fill).astype(float)

    for w in lay.windows:
        in_window = seen[seen["day"] >= day_at - w + 1]
        for i in range(len(lay.counters)):
            hits = in_window[in_window[f"m:c{i}"]]
            out[f"c{i}w{w}"] = per_customer(hits, "day", "size", 0.0)
            if i in lay.actives:
                out[f"a{i}w{w}"] = per_customer(hits, "day", "nunique", 0.0)
        for j in range(len(lay.sums)):
            out[f"s{j}w{w}"] = per_customer(in_window, f"m:s{j}", "sum", 0.0)
        for k in range(len(lay.distincts)):
            keys = in_window[in_window[f"m:d{k}"].notna()]
            out[f"d{k}w{w}"] = per_customer(keys, f"m:d{k}", "nunique", 0.0)
    for m in range(len(lay.lasts)):
        out[f"l{m}"] = per_customer(seen[seen[f"m:l{m}"]], "ts", "max", np.nan)
    out["first"] = per_customer(seen, "ts", "min", np.nan)
    return pd.DataFrame(out, index=customers)[list(lay.columns)]


def features_at(frame: pd.DataFrame, catalog: Catalog, at: float) -> pd.DataFrame:
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
    base = base_aggregates(frame, catalog, at)
    values = catalog.assemble({c: base[c].to_numpy() for c in base.columns}, at)
    return pd.DataFrame(values, index=base.index, columns=list(catalog.names))


def load_frame(path: Path, catalog: Catalog, stats: ReadStats | None = None) -> pd.DataFrame:
    """Read a history file through the contract into an `events_frame`."""
    return events_frame(read_events(path, stats), catalog)
