"""`segstream backtest`: alert quality on a generated history, and on a hand-made one.

The generated history (seed 21, shared with the replay tests; the defaults were tuned on
seeds 101-103) is trained at day 99 of 150 and backtested after the training date with
the shipped defaults: the targets of issue 11 must hold. A hand-made history checks the
churn figures against a direct computation from the events; bad `--truth` files must
name the line.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from segstream.backtest import median_interval, migration_quality, wilson
from segstream.cli import app

AS_OF = "2026-04-10T00:00:00Z"  # TRAINED_AS_OF of tests/conftest.py
DAY = 86_400.0
runner = CliRunner()


def invoke(*args: str, env: dict[str, str], code: int = 0) -> str:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def backtested(trained_history: Path, embedded_redis_url: str) -> Path:
    """The shared seed-21 history and bundle (tests/conftest.py), backtested after its
    training date with the shipped defaults; outputs in DIR/bt."""
    root = trained_history
    output = invoke(
        "backtest", "--events", str(root / "events.jsonl"), "--model",
        str(root / "models/current"), "--truth", str(root / "migrations.csv"),
        "--out", str(root / "bt"), env={"SEGSTREAM_REDIS_URL": embedded_redis_url},
    )  # fmt: skip
    (root / "bt" / "summary.txt").write_text(output)
    return root


def metrics(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "bt/metrics.json").read_text())
    return data


# Hand-made histories for `migration_quality`, in days.


def seen_on(days: dict[str, list[float]]) -> pd.DataFrame:
    """Session starts: each customer's event days, in time order."""
    rows = sorted(((d * DAY, c) for c, ds in days.items() for d in ds), key=lambda r: r[0])
    return pd.DataFrame(
        {"customer_id": [c for _, c in rows], "ts": [t for t, _ in rows], "type": "session_start"}
    )


def migrations(*alerted: tuple[str, float, int]) -> pd.DataFrame:
    """Migration alerts, each (customer, day, segment it names)."""
    return pd.DataFrame(
        {"type": "segment_migration", "customer_id": [c for c, _, _ in alerted],
         "at": [d * DAY for _, d, _ in alerted], "to_segment_id": [s for _, _, s in alerted]}
    )  # fmt: skip


def changed(on: float, to: dict[str, int], started: dict[str, float] | None = None) -> pd.DataFrame:
    """The truth: customers who change on day `on` and the segment each settles in (-1:
    read off the re-scores), with the day each drift started if `started`."""
    truth = pd.DataFrame(
        {"customer_id": list(to), "changed_at": on * DAY, "to_segment": list(to.values())}
    )
    if started is not None:
        truth["started_at"] = [started[c] * DAY for c in to]
    return truth


def test_the_shipped_defaults_meet_the_alert_quality_targets(backtested: Path) -> None:
    m = metrics(backtested)
    mig, churn = m["migrations"], m["churn"]
    assert mig["changes"] >= 30 and churn["judgeable"] >= 20
    assert mig["delay_days"]["median"] is not None
    assert churn["lead_time_days"]["median"] is not None
    targets = {
        "migration recall >= 0.7": mig["recall"] >= 0.7,
        "migration precision >= 0.8": mig["precision"] >= 0.8,
        "migration flap rate <= 0.05 per 30 d": mig["flap_rate_per_30d"] <= 0.05,
        "churn precision >= 0.7": churn["precision"] >= 0.7,
    }
    figures = {k: mig[k] for k in ("precision", "precision_all", "recall", "flap_rate_per_30d")}
    figures["churn_precision"] = churn["precision"]
    missed = [name for name, met in targets.items() if not met]
    assert not missed, f"targets missed: {missed}; figures: {figures}"
    # The sweep replays the engine's own rule on the daily scores it recorded.
    assert churn["sweep_reproduces_engine"]


