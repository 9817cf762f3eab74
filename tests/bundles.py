"""Small, complete model bundles for tests (`make_bundle`), without training."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from models import bundle as fmt
from models.bundle import write_bundle
from models.catalog import Catalog, default_catalog

CATALOG = default_catalog()
WIDTH = len(CATALOG.names)


@functools.cache
def _models(seed: int = 0) -> tuple[RandomForestClassifier, CalibratedClassifierCV]:
    # Cached: the classifiers only need to exist; fitting them per test is slow on 2 cores.
    rng = np.random.default_rng(seed)
    x = rng.random((300, WIDTH))
    early = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, (x[:, 0] * 3).astype(int))
    churn = CalibratedClassifierCV(
        HistGradientBoostingClassifier(max_iter=10, random_state=0), method="sigmoid", cv=3
    ).fit(x, (x[:, 1] > 0.5).astype(int))
    return early, churn


def make_bundle(model_dir: Path, catalog: Catalog = CATALOG, second: int = 0) -> Path:
    """A small but complete bundle: 2 columns, 3 segments, both classifiers, a report."""
    used = ["events_7d", "revenue_30d"]
    space = fmt.ScaledSpace(
        index=np.array([catalog.names.index(c) for c in used]),
        log1p=np.array([True, True]),
        mean=np.array([1.0, 2.0]),
        scale=np.array([0.5, 1.5]),
        centroids=np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]),
        segment_ids=(0, 1, 2),
    )
    early, churn = _models(second)
    manifest = {
        "as_of": "2026-04-01T00:00:00Z",
        "training_data": {"fingerprint": f"test-{second}"},
        "catalog": {
            "fingerprint": catalog.fingerprint,
            "names": list(catalog.names),
            "definition": catalog.to_dict(),
        },
        "features": {"used": used, "log1p": used, "dropped_constant": []},
        "k": 3,
        "segments": [
            {"id": i, "name": name, "size": 10, "share": 1 / 3}
            for i, name in enumerate(["Casual", "Power Users", "Big Spenders"])
        ],
        "metrics": {},
        "thresholds": {"churn": 0.4},
    }

    def write(staging: Path, version: str) -> None:
        (staging / fmt.MODEL).write_text(json.dumps(space.to_json(catalog)))
        fmt.dump_skops(early, staging / fmt.EARLY)
        fmt.dump_skops(churn, staging / fmt.CHURN)
        (staging / "report.html").write_text(f"<html>{version}</html>")

    created = datetime(2026, 4, 1, 0, 0, second, tzinfo=UTC)
    return write_bundle(model_dir, manifest, write, created)
