"""The bundle format: round trip, and every way a bundle must be refused."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from models import bundle as fmt
from models.bundle import BundleError, load_bundle, publish, resolve_current, write_bundle
from models.catalog import catalog_from_config
from tests.bundles import CATALOG, WIDTH, make_bundle


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "models")


def test_round_trip(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir, CATALOG)
    assert bundle.version == bundle_dir.name
    assert bundle.version.startswith("20260401T000000Z-")
    assert bundle.segment_ids == [0, 1, 2]
    assert bundle.segment_names == {0: "Casual", 1: "Power Users", 2: "Big Spenders"}
    assert bundle.churn_threshold == 0.4
    x = np.zeros((4, WIDTH))
    x[1, CATALOG.names.index("events_7d")] = np.expm1(1.0 + 0.5 * 2.0)
    x[2, CATALOG.names.index("revenue_30d")] = np.expm1(2.0 + 1.5 * 2.0)
    z = bundle.scale(x)
    assert z.shape == (4, 2)
    np.testing.assert_allclose(z[1], [2.0, -2.0 / 1.5])
    assert bundle.centroids.shape == (3, 2)
    assert bundle.nearest(x)[1:3].tolist() == [1, 2]
    assert bundle.early_segment(x).shape == (4,)
    p = bundle.churn_probability(np.random.default_rng(1).random((5, WIDTH)))
    assert p.shape == (5,) and np.all((p >= 0) & (p <= 1))
    with pytest.raises(BundleError, match="catalog feature matrix"):
        bundle.nearest(np.zeros((2, 3)))


def test_a_manifest_without_the_newer_sections_loads(bundle_dir: Path) -> None:
    """Bundles written before segment ids, lineage, settings and notes were recorded still
    load; the typed view says which sections they lack."""
    info = load_bundle(bundle_dir, CATALOG).info
    assert info.segment_ids is None and info.lineage is None and info.settings is None
    assert info.notes == ()
    assert info.training_data is not None and info.training_data.fingerprint == "test-0"
    assert [(s.id, s.name, s.size) for s in info.segments] == [
        (0, "Casual", 10), (1, "Power Users", 10), (2, "Big Spenders", 10),
    ]  # fmt: skip
    assert info.churn_threshold == 0.4
    assert set(info.artifacts) == {fmt.MODEL, fmt.EARLY, fmt.CHURN, "report.html"}


def test_a_malformed_manifest_section_is_refused(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / fmt.MANIFEST).read_text())
    manifest["segments"][0]["id"] = "zero"
    (bundle_dir / fmt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest\.json: malformed"):
        load_bundle(bundle_dir, CATALOG)


def test_tampered_artifact_is_refused(bundle_dir: Path) -> None:
    doc = json.loads((bundle_dir / fmt.MODEL).read_text())
    doc["centroids"][0][0] = 9.0
    (bundle_dir / fmt.MODEL).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"model\.json: sha256 mismatch"):
        load_bundle(bundle_dir, CATALOG)


def test_tampered_classifier_is_refused(bundle_dir: Path) -> None:
    with (bundle_dir / fmt.CHURN).open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"churn\.skops: sha256 mismatch"):
        load_bundle(bundle_dir, CATALOG)


@pytest.mark.parametrize("name", ["model.pkl", "extra.json"])
def test_planted_pickle_is_refused(bundle_dir: Path, name: str) -> None:
    # The second case hides the pickle behind an innocent name; its content gives it away.
    (bundle_dir / name).write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(BundleError, match="pickle files are refused"):
        load_bundle(bundle_dir, CATALOG)


def test_unlisted_artifact_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "notes.png").write_bytes(b"\x89PNG")
    with pytest.raises(BundleError, match="unexpected artifact"):
        load_bundle(bundle_dir, CATALOG)


def test_missing_artifact_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / fmt.EARLY).unlink()
    with pytest.raises(BundleError, match=r"listed in manifest\.json but missing"):
        load_bundle(bundle_dir, CATALOG)


def test_truncated_manifest_is_refused(bundle_dir: Path) -> None:
    text = (bundle_dir / fmt.MANIFEST).read_text()
    (bundle_dir / fmt.MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(BundleError, match="not valid JSON, truncated or corrupt"):
        load_bundle(bundle_dir, CATALOG)


def test_other_catalog_is_refused(bundle_dir: Path) -> None:
    other = catalog_from_config(
        {
            "features": [
                {"name": "exports_30d", "aggregation": "count", "window_days": 30,
                 "filter": {"types": ["feature_used"], "where": {"feature": "export"}}}
            ]
        }
    )  # fmt: skip
    with pytest.raises(BundleError, match=r"another feature catalog.*exports_30d"):
        load_bundle(bundle_dir, other)


def test_untrusted_type_in_classifier_is_refused(bundle_dir: Path) -> None:
    # A valid skops file with a matching hash, but it would call json.dumps on load/predict.
    evil = make_pipeline(FunctionTransformer(json.dumps))
    sio.dump(evil, bundle_dir / fmt.CHURN)
    manifest = json.loads((bundle_dir / fmt.MANIFEST).read_text())
    manifest["artifacts"][fmt.CHURN] = fmt.sha256_file(bundle_dir / fmt.CHURN)
    (bundle_dir / fmt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="untrusted type"):
        load_bundle(bundle_dir, CATALOG)


def test_current_moves_only_after_verification(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    with pytest.raises(BundleError, match="no current bundle"):
        resolve_current(model_dir)
    first = make_bundle(model_dir, second=1)
    publish(model_dir, first, CATALOG)
    assert resolve_current(model_dir) == first.resolve()
    assert (model_dir / "current").is_symlink()
    assert load_bundle(model_dir / "current", CATALOG).version == first.name

    second = make_bundle(model_dir, second=2)
    assert second.name > first.name  # versions sort by creation time
    (second / fmt.MODEL).write_text("{}")  # broken after writing: must not be published
    with pytest.raises(BundleError):
        publish(model_dir, second, CATALOG)
    assert resolve_current(model_dir) == first.resolve()
    assert not any(p.name.startswith(".current") for p in model_dir.iterdir())


def test_no_staging_left_behind_on_failure(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"

    def fail(staging: Path, version: str) -> None:
        (staging / fmt.MODEL).write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_bundle(model_dir, {"k": 1}, fail, datetime(2026, 4, 1, tzinfo=UTC))
    assert list(model_dir.iterdir()) == []
