"""Segmentation: the preprocessing pipeline, the choice of k, KMeans and its stability.

Owns `heavy_tailed_columns`, the transformers `DropConstant` and `Log1pColumns`, and
`Segmenter`, a scikit-learn style estimator: `fit(features)` learns `pipeline_`
(drop constant -> log1p -> StandardScaler), `k_`, `k_scores_` (inertia and silhouette for
each candidate k), `labels_` (segment ids 0..k-1 ordered by size, descending),
`centroids_` (scaled space, row i is segment i) and `stability_` (mean adjusted Rand index
of bootstrap refits against the main fit). `scaled_space(catalog)` exports what the stream
needs as a `models.bundle.ScaledSpace`.

Must not import `stream/`, matplotlib, or the other trainer steps (churn, early, naming).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from models.bundle import ScaledSpace
from models.catalog import Catalog

#: Aggregations whose values are non-negative and heavy-tailed (counts, sums, recency,
#: ratios); active days and tenure are bounded by their window and stay linear.
LOG_AGGREGATIONS = frozenset({"count", "sum", "distinct", "days_since_last", "ratio"})


def heavy_tailed_columns(catalog: Catalog) -> tuple[str, ...]:
    """Catalog features that get log1p before scaling.

    >>> from models.catalog import default_catalog
    >>> cols = heavy_tailed_columns(default_catalog())
    >>> "revenue_30d" in cols, "tenure_days" in cols, "active_days_7d" in cols
    (True, False, False)
    """
    return tuple(s.name for s in catalog.features if s.aggregation in LOG_AGGREGATIONS)


class DropConstant(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Drop columns with a single value in the training data (they cannot separate anyone).

    >>> DropConstant().fit(pd.DataFrame({"a": [1, 2], "b": [0, 0]})).dropped_
    ['b']
    """

    def fit(self, X: pd.DataFrame, y: Any = None) -> Self:
        values = X.to_numpy(dtype=float)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = len(X.columns)
        spread = np.nanmax(values, axis=0) - np.nanmin(values, axis=0) if len(X) else 0
        self.keep_ = np.asarray(spread > 0, dtype=bool)
        self.dropped_ = [str(c) for c in self.feature_names_in_[~self.keep_]]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return X.loc[:, list(self.feature_names_in_[self.keep_])]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.feature_names_in_[self.keep_], dtype=object)


