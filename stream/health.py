"""Model-health alerts: a population shift and a recommended retrain.

`HealthMonitor.check` judges the figures the engine keeps, handed in: the population
stability index of the recent assignments against the bundle's segment shares (a rising
edge over the threshold, judged only on a full window) and the drift of the online centers
from the bundle's centroids (past the bound, once per model version). Pure: the step
runner (`stream.runner`) calls it for replay and the live worker alike, and they publish
what it returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.bundle import Bundle
from stream.decide import DAY, SCHEMA_VERSION, Alert, alert_id, iso


class HealthMonitor:
    """Remembers what it already raised, so each condition alerts once per episode."""

    def __init__(self, *, psi_threshold: float, psi_window: int, drift_bound: float) -> None:
        self.psi_threshold = psi_threshold
        self.psi_window = psi_window
        self.drift_bound = drift_bound
        self.psi = 0.0
        self.drift = np.empty(0)
        self._psi_high = False
        self._retrain_sent: set[str] = set()

    def check(
        self, bundle: Bundle, shift: dict[str, Any], drift: np.ndarray, at: float
    ) -> list[Alert]:
        """Alerts due at time `at` (also updates `psi`, `drift`).

        `shift` is `Engine.population_shift()`, `drift` the online centers' distance
        from the bundle's centroids per segment (`OnlineCenters.drift()`).
        """
        alerts: list[Alert] = []
        names = bundle.segment_names
        self.psi = float(shift["psi"])
        # PSI over a part-filled window is noise: judge only a full window.
        high = shift["window"] >= self.psi_window and self.psi > self.psi_threshold
        if high and not self._psi_high:
            body = self._body(bundle.version, "population_shift", f"psi:{int(at // DAY)}", at)
            body.update(
                psi=round(self.psi, 4),
                threshold=self.psi_threshold,
                window=shift["window"],
                observed={names.get(s, str(s)): round(v, 4) for s, v in shift["observed"].items()},
                expected={names.get(s, str(s)): round(v, 4) for s, v in shift["expected"].items()},
            )
            alerts.append(Alert("population_shift", bundle.version, body))
        self._psi_high = high
        self.drift = np.asarray(drift, dtype=float)
        # Judged, like the PSI, once the window is full of customers with full windows: a
        # worker that starts on an empty store learns from partial histories at first.
        full = shift["window"] >= self.psi_window
        if full and self.drift.size and bundle.version not in self._retrain_sent:
            worst = float(self.drift.max())
            if worst > self.drift_bound:
                body = self._body(bundle.version, "retrain_recommended", "drift", at)
                body.update(
                    max_drift=round(worst, 4),
                    drift_bound=self.drift_bound,
                    drift={
                        names.get(s, str(s)): round(float(d), 4)
                        for s, d in zip(bundle.segment_ids, self.drift, strict=True)
                    },
                )
                alerts.append(Alert("retrain_recommended", bundle.version, body))
                self._retrain_sent.add(bundle.version)
        return alerts

    @staticmethod
    def _body(version: str, kind: str, trigger: str, at: float) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "alert_id": alert_id(kind, "", version, trigger),
            "type": kind,
            "customer_id": None,  # about the whole population, not one customer
            "event_time": iso(at),
            "model_version": version,
        }
