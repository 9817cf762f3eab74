"""The baselines a trained model must beat before anyone should trust it.

Owns the raw-history RFM columns (`rfm_at`: recency, frequency and monetary value of every
customer known at a time, computed from the events, not from the catalog, since baselines
are never deployed), the two churn rankers (`recency_scores`, days since the last
qualifying event; `RfmLogit`, a logistic regression on log1p(R, F, M)), `majority_share`
(what always predicting the commonest class gets) and `compare_to_baselines`, which turns
held-out scores into the table and the warnings the trainer shows.

Must not import `stream/`, matplotlib or the other trainer steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from models.catalog import SECONDS_PER_DAY, Catalog
from offline.outcomes import revenue_column

RFM_COLUMNS = ("recency_days", "frequency", "monetary")
#: An alert threshold that fires on more of the recently active held-out customers than
#: this is no alert at all: it is a mailing list.
MAX_ALERT_SHARE = 0.5
#: Below this precision on the training snapshots' out-of-fold predictions, at its own
#: threshold, most churn alerts will be wrong: the stream judges every customer every
#: day, and its alerts are right less often than snapshot rows (on generated histories of
#: 300 customers, out-of-fold 0.13 gave 4 % right alerts in the backtest).
MIN_THRESHOLD_PRECISION = 0.5


def purchase_column(catalog: Catalog) -> str | None:
    """The events-frame column flagging purchases (the catalog's counter of `purchase`
    events), or None when the catalog counts none.

    >>> from models.catalog import default_catalog
    >>> purchase_column(default_catalog()) is not None
    True
    """
    for i, flt in enumerate(catalog.layout.counters):
        if flt.types == ("purchase",) and not flt.where:
            return f"m:c{i}"
    return None


def rfm_at(
    frame: pd.DataFrame, catalog: Catalog, at: float, qualifying: np.ndarray | None = None
) -> pd.DataFrame:
    """Recency (days since the last qualifying event: `qualifying` flags them, every event
    when None), frequency (lifetime purchases, lifetime events when the history has no
    purchase) and monetary value (lifetime revenue) of every customer with an event at or
    before `at`, indexed and sorted like `offline.reference.features_at`; `silent_days`
    is the time since the customer's last event of any type.

    A customer with no qualifying event yet gets the whole history's length plus a day,
    so recency ranks them below everyone who had one.
    """
    upto = frame["ts"].to_numpy() <= at
    cust = frame["cust"].to_numpy()[upto]
    ts = frame["ts"].to_numpy()[upto]
    size = int(frame["cust"].max()) + 1 if len(frame) else 0
    seen = np.bincount(cust, minlength=size) > 0
    q = np.ones(len(ts), dtype=bool) if qualifying is None else qualifying[upto]
    last = np.full(size, -np.inf)
    np.maximum.at(last, cust[q], ts[q])
    last_any = np.full(size, -np.inf)
    np.maximum.at(last_any, cust, ts)
    start = float(frame["ts"].min()) if len(frame) else at
    never = (at - start) / SECONDS_PER_DAY + 1.0
    recency = np.where(np.isfinite(last), (at - last) / SECONDS_PER_DAY, never)
    bought = purchase_column(catalog)
    counted = (
        frame[bought].to_numpy(dtype=bool)[upto]
        if bought is not None and frame[bought].any()
        else np.ones(len(ts), dtype=bool)
    )
    frequency = np.bincount(cust[counted], minlength=size).astype(float)
    revenue = revenue_column(catalog)
    amounts = frame[revenue].to_numpy(dtype=float)[upto] if revenue else np.zeros(len(ts))
    monetary = np.bincount(cust, weights=amounts, minlength=size)
    ids = np.empty(size, dtype=object)
    ids[cust] = frame["customer_id"].to_numpy()[upto]
    return pd.DataFrame(
        {
            "recency_days": recency[seen],
            "frequency": frequency[seen],
            "monetary": monetary[seen],
            "silent_days": ((at - last_any) / SECONDS_PER_DAY)[seen],
        },
        index=pd.Index(ids[seen], name="customer_id"),
    )


def recency_scores(rfm: pd.DataFrame) -> np.ndarray:
    """The recency ranking: the longer since the last qualifying event, the likelier churn.

    >>> recency_scores(pd.DataFrame({"recency_days": [3.0, 40.0]})).tolist()
    [3.0, 40.0]
    """
    return rfm["recency_days"].to_numpy(dtype=float)


class RfmLogit(BaseEstimator):  # type: ignore[misc]
    """Logistic regression of churn on log1p(recency, frequency, monetary): the textbook
    customer-base model a shop would try first. Learns `model_`."""

    def __init__(self, c: float = 1.0) -> None:
        self.c = c

    def fit(self, rfm: pd.DataFrame, y: np.ndarray) -> Self:
        self.model_: Pipeline = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.c, max_iter=1000)
        ).fit(self._x(rfm), y)
        return self

    def predict_proba(self, rfm: pd.DataFrame) -> np.ndarray:
        proba: np.ndarray = self.model_.predict_proba(self._x(rfm))
        return proba

    @staticmethod
    def _x(rfm: pd.DataFrame) -> np.ndarray:
        x: np.ndarray = np.log1p(rfm[list(RFM_COLUMNS)].to_numpy(dtype=float).clip(min=0.0))
        return x


def majority_share(y: Sequence[Any] | np.ndarray) -> float:
    """Accuracy of always predicting the commonest class.

    >>> majority_share(np.array([1, 1, 0, 2]))
    0.5
    """
    values = np.asarray(y)
    if not len(values):
        return float("nan")
    _, counts = np.unique(values, return_counts=True)
    return float(counts.max() / len(values))


def ranking_scores(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """ROC AUC and PR AUC (average precision) of a churn ranking score."""
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "average_precision": float(average_precision_score(y, score)),
    }


def churn_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """What is wrong with a churn model, judged on its held-out metrics: it does not rank
    better (ROC AUC) than a baseline, its threshold is right less than
    `MIN_THRESHOLD_PRECISION` of the time on the training snapshots, or it alerts on no
    one or on most of the recently active customers of the held-out snapshot.

    >>> churn_warnings({"roc_auc": 0.7, "alert_share": 0.1,
    ...                 "baselines": {"recency": {"roc_auc": 0.75}}})[0][:52]
    'churn model ranks no better than recency alone (ROC '
    """
    out = []
    auc = float(metrics["roc_auc"])
    for name, base in metrics.get("baselines", {}).items():
        if "roc_auc" in base and auc <= float(base["roc_auc"]):
            out.append(
                f"churn model ranks no better than {BASELINE_LABELS.get(name, name)} "
                f"(ROC AUC {auc:.3f} vs {float(base['roc_auc']):.3f} on the held-out snapshot)"
            )
    oof = metrics.get("threshold_precision_oof")
    if oof is not None and float(oof) < MIN_THRESHOLD_PRECISION:
        out.append(
            f"churn alerts will mostly be wrong: at its threshold the model's precision on "
            f"the training snapshots (out of fold) is {float(oof):.2f} (recall "
            f"{float(metrics.get('threshold_recall_oof', float('nan'))):.2f}), and the "
            "stream's daily alerts are right less often still; backtest before turning "
            "churn alerts on"
        )
    share = float(metrics["alert_share"])
    if share == 0.0:
        out.append(
            "churn threshold would raise no alert on the held-out snapshot "
            f"(threshold {float(metrics.get('threshold', float('nan'))):.3f})"
        )
    elif share > MAX_ALERT_SHARE:
        out.append(
            f"churn threshold would alert on {share:.0%} of the recently active customers "
            "of the held-out snapshot (more than half)"
        )
    return out


def early_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """The early-life classifier does not beat always predicting the largest segment.

    >>> early_warnings({"accuracy": 0.8, "majority_accuracy": 0.83})[0][:40]
    'early-life classifier is no better than '
    """
    accuracy, majority = float(metrics["accuracy"]), float(metrics["majority_accuracy"])
    if accuracy > majority:
        return []
    return [
        f"early-life classifier is no better than always predicting the largest segment "
        f"(accuracy {accuracy:.3f} vs {majority:.3f} held out)"
    ]


BASELINE_LABELS = {
    "recency": "recency alone",
    "rfm_logit": "an RFM logistic regression",
    "majority": "the majority class",
}
