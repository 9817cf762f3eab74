"""The trainer's named steps, each a function with typed inputs and outputs.

In the order `offline.train.train` runs them:

1. `load_history`: the events, decoded through the event contract;
2. `customer_features`: every customer's catalog features at as-of (the batch reference);
3. `clustered_population`, then `fit_segments`: which customers and features the
   clustering sees, log1p and scaling, choosing k, k-means and its bootstrap stability;
4. `stable_ids`: lineage against the previous bundle (ids and names that survive);
5. `profile_and_name`: profiles and business names, then `check_outcomes` after as-of;
6. `fit_churn`: churn snapshots and model (and `data_fingerprint`), on a second thread
   beside steps 3 to 5;
7. `fit_early`: the early-life classifier;
8. `build_manifest`: the typed `models.bundle.Manifest`;
9. `report_inputs`, then `write_verified`: artifacts and report, reload and verify,
   publish `current`.

Steps report through a `Progress` (`NoProgress` is silent). The models themselves live in
their own modules (`offline.segmentation`, `offline.churn`, ...); a step calls one and
turns its result into what the bundle records, with notes for the user.

Must not import `stream/`, `segstream/` or rich.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from models import bundle as fmt
from models.catalog import LIFETIME, Catalog
from models.eventfile import ReadStats
from models.mapping import HistoryMapping
from offline.baselines import churn_warnings, early_warnings
from offline.churn import ChurnTrainer, churn_dataset, snapshot_times
from offline.early import EarlyTrainer, early_dataset, new_customers
from offline.lineage import Lineage, MatchRules, Previous, match_segments, relabel
from offline.naming import (
    SegmentProfile,
    explain_names,
    identity_shares,
    profile_segments,
)
from offline.outcomes import Outcomes, segment_outcomes
from offline.reference import features_at, load_frame
from offline.report import ReportInputs, write_report
from offline.segmentation import Segmenter, heavy_tailed_columns

#: Share of training customers the reloaded bundle must assign to the trainer's segment
#: (float rounding may flip a customer lying exactly between two centroids).
MIN_AGREEMENT = 0.999


class Progress(Protocol):
    """What a training run tells its caller as each step starts, moves and ends.

    `step` is a short label ("reading events"); `total` the units of work when known.
    The churn step runs on a second thread, so an implementation must accept calls from
    two threads.
    """

    def start(self, step: str, total: int | None = None) -> None: ...

    def advance(self, step: str, completed: int, total: int | None = None) -> None:
        """`completed` units of `step` are done (a running count, not an increment)."""

    def done(self, step: str) -> None: ...


class NoProgress:
    """The silent `Progress` (library callers, tests)."""

    def start(self, step: str, total: int | None = None) -> None:
        pass

    def advance(self, step: str, completed: int, total: int | None = None) -> None:
        pass

    def done(self, step: str) -> None:
        pass


def data_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the sorted distinct event ids: the same events give the same fingerprint,
    whatever the file's order or format."""
    digest = hashlib.sha256()
    for event_id in np.sort(frame["event_id"].to_numpy(dtype=str)):
        digest.update(event_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


# --- step 1: the events


@dataclass(frozen=True)
class History:
    """The decoded events (all of them: outcomes and early-life look past as-of)."""

    frame: pd.DataFrame
    #: Events at or before as-of.
    seen: int
    #: Events that broke the contract, by reason.
    rejected: dict[str, int]
    #: Per distinct of the catalog's layout, the values its `m:d{k}` numbers stand for.
    distinct_values: tuple[tuple[str, ...], ...] = ()

    @property
    def notes(self) -> list[str]:
        n = sum(self.rejected.values())
        return [f"{n:,} events broke the contract and were skipped"] if n else []


def load_history(
    events: Path,
    catalog: Catalog,
    as_of: float,
    *,
    processes: int,
    progress: Progress,
    mapping: HistoryMapping | None = None,
) -> History:
    """Read and decode `events` (a large JSONL file in `processes` processes; a foreign
    CSV or Parquet log through `mapping`); ValueError when nothing happened by as-of."""
    progress.start("reading events")
    stats = ReadStats()
    frame = load_frame(events, catalog, stats, processes=processes, mapping=mapping)
    progress.done("reading events")
    seen = int((frame["ts"] <= as_of).sum())
    if not seen:
        raise ValueError(f"{events}: no valid event at or before as-of {_iso(as_of)}")
    # Out of attrs at once: pandas deep-copies attrs into every frame derived from one.
    values = tuple(tuple(v) for v in frame.attrs.pop("distinct_values", ()))
    return History(frame=frame, seen=seen, rejected=dict(stats.rejected), distinct_values=values)


# --- step 2: features


def customer_features(
    history: History, catalog: Catalog, as_of: float, progress: Progress
) -> pd.DataFrame:
    """One row per customer seen by as-of, the catalog's features as columns."""
    progress.start("features at as-of", total=1)
    feats = features_at(history.frame, catalog, as_of)
    progress.done("features at as-of")
    return feats


# --- step 3: who is clustered, scale, choose k, fit the segments


@dataclass(frozen=True)
class Population:
    """The customers the clustering sees (a mask over the feature rows) and why."""

    clustered: np.ndarray
    rule: str
    notes: list[str]


def clustered_population(feats: pd.DataFrame, active_days: int) -> Population:
    """Customers with an event in the `active_days` before as-of (0: every customer).

    Segments describe how customers behave while they are customers. In a history where
    most customers went quiet long ago (a shop's purchase log: most buy once or twice),
    clustering everyone splits the customers by how long ago they were last seen, since
    that is where most of the variance is, and names the dormant majority like a behaviour.
    Dormant customers are a lifecycle stage, not a segment: they are left out of the
    clustering (and of the profiles the names come from), and are still assigned the
    nearest segment, as the stream does.
    """
    if active_days <= 0 or "days_since_last_event" not in feats.columns:
        return Population(np.ones(len(feats), dtype=bool), "every customer known at as-of", [])
    silent = feats["days_since_last_event"].to_numpy(dtype=float)
    clustered = silent < active_days
    rule = f"customers with an event in the {active_days} days before as-of"
    if clustered.sum() < 20:  # too few to cluster: take everyone, and say so
        return Population(
            np.ones(len(feats), dtype=bool),
            "every customer known at as-of",
            [f"only {int(clustered.sum())} {rule}: clustered every customer instead"],
        )
    note = (
        f"clustered {int(clustered.sum()):,} of {len(feats):,} customers ({rule}); the "
        f"other {int((~clustered).sum()):,} are assigned the nearest segment"
    )
    return Population(clustered, rule, [note])


def recency_features(catalog: Catalog) -> tuple[str, ...]:
    """Catalog features that only say how long ago something happened (`days_since_*`):
    left out of the clustering, which must describe behaviour, not recency.

    >>> from models.catalog import default_catalog
    >>> recency_features(default_catalog())
    ('days_since_last_event', 'days_since_last_purchase')
    """
    return tuple(s.name for s in catalog.features if s.aggregation == "days_since_last")


@dataclass(frozen=True)
class Segments:
    """The fitted segmentation, clusters still in k-means' arbitrary order."""

    model: Segmenter
    #: The training customers in the scaled space.
    scaled: np.ndarray
    space: fmt.ScaledSpace
    notes: list[str]


def lifetime_features(catalog: Catalog) -> list[str]:
    """Features over a customer's whole life (lifetime windows, and ratios or spans built
    on them or on the first event)."""
    life = {s.name for s in catalog.features if s.window_days == LIFETIME}
    life |= {s.name for s in catalog.features if s.aggregation == "span_days"}
    life |= {
        s.name
        for s in catalog.features
        if s.aggregation == "ratio" and {s.numerator, s.denominator} & life
    }
    return [n for n in catalog.names if n in life]


def fit_segments(
    feats: pd.DataFrame,
    catalog: Catalog,
    *,
    k: int | str,
    exclude: tuple[str, ...],
    n_bootstrap: int,
    seed: int,
    progress: Progress,
) -> Segments:
    """Log1p and scale the features but `exclude` and the lifetime ones, choose k ("auto":
    3 to 8) and fit, then refit `n_bootstrap` resamples for stability
    (`offline.segmentation`).

    Lifetime totals grow with a customer's age, not with how it behaves now: clustered,
    they would split the old from the young. They serve the churn model instead.
    """
    step = "segmentation (k, bootstrap)"
    n_fits = (8 - 3 + 1 if k == "auto" else 1) + n_bootstrap
    progress.start(step, total=n_fits)
    fits = iter(range(1, n_fits + 1))
    x = feats.drop(columns=[*exclude, *lifetime_features(catalog)])
    seg = Segmenter(
        k=k,
        log_columns=heavy_tailed_columns(catalog),
        n_bootstrap=n_bootstrap,
        random_state=seed,
    ).fit(x, progress=lambda: progress.advance(step, next(fits, n_fits)))
    progress.done(step)
    notes = []
    if seg.dropped_:
        notes.append(
            f"dropped {len(seg.dropped_)} constant column(s), they cannot separate "
            f"customers: {', '.join(seg.dropped_)}"
        )
    skipped = seg.pipeline_.named_steps["log"].skipped_
    if skipped:
        notes.append(f"kept linear (negative values, no log1p): {', '.join(skipped)}")
    return Segments(seg, seg.transform(x), seg.scaled_space(catalog), notes)


# --- step 4: stable ids


@dataclass(frozen=True)
class StableIds:
    """The segments under their stable ids (lineage against the previous bundle)."""

    lineage: Lineage
    #: Segment ids, ascending.
    ids: list[int]
    #: The scaled space with its centroids in `ids` order.
    space: fmt.ScaledSpace
    #: Stable segment id per clustered customer.
    labels: pd.Series
    #: Stable segment id (the nearest centroid's) of every customer known at as-of.
    everyone: pd.Series


def stable_ids(
    segments: Segments,
    feats: pd.DataFrame,
    previous: fmt.Bundle | None,
    reserved: set[int],
    rules: MatchRules,
    everyone: pd.DataFrame | None = None,
) -> StableIds:
    """Match the clusters to the previous bundle's segments (`offline.lineage`); without
    one, new ids above every `reserved` one. `feats` are the clustered customers;
    `everyone` (default: the same) all customers, assigned their nearest segment."""
    seg = segments.model
    lineage = match_segments(
        seg.labels_, seg.centroids_, segments.space,
        None if previous is None else Previous.from_manifest(previous.info, previous.space),
        None if previous is None else previous.nearest(feats.to_numpy(dtype=float)),
        reserved=reserved, rules=rules,
    )  # fmt: skip
    order = np.argsort(lineage.ids, kind="stable")  # clusters in segment id order
    ids = [int(i) for i in lineage.ids[order]]
    space = replace(
        segments.space, centroids=segments.space.centroids[order], segment_ids=tuple(ids)
    )
    labels = pd.Series(relabel(seg.labels_, lineage.ids), index=feats.index, name="segment")
    if everyone is None:
        return StableIds(lineage, ids, space, labels, labels)
    # predict() numbers clusters as labels_ does (size order), so relabel applies.
    nearest = relabel(seg.predict(everyone[list(seg.pipeline_.feature_names_in_)]), lineage.ids)
    all_labels = pd.Series(nearest, index=everyone.index, name="segment")
    all_labels.loc[labels.index] = labels.to_numpy()  # float ties: keep the fit's own labels
    return StableIds(lineage, ids, space, labels, all_labels)


# --- step 5: profiles, names and outcomes


@dataclass(frozen=True)
class Named:
    """What sets each segment apart and what it is called."""

    profiles: list[SegmentProfile]
    names: dict[int, str]
    #: Why each segment has its name (the rule and the numbers).
    reasons: dict[int, str]
    #: The manifest's `lineage` (None for a first bundle).
    lineage: dict[str, Any] | None
    notes: list[str]


def profile_and_name(
    feats: pd.DataFrame,
    segments: Segments,
    stable: StableIds,
    overrides: Mapping[str, str],
    catalog: Catalog,
) -> Named:
    """Profile each segment; a name comes from `overrides` (the config's, by id as a
    string), else the previous bundle, else the naming rules (`offline.naming`)."""
    labels = stable.labels.to_numpy()
    seg = segments.model
    col = catalog.names
    valued = {col[s]: col[c] for s, c in catalog.valued_counts.items()}
    profiles = profile_segments(feats, segments.scaled, seg.columns_, labels, seg.k_,
                                ids=stable.ids, valued=valued)  # fmt: skip
    explained = explain_names(profiles, overrides, kept=stable.lineage.kept_names)
    names = {seg: name for seg, (name, _) in explained.items()}
    reasons = {seg: why for seg, (_, why) in explained.items()}
    doc = stable.lineage.document(names)
    lineage = None if doc is None else _plain(doc)
    notes = [] if lineage is None else [_lineage_note(lineage)]
    return Named(profiles, names, reasons, lineage, notes)


@dataclass(frozen=True)
class CheckedOutcomes:
    outcomes: Outcomes
    notes: list[str]


def check_outcomes(
    history: History, catalog: Catalog, labels: pd.Series, as_of: float
) -> CheckedOutcomes:
    """Retention and revenue per segment after as-of (skipped, with a note, when the
    history ends at as-of)."""
    outcomes = segment_outcomes(history.frame, catalog, labels, as_of)
    if outcomes.table is None:
        return CheckedOutcomes(outcomes, [f"outcome validation skipped: {outcomes.note}"])
    return CheckedOutcomes(outcomes, [])


def _lineage_note(doc: Mapping[str, Any]) -> str:
    statuses = [r["status"] for r in doc["segments"]] + ["retired"] * len(doc["retired"])
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    return (
        f"segments matched to the previous bundle {doc['previous_version']}: {counts}; "
        f"{doc['same_segment_share']:.1%} of the customers keep their segment id"
    )


# --- step 6: churn


@dataclass(frozen=True)
class ChurnFit:
    """The churn model, or None and a note saying why none could be fitted."""

    model: Any = None
    metrics: dict[str, Any] | None = None
    threshold: float | None = None
    #: (true labels, predicted probabilities) on the held-out snapshot.
    holdout: tuple[np.ndarray, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)
    #: What is wrong with the model (`offline.baselines.churn_warnings`).
    warnings: list[str] = field(default_factory=list)


def fit_churn(
    frame: pd.DataFrame,
    catalog: Catalog,
    as_of: float,
    *,
    horizon_days: int,
    qualifying_types: tuple[str, ...],
    seed: int,
    threads: int,
    progress: Progress,
    features: tuple[str, ...] = (),
) -> ChurnFit:
    """Churn snapshots up to as-of, then the calibrated churn model (`offline.churn`) on
    `features` (empty: every catalog feature, so features added to the catalog are used
    as they land), compared with its baselines on the held-out snapshot.

    Runs on a thread of its own: `threads` limits its OpenMP/BLAS threads again.
    """
    times = snapshot_times(float(frame["ts"].min()), as_of, horizon_days)
    progress.start("churn snapshots", total=len(times))
    taken = iter(range(1, len(times) + 1))
    with threadpool_limits(limits=threads):  # OpenMP's limit is per thread
        data = churn_dataset(
            frame, catalog, times, horizon_days, qualifying_types,
            progress=lambda: progress.advance("churn snapshots", next(taken, len(times))),
        )  # fmt: skip
        progress.done("churn snapshots")
        progress.start("churn model", total=1)
        try:
            columns = tuple(catalog.names.index(f) for f in features)
            churner = ChurnTrainer(random_state=seed, features=columns).fit(data)
        except ValueError as exc:
            return ChurnFit(notes=[f"no churn model: {exc}"])
        finally:
            progress.done("churn model")
    report = churner.report_
    return ChurnFit(
        churner.model_, report.metrics, churner.threshold_,
        (report.holdout_y, report.holdout_proba), warnings=churn_warnings(report.metrics),
    )  # fmt: skip


# --- step 7: the early-life classifier


@dataclass(frozen=True)
class EarlyFit:
    """The early-life classifier, or None and a note saying why none could be fitted."""

    model: Any = None
    metrics: dict[str, Any] | None = None
    holdout: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def fit_early(
    frame: pd.DataFrame,
    catalog: Catalog,
    as_of: float,
    labels: pd.Series,
    *,
    lapsing: Collection[int],
    ages: tuple[int, ...],
    seed: int,
    progress: Progress,
) -> EarlyFit:
    """Snapshots of customers' first weeks, labelled with their segment at as-of, then
    the classifier (`offline.early`). `labels` are the clustered customers' segments: a
    new customer who went dormant has no behavioural segment to learn, and neither has
    one in a `lapsing` segment (silent for a month or more at as-of). Learning those made
    the classifier place a third of the new customers of a history with close personas
    (the `close` shape, seed 31) in Lapsing in their first weeks, while active: a
    win-back flow for a customer who just signed up."""
    progress.start("early-life snapshots")
    first = new_customers(frame, as_of)
    behaving = labels[~labels.isin(list(lapsing))]
    data = early_dataset(
        frame, catalog, first[first.index.isin(behaving.index)], behaving, ages,
        progress=lambda done, total: progress.advance("early-life snapshots", done, total),
    )  # fmt: skip
    progress.done("early-life snapshots")
    progress.start("early-life model", total=1)
    try:
        early = EarlyTrainer(random_state=seed).fit(data)
    except ValueError as exc:
        return EarlyFit(notes=[f"no early-life classifier: {exc}"])
    finally:
        progress.done("early-life model")
    metrics = early.metrics()
    return EarlyFit(early.model_, metrics, early.holdout_, warnings=early_warnings(metrics))


# --- step 8: the manifest


def build_manifest(
    events: Path,
    as_of: float,
    catalog: Catalog,
    trained_with: fmt.TrainedWith,
    history: History,
    fingerprint: str,
    segments: Segments,
    stable: StableIds,
    named: Named,
    outcomes: Outcomes,
    churn: ChurnFit,
    early: EarlyFit,
    notes: list[str],
    population: Population | None = None,
) -> fmt.Manifest:
    """Everything the bundle records besides its header and artifact hashes."""
    seg = segments.model
    shares = identity_shares(
        history.frame, history.distinct_values, catalog.identity, stable.labels, as_of
    )
    return fmt.Manifest(
        as_of=_iso(as_of),
        training_data=fmt.TrainingData(
            fingerprint=fingerprint,
            source=Path(events).name,
            events=len(history.frame),
            events_until_as_of=history.seen,
            rejected=history.rejected,
        ),
        catalog=fmt.CatalogRecord(
            fingerprint=catalog.fingerprint,
            names=tuple(catalog.names),
            definition=_plain(catalog.to_dict()),
        ),
        features=fmt.FeatureColumns(
            used=tuple(seg.columns_),
            log1p=tuple(c for c, f in zip(seg.columns_, segments.space.log1p, strict=True) if f),
            dropped_constant=tuple(seg.dropped_),
        ),
        k=int(seg.k_),
        segments=tuple(
            _segment_record(
                p, named.names[p.id], named.reasons.get(p.id, ""), outcomes, shares.get(p.id, {})
            )
            for p in named.profiles
        ),
        segment_ids=fmt.SegmentIds(
            used=tuple(stable.lineage.used_ids), next=stable.lineage.next_id
        ),
        lineage=named.lineage,
        metrics=_plain(_metrics(stable, seg, outcomes, churn, early, population)),
        thresholds=_plain({"churn": churn.threshold}),
        settings=trained_with,
        notes=tuple(notes),
        warnings=tuple([*churn.warnings, *early.warnings]),
    )


def _segment_record(
    profile: SegmentProfile,
    name: str,
    reason: str,
    outcomes: Outcomes,
    shares: dict[str, dict[str, float]],
) -> fmt.SegmentRecord:
    doc = _plain(profile.to_dict())
    result = None
    if outcomes.table is not None and profile.id in outcomes.table.index:
        row = outcomes.table.to_dict("index")[profile.id]
        result = fmt.SegmentOutcomes(
            retention=float(row["retention"]),
            revenue_per_customer=float(row["revenue_per_customer"]),
        )
    return fmt.SegmentRecord(
        id=doc["id"], name=name, size=doc["size"], share=doc["share"],
        top_features=tuple(doc["top_features"]), outcomes=result, name_reason=reason,
        means=doc["means"], typical=doc["typical"], shares=shares,
        lapsing=profile.lapsing,
    )  # fmt: skip


def _metrics(
    stable: StableIds,
    seg: Segmenter,
    outcomes: Outcomes,
    churn: ChurnFit,
    early: EarlyFit,
    population: Population | None,
) -> dict[str, Any]:
    customers = len(stable.everyone)
    return {
        "segmentation": {
            "k": seg.k_,
            "silhouette": seg.silhouette_,
            "stability_ari": seg.stability_,
            "stability_ari_runs": seg.stability_scores_,
            "inertia": seg.inertia_,
            "k_scores": [vars(s) for s in seg.k_scores_],
            "customers": customers,
            "clustered": len(stable.labels),
            "clustered_population": population.rule if population else "every customer",
        },
        "churn": churn.metrics,
        "early": early.metrics,
        "outcomes": {"note": outcomes.note, "window_days": outcomes.window_days},
    }


def _plain(doc: Any) -> Any:
    """`doc` as plain JSON values (numpy scalars become Python numbers)."""
    return json.loads(json.dumps(doc, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in the manifest")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


# --- step 9: the report, then write, verify, publish


def report_inputs(
    manifest: fmt.Manifest,
    segments: Segments,
    stable: StableIds,
    named: Named,
    outcomes: Outcomes,
    churn: ChurnFit,
    early: EarlyFit,
    seed: int,
) -> ReportInputs:
    """What `report.html` shows (its version is filled in when the bundle is written)."""
    seg = segments.model
    return ReportInputs(
        version="", as_of=manifest.as_of, k=seg.k_, k_scores=seg.k_scores_,
        silhouette=seg.silhouette_, stability=seg.stability_, scaled=segments.scaled,
        labels=stable.labels.to_numpy(), names=named.names, profiles=named.profiles,
        outcomes=outcomes.table, outcome_note=outcomes.note, churn=churn.metrics,
        churn_holdout=churn.holdout, early=early.metrics, notes=list(manifest.notes), seed=seed,
        lineage=manifest.lineage, warnings=list(manifest.warnings), reasons=named.reasons,
        population=str(manifest.metrics["segmentation"].get("clustered_population", "")),
    )  # fmt: skip


def write_verified(
    out: Path,
    manifest: fmt.Manifest,
    space: fmt.ScaledSpace,
    catalog: Catalog,
    early: EarlyFit,
    churn: ChurnFit,
    report: ReportInputs,
    feats: pd.DataFrame,
    labels: np.ndarray,
    *,
    now: datetime,
    publish: bool,
    progress: Progress,
) -> fmt.Bundle:
    """Write the bundle (models, report, manifest), load it back and check it behaves as
    trained, then (with `publish`) point `out/current` at it."""

    def write_artifacts(staging: Path, version: str) -> None:
        (staging / fmt.MODEL).write_text(json.dumps(space.to_json(catalog), indent=1))
        if early.model is not None:
            fmt.dump_skops(early.model, staging / fmt.EARLY)
        if churn.model is not None:
            fmt.dump_skops(churn.model, staging / fmt.CHURN)
        write_report(replace(report, version=version), staging)

    step = "writing and verifying the bundle"
    progress.start(step, total=1)
    version_dir = fmt.write_bundle(out, manifest, write_artifacts, now)
    bundle = fmt.load_bundle(version_dir, catalog)
    _verify(bundle, feats, labels, early.model, churn.model)
    if publish:
        bundle = fmt.publish(out, version_dir, catalog, action="train", at=now)
    progress.done(step)
    return bundle


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
