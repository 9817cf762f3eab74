"""The Redis feature store against the batch reference, on real servers.

Every test runs on the machine's Redis and on an embedded Valkey (see conftest).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from models.catalog import Catalog, catalog_from_config, default_catalog
from models.eventfile import read_events
from models.events import Event, decode_event, parse_time
from offline.reference import events_frame, features_at
from stream.store import RedisFeatureStore, feature_key
from tests.support import open_store, run

DAY = 86_400.0


def ev(eid: str, cid: str, kind: str, ts: str, **props: object) -> Event:
    return Event.model_validate(
        {"event_id": eid, "customer_id": cid, "type": kind, "ts": ts, "properties": props}
    )


async def apply_in_batches(store: RedisFeatureStore, events: list[Event], size: int = 500) -> None:
    for i in range(0, len(events), size):
        await store.apply(events[i : i + size])


def assert_matches_reference(
    got_customers: list[str], got: np.ndarray, expected: pd.DataFrame, catalog: Catalog
) -> None:
    assert sorted(got_customers) == list(expected.index), "store and reference see other customers"
    want = expected.loc[got_customers].to_numpy()
    for j, spec in enumerate(catalog.features):
        if spec.aggregation in ("count", "distinct", "active_days"):
            np.testing.assert_array_equal(got[:, j], want[:, j], err_msg=spec.name)
        else:  # sums, ratios and times: the order of additions differs
            np.testing.assert_allclose(
                got[:, j], want[:, j], rtol=1e-12, atol=1e-9, err_msg=spec.name
            )


def cut_points(events: list[Event]) -> list[float]:
    start = min(e.epoch for e in events)
    end = max(e.epoch for e in events)
    # One mid-history cut at an odd time of day, one near the start, the end.
    return [start + 20.3 * DAY, start + 47.61 * DAY, end]


@pytest.fixture(scope="module")
def history_events(small_history_file: Path) -> list[Event]:
    return list(read_events(small_history_file))


def test_parity_in_time_order(redis_url: str, key_prefix: str, history_events: list[Event]) -> None:
    catalog = default_catalog()
    frame = events_frame(history_events, catalog)
    events = sorted(history_events, key=lambda e: e.epoch)
    assert len({e.customer_id for e in events}) >= 1000

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix) as store:
            done = 0
            for cut in cut_points(events):
                upto = [e for e in events[done:] if e.epoch <= cut]
                await apply_in_batches(store, upto)
                done += len(upto)
                expected = features_at(frame, catalog, cut)
                got = await store.read(list(expected.index), at=cut)
                assert_matches_reference(got.customers, got.values, expected, catalog)

    run(body())


def test_parity_shuffled_with_duplicates(
    redis_url: str, key_prefix: str, history_events: list[Event]
) -> None:
    """Out of order within each stretch, plus 5% redeliveries of any earlier event."""
    catalog = default_catalog()
    frame = events_frame(history_events, catalog)
    events = sorted(history_events, key=lambda e: e.epoch)
    rng = random.Random(11)

    async def body() -> None:
        # Stretches span weeks: accept events as late as the retention allows.
        async with open_store(redis_url, catalog, key_prefix, max_lateness_days=89) as store:
            delivered: list[Event] = []
            done = 0
            duplicates = 0
            for cut in cut_points(events):
                stretch = [e for e in events[done:] if e.epoch <= cut]
                done += len(stretch)
                redelivered = rng.sample(delivered + stretch, k=len(stretch) // 20)
                duplicates += len(redelivered)
                batch = stretch + redelivered
                rng.shuffle(batch)
                await apply_in_batches(store, batch, size=700)
                delivered += stretch
                expected = features_at(frame, catalog, cut)
                got = await store.read(list(expected.index), at=cut)
                assert_matches_reference(got.customers, got.values, expected, catalog)
            assert duplicates > 0.04 * len(events)

    run(body())


def test_user_defined_features_match_reference(
    redis_url: str, key_prefix: str, history_events: list[Event]
) -> None:
    catalog = catalog_from_config(
        {
            "features": [
                {
                    "name": "exports_30d",
                    "aggregation": "count",
                    "window_days": 30,
                    "filter": {"types": ["feature_used"], "where": {"feature": "export"}},
                },
                {
                    "name": "export_days_14d",
                    "aggregation": "active_days",
                    "window_days": 14,
                    "filter": {"types": ["feature_used"], "where": {"feature": "export"}},
                },
                {
                    "name": "big_purchase_revenue_60d",
                    "aggregation": "sum",
                    "window_days": 60,
                    "property": "amount",
                    "filter": {"types": ["purchase"]},
                },
                {
                    "name": "event_kinds_30d",
                    "aggregation": "distinct",
                    "window_days": 30,
                    "property": "feature",
                },
                {
                    "name": "days_since_last_ticket",
                    "aggregation": "days_since_last",
                    "filter": {"types": ["support_ticket"]},
                    "cap_days": 60,
                },
                {
                    "name": "exports_per_session_30d",
                    "aggregation": "ratio",
                    "numerator": "exports_30d",
                    "denominator": "sessions_30d",
                },
            ]
        }
    )
    frame = events_frame(history_events, catalog)
    events = sorted(history_events, key=lambda e: e.epoch)
    at = events[-1].epoch

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix) as store:
            await apply_in_batches(store, events, size=1000)
            expected = features_at(frame, catalog, at)
            got = await store.read(list(expected.index), at=at)
            assert_matches_reference(got.customers, got.values, expected, catalog)
            assert expected["exports_30d"].sum() > 0, "the history must exercise the filter"

    run(body())


def test_window_edges(redis_url: str, key_prefix: str) -> None:
    catalog = default_catalog()
    # t is on 2026-03-10; the 7-day window covers 2026-03-04 .. 2026-03-10.
    events = [
        ev("out", "a", "session_start", "2026-03-03T23:59:59Z"),
        ev("in", "a", "session_start", "2026-03-04T00:00:00Z"),
        ev("late-day", "a", "session_start", "2026-03-10T11:00:00Z"),
    ]
    t = parse_time("2026-03-10T12:00:00Z")

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix) as store:
            await store.apply(events)
            row = (await store.read(["a"], at=t)).row("a")
            assert row is not None
            assert row["sessions_7d"] == 2
            assert row["active_days_7d"] == 2
            assert row["sessions_30d"] == 3
            assert row["days_since_last_event"] == pytest.approx(1 / 24)
            # 25 days later the customer is silent: windows empty out, recency grows.
            later = (await store.read(["a"], at=t + 25 * DAY)).row("a")
            assert later is not None
            assert later["sessions_7d"] == 0
            assert later["sessions_30d"] == 1  # 04-04's 30 days start on 03-06
            assert later["days_since_last_event"] == pytest.approx(25 + 1 / 24)

    run(body())


def test_event_older_than_retention_is_rejected_and_counted(
    redis_url: str, key_prefix: str
) -> None:
    catalog = default_catalog()

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix, max_lateness_days=89) as store:
            await store.apply([ev("new", "a", "purchase", "2026-04-30T10:00:00Z", amount=5.0)])
            result = await store.apply(
                [
                    # 2026-01-30 is 90 days before 2026-04-30: outside the 90-day retention.
                    ev("old", "a", "purchase", "2026-01-30T23:59:59Z", amount=100.0),
                    # 2026-01-31 is the oldest day still retained.
                    ev("oldest-kept", "a", "purchase", "2026-01-31T00:00:00Z", amount=7.0),
                ]
            )
            assert result.statuses == ["too_late", "applied"]
            assert result.count("too_late") == 1
            row = result.features.row("a")
            assert row is not None
            assert row["purchases_90d"] == 2
            assert row["revenue_90d"] == 12.0

    run(body())


def test_lateness_bound_rejects_older_events_and_keeps_redeliveries_out(
    redis_url: str, key_prefix: str
) -> None:
    """Default bound: 7 days before the customer's newest day; the status is decided by the
    events before it, whatever the batching."""
    catalog = default_catalog()
    newest = ev("new", "a", "purchase", "2026-04-30T10:00:00Z", amount=5.0)
    week_late = ev("7d", "a", "purchase", "2026-04-23T00:00:00Z", amount=7.0)
    too_late = ev("8d", "a", "purchase", "2026-04-22T23:59:59Z", amount=100.0)

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix) as store:
            assert store.max_lateness_days == 7
            result = await store.apply([week_late, newest, too_late, week_late])
            assert result.statuses == ["applied", "applied", "too_late", "duplicate"]
            row = result.features.row("a")
            assert row is not None
            assert (row["purchases_90d"], row["revenue_90d"]) == (2, 12.0)
            # Once the customer moves on, a redelivery of the week-old event is too late
            # too: its fingerprint is gone, and it is not counted a second time.
            later = ev("next", "a", "purchase", "2026-05-01T08:00:00Z", amount=1.0)
            again = await store.apply([later, week_late])
            assert again.statuses == ["applied", "too_late"]
            row = again.features.row("a")
            assert row is not None
            assert (row["purchases_90d"], row["revenue_90d"]) == (3, 13.0)
            # The same events in another customer's batches of one give the same statuses.
            one_by_one = []
            for e in [week_late, newest, too_late, week_late]:
                moved = e.model_copy(update={"customer_id": "b"})
                one_by_one += (await store.apply([moved])).statuses
            assert one_by_one == ["applied", "applied", "too_late", "duplicate"]

    run(body())


def test_lateness_bound_must_fit_the_retention(redis_url: str, key_prefix: str) -> None:
    with pytest.raises(ValueError, match=r"max_lateness_days .* \(89\), got 90"):
        RedisFeatureStore(AsyncRedis(), default_catalog(), max_lateness_days=90)


def test_parity_with_events_up_to_the_lateness_bound_late(
    redis_url: str, key_prefix: str, history_events: list[Event]
) -> None:
    """The default bound: each event held back up to 6 days, plus 5% redeliveries within
    the bound, gives the batch reference's features exactly."""
    catalog = default_catalog()
    frame = events_frame(history_events, catalog)
    rng = random.Random(5)
    delay = {e.event_id: rng.uniform(0, 6 * 86_400) for e in history_events}
    arrival = sorted(history_events, key=lambda e: e.epoch + delay[e.event_id])
    resent = rng.sample(range(len(arrival)), k=len(arrival) // 20)
    stream = list(arrival)
    for i in sorted(resent, reverse=True):  # a redelivery within a few hundred events
        stream.insert(min(len(stream), i + rng.randint(1, 500)), arrival[i])
    at = max(e.epoch for e in history_events)

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix) as store:
            statuses: Counter[str] = Counter()
            for i in range(0, len(stream), 1000):
                statuses.update((await store.apply(stream[i : i + 1000])).statuses)
            assert statuses == {"applied": len(history_events), "duplicate": len(resent)}
            expected = features_at(frame, catalog, at)
            got = await store.read(list(expected.index), at=at)
            assert_matches_reference(got.customers, got.values, expected, catalog)

    run(body())


