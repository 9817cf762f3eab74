"""Offline comparison of two bundles on the same customers (`segstream compare`).

Owns `place` (a customer's segment the way the stream places it: the early-life
classifier below `early_days` of tenure, the nearest centroid above), `compare` (features
at as-of from the batch reference, both bundles' segments and churn probabilities, then
`models.agreement.agreement`), and its output: the rows of its summary and segment-pair
tables (`segstream.views` draws them on the terminal) and an HTML page with a JSON twin.
The numbers come from the same agreement function the stream's shadow mode uses.

Must not import `stream/`, `segstream/` or rich.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.agreement import Agreement, agreement
from models.bundle import Bundle
from models.catalog import Catalog
from offline.html import escape, page, table
from offline.reference import features_at

TENURE = "tenure_days"


def place(
    bundle: Bundle, x: np.ndarray, tenure: np.ndarray | None, early_days: float
) -> np.ndarray:
    """Segment id per row of catalog features, as the stream places customers."""
    segments = bundle.nearest(x)
    if tenure is not None and bundle.early_model is not None:
        young = tenure < early_days
        if young.any():
            segments[young] = bundle.early_segment(x[young])
    return segments


@dataclass(frozen=True)
class Comparison:
    """Two bundles on the same customers at one time."""

    live: Bundle
    candidate: Bundle
    as_of: str
    agreement: Agreement
    early_days: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "live": self.live.version,
            "candidate": self.candidate.version,
            "as_of": self.as_of,
            "early_days": self.early_days,
            "live_threshold": _num(self.live.churn_threshold),
            "candidate_threshold": _num(self.candidate.churn_threshold),
            **self.agreement.to_dict(),
        }


def _num(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def compare(
    live: Bundle,
    candidate: Bundle,
    frame: pd.DataFrame,
    catalog: Catalog,
    as_of: float,
    as_of_text: str,
    early_days: float = 30.0,
) -> Comparison:
    """Score every customer with an event at or before `as_of` with both bundles."""
    feats = features_at(frame, catalog, as_of)
    x = feats.to_numpy(dtype=float)
    tenure = feats[TENURE].to_numpy(dtype=float) if TENURE in feats else None

    def churn(bundle: Bundle) -> tuple[np.ndarray | None, float | None]:
        if bundle.churn_model is None or len(x) == 0:
            return None, None
        return bundle.churn_probability(x), _num(bundle.churn_threshold)

    live_p, live_t = churn(live)
    cand_p, cand_t = churn(candidate)
    result = agreement(
        place(live, x, tenure, early_days),
        place(candidate, x, tenure, early_days),
        live_p,
        cand_p,
        live_t,
        cand_t,
    )
    return Comparison(live, candidate, as_of_text, result, early_days)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def summary_rows(c: Comparison) -> list[tuple[str, str]]:
    """(what, value) of the headline table: versions, customers, agreement, alerts."""
    a = c.agreement
    return [
        ("live bundle", c.live.version),
        ("candidate bundle", c.candidate.version),
        ("as of", c.as_of),
        ("customers", f"{a.customers:,}"),
        ("same segment (by id)", _pct(a.same_segment)),
        ("churn correlation (Pearson / Spearman)", f"{_r(a.churn_correlation)} / "
         f"{_r(a.churn_rank_correlation)}"),
        ("churn alerts: live", f"{_count(a.live_alerts)} "
         f"(p >= {_r(_num(c.live.churn_threshold))})"),
        ("churn alerts: candidate", f"{_count(a.candidate_alerts)} "
         f"(p >= {_r(_num(c.candidate.churn_threshold))})"),
        ("churn alerts: both", _count(a.both_alerts)),
    ]  # fmt: skip


def pair_rows(c: Comparison) -> list[tuple[str, str, str, str]]:
    """(live segment, candidate segment, customers, share of the live segment), largest
    live segment first."""
    live_names, cand_names = c.live.segment_names, c.candidate.segment_names
    sizes: dict[int, int] = {}
    for (a, _), n in c.agreement.pairs.items():
        sizes[a] = sizes.get(a, 0) + n
    rows = []
    order = sorted(c.agreement.pairs.items(), key=lambda kv: (-sizes[kv[0][0]], kv[0][0], -kv[1]))
    for (a, b), n in order:
        rows.append(
            (
                f"{a} {live_names.get(a, '?')}",
                f"{b} {cand_names.get(b, '?')}",
                f"{n:,}",
                f"{n / sizes[a]:.1%}",
            )
        )
    return rows


#: Rows of customers who keep their segment.
_SAME_STYLE = "tr.same td { background: #eef7ee; }\n"


def write_html(c: Comparison, out_dir: Path) -> list[Path]:
    """Write `compare.html` and `compare.json` into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = pair_rows(c)
    same = ["same" if r[0].split(" ", 1)[0] == r[1].split(" ", 1)[0] else None for r in rows]
    title = f"{c.live.version} vs {c.candidate.version}"
    parts = [
        f"<h1>Bundle comparison: {escape(title)}</h1>",
        "<p class='explain'>Both bundles scored the same customers (every customer with an "
        f"event by {escape(c.as_of)}), with the features the batch reference computes. "
        f"Customers younger than {c.early_days:g} days are placed by each bundle's early-life "
        "classifier, older ones by the nearest centroid, as the stream does. Segment ids are "
        "stable across retrainings, so the same id means the same segment. A churn alert "
        "is counted for a customer at or above the bundle's threshold at as-of.</p>",
        table(["", "value"], summary_rows(c)),
        "<h2>Segment pairs</h2>",
        "<p class='explain'>Customers by segment under the live bundle and under the "
        "candidate; green rows keep their segment.</p>",
        table(["live segment", "candidate segment", "customers", "share of live segment"],
              rows, same),
    ]  # fmt: skip
    page_path, json_path = out_dir / "compare.html", out_dir / "compare.json"
    page_path.write_text(page(f"segstream compare {title}", parts, _SAME_STYLE), encoding="utf-8")
    json_path.write_text(json.dumps(c.to_dict(), indent=2) + "\n", encoding="utf-8")
    return [page_path, json_path]
