"""Prometheus metrics of the stream worker, all on one injected `CollectorRegistry`.

Owns the metric names, their labels and how a batch is recorded (`Metrics.observe`).
Labels are low-cardinality only: event type, reject reason, alert type, segment name,
partition and model version; never a customer id. Tests build `Metrics` on a fresh
registry and read values with `registry.get_sample_value`; two workers in one process
never collide.

Must not import faust or redis; `stream.worker` calls it, `stream.app` serves it.

>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> metrics = Metrics(registry)
>>> metrics.reject("not_json")
>>> registry.get_sample_value("segstream_events_rejected_total", {"reason": "not_json"})
1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from models.events import BUILTIN_TYPES
from stream.decide import Alert
from stream.lifecycle import STAGES
from stream.store import EventStatus

if TYPE_CHECKING:
    from stream.shadow import ShadowTally

#: Reasons a record can be rejected for: the contract's codes, the store's ``too_late``, and
#: the worker's own (a tombstone, a decoder fault, a record that keeps failing).
REJECT_REASONS = (
    "null_value",
    "undecodable",
    "processing_error",
    "too_large",
    "not_json",
    "not_object",
    "missing",
    "wrong_type",
    "invalid_value",
    "in_future",
    "too_late",
)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_EVENT_BUCKETS = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1)


#: Every alert type the worker publishes (`stream.decide` and `stream.health`).
ALERT_TYPES = (
    "segment_assigned",
    "segment_reassigned",
    "segment_migration",
    "churn_risk",
    "population_shift",
    "retrain_recommended",
    "lifecycle_changed",
)

#: The label that stands for every event type outside the known ones.
OTHER = "other"


class Metrics:
    """Every metric of one worker, declared on `registry`.

    Labels fed by input stay bounded: an event type counts under its own name only when it
    is built in or one the catalog's features look at (`known_types`), else under
    ``other``, so a producer sending made-up types cannot create unbounded series.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.known_types: frozenset[str] = BUILTIN_TYPES
        self._version = ""
        self._declare_input(registry)
        self._declare_population(registry)
        self._declare_shadow(registry)
        self._declare_model(registry)

    def _declare_input(self, r: CollectorRegistry) -> None:
        """Events in, dead letters, output refused, processing and store times, Redis."""
        self.processed = Counter(
            "segstream_events_processed", "Events applied, by type.", ["type"], registry=r
        )
        self.rejected = Counter(
            "segstream_events_rejected",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.unpublishable = Counter(
            "segstream_records_unpublishable",
            "Output records the broker refused for good (too large, invalid topic), by reason; "
            "logged and dropped, never retried.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "segstream_events_duplicate", "Redelivered events skipped by id.", registry=r
        )
        self.dedupe_evicted = Counter(
            "segstream_dedupe_evicted",
            "Event fingerprints evicted by the per-customer cap (SEGSTREAM_DEDUPE_MAX_EVENTS) "
            "while their day could still take an event: a redelivery of one of those events "
            "is counted again.",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "segstream_batch_seconds",
            "Time to process one batch (decode, store, decide).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_seconds = Histogram(
            "segstream_event_seconds",
            "Processing time per event (batch time / events in the batch).",
            buckets=_EVENT_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            "segstream_store_seconds",
            "Time of one feature/assignment store operation, by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "segstream_redis_errors", "Redis operations that failed (and were retried).", registry=r
        )
        self.fenced = Counter(
            "segstream_saves_fenced",
            "Saves refused because a newer owner claimed the partition (batch dropped).",
            registry=r,
        )
        self.lag = Gauge(
            "segstream_consumer_lag",
            "Input records not yet processed, by partition (highwater - 1 - last offset).",
            ["partition"],
            registry=r,
        )

    def _declare_population(self, r: CollectorRegistry) -> None:
        """Populations, migrations, churn and every alert published."""
        self.population = Gauge(
            "segstream_segment_population",
            "Customers currently assigned to each segment (current model).",
            ["segment"],
            registry=r,
        )
        self.stages = Gauge(
            "segstream_lifecycle_population",
            "Customers in each lifecycle stage (new, active, dormant, returning), current model.",
            ["stage"],
            registry=r,
        )
        self.migrations = Counter(
            "segstream_segment_migrations",
            "Segment migrations, by from and to segment.",
            ["from_segment", "to_segment"],
            registry=r,
        )
        self.churn_alerts = Counter(
            "segstream_churn_alerts", "Churn-risk alerts, by segment.", ["segment"], registry=r
        )
        self.alerts = Counter(
            "segstream_alerts", "Alerts published, by type.", ["type"], registry=r
        )

    def _declare_shadow(self, r: CollectorRegistry) -> None:
        """What a candidate bundle scored in shadow mode would have done."""
        self.shadow_info = Gauge(
            "segstream_shadow_model_info",
            "1 for the candidate bundle scored in shadow mode (SEGSTREAM_SHADOW_MODEL_DIR).",
            ["version"],
            registry=r,
        )
        self.shadow_evaluations = Counter(
            "segstream_shadow_evaluations",
            "Evaluations scored by both bundles, by the live and the candidate segment.",
            ["live_segment", "candidate_segment"],
            registry=r,
        )
        self.shadow_alerts = Counter(
            "segstream_shadow_alerts",
            "Alerts the candidate bundle would have sent (none is published), by type.",
            ["type"],
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "segstream_shadow_agreement_ratio",
            "Share of the recent evaluations that live and candidate put in the same segment.",
            registry=r,
        )
        self.shadow_churn_correlation = Gauge(
            "segstream_shadow_churn_correlation",
            "Pearson correlation of live and candidate churn scores over recent re-scores.",
            registry=r,
        )

    def _declare_model(self, r: CollectorRegistry) -> None:
        """The bundle in use, its reloads and reassignments, and its health (PSI, drift)."""
        self.reassignments = Counter(
            "segstream_segment_reassignments",
            "Customers moved by a model update (not by their behavior), by from and to "
            "segment and the new model version.",
            ["from_segment", "to_segment", "model_version"],
            registry=r,
        )
        self.drift = Gauge(
            "segstream_centroid_drift",
            "How far each online center moved from the bundle's centroid (scaled units).",
            ["segment"],
            registry=r,
        )
        self.model_reloads = Counter(
            "segstream_model_reloads",
            "Model bundles that `current` pointed at, by outcome (loaded or refused).",
            ["outcome"],
            registry=r,
        )
        self.model_info = Gauge(
            "segstream_model_info", "The model bundle in use (value 1).", ["version"], registry=r
        )
        self.psi = Gauge(
            "segstream_population_psi",
            "PSI of recent assignments against the bundle's segment shares.",
            registry=r,
        )

    def observe(
        self,
        statuses: Sequence[EventStatus],
        types: Sequence[str],
        alerts: Iterable[Alert],
        *,
        seconds: float | None = None,
        events: int | None = None,
        evicted: int = 0,
    ) -> None:
        """Record one batch: each valid event's status (with its type), the alerts, the time
        and the fingerprints the dedupe cap evicted.

        `statuses` and `types` run in parallel, one per valid event given to the engine;
        `events` (default: len(statuses)) divides `seconds` into the per-event time.

        >>> from prometheus_client import CollectorRegistry
        >>> m = Metrics(CollectorRegistry())
        >>> m.observe(["applied", "duplicate", "too_late"], ["purchase"] * 3, [], seconds=0.3)
        >>> m.registry.get_sample_value("segstream_events_processed_total", {"type": "purchase"})
        1.0
        """
        for status, kind in zip(statuses, types, strict=True):
            if status == "applied":
                self.processed.labels(kind if kind in self.known_types else OTHER).inc()
            elif status == "duplicate":
                self.duplicates.inc()
            else:
                self.rejected.labels(status).inc()
        self.count_alerts(alerts)
        if evicted:
            self.dedupe_evicted.inc(evicted)
        if seconds is not None:
            n = len(statuses) if events is None else events
            self.batch_seconds.observe(seconds)
            if n:
                self.event_seconds.observe(seconds / n)

    def count_alerts(self, alerts: Iterable[Alert]) -> None:
        """Count published alerts by type, migrations by segment pair, churn by segment."""
        for alert in alerts:
            self.alerts.labels(alert.kind).inc()
            body = alert.body
            if alert.kind == "segment_migration":
                self.migrations.labels(
                    str(body.get("from_segment_name")), str(body.get("to_segment_name"))
                ).inc()
            elif alert.kind == "churn_risk":
                self.churn_alerts.labels(str(body.get("segment_name"))).inc()
            elif alert.kind == "segment_reassigned":
                self.reassignments.labels(
                    str(body.get("previous_segment_name")),
                    str(body.get("segment_name")),
                    str(body.get("model_version")),
                ).inc()

    def observe_shadow(
        self,
        tally: ShadowTally,
        names: Mapping[int, str],
        candidate_names: Mapping[int, str],
        agreement: float,
        churn_correlation: float,
    ) -> None:
        """One batch of shadow mode: segment pairs, would-be alerts, agreement gauges."""
        for (live, cand), n in tally.pairs.items():
            self.shadow_evaluations.labels(
                names.get(live, str(live)), candidate_names.get(cand, str(cand))
            ).inc(n)
        for kind, n in tally.alerts.items():
            self.shadow_alerts.labels(kind).inc(n)
        self.shadow_agreement.set(agreement)
        self.shadow_churn_correlation.set(churn_correlation)

    def set_shadow_model(self, version: str) -> None:
        self.shadow_info.clear()
        self.shadow_info.labels(version).set(1)

    def reject(self, reason: str) -> None:
        """Count one event sent to the dead-letter topic."""
        self.rejected.labels(reason).inc()

    def store_time(self, operation: str, seconds: float) -> None:
        self.store_seconds.labels(operation).observe(seconds)

    def declare_segments(self, names: Iterable[str]) -> None:
        """Create every segment-labelled series of a bundle at 0, so a dashboard draws a
        rate from the first scrape instead of "No data" until the first migration.

        Call it at start and after a model reload with the bundle's segment names (values
        of `Bundle.segment_names`); series already there keep their values, and the
        series of segments a previous bundle had stay (counters never go back).

        >>> from prometheus_client import CollectorRegistry
        >>> m = Metrics(CollectorRegistry())
        >>> m.declare_segments(["Loyal", "Casual"])
        >>> m.registry.get_sample_value(
        ...     "segstream_segment_migrations_total",
        ...     {"from_segment": "Casual", "to_segment": "Loyal"})
        0.0
        """
        segments = sorted({str(name) for name in names})
        for name in segments:
            self.churn_alerts.labels(name)
            for other in segments:
                if other != name:
                    self.migrations.labels(name, other)
        for kind in ALERT_TYPES:
            self.alerts.labels(kind)

    def set_population(self, counts: Mapping[int, int], names: Mapping[int, str]) -> None:
        """Segment sizes from `AssignmentStore.population`, labelled by segment name."""
        for segment, name in names.items():
            self.population.labels(name).set(counts.get(segment, 0))

    def set_stages(self, counts: Mapping[str, int]) -> None:
        """Customers per lifecycle stage, every stage shown (0 when none)."""
        for stage in STAGES:
            self.stages.labels(stage).set(counts.get(stage, 0))

    def set_drift(self, drift: Sequence[float], segment_ids: Sequence[int],
                  names: Mapping[int, str]) -> None:  # fmt: skip
        for segment, value in zip(segment_ids, drift, strict=True):
            self.drift.labels(names.get(segment, str(segment))).set(float(value))

    def set_model(self, version: str) -> None:
        """Mark `version` as the model in use (the previous version's series is removed)."""
        if version == self._version:
            return
        if self._version:
            self.model_info.remove(self._version)
        self.model_info.labels(version).set(1)
        self._version = version

    def set_lag(self, partition: int, lag: int) -> None:
        self.lag.labels(str(partition)).set(max(lag, 0))

    def set_psi(self, psi: float) -> None:
        self.psi.set(psi)

    def redis_error(self) -> None:
        self.redis_errors.inc()

    def save_fenced(self) -> None:
        self.fenced.inc()


__all__ = ["ALERT_TYPES", "REJECT_REASONS", "Metrics"]
