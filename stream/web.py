"""The read API: a customer's segment, churn risk and features, on faust's web server.

``GET /customers/{customer_id}`` answers
``{customer_id, segment_id, segment_name, churn_risk, features, evaluated_at}`` with the
features evaluated now (the worker's clock: wall clock, or the event-time watermark),
and 404 with ``{"error": ...}`` for a customer the store does not know.

``GET /alerts/recent?limit=N`` answers the last N (default 50, at most `RECENT`) alerts
this worker published, newest first, one flat row each (`alert_row`): what Grafana's
Infinity data source draws as a table, since Prometheus holds counts, not alert rows.
Kept in memory by `RecentAlerts`, which `stream.app` feeds from its publish callback;
per worker process, so with several workers each answers for its own partitions.

`customer_view` is the pure-ish query over the engine; `register` mounts both on an app.
Business rules stay in the engine and the bundle.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import faust
import numpy as np

from models.bundle import BundleError
from stream.decide import iso
from stream.engine import Engine
from stream.pipeline import Pipeline

#: Alerts `RecentAlerts` keeps (the most `GET /alerts/recent` can return).
RECENT = 200


class _Record(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def value(self) -> bytes: ...


def alert_row(body: dict[str, Any]) -> dict[str, Any]:
    """One published alert as a flat table row: time, type, customer, what happened.

    >>> alert_row({"type": "segment_migration", "event_time": "2026-05-17T10:00:00Z",
    ...     "customer_id": "c0042", "from_segment_name": "Casual", "to_segment_name": "Loyal",
    ...     "model_version": "v1", "alert_id": "a1"})["detail"]
    'Casual -> Loyal'
    """
    kind = str(body.get("type", ""))
    if kind == "segment_migration":
        detail = f"{body.get('from_segment_name')} -> {body.get('to_segment_name')}"
    elif kind == "churn_risk":
        detail = f"P(churn) {float(body.get('probability', 0.0)):.2f} in {body.get('segment_name')}"
    elif kind == "population_shift":
        detail = f"PSI {body.get('psi')} > {body.get('threshold')}"
    elif kind == "retrain_recommended":
        detail = f"centroid drift {body.get('max_drift')} > {body.get('drift_bound')}"
    else:
        detail = str(body.get("segment_name") or "")
    return {
        "event_time": body.get("event_time"),
        "type": kind,
        "customer_id": body.get("customer_id"),
        "detail": detail,
        "model_version": body.get("model_version"),
        "alert_id": body.get("alert_id"),
    }


class RecentAlerts:
    """The last `size` alerts published to `topics`, newest first.

    >>> recent = RecentAlerts({"churn-alerts"}, size=2)
    >>> from stream.worker import Output
    >>> recent.record([Output("churn-alerts", "c1", b'{"type": "churn_risk", "probability": 0.9,'
    ...     b' "segment_name": "Loyal", "customer_id": "c1"}'), Output("events-dlq", "x", b"{}")])
    >>> [row["detail"] for row in recent.rows(10)]
    ['P(churn) 0.90 in Loyal']
    """

    def __init__(self, topics: Iterable[str], size: int = RECENT) -> None:
        self.topics = frozenset(topics)
        self._rows: deque[dict[str, Any]] = deque(maxlen=size)

    def record(self, outputs: Iterable[_Record]) -> None:
        """Keep the alerts among published records (other topics are ignored)."""
        for out in outputs:
            if out.topic not in self.topics:
                continue
            try:
                body = json.loads(out.value)
            except ValueError:
                continue
            if isinstance(body, dict):
                self._rows.appendleft(alert_row(body))

    def rows(self, limit: int) -> list[dict[str, Any]]:
        return list(self._rows)[: max(limit, 0)]


async def customer_view(engine: Engine, customer_id: str, *, now: float) -> dict[str, Any] | None:
    """The customer's current view at time `now`, or None when the store does not know it."""
    feats = await engine.features.read([customer_id], at=now)
    row = feats.row(customer_id)
    if row is None:
        return None
    states = await engine.assignments.load([customer_id])
    state = states.get(customer_id)
    segment = state.segment if state is not None else None
    try:
        churn: float | None = float(engine.bundle.churn_probability(feats.values)[0])
    except BundleError:  # a bundle without a churn model
        churn = None
    return {
        "customer_id": customer_id,
        "segment_id": segment,
        "segment_name": engine.bundle.segment_names.get(segment) if segment is not None else None,
        "lifecycle_stage": state.stage if state is not None else None,
        "churn_risk": None if churn is None else round(churn, 6),
        "features": {k: (v if math.isfinite(v) else None) for k, v in row.items()},
        "evaluated_at": iso(float(np.asarray(feats.at)[0])),
        "model_version": engine.bundle.version,
    }


def register(app: faust.App, pipeline: Pipeline, recent: RecentAlerts | None = None) -> None:
    """Mount the read API on `app`'s web server (``/alerts/recent`` when `recent` is given)."""

    @app.page("/customers/{customer_id}")
    class CustomerPage(faust.web.View):  # type: ignore[misc]
        async def get(self, request: Any, customer_id: str) -> Any:
            core = await pipeline.worker()
            body = await customer_view(core.engine, customer_id, now=core.now())
            if body is None:
                return self.json({"error": f"unknown customer {customer_id!r}"}, status=404)
            return self.json(body)

    if recent is None:
        return
    alerts = recent

    @app.page("/alerts/recent")
    class RecentPage(faust.web.View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            try:
                limit = int(request.query.get("limit", 50))
            except ValueError:
                return self.json({"error": "limit must be an integer"}, status=400)
            return self.json(alerts.rows(limit))
