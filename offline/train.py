"""The offline trainer: from an event history to a verified, published model bundle.

Owns `TrainSettings` (with the `[segments]`, `[churn]` and `[train]` sections of the
config file) and `train`, which runs the named steps of `offline.steps` in order (read the
events, features at as-of, who is clustered, segments, stable ids, names and outcomes,
churn, early-life classifier, manifest, write and verify, publish `current`) and decides
which setting goes to which step.

What the clustering sees: the customers with an event in the `active_days` (90) before
as-of, on every catalog feature but recency (`days_since_*`) and the `exclude` list
(tenure by default). Customers outside it are assigned the nearest segment, as the stream
assigns them; the early-life classifier learns from clustered customers only.
`segstream.cli` is its caller besides the demo, benchmarks and tests.

Must not import `stream/`, `segstream/` or rich: callers pass a `Progress` (the CLI's
draws rich bars).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from models import bundle as fmt
from models.catalog import Catalog
from models.mapping import HistoryMapping, mapping_from_table
from offline.early import AGES
from offline.lineage import Lineage, MatchRules
from offline.steps import (
    NoProgress,
    Progress,
    build_manifest,
    check_outcomes,
    clustered_population,
    customer_features,
    data_fingerprint,
    fit_churn,
    fit_early,
    fit_segments,
    load_history,
    profile_and_name,
    recency_features,
    report_inputs,
    stable_ids,
    write_verified,
)


@dataclass(frozen=True)
class TrainSettings:
    """Every trainer setting; CLI flags override the config file's values."""

    k: int | str = "auto"
    churn_horizon_days: int = 30
    qualifying_types: tuple[str, ...] = ()
    names: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    n_bootstrap: int = 5
    ages: tuple[int, ...] = AGES
    #: Catalog features left out of the clustering. Tenure by default: segments describe
    #: behaviour, not age (with it, a "New Customers" segment of 30-60 day olds appears,
    #: which early-life behaviour cannot predict); young customers have the early classifier.
    exclude: tuple[str, ...] = ("tenure_days",)
    #: The clustering sees customers with an event in this many days before as-of (0:
    #: every customer): dormant customers are a lifecycle stage, not a behaviour, and in
    #: a mostly dormant history they turn segments into recency buckets. Recency features
    #: (`days_since_*`) are always left out of the clustering for the same reason.
    active_days: int = 90
    #: Catalog features the churn model uses (empty: every one, so new catalog features
    #: are picked up as they land).
    churn_features: tuple[str, ...] = ()
    #: OpenMP/BLAS threads for the fits. The fits are small; on a busy machine more threads
    #: spin-wait on each other (measured: benchmarks/NOTES.md).
    threads: int = 1
    #: Processes that decode a large JSONL history (0: one per CPU this process may use):
    #: decoding through the event contract is most of a large read (benchmarks/NOTES.md).
    readers: int = 0
    #: How to read a history whose columns and event types are not ours (`[mapping]`).
    mapping: HistoryMapping | None = None

    def __post_init__(self) -> None:
        if self.k != "auto" and not (isinstance(self.k, int) and 2 <= self.k <= 50):
            raise ValueError(f"k must be 'auto' or a whole number from 2 to 50, got {self.k!r}")
        if not 1 <= self.churn_horizon_days <= 365:
            raise ValueError("churn horizon must be 1 to 365 days")
        if self.active_days < 0:
            raise ValueError(f"active_days must be 0 (everyone) or more, got {self.active_days}")
        if self.readers < 0:
            raise ValueError(f"readers must be 0 (one per CPU) or more, got {self.readers}")

    @property
    def reader_processes(self) -> int:
        return self.readers or len(os.sched_getaffinity(0))


def parse_k(text: str) -> int | str:
    """`--k` value: "auto" or a number.

    >>> parse_k("auto"), parse_k("6")
    ('auto', 6)
    """
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--k must be 'auto' or a whole number, got {text!r}") from None


