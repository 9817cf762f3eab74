"""The engine over the store protocols: the re-score schedule, staging and the commit.

Every test runs on the in-memory stores and on an embedded Valkey (`engine_backend`), so
the engine is held to the same behaviour over both, and the fast one serves as its unit
test.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle
from models.eventfile import read_events
from models.events import Event
from offline.synthetic import generate_history, write_history
from stream.decide import iso
from stream.engine import Engine
from stream.replay import replay
from stream.runtime import drop_prefix, open_runtime
from stream.settings import StreamSettings
from stream.stores import due_key, feature_key
from tests.bundles import CATALOG, make_bundle
from tests.store_backends import StoreBackend
from tests.support import run

DAY = 86_400.0


def ev(eid: str, cid: str, ts: str) -> Event:
    return Event.model_validate(
        {"event_id": eid, "customer_id": cid, "type": "session_start", "ts": ts}
    )


def test_expired_customers_leave_the_schedule(tmp_path: Path, engine_backend: StoreBackend) -> None:
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    backend = engine_backend
    prefix = backend.prefix

    async def body() -> None:
        async with backend.open(CATALOG) as stores:
            engine = Engine(CATALOG, stores.features, stores.assignments, bundle)
            result = await engine.process(
                [ev("1", "kept", "2026-03-01T10:00:00Z"), ev("2", "gone", "2026-03-01T11:00:00Z")]
            )
            await engine.save(result)
            assert {r.customer_id for r in result.rows} == {"kept", "gone"}
            key = due_key(prefix, 0)
            assert set(backend.zrange(key)) == {"kept", "gone"}
            # As if "gone" had been silent past the retention: its features expired.
            backend.delete(feature_key(prefix, "gone"))
            later = result.rows[0].at + 2 * DAY
            rescored = await engine.rescore(later)
            await engine.save(rescored)
            assert [r.customer_id for r in rescored.rows] == ["kept"]
            assert backend.zrange(key) == ["kept"]
            assert backend.zscore(key, "kept") == later + DAY  # re-scored: next check a day later

    run(body())


def test_population_equals_a_recount_after_customers_expire(
    tmp_path: Path, engine_backend: StoreBackend
) -> None:
    """Finding 8 (issue 20): counts were never decreased when customers expired. A customer
    silent past the windows leaves the daily schedule but comes back once, when its
    profile expires in event time; that re-score deletes its state and takes it out of the
    population, so the counts keep equal to a recount of the stored states."""
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    backend = engine_backend

    async def body() -> None:
        async with backend.open(CATALOG, profile_days=120) as stores:
            a = stores.assignments
            engine = Engine(CATALOG, stores.features, a, bundle)
            first = await engine.process(
                [ev(str(i), f"c{i}", f"2026-03-01T1{i}:00:00Z") for i in range(4)]
            )
            await engine.save(first)
            start = first.rows[0].at
            version = bundle.version
            assert sum((await a.population(version)).values()) == 4
            # c0 comes back on day 94; the others stay silent. Day 95: c1..c3 are silent
            # past the 90-day windows, so they leave the daily schedule until their
            # profiles expire (day 120); day 121: that visit deletes their states.
            await engine.save(await engine.process([ev("x", "c0", iso(start + 94 * DAY))]))
            day95 = await engine.rescore(start + 95 * DAY)
            await engine.save(day95)
            assert [r.customer_id for r in day95.rows] == ["c0"]
            assert await a.recount(version) == (
                await a.population(version),
                await a.stages(version),
            )
            due = {c: backend.zscore(due_key(backend.prefix, 0), c) for c in ("c1", "c2", "c3")}
            assert all(start + 120 * DAY < t <= start + 121 * DAY for t in due.values()), due
            day121 = await engine.rescore(start + 121 * DAY)
            await engine.save(day121)
            assert [r.customer_id for r in day121.rows] == ["c0"]
            counts, stages = await a.recount(version)
            assert counts == await a.population(version)
            assert stages == await a.stages(version)
            assert sum(counts.values()) == 1  # c1..c3 expired (profile: 120 days)
            assert set(await a.load(["c0", "c1", "c2", "c3"])) == {"c0"}
            assert backend.zrange(due_key(backend.prefix, 0)) == ["c0"]

    run(body())


@pytest.mark.parametrize("step", [1, 5000])
def test_replay_rescores_every_customer_once_a_day(
    tmp_path: Path, engine_backend: StoreBackend, step: int
) -> None:
    """Both customers' first events are on March 1 at 10:00, so both are due from March 2
    at 10:00: the midnights of March 3, 4 and 5 re-score each once, in steps of 1 or all
    at once ("busy" too: its daily events do not postpone the check, see `save`)."""
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    rows = [("q1", "quiet", 1)] + [(f"b{d}", "busy", d) for d in range(1, 6)]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(
        json.dumps({"event_id": eid, "customer_id": cid, "type": "session_start",
                    "ts": f"2026-03-0{day}T10:00:00Z"}) + "\n"
        for eid, cid, day in rows
    ))  # fmt: skip

    async def body() -> int:
        async with engine_backend.open(CATALOG) as stores:
            engine = Engine(CATALOG, stores.features, stores.assignments, bundle,
                            rescore_batch=step)  # fmt: skip
            summary = await replay(engine, events, tmp_path / "alerts.jsonl")
            return summary.rescored

    assert run(body()) == 6


def test_features_and_states_are_saved_together_or_not_at_all(
    tmp_path: Path, engine_backend: StoreBackend
) -> None:
    """A batch writes nothing until `save`: a crash before it leaves the events new, so
    they are decided again into the same alerts; after it, they are duplicates."""
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    backend = engine_backend
    batch = [ev("1", "c1", "2026-03-01T10:00:00Z"), ev("2", "c1", "2026-03-01T11:00:00Z")]

    async def body() -> None:
        async with backend.open(CATALOG) as stores, backend.open(CATALOG) as restarted:
            engine = Engine(CATALOG, stores.features, stores.assignments, bundle)
            first = await engine.process(batch)
            assert backend.get(feature_key(backend.prefix, "c1")) is None  # staged only
            # "Crash": the result is dropped unsaved; a fresh engine sees new events.
            again = Engine(CATALOG, stores.features, restarted.assignments, bundle)
            second = await again.process(batch)
            assert second.statuses == ["applied", "applied"]
            ids = [a.body["alert_id"] for a in first.alerts]
            assert ids and ids == [a.body["alert_id"] for a in second.alerts]
            await again.save(second)
            assert backend.get(feature_key(backend.prefix, "c1")) is not None
            redelivered = await again.process(batch)
            assert redelivered.statuses == ["duplicate", "duplicate"]
            assert redelivered.alerts == []  # its decisions were saved with its features

    run(body())


def test_a_concurrent_writer_turns_the_commit_into_a_replay_of_the_events(
    tmp_path: Path, engine_backend: StoreBackend
) -> None:
    """Two workers briefly owning a partition: the staged state is not written over the
    other's; the events are applied again, and counted once."""
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)
    mine = [ev("1", "c1", "2026-03-01T10:00:00Z")]
    theirs = [ev("1", "c1", "2026-03-01T10:00:00Z"), ev("2", "c1", "2026-03-01T12:00:00Z")]

    async def body() -> None:
        async with engine_backend.open(CATALOG) as stores:
            store = stores.features
            engine = Engine(CATALOG, store, stores.assignments, bundle)
            staged = await engine.process(mine)
            await store.apply(theirs)  # the other worker, in between
            await engine.save(staged)
            got = await store.read(["c1"], at=staged.rows[0].at + DAY)
            assert got.row("c1") is not None
            assert got.row("c1")["sessions_7d"] == 2  # type: ignore[index]  # both, the first once

    run(body())


