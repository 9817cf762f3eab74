"""`segstream replay`: the engine over a generated history, judged by its ground truth.

The bundle is trained on the first 100 days of a 150-day history; the alerts decided in
the 50 days after the training date are compared with what the generator did. Before
that date the replay starts from an empty store, so windows are still filling (warm-up).
"""

from __future__ import annotations

import gc
import json
import shutil
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from models.bundle import resolve_current
from models.catalog import default_catalog
from models.eventfile import read_events
from offline.reference import events_frame, features_at
from segstream.cli import app
from stream.metrics import Metrics
from stream.partition import partition_of
from stream.redis_conn import Connection
from stream.runtime import drop_prefix, open_runtime
from stream.settings import StreamSettings
from stream.store import RedisAssignmentStore
from stream.worker import Worker
from tests.support import open_store, run

AS_OF = "2026-04-10T00:00:00Z"
END = pd.Timestamp("2026-05-31T00:00:00Z")
REQUIRED = {"schema_version", "alert_id", "type", "customer_id", "event_time", "model_version"}

runner = CliRunner()


def invoke(*args: str, env: dict[str, str]) -> str:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def replayed(trained_history: Path, replayed_history: str) -> Path:
    """The seed-21 history (trained at AS_OF, tests/conftest.py) replayed once: its
    alerts.jsonl and state.csv."""
    return trained_history


def load_alerts(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_customer_gets_one_first_segment(replayed: Path) -> None:
    alerts = load_alerts(replayed / "alerts.jsonl")
    truth = pd.read_csv(replayed / "truth.csv")
    firsts = Counter(
        a["customer_id"] for a in alerts if a["type"] == "segment_assigned" and a["first"]
    )
    assert set(firsts) == set(truth["customer_id"])
    assert set(firsts.values()) == {1}
    assert all(a.keys() >= REQUIRED for a in alerts)
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids)), "alert ids must be unique per decision"


def test_alerts_after_training_match_the_ground_truth(replayed: Path) -> None:
    """Measured on this seed: churn recall 0.98 with 9% of stable customers alerted;
    migration recall 0.93 with 12% of stable customers alerted (0.08 per 30 days).
    The bounds leave room for model noise, not for an alert storm."""
    as_of = pd.Timestamp(AS_OF)
    alerts = [
        a
        for a in load_alerts(replayed / "alerts.jsonl")
        if pd.Timestamp(str(a["event_time"])) > as_of
    ]
    truth = pd.read_csv(replayed / "truth.csv")
    churn_day = pd.to_datetime(truth["churn_day"], utc=True)
    migration_day = pd.to_datetime(truth["migration_day"], utc=True)
    stable = set(truth.loc[churn_day.isna() & migration_day.isna(), "customer_id"])
    churned = set(
        truth.loc[
            churn_day.notna() & (churn_day > as_of) & (churn_day < END - pd.Timedelta(days=14)),
            "customer_id",
        ]
    )
    migrated = set(truth.loc[migration_day.notna() & (migration_day > as_of), "customer_id"])
    churn_alerted = {a["customer_id"] for a in alerts if a["type"] == "churn_risk"}
    moved = {a["customer_id"] for a in alerts if a["type"] == "segment_migration"}
    assert len(churned) >= 20 and len(migrated) >= 20
    assert len(churned & churn_alerted) / len(churned) >= 0.8
    assert len(stable & churn_alerted) / len(stable) <= 0.2
    assert len(migrated & moved) / len(migrated) >= 0.7
    assert len(stable & moved) / len(stable) <= 0.25
    for alert in alerts:
        if alert["type"] == "segment_migration":
            drivers = alert["drivers"]
            assert isinstance(drivers, list) and len(drivers) == 3
            assert alert["from_segment_id"] != alert["to_segment_id"]
        if alert["type"] == "churn_risk":
            assert float(alert["probability"]) >= float(alert["threshold"])  # type: ignore[arg-type]


def test_state_holds_every_feature_as_the_reference_computes_it(replayed: Path) -> None:
    state = pd.read_csv(replayed / "state.csv").set_index("customer_id")
    catalog = default_catalog()
    assert list(state.columns) == ["segment_id", "segment_name", "churn_risk", *catalog.names]
    events = list(read_events(replayed / "events.jsonl"))
    at = max(e.epoch for e in events)
    expected = features_at(events_frame(events, catalog), catalog, at)
    got = state.loc[expected.index, list(catalog.names)].to_numpy()
    np.testing.assert_allclose(got, expected.to_numpy(), rtol=1e-9, atol=1e-6)
    assert state["segment_id"].notna().all()
    assert state["churn_risk"].between(0, 1).all()


