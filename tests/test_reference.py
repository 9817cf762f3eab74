"""The batch reference on small histories whose features were worked out by hand.

Every expected number below was computed by hand from the catalog's definition, not by
pandas. Unless a test says otherwise, t is 2026-01-20T12:00:00Z, so the windows are
  7 d: 2026-01-14 .. 2026-01-20,  30 d: 2025-12-22 .. 2026-01-20,
  90 d: 2025-10-23 .. 2026-01-20   (UTC calendar days).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from models.catalog import Catalog, catalog_from_config, default_catalog
from models.eventfile import ReadStats, jsonl_spans, read_events
from models.events import parse_time, validate_event
from offline.reference import events_frame, features_at, load_frame

T = "2026-01-20T12:00:00Z"
HOUR = 1 / 24
SECOND = 1 / 86_400

NAMES = default_catalog().names


LIFETIME_NAMES = {
    *(n for n in default_catalog().names if n.endswith("_lifetime")),
    "purchase_span_days",
    "avg_days_between_purchases",
}


def ev(event_id: str, customer: str, kind: str, ts: str, **props: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": customer,
        "type": kind,
        "ts": ts,
        "properties": props,
    }


def features(
    events: list[dict[str, Any]], at: str = T, catalog: Catalog | None = None
) -> pd.DataFrame:
    cat = catalog or default_catalog()
    frame = events_frame([validate_event(e) for e in events], cat)
    return features_at(frame, cat, parse_time(at))


def row(table: pd.DataFrame, customer: str) -> dict[str, float]:
    return {name: float(value) for name, value in table.loc[customer].items()}


def zeros(**values: float) -> dict[str, float]:
    """Every default day-window feature 0, recency 365, except the given ones (lifetime
    features are checked by their own tests)."""
    out = dict.fromkeys((n for n in NAMES if n not in LIFETIME_NAMES), 0.0)
    out["days_since_last_event"] = 365.0
    out["days_since_last_purchase"] = 365.0
    out.update(values)
    return out


def assert_row(table: pd.DataFrame, customer: str, expected: dict[str, float]) -> None:
    got = row(table, customer)
    wrong = {
        name: (got[name], want)
        for name, want in expected.items()
        if got[name] != pytest.approx(want, rel=1e-12, abs=1e-9)
    }
    assert not wrong, f"{customer}: (got, expected) {wrong}"


# --- windows -----------------------------------------------------------------------------


def test_window_edges_7_and_30_days() -> None:
    table = features(
        [
            ev("1", "a", "session_start", "2026-01-13T23:59:59Z"),  # day d-7: out of 7 d
            ev("2", "a", "session_start", "2026-01-14T00:00:00Z"),  # day d-6: in 7 d
            ev("3", "a", "session_start", "2025-12-21T23:59:59Z"),  # day d-30: out of 30 d
            ev("4", "a", "session_start", "2025-12-22T00:00:00Z"),  # day d-29: in 30 d
        ]
    )
    assert_row(
        table,
        "a",
        zeros(
            events_7d=1,
            sessions_7d=1,
            active_days_7d=1,
            events_30d=3,
            sessions_30d=3,
            active_days_30d=3,
            events_90d=4,
            sessions_90d=4,
            active_days_90d=4,
            days_since_last_event=6.5,  # 2026-01-14 00:00 -> 2026-01-20 12:00
            tenure_days=29.5 + SECOND,  # 2025-12-21 23:59:59 -> 2026-01-20 12:00
        ),
    )


def test_window_edge_90_days() -> None:
    table = features(
        [
            ev("1", "b", "email_open", "2025-10-22T23:59:59Z"),  # day d-90: out
            ev("2", "b", "email_open", "2025-10-23T00:00:00Z"),  # day d-89: in
        ]
    )
    assert_row(
        table,
        "b",
        zeros(
            events_90d=1,
            email_opens_90d=1,
            active_days_90d=1,
            days_since_last_event=89.5,
            tenure_days=89.5 + SECOND,
        ),
    )


def test_window_days_are_utc_days_whatever_the_offset() -> None:
    table = features(
        [
            # local Jan 14, but 2026-01-13T23:00Z: day d-7, out of the 7-day window
            ev("1", "c", "support_ticket", "2026-01-14T01:00:00+02:00"),
            # local Jan 13, but 2026-01-14T01:00Z: day d-6, in
            ev("2", "c", "support_ticket", "2026-01-13T20:00:00-05:00"),
        ]
    )
    assert_row(
        table,
        "c",
        zeros(
            events_7d=1,
            support_tickets_7d=1,
            active_days_7d=1,
            events_30d=2,
            support_tickets_30d=2,
            active_days_30d=2,
            events_90d=2,
            support_tickets_90d=2,
            active_days_90d=2,
            days_since_last_event=6 + 11 * HOUR,  # 2026-01-14 01:00Z -> 2026-01-20 12:00Z
            tenure_days=6 + 13 * HOUR,  # 2026-01-13 23:00Z -> 2026-01-20 12:00Z
        ),
    )


def test_window_is_calendar_days_not_hours() -> None:
    # t late in the day: an event 6 days and 23 hours earlier (on day d-6) is in the 7-day
    # window; one 7 days and 1 minute earlier (day d-7) is out, though under 7 x 24 h + 1 h
    table = features(
        [
            ev("1", "d", "signup", "2026-01-14T00:30:00Z"),
            ev("2", "d", "session_start", "2026-01-13T23:29:00Z"),
        ],
        at="2026-01-20T23:30:00Z",
    )
    got = row(table, "d")
    assert (got["events_7d"], got["sessions_7d"], got["events_30d"]) == (1, 0, 2)


def test_events_after_t_are_ignored() -> None:
    history = [
        ev("1", "a", "purchase", "2026-01-20T12:00:00Z", amount=10),  # exactly t: counted
        ev("2", "a", "purchase", "2026-01-20T12:00:01Z", amount=50),  # 1 s after t
        ev("3", "a", "feature_used", "2026-01-21T09:00:00Z", feature="export"),
        ev("4", "late", "signup", "2026-01-20T12:00:01Z"),
    ]
    table = features(history)
    assert list(table.index) == ["a"]
    assert_row(
        table,
        "a",
        zeros(
            **{
                f"{stem}_{w}d": 1
                for stem in ("events", "purchases", "active_days")
                for w in (7, 30, 90)
            },
            **{f"revenue_{w}d": 10 for w in (7, 30, 90)},
            days_since_last_event=0,
            days_since_last_purchase=0,
            tenure_days=0,
            avg_order_value_90d=10,
        ),
    )
    # a day later the same history counts them
    later = features(history, at="2026-01-21T12:00:00Z")
    assert list(later.index) == ["a", "late"]
    got = row(later, "a")
    assert (got["purchases_7d"], got["revenue_7d"], got["feature_uses_7d"]) == (2, 60, 1)
    assert got["avg_order_value_90d"] == 30
    assert got["days_since_last_event"] == pytest.approx(3 * HOUR)
    assert got["days_since_last_purchase"] == pytest.approx(1 - SECOND)
    assert got["active_days_7d"] == 2


def test_customers_are_exactly_those_seen_by_t() -> None:
    table = features(
        [
            ev("1", "zed", "page_view", "2026-01-01T00:00:00Z"),
            ev("2", "amy", "signup", "2025-01-01T00:00:00Z"),  # over a year ago: still a customer
            ev("3", "future", "signup", "2026-02-01T00:00:00Z"),
            ev("4", "bob", "session_start", "2026-01-20T11:59:59+00:00"),
        ]
    )
    assert list(table.index) == ["amy", "bob", "zed"]
    assert table.index.name == "customer_id"
    assert list(table.columns) == list(NAMES)


def test_no_events_by_t_gives_an_empty_table() -> None:
    table = features([ev("1", "a", "signup", "2026-02-01T00:00:00Z")])
    assert len(table) == 0
    assert list(table.columns) == list(NAMES)


# --- types -------------------------------------------------------------------------------


def test_unknown_types_count_only_toward_type_agnostic_features() -> None:
    table = features(
        [
            ev("1", "u", "page_view", "2026-01-18T10:00:00Z", path="/pricing"),
            ev("2", "u", "page_view", "2026-01-19T10:00:00Z", feature="export"),
            ev("3", "u", "refund", "2026-01-19T11:00:00Z", amount=30),
        ]
    )
    assert_row(
        table,
        "u",
        zeros(
            **{f"events_{w}d": 3 for w in (7, 30, 90)},
            **{f"active_days_{w}d": 2 for w in (7, 30, 90)},
            days_since_last_event=1 + HOUR,  # 2026-01-19 11:00 -> 2026-01-20 12:00
            tenure_days=2 + 2 * HOUR,  # 2026-01-18 10:00 -> 2026-01-20 12:00
        ),
    )


def test_every_builtin_type_counts_toward_its_feature() -> None:
    table = features(
        [
            ev("1", "k", "signup", "2026-01-02T08:00:00Z"),
            ev("2", "k", "session_start", "2026-01-15T08:00:00Z"),
            ev("3", "k", "feature_used", "2026-01-15T08:05:00Z", feature="search"),
            ev("4", "k", "purchase", "2026-01-15T08:10:00Z", amount=19.5),
            ev("5", "k", "support_ticket", "2026-01-16T08:00:00Z"),
            ev("6", "k", "email_open", "2026-01-10T08:00:00Z"),
        ]
    )
    expected = zeros(
        events_7d=4,
        sessions_7d=1,
        feature_uses_7d=1,
        distinct_features_7d=1,
        purchases_7d=1,
        revenue_7d=19.5,
        support_tickets_7d=1,
        email_opens_7d=0,
        active_days_7d=2,  # Jan 15, Jan 16
        days_since_last_event=4 + 4 * HOUR,  # Jan 16 08:00 -> Jan 20 12:00
        days_since_last_purchase=5 + 4 * HOUR - 10 / 1440,  # Jan 15 08:10 -> Jan 20 12:00
        tenure_days=18 + 4 * HOUR,  # Jan 2 08:00 -> Jan 20 12:00
        avg_order_value_90d=19.5,
    )
    for w in (30, 90):
        expected |= {
            f"events_{w}d": 6,
            f"sessions_{w}d": 1,
            f"feature_uses_{w}d": 1,
            f"distinct_features_{w}d": 1,
            f"purchases_{w}d": 1,
            f"revenue_{w}d": 19.5,
            f"support_tickets_{w}d": 1,
            f"email_opens_{w}d": 1,
            f"active_days_{w}d": 4,  # Jan 2, 10, 15, 16
        }
    assert_row(table, "k", expected)


def test_customer_without_purchases() -> None:
    table = features(
        [
            ev("1", "n", "signup", "2026-01-19T00:00:00Z"),
            ev("2", "n", "session_start", "2026-01-19T06:00:00Z"),
            ev("3", "n", "feature_used", "2026-01-20T06:00:00Z", feature="export"),
        ]
    )
    got = row(table, "n")
    assert got["days_since_last_purchase"] == 365
    assert got["avg_order_value_90d"] == 0
    for w in (7, 30, 90):
        assert got[f"revenue_{w}d"] == 0
        assert got[f"purchases_{w}d"] == 0
    assert got["days_since_last_event"] == pytest.approx(0.25)
    assert got["tenure_days"] == pytest.approx(1.5)


def test_recency_is_capped_at_365_days_tenure_is_not() -> None:
    table = features(
        [
            ev("1", "old", "purchase", "2024-12-16T12:00:00Z", amount=80),  # 400 days before t
            ev("2", "old", "signup", "2025-07-04T12:00:00Z"),  # 200 days before t
        ]
    )
    assert_row(
        table,
        "old",
        zeros(days_since_last_event=200, days_since_last_purchase=365, tenure_days=400),
    )


def test_purchase_outside_90_days_counts_for_recency_only() -> None:
    table = features(
        [
            ev("1", "p", "purchase", "2025-10-01T12:00:00Z", amount=99),  # 111 days before t
            ev("2", "p", "purchase", "2026-01-19T12:00:00Z", amount=0),  # a free order
        ]
    )
    got = row(table, "p")
    assert got["days_since_last_purchase"] == 1
    assert got["tenure_days"] == 111
    assert (got["purchases_90d"], got["revenue_90d"], got["avg_order_value_90d"]) == (1, 0, 0)


def test_average_order_value() -> None:
    table = features(
        [
            ev("1", "v", "purchase", "2025-11-01T00:00:00Z", amount=10),
            ev("2", "v", "purchase", "2026-01-01T00:00:00Z", amount=25.5),
            ev("3", "v", "purchase", "2026-01-20T00:00:00Z", amount=4.5),
        ]
    )
    got = row(table, "v")
    assert (got["purchases_7d"], got["revenue_7d"]) == (1, 4.5)
    assert (got["purchases_30d"], got["revenue_30d"]) == (2, 30)
    assert (got["purchases_90d"], got["revenue_90d"]) == (3, 40)
    assert got["avg_order_value_90d"] == pytest.approx(40 / 3)
    assert got["days_since_last_purchase"] == 0.5


def test_distinct_features_across_days() -> None:
    table = features(
        [
            ev("1", "f", "feature_used", "2025-11-01T09:00:00Z", feature="api"),
            ev("2", "f", "feature_used", "2025-12-01T09:00:00Z", feature="export"),
            ev("3", "f", "feature_used", "2026-01-10T09:00:00Z", feature="export"),
            ev("4", "f", "feature_used", "2026-01-15T09:00:00Z", feature="search"),
            ev("5", "f", "feature_used", "2026-01-19T09:00:00Z", feature="export"),
            ev("6", "f", "feature_used", "2026-01-19T10:00:00Z", feature="dashboard"),
            ev("7", "f", "feature_used", "2026-01-19T11:00:00Z", feature="Export"),
        ]
    )
    got = row(table, "f")
    # 7 d: search, export, dashboard, Export / 30 d: + export on Jan 10 (already counted)
    # 90 d: + export on Dec 1 (already counted), api on Nov 1
    assert (got["feature_uses_7d"], got["distinct_features_7d"]) == (4, 4)
    assert (got["feature_uses_30d"], got["distinct_features_30d"]) == (5, 4)
    assert (got["feature_uses_90d"], got["distinct_features_90d"]) == (7, 5)
    assert (got["active_days_7d"], got["active_days_30d"], got["active_days_90d"]) == (2, 3, 5)


def test_active_days_count_utc_days() -> None:
    table = features(
        [
            ev("1", "d", "session_start", "2026-01-19T10:00:00Z"),
            ev("2", "d", "session_start", "2026-01-19T15:00:00Z"),  # same day: once
            ev("3", "d", "session_start", "2026-01-17T23:59:00Z"),
            ev("4", "d", "session_start", "2026-01-18T00:01:00Z"),  # 2 min later, next day
            ev("5", "d", "page_view", "2026-01-16T23:30:00-01:00"),  # 2026-01-17T00:30Z
        ]
    )
    got = row(table, "d")
    assert (got["events_7d"], got["sessions_7d"]) == (5, 4)
    assert got["active_days_7d"] == 3  # Jan 17, 18, 19
    assert got["active_days_30d"] == 3
    assert got["tenure_days"] == pytest.approx(3 + 11.5 * HOUR)  # Jan 17 00:30Z -> Jan 20 12:00


def test_duplicates_count_once_first_delivery_wins() -> None:
    table = features(
        [
            ev("p1", "dup", "purchase", "2026-01-19T10:00:00Z", amount=20),
            ev("p1", "dup", "purchase", "2026-01-19T10:00:00Z", amount=20),  # redelivery
            ev("p2", "dup", "purchase", "2026-01-18T10:00:00Z", amount=30),
            ev("p1", "dup", "purchase", "2026-01-19T10:00:00Z", amount=20),  # and again
            ev("p3", "dup", "purchase", "2026-01-17T10:00:00Z", amount=5),
            ev("p3", "dup", "purchase", "2026-01-17T10:00:00Z", amount=500),  # first one wins
            ev("s1", "dup", "session_start", "2026-01-19T09:00:00Z"),
            ev("s1", "dup", "session_start", "2026-01-19T09:00:00Z"),
        ]
    )
    got = row(table, "dup")
    assert got["events_7d"] == 4
    assert got["sessions_7d"] == 1
    assert (got["purchases_7d"], got["revenue_7d"]) == (3, 55)
    assert got["avg_order_value_90d"] == pytest.approx(55 / 3)
    assert got["active_days_7d"] == 3


def test_customers_do_not_mix() -> None:
    table = features(
        [
            ev("1", "x", "purchase", "2026-01-19T12:00:00Z", amount=7),
            ev("2", "y", "session_start", "2026-01-18T12:00:00Z"),
            ev("3", "y", "feature_used", "2026-01-18T12:00:00Z", feature="export"),
        ]
    )
    x, y = row(table, "x"), row(table, "y")
    assert (x["events_7d"], x["revenue_7d"], x["feature_uses_7d"]) == (1, 7, 0)
    assert (y["events_7d"], y["revenue_7d"], y["feature_uses_7d"]) == (2, 0, 1)
    assert (x["days_since_last_event"], y["days_since_last_event"]) == (1, 2)
    assert y["days_since_last_purchase"] == 365


# --- user features -----------------------------------------------------------------------

USER_CATALOG = {
    "features": [
        {
            "name": "exports_30d",
            "aggregation": "count",
            "window_days": 30,
            "filter": {"types": ["feature_used"], "where": {"feature": "export"}},
        },
        {
            "name": "seats_added_30d",
            "aggregation": "sum",
            "window_days": 30,
            "property": "seats",
            "filter": {"types": ["seats_added"]},
        },
        {
            "name": "exports_per_session_30d",
            "aggregation": "ratio",
            "numerator": "exports_30d",
            "denominator": "sessions_30d",
        },
        {
            "name": "trial_sessions_30d",
            "aggregation": "count",
            "window_days": 30,
            "filter": {"types": ["session_start"], "where": {"trial": True}},
        },
        {
            "name": "days_since_last_ticket",
            "aggregation": "days_since_last",
            "filter": {"types": ["support_ticket"]},
            "cap_days": 30,
        },
    ]
}

USER_HISTORY = [
    ev("1", "x", "feature_used", "2026-01-19T10:00:00Z", feature="export"),
    ev("2", "x", "feature_used", "2026-01-05T10:00:00Z", feature="export"),
    ev("3", "x", "feature_used", "2026-01-19T11:00:00Z", feature="search"),
    ev("4", "x", "feature_used", "2025-12-01T10:00:00Z", feature="export"),  # out of 30 d
    ev("5", "x", "session_start", "2026-01-19T09:00:00Z", trial=True),
    ev("6", "x", "session_start", "2026-01-12T09:00:00Z", trial=True),
    ev("7", "x", "session_start", "2026-01-11T09:00:00Z", trial=1),  # 1 is not true
    ev("8", "x", "session_start", "2026-01-10T09:00:00Z"),
    ev("9", "x", "seats_added", "2026-01-10T09:00:00Z", seats=3),
    ev("10", "x", "seats_added", "2026-01-18T09:00:00Z", seats=2.5),
    ev("11", "x", "seats_added", "2026-01-18T10:00:00Z", seats="many"),  # not a number: 0
    ev("12", "x", "seats_added", "2026-01-18T11:00:00Z"),  # no seats: 0
    ev("13", "x", "seats_added", "2025-12-01T09:00:00Z", seats=10),  # out of 30 d
    ev("14", "x", "purchase", "2026-01-18T12:00:00Z", amount=1, seats=100),  # wrong type
    ev("15", "x", "support_ticket", "2026-01-18T00:00:00Z"),
    ev("21", "z", "feature_used", "2026-01-20T00:00:00Z", feature="export"),
    ev("22", "z", "support_ticket", "2025-11-01T12:00:00Z"),
]


def test_user_defined_features_from_config() -> None:
    cat = catalog_from_config(USER_CATALOG)
    table = features(USER_HISTORY, catalog=cat)
    assert list(table.columns) == [*NAMES, *(f["name"] for f in USER_CATALOG["features"])]
    x, z = row(table, "x"), row(table, "z")
    assert x["exports_30d"] == 2
    assert x["seats_added_30d"] == 5.5
    assert x["sessions_30d"] == 4
    assert x["exports_per_session_30d"] == 0.5
    assert x["trial_sessions_30d"] == 2
    assert x["days_since_last_ticket"] == 2.5
    # the seats_added events are an unknown type for the default features
    assert (x["events_30d"], x["events_90d"]) == (13, 15)
    assert (x["purchases_30d"], x["revenue_30d"]) == (1, 1)
    # z: an export but no session: the ratio is 0; the ticket is 80 days old, capped at 30
    assert (z["exports_30d"], z["sessions_30d"], z["exports_per_session_30d"]) == (1, 0, 0)
    assert z["seats_added_30d"] == 0
    assert z["trial_sessions_30d"] == 0
    assert z["days_since_last_ticket"] == 30


def test_user_features_do_not_change_the_default_ones() -> None:
    plain = features(USER_HISTORY)
    extended = features(USER_HISTORY, catalog=catalog_from_config(USER_CATALOG))
    pd.testing.assert_frame_equal(extended[list(NAMES)], plain)


# --- file formats ------------------------------------------------------------------------

FILE_HISTORY = [
    ev("a1", "alice", "signup", "2026-01-02T08:00:00Z"),
    ev("a2", "alice", "feature_used", "2026-01-15T10:00:00+02:00", feature="export"),
    ev("a3", "alice", "purchase", "2026-01-19T18:30:00-05:00", amount=12.5),  # Jan 19 23:30Z
    ev("a3", "alice", "purchase", "2026-01-19T18:30:00-05:00", amount=12.5),  # duplicate
    ev("a4", "alice", "page_view", "2026-01-20T06:00:00Z", path="/help"),
    ev("b1", "bob", "purchase", "2026-01-05T00:00:00Z", amount=40),
    ev("b2", "bob", "purchase", "2026-01-06T00:00:00Z", amount=-1),  # rejected
    ev("b3", "bob", "email_open", "2026-01-18T12:00:00Z", campaign="jan"),
    ev("c1", "carol", "session_start", "2026-01-21T00:00:00Z"),  # after t
]


def _write_jsonl(path: Path) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in FILE_HISTORY))


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [e["event_id"] for e in FILE_HISTORY],
            "customer_id": [e["customer_id"] for e in FILE_HISTORY],
            "type": [e["type"] for e in FILE_HISTORY],
            "ts": [e["ts"] for e in FILE_HISTORY],
            "properties": [
                json.dumps(e["properties"]) if e["properties"] else "" for e in FILE_HISTORY
            ],
        }
    )


def _read(path: Path) -> tuple[pd.DataFrame, ReadStats]:
    cat = default_catalog()
    stats = ReadStats()
    frame = events_frame(read_events(path, stats), cat)
    return features_at(frame, cat, parse_time(T)), stats


def test_jsonl_csv_and_parquet_give_identical_features(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "events.jsonl")
    _table().to_csv(tmp_path / "events.csv", index=False)
    _table().to_parquet(tmp_path / "events.parquet", index=False)

    tables = {}
    for name in ("events.jsonl", "events.csv", "events.parquet"):
        table, stats = _read(tmp_path / name)
        assert stats.valid == 8, name
        assert dict(stats.rejected) == {"invalid_value": 1}, name
        tables[name] = table
    pd.testing.assert_frame_equal(tables["events.csv"], tables["events.jsonl"])
    pd.testing.assert_frame_equal(tables["events.parquet"], tables["events.jsonl"])

    table = tables["events.jsonl"]
    assert list(table.index) == ["alice", "bob"]
    alice, bob = row(table, "alice"), row(table, "bob")
    assert (alice["events_7d"], alice["events_30d"], alice["active_days_7d"]) == (3, 4, 3)
    assert (alice["purchases_7d"], alice["revenue_7d"]) == (1, 12.5)
    assert (alice["feature_uses_7d"], alice["distinct_features_7d"]) == (1, 1)
    assert alice["days_since_last_event"] == 0.25
    assert alice["days_since_last_purchase"] == pytest.approx(12.5 * HOUR)
    assert alice["tenure_days"] == pytest.approx(18 + 4 * HOUR)
    assert (bob["purchases_30d"], bob["revenue_30d"], bob["avg_order_value_90d"]) == (1, 40, 40)
    assert (bob["purchases_7d"], bob["email_opens_7d"]) == (0, 1)
    assert bob["days_since_last_purchase"] == 15.5


def test_parquet_null_properties_mean_empty(tmp_path: Path) -> None:
    # "properties ... may be empty": a null cell is an event without properties
    table = _table().iloc[[0, 4]].copy()  # a signup and a page_view
    table["properties"] = [None, '{"path": "/help"}']
    table.to_parquet(tmp_path / "events.parquet", index=False)
    stats = ReadStats()
    events = list(read_events(tmp_path / "events.parquet", stats))
    assert dict(stats.rejected) == {}
    assert [(e.event_id, e.properties) for e in events] == [
        ("a1", {}),
        ("a4", {"path": "/help"}),
    ]


def test_csv_bad_properties_are_rejected_not_raised(tmp_path: Path) -> None:
    table = _table().iloc[[0, 1]].copy()
    table["properties"] = ["not json", "[1, 2]"]
    table.to_csv(tmp_path / "events.csv", index=False)
    stats = ReadStats()
    assert list(read_events(tmp_path / "events.csv", stats)) == []
    assert dict(stats.rejected) == {"wrong_type": 2}
    assert all("properties" in example for example in stats.examples)


def test_reading_in_processes_gives_the_same_frame_and_rejections(tmp_path: Path) -> None:
    from offline.synthetic import generate_history, write_history

    history = write_history(generate_history(60, 40, seed=5, duplicate_rate=0.05), tmp_path)
    path = history["events"]
    lines = path.read_bytes().splitlines(keepends=True)
    # Bad lines in both halves, and a redelivery that crosses the cut: first delivery wins.
    first_bad, second_bad = len(lines) // 4, 3 * len(lines) // 4
    lines.insert(second_bad, b"not json\n")
    lines.insert(first_bad, b'{"event_id": "bad-1"}\n')
    second_bad += 1
    lines.append(lines[len(lines) // 8])
    path.write_bytes(b"".join(lines))
    cat = default_catalog()

    one, many = ReadStats(), ReadStats()
    alone = load_frame(path, cat, one)
    parts = load_frame(path, cat, many, processes=3, parallel_from_bytes=0)

    assert len(jsonl_spans(path, 3)) == 3
    pd.testing.assert_frame_equal(parts, alone)
    assert (many.valid, dict(many.rejected)) == (one.valid, dict(one.rejected))
    assert many.examples == one.examples
    assert [int(e.split(":")[1]) for e in one.examples] == [first_bad + 1, second_bad + 1]


def test_spans_cover_the_file_in_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(1000)))
    for parts in (1, 2, 3, 7, 2000):
        spans = jsonl_spans(path, parts)
        assert spans[0][0] == 0 and spans[-1][1] == path.stat().st_size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        data = path.read_bytes()
        assert all(data[a - 1 : a] == b"\n" for a, _ in spans[1:])
        assert len(spans) <= parts


def test_distinct_counts_agree_for_small_and_large_value_grids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import offline.reference as reference
    from offline.synthetic import generate_history, write_history

    cat = default_catalog()
    frame = load_frame(write_history(generate_history(80, 60, seed=9), tmp_path)["events"], cat)
    at = float(frame["ts"].quantile(0.7))
    flags = features_at(frame, cat, at)  # the customers x values grid fits: flag array
    monkeypatch.setattr(reference, "BITMAP_LIMIT", 0)  # as with millions of distinct values
    hashed = features_at(frame, cat, at)
    pd.testing.assert_frame_equal(flags, hashed)
    assert flags["distinct_features_30d"].max() > 1
    assert flags["active_days_30d"].max() > 1


def test_reading_falls_back_to_one_process_when_readers_cannot_start(tmp_path: Path) -> None:
    """A script piped to python has no main module the reader processes can import again:
    the read still completes, in the calling process, with the same result."""
    import subprocess
    import sys

    from offline.synthetic import generate_history, write_history

    path = write_history(generate_history(40, 30, seed=2), tmp_path)["events"]
    script = (
        "from models.catalog import default_catalog\n"
        "from offline.reference import load_frame\n"
        f"frame = load_frame({str(path)!r}, default_catalog(), processes=2, "
        "parallel_from_bytes=0)\n"
        "print(len(frame), frame['customer_id'].nunique())\n"
    )
    done = subprocess.run(
        [sys.executable, "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    alone = load_frame(path, default_catalog())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(alone)), str(alone["customer_id"].nunique())]
    assert "reading in this process" in done.stderr


def test_lifetime_features_count_every_day_of_the_current_life() -> None:
    """Lifetime totals cover every day since first seen, windows or not; a silence longer
    than the profile retention starts a new life (and one silent that long is gone)."""
    events = [
        ev("1", "a", "purchase", "2025-01-10T10:00:00Z", amount=30.0),
        ev("2", "a", "session_start", "2025-06-01T10:00:00Z"),
        ev("3", "a", "purchase", "2026-01-19T12:00:00Z", amount=10.0),
        ev("4", "a", "purchase", "2026-01-19T13:00:00Z", amount=5.0),
        ev("5", "b", "purchase", "2022-01-01T10:00:00Z", amount=99.0),  # a past life
        ev("6", "b", "session_start", "2026-01-18T12:00:00Z"),
        ev("7", "gone", "session_start", "2023-06-01T00:00:00Z"),
    ]
    table = features(events)
    a = row(table, "a")
    assert (a["events_lifetime"], a["purchases_lifetime"], a["revenue_lifetime"]) == (4, 3, 45)
    assert (a["active_days_lifetime"], a["events_90d"]) == (3, 2)
    span = (parse_time("2026-01-19T13:00:00Z") - parse_time("2025-01-10T10:00:00Z")) / 86400
    assert a["purchase_span_days"] == pytest.approx(span)
    assert a["avg_days_between_purchases"] == pytest.approx(span / 3)
    b = row(table, "b")  # 4 years silent, then back: only the new life counts
    assert (b["events_lifetime"], b["purchases_lifetime"], b["revenue_lifetime"]) == (1, 0, 0)
    assert b["tenure_days"] == pytest.approx(2.0)
    assert "gone" not in table.index