def test_duplicate_delivery_changes_nothing(redis_url: str, key_prefix: str) -> None:
    catalog = default_catalog()
    e1 = ev("p1", "a", "purchase", "2026-02-01T10:00:00Z", amount=20.0)
    e2 = ev("f1", "a", "feature_used", "2026-02-01T11:00:00Z", feature="export")

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix) as store:
            first = await store.apply([e1, e2, e1])
            assert first.statuses == ["applied", "applied", "duplicate"]
            again = await store.apply([e2, e1])
            assert again.statuses == ["duplicate", "duplicate"]
            assert first.features.row("a") == again.features.row("a")
            row = again.features.row("a")
            assert row is not None
            assert (row["purchases_7d"], row["revenue_7d"], row["feature_uses_7d"]) == (1, 20.0, 1)

    run(body())


def test_crash_and_replay_gives_the_reference(
    redis_url: str, key_prefix: str, history_events: list[Event]
) -> None:
    """A worker that applied a prefix, crashed, and replays the whole stream from the start."""
    catalog = default_catalog()
    events = sorted(history_events, key=lambda e: e.epoch)[:20_000]
    frame = events_frame(events, catalog)
    at = events[-1].epoch

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix) as store:
            await apply_in_batches(store, events[:7_777], size=1000)
            await apply_in_batches(store, events, size=1000)
            expected = features_at(frame, catalog, at)
            got = await store.read(list(expected.index), at=at)
            assert_matches_reference(got.customers, got.values, expected, catalog)

    run(body())


