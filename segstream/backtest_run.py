"""Running a history for a backtest: the replay engine, plus every daily churn score.

Owns `run_history`, which calls `stream.replay.replay` (the very same engine and event-time
clock as `segstream replay`) under a scratch key prefix that it deletes afterwards, and
`ScoringEngine`, an `Engine` that also keeps each customer's churn probability at every
daily re-score. The alerts alone cannot give a threshold sweep: a customer whose
probability stayed just under the bundle's threshold never produced one. The decision
logic (`stream.decide`) is untouched; the scores are read from the public `BatchResult`
that `Engine.rescore` returns.

The evaluation itself is pure and lives in `segstream.backtest`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from models.eventfile import read_events
from models.mapping import HistoryMapping
from stream.decide import Rules
from stream.detect import TIE_NATS
from stream.engine import BatchResult, Engine
from stream.health import HealthMonitor
from stream.replay import ReplaySummary, replay
from stream.runtime import drop_prefix, open_runtime
from stream.settings import StreamSettings


class ScoringEngine(Engine):
    """An `Engine` that records (customer, time, churn probability, segment, raw nearest
    centroid) per re-score; the nearest tells where a migrating customer settled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scores: list[tuple[str, float, float, int, int]] = []

    @classmethod
    def like(cls, engine: Engine, rules: Rules | None = None) -> ScoringEngine:
        """The same stores, bundle and online centers as `engine` (optionally other rules)."""
        return cls(
            engine.catalog,
            engine.features,
            engine.assignments,
            engine.bundle,
            rules=rules or engine.rules,
            centers=engine.centers,
            centers_halflife=engine.centers_halflife,
            centers_memory_days=engine.centers_memory_days,
            psi_window=engine.psi_window,
            rescore_batch=engine.rescore_batch,
        )

    async def rescore(
        self, now: float, partitions: Sequence[int] = (0,), limit: int | None = None
    ) -> BatchResult:
        result = await super().rescore(now, partitions, limit)
        values = result.features.values if result.features is not None else None
        if values is None or not len(result.rows):
            return result
        nearest = self.bundle.nearest(values).tolist()
        self.scores += [
            (row.customer_id, row.at, p, seg, near)
            for row, p, seg, near in zip(
                result.rows, result.churn, result.segments, nearest, strict=True
            )
        ]
        return result


@dataclass
class HistoryRun:
    """What the engine decided over a history, as frames for `segstream.backtest`."""

    alerts: pd.DataFrame  # one row per alert: the alert body's fields, `at` in Unix seconds
    scores: pd.DataFrame  # customer_id, at, probability, segment: every daily re-score
    summary: ReplaySummary
    bundle_threshold: float
    churn_horizon_days: float
    qualifying_types: list[str]
    segment_names: dict[int, str]
    rules: Rules


def alerts_frame(path: Path) -> pd.DataFrame:
    """The alerts of a replay's JSONL output, one row per alert with `at` (Unix seconds)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["type", "customer_id", "event_time"])
    when = pd.to_datetime(frame["event_time"], utc=True, format="ISO8601")
    frame["at"] = (when - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return frame


def events_table(path: Path, mapping: HistoryMapping | None = None) -> pd.DataFrame:
    """The history's valid events as (customer_id, type, ts), one row per event id."""
    seen: set[str] = set()
    rows = []
    for e in read_events(path, mapping=mapping):
        if e.event_id not in seen:
            seen.add(e.event_id)
            rows.append((e.customer_id, e.type, e.epoch))
    return pd.DataFrame(rows, columns=["customer_id", "type", "ts"]).astype(
        {"customer_id": object, "type": object, "ts": float}
    )


