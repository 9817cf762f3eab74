"""Tests of the synthetic history generator: contract, ground truth, delivery faults."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline.synthetic import (
    DEFAULT_START,
    FEATURES,
    PERSONAS,
    RATE_TYPES,
    History,
    generate_history,
    write_history,
)

DAY = pd.Timedelta(days=1)
TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\Z")


@pytest.fixture(scope="module")
def history() -> History:
    # High churn/migration shares give enough of each to test in one small history.
    return generate_history(
        400, 90, seed=11, duplicate_rate=0.02, late_rate=0.02, churn_share=0.3, migrate_share=0.3
    )


@pytest.fixture(scope="module")
def clean() -> History:
    return generate_history(400, 90, seed=12, churn_share=0.3, migrate_share=0.3)


@pytest.fixture(scope="module")
def files(history: History, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_history(history, tmp_path_factory.mktemp("synthetic"))


def _day(ts: pd.Series) -> np.ndarray:
    return ((ts - pd.Timestamp(DEFAULT_START)) // DAY).to_numpy()


def _truth_days(truth: pd.DataFrame, col: str) -> dict[str, int]:
    days = (truth.set_index("customer_id")[col] - pd.Timestamp(DEFAULT_START)) // DAY
    return {str(cid): int(d) for cid, d in days.dropna().items()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    def run(seed: int, name: str) -> dict[str, bytes]:
        h = generate_history(60, 40, seed, duplicate_rate=0.05, late_rate=0.05)
        return {k: p.read_bytes() for k, p in write_history(h, tmp_path / name).items()}

    first, again, other = run(3, "a"), run(3, "b"), run(4, "c")
    assert first == again
    assert first["events"] != other["events"]
    assert first["truth"] != other["truth"]


def test_every_persona_present_in_roughly_equal_shares(history: History) -> None:
    counts = history.truth["persona"].value_counts()
    assert set(counts.index) == set(PERSONAS)
    assert counts.max() - counts.min() <= 1
    assert history.truth["customer_id"].is_unique
    assert history.truth["customer_id"].iloc[0] == "c000"  # padded to the width of "400"


def test_personas_dominate_their_signature_counts(clean: History) -> None:
    truth = clean.truth.set_index("customer_id")
    stable = truth[truth["churn_day"].isna() & truth["migration_day"].isna()]
    ev = clean.events[clean.events["customer_id"].isin(stable.index)]
    per = pd.crosstab(ev["customer_id"], ev["type"]).join(
        ev.groupby("customer_id")["amount"].sum().rename("revenue")
    )
    per["distinct"] = ev.groupby("customer_id")["feature"].nunique()
    mean = per.groupby(stable["persona"].reindex(per.index)).mean()
    assert mean["distinct"].idxmax() == "power_user"
    assert mean["revenue"].idxmax() == "big_spender"
    assert mean["support_ticket"].idxmax() == "support_heavy"
    assert mean["email_open"].idxmax() == "email_reader"
    assert mean.drop(columns="revenue").sum(axis=1).idxmin() == "casual"


def test_volume_stays_modest(clean: History) -> None:
    per_customer = len(clean.events) / len(clean.truth)
    assert 50 <= per_customer <= 150


def test_churners_fade_then_stop(clean: History) -> None:
    ev = clean.events.assign(day=_day(clean.events["ts"]))
    churn = _truth_days(clean.truth, "churn_day")
    first = _truth_days(clean.truth, "first_day")
    assert len(churn) == 120
    last_day = ev.groupby("customer_id")["day"].max()
    assert all(last_day.get(cid, -1) < c for cid, c in churn.items())
    fade_events = fade_days = before_events = before_days = 0
    for cid, c in churn.items():
        days = ev.loc[ev["customer_id"] == cid, "day"]
        lo = max(first[cid], c - 2 * 14)
        fade_events += int(((days >= c - 14) & (days < c)).sum())
        fade_days += 14
        before_events += int(((days >= lo) & (days < c - 14)).sum())
        before_days += max(c - 14 - lo, 0)
    # The linear fade averages half the normal rate over its two weeks.
    assert fade_events / fade_days < 0.75 * before_events / before_days


def test_migrators_take_on_the_target_behaviour(clean: History) -> None:
    truth = clean.truth.set_index("customer_id")
    movers = truth[truth["migration_day"].notna()]
    assert len(movers) == 120
    assert (movers["to_persona"] != movers["persona"]).all()
    assert truth.loc[truth["churn_day"].notna(), "migration_day"].isna().all()  # disjoint
    ev = clean.events[clean.events["customer_id"].isin(movers.index)]
    ev = ev.assign(day=_day(ev["ts"]))
    mig = _truth_days(clean.truth, "migration_day")
    first = _truth_days(clean.truth, "first_day")
    profile = {name: np.log(np.array(p.rates) + 0.02) for name, p in PERSONAS.items()}

    def nearest(rates: np.ndarray) -> str:
        logs = np.log(rates + 0.02)
        return min(profile, key=lambda name: float(np.abs(logs - profile[name]).sum()))

    before_ok = after_ok = 0
    for cid, row in movers.iterrows():
        m, days = mig[str(cid)], ev[ev["customer_id"] == cid]
        counts = pd.crosstab(days["day"] >= m, days["type"]).reindex(
            index=[False, True], columns=list(RATE_TYPES), fill_value=0
        )
        before = counts.loc[False].to_numpy() / max(m - first[str(cid)], 1)
        after = counts.loc[True].to_numpy() / (90 - m)
        before_ok += nearest(before) == row["persona"]
        after_ok += nearest(after) == row["to_persona"]
    assert before_ok >= 0.8 * len(movers)
    assert after_ok >= 0.8 * len(movers)


def test_duplicates_repeat_the_same_payload_later(history: History, files: dict[str, Path]) -> None:
    ev = history.events.reset_index(drop=True)
    dup = ev[ev["event_id"].duplicated(keep=False)]
    n_unique = ev["event_id"].nunique()
    assert 0.01 * n_unique < dup["event_id"].nunique() < 0.03 * n_unique
    assert dup.groupby("event_id").size().max() == 2
    # All columns identical between the two deliveries.
    assert len(dup.drop_duplicates()) == dup["event_id"].nunique()
    lines: dict[str, set[str]] = {}
    for line in files["events"].read_text().splitlines():
        lines.setdefault(json.loads(line)["event_id"], set()).add(line)
    assert all(len(v) == 1 for v in lines.values())
    assert len(lines) == n_unique


def test_redelivery_comes_within_a_day() -> None:
    ev = generate_history(100, 30, seed=5, duplicate_rate=0.05).events.reset_index(drop=True)
    again = ev["event_id"].duplicated(keep="first").to_numpy()
    ts = ev["ts"].astype("int64").to_numpy()
    # Without late events, the first deliveries alone are in time order.
    assert (np.diff(ts[~again]) >= 0).all()
    lag = np.maximum.accumulate(ts)[again] - ts[again]
    assert again.sum() > 0 and (lag <= 24 * 3600 * 10**9).all() and (lag > 0).mean() > 0.9


def test_clean_history_is_in_time_order(clean: History) -> None:
    assert clean.events["ts"].is_monotonic_increasing
    assert clean.events["event_id"].is_unique


def test_late_events_are_at_most_48h_out_of_order(history: History) -> None:
    ev = history.events.drop_duplicates("event_id")  # a redelivery is not a late event
    ts = ev["ts"].astype("int64").to_numpy()
    behind = np.maximum.accumulate(ts) - ts
    late = behind > 0
    assert 0.001 * len(ts) < late.sum() < 0.03 * len(ts)
    assert behind.max() <= 48 * 3600 * 10**9


def test_signup_once_and_first(clean: History) -> None:
    ev = clean.events
    first = _truth_days(clean.truth, "first_day")
    signups = ev[ev["type"] == "signup"]
    assert signups["customer_id"].is_unique
    signed = set(signups["customer_id"])
    assert signed == {cid for cid, d in first.items() if d > 0}
    assert 0.15 < len(signed) / len(first) < 0.45
    earliest = ev.sort_values("ts").drop_duplicates("customer_id")
    assert (earliest.loc[earliest["customer_id"].isin(signed), "type"] == "signup").all()
    sign_day = dict(zip(signups["customer_id"], _day(signups["ts"]).tolist(), strict=True))
    assert all(first[cid] == d for cid, d in sign_day.items())
    no_signup = ev[~ev["customer_id"].isin(signed)]
    assert (_day(no_signup["ts"]) >= 0).all()


def test_jsonl_lines_follow_the_contract(history: History, files: dict[str, Path]) -> None:
    lines = files["events"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(history.events)
    types = set()
    for line in lines:
        obj = json.loads(line)
        assert list(obj) == ["event_id", "customer_id", "type", "ts", "properties"]
        assert all(isinstance(obj[k], str) for k in ("event_id", "customer_id", "type", "ts"))
        assert TS_RE.match(obj["ts"]), obj["ts"]
        assert datetime.fromisoformat(obj["ts"]).utcoffset() == timedelta(0)
        props, kind = obj["properties"], obj["type"]
        types.add(kind)
        if kind == "purchase":
            assert list(props) == ["amount"]
            amount = props["amount"]
            assert isinstance(amount, float) and math.isfinite(amount) and amount >= 0
            assert round(amount, 2) == amount
        elif kind == "feature_used":
            assert list(props) == ["feature"] and props["feature"] in FEATURES
        else:
            assert props == {}
    assert types == {"signup", *RATE_TYPES}
    first = json.loads(lines[0])
    row = history.events.iloc[0]
    assert first["event_id"] == row["event_id"]
    assert datetime.fromisoformat(first["ts"]) == row["ts"].to_pydatetime()


def test_truth_and_migration_files(history: History, files: dict[str, Path]) -> None:
    truth = pd.read_csv(files["truth"], dtype=str, keep_default_na=False)
    assert list(truth.columns) == [
        "customer_id", "persona", "first_day", "churn_day", "migration_day", "to_persona"
    ]  # fmt: skip
    assert len(truth) == 400
    assert truth["first_day"].str.fullmatch(r"\d{4}-\d\d-\d\d").all()
    assert ((truth["migration_day"] == "") == (truth["to_persona"] == "")).all()
    assert ((truth["churn_day"] == "") | (truth["migration_day"] == "")).all()
    moves = pd.read_csv(files["migrations"], dtype=str)
    assert list(moves.columns) == ["customer_id", "changed_at", "to_persona"]
    movers = truth[truth["migration_day"] != ""]
    assert list(moves["customer_id"]) == list(movers["customer_id"])
    assert list(moves["changed_at"]) == [
        f"{d}T00:00:00.000000+00:00" for d in movers["migration_day"]
    ]
    assert list(moves["to_persona"]) == list(movers["to_persona"])


def test_start_and_tiny_histories() -> None:
    start = datetime(2025, 6, 1, 15, 30, tzinfo=UTC)
    h = generate_history(1, 1, seed=0, start=start, churn_share=1.0, migrate_share=0.0)
    assert len(h.truth) == 1 and h.truth["customer_id"].iloc[0] == "c0"
    assert (h.events["ts"] >= pd.Timestamp("2025-06-01", tz="UTC")).all()
    h = generate_history(7, 3, seed=0, start=start)
    assert h.events["ts"].min() >= pd.Timestamp("2025-06-01", tz="UTC")
    assert h.events["ts"].max() < pd.Timestamp("2025-06-04", tz="UTC")
    naive = generate_history(7, 3, seed=0, start=datetime(2025, 6, 1))
    pd.testing.assert_frame_equal(naive.events, h.events)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"customers": 0}, "customers"),
        ({"days": 0}, "days"),
        ({"duplicate_rate": 1.0}, "duplicate_rate"),
        ({"duplicate_rate": -0.1}, "duplicate_rate"),
        ({"late_rate": 1.5}, "late_rate"),
        ({"churn_share": -0.01}, "churn_share"),
        ({"migrate_share": 1.2}, "migrate_share"),
        ({"churn_share": 0.6, "migrate_share": 0.5}, "churn_share + migrate_share"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, float], name: str) -> None:
    args: dict[str, float] = {"customers": 10, "days": 10, "seed": 1, **kwargs}
    with pytest.raises(ValueError, match=re.escape(name)):
        generate_history(**args)  # type: ignore[arg-type]
