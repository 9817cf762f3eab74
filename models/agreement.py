"""Agreement between two bundles on the same customers: segments and churn scores.

Owns `agreement`, a pure function over plain arrays (segment ids under each bundle,
churn probabilities under each, each bundle's churn threshold), and `Agreement`, its
result. `segstream compare` (`offline/compare.py`) feeds it features computed by the
batch reference; the stream's shadow mode can feed it the live and the candidate
bundle's decisions on the same traffic, which is why it lives here and not in
`offline/` (the stream must not import `offline/`).

Numpy only: no pandas, no scikit-learn, nothing from `offline/` or `stream/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """How two bundles agree on the same customers."""

    customers: int
    #: Share of customers placed in the segment with the same id by both (ids are stable
    #: across retrainings, see `offline/lineage.py`); None without customers.
    same_segment: float | None
    #: (live id, candidate id) -> customers, every non-empty pair.
    pairs: dict[tuple[int, int], int]
    #: Pearson and Spearman correlation of the churn probabilities (None without both
    #: models, or when one of them is constant).
    churn_correlation: float | None
    churn_rank_correlation: float | None
    #: Customers at or above each bundle's churn threshold (None without its model), and
    #: at or above both.
    live_alerts: int | None
    candidate_alerts: int | None
    both_alerts: int | None

    def to_dict(self) -> dict[str, Any]:
        doc = vars(self).copy()
        doc["pairs"] = [
            {"live": a, "candidate": b, "customers": n} for (a, b), n in sorted(self.pairs.items())
        ]
        return doc


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's correlation needs)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    averaged: np.ndarray = (sums / counts)[inverse]
    return averaged


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def agreement(
    live_segments: np.ndarray,
    candidate_segments: np.ndarray,
    live_churn: np.ndarray | None = None,
    candidate_churn: np.ndarray | None = None,
    live_threshold: float | None = None,
    candidate_threshold: float | None = None,
) -> Agreement:
    """Compare two bundles' outputs for the same customers (row i is one customer).

    >>> a = agreement(np.array([0, 0, 1, 2]), np.array([0, 0, 1, 3]),
    ...               np.array([0.1, 0.2, 0.8, 0.4]), np.array([0.1, 0.3, 0.9, 0.6]), 0.5, 0.5)
    >>> a.same_segment, a.pairs[(2, 3)], a.live_alerts, a.candidate_alerts, a.both_alerts
    (0.75, 1, 1, 2, 1)
    >>> round(a.churn_rank_correlation, 3)
    1.0
    """
    live = np.asarray(live_segments, dtype=np.int64)
    cand = np.asarray(candidate_segments, dtype=np.int64)
    if live.shape != cand.shape or live.ndim != 1:
        raise ValueError(f"segment arrays must be 1-d and alike, got {live.shape}, {cand.shape}")
    n = len(live)
    keys, counts = np.unique(np.stack([live, cand]), axis=1, return_counts=True)
    pairs = {(int(a), int(b)): int(c) for a, b, c in zip(keys[0], keys[1], counts, strict=True)}
    lp = None if live_churn is None else np.asarray(live_churn, dtype=float)
    cp = None if candidate_churn is None else np.asarray(candidate_churn, dtype=float)
    for p in (lp, cp):
        if p is not None and p.shape != live.shape:
            raise ValueError(f"churn probabilities must have one value per customer ({n})")
    pearson = spearman = None
    if lp is not None and cp is not None:
        pearson, spearman = _corr(lp, cp), _corr(_ranks(lp), _ranks(cp))
    live_high = None if lp is None or live_threshold is None else lp >= live_threshold
    cand_high = None if cp is None or candidate_threshold is None else cp >= candidate_threshold
    return Agreement(
        customers=n,
        same_segment=float(np.mean(live == cand)) if n else None,
        pairs=pairs,
        churn_correlation=pearson,
        churn_rank_correlation=spearman,
        live_alerts=None if live_high is None else int(live_high.sum()),
        candidate_alerts=None if cand_high is None else int(cand_high.sum()),
        both_alerts=(
            None if live_high is None or cand_high is None else int((live_high & cand_high).sum())
        ),
    )
