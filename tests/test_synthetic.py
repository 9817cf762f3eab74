"""Tests of the synthetic history generator: contract, ground truth, delivery faults, and
the histories of every shape (each preset has the property it claims)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from offline.history import generate
from offline.shapes import SHAPES, HistoryShape
from offline.synthetic import (
    DEFAULT_START,
    FEATURES,
    PERSONAS,
    RATE_TYPES,
    History,
    generate_history,
    merge,
    split,
    write_history,
)
from segstream.cli import app

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


# --- Regression guard and histories of every shape ---------------------------------------

# Digests of write_history's three files, computed on the generator BEFORE it was split into
# steps and given shapes (commit 6607666). They guard one thing only: the default shape still
# gives those exact bytes for a seed. numpy's or pandas' random streams or formatting could
# change them across major versions; then recompute on the old generator, do not copy.
DEFAULT_DIGESTS = {
    "default-300x120-s1": "5ae3408b5d776fd03857fb512bfbbc1e428865d958cfd4ed3bcf825a0d6ca907",
    "faults-shifts-200x60-s5": "90c0fb1505ab56685e6239bd5fd0b53fd97ab06b54459073a076825b724ed066",
    "shifts-150x50-s4": "53c49e009bac7008ffd257a877ca58442a6a0b311eefd07ebc7bfbddff1aacc4",
}


def _digest(history: History, folder: Path) -> str:
    digest = hashlib.sha256()
    for _, path in sorted(write_history(history, folder).items()):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_default_output_unchanged_by_the_split_into_steps(tmp_path: Path) -> None:
    shifts = (*merge("casual", "big_spender", day=10),
              *split("power_user", PERSONAS["email_reader"], "pu_b", day=20))  # fmt: skip
    runs = {
        "default-300x120-s1": generate_history(300, 120, seed=1, shape=SHAPES["sudden"]),
        "faults-shifts-200x60-s5": generate_history(
            200,
            60,
            seed=5,
            duplicate_rate=0.03,
            late_rate=0.02,
            churn_share=0.3,
            migrate_share=0.3,
        ),
        "shifts-150x50-s4": generate_history(
            150, 50, seed=4, shifts=shifts, start=datetime(2025, 3, 4, 5, tzinfo=UTC)
        ),
    }
    got = {name: _digest(h, tmp_path / name) for name, h in runs.items()}
    assert got == DEFAULT_DIGESTS


def _sized(name: str) -> tuple[int, int]:
    return (400, 120) if SHAPES[name].kind == "retail" else (60, 40)


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_preset_generates_the_same_files_for_a_seed(name: str, tmp_path: Path) -> None:
    customers, days = _sized(name)

    def run(seed: int, folder: str) -> dict[str, bytes]:
        h = generate(customers, days, seed, duplicate_rate=0.02, late_rate=0.02, shape=SHAPES[name])
        return {k: p.read_bytes() for k, p in write_history(h, tmp_path / folder).items()}

    first, again, other = run(3, "a"), run(3, "b"), run(4, "c")
    assert first == again
    assert first["events"] != other["events"]
    records = [json.loads(line) for line in first["events"].decode().splitlines()]
    assert len(records) > customers  # every shape has a usable number of events
    kinds = {r["type"] for r in records}
    assert kinds == ({"purchase"} if name == "retail" else {"signup", *RATE_TYPES})
    assert all(TS_RE.match(r["ts"]) for r in records)


def _rel_days(truth: pd.DataFrame, events: pd.DataFrame, col: str) -> np.ndarray:
    at = truth.set_index("customer_id")[col].reindex(events["customer_id"])
    return _day(events["ts"]) - ((at - pd.Timestamp(DEFAULT_START)) // DAY).to_numpy()


def _progress(history: History, lo: int, hi: int) -> float:
    """How far movers' rates have gone from old persona (0) to new (1), days [lo, hi) from
    their migration day: least squares of the counts on the line between the two personas."""
    truth = history.truth[history.truth["migration_day"].notna()]
    ev = history.events[history.events["customer_id"].isin(truth["customer_id"])]
    rel = _rel_days(truth, ev, "migration_day")
    window = ev[(rel >= lo) & (rel < hi)]
    counts = pd.crosstab(window["customer_id"], window["type"]).reindex(
        index=truth["customer_id"], columns=list(RATE_TYPES), fill_value=0
    )
    rates = {name: np.array(p.rates) * (hi - lo) for name, p in PERSONAS.items()}
    old = np.stack([rates[p] for p in truth["persona"]])
    new = np.stack([rates[p] for p in truth["to_persona"]])
    return float(((counts.to_numpy() - old) * (new - old)).sum() / ((new - old) ** 2).sum())


def test_gradual_migrations_drift_over_weeks_sudden_in_a_day() -> None:
    kw: dict[str, Any] = {"churn_share": 0.0, "migrate_share": 0.5}
    sudden = generate_history(600, 120, seed=3, **kw)
    gradual = generate_history(600, 120, seed=3, shape=SHAPES["gradual"], **kw)
    assert _progress(sudden, -7, 0) < 0.1 and _progress(sudden, 0, 7) > 0.9
    # Half-way through the week before the midpoint and the week after, not before or after.
    assert _progress(gradual, -21, -14) < 0.1
    assert 0.1 < _progress(gradual, -7, 0) < 0.45
    assert 0.55 < _progress(gradual, 0, 7) < 0.9
    assert _progress(gradual, 14, 21) > 0.9
    truth = gradual.truth.dropna(subset=["migration_day"])
    length = (truth["drift_end"] - truth["drift_start"]) // DAY
    assert length.between(14, 28).all() and length.nunique() > 5
    middle = truth["drift_start"] + (truth["drift_end"] - truth["drift_start"]) / 2
    assert ((middle - truth["migration_day"]).abs() <= pd.Timedelta(hours=12)).all()
    assert "drift_start" not in sudden.truth


def _rates_before_after(history: History, movers: pd.DataFrame) -> pd.DataFrame:
    ev = history.events[history.events["customer_id"].isin(movers["customer_id"])]
    after = _rel_days(movers, ev, "migration_day") >= 0
    days = (movers["migration_day"] - movers["first_day"]) // DAY
    exposure = {False: days.sum(), True: ((pd.Timestamp(DEFAULT_START) + 120 * DAY
                                           - movers["migration_day"]) // DAY).sum()}  # fmt: skip
    counts = pd.crosstab(after, ev["type"]).reindex(columns=list(RATE_TYPES))
    return counts.div(pd.Series(exposure), axis=0)


def test_partial_migrations_change_only_the_one_rate() -> None:
    kw: dict[str, Any] = {"churn_share": 0.0, "migrate_share": 0.5}
    partial = generate_history(600, 120, seed=3, shape=SHAPES["partial"], **kw)
    truth = partial.truth.dropna(subset=["migration_day"])
    # Towards the persona that buys most differently: big spenders' way of buying.
    up = truth[truth["persona"] != "big_spender"]
    assert (up["to_persona"] == "big_spender").all()
    rates = _rates_before_after(partial, up)
    ratio = rates.loc[True] / rates.loc[False]
    assert ratio["purchase"] > 5
    assert ratio.drop("purchase").between(0.8, 1.25).all(), ratio
    amounts = partial.events.loc[partial.events["customer_id"].isin(up["customer_id"]), "amount"]
    assert amounts.median() > 40  # the new purchases come with big spenders' amounts

    # Power users keep their feature use; migrating fully to big spenders, they drop it.
    def feature_use_ratio(history: History) -> float:
        truth = history.truth
        pair = truth[(truth["persona"] == "power_user") & (truth["to_persona"] == "big_spender")]
        rates = _rates_before_after(history, pair)
        return float(rates.loc[True, "feature_used"] / rates.loc[False, "feature_used"])

    full = generate_history(600, 120, seed=3, **kw)
    assert 0.8 < feature_use_ratio(partial) < 1.25
    assert feature_use_ratio(full) < 0.3


def _persona_spread(history: History, days: int) -> float:
    truth = history.truth.set_index("customer_id")
    ev = history.events[history.events["type"] != "signup"]
    alive = days - (truth["first_day"] - pd.Timestamp(DEFAULT_START)) // DAY
    per = pd.crosstab(ev["customer_id"], ev["type"]).reindex(
        index=truth.index, columns=list(RATE_TYPES), fill_value=0
    )
    profile = np.log(per.div(alive, axis=0).groupby(truth["persona"]).mean() + 0.01).to_numpy()
    return float(np.abs(profile[:, None, :] - profile[None, :, :]).sum(axis=-1).mean())


def test_close_personas_are_closer_than_far_ones_at_the_same_volume() -> None:
    kw: dict[str, Any] = {"churn_share": 0.0, "migrate_share": 0.0}
    runs = {n: generate_history(500, 60, seed=4, shape=SHAPES[n], **kw) for n in
            ("close", "sudden", "far")}  # fmt: skip
    spread = {n: _persona_spread(h, 60) for n, h in runs.items()}
    assert spread["close"] < 0.75 * spread["sudden"] < 0.75 * spread["far"]
    volume = {n: len(h.events) for n, h in runs.items()}
    assert max(volume.values()) < 1.1 * min(volume.values())


def test_activity_multiplies_the_volume() -> None:
    base = len(generate_history(300, 60, seed=8).events)
    low = len(generate_history(300, 60, seed=8, shape=SHAPES["low-activity"]).events)
    high = len(generate_history(300, 60, seed=8, shape=SHAPES["high-activity"]).events)
    assert 0.25 < low / base < 0.35 and 2.7 < high / base < 3.3


def test_seasonal_weekends_are_half_as_busy() -> None:
    for name, lo, hi in (("seasonal", 0.43, 0.57), ("sudden", 0.9, 1.1)):
        ev = generate_history(300, 84, seed=5, shape=SHAPES[name]).events
        weekend = pd.DatetimeIndex(ev["ts"]).day_of_week.to_numpy() >= 5
        # 12 weeks: 24 weekend days, 60 weekdays.
        assert lo < (weekend.sum() / 24) / ((~weekend).sum() / 60) < hi, name


def _dispersion_index(history: History, days: int) -> float:
    truth = history.truth
    stable = (truth["persona"] == "power_user") & (truth["first_day"] == DEFAULT_START)
    ids = truth.loc[stable, "customer_id"]
    ev = history.events[history.events["customer_id"].isin(ids)
                        & (history.events["type"] == "feature_used")]  # fmt: skip
    daily = pd.crosstab(ev["customer_id"], _day(ev["ts"])).reindex(
        index=ids, columns=range(days), fill_value=0
    )
    return float((daily.var(axis=1) / daily.mean(axis=1)).median())


def test_overdispersed_counts_vary_more_than_their_mean() -> None:
    kw: dict[str, Any] = {"churn_share": 0.0, "migrate_share": 0.0}
    poisson = generate_history(300, 90, seed=6, **kw)
    overdispersed = generate_history(300, 90, seed=6, shape=SHAPES["overdispersed"], **kw)
    assert 0.8 < _dispersion_index(poisson, 90) < 1.2
    # Negative binomial: variance / mean = 1 + dispersion * mean, about 2.8 at 1.8 a day.
    assert _dispersion_index(overdispersed, 90) > 2.0


def test_migration_window_places_every_migration_in_it() -> None:
    shape = HistoryShape(migrate_from_day=94, migrate_to_day=108)
    truth = generate_history(300, 120, seed=2, shape=shape).truth
    days = np.array(list(_truth_days(truth, "migration_day").values()))
    assert days.size == 30 and days.min() >= 94 and days.max() <= 108 and np.unique(days).size > 5
    gradual = shape.with_options(migration="gradual")
    late = generate_history(300, 120, seed=2, shape=gradual).truth["drift_end"]
    assert late.max() <= pd.Timestamp(DEFAULT_START) + 122 * DAY  # a half-drift after day 108
    with pytest.raises(ValueError, match="migrate_to_day"):
        generate_history(10, 100, seed=1, shape=HistoryShape(migrate_to_day=100))


def test_retail_is_purchases_only_most_buy_once_or_twice_and_go_quiet() -> None:
    days = 300
    h = generate(20_000, days, seed=9, shape=SHAPES["retail"])
    ev = h.events.assign(day=_day(h.events["ts"]))
    assert set(ev["type"]) == {"purchase"}
    assert ev["amount"].gt(0).all() and ev["feature"].isna().all()
    per = ev.groupby("customer_id").agg(
        n=("day", "size"), first=("day", "min"), last=("day", "max")
    )
    assert len(per) == 20_000  # each customer shows up with its first purchase
    assert (per["n"] <= 2).mean() > 0.7
    repeat = per[per["n"] >= 5]
    assert 0.03 < len(repeat) / len(per) < 0.2
    # Repeat buyers buy at rates of their own: a wide spread of purchases per active day.
    pace = repeat["n"] / (repeat["last"] - repeat["first"] + 1)
    assert pace.quantile(0.9) > 3 * pace.quantile(0.1)
    old = per[per["first"] < days - 180]
    assert (old["last"] < days - 90).mean() > 0.6  # most are quiet in the last 90 days
    # Lognormal amounts: right-skewed around a shop's typical basket.
    assert 20 < ev["amount"].median() < 80 < ev["amount"].quantile(0.9)
    truth = h.truth.set_index("customer_id")
    churn = ((truth["churn_day"] - pd.Timestamp(DEFAULT_START)) // DAY).dropna()
    assert (per.loc[churn.index, "last"] == churn - 1).all()  # dead the day after its last
    assert truth["migration_day"].isna().all() and truth["persona"].eq("shopper").all()
    # The rest are alive but may buy so rarely that they look quiet too.
    assert 0.3 < len(churn) / len(truth) < 0.9


def test_retail_rejects_persona_options() -> None:
    with pytest.raises(ValueError, match="migration"):
        HistoryShape(kind="retail", migration="gradual")
    with pytest.raises(ValueError, match="shifts"):
        generate(10, 10, 1, shape=SHAPES["retail"], shifts=merge("casual", "big_spender", 3))


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"migration": "slow"}, "migration"),
        ({"changes": "signup"}, "changes"),
        ({"separation": 0.0}, "separation"),
        ({"activity": -1.0}, "activity"),
        ({"weekend": -0.5}, "weekend"),
        ({"dispersion": -1.0}, "dispersion"),
        ({"migrate_from_day": -3}, "migrate_from_day"),
        ({"drift_days": (10, 5)}, "drift_days"),
    ],
)
def test_bad_shape_options_name_the_option(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(name)):
        HistoryShape(**options)


def test_cli_generate_takes_a_preset_and_overrides(tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
                         .stdout.split())  # fmt: skip
    options = ("shape", "migration", "changes", "separation", "activity", "weekend",
               "dispersion", "migrate-from-day", "migrate-to-day")  # fmt: skip
    assert all(f"--{option}" in help_text for option in options)
    assert all(f"{name}:" in help_text for name in SHAPES)
    args = ["generate", "--out", str(tmp_path), "--customers", "50", "--days", "60"]
    result = runner.invoke(app, [*args, "--shape", "gradual", "--migrate-from-day", "40"])
    assert result.exit_code == 0, result.stderr
    truth = pd.read_csv(tmp_path / "truth.csv", dtype=str, keep_default_na=False)
    assert {"drift_start", "drift_end"} <= set(truth.columns)
    moved = truth.loc[truth["migration_day"] != "", "migration_day"]
    assert len(moved) == 5 and (moved >= "2026-02-10").all()
    bad = runner.invoke(app, [*args, "--shape", "wobbly"])
    assert bad.exit_code == 2 and "--shape must be one of" in bad.stderr


def test_readme_documents_every_preset() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Histories of every shape", 1)[1].split("\n## ", 1)[0]
    assert all(f"| `{name}` |" in section for name in SHAPES)
