"""Outcome validation: do segments differ on what happens after as-of?

Owns `segment_outcomes`: per segment, 30-day retention (any event in (as_of, as_of+30d])
and revenue in that window, computed from the events after as-of, which the clustering
never saw. When the history ends at as-of there is nothing to compute, and it says so.

Must not import `stream/`, matplotlib or the other trainer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.catalog import SECONDS_PER_DAY, Catalog

HISTORY_ENDS = "history ends at as-of"


@dataclass
class Outcomes:
    """Per-segment outcomes (None and a note when the history does not reach past as-of)."""

    table: pd.DataFrame | None
    window_days: float
    note: str


def revenue_column(catalog: Catalog) -> str | None:
    """The events-frame column holding each event's revenue (the catalog's revenue sum).

    >>> from models.catalog import default_catalog
    >>> revenue_column(default_catalog())
    'm:s0'
    """
    for spec in catalog.features:
        if spec.aggregation == "sum" and spec.name.startswith("revenue"):
            base = catalog.base_column(spec)
            return "m:" + base.split("w")[0]
    return None


def segment_outcomes(
    frame: pd.DataFrame, catalog: Catalog, segment: pd.Series, as_of: float, days: int = 30
) -> Outcomes:
    """Retention and revenue in (as_of, as_of + days] per segment (`segment`: id by customer)."""
    last = float(frame["ts"].max()) if len(frame) else as_of
    window = min(float(days), (last - as_of) / SECONDS_PER_DAY)
    if window < 1.0:
        return Outcomes(None, 0.0, HISTORY_ENDS)
    after = frame[(frame["ts"] > as_of) & (frame["ts"] <= as_of + window * SECONDS_PER_DAY)]
    active = segment.index.isin(after["customer_id"].unique())
    revenue_col = revenue_column(catalog)
    revenue = (
        after.groupby("customer_id")[revenue_col].sum().reindex(segment.index, fill_value=0.0)
        if revenue_col is not None
        else pd.Series(np.nan, index=segment.index)
    )
    per = pd.DataFrame(
        {"segment": segment.to_numpy(), "retained": active, "revenue": revenue.to_numpy()}
    )
    table = per.groupby("segment").agg(
        customers=("retained", "size"),
        retention=("retained", "mean"),
        revenue_per_customer=("revenue", "mean"),
        revenue_total=("revenue", "sum"),
    )
    note = (
        f"outcomes over the {days} days after as-of"
        if window >= days
        else f"history reaches only {window:.1f} days past as-of; outcomes over those days"
    )
    return Outcomes(table, window, note)