def test_a_batch_of_1000_events_is_one_round_trip(
    redis_url: str, key_prefix: str, history_events: list[Event]
) -> None:
    catalog = default_catalog()
    batch = history_events[:1000]
    per_customer = Counter(e.customer_id for e in batch)
    client = redis.Redis.from_url(redis_url)

    def evalsha_calls() -> int:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix) as store:
            before_trips, before_calls = store.round_trips, evalsha_calls()
            result = await store.apply(batch)
            calls = evalsha_calls() - before_calls
            assert store.round_trips - before_trips == 1
            # One script call for the whole batch (each customer's events in order), not
            # one per event: other sessions may share the server and add a few of theirs.
            assert max(per_customer.values()) > 1  # customers with several events
            assert 1 <= calls <= 6
            assert len(result.statuses) == len(result.features.customers) == 1000

    run(body())
    client.close()


def test_features_follow_each_event_within_a_batch(redis_url: str, key_prefix: str) -> None:
    """Rows are the customer's state right after each event, whatever the batching."""
    events = [
        ev("s1", "a", "session_start", "2026-02-01T10:00:00Z"),
        ev("p1", "a", "purchase", "2026-02-01T11:00:00Z", amount=5.0),
        ev("x1", "b", "email_open", "2026-02-01T11:30:00Z"),
        ev("p2", "a", "purchase", "2026-02-01T12:00:00Z", amount=7.0),
    ]

    async def body() -> None:
        async with open_store(redis_url, default_catalog(), key_prefix) as store:
            result = await store.apply(events)
            names = result.features.names
            revenue = [row[names.index("revenue_7d")] for row in result.features.values]
            counts = [row[names.index("events_7d")] for row in result.features.values]
            assert result.features.customers == ["a", "a", "b", "a"]
            assert revenue == [0.0, 5.0, 0.0, 12.0]
            assert counts == [1, 2, 1, 3]
            assert list(result.features.at) == [e.epoch for e in events]

    run(body())


