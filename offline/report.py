"""The analyst report: `report.html` plus PNG figures beside it, in the bundle.

Owns the figures (elbow and silhouette, 2-D PCA of the segments, churn calibration) and
the page's sections (choosing k, the segments, profiles, outcomes, churn, early-life
accuracy, what changed since the previous model, notes), each with a short explanation;
`offline.html` writes the tags. matplotlib runs with the Agg backend.

Must not import `stream/`; it only renders numbers the trainer already computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.decomposition import PCA

from offline.html import escape, image, number, page, table
from offline.naming import SegmentProfile
from offline.segmentation import KScore

FIGURES = ("k_selection.png", "segments_pca.png", "churn_calibration.png")


@dataclass
class ReportInputs:
    """Everything the report shows."""

    version: str
    as_of: str
    k: int
    k_scores: Sequence[KScore]
    silhouette: float
    stability: float | None
    scaled: np.ndarray
    labels: np.ndarray
    names: Mapping[int, str]
    profiles: Sequence[SegmentProfile]
    outcomes: pd.DataFrame | None
    outcome_note: str
    churn: Mapping[str, Any] | None
    churn_holdout: tuple[np.ndarray, np.ndarray] | None
    early: Mapping[str, Any] | None
    notes: Sequence[str] = field(default_factory=list)
    seed: int = 0
    #: The manifest's `lineage` (None for a first bundle).
    lineage: Mapping[str, Any] | None = None
    #: What the trainer found wrong with its models: a red banner at the top.
    warnings: Sequence[str] = field(default_factory=list)
    #: Why each segment has its name.
    reasons: Mapping[int, str] = field(default_factory=dict)
    #: Which customers the clustering saw.
    population: str = ""


def _k_figure(data: ReportInputs, path: Path) -> None:
    ks = [s.k for s in data.k_scores]
    fig, left = plt.subplots(figsize=(6.5, 3.6))
    left.plot(ks, [s.inertia for s in data.k_scores], "o-", color="tab:blue")
    left.set_xlabel("number of segments k")
    left.set_ylabel("inertia (elbow)", color="tab:blue")
    right = left.twinx()
    right.plot(ks, [s.silhouette for s in data.k_scores], "s--", color="tab:orange")
    right.set_ylabel("silhouette", color="tab:orange")
    left.axvline(data.k, color="grey", linestyle=":")
    left.set_title(f"Choosing k (chosen: {data.k})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pca_figure(data: ReportInputs, path: Path) -> None:
    rng = np.random.default_rng(data.seed)
    n = len(data.labels)
    rows = rng.choice(n, size=min(n, 5000), replace=False)
    xy = PCA(n_components=2, random_state=data.seed).fit_transform(data.scaled[rows])
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for seg in sorted(data.names):
        pick = data.labels[rows] == seg
        ax.scatter(xy[pick, 0], xy[pick, 1], s=6, alpha=0.5, label=f"{seg}: {data.names[seg]}")
    ax.set_xlabel("first principal component")
    ax.set_ylabel("second principal component")
    ax.legend(markerscale=3, fontsize=8, loc="best")
    ax.set_title("Segments in the scaled feature space (PCA)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _calibration_figure(y: np.ndarray, proba: np.ndarray, path: Path) -> None:
    frac, mean = calibration_curve(y, proba, n_bins=10, strategy="quantile")
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.plot(mean, frac, "o-", label="churn model")
    ax.set_xlabel("predicted probability of churn")
    ax.set_ylabel("observed churn rate")
    ax.set_title("Calibration on the held-out snapshot")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lineage_section(lineage: Mapping[str, Any], names: Mapping[int, str]) -> list[str]:
    """The "what changed since the previous model" section: statuses, then the from-to
    table of customers."""
    old_names = {int(r["from"][0]["id"]): r["from"][0]["name"] for r in lineage["segments"]
                 if r["from"]}  # fmt: skip
    old_names |= {int(r["id"]): r["name"] for r in lineage["retired"]}
    old_names |= {int(r["previous_id"]): r["previous_name"] for r in lineage["segments"]
                  if r["previous_id"] is not None}  # fmt: skip
    same = lineage["same_segment_share"]
    parts = [
        "<h2>What changed since the previous model</h2>",
        f"<p class='explain'>Previous bundle: <b>{escape(lineage['previous_version'])}"
        f"</b> (as of {escape(lineage['previous_as_of'])}). The training customers "
        "were assigned by both models; segments were matched one to one on the customers "
        "they share and on centroid distance, so a segment that is still there keeps its id "
        "and name. "
        + (f"{same:.1%} of the {lineage['customers']:,} customers are in the segment with "
           "the same id in both." if same is not None else "")
        + " A split segment's largest part keeps the id; merged segments keep one id and "
        "the other is retired. Retired ids are never reused.</p>",
    ]  # fmt: skip
    rows = []
    for r in lineage["segments"]:
        came = "; ".join(
            f"{f['id']} {f['name']}: {f['share_of_previous']:.0%} of it, "
            f"{f['share_of_new']:.0%} of this"
            for f in r["from"]
        )
        rows.append([r["id"], names.get(int(r["id"]), r.get("name", "")), r["status"], came])
    for r in lineage["retired"]:
        went = "; ".join(f"to {f['id']}: {f['share_of_previous']:.0%}" for f in r["into"])
        rows.append([r["id"], r["name"], f"retired ({r['cause']})", went])
    parts.append(table(["id", "name", "status", "significant flows"], rows))
    cells = {(int(t["from"]), int(t["to"])): int(t["customers"]) for t in lineage["transitions"]}
    olds = sorted({i for i, _ in cells})
    news = sorted(names)
    header = ["previous / new", *[f"{j} {names[j]}" for j in news], "customers"]
    matrix = [
        [f"{i} {old_names.get(i, '')}", *[f"{cells.get((i, j), 0):,}" for j in news],
         f"{sum(cells.get((i, j), 0) for j in news):,}"]
        for i in olds
    ]  # fmt: skip
    parts.append("<p class='explain'>Customers by segment in the previous model (rows) and "
                 "in this one (columns).</p>")  # fmt: skip
    parts.append(table(header, matrix))
    return parts


def write_report(data: ReportInputs, out_dir: Path) -> list[Path]:
    """Write report.html and its figures into `out_dir`; return the files written."""
    out_dir = Path(out_dir)
    page_path = out_dir / "report.html"
    _k_figure(data, out_dir / FIGURES[0])
    _pca_figure(data, out_dir / FIGURES[1])
    written = [page_path, out_dir / FIGURES[0], out_dir / FIGURES[1]]
    if data.churn is not None and data.churn_holdout is not None:
        _calibration_figure(*data.churn_holdout, out_dir / FIGURES[2])
        written.append(out_dir / FIGURES[2])
    parts = [
        *_warnings_banner(data.warnings),
        *_k_section(data),
        *_segments_section(),
        *_profiles_section(data),
        *_outcomes_section(data),
        *_churn_section(data.churn if data.churn_holdout is not None else None),
        *_early_section(data.early),
    ]
    if data.lineage is not None:
        parts += _lineage_section(data.lineage, data.names)
    if data.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{escape(n)}</li>" for n in data.notes]
        parts.append("</ul>")
    page_path.write_text(page(f"segstream bundle {data.version}", parts, BANNER), encoding="utf-8")
    return written


BANNER = (
    "div.warnings { background: #fde8e8; border: 2px solid #c0392b; color: #8e1b10; "
    "padding: 0.6em 1em; margin-bottom: 1em; }"
)


def _warnings_banner(warnings: Sequence[str]) -> list[str]:
    if not warnings:
        return []
    return [
        "<div class='warnings'><b>Warning: do not trust these models as they are.</b><ul>",
        *[f"<li>{escape(w)}</li>" for w in warnings],
        "</ul></div>",
    ]


def _k_section(data: ReportInputs) -> list[str]:
    stability = number(data.stability) if data.stability is not None else "not measured"
    return [
        f"<h1>Segmentation bundle {escape(data.version)}</h1>",
        f"<p>Customers as of <b>{escape(data.as_of)}</b>: {len(data.labels):,} customers "
        f"in {data.k} segments.</p>",
        "<p class='explain'>Who was clustered: "
        f"{escape(data.population or 'every customer known at as-of')}. Segments describe "
        "behaviour (rates and intensities: counts, sums and active days over their windows), "
        "so recency features (<code>days_since_*</code>) and tenure are left out of the "
        "clustering, and customers silent for longer than that window are a lifecycle stage "
        "(dormant), not a segment: clustering them with the rest turned a mostly dormant "
        "history into recency buckets. They are still assigned the nearest segment.</p>",
        "<h2>How many segments</h2>",
        "<p class='explain'>Each k from the candidate range was fitted. Inertia (blue) always "
        "falls as k grows; the elbow is where it stops falling fast. Silhouette (orange) "
        "measures how well separated the segments are (higher is better); the chosen k has "
        f"the best silhouette: {number(data.silhouette)}. Stability is the adjusted Rand "
        "index between refits on bootstrap resamples and the main fit (1 means identical "
        f"segments): {stability}.</p>",
        image(FIGURES[0], "elbow and silhouette"),
    ]


def _segments_section() -> list[str]:
    return [
        "<h2>The segments</h2>",
        "<p class='explain'>Each dot is a customer, projected on the two directions of "
        "largest variance of the scaled features. Overlap in this picture can still be "
        "separation in the full space.</p>",
        image(FIGURES[1], "segments PCA scatter"),
    ]


def _profiles_section(data: ReportInputs) -> list[str]:
    rows = []
    reasons = [[p.id, data.names[p.id], data.reasons.get(p.id, "")] for p in data.profiles]
    for p in data.profiles:
        for rank, feat in enumerate(p.top(4)):
            s = p.features[feat]
            lead = [p.id, data.names[p.id], f"{p.size:,}", f"{p.share:.1%}"]
            stats = [s["z"], s["mean"], s["pop_mean"], s["median"], s["pop_median"]]
            rows.append([*(lead if rank == 0 else [""] * 4), feat, *(number(v, 2) for v in stats)])
    header = ["id", "name", "size", "share", "feature", "z", "mean", "pop. mean", "median"]
    return [
        "<h2>Profiles</h2>",
        "<p class='explain'>What sets each segment apart: the features whose segment mean "
        "differs most from the population, in population standard deviations (z, on the "
        "log-scaled features). Means and medians are in the feature's own units. The names "
        "come from fixed rules on these differences and can be overridden in the config "
        "file's <code>[segments.names]</code>.</p>",
        table([*header, "pop. median"], rows),
        "<p class='explain'>Why each name: the rule that gave it and its numbers. Two "
        "segments the rules would name alike are told apart by the trait on which each "
        "stands farthest from the other(s); <i>Lapsing</i> is an absolute rule (median days "
        "since the last event), not one relative to the population.</p>",
        table(["id", "name", "why"], reasons),
    ]


def _outcomes_section(data: ReportInputs) -> list[str]:
    parts = [
        "<h2>Outcomes after as-of</h2>",
        "<p class='explain'>Segments should differ on what they were not clustered on: "
        "whether customers came back (any event) and what they spent in the days after "
        f"as-of. {escape(data.outcome_note.capitalize())}.</p>",
    ]
    if data.outcomes is not None:
        rows = [
            [seg, data.names[seg], f"{int(r['customers']):,}", f"{r['retention']:.1%}",
             f"{r['revenue_per_customer']:,.2f}", f"{r['revenue_total']:,.0f}"]
            for seg, r in zip(data.outcomes.index.astype(int), data.outcomes.to_dict("records"),
                              strict=True)
        ]  # fmt: skip
        header = ["id", "name", "customers", "retention", "revenue per customer", "revenue"]
        parts.append(table(header, rows))
    return parts


def _churn_section(churn: Mapping[str, Any] | None) -> list[str]:
    if churn is None:
        return ["<h2>Churn risk</h2>", "<p>No churn model in this bundle.</p>"]
    return [
        "<h2>Churn risk</h2>",
        "<p class='explain'>A customer churns when they have no qualifying event in the "
        "horizon after a snapshot. The model learned from older snapshots of every customer "
        "known then (silent ones too: the stream scores them all) and is scored on the most "
        "recent snapshot it never saw. ROC AUC is the chance a churner ranks above a "
        "non-churner; PR AUC (average precision) summarises precision over all alert "
        "levels. At the alert threshold (chosen on the training snapshots' recently active "
        "customers for a precision target, see the README's alert quality section) "
        "precision is the share of alerts that were right, recall the share of churners "
        "alerted, and alert share the share of the held-out snapshot's recently active "
        "customers alerted. The calibration plot shows predicted probabilities against "
        "observed churn rates.</p>",
        *_baseline_table(churn),
        table(["metric", "value"],
              [[k, number(v)] for k, v in churn.items() if not isinstance(v, dict)]),
        image(FIGURES[2], "churn calibration"),
    ]  # fmt: skip


def _baseline_table(churn: Mapping[str, Any]) -> list[str]:
    base = churn.get("baselines") or {}
    if not base:
        return []
    rows = [["churn model", number(churn["roc_auc"]), number(churn["average_precision"])]]
    for key, label in (("recency", "recency alone (days since the last qualifying event)"),
                       ("rfm_logit", "RFM logistic regression (recency, lifetime purchases, "
                                     "lifetime revenue)")):  # fmt: skip
        if key in base:
            rows.append(
                [label, number(base[key]["roc_auc"]), number(base[key]["average_precision"])]
            )
    parts = [
        "<p class='explain'>Against the baselines, on the same held-out snapshot (the model "
        "must rank better than both):</p>",
        table(["ranking", "ROC AUC", "PR AUC"], rows),
    ]
    if "majority" in base:
        m = base["majority"]
        parts.append(
            "<p class='explain'>At the threshold, on the recently active held-out customers: "
            f"accuracy {number(churn.get('accuracy_at_threshold'))}, against "
            f"{number(m['accuracy'])} for always predicting the majority class "
            f"({escape(m['predicts'])}).</p>"
        )
    return parts


def _early_section(early: Mapping[str, Any] | None) -> list[str]:
    if early is None:
        return ["<h2>Early-life segment</h2>", "<p>No early-life classifier in this bundle.</p>"]
    by_age = early.get("accuracy_by_age", {})
    return [
        "<h2>Early-life segment</h2>",
        "<p class='explain'>New customers are assigned a segment before their behaviour "
        "settles: a classifier learned from customers' first weeks (snapshots at several "
        "ages) which segment they end up in at as-of. Accuracy is measured on customers "
        "held out of training, against always predicting the largest segment (the majority "
        "class); balanced accuracy averages the recall of each segment, so a classifier "
        "that always says the same segment scores 1 / segments.</p>",
        table(["classifier", "accuracy", "balanced accuracy"],
              [["early-life classifier", number(early["accuracy"]),
                number(early.get("balanced_accuracy"))],
               ["majority class", number(early.get("majority_accuracy")),
                number(early.get("majority_balanced_accuracy"))]]),
        table(["age (days)", "accuracy"],
              [["all", number(early["accuracy"])], *[[a, number(v)] for a, v in by_age.items()]]),
    ]  # fmt: skip
