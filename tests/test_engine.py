"""The engine's daily re-score schedule, on a real Redis with a small bundle."""

from __future__ import annotations

import uuid
from pathlib import Path

from models.bundle import load_bundle
from models.events import Event
from stream.engine import AssignmentStore, Engine
from stream.redis_conn import connect
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
            assert {r.customer_id for r in result.rows} == {"kept", "gone"}
            due_key = states.due_key(0)
            assert set(await conn.client.zrange(due_key, 0, -1)) == {b"kept", b"gone"}
            # As if "gone" had been silent past the retention: its features expired.
            await conn.client.delete(feature_key(prefix, "gone"))
            later = result.rows[0].at + 2 * DAY
            rescored = await engine.rescore(later)
            assert [r.customer_id for r in rescored.rows] == ["kept"]
            assert await conn.client.zrange(due_key, 0, -1) == [b"kept"]
            score = await conn.client.zscore(due_key, "kept")
            assert score == later + DAY  # re-scored: next check a day later
        finally:
            await drop_prefix(conn, prefix)
            await conn.close()

    run(body())
