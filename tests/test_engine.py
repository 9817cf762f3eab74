"""The engine's daily re-score schedule, on a real Redis with a small bundle."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from models.bundle import load_bundle
from models.events import Event
from stream.engine import AssignmentStore, Engine
from stream.redis_conn import connect
from stream.replay import replay
from stream.runtime import drop_prefix
from stream.store import RedisFeatureStore, feature_key
from tests.support import run
from tests.test_bundle import CATALOG, make_bundle

DAY = 86_400.0


def ev(eid: str, cid: str, ts: str) -> Event:
    return Event.model_validate(
        {"event_id": eid, "customer_id": cid, "type": "session_start", "ts": ts}
    )


def test_expired_customers_leave_the_schedule(tmp_path: Path, embedded_redis_url: str) -> None:
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    prefix = f"engine-{uuid.uuid4().hex[:8]}"

    async def body() -> None:
        conn = await connect(embedded_redis_url)
        try:
            store = RedisFeatureStore(conn.client, CATALOG, prefix=prefix)
            states = AssignmentStore(conn.client, prefix=prefix, ttl_seconds=3600)
            engine = Engine(CATALOG, store, states, bundle)
            result = await engine.process(
                [ev("1", "kept", "2026-03-01T10:00:00Z"), ev("2", "gone", "2026-03-01T11:00:00Z")]
            )
            await engine.save(result)
            assert {r.customer_id for r in result.rows} == {"kept", "gone"}
            due_key = states.due_key(0)
            assert set(await conn.client.zrange(due_key, 0, -1)) == {b"kept", b"gone"}
            # As if "gone" had been silent past the retention: its features expired.
            await conn.client.delete(feature_key(prefix, "gone"))
            later = result.rows[0].at + 2 * DAY
            rescored = await engine.rescore(later)
            await engine.save(rescored)
            assert [r.customer_id for r in rescored.rows] == ["kept"]
            assert await conn.client.zrange(due_key, 0, -1) == [b"kept"]
            score = await conn.client.zscore(due_key, "kept")
            assert score == later + DAY  # re-scored: next check a day later
        finally:
            await drop_prefix(conn, prefix)
            await conn.close()

    run(body())


@pytest.mark.parametrize("step", [1, 5000])
def test_replay_rescores_every_customer_once_a_day(
    tmp_path: Path, embedded_redis_url: str, step: int
) -> None:
    """Both customers' first events are on March 1 at 10:00, so both are due from March 2
    at 10:00: the midnights of March 3, 4 and 5 re-score each once, in steps of 1 or all
    at once ("busy" too: its daily events do not postpone the check, see `save`)."""
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    prefix = f"engine-{uuid.uuid4().hex[:8]}"
    rows = [("q1", "quiet", 1)] + [(f"b{d}", "busy", d) for d in range(1, 6)]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(
        json.dumps({"event_id": eid, "customer_id": cid, "type": "session_start",
                    "ts": f"2026-03-0{day}T10:00:00Z"}) + "\n"
        for eid, cid, day in rows
    ))  # fmt: skip

    async def body() -> int:
        conn = await connect(embedded_redis_url)
        try:
            store = RedisFeatureStore(conn.client, CATALOG, prefix=prefix)
            states = AssignmentStore(conn.client, prefix=prefix, ttl_seconds=3600)
            engine = Engine(CATALOG, store, states, bundle, rescore_batch=step)
            summary = await replay(engine, events, tmp_path / "alerts.jsonl")
            return summary.rescored
        finally:
            await drop_prefix(conn, prefix)
            await conn.close()

    assert run(body()) == 6


def test_features_and_states_are_saved_together_or_not_at_all(
    tmp_path: Path, embedded_redis_url: str
) -> None:
    """A batch writes nothing until `save`: a crash before it leaves the events new, so
    they are decided again into the same alerts; after it, they are duplicates."""
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    prefix = f"engine-{uuid.uuid4().hex[:8]}"
    batch = [ev("1", "c1", "2026-03-01T10:00:00Z"), ev("2", "c1", "2026-03-01T11:00:00Z")]

    async def body() -> None:
        conn = await connect(embedded_redis_url)
        try:
            store = RedisFeatureStore(conn.client, CATALOG, prefix=prefix)
            engine = Engine(CATALOG, store, AssignmentStore(conn.client, prefix=prefix,
                                                            ttl_seconds=3600), bundle)  # fmt: skip
            first = await engine.process(batch)
            assert await conn.client.get(feature_key(prefix, "c1")) is None  # staged only
            # "Crash": the result is dropped unsaved; a fresh engine sees new events.
            again = Engine(CATALOG, store, AssignmentStore(conn.client, prefix=prefix,
                                                           ttl_seconds=3600), bundle)  # fmt: skip
            second = await again.process(batch)
            assert second.statuses == ["applied", "applied"]
            ids = [a.body["alert_id"] for a in first.alerts]
            assert ids and ids == [a.body["alert_id"] for a in second.alerts]
            await again.save(second)
            assert await conn.client.get(feature_key(prefix, "c1")) is not None
            redelivered = await again.process(batch)
            assert redelivered.statuses == ["duplicate", "duplicate"]
            assert redelivered.alerts == []  # its decisions were saved with its features
        finally:
            await drop_prefix(conn, prefix)
            await conn.close()

    run(body())


def test_a_concurrent_writer_turns_the_commit_into_a_replay_of_the_events(
    tmp_path: Path, embedded_redis_url: str
) -> None:
    """Two workers briefly owning a partition: the staged state is not written over the
    other's; the events are applied again, and counted once."""
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    prefix = f"engine-{uuid.uuid4().hex[:8]}"
    mine = [ev("1", "c1", "2026-03-01T10:00:00Z")]
    theirs = [ev("1", "c1", "2026-03-01T10:00:00Z"), ev("2", "c1", "2026-03-01T12:00:00Z")]

    async def body() -> None:
        conn = await connect(embedded_redis_url)
        try:
            store = RedisFeatureStore(conn.client, CATALOG, prefix=prefix)
            states = AssignmentStore(conn.client, prefix=prefix, ttl_seconds=3600)
            engine = Engine(CATALOG, store, states, bundle)
            staged = await engine.process(mine)
            await store.apply(theirs)  # the other worker, in between
            await engine.save(staged)
            got = await store.read(["c1"], at=staged.rows[0].at + DAY)
            assert got.row("c1") is not None
            assert got.row("c1")["sessions_7d"] == 2  # both events, the first once
        finally:
            await drop_prefix(conn, prefix)
            await conn.close()

    run(body())


def test_a_new_bundle_starts_a_fresh_population_window_and_keeps_the_halflife(
    tmp_path: Path, embedded_redis_url: str
) -> None:
    """Assignments made by the previous bundle say nothing about the new one's shares: a
    reload that kept them raised a false population shift (found by the reload test)."""
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    prefix = f"engine-{uuid.uuid4().hex[:8]}"

    async def body() -> None:
        conn = await connect(embedded_redis_url)
        try:
            store = RedisFeatureStore(conn.client, CATALOG, prefix=prefix)
            states = AssignmentStore(conn.client, prefix=prefix, ttl_seconds=3600)
            engine = Engine(CATALOG, store, states, bundle, centers_halflife=0.25)
            await engine.save(await engine.process([ev("1", "c1", "2026-03-01T10:00:00Z")]))
            assert engine.population_shift()["window"] == 1
            engine.use(bundle)
            assert engine.population_shift()["window"] == 0
            assert engine.centers.halflife == 0.25
        finally:
            await drop_prefix(conn, prefix)
            await conn.close()

    run(body())
