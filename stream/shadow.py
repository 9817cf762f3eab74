"""Shadow mode: a candidate bundle decides beside the live one on the same rows, silently.

Before promoting a retrained bundle, an operator wants to know what it would do to the
live traffic: how many customers it would put in another segment, how its churn scores
relate to the live ones, and how many alerts it would send. `Shadow.observe` takes the
rows the live engine just decided (features, the live states before and the live
decisions after) and runs the candidate's own `Decider` and online centers over them.
Nothing it decides is published or stored in Redis: its customer states live in memory.

A customer the shadow has not seen starts from its *live* state, so the candidate's first
look at it is a model update (`stream.decide`): its alert counts include the
`segment_reassigned` alerts a promotion would send, then what it would decide after.

Pure: no Redis, no faust. The engine calls it; the worker turns `ShadowTally` into metrics.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.agreement import agreement
from models.bundle import Bundle
from models.catalog import Catalog
from stream.assign import OnlineCenters
from stream.decide import CustomerState, Decider, Decisions, Row, Rules
from stream.detect import bundle_profiles


@dataclass
class ShadowTally:
    """What the candidate did differently in one batch (counts, for the metrics)."""

    pairs: Counter[tuple[int, int]] = field(default_factory=Counter)  # (live, candidate)
    alerts: Counter[str] = field(default_factory=Counter)  # would-be alerts by type


class Shadow:
    """The candidate bundle's decisions over live traffic, kept in memory only.

    `window` recent evaluations feed the agreement share and the churn-score correlation;
    `cache_size` bounds the candidate's in-memory customer states.
    """

    def __init__(
        self,
        bundle: Bundle,
        catalog: Catalog,
        rules: Rules,
        *,
        halflife: float = 0.001,
        memory_days: float = 7.0,
        window: int = 5000,
        cache_size: int = 500_000,
    ) -> None:
        self.bundle = bundle
        self.rules = rules
        self.centers = OnlineCenters(
            bundle.centroids, bundle.segment_ids, halflife=halflife, memory_days=memory_days
        )
        self.decider = Decider(
            bundle,
            bundle.segment_ids,
            catalog.names,
            bundle.space.index.tolist(),
            bundle.space.typical_row(len(catalog.names)),
            rules,
            bundle_profiles(catalog, bundle),
        )
        self._tenure = catalog.names.index("tenure_days")
        self.states: dict[str, CustomerState] = {}
        self.cache_size = cache_size
        self.segments: deque[tuple[int, int]] = deque(maxlen=window)  # (live, candidate)
        self.churn: deque[tuple[float, float]] = deque(maxlen=window)

    def observe(
        self,
        rows: Sequence[Row],
        features: np.ndarray,
        live_before: dict[str, CustomerState],
        live: Decisions,
        *,
        rescore: bool = False,
    ) -> ShadowTally:
        """Decide the live rows with the candidate; count where it differs."""
        tally = ShadowTally()
        if not rows:
            return tally
        known: dict[str, CustomerState] = {}
        for row in rows:
            cid = row.customer_id
            if cid in self.states:
                known[cid] = self.states[cid]
            elif cid in live_before:
                known[cid] = live_before[cid]  # start where the live model is
        z = self.bundle.scale(features)
        out = self.decider.decide(
            rows, features, z, self.centers.distances(z), known, score_churn=rescore
        )
        if len(self.states) + len(out.states) > self.cache_size:
            self.states.clear()
        self.states.update(out.states)
        settled = features[:, self._tenure] >= self.rules.early_days
        if settled.any():
            at = np.array([r.at for r in rows], dtype=float)
            self.centers.learn_many(z[settled], at[settled])
        tally.alerts.update(a.kind for a in out.alerts)
        for live_seg, cand_seg in zip(live.segments, out.segments, strict=True):
            tally.pairs[(live_seg, cand_seg)] += 1
            self.segments.append((live_seg, cand_seg))
        if rescore:
            self.churn.extend(
                (a, b)
                for a, b in zip(live.churn, out.churn, strict=True)
                if np.isfinite(a) and np.isfinite(b)
            )
        return tally

    def agreement(self) -> float:
        """Share of the recent evaluations that put the customer in the same segment."""
        if not self.segments:
            return float("nan")
        pairs = np.array(self.segments)
        same = agreement(pairs[:, 0], pairs[:, 1]).same_segment
        return float("nan") if same is None else same

    def churn_correlation(self) -> float:
        """Pearson correlation of live and candidate churn scores over recent re-scores."""
        if len(self.churn) < 3:
            return float("nan")
        pairs = np.array(self.churn)
        found = agreement(pairs[:, 0], pairs[:, 0], pairs[:, 0], pairs[:, 1]).churn_correlation
        return float("nan") if found is None else found


__all__ = ["Shadow", "ShadowTally"]