class Log1pColumns(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """log1p on the named columns that are non-negative in the training data.

    A candidate column with a negative value (a custom feature, say) stays linear and is
    listed in `skipped_`.
    """

    def __init__(self, columns: tuple[str, ...] = ()) -> None:
        self.columns = columns

    def fit(self, X: pd.DataFrame, y: Any = None) -> Self:
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = len(X.columns)
        candidates = [c for c in X.columns if c in set(self.columns)]
        self.columns_ = [str(c) for c in candidates if float(X[c].min()) >= 0]
        self.skipped_ = [str(c) for c in candidates if c not in self.columns_]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        out = X.copy()
        if self.columns_:
            out[self.columns_] = np.log1p(out[self.columns_].clip(lower=0.0))
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return self.feature_names_in_


def preprocessing(log_columns: tuple[str, ...]) -> Pipeline:
    """The unfitted preprocessing pipeline (pandas in, pandas out)."""
    pipe = Pipeline(
        [
            ("constant", DropConstant()),
            ("log", Log1pColumns(columns=log_columns)),
            ("scale", StandardScaler()),
        ]
    )
    pipe.set_output(transform="pandas")
    return pipe


@dataclass(frozen=True)
class KScore:
    """How one candidate k did."""

    k: int
    inertia: float
    silhouette: float


class Segmenter(BaseEstimator):  # type: ignore[misc]
    """KMeans segmentation with k chosen by silhouette, ids ordered by segment size.

    `k` is "auto" (best silhouette in `k_range`) or a number. Silhouette is computed on at
    most `sample_size` rows. `n_bootstrap` resamples measure stability.
    """

    def __init__(
        self,
        k: int | str = "auto",
        k_range: tuple[int, int] = (3, 8),
        log_columns: tuple[str, ...] = (),
        n_init: int = 10,
        sample_size: int = 5000,
        n_bootstrap: int = 5,
        random_state: int = 0,
    ) -> None:
        self.k = k
        self.k_range = k_range
        self.log_columns = log_columns
        self.n_init = n_init
        self.sample_size = sample_size
        self.n_bootstrap = n_bootstrap
        self.random_state = random_state

    def _kmeans(self, k: int, seed: int) -> KMeans:
        return KMeans(n_clusters=k, n_init=self.n_init, random_state=seed)

    def fit(self, X: pd.DataFrame, y: Any = None, progress: Any = None) -> Self:
        """Learn the segments of the customers in `X` (one row each, catalog columns).

        `progress`, when given, is called with no argument after each KMeans fit.
        """
        tick = progress if progress is not None else (lambda: None)
        self.pipeline_ = preprocessing(self.log_columns).fit(X)
        z = self.pipeline_.transform(X).to_numpy(dtype=float)
        self.columns_ = [str(c) for c in self.pipeline_.get_feature_names_out()]
        self.dropped_ = list(self.pipeline_.named_steps["constant"].dropped_)
        n = len(z)
        lo, hi = self.k_range
        auto = self.k == "auto"
        candidates = [k for k in range(lo, hi + 1) if k < n] if auto else [int(self.k)]
        if not candidates or candidates[0] >= n:
            raise ValueError(f"{n} customers are too few to form {lo} or more segments")
        rng = np.random.default_rng(self.random_state)
        sample = rng.choice(n, size=min(n, self.sample_size), replace=False)
        fits: dict[int, KMeans] = {}
        scores: list[KScore] = []
        for k in candidates:
            km = self._kmeans(k, self.random_state).fit(z)
            fits[k] = km
            labels = km.labels_[sample]
            sil = (
                float(silhouette_score(z[sample], labels, random_state=self.random_state))
                if len(np.unique(labels)) > 1
                else float("nan")
            )
            scores.append(KScore(k=k, inertia=float(km.inertia_), silhouette=sil))
            tick()
        self.k_scores_ = scores
        best = max(scores, key=lambda s: (np.nan_to_num(s.silhouette, nan=-1.0), -s.k))
        self.k_ = best.k
        self.silhouette_ = best.silhouette
        main = fits[self.k_]
        # Segment ids by size (descending), ties by centroid, so reruns agree on ids.
        sizes = np.bincount(main.labels_, minlength=self.k_)
        order = sorted(range(self.k_), key=lambda c: (-sizes[c], tuple(main.cluster_centers_[c])))
        remap = np.empty(self.k_, dtype=np.int64)
        remap[order] = np.arange(self.k_)
        self.labels_ = remap[main.labels_]
        self.centroids_ = main.cluster_centers_[order]
        self.inertia_ = float(main.inertia_)
        self.stability_scores_ = []
        for b in range(self.n_bootstrap):
            rows = rng.integers(0, n, size=n)
            refit = self._kmeans(self.k_, self.random_state + 1 + b).fit(z[rows])
            self.stability_scores_.append(
                float(adjusted_rand_score(self.labels_, refit.predict(z)))
            )
            tick()
        self.stability_ = float(np.mean(self.stability_scores_)) if self.n_bootstrap else None
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Points in the scaled space."""
        return np.asarray(self.pipeline_.transform(X).to_numpy(dtype=float))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Segment id of the nearest centroid."""
        z = self.transform(X)
        dist = ((z[:, None, :] - self.centroids_[None, :, :]) ** 2).sum(axis=2)
        labels: np.ndarray = np.argmin(dist, axis=1)
        return labels

    def scaled_space(self, catalog: Catalog) -> ScaledSpace:
        """The learned transform and centroids as plain arrays, for `model.json`."""
        scaler: StandardScaler = self.pipeline_.named_steps["scale"]
        log_cols = set(self.pipeline_.named_steps["log"].columns_)
        return ScaledSpace(
            index=np.array([catalog.names.index(c) for c in self.columns_], dtype=np.int64),
            log1p=np.array([c in log_cols for c in self.columns_], dtype=bool),
            mean=np.asarray(scaler.mean_, dtype=float),
            scale=np.asarray(scaler.scale_, dtype=float),
            centroids=np.asarray(self.centroids_, dtype=float),
            segment_ids=tuple(range(self.k_)),
        )
