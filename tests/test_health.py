"""Model-health alerts: population shift on a rising edge, retrain once per model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from models.bundle import Bundle
from stream.health import HealthMonitor

DAY = 86_400.0


@dataclass
class StubBundle:
    version: str = "v1"
    segment_ids: list[int] = field(default_factory=lambda: [0, 1])
    segment_names: dict[int, str] = field(default_factory=lambda: {0: "Casual", 1: "Power"})


def check(
    monitor: HealthMonitor, psi: dict[str, Any], at: float, drift: tuple[float, float] = (0, 0),
    bundle: StubBundle | None = None,
) -> list[Any]:  # fmt: skip
    """The monitor's verdict on the figures the engine keeps (PSI, center drift)."""
    return monitor.check(cast(Bundle, bundle or StubBundle()), psi, np.array(drift), at)


def shift(psi: float, window: int = 1000) -> dict[str, Any]:
    return {
        "psi": psi,
        "window": window,
        "observed": {0: 0.9, 1: 0.1},
        "expected": {0: 0.5, 1: 0.5},
    }


def test_population_shift_fires_on_the_rising_edge_of_a_full_window() -> None:
    monitor = HealthMonitor(psi_threshold=0.25, psi_window=1000, drift_bound=1.0)
    assert check(monitor, shift(0.9, window=999), 10 * DAY) == []  # window not full yet
    first = check(monitor, shift(0.9), 10 * DAY)
    assert [a.kind for a in first] == ["population_shift"]
    assert first[0].body["observed"] == {"Casual": 0.9, "Power": 0.1}
    assert check(monitor, shift(0.9), 10.5 * DAY) == []  # still high: no repeat
    assert check(monitor, shift(0.1), 11 * DAY) == []
    again = check(monitor, shift(0.5), 12 * DAY)
    assert [a.kind for a in again] == ["population_shift"]
    assert again[0].body["alert_id"] != first[0].body["alert_id"]


def test_no_retrain_is_recommended_before_the_window_is_full() -> None:
    """A worker on an empty store learns from partial histories at first: its drift is not
    judged until the PSI window is full (of customers with full windows)."""
    monitor = HealthMonitor(psi_threshold=0.25, psi_window=1000, drift_bound=1.0)
    assert check(monitor, shift(0.0, window=10), DAY, drift=(0.2, 5.0)) == []
    alerts = check(monitor, shift(0.0, window=1000), 2 * DAY, drift=(0.2, 5.0))
    assert [a.kind for a in alerts] == ["retrain_recommended"]


def test_retrain_is_recommended_once_per_model_version() -> None:
    monitor = HealthMonitor(psi_threshold=0.25, psi_window=1000, drift_bound=1.0)
    assert check(monitor, shift(0.0), DAY, drift=(0.2, 0.9)) == []
    alerts = check(monitor, shift(0.0), 2 * DAY, drift=(0.2, 1.3))
    assert [a.kind for a in alerts] == ["retrain_recommended"]
    assert alerts[0].body["drift"] == {"Casual": 0.2, "Power": 1.3}
    assert check(monitor, shift(0.0), 3 * DAY, drift=(0.2, 1.3)) == []
    v2 = StubBundle(version="v2")
    again = check(monitor, shift(0.0), 4 * DAY, drift=(0.2, 1.3), bundle=v2)
    assert [a.kind for a in again] == ["retrain_recommended"]
