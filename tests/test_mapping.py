"""Reading a foreign log through a mapping (`models.mapping`, `read_events(mapping=...)`).

Unit tests on small hand-written CSV and Parquet files: renames, type mapping, amounts,
zones, sessions, derived ids, time order and the errors that name a column or a row.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from models.eventfile import ReadStats, read_events
from models.events import Event
from models.mapping import HistoryMapping, mapping_from_options, mapping_from_table
from offline.train import load_settings

CLICKS = HistoryMapping(
    customer_id="user_id",
    ts="timestamp",
    type="event",
    types={"order_completed": "purchase", "product_view": "feature_used"},
    naive_utc=True,
)


def write(tmp_path: Path, rows: list[dict[str, object]], name: str = "log.csv") -> Path:
    path = tmp_path / name
    frame = pd.DataFrame(rows)
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def read(path: Path, mapping: HistoryMapping, stats: ReadStats | None = None) -> list[Event]:
    return list(read_events(path, stats, mapping=mapping))


def click(user: str, event: str, ts: str, **more: object) -> dict[str, object]:
    return {"user_id": user, "event": event, "timestamp": ts, **more}


def test_columns_and_types_are_renamed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            click("u1", "product_view", "2024-03-01 10:00:00", revenue=""),
            click("u1", "order_completed", "2024-03-01 10:05:00", revenue="49.5"),
            click("u2", "wishlist_add", "2024-03-02 08:00:00", revenue=""),
        ],
    )
    events = read(path, CLICKS.model_copy(update={"amount": "revenue"}))
    got = [(e.customer_id, e.type, e.ts.isoformat(), e.properties) for e in events]
    assert got == [
        ("u1", "feature_used", "2024-03-01T10:00:00+00:00", {"feature": "product_view"}),
        ("u1", "purchase", "2024-03-01T10:05:00+00:00", {"amount": 49.5}),
        ("u2", "wishlist_add", "2024-03-02T08:00:00+00:00", {}),  # unmapped: its own name
    ]


def test_feature_from_a_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            click("u1", "product_view", "2024-03-01 10:00:00", page="tv-42"),
            click("u1", "product_view", "2024-03-01 10:01:00", page=""),
        ],
    )
    events = read(path, CLICKS.model_copy(update={"feature": "page"}))
    assert [e.properties["feature"] for e in events] == ["tv-42", "product_view"]


def test_a_purchase_without_an_amount_counts_with_amount_zero(tmp_path: Path) -> None:
    rows = [
        click("u1", "order_completed", "2024-03-01 10:00:00", revenue=""),
        click("u1", "order_completed", "2024-03-02 10:00:00", revenue="12"),
    ]
    path = write(tmp_path, rows)
    with_column = read(path, CLICKS.model_copy(update={"amount": "revenue"}))
    assert [e.properties["amount"] for e in with_column] == [0.0, 12.0]
    assert [e.properties["amount"] for e in read(path, CLICKS)] == [0.0, 0.0]  # no column


def test_a_bad_amount_is_rejected_naming_the_column_and_row(tmp_path: Path) -> None:
    rows = [
        click("u1", "order_completed", "2024-03-01 10:00:00", revenue="12,50"),
        click("u1", "order_completed", "2024-03-02 10:00:00", revenue="-3"),
        click("u1", "order_completed", "2024-03-03 10:00:00", revenue="7"),
    ]
    stats = ReadStats()
    events = read(write(tmp_path, rows), CLICKS.model_copy(update={"amount": "revenue"}), stats)
    assert [e.properties["amount"] for e in events] == [7.0]
    assert stats.rejected == {"wrong_type": 1, "invalid_value": 1}
    assert stats.examples[0].startswith("log.csv:2: revenue:")
    assert stats.examples[1].startswith("log.csv:3: revenue:")


def test_naive_times_are_utc_only_when_told(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            click("u1", "product_view", "2024-03-01T10:00:00+02:00"),
            click("u1", "product_view", "2024-03-01 12:00:00"),
        ],
    )
    told = read(path, CLICKS)
    utc = ["2024-03-01T08:00:00Z", "2024-03-01T12:00:00Z"]
    assert [e.epoch for e in told] == [pd.Timestamp(t).timestamp() for t in utc]
    with pytest.raises(
        ValueError, match=r"log\.csv:3: timestamp '2024-03-01 12:00:00' has no zone"
    ):
        read(path, CLICKS.model_copy(update={"naive_utc": False}))


def test_an_unparseable_time_is_rejected_naming_the_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            click("u1", "product_view", "2024-03-01 10:00:00"),
            click("u1", "product_view", "yesterday noon"),
            click("u1", "product_view", ""),
        ],
    )
    stats = ReadStats()
    assert len(read(path, CLICKS, stats)) == 1
    assert stats.valid == 1 and stats.rejected == {"invalid_value": 1, "missing": 1}
    assert sorted(stats.examples) == [
        "log.csv:3: timestamp: 'yesterday noon' is not a date and time",
        "log.csv:4: timestamp: is empty",
    ]


def test_a_session_column_opens_each_session_once_at_its_first_event(tmp_path: Path) -> None:
    rows = [
        click("u1", "product_view", "2024-03-01 10:00:00", session_id="s1"),
        click("u1", "product_view", "2024-03-01 10:02:00", session_id="s1"),
        click("u2", "product_view", "2024-03-01 10:03:00", session_id="s1"),  # other customer
        click("u1", "product_view", "2024-03-02 09:00:00", session_id="s2"),
        click("u1", "product_view", "2024-03-02 09:01:00", session_id=""),  # no session
    ]
    mapping = CLICKS.model_copy(update={"session": "session_id"})
    events = read(write(tmp_path, rows), mapping)
    starts = [e for e in events if e.type == "session_start"]
    assert [(e.customer_id, e.properties["session"], e.ts.hour) for e in starts] == [
        ("u1", "s1", 10), ("u2", "s1", 10), ("u1", "s2", 9)
    ]  # fmt: skip
    assert [e.type for e in events].count("feature_used") == 5
    # each session_start comes just before its session's first event, at the same time
    for start in starts:
        after = events[events.index(start) + 1]
        assert (after.customer_id, after.ts, after.type) == (
            start.customer_id, start.ts, "feature_used"
        )  # fmt: skip
    # ids do not depend on which event of the session the file holds first
    again = read(write(tmp_path, rows[1:2] + rows[:1] + rows[2:], "other.csv"), mapping)
    assert {e.event_id for e in starts} == {e.event_id for e in again if e.type == "session_start"}


def test_a_logged_session_start_is_not_doubled(tmp_path: Path) -> None:
    rows = [
        click("u1", "visit", "2024-03-01 10:00:00", session_id="s1"),
        click("u1", "product_view", "2024-03-01 10:01:00", session_id="s1"),
    ]
    mapping = CLICKS.model_copy(
        update={"session": "session_id", "types": {**CLICKS.types, "visit": "session_start"}}
    )
    assert [e.type for e in read(write(tmp_path, rows), mapping)] == [
        "session_start",
        "feature_used",
    ]


def test_derived_ids_are_the_same_on_every_read_and_in_every_format(tmp_path: Path) -> None:
    rows = [
        click("u1", "product_view", "2024-03-01 10:00:00"),
        click("u1", "product_view", "2024-03-01 10:00:00"),  # the same row twice: two events
        click("u2", "order_completed", "2024-03-01 11:00:00"),
    ]
    csv = read(write(tmp_path, rows), CLICKS)
    ids = [e.event_id for e in csv]
    assert len(set(ids)) == 3
    assert [e.event_id for e in read(write(tmp_path, rows), CLICKS)] == ids
    parquet = [dict(r, timestamp=pd.Timestamp(str(r["timestamp"]))) for r in rows]
    assert [e.event_id for e in read(write(tmp_path, parquet, "log.parquet"), CLICKS)] == ids
    # a row's id depends on its content: another customer in row 1, another id there only
    other = [click("u9", "product_view", "2024-03-01 10:00:00"), *rows[1:]]
    changed = read(write(tmp_path, other), CLICKS)
    assert [a == b for a, b in zip(ids, (e.event_id for e in changed), strict=True)] == [
        False, True, True
    ]  # fmt: skip


def test_an_event_id_column_is_used_when_mapped(tmp_path: Path) -> None:
    rows = [click("u1", "product_view", "2024-03-01 10:00:00", id=77)]
    events = read(write(tmp_path, rows), CLICKS.model_copy(update={"event_id": "id"}))
    assert [e.event_id for e in events] == ["77"]


def test_rows_are_read_in_time_order_unless_file_order(tmp_path: Path) -> None:
    rows = [
        click("u1", "product_view", "2024-03-02 10:00:00"),
        click("u2", "product_view", "2024-03-01 10:00:00"),
        click("u1", "product_view", "2024-03-03 10:00:00"),
        click("u2", "product_view", "2024-03-02 10:00:00"),
    ]
    path = write(tmp_path, rows)
    timed = read(path, CLICKS)
    assert [e.ts.day for e in timed] == [1, 2, 2, 3]
    assert [e.customer_id for e in timed][1:3] == ["u1", "u2"]  # equal times: file order
    filed = read(path, CLICKS.model_copy(update={"file_order": True}))
    assert [e.ts.day for e in filed] == [2, 1, 3, 2]
    assert {e.event_id for e in timed} == {e.event_id for e in filed}


def test_unmapped_events_are_dropped_when_asked(tmp_path: Path) -> None:
    rows = [
        click("u1", "product_view", "2024-03-01 10:00:00"),
        click("u1", "scroll", "2024-03-01 10:01:00"),
    ]
    stats = ReadStats()
    events = read(write(tmp_path, rows), CLICKS.model_copy(update={"drop_unmapped": True}), stats)
    assert [e.type for e in events] == ["feature_used"]
    assert (stats.valid, stats.dropped, sum(stats.rejected.values())) == (1, 1, 0)


def test_an_empty_customer_is_rejected_naming_the_column(tmp_path: Path) -> None:
    rows = [click("", "product_view", "2024-03-01 10:00:00")]
    stats = ReadStats()
    assert read(write(tmp_path, rows), CLICKS, stats) == []
    assert stats.examples == ["log.csv:2: user_id: is empty"]


def test_a_column_the_file_lacks_fails_at_once_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, [click("u1", "product_view", "2024-03-01 10:00:00")])
    with pytest.raises(ValueError, match="reads session from column 'sess', which the file lacks"):
        read(path, CLICKS.model_copy(update={"session": "sess"}))
    with pytest.raises(ValueError, match="reads customer_id from column 'customer_id'"):
        read(path, HistoryMapping(ts="timestamp", type="event"))


def test_jsonl_is_not_read_through_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("{}\n")
    with pytest.raises(ValueError, match="a mapping reads CSV or Parquet"):
        read(path, CLICKS)


def test_options_lay_over_the_config_table() -> None:
    base = mapping_from_table(
        {"customer_id": "user_id", "ts": "timestamp", "types": {"pay": "purchase", "x": "y"}}
    )
    merged = mapping_from_options(
        base, ["ts=time", "session=sess"], ["x=feature_used"], naive_utc=True
    )
    assert merged is not None
    assert (merged.customer_id, merged.ts, merged.session, merged.naive_utc) == (
        "user_id", "time", "sess", True
    )  # fmt: skip
    assert merged.types == {"pay": "purchase", "x": "feature_used"}
    assert mapping_from_options(None) is None  # nothing given: our own columns


@pytest.mark.parametrize(
    ("maps", "types", "message"),
    [
        (["user=user_id"], [], "unknown target 'user'"),
        (["customer_id"], [], "--map 'customer_id': expected TARGET=COLUMN"),
        ([], ["order_completed"], "--map-type 'order_completed': expected SOURCE=TYPE"),
        ([], ["pay=" + "x" * 65], "'pay' maps to"),
    ],
)
def test_bad_options_are_named(maps: list[str], types: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mapping_from_options(None, maps, types)


def test_the_config_file_holds_the_mapping(tmp_path: Path) -> None:
    config = tmp_path / "segstream.toml"
    config.write_text(
        '[mapping]\ncustomer_id = "user_id"\nnaive_utc = true\n'
        '[mapping.types]\norder_completed = "purchase"\n'
    )
    settings = load_settings(config)
    assert settings.mapping == HistoryMapping(
        customer_id="user_id", naive_utc=True, types={"order_completed": "purchase"}
    )
    assert load_settings(None).mapping is None
    config.write_text('[mapping]\ncustomer = "user_id"\n')
    with pytest.raises(ValueError, match=r"segstream.toml: \[mapping\] customer: unknown key"):
        load_settings(config)