def test_the_report_holds_the_plots_and_the_volumes(backtested: Path) -> None:
    out = backtested / "bt"
    page = (out / "report.html").read_text()
    m = metrics(backtested)
    for figure in ("threshold_sweep.png", "migration_delay.png", "daily_volumes.png"):
        assert (out / figure).stat().st_size > 1000
        assert figure in page
    # What precision leaves out is in the report beside it, and what it counts right that
    # a flow may not want: a second alert on a change, one that names a segment on the way.
    assert "unresolved alerts" in page and "churn-led alerts" in page
    assert "repeated alerts" in page and "alerts that named the expected segment" in page
    assert "changes whose first alert named it" in page
    # Each move's speed, by the bundle's segment names.
    moves, names = m["migrations"]["by_move"], m["segment_names"]
    assert moves and sum(r["changes"] for r in moves) == m["migrations"]["crossing"]
    assert "How fast, by move" in page
    assert f"<td>{escape(names[str(moves[0]['from_segment_id'])])}</td>" in page
    vol = m["volumes"]
    assert vol["per_day"]["segment_assigned"] > 0
    assert vol["customers_alerted"]["any"] > 0
    assert vol["busiest_hour"]["alerts"] > 0
    # Segment changes without a migration alert, by cause: what the alerts file holds.
    start = datetime.fromisoformat(AS_OF.replace("Z", "+00:00"))
    bodies = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    later = [
        b["placed_by"]
        for b in bodies
        if b["type"] == "segment_assigned"
        and not b["first"]
        and b["placed_by"] != "migration"
        and datetime.fromisoformat(b["event_time"].replace("Z", "+00:00")) >= start
    ]
    placed = m["migration_behaviour"]["placed_without_migration"]
    assert placed == {k: later.count(k) for k in sorted(set(later))}
    assert sum(placed.values()) > 0 and "segment changes without a migration alert" in page
    # Changes made while the customer settled, apart: the engine's own settling period.
    mig, rules = m["migrations"], m["rules"]
    assert mig["settling_days"] == rules["early_days"] + rules["migration_dwell_days"]
    assert 0 <= mig["settling"] <= mig["changes"]
    assert mig["delay_days_settled"]["count"] <= mig["detected"]
    assert "changes of settled customers" in page
    summary = " ".join((out / "summary.txt").read_text().split())
    settled = mig["delay_days_settled"]["median"]
    assert f"({settled} d over the {mig['changes'] - mig['settling']} changes" in summary
    # Each precision, recall and median delay comes with its 95 % interval, in the metrics,
    # the report and the summary: a few dozen changes leave the median uncertain by days.
    lo, hi = mig["delay_days"]["median_ci95"]
    assert lo <= mig["delay_days"]["median"] <= hi and lo < hi
    for key in ("precision", "recall"):
        lo, hi = mig[f"{key}_ci95"]
        assert lo <= mig[key] <= hi
    assert set(mig["recall_within_ci95"]) == set(mig["recall_within"])
    assert "95 % CI" in page and "delay median, 95 % interval" in page
    assert f"[95 % CI {mig['delay_days']['median_ci95'][0]} to" in summary


def _event(eid: str, cid: str, at: datetime, kind: str = "session_start") -> str:
    ts = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    props = {"feature": "export"} if kind == "feature_used" else {}
    return json.dumps(
        {"event_id": eid, "customer_id": cid, "type": kind, "ts": ts, "properties": props}
    )


