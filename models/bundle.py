"""The model bundle: its on-disk format, writing, loading, verification and publishing.

A bundle is one directory `DIR/<version>/` (version: UTC creation time plus a short hash,
e.g. `20260401T093000Z-3f9a1c`, so versions sort by age) holding:

- `manifest.json`: format and bundle version, as-of time, training-data fingerprint,
  the feature catalog (definition and fingerprint), the feature columns used, the
  segments with their profiles, metrics, thresholds and the sha256 of every other file
  (typed as `Manifest`);
- `model.json`: the segmentation as plain numbers (which columns, which get log1p,
  scaler means and scales, centroids), so the stream assigns without scikit-learn;
- `early.skops`, `churn.skops`: the classifiers, loaded with an explicit list of
  trusted types (never `trusted=True`);
- `report.html` and its `*.png` figures.

`DIR/current` is a symlink to the live bundle; it is swapped atomically, and every swap
appends one line to `DIR/history.jsonl` (what went live, what it replaced, why), which
`models.promote` reads to roll back. Anything else in a bundle (a pickle, a stray file, a
wrong hash) makes it refused.

The stream worker imports this module: it must not import pandas, matplotlib,
`offline/` or `stream/` (skops is imported lazily, only to load or save classifiers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np

from models.catalog import Catalog

FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
MODEL: Final = "model.json"
EARLY: Final = "early.skops"
CHURN: Final = "churn.skops"
CURRENT: Final = "current"
HISTORY: Final = "history.jsonl"
#: File kinds a bundle may hold besides the manifest; anything else is refused.
ALLOWED_SUFFIXES: Final = frozenset({".json", ".skops", ".html", ".png"})
PICKLE_SUFFIXES: Final = frozenset({".pkl", ".pickle", ".joblib", ".pck", ".dill"})
#: Types outside skops' default trust that the trainer's classifiers are made of. Loading
#: refuses a classifier that needs any other type, so a crafted file cannot run code.
TRUSTED_TYPES: Final = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    # The additive churn model's SplineTransformer keeps one scipy BSpline per feature
    # (knots and coefficients, data only) and scipy's asarray alias.
    "scipy.interpolate._bsplines.BSpline",
    "scipy._lib.array_api_compat.numpy._aliases.asarray",
)
_REQUIRED_KEYS: Final = (
    "format_version",
    "bundle_version",
    "created_at",
    "as_of",
    "catalog",
    "features",
    "k",
    "segments",
    "metrics",
    "thresholds",
    "artifacts",
)


class BundleError(ValueError):
    """A bundle that cannot be used: the message says which file and why."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ScaledSpace:
    """The segmentation's input transform and centroids, as plain arrays.

    `index` picks the used columns from a full catalog row; columns with `log1p` True
    are log-transformed (after clipping at 0); then `(x - mean) / scale`.

    >>> space = ScaledSpace(index=np.array([1]), log1p=np.array([True]),
    ...                     mean=np.array([0.0]), scale=np.array([1.0]),
    ...                     centroids=np.array([[0.0], [2.0]]), segment_ids=(0, 1))
    >>> space.nearest(np.array([[5.0, 0.0], [5.0, 9.0]])).tolist()
    [0, 1]
    """

    index: np.ndarray
    log1p: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray
    segment_ids: tuple[int, ...]

    def scale_rows(self, features: np.ndarray) -> np.ndarray:
        """(n, n_catalog) raw features -> (n, d) points in the scaled space."""
        x = np.asarray(features, dtype=float)[:, self.index]
        x = np.where(self.log1p, np.log1p(np.maximum(x, 0.0)), x)
        scaled: np.ndarray = (x - self.mean) / self.scale
        return scaled

    def typical_row(self, width: int) -> np.ndarray:
        """A catalog row (`width` wide) of typical values: the space's centre, transformed
        back; NaN for the columns the space does not use. Churn drivers compare with it."""
        typical = np.full(width, np.nan)
        typical[self.index] = np.where(self.log1p, np.expm1(self.mean), self.mean)
        return typical

    def nearest(self, features: np.ndarray) -> np.ndarray:
        """Segment id of the nearest centroid for each row of raw features."""
        z = self.scale_rows(features)
        dist = ((z[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        ids: np.ndarray = np.asarray(self.segment_ids, dtype=np.int64)[np.argmin(dist, axis=1)]
        return ids

    def to_json(self, catalog: Catalog) -> dict[str, Any]:
        """The `model.json` document (column names rather than positions)."""
        columns = [catalog.names[i] for i in self.index]
        return {
            "columns": columns,
            "log1p": [c for c, flag in zip(columns, self.log1p, strict=True) if flag],
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "segment_ids": list(self.segment_ids),
            "centroids": [[float(v) for v in row] for row in self.centroids],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], catalog: Catalog) -> ScaledSpace:
        """Parse and check `model.json` against the catalog; BundleError when inconsistent."""
        try:
            columns = [str(c) for c in doc["columns"]]
            log_cols = {str(c) for c in doc["log1p"]}
            mean = np.asarray(doc["mean"], dtype=float)
            scale = np.asarray(doc["scale"], dtype=float)
            centroids = np.asarray(doc["centroids"], dtype=float)
            ids = tuple(int(i) for i in doc["segment_ids"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{MODEL}: malformed ({exc})") from None
        unknown = [c for c in columns if c not in catalog.names]
        if unknown:
            raise BundleError(f"{MODEL}: columns not in the catalog: {', '.join(unknown)}")
        d = len(columns)
        if mean.shape != (d,) or scale.shape != (d,) or centroids.shape != (len(ids), d):
            raise BundleError(f"{MODEL}: shapes of mean/scale/centroids do not match columns")
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise BundleError(f"{MODEL}: scales must be finite and > 0")
        return cls(
            index=np.array([catalog.names.index(c) for c in columns], dtype=np.int64),
            log1p=np.array([c in log_cols for c in columns], dtype=bool),
            mean=mean,
            scale=scale,
            centroids=centroids,
            segment_ids=ids,
        )


@dataclass(frozen=True, kw_only=True)
class TrainingData:
    """Which events the bundle learned from (`manifest["training_data"]`)."""

    fingerprint: str = ""
    fingerprint_of: str = "sha256 of the sorted distinct event ids"
    source: str = ""
    events: int = 0
    events_until_as_of: int = 0
    #: Events that broke the contract, by reason.
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CatalogRecord:
    """The feature catalog the bundle was trained with (`manifest["catalog"]`)."""

    fingerprint: str
    names: tuple[str, ...]
    definition: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FeatureColumns:
    """Catalog features the segmentation used (`manifest["features"]`)."""

    used: tuple[str, ...]
    log1p: tuple[str, ...] = ()
    dropped_constant: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SegmentOutcomes:
    """What a segment's customers did after as-of."""

    retention: float
    revenue_per_customer: float


@dataclass(frozen=True, kw_only=True)
class SegmentRecord:
    """One segment of `manifest["segments"]`: id, name and profile."""

    id: int
    name: str
    size: int = 0
    share: float = 0.0
    #: {"feature", "z", "mean", "median", "pop_mean", "pop_median"}, largest |z| first.
    top_features: tuple[dict[str, Any], ...] = ()
    #: Absent (not written) when outcome validation was skipped.
    outcomes: SegmentOutcomes | None = None
    #: Why the segment has its name: the naming rule and its numbers ("" in older bundles).
    name_reason: str = ""
    #: The members' mean of every feature the segmentation uses (raw units; empty in older
    #: bundles): the migration evidence reads each segment's daily rates from these
    #: (`stream.detect.rate_profiles`), not from the centroid (a mean of logs).
    means: dict[str, float] = field(default_factory=dict)
    #: Per summed property feature (`revenue_30d`...), the members' median value per
    #: event (empty in older bundles): the evidence's typical purchase amount.
    typical: dict[str, float] = field(default_factory=dict)
    #: Per identity the catalog counts distinct values of (`"feature_used.feature"`), each
    #: value's share of the members' distinct (day, value) pairs over the profile window
    #: (the most used values only; empty in older bundles): the evidence reads which
    #: features a customer uses, not only how many (`stream.detect.ShareProfile`).
    shares: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Its members are the silent ones (the naming rule's Lapsing: median days since the
    #: last event at least 30), whatever the segment is called. A customer who leaves it
    #: is coming back, not changing behaviour: no migration alert (`stream.decide`).
    lapsing: bool = False


@dataclass(frozen=True, kw_only=True)
class SegmentIds:
    """`manifest["segment_ids"]`: every id ever used (retired ones too) and the next free one."""

    used: tuple[int, ...]
    next: int


@dataclass(frozen=True, kw_only=True)
class TrainedWith:
    """The trainer settings that made the bundle (`manifest["settings"]`)."""

    k: int | str
    churn_horizon_days: int
    qualifying_types: tuple[str, ...]
    early_ages_days: tuple[int, ...]
    exclude: tuple[str, ...]
    seed: int
    #: Customers clustered: those with an event in this many days before as-of (None in
    #: bundles from before the setting: every customer).
    active_days: int | None = None
    #: Catalog features the churn model used (empty: all of them).
    churn_features: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """`manifest.json`, typed.

    The trainer fills everything but the header (`format_version`, `bundle_version`,
    `created_at`) and `artifacts`, which `write_bundle` adds. `metrics` and `lineage` stay
    JSON documents: their shape belongs to the trainer steps that compute them
    (`offline.*`, `offline.lineage`) and `models.promote` reads metrics by path. Sections
    that older bundles lack are None (or empty); `to_dict` gives the JSON document with the
    keys in the order the file has always had them.

    >>> m = Manifest(as_of="2026-04-01T00:00:00Z", k=1,
    ...              catalog=CatalogRecord(fingerprint="f", names=("events_7d",)),
    ...              features=FeatureColumns(used=("events_7d",)),
    ...              segments=(SegmentRecord(id=0, name="Casual"),))
    >>> Manifest.from_dict(m.to_dict()) == m
    True
    >>> list(m.body())[:3]
    ['as_of', 'training_data', 'catalog']
    """

    format_version: int = FORMAT_VERSION
    bundle_version: str = ""
    created_at: str = ""
    as_of: str
    training_data: TrainingData | None = None
    catalog: CatalogRecord
    features: FeatureColumns
    k: int
    segments: tuple[SegmentRecord, ...]
    segment_ids: SegmentIds | None = None
    lineage: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Alert thresholds by kind; `churn` is None without a churn model.
    thresholds: dict[str, float | None] = field(default_factory=dict)
    settings: TrainedWith | None = None
    notes: tuple[str, ...] = ()
    #: What the trainer found wrong with its own models (a model that does not beat its
    #: baselines, a threshold that alerts on no one): shown in red, never silently.
    warnings: tuple[str, ...] = ()
    #: File name -> sha256 of every other file in the bundle.
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (sections that are None are written as null, segment
        outcomes that are None are left out)."""
        doc = asdict(self)
        for segment in doc["segments"]:
            if segment["outcomes"] is None:
                del segment["outcomes"]
        # Lists, not tuples: the document equals its own JSON round trip.
        loaded: dict[str, Any] = json.loads(json.dumps(doc))
        return loaded

    def body(self) -> dict[str, Any]:
        """What the trainer decided: the document without header and artifacts (the
        bundle version's hash is taken from it)."""
        doc = self.to_dict()
        for key in _HEADER_KEYS:
            del doc[key]
        return doc

    @property
    def churn_threshold(self) -> float | None:
        return self.thresholds.get("churn")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Manifest:
        """Parse a manifest document (BundleError when a section has the wrong shape)."""
        try:
            return cls(
                format_version=int(doc.get("format_version", FORMAT_VERSION)),
                bundle_version=str(doc.get("bundle_version", "")),
                created_at=str(doc.get("created_at", "")),
                as_of=str(doc["as_of"]),
                training_data=_section(TrainingData, doc.get("training_data")),
                catalog=CatalogRecord(
                    fingerprint=str(doc["catalog"].get("fingerprint", "")),
                    names=tuple(str(n) for n in doc["catalog"].get("names", [])),
                    definition=dict(doc["catalog"].get("definition", {})),
                ),
                features=FeatureColumns(
                    used=tuple(doc["features"]["used"]),
                    log1p=tuple(doc["features"].get("log1p", [])),
                    dropped_constant=tuple(doc["features"].get("dropped_constant", [])),
                ),
                k=int(doc["k"]),
                segments=tuple(_segment(s) for s in doc["segments"]),
                segment_ids=_segment_ids(doc.get("segment_ids")),
                lineage=doc.get("lineage"),
                metrics=dict(doc.get("metrics") or {}),
                thresholds=dict(doc.get("thresholds") or {}),
                settings=_section(TrainedWith, doc.get("settings")),
                notes=tuple(str(n) for n in doc.get("notes", [])),
                warnings=tuple(str(w) for w in doc.get("warnings", [])),
                artifacts={str(k): str(v) for k, v in doc.get("artifacts", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{MANIFEST}: malformed ({type(exc).__name__}: {exc})") from None


_HEADER_KEYS: Final = ("format_version", "bundle_version", "created_at", "artifacts")

_Section = TypeVar("_Section", TrainingData, TrainedWith)


def _section(cls: type[_Section], doc: Mapping[str, Any] | None) -> _Section | None:
    if doc is None:
        return None
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in doc.items()
        if key in known
    }
    return cls(**values)


def _segment(doc: Mapping[str, Any]) -> SegmentRecord:
    outcomes = doc.get("outcomes")
    return SegmentRecord(
        id=int(doc["id"]),
        name=str(doc["name"]),
        size=int(doc.get("size", 0)),
        share=float(doc.get("share", 0.0)),
        top_features=tuple(dict(t) for t in doc.get("top_features", [])),
        outcomes=None if outcomes is None else SegmentOutcomes(**outcomes),
        name_reason=str(doc.get("name_reason", "")),
        means={str(k): float(v) for k, v in (doc.get("means") or {}).items()},
        typical={str(k): float(v) for k, v in (doc.get("typical") or {}).items()},
        shares={
            str(k): {str(v): float(p) for v, p in (got or {}).items()}
            for k, got in (doc.get("shares") or {}).items()
        },
        lapsing=bool(doc.get("lapsing", False)),
    )


def _segment_ids(doc: Mapping[str, Any] | None) -> SegmentIds | None:
    if doc is None:
        return None
    return SegmentIds(used=tuple(int(i) for i in doc["used"]), next=int(doc["next"]))


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, ready to assign customers.

    `manifest` is `manifest.json` as read (a dict, every key kept, for callers that index
    it); `info` is the same document typed (`Manifest`). Every method takes the full
    catalog feature matrix, columns in `catalog.names` order.
    """

    path: Path
    version: str
    manifest: dict[str, Any]
    segment_ids: list[int]
    segment_names: dict[int, str]
    churn_threshold: float
    space: ScaledSpace = field(repr=False)
    info: Manifest = field(repr=False)
    early_model: Any = field(default=None, repr=False)
    churn_model: Any = field(default=None, repr=False)

    def scale(self, features: np.ndarray) -> np.ndarray:
        """(n, n_catalog_features) raw catalog order -> (n, d) scaled space."""
        return self.space.scale_rows(self._check(features))

    def nearest(self, features: np.ndarray) -> np.ndarray:
        """Segment id per row: the nearest centroid in the scaled space."""
        return self.space.nearest(self._check(features))

    @property
    def lapsing_segments(self) -> frozenset[int]:
        """Ids of the segments of silent customers (`SegmentRecord.lapsing`)."""
        return frozenset(s.id for s in self.info.segments if s.lapsing)

    @property
    def centroids(self) -> np.ndarray:
        """(k, d) centroids, rows in `segment_ids` order."""
        return self.space.centroids

    def early_segment(self, features: np.ndarray) -> np.ndarray:
        """Segment id per row from the early-life classifier (for customers < 30 days old)."""
        if self.early_model is None:
            raise BundleError(f"{self.version}: this bundle has no early-life classifier")
        x = self._check(features)
        trees = getattr(self.early_model, "estimators_", None)
        if trees is None:
            return np.asarray(self.early_model.predict(x), dtype=np.int64)
        # A forest: sum the trees' probabilities directly. sklearn's own `predict` runs
        # each tree through joblib and input validation, several times slower on a stream
        # batch (benchmarks/NOTES.md); same votes, same ties.
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        votes = sum(tree.predict_proba(x32, check_input=False) for tree in trees)
        classes = np.asarray(self.early_model.classes_, dtype=np.int64)
        placed: np.ndarray = classes[np.argmax(votes, axis=1)]
        return placed

    def churn_probability(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probability of churn within the bundle's horizon, per row."""
        if self.churn_model is None:
            raise BundleError(f"{self.version}: this bundle has no churn model")
        proba = self.churn_model.predict_proba(self._check(features))
        return np.asarray(proba[:, list(self.churn_model.classes_).index(1)], dtype=float)

    def _check(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=float)
        width = len(self.info.catalog.names)
        if x.ndim != 2 or x.shape[1] != width:
            raise BundleError(f"expected an (n, {width}) catalog feature matrix, got {x.shape}")
        return x


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; not a bundle (or not complete)")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{file}: not valid JSON, truncated or corrupt ({exc})") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{file}: must be a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in doc]
    if missing:
        raise BundleError(f"{file}: missing key(s) {', '.join(missing)}")
    if doc["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{file}: format version {doc['format_version']!r}, this code reads {FORMAT_VERSION}"
        )
    return doc


def _check_catalog(manifest: Mapping[str, Any], catalog: Catalog, path: Path) -> None:
    recorded = manifest["catalog"]
    if recorded.get("fingerprint") == catalog.fingerprint:
        return
    theirs = [str(n) for n in recorded.get("names", [])]
    added = [n for n in catalog.names if n not in theirs]
    removed = [n for n in theirs if n not in catalog.names]
    detail = []
    if added:
        detail.append(f"only in the running catalog: {', '.join(added)}")
    if removed:
        detail.append(f"only in the bundle: {', '.join(removed)}")
    raise BundleError(
        f"{path}: trained on another feature catalog (fingerprint "
        f"{str(recorded.get('fingerprint'))[:12]}, running catalog {catalog.fingerprint[:12]}"
        f"{'; ' + '; '.join(detail) if detail else '; same names, different definitions'}); "
        "retrain the bundle or run with the catalog it was trained on"
    )


def _check_files(path: Path, artifacts: Mapping[str, str]) -> None:
    present = sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
    for file in present:
        rel = file.relative_to(path).as_posix()
        head = file.read_bytes()[:2] if file.is_file() else b""
        # Protocol 2+ pickles start with 0x80 and a protocol number; refuse them by content
        # too, so renaming a pickle does not smuggle it in.
        if file.suffix.lower() in PICKLE_SUFFIXES or (
            len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
        ):
            raise BundleError(f"{file}: pickle files are refused (bundles use JSON and skops)")
        if rel == MANIFEST:
            continue
        if rel not in artifacts or file.suffix.lower() not in ALLOWED_SUFFIXES:
            raise BundleError(f"{file}: unexpected artifact, not listed in {MANIFEST}")
    for name, digest in artifacts.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: listed in {MANIFEST} but missing")
        actual = sha256_file(file)
        if actual != digest:
            raise BundleError(
                f"{file}: sha256 mismatch (manifest {str(digest)[:12]}, file {actual[:12]}); "
                "the artifact was modified or corrupted"
            )


def _load_skops(file: Path) -> Any:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=file)
    except Exception as exc:  # skops raises several types on a corrupt zip
        raise BundleError(f"{file}: cannot read the skops file ({exc})") from None
    unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unknown:
        raise BundleError(f"{file}: refused, it needs untrusted type(s) {', '.join(unknown)}")
    return sio.load(file, trusted=list(TRUSTED_TYPES))


def load_bundle(path: Path, catalog: Catalog) -> Bundle:
    """Load and verify a bundle (a version directory, or `DIR/current`).

    Refused with `BundleError`: a missing or truncated manifest, another format version,
    another feature catalog, a pickle or unlisted file, a missing file or sha256 mismatch,
    and classifiers that need types outside `TRUSTED_TYPES`.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    path = path.resolve()
    manifest = _read_manifest(path)
    _check_catalog(manifest, catalog, path)
    artifacts = manifest["artifacts"]
    if not isinstance(artifacts, dict) or MODEL not in artifacts:
        raise BundleError(f"{path / MANIFEST}: artifacts must list at least {MODEL}")
    _check_files(path, artifacts)
    try:
        model_doc = json.loads((path / MODEL).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path / MODEL}: not valid JSON ({exc})") from None
    space = ScaledSpace.from_json(model_doc, catalog)
    info = Manifest.from_dict(manifest)
    names = {s.id: s.name for s in info.segments}
    if sorted(names) != sorted(space.segment_ids) or len(info.segments) != info.k:
        raise BundleError(f"{path}: segments in {MANIFEST} and {MODEL} disagree")
    early = _load_skops(path / EARLY) if EARLY in artifacts else None
    churn = _load_skops(path / CHURN) if CHURN in artifacts else None
    width = len(catalog.names)
    for name, model in ((EARLY, early), (CHURN, churn)):
        if model is not None and getattr(model, "n_features_in_", width) != width:
            raise BundleError(
                f"{path / name}: expects {model.n_features_in_} features, not {width}"
            )
    if churn is not None and 1 not in list(churn.classes_):
        raise BundleError(f"{path / CHURN}: has no churn (1) class")
    threshold = info.churn_threshold
    return Bundle(
        path=path,
        version=str(manifest["bundle_version"]),
        manifest=manifest,
        segment_ids=list(space.segment_ids),
        segment_names=names,
        churn_threshold=float(threshold) if threshold is not None else float("nan"),
        space=space,
        info=info,
        early_model=early,
        churn_model=churn,
    )


def resolve_current(model_dir: Path) -> Path:
    """The version directory `model_dir/current` points at; BundleError when there is none."""
    link = Path(model_dir) / CURRENT
    if not link.exists():
        raise BundleError(f"{link}: no current bundle (train one with `segstream train`)")
    return link.resolve()


def bundle_version(created: datetime, content_hash: str) -> str:
    """Sortable version name: UTC creation time plus the first 6 hex digits of a hash.

    >>> bundle_version(datetime(2026, 4, 1, tzinfo=UTC), "3f9a1c77")
    '20260401T000000Z-3f9a1c'
    """
    return f"{created.astimezone(UTC):%Y%m%dT%H%M%SZ}-{content_hash[:6]}"


def dump_skops(model: Any, file: Path) -> None:
    """Save a classifier with skops (the only way classifiers enter a bundle)."""
    import skops.io as sio

    sio.dump(model, file)


def write_bundle(
    model_dir: Path,
    manifest: Manifest | Mapping[str, Any],
    write_artifacts: Callable[[Path, str], None],
    created: datetime,
) -> Path:
    """Write a complete bundle under `model_dir/<version>/` and return its path.

    The version's hash is taken from `manifest`'s body (data fingerprint, model,
    metrics), so different trainings get different names; a plain mapping is taken as the
    body as is. `write_artifacts(staging, version)` writes
    every artifact into a staging directory; their hashes go into the manifest, written
    last, and the staging directory is renamed into place only once all is on disk.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    body = manifest.body() if isinstance(manifest, Manifest) else dict(manifest)
    content = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    version = bundle_version(created, content)
    target = model_dir / version
    if target.exists():
        raise BundleError(f"{target}: already exists")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        write_artifacts(staging, version)
        artifacts = {
            p.relative_to(staging).as_posix(): sha256_file(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        full = {
            "format_version": FORMAT_VERSION,
            "bundle_version": version,
            "created_at": created.astimezone(UTC).isoformat(),
            **body,
            "artifacts": artifacts,
        }
        (staging / MANIFEST).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it 0700; readers (the stream) may be other users
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def publish(
    model_dir: Path,
    version_dir: Path,
    catalog: Catalog,
    *,
    action: str = "train",
    at: datetime | None = None,
    detail: Mapping[str, Any] | None = None,
) -> Bundle:
    """Verify a bundle by loading it, then point `model_dir/current` at it atomically.

    The symlink is swapped with `os.replace`, so a reader sees the old or the new bundle,
    never a missing or half-written one. A bundle that fails to load leaves `current` as is.
    The swap is then recorded in `model_dir/history.jsonl` as `action` (train, promote,
    rollback) at time `at`, with the version it replaced and `detail`.
    """
    bundle = load_bundle(version_dir, catalog)
    model_dir = Path(model_dir)
    link = model_dir / CURRENT
    replaced = link.resolve().name if link.exists() else None
    tmp = model_dir / f".{CURRENT}-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(Path(version_dir).name, tmp, target_is_directory=True)
    os.replace(tmp, link)
    entry: dict[str, Any] = {"action": action, "version": bundle.version, "replaced": replaced}
    if at is not None:
        entry["at"] = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    entry.update(detail or {})
    append_history(model_dir, entry)
    return bundle


def append_history(model_dir: Path, entry: Mapping[str, Any]) -> None:
    """Append one JSON line to `model_dir/history.jsonl` (one write, so lines never mix)."""
    line = json.dumps(dict(entry), sort_keys=True) + "\n"
    fd = os.open(Path(model_dir) / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_history(model_dir: Path) -> list[dict[str, Any]]:
    """The entries of `model_dir/history.jsonl`, oldest first (none when there is no file);
    a line that is not a JSON object (a torn write) is skipped."""
    file = Path(model_dir) / HISTORY
    if not file.is_file():
        return []
    entries = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            entries.append(doc)
    return entries
