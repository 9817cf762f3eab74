"""Churn risk: labelled snapshots from history, a calibrated classifier and its threshold.

Owns `snapshot_times` (weekly times s whose label window (s, s+H] ends by as-of, so the
model never trains on the future), `churn_dataset` (population: customers with an event
in the 30 days before s; label: no qualifying event in (s, s+H]) and `ChurnTrainer`, which
fits a calibrated HistGradientBoostingClassifier, picks the alert threshold (a precision
target) on out-of-fold predictions of the training snapshots and scores the last
snapshot(s), held out.

Must not import `stream/`, matplotlib or the other trainer steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
)
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict

from models.catalog import SECONDS_PER_DAY, Catalog
from offline.reference import features_at

LOOKBACK_DAYS = 30


def snapshot_times(
    history_start: float,
    as_of: float,
    horizon_days: int,
    step_days: int = 7,
    warmup_days: int = 28,
) -> list[float]:
    """Snapshot times, oldest first: as_of - H, then back by `step_days` while at least
    `warmup_days` of history lie before the snapshot.

    >>> day = 86_400.0
    >>> [t / day for t in snapshot_times(0.0, 90 * day, 30)]
    [32.0, 39.0, 46.0, 53.0, 60.0]
    """
    times = []
    s = as_of - horizon_days * SECONDS_PER_DAY
    while s >= history_start + warmup_days * SECONDS_PER_DAY:
        times.append(s)
        s -= step_days * SECONDS_PER_DAY
    return sorted(times)


@dataclass
class ChurnData:
    """Labelled snapshots: catalog features, churn label and snapshot time per row."""

    X: pd.DataFrame
    y: np.ndarray
    snapshot: np.ndarray


def churn_dataset(
    frame: pd.DataFrame,
    catalog: Catalog,
    times: Sequence[float],
    horizon_days: int,
    qualifying_types: Sequence[str] = (),
    progress: Callable[[], None] | None = None,
) -> ChurnData:
    """Build the labelled snapshots (features from the batch reference at each time)."""
    horizon = horizon_days * SECONDS_PER_DAY
    qualifying = frame[frame["type"].isin(list(qualifying_types))] if qualifying_types else frame
    parts, labels, snaps = [], [], []
    ts, customer = frame["ts"].to_numpy(), frame["customer_id"].to_numpy()
    q_ts, q_customer = qualifying["ts"].to_numpy(), qualifying["customer_id"].to_numpy()
    for s in times:
        recent = (ts > s - LOOKBACK_DAYS * SECONDS_PER_DAY) & (ts <= s)
        population = pd.Index(np.sort(pd.unique(customer[recent])))
        feats = features_at(frame, catalog, s).reindex(population)
        came_back = pd.unique(q_customer[(q_ts > s) & (q_ts <= s + horizon)])
        parts.append(feats)
        labels.append(~population.isin(came_back))
        snaps.append(np.full(len(population), s))
        if progress is not None:
            progress()
    if not parts:
        return ChurnData(pd.DataFrame(columns=list(catalog.names)), np.array([]), np.array([]))
    return ChurnData(
        X=pd.concat(parts),
        y=np.concatenate(labels).astype(np.int64),
        snapshot=np.concatenate(snaps),
    )


def best_f1_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """The probability threshold with the highest F1.

    >>> best_f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.35
    """
    precision, recall, thresholds = precision_recall_curve(y, proba)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def precision_threshold(
    y: np.ndarray, proba: np.ndarray, min_precision: float, min_recall: float = 0.25
) -> float:
    """The lowest probability threshold whose precision reaches `min_precision` (the most
    recall at that precision). When no threshold keeping `min_recall` reaches it, the
    target becomes the best precision such a threshold reaches, less 0.01 (a model that
    tops out at 0.97 gets 0.96, not a recall-greedy best-F1 threshold).

    >>> y, p = np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.3, 0.6, 0.7, 0.9])
    >>> precision_threshold(y, p, 0.95), precision_threshold(y, p, 0.7)
    (0.7, 0.3)
    """
    precision, recall, thresholds = precision_recall_curve(y, proba)
    precision, recall = precision[:-1], recall[:-1]
    usable = recall >= min_recall
    if not usable.any():
        return best_f1_threshold(y, proba)
    target = min(min_precision, float(precision[usable].max()) - 0.01)
    reached = np.flatnonzero(usable & (precision >= target))
    return float(thresholds[reached[0]])


@dataclass
class ChurnReport:
    """Holdout evaluation of the churn model."""

    metrics: dict[str, Any]
    holdout_y: np.ndarray = field(repr=False)
    holdout_proba: np.ndarray = field(repr=False)


class ChurnTrainer(BaseEstimator):  # type: ignore[misc]
    """Calibrated gradient boosting for P(churn), with a time-based holdout.

    Learns `model_` (a CalibratedClassifierCV over the full catalog matrix), `threshold_`
    and `report_`. The threshold is the lowest whose precision on out-of-fold predictions
    of the training snapshots reaches `min_precision` (`None`: the best-F1 threshold).
    The stream alerts on the day a customer's probability crosses it, judging every
    customer every day, so an alert is far less often right than a weekly snapshot row:
    backtested (seeds 101-103, README "Alert quality"), snapshot precision 0.9 at the
    best-F1 threshold gave 27-50 % right alerts, while 0.98 gave 73-98 %.
    """

    def __init__(
        self,
        n_holdout: int = 1,
        max_iter: int = 150,
        random_state: int = 0,
        min_precision: float | None = 0.98,
    ) -> None:
        self.n_holdout = n_holdout
        self.max_iter = max_iter
        self.random_state = random_state
        self.min_precision = min_precision

    def _model(self, n_rows: int) -> CalibratedClassifierCV:
        booster = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=0.1, random_state=self.random_state
        )
        # Isotonic needs plenty of rows per fold; sigmoid is the safer choice when few.
        method = "isotonic" if n_rows >= 3000 else "sigmoid"
        # One booster calibrated on out-of-fold predictions (ensemble=False), not three:
        # the stream scores every customer daily, and three boosters cost three times as
        # much per call for no measurable gain in AUC here.
        return CalibratedClassifierCV(booster, method=method, cv=3, ensemble=False)

    def fit(self, data: ChurnData) -> Self:
        times = np.unique(data.snapshot)
        if len(times) < 2:
            raise ValueError(
                f"{len(times)} churn snapshot(s): need 2 or more (longer history before as-of)"
            )
        held = times[-self.n_holdout :] if len(times) > self.n_holdout else times[-1:]
        test = np.isin(data.snapshot, held)
        X = data.X.to_numpy(dtype=float)
        X_train, y_train, X_test, y_test = X[~test], data.y[~test], X[test], data.y[test]
        for part, ys in (("training", y_train), ("holdout", y_test)):
            if len(np.unique(ys)) < 2:
                raise ValueError(f"churn {part} snapshots hold only one class")
        groups = data.snapshot[~test]
        cv: Any = (
            GroupKFold(n_splits=min(3, len(np.unique(groups))))
            if len(np.unique(groups)) >= 2
            else StratifiedKFold(3, shuffle=True, random_state=self.random_state)
        )
        oof = cross_val_predict(
            self._model(len(y_train)), X_train, y_train, groups=groups, cv=cv,
            method="predict_proba",
        )[:, 1]  # fmt: skip
        self.threshold_ = (
            best_f1_threshold(y_train, oof)
            if self.min_precision is None
            else precision_threshold(y_train, oof, self.min_precision)
        )
        self.model_ = self._model(len(y_train)).fit(X_train, y_train)
        proba = self.model_.predict_proba(X_test)[:, 1]
        alert = proba >= self.threshold_
        tp = int((alert & (y_test == 1)).sum())
        self.report_ = ChurnReport(
            metrics={
                "roc_auc": float(roc_auc_score(y_test, proba)),
                "average_precision": float(average_precision_score(y_test, proba)),
                "brier": float(brier_score_loss(y_test, proba)),
                "threshold": self.threshold_,
                "precision_at_threshold": tp / int(alert.sum()) if alert.any() else 0.0,
                "recall_at_threshold": tp / int((y_test == 1).sum()),
                "alert_share": float(alert.mean()),
                "churn_rate_holdout": float(y_test.mean()),
                "rows_train": len(y_train),
                "rows_holdout": len(y_test),
                "snapshots_train": int(len(times) - len(held)),
                "snapshots_holdout": len(held),
                "calibration": self.model_.method,
            },
            holdout_y=y_test,
            holdout_proba=proba,
        )
        return self
