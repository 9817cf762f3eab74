"""The offline trainer: from an event history to a verified, published model bundle.

Owns `TrainSettings` (with the `[segments]` and `[churn]` sections of the config file),
`train` (batch-reference features -> segmentation -> lineage against the previous bundle
(stable ids and names) -> profiles and names -> outcomes -> churn model -> early-life
classifier -> bundle -> verify -> publish `current`) and `summary_tables` (what the CLI
prints). Each step lives in its own module; this one only
wires them together, reports progress and decides what goes into the manifest.

Must not import `stream/`; `segstream.cli` is its only caller besides tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from models import bundle as fmt
from models.catalog import Catalog
from models.eventfile import ReadStats
from models.mapping import HistoryMapping, mapping_from_table
from offline.churn import ChurnTrainer, churn_dataset, snapshot_times
from offline.early import AGES, EarlyTrainer, early_dataset, new_customers
from offline.lineage import Lineage, MatchRules, Previous, match_segments, relabel
from offline.naming import name_segments, profile_segments
from offline.outcomes import segment_outcomes
from offline.reference import features_at, load_frame
from offline.report import ReportInputs, write_report
from offline.segmentation import Segmenter, heavy_tailed_columns

#: Share of training customers the reloaded bundle must assign to the trainer's segment
#: (float rounding may flip a customer lying exactly between two centroids).
MIN_AGREEMENT = 0.999


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
    #: OpenMP/BLAS threads for the fits. The fits are small; on a busy machine more threads
    #: spin-wait on each other (measured 6x slower with 2 threads on a loaded 2-core box).
    threads: int = 1
    #: Processes that decode a large JSONL history (0: one per CPU this process may use).
    #: Decoding through the event contract costs ~10 us per event, most of a 10 M-event read.
    readers: int = 0
    #: How to read a history whose columns and event types are not ours (`[mapping]`).
    mapping: HistoryMapping | None = None

    def __post_init__(self) -> None:
        if self.k != "auto" and not (isinstance(self.k, int) and 2 <= self.k <= 50):
            raise ValueError(f"k must be 'auto' or a whole number from 2 to 50, got {self.k!r}")
        if not 1 <= self.churn_horizon_days <= 365:
            raise ValueError("churn horizon must be 1 to 365 days")
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

    `[segments]` may hold `k`, `exclude` (features left out of the clustering) and a
    `names` table (segment id as a string -> name); `[churn]` may hold `qualifying_types`
    (list of event types) and `horizon_days`; `[train]` may hold `threads` and `readers`;
    `[mapping]` says how to read a foreign CSV or Parquet log (`models.mapping`).
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


def data_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the sorted distinct event ids: the same events give the same fingerprint,
    whatever the file's order or format."""
    digest = hashlib.sha256()
    for event_id in np.sort(frame["event_id"].to_numpy(dtype=str)):
        digest.update(event_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class _Churn:
    model: Any = None  # None when no model could be fitted; `note` says why
    metrics: dict[str, Any] | None = None
    threshold: float | None = None
    holdout: tuple[np.ndarray, np.ndarray] | None = None
    note: str | None = None


def _fit_churn(
    frame: pd.DataFrame, catalog: Catalog, as_of: float, settings: TrainSettings, bar: Progress
) -> _Churn:
    """Churn snapshots and model (what `train` runs on its second thread)."""
    times = snapshot_times(float(frame["ts"].min()), as_of, settings.churn_horizon_days)
    step = bar.add_task("churn snapshots", total=len(times))
    with threadpool_limits(limits=settings.threads):  # OpenMP's limit is per thread
        data = churn_dataset(
            frame, catalog, times, settings.churn_horizon_days, settings.qualifying_types,
            progress=lambda: bar.advance(step),
        )  # fmt: skip
        step = bar.add_task("churn model", total=1)
        try:
            churner = ChurnTrainer(random_state=settings.seed).fit(data)
        except ValueError as exc:
            return _Churn(note=f"no churn model: {exc}")
        finally:
            bar.advance(step)
    report = churner.report_
    return _Churn(
        churner.model_, report.metrics, churner.threshold_, (report.holdout_y, report.holdout_proba)
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def train(
    events: Path,
    as_of: float,
    out: Path,
    catalog: Catalog,
    settings: TrainSettings,
    *,
    now: datetime,
    console: Console | None = None,
    previous: Path | None = None,
    publish: bool = True,
    rules: MatchRules | None = None,
) -> TrainResult:
    """Train every model on `events` as of `as_of` and publish a bundle under `out`.

    `now` names the bundle (the CLI passes the wall clock). `current` moves only after
    the written bundle has been loaded back and assigns the training customers as trained
    (and not at all with `publish` False). With a `previous` bundle the new segments are
    matched to its segments (`offline.lineage`): those still there keep id and name.
    """
    unknown = [c for c in settings.exclude if c not in catalog.names]
    if unknown:
        raise ValueError(f"[segments] exclude: not in the catalog: {', '.join(unknown)}")
    before = None
    if previous is not None:
        try:
            before = fmt.load_bundle(previous, catalog)
        except fmt.BundleError as exc:
            raise fmt.BundleError(
                f"previous bundle: {exc}; train with --no-previous to start new segment ids"
            ) from None
    with threadpool_limits(limits=settings.threads):
        return _train(
            events, as_of, out, catalog, settings, now, console,
            _Lineage(before, rules or MatchRules(), publish),
        )  # fmt: skip


@dataclass(frozen=True)
class _Lineage:
    previous: fmt.Bundle | None
    rules: MatchRules
    publish: bool


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


def _train(
    events: Path,
    as_of: float,
    out: Path,
    catalog: Catalog,
    settings: TrainSettings,
    now: datetime,
    console: Console | None,
    lin: _Lineage,
) -> TrainResult:
    notes: list[str] = []
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=console is None, transient=False) as bar:
        step = bar.add_task("reading events", total=None)
        stats = ReadStats()
        frame = load_frame(
            events, catalog, stats, processes=settings.reader_processes, mapping=settings.mapping
        )
        bar.update(step, total=1, completed=1)
        seen = frame[frame["ts"] <= as_of]
        if seen.empty:
            raise ValueError(f"{events}: no valid event at or before as-of {_iso(as_of)}")
        rejected = sum(stats.rejected.values())
        if rejected:
            notes.append(f"{rejected:,} events broke the contract and were skipped")

        step = bar.add_task("features at as-of", total=1)
        feats = features_at(frame, catalog, as_of)
        bar.advance(step)

        # The churn model and the data fingerprint need only the events, so they run on a
        # second thread while segmentation and the early-life classifier run on this one
        # (the fits and most of numpy release the GIL).
        background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segstream-train")
        churn_job = background.submit(_fit_churn, frame, catalog, as_of, settings, bar)
        fingerprint_job = background.submit(data_fingerprint, frame)
        background.shutdown(wait=False)

        n_fits = (8 - 3 + 1 if settings.k == "auto" else 1) + settings.n_bootstrap
        step = bar.add_task("segmentation (k, bootstrap)", total=n_fits)
        seg = Segmenter(
            k=settings.k,
            log_columns=heavy_tailed_columns(catalog),
            n_bootstrap=settings.n_bootstrap,
            random_state=settings.seed,
        ).fit(feats.drop(columns=list(settings.exclude)), progress=lambda: bar.advance(step))
        if seg.dropped_:
            notes.append(
                f"dropped {len(seg.dropped_)} constant column(s), they cannot separate "
                f"customers: {', '.join(seg.dropped_)}"
            )
        skipped = seg.pipeline_.named_steps["log"].skipped_
        if skipped:
            notes.append(f"kept linear (negative values, no log1p): {', '.join(skipped)}")
        scaled = seg.transform(feats.drop(columns=list(settings.exclude)))
        space = seg.scaled_space(catalog)
        prev = lin.previous
        lineage = match_segments(
            seg.labels_, seg.centroids_, space,
            None if prev is None else Previous.from_manifest(prev.manifest, prev.space),
            None if prev is None else prev.nearest(feats.to_numpy(dtype=float)),
            reserved=used_ids(Path(out)), rules=lin.rules,
        )  # fmt: skip
        order = np.argsort(lineage.ids, kind="stable")  # clusters in segment id order
        ids = [int(i) for i in lineage.ids[order]]
        space = replace(space, centroids=space.centroids[order], segment_ids=tuple(ids))
        stable = relabel(seg.labels_, lineage.ids)
        labels = pd.Series(stable, index=feats.index, name="segment")
        profiles = profile_segments(feats, scaled, seg.columns_, stable, seg.k_, ids=ids)
        names = name_segments(profiles, settings.names, kept=lineage.kept_names)
        lineage_doc = lineage.document(names)
        if lineage_doc is not None:
            notes.append(_lineage_note(lineage_doc))
        outcomes = segment_outcomes(frame, catalog, labels, as_of)
        if outcomes.table is None:
            notes.append(f"outcome validation skipped: {outcomes.note}")

        churn = churn_job.result()
        if churn.note:
            notes.append(churn.note)

        early_model, early_metrics, early_holdout = None, None, None
        first = new_customers(frame, as_of)
        step = bar.add_task("early-life snapshots", total=None)
        early_data = early_dataset(
            frame, catalog, first, labels, settings.ages,
            progress=lambda done, total: bar.update(step, completed=done, total=total),
        )  # fmt: skip
        step = bar.add_task("early-life model", total=1)
        try:
            early = EarlyTrainer(random_state=settings.seed).fit(early_data)
        except ValueError as exc:
            notes.append(f"no early-life classifier: {exc}")
        else:
            early_model, early_metrics = early.model_, early.metrics()
            early_holdout = early.holdout_
        bar.advance(step)

        segments_doc = []
        for p in profiles:
            doc = {"name": names[p.id], **p.to_dict()}
            if outcomes.table is not None and p.id in outcomes.table.index:
                row = outcomes.table.to_dict("index")[p.id]
                doc["outcomes"] = {
                    "retention": float(row["retention"]),
                    "revenue_per_customer": float(row["revenue_per_customer"]),
                }
            segments_doc.append({"id": doc.pop("id"), **doc})
        metrics: dict[str, Any] = {
            "segmentation": {
                "k": seg.k_,
                "silhouette": seg.silhouette_,
                "stability_ari": seg.stability_,
                "stability_ari_runs": seg.stability_scores_,
                "inertia": seg.inertia_,
                "k_scores": [vars(s) for s in seg.k_scores_],
                "customers": len(feats),
            },
            "churn": churn.metrics,
            "early": early_metrics,
            "outcomes": {
                "note": outcomes.note,
                "window_days": outcomes.window_days,
            },
        }
        manifest: dict[str, Any] = {
            "as_of": _iso(as_of),
            "training_data": {
                "fingerprint": fingerprint_job.result(),
                "fingerprint_of": "sha256 of the sorted distinct event ids",
                "source": Path(events).name,
                "events": len(frame),
                "events_until_as_of": len(seen),
                "rejected": dict(stats.rejected),
            },
            "catalog": {
                "fingerprint": catalog.fingerprint,
                "names": list(catalog.names),
                "definition": catalog.to_dict(),
            },
            "features": {
                "used": seg.columns_,
                "log1p": [c for c, f in zip(seg.columns_, space.log1p, strict=True) if f],
                "dropped_constant": seg.dropped_,
            },
            "k": seg.k_,
            "segments": segments_doc,
            "segment_ids": lineage.ids_document(),
            "lineage": lineage_doc,
            "metrics": metrics,
            "thresholds": {"churn": churn.threshold},
            "settings": {
                "k": settings.k,
                "churn_horizon_days": settings.churn_horizon_days,
                "qualifying_types": list(settings.qualifying_types),
                "early_ages_days": list(settings.ages),
                "exclude": list(settings.exclude),
                "seed": settings.seed,
            },
            "notes": notes,
        }
        manifest = json.loads(json.dumps(manifest, default=_json_default))

        def write_artifacts(staging: Path, version: str) -> None:
            (staging / fmt.MODEL).write_text(json.dumps(space.to_json(catalog), indent=1))
            if early_model is not None:
                fmt.dump_skops(early_model, staging / fmt.EARLY)
            if churn.model is not None:
                fmt.dump_skops(churn.model, staging / fmt.CHURN)
            report = ReportInputs(
                version=version, as_of=_iso(as_of), k=seg.k_, k_scores=seg.k_scores_,
                silhouette=seg.silhouette_, stability=seg.stability_, scaled=scaled,
                labels=stable, names=names, profiles=profiles,
                outcomes=outcomes.table, outcome_note=outcomes.note, churn=churn.metrics,
                churn_holdout=churn.holdout, early=early_metrics, notes=notes,
                seed=settings.seed, lineage=lineage_doc,
            )  # fmt: skip
            write_report(report, staging)

        step = bar.add_task("writing and verifying the bundle", total=1)
        version_dir = fmt.write_bundle(Path(out), manifest, write_artifacts, now)
        bundle = fmt.load_bundle(version_dir, catalog)
        _verify(bundle, feats, stable, early_model, churn.model)
        if lin.publish:
            bundle = fmt.publish(Path(out), version_dir, catalog, action="train", at=now)
        bar.advance(step)
    return TrainResult(
        bundle=bundle, segments=labels, metrics=metrics, notes=notes,
        early_holdout=early_holdout, lineage=lineage, published=lin.publish,
    )  # fmt: skip


def _lineage_note(doc: dict[str, Any]) -> str:
    statuses = [r["status"] for r in doc["segments"]] + ["retired"] * len(doc["retired"])
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    return (
        f"segments matched to the previous bundle {doc['previous_version']}: {counts}; "
        f"{doc['same_segment_share']:.1%} of the customers keep their segment id"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in the manifest")


def _verify(
    bundle: fmt.Bundle, feats: pd.DataFrame, labels: np.ndarray, early: Any, churn: Any
) -> None:
    """The reloaded bundle must behave as the models just trained, or nothing is published."""
    x = feats.to_numpy(dtype=float)
    agreement = float(np.mean(bundle.nearest(x) == labels))
    if agreement < MIN_AGREEMENT:
        raise fmt.BundleError(
            f"{bundle.path}: reloaded bundle assigns only {agreement:.2%} of the training "
            "customers to their trained segment; not published"
        )
    probe = x[: min(len(x), 500)]
    if early is not None and not np.array_equal(bundle.early_segment(probe), early.predict(probe)):
        raise fmt.BundleError(f"{bundle.path}: reloaded early-life classifier disagrees")
    if churn is not None and not np.allclose(
        bundle.churn_probability(probe), churn.predict_proba(probe)[:, 1]
    ):
        raise fmt.BundleError(f"{bundle.path}: reloaded churn model disagrees")


def summary_tables(result: TrainResult) -> list[Table]:
    """The end-of-run summary: headline metrics, then the segments."""
    m = result.metrics
    seg, churn, early = m["segmentation"], m["churn"], m["early"]
    head = Table(title=f"bundle {result.bundle.version}", show_header=False)
    head.add_column("metric")
    head.add_column("value", justify="right")
    head.add_row("customers", f"{seg['customers']:,}")
    head.add_row("k", str(seg["k"]))
    head.add_row("silhouette", f"{seg['silhouette']:.3f}")
    stability = seg["stability_ari"]
    head.add_row("stability (bootstrap ARI)", "-" if stability is None else f"{stability:.3f}")
    if churn:
        head.add_row("churn ROC AUC (holdout)", f"{churn['roc_auc']:.3f}")
        head.add_row(
            "churn precision / recall at threshold",
            f"{churn['precision_at_threshold']:.3f} / {churn['recall_at_threshold']:.3f} "
            f"(p >= {churn['threshold']:.3f})",
        )
    else:
        head.add_row("churn model", "none")
    head.add_row("early-life accuracy (holdout)", f"{early['accuracy']:.3f}" if early else "none")
    head.add_row("outcomes", m["outcomes"]["note"])
    lineage = result.bundle.manifest.get("lineage")
    status: dict[int, str] = {}
    if lineage:
        head.add_row("previous bundle", lineage["previous_version"])
        head.add_row("customers keeping their segment", f"{lineage['same_segment_share']:.1%}")
        status = {int(r["id"]): r["status"] for r in lineage["segments"]}
        retired = ", ".join(f"{r['id']} {r['name']} ({r['cause']})" for r in lineage["retired"])
        head.add_row("retired segments", retired or "none")
    segs = Table(title="segments")
    columns = ("id", "name", "size", "share", "retention 30d", "stands out on")
    for col in (*columns, "since previous") if status else columns:
        segs.add_column(col, justify="right" if col in ("id", "size", "share") else "left")
    for s in result.bundle.manifest["segments"]:
        out = s.get("outcomes")
        top = ", ".join(f"{t['feature']} {t['z']:+.1f}" for t in s["top_features"][:3])
        row = [
            str(s["id"]), s["name"], f"{s['size']:,}", f"{s['share']:.1%}",
            f"{out['retention']:.1%}" if out else "-", top,
        ]  # fmt: skip
        segs.add_row(*row, *([status.get(int(s["id"]), "")] if status else []))
    return [head, segs]
