"""The churn model's held-out judgement is about customers it never trained on: a model
that memorises customers across the weekly snapshots must not look good."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from offline.baselines import MIN_THRESHOLD_PRECISION, churn_warnings
from offline.churn import ChurnData, ChurnTrainer, customer_part


def _memorisable(customers: int = 200, snapshots: int = 5) -> ChurnData:
    """Every customer has a fixed fate and a fixed, meaningless fingerprint (feature 0),
    present in every snapshot: only memorising customers "predicts" churn."""
    rng = np.random.default_rng(3)
    fate = rng.integers(0, 2, customers)
    fingerprint = rng.random(customers)
    ids = [f"c{i}" for i in range(customers)]
    rows = []
    for _ in range(snapshots):
        noise = rng.random(customers)
        rows.append(pd.DataFrame({"fingerprint": fingerprint, "noise": noise}, index=ids))
    return _weekly(rows, fate, rng)


def _weekly(rows: list[pd.DataFrame], fate: np.ndarray, rng: np.random.Generator) -> ChurnData:
    """Weekly snapshots of the same customers (`rows`, one frame a week), each customer
    labelled with its `fate` in every one, with a random recency."""
    X = pd.concat(rows)
    recency = rng.random(len(X)) * 60
    return ChurnData(
        X=X,
        y=np.tile(fate, len(rows)),
        snapshot=np.repeat(np.arange(len(rows), dtype=float) * 7 * 86_400, len(fate)),
        rfm=pd.DataFrame(
            {"recency_days": recency, "frequency": 1.0, "monetary": 0.0, "silent_days": recency},
            index=X.index,
        ),
        active=np.ones(len(X), dtype=bool),
    )


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Boosters this small spend their time starting OpenMP threads on a shared machine."""
    with threadpool_limits(limits=1):
        yield


def test_held_out_customers_were_never_trained_on() -> None:
    data = _memorisable()
    trainer = ChurnTrainer(families=("boosted",), max_iter=20).fit(data)
    metrics = trainer.report_.metrics
    # Judged on customers it had seen, the booster would score near 1 here.
    assert metrics["roc_auc"] < 0.65, metrics
    held = customer_part(data.X.index[data.snapshot == data.snapshot.max()])
    assert metrics["rows_holdout"] == int((held < 2).sum())
    assert metrics["model"] == "boosted"


def test_the_family_is_chosen_on_a_validation_snapshot() -> None:
    data = _memorisable()
    trainer = ChurnTrainer(max_iter=20).fit(data)
    assert set(trainer.validation_) == {"additive", "boosted"}
    assert trainer.family_ == max(trainer.validation_, key=trainer.validation_.__getitem__)
    assert trainer.report_.metrics["validation_roc_auc"] == trainer.validation_


def _fated(share: float, informative: bool, customers: int = 300) -> ChurnData:
    """Customers churn with probability `share`; feature 0 is their fate plus noise when
    `informative`, else noise alone."""
    rng = np.random.default_rng(5)
    fate = (rng.random(customers) < share).astype(int)
    ids = [f"c{i}" for i in range(customers)]
    rows = []
    for _ in range(5):
        signal = fate * 3.0 if informative else np.zeros(customers)
        rows.append(pd.DataFrame({"signal": signal + rng.random(customers)}, index=ids))
    return _weekly(rows, fate, rng)


def test_a_threshold_that_is_rarely_right_is_said_loudly() -> None:
    """A model that cannot tell churners apart (10 % churn, a meaningless feature) still
    gets a threshold, but its out-of-fold precision there is low and the trainer warns
    that its churn alerts will mostly be wrong; a model that can tell them apart does not
    get the warning."""
    blind = ChurnTrainer(families=("additive",)).fit(_fated(0.1, informative=False))
    metrics = blind.report_.metrics
    assert metrics["threshold_precision_oof"] < MIN_THRESHOLD_PRECISION
    assert 0.0 < metrics["threshold_recall_oof"] <= 1.0
    assert any("churn alerts will mostly be wrong" in w for w in churn_warnings(metrics))
    seeing = ChurnTrainer(families=("additive",)).fit(_fated(0.1, informative=True))
    assert seeing.report_.metrics["threshold_precision_oof"] >= 0.98
    assert not any("mostly be wrong" in w for w in churn_warnings(seeing.report_.metrics))