def test_keys_carry_one_hash_tag_and_expire(redis_url: str, key_prefix: str) -> None:
    catalog = default_catalog()
    odd_ids = ["plain", "with}brace", "{tagged}", "a:b*c?[d]", "ünï\u00e7ødé", "x" * 256]

    async def body() -> None:
        async with open_store(redis_url, catalog, key_prefix) as store:
            await store.apply(
                [
                    ev(f"e{i}", cid, "session_start", "2026-02-01T10:00:00Z")
                    for i, cid in enumerate(odd_ids)
                ]
            )
            got = await store.read(odd_ids, at=parse_time("2026-02-02T00:00:00Z"))
            assert sorted(got.customers) == sorted(odd_ids)
            assert all(got.row(c)["events_7d"] == 1 for c in odd_ids)  # type: ignore[index]

    run(body())
    client = redis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{key_prefix}:*"))
    assert keys == sorted(feature_key(key_prefix, c) for c in odd_ids)
    ttl = client.ttl(feature_key(key_prefix, "plain"))
    assert 89 * DAY < ttl <= 90 * DAY
    client.close()


def test_unknown_customer_reads_as_absent(redis_url: str, key_prefix: str) -> None:
    async def body() -> None:
        async with open_store(redis_url, default_catalog(), key_prefix) as store:
            got = await store.read(["nobody"], at=parse_time("2026-02-02T00:00:00Z"))
            assert got.customers == []
            assert got.row("nobody") is None

    run(body())


def test_decoded_json_event_round_trips_through_the_store(redis_url: str, key_prefix: str) -> None:
    raw = (
        b'{"event_id": "j1", "customer_id": "c1", "type": "purchase",'
        b' "ts": "2026-02-01T10:00:00.123456+02:00", "properties": {"amount": 0.1}}'
    )

    async def body() -> None:
        async with open_store(redis_url, default_catalog(), key_prefix) as store:
            result = await store.apply([decode_event(raw)] * 3)
            assert result.statuses == ["applied", "duplicate", "duplicate"]
            row = result.features.row("c1")
            assert row is not None
            assert row["revenue_7d"] == 0.1

    run(body())