def test_churn_figures_agree_with_a_direct_count_on_a_hand_made_history(
    backtested: Path, tmp_path: Path, embedded_redis_url: str
) -> None:
    """Daily customers; some stop on a known day, some pause and come back. Precision and
    recall computed here from the events alone must match the backtest's."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    days = 150
    stops = {"stay0": days, "stay1": days, "stop40": 40, "stop60": 60, "stop100": 100,
             "stop105": 105, "stop110": 110, "pause": days}  # fmt: skip
    lines, n = [], 0
    for cid, stop in stops.items():
        for d in range(stop):
            if cid == "pause" and 100 <= d < 112:
                continue  # silent 12 days, then back
            for h in (9, 14):
                n += 1
                kind = "feature_used" if h == 14 else "session_start"
                lines.append((start + timedelta(days=d, hours=h), _event(f"e{n}", cid, start
                              + timedelta(days=d, hours=h), kind)))  # fmt: skip
    lines.sort()
    events = tmp_path / "events.jsonl"
    events.write_text("".join(line + "\n" for _, line in lines))
    out = tmp_path / "bt"
    invoke(
        "backtest", "--events", str(events), "--model", str(backtested / "models/current"),
        "--out", str(out), "--from", AS_OF, env={"SEGSTREAM_REDIS_URL": embedded_redis_url},
    )  # fmt: skip
    churn = json.loads((out / "metrics.json").read_text())["churn"]
    alerts = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines()]
    horizon = churn["horizon_days"] * DAY
    times: dict[str, list[float]] = {}
    for _, line in lines:
        e = json.loads(line)
        at = datetime.fromisoformat(e["ts"]).timestamp()
        times.setdefault(e["customer_id"], []).append(at)
    history_end = max(max(t) for t in times.values())
    begin = datetime.fromisoformat(AS_OF).timestamp()
    judged = right = 0
    for a in alerts:
        at = datetime.fromisoformat(a["event_time"]).timestamp()
        if a["type"] != "churn_risk" or not begin <= at <= history_end:
            continue
        if at + horizon <= history_end:
            judged += 1
            right += not any(at < t <= at + horizon for t in times[a["customer_id"]])
    silent = {c: max(t) for c, t in times.items()
              if begin <= max(t) and max(t) + horizon <= history_end}  # fmt: skip
    caught = {
        a["customer_id"]
        for a in alerts
        if a["type"] == "churn_risk"
        and a["customer_id"] in silent
        and silent[a["customer_id"]]
        <= datetime.fromisoformat(a["event_time"]).timestamp()
        <= silent[a["customer_id"]] + horizon
    }
    assert set(silent) == {"stop100", "stop105", "stop110"}
    assert churn["judgeable"] == judged and churn["right"] == right
    assert churn["went_silent"] == len(silent) and churn["silent_alerted"] == len(caught)
    assert churn["precision"] == (round(right / judged, 4) if judged else None)
    assert churn["recall"] == round(len(caught) / len(silent), 4)
    assert len(caught) >= 2  # the model does see customers who stop after daily use


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("customer_id,changed_at\nc0001,2026-03-01T00:00:00Z\nnobody,2026-03-02T00:00:00Z\n",
         "line 3: customer_id 'nobody' has no event"),
        ("customer_id,changed_at\nc0001,yesterday\n", "line 2: changed_at 'yesterday' is not"),
        ("customer_id,changed_at\nc0001,2026-03-01T10:00:00\n", "line 2: changed_at"),
        ("customer,changed_at\nc0001,2026-03-01\n", "line 1: missing column(s) customer_id"),
        ("customer_id,changed_at,to_segment\nc0001,2026-03-01,Nowhere\n",
         "line 2: to_segment 'Nowhere' is not a segment"),
        ("customer_id,changed_at,started_at\nc0001,2026-03-01,soon\n",
         "line 2: started_at 'soon' is not"),
        ("customer_id,changed_at,started_at\nc0001,2026-03-01,2026-03-05\n",
         "line 2: started_at '2026-03-05' is after changed_at '2026-03-01'"),
    ],
)  # fmt: skip
def test_a_bad_truth_file_names_the_line(
    backtested: Path, tmp_path: Path, embedded_redis_url: str, content: str, message: str
) -> None:
    truth = tmp_path / "truth.csv"
    truth.write_text(content)
    result = runner.invoke(
        app,
        ["backtest", "--events", str(backtested / "events.jsonl"), "--model",
         str(backtested / "models/current"), "--truth", str(truth), "--out", str(tmp_path)],
        env={"SEGSTREAM_REDIS_URL": embedded_redis_url},
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "metrics.json").exists()


def test_an_alert_in_a_drifts_first_half_caught_it_early() -> None:
    """A gradual change (drift from day 10, midpoint day 20): an alert on day 15 caught it
    early (delay -5 days from the midpoint, right, within 7 days); one before the drift
    began is wrong, as is any alert on a customer whose truth has no start column."""
    events = seen_on({"a": [0, 60], "b": [0, 60], "c": [0, 60]})
    alerts = migrations(("a", 15, 1), ("b", 5, 1), ("c", 15, 1))
    truth = changed(20, {"a": 1, "b": 1, "c": 1}, started={"a": 10, "b": 10, "c": 20})
    got = migration_quality(alerts, truth, events, start=0.0, end=60 * DAY)
    assert got["right"] == 1 and got["detected"] == 1  # a's, in the drift
    assert got["delays"] == [-5.0]
    assert got["recall_within"]["7"] == round(1 / 3, 4)
    # Without started_at an alert before changed_at is wrong, as before.
    plain = migration_quality(alerts, truth.drop(columns="started_at"), events, start=0.0,
                              end=60 * DAY)  # fmt: skip
    assert plain["right"] == 0


def test_an_alert_on_a_customer_silent_at_the_end_of_the_history_is_unresolved() -> None:
    """Three unchanged customers alerted on day 55 of a 60-day history: a has been silent
    since day 54 and the history ends before 14 days of silence could say whether it left,
    so its alert is unresolved, neither right nor a flap; b came back on day 58 (a flap);
    c has been silent since day 30 (gone for good: churn-led). `precision_all` counts the
    three as wrong."""
    events = seen_on({"a": [0, 54], "b": [0, 54, 58], "c": [30], "d": [60]})
    alerts = migrations(("a", 55, 1), ("b", 55, 1), ("c", 55, 1), ("d", 45, 1))
    truth = changed(40, {"d": 1})
    got = migration_quality(alerts, truth, events, start=0.0, end=60 * DAY)
    assert (got["right"], got["churn_led"], got["unresolved"]) == (1, 1, 1)
    assert got["unchanged_alerts"] == 1  # b's alone
    assert got["precision"] == 0.5 and got["precision_all"] == 0.25


def test_a_change_that_settles_where_it_was_crossed_no_border() -> None:
    """Two customers change on day 20 and are alerted to segment 2 on day 23: a, whose
    re-scores put it in segment 1 before the change and nearest segment 2 from then on,
    crossed a border; b stays nearest segment 1 (a partial change that never crosses),
    so its alert cannot land. Recall and landing over the crossing changes count a only."""
    events = seen_on({"a": [0, 70], "b": [0, 70]})
    alerts = migrations(("a", 23, 2), ("b", 23, 2))
    truth = changed(20, {"a": -1, "b": -1})
    days = np.arange(1, 70)
    scores = pd.DataFrame(
        {"customer_id": ["a"] * len(days) + ["b"] * len(days),
         "at": np.r_[days, days] * DAY,
         "probability": 0.0,
         "segment": np.r_[np.where(days < 23, 1, 2), np.where(days < 23, 1, 2)],
         "nearest": np.r_[np.where(days < 21, 1, 2), np.ones(len(days), dtype=int)]}
    )  # fmt: skip
    got = migration_quality(alerts, truth, events, start=0.0, end=70 * DAY, settled=scores)
    assert (got["changes"], got["detected"], got["crossing"]) == (2, 2, 1)
    assert got["recall_within"]["7"] == 1.0 and got["recall_within_crossing"]["7"] == 1.0
    assert got["landed_in_target"] == 0.5 and got["detected_staying"] == 1
    assert got["landed_crossing"] == 1.0  # a's alert named where it settled; b's could not
    assert got["settled_read_days"]["median"] == 49.0  # the last re-score, day 69


def test_where_a_customer_settles_is_read_once_its_old_behaviour_has_left_its_windows() -> None:
    """a changes on day 20 and settles in segment 2, but while its longest window still
    holds its old behaviour its nearest center is segment 3, a segment it only passes
    (from day 21 to day 59). Its alert into 2 on day 24 lands on a history that runs to
    day 120, with the alerts judged until day 60 as on one that ends there; on a history
    that ends on day 55 the nearest center then reads 3, and the same alert does not."""
    events = seen_on({"a": [0, 120]})
    alerts = migrations(("a", 24, 2))
    truth = changed(20, {"a": -1})
    days = np.arange(1, 120)
    scores = pd.DataFrame(
        {"customer_id": "a", "at": days * DAY, "probability": 0.0,
         "segment": np.where(days < 24, 1, 2),
         "nearest": np.select([days < 21, days < 60], [1, 3], 2)}
    )  # fmt: skip
    long = migration_quality(alerts, truth, events, start=0.0, end=60 * DAY, settled=scores)
    assert long["landed_alerts"] == 1.0 and long["settled_read_days"]["median"] == 99.0
    short = migration_quality(
        alerts, truth, seen_on({"a": [0, 55]}), start=0.0, end=55 * DAY,
        settled=scores[scores["at"] <= 55 * DAY],
    )  # fmt: skip
    assert short["landed_alerts"] == 0.0 and short["settled_read_days"]["median"] == 35.0


def test_a_second_alert_on_the_same_change_is_counted_as_repeated() -> None:
    """a changes on day 20 and is alerted into segment 2 on day 23, and again on day 30
    (moved back in between, as a correction or a return can): both alerts are right, but
    a retention flow fires twice, so the second is counted apart as repeated. b, alerted
    once for its change, repeats nothing; c, alerted twice without a change, flaps twice
    and repeats nothing (repeats are of right alerts)."""
    events = seen_on({"a": [0, 70], "b": [0, 70], "c": [0, 70]})
    alerts = migrations(("a", 23, 2), ("a", 30, 2), ("b", 25, 2), ("c", 30, 2), ("c", 40, 2))
    truth = changed(20, {"a": 2, "b": 2})
    got = migration_quality(alerts, truth, events, start=0.0, end=70 * DAY)
    assert (got["right"], got["detected"], got["repeated"]) == (3, 2, 1)
    assert got["unchanged_alerts"] == 2
    assert got["delay_days"]["median"] == 4.0  # from the first right alert of each change


def test_an_alert_on_the_way_is_right_but_does_not_name_the_destination() -> None:
    """a changes on day 20 and settles in segment 2; it is alerted into segment 3 on day
    22 (a segment on the way) and into 2 on day 25. Both alerts are right and the change
    is landed (its last alert named 2), but only one alert of two named it, the first
    that did came 5 days after the change, and the second alert is a repeat. b, alerted
    straight into 2 on day 24, lands with every figure; of the two changes' first alerts,
    one named the destination."""
    events = seen_on({"a": [0, 70], "b": [0, 70]})
    alerts = migrations(("a", 22, 3), ("a", 25, 2), ("b", 24, 2))
    truth = changed(20, {"a": 2, "b": 2})
    got = migration_quality(alerts, truth, events, start=0.0, end=70 * DAY)
    assert got["precision"] == 1.0 and got["landed_in_target"] == 1.0
    assert got["landed_alerts"] == 0.6667  # 2 of 3 alerts
    assert got["landed_first"] == 0.5  # a's first alert named a segment on the way
    assert got["delay_days"]["median"] == 3.0  # a: 2 days, b: 4 days
    assert got["delay_days_landed"]["median"] == 4.5  # a: 5 days, b: 4 days
    assert got["repeated"] == 1


def test_alerts_are_split_by_how_clearly_the_events_chose_their_segment() -> None:
    """The evidence detector's `evidence_lead_nats` (the named segment's lead over the
    runner-up) splits the landing of alerts: a flow can tell an alert the events chose
    clearly from a near tie the nearest center broke. a's first alert, a near tie (0.4
    nats), names a segment on the way, its runner-up the destination; its second and b's
    (clear leads) land; c's alert came from the centers (no lead) and is in neither
    part."""
    events = seen_on({"a": [0, 70], "b": [0, 70], "c": [0, 70]})
    alerts = migrations(("a", 22, 3), ("a", 25, 2), ("b", 24, 2), ("c", 24, 2))
    alerts["evidence_lead_nats"] = [0.4, 5.0, 2.0, None]
    alerts["runner_up_segment_id"] = [2, 3, 1, None]
    truth = changed(20, {"a": 2, "b": 2, "c": 2})
    got = migration_quality(alerts, truth, events, start=0.0, end=70 * DAY, clear_nats=2.0)
    assert got["landed_alerts"] == 0.75  # 3 of 4
    assert got["clear_alerts"] == 0.5  # a's second and b's, of 4
    assert (got["landed_alerts_clear"], got["landed_alerts_near"]) == (1.0, 0.0)
    # a's near tie named a segment on the way, with the destination as its runner-up.
    assert got["landed_alerts_near_either"] == 1.0
    without = migration_quality(alerts, truth, events, start=0.0, end=70 * DAY)
    assert "clear_alerts" not in without


def test_the_speed_of_each_move_between_segments_is_reported_apart() -> None:
    """Four customers change on day 20. a and c leave segment 1 for segment 2 (alerted
    after 2 and 10 days), d leaves 2 for 1 and is never alerted, b stays nearest 1 (no
    border crossed, so no move of its own). `by_move` gives each move's changes, recall
    within d days and median delay: what a user reads to see which moves come late."""
    ids = ["a", "b", "c", "d"]
    events = seen_on({c: [0, 70] for c in ids})
    alerts = migrations(("a", 22, 2), ("b", 23, 2), ("c", 30, 2))
    truth = changed(20, {c: -1 for c in ids})
    days = np.arange(1, 70)
    before_after = {"a": (1, 2), "b": (1, 1), "c": (1, 2), "d": (2, 1)}
    scores = pd.DataFrame(
        {"customer_id": np.repeat(ids, len(days)),
         "at": np.tile(days, 4) * DAY,
         "probability": 0.0,
         "segment": np.concatenate([np.full(len(days), before_after[c][0]) for c in ids]),
         "nearest": np.concatenate(
             [np.where(days < 21, before_after[c][0], before_after[c][1]) for c in ids])}
    )  # fmt: skip
    got = migration_quality(alerts, truth, events, start=0.0, end=70 * DAY, settled=scores)
    assert got["crossing"] == 3
    assert [
        (r["from_segment_id"], r["to_segment_id"], r["changes"], r["detected"],
         r["delay_median_days"], r["recall_within"]["7"], r["recall_within"]["28"])
        for r in got["by_move"]
    ] == [(1, 2, 2, 2, 6.0, 0.5, 1.0), (2, 1, 1, 0, None, 0.0, 0.0)]  # fmt: skip


def test_a_change_while_the_customer_settles_is_counted_apart() -> None:
    """Three customers change on day 40: a (first event on day 0) and b (day 5) had
    settled, c (day 20) was 20 days old, younger than the 33 days (early days plus one
    dwell) a customer takes to settle, so the engine placed it rather than migrating it,
    and its alert came on day 55. The settled figures leave c out; without
    `settling_days` the split is absent."""
    events = seen_on({"a": [0, 90], "b": [5, 90], "c": [20, 90]})
    alerts = migrations(("a", 42, 1), ("b", 44, 1), ("c", 55, 1))
    truth = changed(40, {"a": 1, "b": 1, "c": 1})
    got = migration_quality(alerts, truth, events, start=0.0, end=90 * DAY, settling_days=33.0)
    assert got["delays"] == [2.0, 4.0, 15.0] and got["delay_days"]["median"] == 4.0
    assert (got["settling"], got["settling_days"]) == (1, 33.0)
    assert got["delay_days_settled"]["count"] == 2 and got["delay_days_settled"]["median"] == 3.0
    assert got["recall_within"]["7"] == round(2 / 3, 4)
    assert got["recall_within_settled"]["7"] == 1.0
    plain = migration_quality(alerts, truth, events, start=0.0, end=90 * DAY)
    assert "settling" not in plain and "delay_days_settled" not in plain


def test_the_intervals_cover_what_they_claim() -> None:
    """A reader takes "median delay 3.7 (95 % CI 2.9 to 5.0)" to mean the detector's
    median lies there 95 times in 100. Over 2,000 samples of 30 skewed delays (lognormal,
    median 4 days) the median's interval covers 4 at least 94 % of the time; the Wilson
    interval of a proportion covers it with probability at least 0.92 (exactly, from the
    binomial) at every precision or recall from 0.5 to 0.95 over 20 to 150 judged alerts,
    and 0.95 on average; neither is the trivial [0, 1] or the sample's whole range."""
    rng = np.random.default_rng(7)
    samples = rng.lognormal(np.log(4.0), 0.8, size=(2000, 30))
    spans = [median_interval(s) for s in samples]
    assert all(span is not None for span in spans)
    assert np.mean([s[0] <= 4.0 <= s[1] for s in spans if s]) >= 0.94
    pairs = zip(spans, samples, strict=True)
    assert all(s[0] > row.min() and s[1] < row.max() for s, row in pairs if s)
    covered = []
    for n in (20, 30, 40, 60, 100, 150):
        for p in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
            pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
            inside = [
                (ci := wilson(k, n)) is not None and ci[0] <= p <= ci[1] for k in range(n + 1)
            ]
            covered.append(sum(w for w, ok in zip(pmf, inside, strict=True) if ok))
            assert wilson(round(n * p), n) != [0.0, 1.0]
    assert min(covered) >= 0.92 and np.mean(covered) >= 0.945


