"""One contract for every store implementation: memory, Redis, Valkey, a Redis Cluster.

Each test takes `store_backend` (conftest): the in-memory stores, the machine's Redis,
an embedded Valkey and a three-node Redis Cluster (`tests.servers.running_cluster`), and
must pass on all of them: the features against the batch reference, statuses,
idempotency, lateness, expiry, staging and the compare-and-set commit, the re-score
schedule, population counts and shared centers. Tests of Lua scripts and servers take
`redis_backend` (the three Redis ones). The in-memory feature state is compared with
`store.lua`'s byte for byte.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis as AsyncRedis
from redis.cluster import RedisCluster as SyncCluster
from redis.crc import key_slot

from models.catalog import catalog_from_config, default_catalog
from models.eventfile import read_events
from models.events import Event, decode_event, parse_time
from offline.reference import events_frame, features_at
from stream.assign import OnlineCenters
from stream.centers import merge_centers
from stream.decide import CustomerState
from stream.fold import value_number
from stream.memory_store import MemoryFeatureStore, memory_stores
from stream.redis_conn import connect
from stream.scripts import Call, Script, topology
from stream.state import StateCodec
from stream.store import RECOVER_SECONDS, RedisAssignmentStore, RedisFeatureStore
from stream.stores import AssignmentStore, Fenced, due_key, feature_key, state_key
from tests.servers import HOST, Cluster
from tests.store_backends import RedisBackend, StoreBackend
from tests.store_checks import DAY, apply_in_batches, assert_matches_reference, cut_points, ev
from tests.support import run


@pytest.fixture(scope="module")
def history_events(small_history_file: Path) -> list[Event]:
    return list(read_events(small_history_file))


def spread(backend: StoreBackend, count: int) -> None:
    """`count` keys under the prefix, on every node of a cluster."""
    per_node = {n: len(keys) for n, keys in backend.keys_per_node().items()}
    assert sum(per_node.values()) == count
    assert all(n > 0 for n in per_node.values()), f"keys not spread over the nodes: {per_node}"


# --- features against the batch reference ----------------------------------------------------


def test_parity_in_time_order(store_backend: StoreBackend, history_events: list[Event]) -> None:
    catalog = default_catalog()
    frame = events_frame(history_events, catalog)
    events = sorted(history_events, key=lambda e: e.epoch)
    assert len({e.customer_id for e in events}) >= 400

    async def body() -> None:
        async with store_backend.open(catalog) as stores:
            store = stores.features
            done = 0
            for cut in cut_points(events):
                upto = [e for e in events[done:] if e.epoch <= cut]
                await apply_in_batches(store, upto)
                done += len(upto)
                expected = features_at(frame, catalog, cut)
                got = await store.read(list(expected.index), at=cut)
                assert_matches_reference(got.customers, got.values, expected, catalog)

    run(body())
    spread(store_backend, len({e.customer_id for e in events}))


def test_parity_shuffled_with_duplicates(
    store_backend: StoreBackend, history_events: list[Event]
) -> None:
    """Out of order within each stretch, plus 5% redeliveries of any earlier event; the
    states are byte for byte those `stream.fold` computes (store.lua's rules in Python)."""
    catalog = default_catalog()
    frame = events_frame(history_events, catalog)
    events = sorted(history_events, key=lambda e: e.epoch)
    rng = random.Random(11)
    twin = MemoryFeatureStore(catalog, prefix=store_backend.prefix, max_lateness_days=89)

    async def body() -> None:
        # Stretches span weeks: accept events as late as the retention allows.
        async with store_backend.open(catalog, max_lateness_days=89) as stores:
            store = stores.features
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
                await apply_in_batches(twin, batch, size=700)
                delivered += stretch
                expected = features_at(frame, catalog, cut)
                got = await store.read(list(expected.index), at=cut)
                assert_matches_reference(got.customers, got.values, expected, catalog)
            assert duplicates > 0.04 * len(events)

    run(body())
    keys = store_backend.keys()
    assert len(keys) == len({e.customer_id for e in events})
    assert all(store_backend.get(k) == twin.keyspace.get(k) for k in keys)


def lifetime_history(seed: int = 5) -> list[Event]:
    """250 days of 80 customers, in four groups of 20: active throughout; active for two
    months, silent for over 100 days, then back; active for 40 days only; active for 20
    days, then silent for 180 days (past a 120-day profile) and back as someone new."""
    rng = random.Random(seed)
    start = parse_time("2025-06-01")
    kinds = [("session_start", {}), ("purchase", {"amount": 12.5}),
             ("feature_used", {"feature": "export"}), ("support_ticket", {})]  # fmt: skip
    spans = {"steady": [(0, 250)], "back": [(0, 60), (170, 250)], "gone": [(0, 40)],
             "reborn": [(0, 20), (200, 250)]}  # fmt: skip
    events = []
    for group, periods in spans.items():
        for c in range(20):
            cid = f"{group}-{c}"
            for lo, hi in periods:
                for day in range(lo, hi):
                    for n in range(rng.choice((0, 0, 1, 2))):
                        kind, props = kinds[rng.randrange(4)]
                        ts = start + day * DAY + rng.uniform(0, DAY - 1)
                        iso = f"{np.datetime64(int(ts), 's')}Z"
                        events.append(ev(f"{cid}-{day}-{n}", cid, kind, iso, **props))
    return sorted(events, key=lambda e: e.epoch)


def test_lifetime_profile_matches_the_reference_past_the_windows(
    store_backend: StoreBackend,
) -> None:
    """Lifetime totals are exact after 250 days, with customers silent for more than the
    90-day windows who come back, late events and redeliveries; the profile outlives the
    windows and expires at its own retention (120 days here), on event time."""
    catalog = default_catalog()
    events = lifetime_history()
    frame = events_frame(events, catalog)
    rng = random.Random(3)
    twin = MemoryFeatureStore(catalog, prefix=store_backend.prefix, profile_days=120)
    start = events[0].epoch
    cuts = [start + d * DAY + 0.37 * DAY for d in (100, 150, 199, 249)]

    async def body() -> None:
        async with store_backend.open(catalog, profile_days=120) as stores:
            store = stores.features
            delivered: list[Event] = []
            done = 0
            for cut in cuts:
                stretch = [e for e in events[done:] if e.epoch <= cut]
                done += len(stretch)
                recent = [e for e in delivered[-400:] if e.epoch > cut - 5 * DAY]
                batch = stretch + rng.sample(recent, k=min(len(recent), len(stretch) // 20))
                # Late within the lateness bound: shuffled within 3-day stretches.
                batch.sort(key=lambda e: (e.epoch // (3 * DAY), rng.random()))
                await apply_in_batches(store, batch, size=300)
                await apply_in_batches(twin, batch, size=300)
                delivered += stretch
                expected = features_at(frame, catalog, cut, profile_days=120)
                ids = sorted({e.customer_id for e in events})
                got = await store.read(ids, at=cut)
                assert_matches_reference(got.customers, got.values, expected, catalog)
                rows = {c: got.row(c) for c in got.customers}
                if cut == cuts[1]:  # day 150: "back" silent 90 days, its profile kept
                    back = [rows[f"back-{c}"] for c in range(20)]
                    assert all(r["events_90d"] == 0 and r["events_lifetime"] > 0 for r in back)  # type: ignore[index]
                if cut == cuts[3]:  # day 249: "gone" silent 209 days: forgotten
                    assert not [c for c in got.customers if c.startswith("gone-")]
                    reborn = [rows[f"reborn-{c}"] for c in range(20) if f"reborn-{c}" in rows]
                    assert reborn and all(r["tenure_days"] < 50 for r in reborn)  # type: ignore[index]

    run(body())
    keys = store_backend.keys()
    assert all(store_backend.get(k) == twin.keyspace.get(k) for k in keys)


def test_user_defined_features_match_reference(
    store_backend: StoreBackend, history_events: list[Event]
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
        async with store_backend.open(catalog) as stores:
            await apply_in_batches(stores.features, events, size=1000)
            expected = features_at(frame, catalog, at)
            got = await stores.features.read(list(expected.index), at=at)
            assert_matches_reference(got.customers, got.values, expected, catalog)
            assert expected["exports_30d"].sum() > 0, "the history must exercise the filter"

    run(body())


def test_parity_with_events_up_to_the_lateness_bound_late(
    store_backend: StoreBackend, history_events: list[Event]
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
        async with store_backend.open(catalog) as stores:
            store = stores.features
            statuses: Counter[str] = Counter()
            for i in range(0, len(stream), 1000):
                statuses.update((await store.apply(stream[i : i + 1000])).statuses)
            assert statuses == {"applied": len(history_events), "duplicate": len(resent)}
            expected = features_at(frame, catalog, at)
            got = await store.read(list(expected.index), at=at)
            assert_matches_reference(got.customers, got.values, expected, catalog)

    run(body())


def test_crash_and_replay_gives_the_reference(
    store_backend: StoreBackend, history_events: list[Event]
) -> None:
    """A worker that applied a prefix, crashed, and replays the whole stream from the start."""
    catalog = default_catalog()
    events = sorted(history_events, key=lambda e: e.epoch)[:20_000]
    frame = events_frame(events, catalog)
    at = events[-1].epoch

    async def body() -> None:
        async with store_backend.open(catalog) as stores:
            await apply_in_batches(stores.features, events[:7_777], size=1000)
            await apply_in_batches(stores.features, events, size=1000)
            expected = features_at(frame, catalog, at)
            got = await stores.features.read(list(expected.index), at=at)
            assert_matches_reference(got.customers, got.values, expected, catalog)

    run(body())


# --- windows, statuses, lateness ----------------------------------------------------------


def test_window_edges(store_backend: StoreBackend) -> None:
    # t is on 2026-03-10; the 7-day window covers 2026-03-04 .. 2026-03-10.
    events = [
        ev("out", "a", "session_start", "2026-03-03T23:59:59Z"),
        ev("in", "a", "session_start", "2026-03-04T00:00:00Z"),
        ev("late-day", "a", "session_start", "2026-03-10T11:00:00Z"),
    ]
    t = parse_time("2026-03-10T12:00:00Z")

    async def body() -> None:
        async with store_backend.open() as stores:
            store = stores.features
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


def test_event_older_than_retention_is_rejected_and_counted(store_backend: StoreBackend) -> None:
    async def body() -> None:
        async with store_backend.open(max_lateness_days=89) as stores:
            store = stores.features
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
    store_backend: StoreBackend,
) -> None:
    """Default bound: 7 days before the customer's newest day; the status is decided by the
    events before it, whatever the batching."""
    newest = ev("new", "a", "purchase", "2026-04-30T10:00:00Z", amount=5.0)
    week_late = ev("7d", "a", "purchase", "2026-04-23T00:00:00Z", amount=7.0)
    too_late = ev("8d", "a", "purchase", "2026-04-22T23:59:59Z", amount=100.0)

    async def body() -> None:
        async with store_backend.open() as stores:
            store = stores.features
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


def test_lateness_bound_must_fit_the_retention() -> None:
    for make in (
        lambda: RedisFeatureStore(AsyncRedis(), default_catalog(), max_lateness_days=90),
        lambda: MemoryFeatureStore(default_catalog(), max_lateness_days=90),
    ):
        with pytest.raises(ValueError, match=r"max_lateness_days .* \(89\), got 90"):
            make()


def test_duplicate_delivery_changes_nothing(store_backend: StoreBackend) -> None:
    e1 = ev("p1", "a", "purchase", "2026-02-01T10:00:00Z", amount=20.0)
    e2 = ev("f1", "a", "feature_used", "2026-02-01T11:00:00Z", feature="export")

    async def body() -> None:
        async with store_backend.open() as stores:
            store = stores.features
            first = await store.apply([e1, e2, e1])
            assert first.statuses == ["applied", "applied", "duplicate"]
            again = await store.apply([e2, e1])
            assert again.statuses == ["duplicate", "duplicate"]
            assert first.features.row("a") == again.features.row("a")
            row = again.features.row("a")
            assert row is not None
            assert (row["purchases_7d"], row["revenue_7d"], row["feature_uses_7d"]) == (1, 20.0, 1)

    run(body())


def hot_day(count: int) -> list[Event]:
    """`count` events of one customer id in one UTC day (a placeholder id such as
    ``guest`` collects every anonymous event), in time order, with two ordinary customers
    beside it."""
    kinds = [("session_start", {}), ("purchase", {"amount": 2.5}),
             ("feature_used", {"feature": "export"}),
             ("feature_used", {"feature": "share"})]  # fmt: skip
    start = parse_time("2026-02-01")
    events = []
    for i in range(count):
        kind, props = kinds[i % len(kinds)]
        iso = f"{np.datetime64(int(start + 60 + i * 80_000 / count), 's')}Z"
        events.append(ev(f"g{i}", "guest", kind, iso, **props))
        if i % 50 == 0:
            events.append(ev(f"o{i}", f"ordinary-{i % 100}", kind, iso, **props))
    return events


def test_dedupe_cap_bounds_a_hot_customer_and_counts_what_it_evicts(
    store_backend: StoreBackend,
) -> None:
    """A customer with more events in the lateness window than `dedupe_max_events` keeps
    that many fingerprints (its state stays bounded); the cap's evictions are counted;
    a redelivery of a kept event is still a duplicate; features stay equal to the batch
    reference past the cap; the state is byte for byte `stream.fold`'s (a cap of 40,
    240 events, batches of 70)."""
    catalog = default_catalog()
    cap, count = 40, 240
    events = hot_day(count)
    guest = [e for e in events if e.customer_id == "guest"]
    twin = MemoryFeatureStore(catalog, prefix=store_backend.prefix, dedupe_max_events=cap)
    cut = max(e.epoch for e in events)

    async def body() -> None:
        async with store_backend.open(catalog, dedupe_max_events=cap) as stores:
            store = stores.features
            evicted = 0
            for i in range(0, len(events), 70):
                evicted += (await store.apply(events[i : i + 70])).evicted
                await twin.apply(events[i : i + 70])
            assert evicted == count - cap
            expected = features_at(events_frame(events, catalog), catalog, cut)
            got = await store.read(list(expected.index), at=cut)
            assert_matches_reference(got.customers, got.values, expected, catalog)
            # Inside the kept window, dedupe holds: the newest `cap` events are duplicates.
            again = await store.apply(guest[-cap:])
            assert again.statuses == ["duplicate"] * cap and again.evicted == 0
            after = await store.read(list(expected.index), at=cut)
            np.testing.assert_array_equal(after.values, got.values)
            # Past it, best-effort as documented: the oldest event is counted again.
            oldest = await store.apply(guest[:1])
            await twin.apply(guest[-cap:] + guest[:1])
            assert oldest.statuses == ["applied"] and oldest.evicted == 1
            row = (await store.read(["guest"], at=cut)).row("guest")
            assert row is not None and row["events_7d"] == count + 1

    run(body())
    key = feature_key(store_backend.prefix, "guest")
    state = store_backend.get(key)
    assert state is not None and state == twin.keyspace.get(key)
    head = StateCodec(catalog).head
    n_e = head.unpack_from(state)[-2]  # nA, nS, nE, nV close the header
    assert n_e == cap
    ordinary = store_backend.get(feature_key(store_backend.prefix, "ordinary-0"))
    assert ordinary is not None
    # Bounded: beyond the small customer's, only the day's record and `cap` fingerprints.
    assert len(state) - len(ordinary) <= 6 * cap + 64
    keys = store_backend.keys()
    assert all(store_backend.get(k) == twin.keyspace.get(k) for k in keys)


def test_features_follow_each_event_within_a_batch(store_backend: StoreBackend) -> None:
    """Rows are the customer's state right after each event, whatever the batching."""
    events = [
        ev("s1", "a", "session_start", "2026-02-01T10:00:00Z"),
        ev("p1", "a", "purchase", "2026-02-01T11:00:00Z", amount=5.0),
        ev("x1", "b", "email_open", "2026-02-01T11:30:00Z"),
        ev("p2", "a", "purchase", "2026-02-01T12:00:00Z", amount=7.0),
    ]

    async def body() -> None:
        async with store_backend.open() as stores:
            result = await stores.features.apply(events)
            names = result.features.names
            revenue = [row[names.index("revenue_7d")] for row in result.features.values]
            counts = [row[names.index("events_7d")] for row in result.features.values]
            assert result.features.customers == ["a", "a", "b", "a"]
            assert revenue == [0.0, 5.0, 0.0, 12.0]
            assert counts == [1, 2, 1, 3]
            assert list(result.features.at) == [e.epoch for e in events]

    run(body())


def test_features_follow_each_event_and_the_batch_spans_nodes(
    store_backend: StoreBackend,
) -> None:
    """The per-event rows of one batch whose customers live on different nodes (slots)."""
    customers = [f"cust-{i}" for i in range(40)]
    events = [
        ev("s1", "a", "session_start", "2026-02-01T10:00:00Z"),
        ev("p1", "a", "purchase", "2026-02-01T11:00:00Z", amount=5.0),
        ev("x1", "b", "email_open", "2026-02-01T11:30:00Z"),
        ev("p2", "a", "purchase", "2026-02-01T12:00:00Z", amount=7.0),
    ]
    events += [ev(f"o-{c}", c, "session_start", "2026-02-01T12:30:00Z") for c in customers]
    events += [ev("p1", "a", "purchase", "2026-02-01T11:00:00Z", amount=5.0)]  # redelivery

    async def body() -> None:
        async with store_backend.open() as stores:
            result = await stores.features.apply(events)
            names = result.features.names
            revenue = [row[names.index("revenue_7d")] for row in result.features.values]
            counts = [row[names.index("events_7d")] for row in result.features.values]
            assert result.features.customers == ["a", "a", "b", "a", *customers, "a"]
            assert revenue[:4] == [0.0, 5.0, 0.0, 12.0]
            assert counts[:4] == [1, 2, 1, 3]
            assert counts[4:-1] == [1] * len(customers)
            assert (revenue[-1], counts[-1]) == (12.0, 3)
            assert result.statuses == ["applied"] * (len(events) - 1) + ["duplicate"]
            # A duplicate's row is the state it found: "a" as of its newest event, p2.
            assert list(result.features.at) == [e.epoch for e in events[:-1]] + [events[3].epoch]

    run(body())
    ids = ["a", "b", *customers]
    per_node = {n: len(keys) for n, keys in store_backend.keys_per_node().items()}
    assert sum(per_node.values()) == len(ids)
    if store_backend.nodes > 1:
        assert sum(1 for n in per_node.values() if n) >= 2, f"one node held the batch: {per_node}"


def test_keys_carry_one_hash_tag_and_expire(store_backend: StoreBackend) -> None:
    odd_ids = ["plain", "with}brace", "{tagged}", "a:b*c?[d]", "ünï\u00e7ødé", "x" * 256]
    prefix = store_backend.prefix

    async def body() -> None:
        async with store_backend.open() as stores:
            await stores.features.apply(
                [
                    ev(f"e{i}", cid, "session_start", "2026-02-01T10:00:00Z")
                    for i, cid in enumerate(odd_ids)
                ]
            )
            got = await stores.features.read(odd_ids, at=parse_time("2026-02-02T00:00:00Z"))
            assert sorted(got.customers) == sorted(odd_ids)
            assert all(got.row(c)["events_7d"] == 1 for c in odd_ids)  # type: ignore[index]

    run(body())
    assert store_backend.keys() == sorted(feature_key(prefix, c) for c in odd_ids)
    # The key holds the profile, which outlives the 90-day windows by default.
    ttl = store_backend.ttl(feature_key(prefix, "plain"))
    assert 729 * DAY < ttl <= 730 * DAY


def test_unknown_customer_reads_as_absent(store_backend: StoreBackend) -> None:
    async def body() -> None:
        async with store_backend.open() as stores:
            got = await stores.features.read(["nobody"], at=parse_time("2026-02-02T00:00:00Z"))
            assert got.customers == []
            assert got.row("nobody") is None

    run(body())


def test_decoded_json_event_round_trips_through_the_store(store_backend: StoreBackend) -> None:
    raw = (
        b'{"event_id": "j1", "customer_id": "c1", "type": "purchase",'
        b' "ts": "2026-02-01T10:00:00.123456+02:00", "properties": {"amount": 0.1}}'
    )

    async def body() -> None:
        async with store_backend.open() as stores:
            result = await stores.features.apply([decode_event(raw)] * 3)
            assert result.statuses == ["applied", "duplicate", "duplicate"]
            row = result.features.row("c1")
            assert row is not None
            assert row["revenue_7d"] == 0.1

    run(body())


# --- staging and the commit -----------------------------------------------------------------


def test_staging_writes_nothing_and_the_commit_writes_only_over_the_staged_state(
    store_backend: StoreBackend,
) -> None:
    """`apply(stage=True)` leaves the store as it was; `save(features=...)` writes each
    staged state unless another writer changed it since (then its position comes back)."""
    prefix = store_backend.prefix
    first = [ev("1", "c1", "session_start", "2026-03-01T10:00:00Z"),
             ev("1", "c2", "session_start", "2026-03-01T10:00:00Z")]  # fmt: skip

    async def body() -> None:
        async with store_backend.open() as stores:
            staged = await stores.features.apply(first, stage=True)
            assert staged.statuses == ["applied", "applied"]
            assert staged.staged is not None
            assert staged.staged.keys == [feature_key(prefix, "c1"), feature_key(prefix, "c2")]
            assert staged.staged.digests == [b"", b""]  # no state when read
            assert store_backend.keys() == []
            # Staging again sees the same (nothing was written): the same states.
            again = await stores.features.apply(first, stage=True)
            assert again.staged is not None and again.staged.states == staged.staged.states
            # Another writer changes c2 in between.
            await stores.features.apply([ev("2", "c2", "purchase", "2026-03-01T11:00:00Z",
                                            amount=3.0)])  # fmt: skip
            conflicts = await stores.assignments.save(
                {}, {}, features=staged.staged, feature_ttl=1000
            )
            assert conflicts == [1]
            assert store_backend.get(feature_key(prefix, "c1")) == staged.staged.states[0]
            assert store_backend.get(feature_key(prefix, "c2")) != staged.staged.states[1]
            assert 900 < store_backend.ttl(feature_key(prefix, "c1")) <= 1000
            # The committed state is what was staged: its event is now a duplicate.
            later = await stores.features.apply(first[:1], stage=True)
            assert later.statuses == ["duplicate"]
            assert later.staged is not None and later.staged.keys == []
            # A state staged over an existing one carries its digest: committed once.
            more = await stores.features.apply(
                [ev("3", "c1", "session_start", "2026-03-02T10:00:00Z")], stage=True
            )
            assert more.staged is not None and len(more.staged.digests[0]) == 40
            assert await stores.assignments.save({}, {}, features=more.staged) == []
            assert await stores.assignments.save({}, {}, features=more.staged) == [0]
            row = (await stores.features.read(["c1"], at=parse_time("2026-03-02T12:00:00Z"))).row(
                "c1"
            )
            assert row is not None and row["sessions_7d"] == 2

    run(body())


# --- assignment states, schedule, population, centers ----------------------------------------


def test_assignment_store_round_trips(store_backend: StoreBackend) -> None:
    """`AssignmentStore.save/load` (states, due index, population) on every backend."""
    customers = [f"cust-{i}" for i in range(30)]
    prefix = store_backend.prefix

    async def body() -> None:
        async with store_backend.open() as writer_stores, store_backend.open() as reader_stores:
            writer = writer_stores.assignments
            states = {
                cid: CustomerState(segment=i % 3, since=1000.0 + i, model_version="v1")
                for i, cid in enumerate(customers)
            }
            due = {
                0: {cid: 5000.0 + i for i, cid in enumerate(customers[:20])},
                1: {cid: 6000.0 for cid in customers[20:]},
            }
            await writer.save(states, due)
            # A reader without the in-memory cache sees what was written.
            reader = reader_stores.assignments
            loaded = await reader.load([*customers, "nobody"])
            assert set(loaded) == set(customers)
            assert all(loaded[c].segment == states[c].segment for c in customers)
            assert all(loaded[c].since == states[c].since for c in customers)
            assert await reader.due(0, 5009.0, 100) == customers[:10]
            assert sorted(await reader.due(1, 7000.0, 100)) == sorted(customers[20:])
            assert await reader.population("v1") == {0: 10, 1: 10, 2: 10}
            # Without `reschedule` an already scheduled customer keeps its time.
            await writer.save({}, {0: {customers[0]: 9999.0}})
            assert customers[0] in await reader.due(0, 5000.0, 100)
            ttl = store_backend.ttl(state_key(prefix, customers[0]))
            assert 3500 < ttl <= 3600

    run(body())
    if store_backend.nodes > 1:
        per_node = {n: len(k) for n, k in store_backend.keys_per_node().items()}
        assert sum(1 for n in per_node.values() if n) >= 2, f"one node held every state: {per_node}"


def test_schedule_order_limit_reschedule_and_unschedule(store_backend: StoreBackend) -> None:
    """`due` gives the longest due first (ties by id), at most `limit`; `reschedule`
    replaces a time, the default keeps it; `unschedule` removes customers."""
    prefix = store_backend.prefix

    async def body() -> None:
        async with store_backend.open() as stores:
            a = stores.assignments
            await a.save({}, {3: {"b": 10.0, "a": 10.0, "c": 5.0, "late": 99.0}})
            assert await a.due(3, 10.0, 100) == ["c", "a", "b"]
            assert await a.due(3, 10.0, 2) == ["c", "a"]
            assert await a.due(4, 10.0, 100) == []
            await a.save({}, {3: {"c": 50.0}})  # NX: c keeps 5.0
            assert store_backend.zscore(due_key(prefix, 3), "c") == 5.0
            await a.save({}, {3: {"c": 50.0}}, reschedule=True)
            assert await a.due(3, 10.0, 100) == ["a", "b"]
            assert store_backend.zscore(due_key(prefix, 3), "c") == 50.0
            await a.unschedule(3, ["a", "late", "nobody"])
            assert store_backend.zrange(due_key(prefix, 3)) == ["b", "c"]

    run(body())


def state(segment: int | None, version: str = "v1", stage: str | None = None) -> CustomerState:
    return CustomerState(segment=segment, model_version=version, stage=stage)


def test_population_counts_each_transition_once_per_version(store_backend: StoreBackend) -> None:
    """The save counts what each state changes from the stored one: a new customer joins
    its segment and stage, a move leaves one for the other, a new version takes the
    customer out of the old version's counts, a deleted (expired) one leaves them."""

    async def body() -> None:
        async with store_backend.open() as stores:
            a = stores.assignments
            await a.save({"c1": state(1, stage="new"), "c2": state(1), "c3": state(2)}, {})
            await a.save({"c1": state(2, stage="active"), "c2": state(1)}, {})
            assert await a.population("v1") == {1: 1, 2: 2}
            assert await a.stages("v1") == {"active": 1}
            await a.save({"c3": state(5, "v2"), "c2": None}, {})
            assert await a.population("v1") == {2: 1}
            assert await a.population("v2") == {5: 1}
            assert await a.population("v3") == {}
            for version in ("v1", "v2"):
                assert await a.recount(version) == (
                    await a.population(version),
                    await a.stages(version),
                )

    run(body())


def test_a_retried_save_counts_the_population_once(store_backend: StoreBackend) -> None:
    """A save applied twice, as after its reply was lost (the same token), and a later
    save writing the same states again leave the population equal to a recount."""

    async def body() -> None:
        async with store_backend.open() as stores:
            a = stores.assignments
            await a.save({f"c{i}": state(i % 3, stage="new") for i in range(12)}, {})
            moved = {f"c{i}": state((i + 1) % 3, stage="active") for i in range(8)}
            moved["d"] = state(0)
            for _ in range(2):  # the retry, with the same token
                await a.save(moved, {0: {"d": 5.0}}, owners={"d": 0}, token="t-1")
            await a.save(moved, {})  # another save of the same states (a new token)
            assert await a.population("v1") == {0: 4, 1: 4, 2: 5}
            assert await a.stages("v1") == {"new": 4, "active": 8}
            assert await a.recount("v1") == ({0: 4, 1: 4, 2: 5}, {"new": 4, "active": 8})

    run(body())


def test_a_late_save_of_an_old_generation_is_refused(store_backend: StoreBackend) -> None:
    """Fencing: after a newer claim wrote a customer, a save carrying an older generation
    (a revoked owner's batch, stuck retrying through the rebalance) raises `Fenced`; the
    new owner's states, schedule and counts survive, and a recount agrees."""
    prefix = store_backend.prefix

    async def body() -> None:
        async with store_backend.open() as old_stores, store_backend.open() as new_stores:
            old, new = old_stores.assignments, new_stores.assignments
            first, second = await old.claim(), await new.claim()
            assert second > first
            mine = {"c1": state(1), "c2": state(1)}
            await old.save(mine, {}, owners=dict.fromkeys(mine, first))
            await new.save({"c1": state(2)}, {0: {"c1": 50.0}}, owners={"c1": second},
                           reschedule=True)  # fmt: skip
            with pytest.raises(Fenced):
                await old.save({"c1": state(0), "c2": state(0)}, {0: {"c1": 99.0}},
                               owners=dict.fromkeys(mine, first), reschedule=True)  # fmt: skip
            reader = (await new_stores.assignments.load(["c1"]))["c1"]
            assert reader.segment == 2
            assert store_backend.zscore(due_key(prefix, 0), "c1") == 50.0
            # A save of the newest generation (or a newer one) is accepted.
            await new.save({"c1": state(0)}, {}, owners={"c1": second})
            assert await new.recount("v1") == (await new.population("v1"), {})

    run(body())


def test_a_save_killed_before_its_count_is_counted_once_by_the_next_owner(
    redis_backend: RedisBackend,
) -> None:
    """A cluster save is two steps (the states' slots, then the population's): a worker
    SIGKILLed between them left its customers written but uncounted, and the new owner,
    replaying the same events, finds no transition of its own. Its save (a newer claim)
    counts them once; the dead worker's count arriving late (a zombie) adds nothing; a
    third owner counts nothing again. On one server the count is in the states' call, so
    the same steps must leave the same counts."""
    replayed = {"c0": state(1, stage="new"), "c1": state(2, stage="new"), "c2": state(2)}

    async def body() -> None:
        async with redis_backend.open() as old_stores, redis_backend.open() as new_stores:
            old, new = old_stores.assignments, new_stores.assignments
            assert isinstance(old, RedisAssignmentStore)
            first = await old.claim()
            unsent: list[tuple[Any, ...]] = []

            async def killed(*args: Any) -> None:
                unsent.append(args)
                raise ConnectionError("killed before the population call")

            old._count = killed  # type: ignore[method-assign]
            with pytest.raises(ConnectionError):
                await old.save(replayed, {}, owners=dict.fromkeys(replayed, first), token="dead")
            second = await new.claim()
            moved = {**replayed, "c2": state(0)}  # the replay decides c2 anew
            await new.save(moved, {}, owners=dict.fromkeys(moved, second))
            expected = ({1: 1, 2: 1, 0: 1}, {"new": 2})
            assert await new.recount("v1") == expected
            assert (await new.population("v1"), await new.stages("v1")) == expected
            await RedisAssignmentStore._count(old, *unsent[0])  # the zombie's late count
            third = await new.claim()
            await new.save(moved, {}, owners=dict.fromkeys(moved, third))
            assert (await new.population("v1"), await new.stages("v1")) == expected

    run(body())


def test_a_counted_save_is_not_recovered_after_its_token_expired(
    redis_backend: RedisBackend,
) -> None:
    """Recovery trusts a token key to tell a counted save from a killed one, and token keys
    expire: a transition older than the recovery window is never handed back, so a new
    owner touching a customer days after its last move counts nothing twice."""
    start = 1_800_000_000.0

    async def body() -> None:
        async with redis_backend.open() as old_stores, redis_backend.open() as new_stores:
            old, new = old_stores.assignments, new_stores.assignments
            assert isinstance(old, RedisAssignmentStore) and isinstance(new, RedisAssignmentStore)
            old.clock = lambda: start
            first = await old.claim()
            await old.save({"c1": state(3)}, {}, owners={"c1": first}, token="counted")
            key = old.population_key("v1")
            redis_backend.client.delete(f"{{{key}}}:save:counted")  # expired
            new.clock = lambda: start + RECOVER_SECONDS + 1
            await new.save({"c1": state(3)}, {}, owners={"c1": await new.claim()})
            assert await new.population("v1") == {3: 1} == (await new.recount("v1"))[0]

    run(body())


def test_centers_are_every_workers_statistics_merged_and_a_retry_changes_nothing(
    store_backend: StoreBackend,
) -> None:
    """Two workers share their center statistics through the store: each entry is the
    worker's absolute value (a retried sync changes nothing), every worker reads the same
    merge as the pure function gives, a stale entry goes only while it holds the value seen,
    and another version is apart (one hash per version: one slot on a cluster)."""
    base = np.array([[0.0, 0.0], [10.0, 0.0]])

    def centers(worker: str) -> OnlineCenters:
        return OnlineCenters(base, [1, 2], halflife=0.5, memory_days=1.0, worker=worker)

    async def sync(store: AssignmentStore, c: OnlineCenters, version: str = "v1") -> np.ndarray:
        group = await store.sync_centers(version, c.worker, c.stats_.pack(), c.forget_)
        return c.merge(group).copy()

    async def body() -> None:
        async with store_backend.open() as one, store_backend.open() as two:
            a, b = centers("a"), centers("b")
            a.learn_many(np.array([[1.0, 1.0], [9.0, 0.0]]), np.array([0.0, DAY]))
            b.learn_many(np.array([[11.0, 1.0]]), np.array([DAY]))
            first = await sync(one.assignments, a)
            assert first.tolist() != base.tolist()
            both = await sync(two.assignments, b)
            assert (await sync(two.assignments, b)).tolist() == both.tolist()  # a retry
            assert (await sync(one.assignments, a)).tolist() == both.tolist()
            expected = merge_centers(
                base, [a.stats_, b.stats_], prior_weight=2.0, halflife_seconds=DAY
            )
            np.testing.assert_array_equal(both, expected)
            # A worker gone for 50 half-lives is dropped; one that wrote since is kept.
            c = centers("c")
            c.learn_many(np.array([[0.5, 0.0]]), np.array([60 * DAY]))
            await sync(one.assignments, c)
            assert set(c.forget_) == {"a", "b"}
            b.learn_many(np.array([[9.5, 0.0]]), np.array([60 * DAY]))
            await sync(two.assignments, b)
            group = await one.assignments.sync_centers("v1", "c", c.stats_.pack(), c.forget_)
            assert sorted(group) == ["b", "c"]
            other = await sync(two.assignments, centers("d"), version="v2")
            np.testing.assert_array_equal(other, base)

    run(body())


# --- Redis only: round trips, scripts, the cluster ---------------------------------------


def test_a_batch_of_1000_events_is_one_round_trip(
    store_backend: StoreBackend, history_events: list[Event]
) -> None:
    """One round trip everywhere; on Redis, one script call per server (per slot on a
    cluster) for the whole batch, each customer's events in order, not one per event."""
    batch = history_events[:1000]
    per_customer = Counter(e.customer_id for e in batch)

    async def body() -> None:
        async with store_backend.open() as stores:
            store = stores.features
            before_trips = store.round_trips  # type: ignore[attr-defined]
            before_calls = (
                store_backend.script_calls() if isinstance(store_backend, RedisBackend) else 0
            )
            result = await store.apply(batch)
            assert store.round_trips - before_trips == 1  # type: ignore[attr-defined]
            assert max(per_customer.values()) > 1  # customers with several events
            assert len(result.statuses) == len(result.features.customers) == 1000
            if isinstance(store_backend, RedisBackend):
                calls = store_backend.script_calls() - before_calls
                # The machine's server is shared: other sessions' scripts in the same
                # moment count too (8 calls beside three benchmark processes). The bound
                # there (129 for the 259 customers) still fails a call per customer.
                slack = len(per_customer) // 2 if store_backend.kind == "system" else 5
                groups = (
                    len(
                        {
                            key_slot(feature_key(store_backend.prefix, c).encode())
                            for c in per_customer
                        }
                    )
                    if store_backend.nodes > 1
                    else 1
                )
                assert groups <= calls <= groups + slack, (calls, groups, slack)

    run(body())


def test_store_reloads_its_script_on_every_node(private_redis_backend: RedisBackend) -> None:
    """A server (every node) that lost its script cache (restart, failover) is healed by
    the retry: the batch is applied once, and so is the commit."""

    async def body() -> None:
        async with private_redis_backend.open() as stores:
            private_redis_backend.flush_scripts()
            result = await stores.features.apply(
                [ev(f"e{i}", f"c{i}", "session_start", "2026-02-01T10:00:00Z") for i in range(30)]
            )
            assert result.statuses == ["applied"] * 30
            staged = await stores.features.apply(
                [ev(f"f{i}", f"c{i}", "session_start", "2026-02-01T11:00:00Z") for i in range(30)],
                stage=True,
            )
            private_redis_backend.flush_scripts()
            conflicts = await stores.assignments.save(
                {f"c{i}": CustomerState(segment=1, model_version="v1") for i in range(30)},
                {0: {"c0": 1.0}}, features=staged.staged,
            )  # fmt: skip
            assert conflicts == []
            assert await stores.assignments.population("v1") == {1: 30}
            row = (await stores.features.read(["c7"], at=parse_time("2026-02-02T00:00:00Z"))).row(
                "c7"
            )
            assert row is not None and row["events_7d"] == 2

    run(body())


class _Incr(Script):
    """A one-line script counting its calls on its key."""

    def __init__(self) -> None:
        self.name = "incr"
        self.source = "return redis.call('INCR', KEYS[1])"
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


def test_a_lost_script_cache_reruns_only_the_refused_calls(
    private_redis_backend: RedisBackend,
) -> None:
    """Calls of one pipeline (one key each, so any slot on a cluster) after one node
    forgot its scripts: the refused ones run again with EVAL, the others are not run twice."""
    backend = private_redis_backend
    keys = [f"{backend.prefix}:count:{i}" for i in range(24)]
    script = _Incr()

    async def body() -> None:
        conn = await connect(backend.url)
        try:
            net = topology(conn.client)
            calls: list[Call] = [([key], []) for key in keys]  # one slot each on a cluster
            await net.load(script)
            assert await net.run(script, calls) == [1] * len(calls)
            # One node forgets (a failover of one primary): on a cluster, the others still
            # know the script, so the pipeline mixes refused and applied calls.
            next(iter(backend.node_clients().values())).script_flush()
            assert await net.run(script, calls) == [2] * len(calls)
            for client in backend.node_clients().values():
                client.script_flush()
            assert await net.run(script, calls[:1]) == [3]  # the single-call path
        finally:
            await conn.close()

    run(body())
    assert [int(backend.get(k) or 0) for k in keys] == [3] + [2] * (len(keys) - 1)


def test_fixture_is_a_three_node_cluster(cluster: Cluster) -> None:
    client = SyncCluster(host=HOST, port=cluster.ports[0])
    try:
        assert len(client.get_primaries()) == 3
        slots = client.cluster_slots()
        assert sum(end - start + 1 for start, end in slots) == 16_384
    finally:
        client.close()

    async def body() -> str:
        conn = await connect(cluster.url)
        try:
            return type(conn.client).__name__
        finally:
            await conn.close()

    assert run(body()) == "RedisCluster"


def test_a_batch_spans_the_cluster_nodes_by_slot(cluster: Cluster) -> None:
    """GETKEYSINSLOT answers on the node that serves the slot only: the customers of one
    batch land on several nodes, each key where its slot says."""
    backend = RedisBackend("cluster", cluster.url, f"segstream-test-{random.getrandbits(40):x}",
                           cluster.ports)  # fmt: skip
    ids = ["a", "b", *(f"cust-{i}" for i in range(40))]
    try:

        async def body() -> None:
            async with backend.open() as stores:
                await stores.features.apply(
                    [ev(f"o-{c}", c, "session_start", "2026-02-01T12:30:00Z") for c in ids]
                )

        run(body())
        slots = {key_slot(feature_key(backend.prefix, c).encode()) for c in ids}
        by_node: dict[int, int] = {}
        mine = backend.prefix.encode()
        for port, client in backend.node_clients().items():
            # The cluster is shared by the session's tests: other prefixes' keys can sit in
            # these slots, so only this test's keys are counted.
            by_node[port] = sum(
                sum(1 for key in client.execute_command("CLUSTER", "GETKEYSINSLOT", s, 1000)
                    if key.startswith(mine))
                for s in slots
            )  # fmt: skip
        assert sum(by_node.values()) == len(ids)
        assert sum(1 for n in by_node.values() if n) >= 2, f"one node held the batch: {by_node}"
    finally:
        backend.cleanup()


def test_memory_stores_share_one_keyspace() -> None:
    features, assignments = memory_stores(default_catalog(), prefix="p")
    assert features.keyspace is assignments.keyspace
    assert (features.prefix, assignments.prefix) == ("p", "p")


# --- a customer's own use of the identity's values -------------------------------------------


def test_each_event_reads_the_days_its_customer_used_every_value_before_its_latest_weeks(
    store_backend: StoreBackend,
) -> None:
    """After a `feature_used` event the store reads, for the migration evidence, on how
    many days the customer used each feature 31 to 90 days before (`Features.own`),
    whatever the store; other events read nothing. Checked against the events: a value
    counts once a day however often it was used."""
    catalog = default_catalog()
    ident = catalog.identity
    assert ident is not None
    rng = random.Random(5)
    pool = ["search", "export", "api", "billing", "alerts"]
    start = parse_time("2026-01-01T00:00:00Z")
    events = []
    for c in range(6):
        for day in range(120):
            at = start + day * DAY + c
            if day % 7 == 0:
                events.append(ev(f"s{c}-{day}", f"c{c}", "session_start", _iso(at)))
            for n in range(rng.choice([0, 0, 1, 2, 3])):
                feature = rng.choice(pool[: 2 + c % 4])
                when = _iso(at + 3600 * (n + 1))
                events.append(ev(f"e{c}-{day}-{n}", f"c{c}", "feature_used", when, feature=feature))
    events.sort(key=lambda e: e.epoch)

    def expected(e: Event) -> dict[int, float]:
        today = int(e.epoch // DAY)
        days: dict[str, set[int]] = {}
        for o in events:
            d = int(o.epoch // DAY)
            mine = o.customer_id == e.customer_id and o.type == "feature_used"
            if mine and today - ident.long_days < d <= today - ident.recent_days:
                days.setdefault(str(o.properties["feature"]), set()).add(d)
        return {value_number(v): float(len(ds)) for v, ds in days.items()}

    async def body() -> None:
        async with store_backend.open(catalog) as stores:
            got = await stores.features.apply(events)
            own = got.features.own
            assert own is not None
            checked = 0
            for i, e in enumerate(events):
                mine = own[got.rows[i]]
                if e.type != "feature_used":
                    assert mine is None
                    continue
                assert mine == expected(e), (e.event_id, mine)
                checked += bool(mine)
            assert checked > 300  # most events past day 30 have a baseline to read

    run(body())


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
