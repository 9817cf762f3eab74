"""The read API: a customer's segment, churn risk and features, on faust's web server.

``GET /customers/{customer_id}`` answers
``{customer_id, segment_id, segment_name, churn_risk, features, evaluated_at}`` with the
features evaluated now (the worker's clock: wall clock, or the event-time watermark),
and 404 with ``{"error": ...}`` for a customer the store does not know.

`customer_view` is the pure-ish query over the engine; `register` mounts it on an app.
Business rules stay in the engine and the bundle.
"""

from __future__ import annotations

import math
from typing import Any

import faust
import numpy as np

from models.bundle import BundleError
from stream.decide import iso
from stream.engine import Engine
from stream.pipeline import Pipeline


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


def register(app: faust.App, pipeline: Pipeline) -> None:
    """Mount the read API on `app`'s web server."""

    @app.page("/customers/{customer_id}")
    class CustomerPage(faust.web.View):  # type: ignore[misc]
        async def get(self, request: Any, customer_id: str) -> Any:
            core = await pipeline.worker()
            body = await customer_view(core.engine, customer_id, now=core.now())
            if body is None:
                return self.json({"error": f"unknown customer {customer_id!r}"}, status=404)
            return self.json(body)
