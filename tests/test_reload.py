"""Hot reload: a new verified bundle is picked up once; a bad one is refused, once."""

from __future__ import annotations

import json
import os
from pathlib import Path

from models.bundle import resolve_current
from stream.reload import ModelWatcher
from tests.bundles import CATALOG, make_bundle


def point_current(model_dir: Path, version_dir: Path) -> None:
    tmp = model_dir / ".current-test"
    os.symlink(version_dir.name, tmp, target_is_directory=True)
    os.replace(tmp, model_dir / "current")


def test_new_bundle_is_loaded_once(tmp_path: Path) -> None:
    first = make_bundle(tmp_path, second=1)
    point_current(tmp_path, first)
    watcher = ModelWatcher(tmp_path, CATALOG)
    assert watcher.poll() is None
    second = make_bundle(tmp_path, second=2)
    point_current(tmp_path, second)
    found = watcher.poll()
    assert found is not None and found.error is None and found.bundle is not None
    assert found.bundle.version == second.name
    assert watcher.poll() is None


def test_tampered_bundle_is_refused_and_the_old_one_stays(tmp_path: Path) -> None:
    good = make_bundle(tmp_path, second=1)
    point_current(tmp_path, good)
    watcher = ModelWatcher(tmp_path, CATALOG)
    bad = make_bundle(tmp_path, second=3)
    model = bad / "model.json"
    doc = json.loads(model.read_text())
    doc["centroids"][0][0] += 1.0  # an edit after the hashes were taken
    model.write_text(json.dumps(doc))
    point_current(tmp_path, bad)
    found = watcher.poll()
    assert found is not None and found.bundle is None
    assert found.error is not None and "sha256" in found.error
    assert watcher.poll() is None, "a refusal is reported once, not at every poll"
    assert resolve_current(tmp_path) == bad.resolve()  # the watcher never moves `current`
