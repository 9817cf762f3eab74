"""`stream.metrics.Metrics` on a fresh registry: names, labels and values per batch."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from stream.decide import Alert
from stream.metrics import Metrics


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_observe_counts_statuses_alerts_and_time(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    alerts = [
        Alert("segment_assigned", "c1", {"segment_name": "Casual"}),
        Alert(
            "segment_migration",
            "c2",
            {"from_segment_name": "Casual", "to_segment_name": "Power Users"},
        ),
        Alert("churn_risk", "c3", {"segment_name": "Casual"}),
        Alert("churn_risk", "c4", {"segment_name": "Casual"}),
        Alert(
            "segment_reassigned",
            "c5",
            {
                "previous_segment_name": "Casual",
                "segment_name": "Power Users",
                "model_version": "v2",
            },
        ),
    ]
    metrics.observe(
        ["applied", "applied", "duplicate", "too_late", "applied"],
        ["purchase", "purchase", "purchase", "session_start", "session_start"],
        alerts,
        seconds=0.5,
        events=5,
    )
    assert value(registry, "segstream_events_processed_total", type="purchase") == 2
    assert value(registry, "segstream_events_processed_total", type="session_start") == 1
    assert value(registry, "segstream_events_duplicate_total") == 1
    assert value(registry, "segstream_events_rejected_total", reason="too_late") == 1
    assert value(registry, "segstream_alerts_total", type="churn_risk") == 2
    assert value(registry, "segstream_alerts_total", type="segment_assigned") == 1
    assert value(registry, "segstream_churn_alerts_total", segment="Casual") == 2
    assert (
        value(
            registry,
            "segstream_segment_migrations_total",
            from_segment="Casual",
            to_segment="Power Users",
        )
        == 1
    )
    labels = {"from_segment": "Casual", "to_segment": "Power Users", "model_version": "v2"}
    assert value(registry, "segstream_segment_reassignments_total", **labels) == 1
    assert value(registry, "segstream_segment_migrations_total", **labels) is None
    assert value(registry, "segstream_batch_seconds_count") == 1
    assert value(registry, "segstream_batch_seconds_sum") == pytest.approx(0.5)
    assert value(registry, "segstream_event_seconds_sum") == pytest.approx(0.1)


def test_gauges(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    names = {0: "Casual", 1: "Big Spenders"}
    metrics.set_population({0: 12, 1: 3}, names)
    metrics.set_drift([0.25, 1.5], [0, 1], names)
    metrics.set_lag(3, 42)
    metrics.set_lag(4, -1)  # nothing read yet past the highwater: never negative
    metrics.set_psi(0.31)
    metrics.set_model("v1")
    metrics.set_model("v2")
    metrics.reject("not_json")
    metrics.redis_error()
    metrics.store_time("population", 0.002)
    assert value(registry, "segstream_segment_population", segment="Casual") == 12
    assert value(registry, "segstream_segment_population", segment="Big Spenders") == 3
    assert value(registry, "segstream_centroid_drift", segment="Big Spenders") == 1.5
    assert value(registry, "segstream_consumer_lag", partition="3") == 42
    assert value(registry, "segstream_consumer_lag", partition="4") == 0
    assert value(registry, "segstream_population_psi") == pytest.approx(0.31)
    assert value(registry, "segstream_model_info", version="v1") is None
    assert value(registry, "segstream_model_info", version="v2") == 1
    assert value(registry, "segstream_events_rejected_total", reason="not_json") == 1
    assert value(registry, "segstream_redis_errors_total") == 1
    assert value(registry, "segstream_store_seconds_count", operation="population") == 1


def test_two_instances_do_not_collide() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a).reject("missing")
    Metrics(b)
    assert value(a, "segstream_events_rejected_total", reason="missing") == 1
    assert value(b, "segstream_events_rejected_total", reason="missing") is None
    text = generate_latest(a).decode()
    assert all(line.startswith(("#", "segstream_")) for line in text.splitlines() if line)


def test_event_types_outside_the_known_ones_count_as_other(registry: CollectorRegistry) -> None:
    """A producer sending a new type per event must not create a series per type."""
    metrics = Metrics(registry)
    metrics.known_types = frozenset({"purchase", "custom_click"})
    types = ["purchase", "custom_click", *(f"made-up-{i}" for i in range(500))]
    metrics.observe(["applied"] * len(types), types, [])
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith("segstream_events_processed_")]
    assert len([s for s in series if s.startswith("segstream_events_processed_total")]) == 3
    assert value(registry, "segstream_events_processed_total", type="other") == 500
    assert value(registry, "segstream_events_processed_total", type="custom_click") == 1