async def run_history(
    settings: StreamSettings,
    events: Path,
    model: Path,
    alerts_out: Path,
    *,
    rules: Rules | None = None,
    batch_size: int = 1000,
    mapping: HistoryMapping | None = None,
) -> HistoryRun:
    """Replay `events` through the engine with `model`; keep the alerts and churn scores.

    Redis is `settings.redis_url`; the keys live under a fresh prefix, deleted at the end.
    """
    prefix = f"{settings.key_prefix}-backtest-{uuid.uuid4().hex[:8]}"
    runtime = await open_runtime(settings, model_path=model, prefix=prefix)
    try:
        engine = ScoringEngine.like(runtime.engine, rules)
        health = HealthMonitor(
            psi_threshold=settings.psi_threshold,
            psi_window=settings.psi_window,
            drift_bound=settings.drift_bound,
        )
        summary = await replay(
            engine, events, alerts_out, batch_size=batch_size, health=health, mapping=mapping
        )
    finally:
        await drop_prefix(runtime.connection, prefix)
        await runtime.close()
    bundle = engine.bundle
    chosen = bundle.manifest.get("settings", {})
    scores = pd.DataFrame(
        engine.scores, columns=["customer_id", "at", "probability", "segment", "nearest"]
    ).astype(
        {"customer_id": object, "at": float, "probability": float, "segment": int, "nearest": int}
    )
    return HistoryRun(
        alerts=alerts_frame(alerts_out),
        scores=scores,
        summary=summary,
        bundle_threshold=float(bundle.churn_threshold),
        churn_horizon_days=float(chosen.get("churn_horizon_days", 30)),
        qualifying_types=list(chosen.get("qualifying_types", [])),
        segment_names=dict(bundle.segment_names),
        rules=engine.rules,
    )


def backtest(
    settings: StreamSettings,
    events: Path,
    model: Path,
    out: Path,
    *,
    truth: Path | None = None,
    start: str | None = None,
    end: str | None = None,
    rules: Rules | None = None,
    batch_size: int = 1000,
    mapping: HistoryMapping | None = None,
) -> tuple[dict[str, Any], HistoryRun]:
    """Replay `events` with `model` and judge the alerts between `start` and `end`.

    `mapping` reads a foreign CSV or Parquet log (`models.mapping`), for both the replay
    and the churn judgement.
    `start` defaults to the bundle's as-of time, `end` to the last event. Writes
    `out/alerts.jsonl`; returns the figures (what `metrics.json` holds) and the run.
    Raises `BundleError`, `TruthError`, `RedisUnavailable` or `ValueError` with the reason.
    """
    import asyncio

    from models.catalog import load_catalog
    from models.events import parse_time
    from segstream.backtest import evaluate, read_truth
    from stream.runtime import load_model

    bundle = load_model(settings, load_catalog(settings.config_file), model)
    table = events_table(events, mapping)
    changes = (
        read_truth(truth, table["customer_id"].unique(), bundle.segment_names) if truth else None
    )
    t0 = parse_time(start or str(bundle.manifest["as_of"]))
    t1 = parse_time(end) if end else float(table["ts"].max())
    if t1 <= t0:
        raise ValueError(f"--to ({t1}) must be after --from ({t0})")
    out.mkdir(parents=True, exist_ok=True)
    run = asyncio.run(
        run_history(
            settings,
            events,
            model,
            out / "alerts.jsonl",
            rules=rules,
            batch_size=batch_size,
            mapping=mapping,
        )
    )
    metrics = evaluate(
        run.alerts,
        run.scores,
        table,
        start=t0,
        end=t1,
        horizon_days=run.churn_horizon_days,
        threshold=run.bundle_threshold,
        cooldown_days=run.rules.churn_cooldown_days,
        qualifying_types=run.qualifying_types,
        truth=changes,
        settling_days=run.rules.early_days + run.rules.migration_dwell_days,
        clear_nats=TIE_NATS,
    )
    metrics["model_version"] = bundle.version
    metrics["segment_names"] = {str(k): v for k, v in sorted(bundle.segment_names.items())}
    metrics["rules"] = {
        "migration_margin": run.rules.migration_margin,
        "migration_dwell_days": run.rules.migration_dwell_days,
        "migration_detector": run.rules.migration_detector,
        "migration_evidence": run.rules.migration_evidence,
        "churn_cooldown_days": run.rules.churn_cooldown_days,
        "early_days": run.rules.early_days,
    }
    return metrics, run