def load_settings(path: Path | None, **overrides: Any) -> TrainSettings:
    """Settings from the config file's `[segments]` and `[churn]` sections, then overrides
    (None means "not given").

    `[segments]` may hold `k`, `exclude` (features left out of the clustering),
    `active_days` (who is clustered) and a `names` table (segment id as a string -> name);
    `[churn]` may hold `qualifying_types` (list of event types), `horizon_days` and
    `features` (the catalog features the model uses); `[train]` may hold `threads` and
    `readers`; `[mapping]` says how to read a foreign CSV or Parquet log (`models.mapping`).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
    segments, churn = raw.get("segments", {}), raw.get("churn", {})
    values: dict[str, Any] = {}
    if "k" in segments:
        values["k"] = parse_k(str(segments["k"]))
    names = segments.get("names", {})
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise ValueError(f"{path}: [segments.names] must map segment ids to names (strings)")
    values["names"] = {str(key): value for key, value in names.items()}
    types = churn.get("qualifying_types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
        raise ValueError(f"{path}: [churn] qualifying_types must be a list of event types")
    values["qualifying_types"] = tuple(types)
    if "horizon_days" in churn:
        values["churn_horizon_days"] = int(churn["horizon_days"])
    exclude = segments.get("exclude", list(TrainSettings.exclude))
    if not isinstance(exclude, list) or not all(isinstance(c, str) for c in exclude):
        raise ValueError(f"{path}: [segments] exclude must be a list of feature names")
    values["exclude"] = tuple(exclude)
    if "active_days" in segments:
        values["active_days"] = int(segments["active_days"])
    features = churn.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ValueError(f"{path}: [churn] features must be a list of feature names")
    values["churn_features"] = tuple(features)
    for key in ("threads", "readers"):
        if key in raw.get("train", {}):
            values[key] = int(raw["train"][key])
    values["mapping"] = mapping_from_table(raw.get("mapping"), path)
    values.update({key: value for key, value in overrides.items() if value is not None})
    return TrainSettings(**values)


@dataclass
class TrainResult:
    """What a training run produced (the bundle is already published)."""

    bundle: fmt.Bundle
    segments: pd.Series  # segment id per customer seen by as-of
    metrics: dict[str, Any]
    notes: list[str]
    early_holdout: pd.DataFrame | None
    seconds: float = 0.0
    lineage: Lineage | None = None
    published: bool = True
    #: What the trainer found wrong with its models (also in the manifest and report).
    warnings: list[str] = field(default_factory=list)


def used_ids(model_dir: Path) -> set[int]:
    """Every segment id any bundle under `model_dir` used or recorded as used, so that a
    bundle that was never promoted does not hand its ids out again."""
    ids: set[int] = set()
    for manifest in Path(model_dir).glob(f"*/{fmt.MANIFEST}"):
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            ids |= {int(s["id"]) for s in doc.get("segments", [])}
            ids |= {int(i) for i in doc.get("segment_ids", {}).get("used", [])}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue  # not a bundle (or a broken one): load_bundle would refuse it anyway
    return ids


def train(
    events: Path,
    as_of: float,
    out: Path,
    catalog: Catalog,
    settings: TrainSettings,
    *,
    now: datetime,
    progress: Progress | None = None,
    previous: Path | None = None,
    publish: bool = True,
    rules: MatchRules | None = None,
) -> TrainResult:
    """Train every model on `events` as of `as_of` and publish a bundle under `out`.

    `now` names the bundle (the CLI passes the wall clock). `current` moves only after
    the written bundle has been loaded back and assigns the training customers as trained
    (and not at all with `publish` False). With a `previous` bundle the new segments are
    matched to its segments (`offline.lineage`): those still there keep id and name.
    `progress` hears about each step (nothing does by default).
    """
    progress = progress or NoProgress()
    for section, names in (("[segments] exclude", settings.exclude),
                           ("[churn] features", settings.churn_features)):  # fmt: skip
        unknown = [c for c in names if c not in catalog.names]
        if unknown:
            raise ValueError(f"{section}: not in the catalog: {', '.join(unknown)}")
    before = _load_previous(previous, catalog)
    with threadpool_limits(limits=settings.threads):
        history = load_history(
            events, catalog, as_of, processes=settings.reader_processes, progress=progress,
            mapping=settings.mapping,
        )  # fmt: skip
        feats = customer_features(history, catalog, as_of, progress)
        population = clustered_population(feats, settings.active_days)
        clustered = feats[population.clustered]
        exclude = tuple(dict.fromkeys([*settings.exclude, *recency_features(catalog)]))
        # The churn model and the data fingerprint need only the events, so they run on a
        # second thread while segmentation and the early-life classifier run on this one
        # (the fits and most of numpy release the GIL).
        background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segstream-train")
        churn_job = background.submit(
            fit_churn, history.frame, catalog, as_of,
            horizon_days=settings.churn_horizon_days, qualifying_types=settings.qualifying_types,
            seed=settings.seed, threads=settings.threads, progress=progress,
            features=settings.churn_features,
        )  # fmt: skip
        fingerprint_job = background.submit(data_fingerprint, history.frame)
        background.shutdown(wait=False)
        segments = fit_segments(
            clustered, catalog, k=settings.k, exclude=exclude,
            n_bootstrap=settings.n_bootstrap, seed=settings.seed, progress=progress,
        )  # fmt: skip
        stable = stable_ids(
            segments, clustered, before, used_ids(Path(out)), rules or MatchRules(), feats
        )
        named = profile_and_name(clustered, segments, stable, settings.names, catalog)
        outcomes = check_outcomes(history, catalog, stable.labels, as_of)
        churn = churn_job.result()
        early = fit_early(
            history.frame, catalog, as_of, stable.labels,
            lapsing=[p.id for p in named.profiles if p.lapsing], ages=settings.ages,
            seed=settings.seed, progress=progress,
        )  # fmt: skip
        notes = [*history.notes, *population.notes, *segments.notes, *named.notes,
                 *outcomes.notes, *churn.notes, *early.notes]  # fmt: skip
        manifest = build_manifest(
            events, as_of, catalog, _trained_with(settings), history, fingerprint_job.result(),
            segments, stable, named, outcomes.outcomes, churn, early, notes, population,
        )  # fmt: skip
        report = report_inputs(
            manifest, segments, stable, named, outcomes.outcomes, churn, early, settings.seed
        )
        bundle = write_verified(
            Path(out), manifest, stable.space, catalog, early, churn, report, feats,
            stable.everyone.to_numpy(), now=now, publish=publish, progress=progress,
        )  # fmt: skip
    return TrainResult(
        bundle=bundle, segments=stable.everyone, metrics=manifest.metrics, notes=notes,
        early_holdout=early.holdout, lineage=stable.lineage, published=publish,
        warnings=list(manifest.warnings),
    )  # fmt: skip


def _trained_with(settings: TrainSettings) -> fmt.TrainedWith:
    return fmt.TrainedWith(
        k=settings.k,
        churn_horizon_days=settings.churn_horizon_days,
        qualifying_types=settings.qualifying_types,
        early_ages_days=settings.ages,
        exclude=settings.exclude,
        seed=settings.seed,
        active_days=settings.active_days,
        churn_features=settings.churn_features,
    )


def _load_previous(previous: Path | None, catalog: Catalog) -> fmt.Bundle | None:
    if previous is None:
        return None
    try:
        return fmt.load_bundle(previous, catalog)
    except fmt.BundleError as exc:
        raise fmt.BundleError(
            f"previous bundle: {exc}; train with --no-previous to start new segment ids"
        ) from None