def test_a_new_bundle_starts_a_fresh_population_window_and_keeps_the_halflife(
    tmp_path: Path, engine_backend: StoreBackend
) -> None:
    """Assignments made by the previous bundle say nothing about the new one's shares: a
    reload that kept them raised a false population shift (found by the reload test)."""
    bundle = load_bundle(make_bundle(tmp_path), CATALOG)

    async def body() -> None:
        async with engine_backend.open(CATALOG) as stores:
            engine = Engine(CATALOG, stores.features, stores.assignments, bundle,
                            centers_halflife=0.25)  # fmt: skip
            # The window counts customers with full (90-day) windows: one seen 120 days ago.
            first, later = (
                ev("1", "c1", "2025-11-01T10:00:00Z"),
                ev("2", "c1", "2026-03-01T10:00:00Z"),
            )
            await engine.save(await engine.process([first, later]))
            assert engine.population_shift()["window"] == 1
            engine.use(bundle)
            assert engine.population_shift()["window"] == 0
            assert engine.centers.halflife == 0.25

    run(body())


def test_memory_url_replays_into_the_alerts_and_state_of_redis(
    tmp_path: Path, embedded_redis_url: str
) -> None:
    """``SEGSTREAM_REDIS_URL=memory://`` runs the same engine on the in-memory stores: a
    replay gives the alert ids, final features and assignment states of a Redis one."""
    bundle = make_bundle(tmp_path / "models")
    events = write_history(generate_history(80, 40, seed=5), tmp_path / "data")["events"]

    async def one(url: str) -> tuple[list[str], list[str], np.ndarray, dict[str, list[object]]]:
        settings = StreamSettings(redis_url=url, model_dir=tmp_path / "models")
        prefix = f"engine-{uuid.uuid4().hex[:8]}"
        runtime = await open_runtime(settings, model_path=bundle, prefix=prefix)
        try:
            out = tmp_path / f"alerts-{url.partition(':')[0]}.jsonl"
            summary = await replay(runtime.engine, events, out)
            assert summary.rescored > 0
            ids = [json.loads(line)["alert_id"] for line in out.read_text().splitlines()]
            customers = sorted({json.loads(line)["customer_id"] for line in events.open()})
            feats = await runtime.engine.features.read(customers, at=summary_end(events))
            states = await runtime.engine.assignments.load(customers)
            assert await drop_prefix(runtime.connection, prefix) > 0
            return ids, feats.customers, feats.values, {c: s.to_list() for c, s in states.items()}
        finally:
            await runtime.close()

    memory = run(one("memory://"))
    redis = run(one(embedded_redis_url))
    assert memory[0] and memory[0] == redis[0]  # the same alerts, in the same order
    assert memory[1] == redis[1]
    np.testing.assert_array_equal(memory[2], redis[2])
    assert memory[3] == redis[3]


def summary_end(events: Path) -> float:
    """The newest event time of a history file."""
    return max(e.epoch for e in read_events(events))