def test_alerts_do_not_depend_on_the_batch_size_or_the_rescore_step(
    replayed: Path, tmp_path: Path, embedded_redis_url: str
) -> None:
    """Cutting the events into other batches, or the midnight re-score into steps of 7
    customers (everybody due is still re-scored at that midnight), changes no alert."""
    head = tmp_path / "head.jsonl"
    lines = (replayed / "events.jsonl").read_text().splitlines(keepends=True)
    head.write_text("".join(lines[:15_000]))
    runs = []
    frozen = gc.get_freeze_count()
    for size, step in (("1000", "5000"), ("173", "5000"), ("1000", "7")):
        out = tmp_path / f"alerts-{size}-{step}.jsonl"
        invoke(
            "replay", "--events", str(head), "--model", str(replayed / "models/current"),
            "--alerts-out", str(out), "--batch-size", size,
            env={"SEGSTREAM_REDIS_URL": embedded_redis_url,
                 "SEGSTREAM_RESCORE_BATCH_SIZE": step},
        )  # fmt: skip
        runs.append(sorted(out.read_text().splitlines()))
    assert runs[0] == runs[1] == runs[2]
    assert len(runs[0]) > 100
    # A replay freezes the objects it found (out of the cycle collector) only while it runs.
    assert gc.get_freeze_count() == frozen
    # Some were decided by midnight re-scores (their event time is the midnight).
    assert any('T00:00:00Z"' in line for line in runs[0])


def test_hot_reload_under_traffic_loses_nothing_and_refuses_a_bad_bundle(
    replayed: Path, tmp_path: Path, embedded_redis_url: str
) -> None:
    """The worker switches bundles between batches: every event still counts exactly
    once, alerts after the switch carry the new version, a tampered bundle is refused."""
    models = tmp_path / "models"
    shutil.copytree(replayed / "models", models, symlinks=True)
    settings = StreamSettings(redis_url=embedded_redis_url, model_dir=models)
    events = list(read_events(replayed / "events.jsonl"))[:20_000]
    catalog = default_catalog()

    async def body() -> None:
        runtime = await open_runtime(settings, prefix=f"reload-{uuid.uuid4().hex[:8]}")
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        worker = Worker(runtime.engine, settings, metrics)
        engine = runtime.engine
        first = engine.bundle.version
        alerts_after = []
        try:
            for i in range(0, len(events), 1000):
                if i == 10_000:
                    invoke(
                        "train", "--events", str(replayed / "events.jsonl"), "--as-of", AS_OF,
                        "--out", str(models), "--seed", "1", env={},
                    )  # fmt: skip
                    assert await worker.check_model()
                result = await engine.process(events[i : i + 1000])
                await engine.save(result)
                if i >= 10_000:
                    alerts_after += result.alerts
            second = engine.bundle.version
            assert second != first
            assert alerts_after and {a.body["model_version"] for a in alerts_after} == {second}
            at = events[-1].epoch
            expected = features_at(events_frame(events, catalog), catalog, at)
            got = await engine.features.read(list(expected.index), at=at)
            np.testing.assert_allclose(
                got.values, expected.loc[got.customers].to_numpy(), rtol=1e-9, atol=1e-9
            )
            # A bundle altered after it was hashed is refused; the model in service stays.
            bad = models / "tampered"
            shutil.copytree(resolve_current(models), bad)
            (bad / "model.json").write_text((bad / "model.json").read_text().replace("1", "2"))
            link = models / ".current-tmp"
            link.symlink_to("tampered", target_is_directory=True)
            link.replace(models / "current")
            assert not await worker.check_model()
            assert engine.bundle.version == second
            refused = registry.get_sample_value(
                "segstream_model_reloads_total", {"outcome": "refused"}
            )
            assert refused == 1.0
        finally:
            await drop_prefix(runtime.connection, engine.features.prefix)
            await runtime.close()

    run(body())


def test_backfill_writes_the_live_prefix_and_keeps_it(
    replayed: Path, tmp_path: Path, embedded_redis_url: str
) -> None:
    head = tmp_path / "head.jsonl"
    lines = (replayed / "events.jsonl").read_text().splitlines(keepends=True)
    head.write_text("".join(lines[:5_000]))
    prefix = f"live-{uuid.uuid4().hex[:8]}"
    env = {"SEGSTREAM_REDIS_URL": embedded_redis_url, "SEGSTREAM_KEY_PREFIX": prefix}
    invoke(
        "replay", "--events", str(head), "--model", str(replayed / "models/current"),
        "--alerts-out", str(tmp_path / "alerts.jsonl"), "--backfill", env=env,
    )  # fmt: skip
    events = list(read_events(head))
    catalog = default_catalog()
    at = max(e.epoch for e in events)
    expected = features_at(events_frame(events, catalog), catalog, at)

    async def body() -> None:
        async with open_store(embedded_redis_url, catalog, prefix) as store:
            got = await store.read(list(expected.index), at=at)
            np.testing.assert_allclose(
                got.values, expected.loc[got.customers].to_numpy(), rtol=1e-9, atol=1e-9
            )
            assert sorted(got.customers) == list(expected.index)
            states = RedisAssignmentStore(store.client, prefix=prefix, ttl_seconds=60)
            assert len(await states.load(got.customers)) == len(got.customers)
            # Each customer's re-score waits in the partition its events are produced to,
            # where the worker owning that partition finds it.
            n = StreamSettings().input_partitions
            scheduled = {
                member.decode(): p
                for p in range(n)
                for member in await store.client.zrange(states.due_key(p), 0, -1)
            }
            assert scheduled == {c: partition_of(c, n) for c in got.customers}
            assert len(set(scheduled.values())) == n
            await drop_prefix(Connection(store.client, embedded_redis_url), prefix)

    run(body())
