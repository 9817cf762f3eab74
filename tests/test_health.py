"""Model-health alerts: population shift on a rising edge, retrain once per model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from stream.engine import Engine
from stream.health import HealthMonitor

DAY = 86_400.0


@dataclass
class StubBundle:
    version: str = "v1"
    segment_ids: list[int] = field(default_factory=lambda: [0, 1])
    segment_names: dict[int, str] = field(default_factory=lambda: {0: "Casual", 1: "Power"})


@dataclass
class StubCenters:
    moved: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def drift(self) -> np.ndarray:
        return np.array(self.moved)


@dataclass
class StubEngine:
    """Only what the monitor reads: the engine's own PSI and drift figures."""

    shift: dict[str, Any]
    bundle: StubBundle = field(default_factory=StubBundle)
    centers: StubCenters = field(default_factory=StubCenters)

    def population_shift(self) -> dict[str, Any]:
        return self.shift


def shift(psi: float, window: int = 1000) -> dict[str, Any]:
    return {
        "psi": psi,
        "window": window,
        "observed": {0: 0.9, 1: 0.1},
        "expected": {0: 0.5, 1: 0.5},
    }


def test_population_shift_fires_on_the_rising_edge_of_a_full_window() -> None:
    monitor = HealthMonitor(psi_threshold=0.25, psi_window=1000, drift_bound=1.0)
    engine = StubEngine(shift(0.9, window=999))
    assert monitor.check(cast(Engine, engine), 10 * DAY) == []  # window not full yet
    engine.shift = shift(0.9)
    first = monitor.check(cast(Engine, engine), 10 * DAY)
    assert [a.kind for a in first] == ["population_shift"]
    assert first[0].body["observed"] == {"Casual": 0.9, "Power": 0.1}
    assert monitor.check(cast(Engine, engine), 10.5 * DAY) == []  # still high: no repeat
    engine.shift = shift(0.1)
    assert monitor.check(cast(Engine, engine), 11 * DAY) == []
    engine.shift = shift(0.5)
    again = monitor.check(cast(Engine, engine), 12 * DAY)
    assert [a.kind for a in again] == ["population_shift"]
    assert again[0].body["alert_id"] != first[0].body["alert_id"]


def test_retrain_is_recommended_once_per_model_version() -> None:
    monitor = HealthMonitor(psi_threshold=0.25, psi_window=1000, drift_bound=1.0)
    engine = StubEngine(shift(0.0), centers=StubCenters([0.2, 0.9]))
    assert monitor.check(cast(Engine, engine), DAY) == []
    engine.centers.moved = [0.2, 1.3]
    alerts = monitor.check(cast(Engine, engine), 2 * DAY)
    assert [a.kind for a in alerts] == ["retrain_recommended"]
    assert alerts[0].body["drift"] == {"Casual": 0.2, "Power": 1.3}
    assert monitor.check(cast(Engine, engine), 3 * DAY) == []
    engine.bundle = StubBundle(version="v2")
    assert [a.kind for a in monitor.check(cast(Engine, engine), 4 * DAY)] == ["retrain_recommended"]