def test_an_evidence_trace_shows_the_crossing_behind_a_migration_alert(
    backtested: Path, embedded_redis_url: str, tmp_path: Path
) -> None:
    """`benchmarks.trace_evidence` (the design log's per-customer traces): its update at a
    migration alert's event names the alert's segment past its threshold, each update's
    terms add up to the change of the evidence it shows, and the detector is left as it
    was."""
    from benchmarks.trace_evidence import TERMS, trace
    from models.bundle import load_bundle
    from models.catalog import default_catalog
    from stream.decide import Decider
    from stream.detect import Evidence

    alerts = [json.loads(line) for line in (backtested / "bt/alerts.jsonl").open()]
    moved = next(
        a for a in alerts
        if a["type"] == "segment_migration" and not a["event_time"].endswith("T00:00:00Z")
    )  # fmt: skip
    bundle = load_bundle(backtested / "models/current", default_catalog())
    position = [int(i) for i in bundle.space.segment_ids].index(moved["to_segment_id"])
    methods = (Decider._detect, Evidence.update)

    updates = trace(
        backtested, moved["customer_id"], tmp_path / "bt", embedded_redis_url,
        since=moved["event_time"][:10],
    )  # fmt: skip

    assert (Decider._detect, Evidence.update) == methods
    at = datetime.fromisoformat(moved["event_time"].replace("Z", "+00:00")).timestamp()
    crossing = [u for u in updates if abs(u["at"] - at) < 1e-3]
    assert [u["named"] for u in crossing] == [position]
    assert crossing[0]["sums"][position] >= crossing[0]["threshold"][position]
    checked = 0
    for u in updates:
        for s, after in enumerate(u["sums"]):
            if u["before"] is None or s == u["current"] or not 0.0 < after < u["threshold"][s]:
                continue  # no state yet, the own segment, or at the floor or the cap
            own, seg = (sum(u[t][s][i] for t in TERMS) for i in (0, 1))
            assert after == pytest.approx(u["before"][s] + min(own, seg), abs=0.02)
            checked += 1
    assert checked > 0
