"""The model lifecycle, offline half: stable segment ids across retrainings (lineage),
splits and merges, promotion with quality gates, rollback, and `segstream compare`.

Three bundles are trained once per module on one small history (base, the same data with
another seed, two weeks later); splits and merges are checked on the segmentation and the
matching the trainer runs (`Segmenter` + `match_segments`), without the classifiers.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from models.agreement import agreement
from models.bundle import (
    Bundle,
    BundleError,
    ScaledSpace,
    read_history,
    resolve_current,
)
from models.catalog import default_catalog
from models.events import parse_time
from models.promote import Gates, PromotionRefused, check_gates, live_stack, promote, rollback
from offline.compare import compare, place
from offline.lineage import MatchRules, Previous, match_segments, relabel
from offline.naming import name_segments, profile_segments
from offline.reference import features_at, load_frame
from offline.segmentation import Segmenter, heavy_tailed_columns
from offline.synthetic import PERSONAS, History, generate_history, merge, split, write_history
from offline.train import TrainResult, TrainSettings, train
from segstream.cli import app

pytestmark = pytest.mark.slow

CATALOG = default_catalog()
AS_OF = "2026-04-01T00:00:00Z"  # day 90 of a history from 2026-01-01
LATER = "2026-04-15T00:00:00Z"  # two weeks later, the history's end
NOW = datetime(2026, 4, 1, 6, 0, tzinfo=UTC)
#: Small and quick: k fixed, 2 bootstrap refits, early-life snapshots at two ages.
FAST = TrainSettings(k=5, seed=0, n_bootstrap=2, ages=(7, 21))


@pytest.fixture(scope="module")
def history() -> History:
    return generate_history(400, 104, seed=31, churn_share=0.1, migrate_share=0.05)


@pytest.fixture(scope="module")
def events(history: History, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_history(history, tmp_path_factory.mktemp("lifecycle"))["events"]


@pytest.fixture(scope="module")
def base(events: Path) -> TrainResult:
    """The first bundle, published (no previous one)."""
    out = events.parent / "models"
    return train(events, parse_time(AS_OF), out, CATALOG, FAST, now=NOW)


@pytest.fixture(scope="module")
def reseeded(events: Path, base: TrainResult) -> TrainResult:
    """The same history and as-of, another seed; a candidate (current not moved)."""
    out = base.bundle.path.parent
    return train(
        events, parse_time(AS_OF), out, CATALOG, replace(FAST, seed=1),
        now=NOW.replace(hour=7), previous=out / "current", publish=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def later(events: Path, base: TrainResult) -> TrainResult:
    """Two weeks later, matched to the base bundle; a candidate."""
    out = base.bundle.path.parent
    return train(
        events, parse_time(LATER), out, CATALOG, FAST,
        now=NOW.replace(day=15), previous=base.bundle.path, publish=False,
    )  # fmt: skip


def _features(events: Path, at: str) -> pd.DataFrame:
    return features_at(load_frame(events, CATALOG), CATALOG, parse_time(at))


def _names(bundle: Bundle, ids: np.ndarray) -> np.ndarray:
    return np.array([bundle.segment_names[int(i)] for i in ids])


def test_first_bundle_numbers_segments_and_logs_the_switch(base: TrainResult) -> None:
    manifest = base.bundle.manifest
    assert manifest["lineage"] is None
    assert manifest["segment_ids"] == {"used": [0, 1, 2, 3, 4], "next": 5}
    assert [s["id"] for s in manifest["segments"]] == [0, 1, 2, 3, 4]
    [entry] = read_history(base.bundle.path.parent)
    assert entry["action"] == "train" and entry["version"] == base.bundle.version
    assert entry["replaced"] is None


def test_another_seed_keeps_ids_and_names(
    base: TrainResult, reseeded: TrainResult, events: Path
) -> None:
    lineage = reseeded.bundle.manifest["lineage"]
    assert lineage["previous_version"] == base.bundle.version
    assert {r["status"] for r in lineage["segments"]} == {"kept"}
    assert lineage["retired"] == []
    assert lineage["same_segment_share"] >= 0.95
    assert not reseeded.published
    assert resolve_current(base.bundle.path.parent) == base.bundle.path
    # Independently of the trainer's bookkeeping: both bundles on the same customers.
    x = _features(events, AS_OF).to_numpy(dtype=float)
    old, new = base.bundle.nearest(x), reseeded.bundle.nearest(x)
    assert np.mean(old == new) >= 0.95
    assert np.mean(_names(base.bundle, old) == _names(reseeded.bundle, new)) >= 0.95
    report = (reseeded.bundle.path / "report.html").read_text()
    assert "What changed since the previous model" in report
    assert base.bundle.version in report


def test_two_weeks_later_keeps_ids_for_unchanged_customers(
    base: TrainResult, later: TrainResult, history: History, events: Path
) -> None:
    manifest = later.bundle.manifest
    assert manifest["lineage"]["previous_version"] == base.bundle.version
    assert manifest["as_of"] == LATER
    feats = _features(events, LATER)
    truth = history.truth.set_index("customer_id").reindex(feats.index)
    start = pd.Timestamp(LATER)
    unchanged = (
        truth["churn_day"].isna()
        & truth["migration_day"].isna()
        & (truth["first_day"] <= start - pd.Timedelta(days=60))
    ).to_numpy()
    assert unchanged.sum() >= 150
    x = feats.to_numpy(dtype=float)[unchanged]
    old, new = base.bundle.nearest(x), later.bundle.nearest(x)
    assert np.mean(old == new) >= 0.95, np.mean(old == new)
    assert np.mean(_names(base.bundle, old) == _names(later.bundle, new)) >= 0.95
    # Each persona's segment is the same segment, by id and by name, in both bundles.
    personas = truth["persona"].to_numpy()[unchanged]
    for persona in PERSONAS:
        pick = personas == persona
        before = np.bincount(old[pick]).argmax()
        after = np.bincount(new[pick]).argmax()
        assert before == after, persona
        assert base.bundle.segment_names[before] == later.bundle.segment_names[after]
    ids = manifest["segment_ids"]
    assert set(ids["used"]) >= {s["id"] for s in manifest["segments"]} | {0, 1, 2, 3, 4}


# --- splits and merges, on the trainer's own segmentation and matching -----------------


def _segment(feats: pd.DataFrame, k: int) -> Segmenter:
    columns = heavy_tailed_columns(CATALOG)
    seg = Segmenter(k=k, log_columns=columns, n_bootstrap=0, random_state=0)
    return seg.fit(feats.drop(columns=["tenure_days"]))


def _lineage_between(history: History, folder: Path, k_old: int, k_new: int) -> dict[str, object]:
    """Segment the history at day 60 (before the shift) and at its end, match, and return
    the lineage document the trainer would write."""
    frame = load_frame(write_history(history, folder)["events"], CATALOG)
    old_f = features_at(frame, CATALOG, parse_time("2026-03-01T00:00:00Z"))
    new_f = features_at(frame, CATALOG, parse_time("2026-04-30T23:59:59Z"))
    old, new = _segment(old_f, k_old), _segment(new_f, k_new)
    scaled = old.transform(old_f.drop(columns=["tenure_days"]))
    names = name_segments(profile_segments(old_f, scaled, old.columns_, old.labels_, old.k_))
    space = old.scaled_space(CATALOG)
    previous = Previous("v-old", "2026-03-01", space, names, frozenset(range(k_old)))
    lineage = match_segments(
        new.labels_, new.centroids_, new.scaled_space(CATALOG), previous,
        space.nearest(new_f.to_numpy(dtype=float)),
    )  # fmt: skip
    doc = lineage.document({int(i): f"segment {i}" for i in lineage.ids})
    assert doc is not None
    truth = history.truth.set_index("customer_id").reindex(new_f.index)
    shifted = truth["shift_to"].notna().to_numpy()
    stable, before = relabel(new.labels_, lineage.ids), space.nearest(new_f.to_numpy(dtype=float))
    doc["shifted_ids"] = stable[shifted]
    doc["unshifted_same_id"] = float(np.mean(stable[~shifted] == before[~shifted]))
    doc["renumbered"] = lineage.ids.tolist() != list(range(k_new))
    doc["old_names"] = names
    return doc


def test_a_persona_that_splits_yields_split_records(tmp_path: Path) -> None:
    # Half the power users start buying and reading email from day 60: a new pattern the
    # old model still calls Power Users and the new one (k + 1) separates.
    into = replace(PERSONAS["power_user"], purchases=0.3, email_opens=1.0)
    history = generate_history(
        600, 120, seed=21, churn_share=0.0, migrate_share=0.0,
        shifts=split("power_user", into, "power_buyer", day=60),
    )  # fmt: skip
    doc = _lineage_between(history, tmp_path, 5, 6)
    segments = {r["id"]: r for r in doc["segments"]}  # type: ignore[attr-defined]
    old_names: dict[int, str] = doc["old_names"]  # type: ignore[assignment]
    power = next(i for i, name in old_names.items() if name == "Power Users")
    child = segments[5]  # the first id never used before
    assert child["status"] == "split" and child["previous_id"] is None
    assert [f["id"] for f in child["from"]] == [power]
    assert 0.3 <= child["from"][0]["share_of_previous"] <= 0.7
    assert segments[power]["status"] == "split"  # the larger part keeps the id
    assert all(r["status"] == "kept" for i, r in segments.items() if i not in (power, 5))
    assert doc["retired"] == []
    shifted = doc["shifted_ids"]
    assert np.mean(shifted == 5) >= 0.8  # type: ignore[operator]
    # Everyone else keeps their segment id, although k-means ranked the clusters anew.
    assert doc["unshifted_same_id"] >= 0.95  # type: ignore[operator]
    assert doc["renumbered"]


def test_two_personas_that_become_one_yield_merged(tmp_path: Path) -> None:
    history = generate_history(
        600, 120, seed=21, churn_share=0.0, migrate_share=0.0,
        shifts=merge("casual", "email_reader", day=60),
    )  # fmt: skip
    doc = _lineage_between(history, tmp_path, 5, 4)
    old_names: dict[int, str] = doc["old_names"]  # type: ignore[assignment]
    pair = {i for i, name in old_names.items() if name in ("Casual", "Email Readers")}
    [merged] = [r for r in doc["segments"] if r["status"] == "merged"]  # type: ignore[attr-defined]
    assert {f["id"] for f in merged["from"]} == pair
    assert merged["id"] in pair  # it keeps one of the two ids...
    [retired] = doc["retired"]  # type: ignore[misc]
    assert retired["id"] in pair - {merged["id"]}  # ...and the other is retired
    assert retired["cause"] == "merged" and retired["into"][0]["id"] == merged["id"]
    # The shifted customers land in the merged segment (measured 239 of 240 once recency
    # and lifetime features left the clustering space: one sits on the border).
    shifted = doc["shifted_ids"].tolist()  # type: ignore[attr-defined]
    assert len(shifted) == 240 and shifted.count(merged["id"]) >= 0.98 * 240
    assert doc["unshifted_same_id"] >= 0.95  # type: ignore[operator]


def test_retired_ids_are_never_given_out_again() -> None:
    space = ScaledSpace(
        index=np.array([0]), log1p=np.array([False]), mean=np.array([0.0]),
        scale=np.array([1.0]), centroids=np.array([[0.0], [10.0]]), segment_ids=(0, 1),
    )  # fmt: skip
    # Ids 0..3 were used; 2 and 3 are retired. The new cluster at 20 is new: id 4.
    previous = Previous("v", "", space, {0: "A", 1: "B"}, frozenset({0, 1, 2, 3}))
    labels = np.array([0, 0, 1, 1, 2, 2])
    centroids = np.array([[0.0], [10.0], [20.0]])
    lineage = match_segments(
        labels, centroids, replace(space, centroids=centroids, segment_ids=(0, 1, 2)),
        previous, np.array([0, 0, 1, 1, 1, 1]), reserved={7},
    )  # fmt: skip
    assert lineage.ids.tolist() == [0, 1, 8]
    assert lineage.ids_document() == {"used": [0, 1, 2, 3, 7, 8], "next": 9}
    # With the strictest rule an impure pairing keeps no id: B (paired with cluster 1 by
    # distance, which is half A) is retired and both clusters get new ids.
    strict = match_segments(
        labels, centroids, replace(space, centroids=centroids, segment_ids=(0, 1, 2)),
        previous, np.array([0, 0, 1, 0, 1, 1]), rules=MatchRules(keep_share=1.0),
    )  # fmt: skip
    assert strict.ids.tolist() == [0, 4, 5]
    assert [r["id"] for r in strict.retired] == [1]
    # Lineage turned off (--no-previous) in a folder that used ids 0..3: ids start at 4.
    fresh = match_segments(labels, centroids, space, None, None, reserved={0, 1, 2, 3})
    assert fresh.ids.tolist() == [4, 5, 6] and fresh.document({}) is None


def test_shifts_leave_the_default_history_alone() -> None:
    plain = generate_history(50, 30, seed=4)
    same = generate_history(50, 30, seed=4, shifts=())
    pd.testing.assert_frame_equal(plain.events, same.events)
    assert "shift_day" not in plain.truth
    shifted = generate_history(50, 30, seed=4, shifts=merge("casual", "big_spender", day=10))
    movers = shifted.truth.dropna(subset=["shift_day"])
    assert set(movers["persona"]) == {"casual", "big_spender"}
    assert set(movers["shift_to"]) == {"casual+big_spender"}
    with pytest.raises(ValueError, match="unknown persona"):
        generate_history(10, 10, seed=1, shifts=split("nobody", PERSONAS["casual"], "x", 1))


# --- promotion and rollback ---------------------------------------------------------------


def _model_dir(base: TrainResult, *candidates: TrainResult, tmp_path: Path) -> Path:
    """A private copy of the model folder holding the base bundle (live) and candidates."""
    folder = tmp_path / "models"
    folder.mkdir()
    for result in (base, *candidates):
        shutil.copytree(result.bundle.path, folder / result.bundle.path.name)
    (folder / "current").symlink_to(base.bundle.path.name)
    shutil.copy(base.bundle.path.parent / "history.jsonl", folder / "history.jsonl")
    return folder


def _worse_copy(result: TrainResult, folder: Path) -> Path:
    """A copy of a bundle whose manifest reports a much lower silhouette (the manifest is
    not among the hashed artifacts, so it still verifies)."""
    target = folder / "20260402T000000Z-worse0"
    shutil.copytree(result.bundle.path, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["bundle_version"] = target.name
    manifest["metrics"]["segmentation"]["silhouette"] -= 0.2
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_promote_refuses_a_worse_bundle_then_force_and_rollback(
    base: TrainResult, reseeded: TrainResult, tmp_path: Path
) -> None:
    folder = _model_dir(base, tmp_path=tmp_path)
    worse = _worse_copy(reseeded, folder)
    with pytest.raises(PromotionRefused, match=r"silhouette .* below the live bundle") as refused:
        promote(worse, CATALOG, Gates())
    assert [r.metric for r in refused.value.results if not r.passed] == ["silhouette"]
    assert resolve_current(folder).name == base.bundle.version
    # The CLI says why and exits with 1 (2 is for usage errors).
    result = CliRunner().invoke(app, ["promote", str(worse)])
    assert result.exit_code == 1
    assert "refused" in result.output and "silhouette" in result.output
    # A looser gate, or --force, lets it through; --force is said loudly and logged.
    loose = promote(worse, CATALOG, Gates(max_drop={"silhouette": 0.5}))
    assert loose.changed and not loose.forced
    rollback(folder, CATALOG)
    forced = CliRunner().invoke(app, ["promote", str(worse), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "FORCED" in forced.output
    assert read_history(folder)[-1]["forced"] is True
    assert resolve_current(folder).name == worse.name


def test_promote_a_good_bundle_then_roll_back(
    base: TrainResult, reseeded: TrainResult, later: TrainResult, tmp_path: Path
) -> None:
    folder = _model_dir(base, reseeded, later, tmp_path=tmp_path)
    runner = CliRunner()
    # The later bundle's churn AUC is measured on one small holdout snapshot (400
    # customers): it swings by more than the default 0.02, so this test loosens that gate.
    for result, extra in ((reseeded, []), (later, ["--max-churn-auc-drop", "0.3"])):
        done = runner.invoke(app, ["promote", str(folder / result.bundle.version), *extra])
        assert done.exit_code == 0, done.output
        assert resolve_current(folder).name == result.bundle.version
    again = runner.invoke(app, ["promote", str(folder / later.bundle.version)])
    assert "already live" in again.output
    expected = [base.bundle.version, reseeded.bundle.version, later.bundle.version]
    assert live_stack(read_history(folder)) == expected
    # Each rollback goes one step back, verified; then there is nothing left.
    for back in (reseeded, base):
        done = runner.invoke(app, ["rollback", str(folder)])
        assert done.exit_code == 0, done.output
        assert resolve_current(folder).name == back.bundle.version
    last = runner.invoke(app, ["rollback", str(folder)])
    assert last.exit_code == 2 and "nothing to roll back to" in last.output
    # A rollback target that no longer verifies is refused; current stays.
    runner.invoke(app, ["promote", str(folder / reseeded.bundle.version)])
    (folder / base.bundle.version / "model.json").write_text("{}")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        rollback(folder, CATALOG)
    assert resolve_current(folder).name == reseeded.bundle.version


def test_gates_from_config_and_edge_cases(tmp_path: Path) -> None:
    config = tmp_path / "gates.toml"
    config.write_text("[gates.max_drop]\nsilhouette = 0.1\n[gates.min]\nchurn_auc = 0.8\n")
    gates = Gates.load(config, stability_ari=0.01)
    assert gates.max_drop == {"silhouette": 0.1, "stability_ari": 0.01, "churn_auc": 0.02}
    live = {"metrics": {"segmentation": {"silhouette": 0.4}, "churn": {"roc_auc": 0.9}}}
    no_churn = {"metrics": {"segmentation": {"silhouette": 0.35}, "churn": None}}
    failed = [r for r in check_gates(no_churn, live, gates) if not r.passed]
    assert [r.metric for r in failed] == ["churn_auc"]
    assert "no churn ROC AUC" in failed[0].reason
    first = [r for r in check_gates(no_churn, None, gates) if not r.passed]
    assert [r.metric for r in first] == ["churn_auc"]  # the floor holds with nothing live
    with pytest.raises(ValueError, match="unknown metric"):
        Gates(max_drop={"accuracy": 0.1})


# --- compare ------------------------------------------------------------------------------


def test_compare_a_bundle_with_itself_and_with_a_later_one(
    base: TrainResult, later: TrainResult, events: Path, tmp_path: Path
) -> None:
    frame = load_frame(events, CATALOG)
    itself = compare(base.bundle, base.bundle, frame, CATALOG, parse_time(LATER), LATER)
    a = itself.agreement
    assert a.same_segment == 1.0 and a.churn_correlation == pytest.approx(1.0)
    assert a.live_alerts == a.candidate_alerts == a.both_alerts and a.live_alerts
    assert all(live == cand for live, cand in a.pairs)
    other = compare(base.bundle, later.bundle, frame, CATALOG, parse_time(LATER), LATER)
    b = other.agreement
    assert b.customers == a.customers
    assert 0.8 <= b.same_segment < 1.0
    assert b.churn_rank_correlation is not None and b.churn_rank_correlation > 0.7
    assert b.both_alerts <= min(b.live_alerts, b.candidate_alerts)  # type: ignore[type-var]
    # The CLI prints the tables and writes the page and its JSON twin.
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        app,
        ["compare", "--live", str(base.bundle.path), "--candidate", str(later.bundle.path),
         "--events", str(events), "--as-of", LATER, "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "same segment (by id)" in result.output
    doc = json.loads((out / "compare.json").read_text())
    assert doc["same_segment"] == pytest.approx(b.same_segment)
    assert "Segment pairs" in (out / "compare.html").read_text()


def test_agreement_takes_plain_arrays() -> None:
    a = agreement(np.array([1, 1, 2]), np.array([1, 2, 2]))
    assert a.same_segment == pytest.approx(2 / 3)
    assert a.pairs == {(1, 1): 1, (1, 2): 1, (2, 2): 1}
    assert a.churn_correlation is None and a.live_alerts is None
    empty = agreement(np.array([], dtype=int), np.array([], dtype=int))
    assert empty.customers == 0 and empty.same_segment is None
    with pytest.raises(ValueError, match="alike"):
        agreement(np.array([1]), np.array([1, 2]))


def test_place_uses_the_early_classifier_for_young_customers(base: TrainResult) -> None:
    x = np.zeros((2, len(CATALOG.names)))
    tenure = np.array([3.0, 200.0])
    placed = place(base.bundle, x, tenure, early_days=30.0)
    assert placed[0] == base.bundle.early_segment(x[:1])[0]
    assert placed[1] == base.bundle.nearest(x[1:])[0]


def test_train_cli_refuses_contradictory_previous_options(events: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["train", "--events", str(events), "--as-of", AS_OF, "--out", str(tmp_path),
         "--previous", str(tmp_path), "--no-previous"],
    )  # fmt: skip
    assert result.exit_code == 2 and "contradict" in result.output
