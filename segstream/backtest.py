"""Alert quality, measured: the pure evaluation behind `segstream backtest`.

Plain functions over DataFrames, no I/O besides `read_truth`, no Redis: they take the
alerts the engine decided (`segstream.backtest_run`), the daily churn scores, the events
and optionally a migration truth, and return plain dicts (what `metrics.json` holds).

- `volumes`: alerts per day by type and segment, customers alerted, the busiest hour;
- `churn_quality`: churn alerts judged from the history itself: an alert at t is right
  when the customer has no qualifying event in (t, t + horizon], judged only where the
  history reaches t + horizon; recall among customers who went silent; lead time; and a
  threshold sweep replaying the rising-edge-with-cool-down rule on the daily scores;
- `migration_quality`: against a truth (customer_id, changed_at, to_segment);
- `migration_behaviour`: without truth: matrix, move-and-return share, dwell times.

Times are Unix seconds; `start`/`end` bound the alerts evaluated (inclusive).

Each precision, recall and median comes with its 95 % interval (`*_ci95`, `median_ci95`):
a history of a few hundred customers holds 30 to 40 changes, and the median delay of 30
changes is uncertain by more than a day either way, which a bare number hides.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DAY = 86_400.0
RECALL_WITHIN = (7.0, 14.0, 28.0)  # days after a change: recall as a function of speed
SWEEP = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
Z95 = 1.959964  # the normal quantile of a two-sided 95 % interval


class TruthError(ValueError):
    """A migration truth file that cannot be used, with the line that is wrong."""


def _dist(values: Iterable[float]) -> dict[str, Any]:
    """Count, median (with its 95 % interval, `median_interval`) and quartiles of a
    sample (None when empty).

    >>> _dist([1.0, 2.0, 3.0, 10.0])["median"]
    2.5
    """
    arr = np.asarray(list(values), dtype=float)
    if not arr.size:
        return {
            "count": 0, "median": None, "median_ci95": None, "p25": None, "p75": None,
            "p90": None,
        }  # fmt: skip
    q = np.percentile(arr, [25, 50, 75, 90])
    return {
        "count": int(arr.size),
        "median": round(float(q[1]), 3),
        "median_ci95": median_interval(arr),
        "p25": round(float(q[0]), 3),
        "p75": round(float(q[2]), 3),
        "p90": round(float(q[3]), 3),
    }


def median_interval(values: Iterable[float]) -> list[float] | None:
    """A distribution-free 95 % interval of the median: the order statistics whose ranks
    are the median's rank plus and minus 1.96 standard deviations of a Binomial(n, 1/2)
    (what any sample's median satisfies, whatever its distribution; the coverage is at
    least 95 % for all but the smallest samples). None under 6 values, where even the
    smallest and largest value cover the median less than 95 % of the time.

    >>> median_interval(range(1, 151))  # 150 delays: the 63rd and the 88th
    [63.0, 88.0]
    >>> median_interval([2.0, 3.0, 4.0]) is None
    True
    """
    arr = np.sort(np.asarray(list(values), dtype=float))
    n = arr.size
    if n < 6:
        return None
    half = Z95 * math.sqrt(n) / 2.0
    lo = max(math.floor((n + 1) / 2.0 - half), 1)
    hi = min(math.ceil((n + 1) / 2.0 + half), n)
    return [round(float(arr[lo - 1]), 3), round(float(arr[hi - 1]), 3)]


def wilson(hits: int, n: int) -> list[float] | None:
    """The 95 % Wilson score interval of a proportion of `hits` in `n` (None when n is 0):
    unlike the plain normal one it stays within [0, 1] and does not shrink to a point at
    0 or n hits (27 of 30 right is 0.74 to 0.97).

    >>> wilson(27, 30)
    [0.7438, 0.9654]
    >>> wilson(30, 30)
    [0.8865, 1.0]
    """
    if n <= 0:
        return None
    p = hits / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [round(max(centre - half, 0.0), 4), round(min(centre + half, 1.0), 4)]


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def in_window(alerts: pd.DataFrame, kind: str, start: float, end: float) -> pd.DataFrame:
    """The alerts of one type decided in [start, end]."""
    pick = (alerts["type"] == kind) & (alerts["at"] >= start) & (alerts["at"] <= end)
    return alerts[pick]


# ----------------------------------------------------------------------------- volumes


def alert_segment(alerts: pd.DataFrame) -> pd.Series:
    """The segment an alert is about: the new one for a migration, else `segment_id`."""
    seg = pd.Series(np.nan, index=alerts.index)
    if "segment_id" in alerts:
        seg = pd.to_numeric(alerts["segment_id"], errors="coerce")
    if "to_segment_id" in alerts:
        mig = alerts["type"] == "segment_migration"
        seg = seg.where(~mig, pd.to_numeric(alerts["to_segment_id"], errors="coerce"))
    return seg


def volumes(alerts: pd.DataFrame, start: float, end: float) -> dict[str, Any]:
    """Alerts per day by type and by (type, segment), customers alerted, the busiest hour.

    >>> a = pd.DataFrame({"type": ["churn_risk"] * 3, "customer_id": ["a", "b", "a"],
    ...                   "segment_id": [1, 1, 2], "at": [0.0, 3600.0, DAY + 10]})
    >>> v = volumes(a, 0.0, 2 * DAY - 1)
    >>> v["per_day"]["churn_risk"], v["customers_alerted"]["churn_risk"]
    (1.5, 2)
    """
    days = max((end - start) / DAY, 1e-9)
    pick = alerts[(alerts["at"] >= start) & (alerts["at"] <= end)].copy()
    pick["segment"] = alert_segment(pick)
    pick["day"] = np.floor(pick["at"] / DAY).astype(np.int64)
    per_type = pick.groupby("type").size()
    by_segment: dict[str, dict[str, float]] = {}
    tagged = pick.dropna(subset=["segment"])
    for kind, seg, n in zip(*_pairs(tagged, "type", "segment"), strict=True):
        by_segment.setdefault(str(kind), {})[str(int(seg))] = round(n / days, 3)
    daily = pick.groupby(["day", "type"]).size().unstack(fill_value=0)
    hours = np.floor(pick["at"] / 3600.0)
    busiest: dict[str, Any] = {"start": None, "alerts": 0}
    if len(hours):
        counts = hours.value_counts()
        hour = float(counts.index[0])
        busiest = {"start": _iso(hour * 3600.0), "alerts": int(counts.iloc[0])}
    return {
        "days": round(days, 3),
        "alerts": len(pick),
        "per_day": {str(k): round(n / days, 3) for k, n in per_type.items()},
        "per_day_by_segment": by_segment,
        "customers_alerted": {
            **{str(k): int(v) for k, v in pick.groupby("type")["customer_id"].nunique().items()},
            "any": int(pick["customer_id"].nunique()),
        },
        "busiest_hour": busiest,
        "daily": {
            _iso(float(day) * DAY)[:10]: {
                str(k): int(v) for k, v in zip(daily.columns, row, strict=True)
            }
            for day, row in zip(daily.index, daily.to_numpy().tolist(), strict=True)
        },
    }


def _pairs(frame: pd.DataFrame, a: str, b: str) -> tuple[list[Any], list[Any], list[int]]:
    """Group sizes by two columns, as three parallel lists (a, b, size)."""
    sizes = frame.groupby([a, b]).size().reset_index(name="n")
    return sizes[a].tolist(), sizes[b].tolist(), sizes["n"].astype(int).tolist()


def _iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------- churn


def next_activity(
    at: pd.DataFrame, events: pd.DataFrame, qualifying_types: Sequence[str] = ()
) -> np.ndarray:
    """For each row of `at` (customer_id, at): the time of the customer's next qualifying
    event strictly after `at` (NaN when none in the history).

    >>> ev = pd.DataFrame({"customer_id": ["a", "a"], "type": ["x", "x"], "ts": [5.0, 9.0]})
    >>> next_activity(pd.DataFrame({"customer_id": ["a", "a"], "at": [5.0, 9.0]}), ev)
    array([ 9., nan])
    """
    if at.empty:
        return np.empty(0)
    ev = events if not qualifying_types else events[events["type"].isin(list(qualifying_types))]
    right = ev[["customer_id", "ts"]].sort_values("ts", kind="stable")
    left = at[["customer_id", "at"]].reset_index(drop=True).reset_index().sort_values("at")
    left = left.astype({"customer_id": object, "at": float})
    merged = pd.merge_asof(
        left,
        right.astype({"customer_id": object, "ts": float}),
        left_on="at",
        right_on="ts",
        by="customer_id",
        direction="forward",
        allow_exact_matches=False,
    )
    out = np.full(len(at), np.nan)
    out[merged["index"].to_numpy()] = merged["ts"].to_numpy(dtype=float)
    return out


def judge_churn(
    alerts: pd.DataFrame,
    events: pd.DataFrame,
    horizon_days: float,
    history_end: float,
    qualifying_types: Sequence[str] = (),
) -> pd.DataFrame:
    """Churn alerts (customer_id, at) with `judgeable` (the history reaches at + horizon)
    and `right` (no qualifying event in (at, at + horizon]); `right` is NaN where not
    judgeable."""
    out = alerts[["customer_id", "at"]].copy()
    nxt = next_activity(out, events, qualifying_types)
    horizon = horizon_days * DAY
    out["judgeable"] = out["at"].to_numpy() + horizon <= history_end
    right = ~(nxt <= out["at"].to_numpy() + horizon)  # NaN (no next event) counts as right
    out["right"] = np.where(out["judgeable"], right, np.nan)
    return out


def last_activity(events: pd.DataFrame, qualifying_types: Sequence[str] = ()) -> pd.Series:
    """Each customer's last qualifying event time."""
    ev = events if not qualifying_types else events[events["type"].isin(list(qualifying_types))]
    return ev.groupby("customer_id")["ts"].max()


def went_silent(
    events: pd.DataFrame,
    start: float,
    end: float,
    horizon_days: float,
    history_end: float,
    qualifying_types: Sequence[str] = (),
) -> pd.Series:
    """Customers whose last qualifying event falls in [start, end] with at least a whole
    horizon of history after it (the silence is confirmed): customer_id -> last event."""
    last = last_activity(events, qualifying_types)
    keep = (last >= start) & (last <= end) & (last + horizon_days * DAY <= history_end)
    return last[keep]


def simulate_churn_alerts(
    scores: pd.DataFrame, threshold: float, cooldown_days: float
) -> pd.DataFrame:
    """The churn alerts the engine's rule gives at `threshold` over the daily scores
    (customer_id, at, probability): rising edge of probability >= threshold, at most one
    alert per customer per `cooldown_days`.

    >>> s = pd.DataFrame({"customer_id": ["a"] * 5, "at": [0.0, 1, 2, 3, 20],
    ...                   "probability": [0.9, 0.1, 0.9, 0.1, 0.9]})
    >>> simulate_churn_alerts(s.assign(at=s["at"] * DAY), 0.5, 14)["at"].tolist()
    [0.0, 1728000.0]
    """
    s = scores.sort_values(["customer_id", "at"], kind="stable")
    high = (s["probability"] >= threshold).to_numpy()
    cust = s["customer_id"].to_numpy()
    prev_high = np.r_[False, high[:-1]] & np.r_[False, cust[1:] == cust[:-1]]
    rising = s[high & ~prev_high]
    keep: list[int] = []
    last: dict[str, float] = {}
    cooldown = cooldown_days * DAY
    for idx, cid, at in zip(rising.index, rising["customer_id"], rising["at"], strict=True):
        if at - last.get(cid, -math.inf) >= cooldown:
            keep.append(idx)
            last[cid] = at
    picked: pd.DataFrame = rising.loc[keep, ["customer_id", "at", "probability"]]
    return picked


def _churn_figures(
    alerts: pd.DataFrame,
    events: pd.DataFrame,
    silent: pd.Series,
    start: float,
    end: float,
    horizon_days: float,
    history_end: float,
    qualifying_types: Sequence[str],
) -> dict[str, Any]:
    judged = judge_churn(alerts, events, horizon_days, history_end, qualifying_types)
    ok = judged[judged["judgeable"]]
    right = int(ok["right"].sum())
    horizon = horizon_days * DAY
    first: dict[str, float] = {}
    for cid, at in zip(alerts["customer_id"], alerts["at"], strict=True):
        last = silent.get(cid)
        if last is not None and last <= at <= last + horizon and cid not in first:
            first[cid] = at
    days = max((end - start) / DAY, 1e-9)
    return {
        "alerts": len(alerts),
        "alerts_per_day": round(len(alerts) / days, 3),
        "judgeable": len(ok),
        "right": right,
        "precision": _ratio(right, len(ok)),
        "precision_ci95": wilson(right, len(ok)),
        "went_silent": len(silent),
        "silent_alerted": len(first),
        "recall": _ratio(len(first), len(silent)),
        "recall_ci95": wilson(len(first), len(silent)),
        "lead_time_days": _dist((silent[c] + horizon - t) / DAY for c, t in first.items()),
        "silence_at_alert_days": _dist((t - silent[c]) / DAY for c, t in first.items()),
    }


def churn_quality(
    alerts: pd.DataFrame,
    scores: pd.DataFrame,
    events: pd.DataFrame,
    *,
    start: float,
    end: float,
    horizon_days: float,
    threshold: float,
    cooldown_days: float,
    qualifying_types: Sequence[str] = (),
    thresholds: Sequence[float] = SWEEP,
) -> dict[str, Any]:
    """Churn alerts judged from the history (see the module docstring), and the sweep.

    `alerts` are the engine's (any types; churn_risk picked here), `scores` the daily
    re-scores (customer_id, at, probability), `events` (customer_id, type, ts).
    Lead time is (last event + horizon) - alert: how much earlier than a "silent for the
    whole horizon" rule the alert came; `silence_at_alert_days` is alert - last event.
    """
    history_end = float(events["ts"].max())
    silent_until = min(end, history_end - horizon_days * DAY)
    silent = went_silent(events, start, silent_until, horizon_days, history_end, qualifying_types)
    churn = in_window(alerts, "churn_risk", start, end)
    out = _churn_figures(
        churn, events, silent, start, end, horizon_days, history_end, qualifying_types
    )
    out.update(threshold=threshold, horizon_days=horizon_days, cooldown_days=cooldown_days)
    out["judged_until"] = _iso(history_end - horizon_days * DAY)
    sweep = []
    for th in sorted({*thresholds, round(threshold, 4)}):
        sim = simulate_churn_alerts(scores, th, cooldown_days)
        sim = sim[(sim["at"] >= start) & (sim["at"] <= end)]
        fig = _churn_figures(
            sim, events, silent, start, end, horizon_days, history_end, qualifying_types
        )
        sweep.append(
            {
                "threshold": th,
                "precision": fig["precision"],
                "recall": fig["recall"],
                "alerts_per_day": fig["alerts_per_day"],
                "alerts": fig["alerts"],
            }
        )
    out["sweep"] = sweep
    # The sweep replays the engine's rule; at the bundle's threshold it must give the
    # engine's own alerts (a check that the scores are complete).
    sim = simulate_churn_alerts(scores, threshold, cooldown_days)
    sim = sim[(sim["at"] >= start) & (sim["at"] <= end)]
    key = {(c, round(a)) for c, a in zip(churn["customer_id"], churn["at"], strict=True)}
    out["sweep_reproduces_engine"] = key == {
        (c, round(a)) for c, a in zip(sim["customer_id"], sim["at"], strict=True)
    }
    return out


# -------------------------------------------------------------------------- migrations


def read_truth(path: Path, customers: Iterable[str], segments: Mapping[int, str]) -> pd.DataFrame:
    """Read a migration truth CSV: `customer_id`, `changed_at` (RFC 3339 or a date), and
    optionally `to_segment` (a segment id or name of the bundle) and `started_at` (when a
    gradual change began: a drift's start, with `changed_at` its midpoint); other columns
    are ignored. Raises `TruthError` naming the line and what is wrong.

    Returns customer_id, changed_at, started_at (Unix seconds; started_at is changed_at
    where the CSV gives none), to_segment (segment id or -1).
    """
    known = set(customers)
    by_name = {name: seg for seg, name in segments.items()}
    rows: list[tuple[str, float, float, int]] = []
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in ("customer_id", "changed_at") if c not in header]
        if missing:
            raise TruthError(
                f"{path}: line 1: missing column(s) {', '.join(missing)} "
                f"(header is {', '.join(header) or 'empty'}; "
                "need customer_id, changed_at[, to_segment])"
            )
        for raw in reader:
            line = reader.line_num
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            cid = row["customer_id"]
            if not cid:
                raise TruthError(f"{path}: line {line}: empty customer_id")
            if cid not in known:
                raise TruthError(
                    f"{path}: line {line}: customer_id {cid!r} has no event in the history"
                )
            changed = _truth_time(path, line, row, "changed_at")
            started = changed
            if row.get("started_at"):
                started = _truth_time(path, line, row, "started_at")
                if started > changed:
                    raise TruthError(
                        f"{path}: line {line}: started_at {row['started_at']!r} is after "
                        f"changed_at {row['changed_at']!r}"
                    )
            target = -1
            wanted = row.get("to_segment", "")
            if wanted:
                if wanted in by_name:
                    target = by_name[wanted]
                elif wanted.lstrip("-").isdigit() and int(wanted) in segments:
                    target = int(wanted)
                else:
                    choices = ", ".join(f"{s} ({n})" for s, n in sorted(segments.items()))
                    raise TruthError(
                        f"{path}: line {line}: to_segment {wanted!r} is not a segment of "
                        f"the bundle (one of: {choices})"
                    )
            rows.append((cid, changed, started, target))
    return pd.DataFrame(rows, columns=["customer_id", "changed_at", "started_at", "to_segment"])


def _truth_time(path: Path, line: int, row: Mapping[str, str], column: str) -> float:
    """A truth row's time in `column`, or `TruthError` naming the line."""
    try:
        return _parse_time(row[column])
    except ValueError:
        raise TruthError(
            f"{path}: line {line}: {column} {row[column]!r} is not an "
            "RFC 3339 time (e.g. 2026-03-05T00:00:00Z) or a date"
        ) from None


def _parse_time(text: str) -> float:
    if not text:
        raise ValueError("empty")
    value = pd.Timestamp(text)
    if value.tzinfo is None:
        if len(text) > 10:
            raise ValueError("no zone offset")
        value = value.tz_localize("UTC")
    if pd.isna(value):
        raise ValueError("not a time")
    return float(value.timestamp())


def migration_quality(
    alerts: pd.DataFrame,
    truth: pd.DataFrame,
    events: pd.DataFrame,
    *,
    start: float,
    end: float,
    max_delay_days: float = 45.0,
    min_observed_days: float = 14.0,
    silence_days: float = 30.0,
    qualifying_types: Sequence[str] = (),
    settled: pd.DataFrame | None = None,
    within_days: Sequence[float] = RECALL_WITHIN,
    settle_days: float = 28.0,
    settling_days: float | None = None,
    clear_nats: float | None = None,
) -> dict[str, Any]:
    """Migration alerts against the truth (customer_id, changed_at, to_segment and
    optionally started_at: `read_truth`).

    An alert is right when the customer changed at T with T <= alert <= T + max_delay, or,
    for a gradual change that began at S < T (a drift's start; T its midpoint), from S on:
    an alert in the drift's first half caught the change early, and its delay from T is
    negative.
    An alert on a customer whose qualifying events stop within `silence_days` (the churn
    horizon) after it, for good (at least `min_observed_days` of silence to the end of
    the history), is churn-led: the customer was fading out, a real change the churn
    alerts judge and a persona truth does not list. An alert on a customer with no
    qualifying event after it and less than `min_observed_days` of silence before the
    history ends is *unresolved*: whether the customer came back (a wrong alert) or left
    (churn-led) lies after the history. `precision` and the flap rate leave churn-led and
    unresolved alerts out; `precision_all` counts them as wrong. Recall counts changes in
    [start, end - min_observed]; the detection delay is the first right alert - T. Flap
    rate: migration alerts on customers without a change (and active in the window), per
    such customer per 30 days.

    Speed: `recall_within` gives, for each d in `within_days`, the share of the changes
    with at least d days of history after them that had a right alert within d days.
    Destination: a change without `to_segment` is judged against the segment it settles
    in, from `settled` (customer_id, at, nearest: the raw nearest centroid at each daily
    re-score): the nearest at its last re-score at least `settle_days` after the change.
    `settled_read_days` is how long after each change that re-score came. Read before the
    longest feature window (90 days in the default catalog) has passed since the change,
    the customer's features still hold weeks of its old behaviour, and the nearest center
    can be a segment it is only passing: on a history that runs on past the change, judge
    the weeks after it with `end`; the settled segment is still read at the history's end.
    `landed_in_target` is the share of detected changes whose last right alert named it.
    That is lenient: a change alerted first into a segment on the way (an email reader
    turning power user, alerted into Support-Heavy, then into Power Users) lands.
    `landed_alerts` is the share of the right alerts on those changes that named it (what
    a flow keyed on the destination acts on), `landed_first` the share of those changes
    whose first right alert named it (what a flow that acts once per change acts on), and
    `delay_days_landed` the delay to the first alert that named it.
    Repeats: `repeated` counts the right alerts after the first on the same change (an
    alert on the way, or a customer moved back and alerted again): each is right by the
    rule above, and precision counts it so, but a retention flow fires once per alert.

    Borders: a change whose customer settles in the segment it was in at the change (its
    segment at the last re-score before it) crossed no border, and no migration alert
    can name where it settles (a partial change often does not). `crossing` counts the
    changes that did; `recall_within_crossing` is `recall_within` over them, and
    `detected_staying` counts the detected changes that stayed (their alerts cannot land),
    and `landed_crossing` is `landed_in_target` over the detected changes that crossed.
    `by_move` gives the speed of each move between two segments (`_by_move`).

    Settling: with `settling_days` (the engine's `early_days` plus one dwell), a change of
    a customer younger than that (since its first event) is made while the customer is
    still being placed, and the engine's move is a placement (`segment_assigned`), not a
    migration: its first migration alert waits until the customer has settled. `settling`
    counts those changes; `delay_days_settled` and `recall_within_settled` are the delay
    and `recall_within` over the others, the speed the detector itself gives.

    Runner-up: with `clear_nats` (the engine's `stream.detect.TIE_NATS`), the right alerts
    of `landed_alerts` are split by their `evidence_lead_nats` (the evidence detector's
    lead of the named segment over the runner-up): `clear_alerts` is the share of them
    led by at least `clear_nats`, `landed_alerts_clear` and `landed_alerts_near` the
    landing of those and of the rest (an alert without a lead, made by the centers, is in
    neither). `landed_alerts_near_either` is the share of the near ties whose segment or
    runner-up (`runner_up_segment_id`) is where the customer settles: the two
    destinations a flow can prepare for.
    """
    mig = in_window(alerts, "segment_migration", start, end).copy()
    history_end = float(events["ts"].max())
    last = last_activity(events, qualifying_types)
    last_at = mig["customer_id"].map(last).to_numpy(dtype=float)
    at = mig["at"].to_numpy(dtype=float)
    silence = silence_days * DAY
    gone = last_at + min_observed_days * DAY <= history_end
    led = (last_at <= at + silence) & gone
    churn_led = set(mig.index[led])
    unresolved = set(mig.index[(last_at <= at) & ~gone])
    max_delay = max_delay_days * DAY
    changes = truth.reset_index(drop=True)
    if "started_at" not in changes:
        changes = changes.assign(started_at=changes["changed_at"])
    merged = mig.reset_index().merge(changes, on="customer_id", how="left")
    delay = merged["at"] - merged["changed_at"]
    merged["match"] = (merged["at"] >= merged["started_at"]) & (delay <= max_delay)
    right_alerts = merged[merged["match"]]
    right_idx = set(right_alerts["index"])
    counted = changes[
        (changes["changed_at"] >= start) & (changes["changed_at"] <= end - min_observed_days * DAY)
    ]
    delays, landed, with_target, stayed_detected, repeated = [], 0, 0, 0, 0
    named_alerts, target_alerts, delays_landed, first_named = 0, 0, [], 0
    # Right alerts with a target, led by at least clear_nats / by less: [alerts, named].
    clear, near = [0, 0], [0, 0]
    near_either = 0  # near ties whose segment or runner-up is where the customer settles
    landed_crossing, detected_crossing = 0, 0
    delays_by: dict[tuple[str, float], float] = {}
    settled_at, was_in, read_days = _settled(settled, counted, settle_days)
    crossing: list[bool] = []  # per counted change: settled in another segment than before
    moves: dict[tuple[int, int], list[int]] = {}  # (before, settled in) -> counted changes
    young = np.zeros(len(counted), dtype=bool)  # per counted change: the customer settling
    if settling_days is not None:
        born = counted["customer_id"].map(events.groupby("customer_id")["ts"].min())
        changed_at = counted["changed_at"].to_numpy(dtype=float)
        young = born.to_numpy(dtype=float) > changed_at - settling_days * DAY
    for cid, changed, target in zip(
        counted["customer_id"].tolist(),
        counted["changed_at"].to_numpy(dtype=float).tolist(),
        counted["to_segment"].to_numpy(dtype=int).tolist(),
        strict=True,
    ):
        wanted = target if target >= 0 else settled_at.get((cid, changed), -1)
        before = was_in.get((cid, changed), -1)
        crossing.append(wanted >= 0 and before >= 0 and wanted != before)
        if crossing[-1]:
            moves.setdefault((before, wanted), []).append(len(crossing) - 1)
        hits = right_alerts[
            (right_alerts["customer_id"] == cid) & (right_alerts["changed_at"] == changed)
        ].sort_values("at")
        if hits.empty:
            continue
        repeated += len(hits) - 1
        delays.append((float(hits["at"].iloc[0]) - changed) / DAY)
        delays_by[(cid, changed)] = delays[-1]
        if wanted >= 0:
            hit = hits["to_segment_id"].to_numpy(dtype=float) == wanted
            target_alerts += len(hit)
            named_alerts += int(hit.sum())
            if clear_nats is not None and "evidence_lead_nats" in hits:
                lead = pd.to_numeric(hits["evidence_lead_nats"], errors="coerce").to_numpy()
                for part, pick in ((clear, lead >= clear_nats), (near, lead < clear_nats)):
                    part[0] += int(pick.sum())
                    part[1] += int((hit & pick).sum())
                if "runner_up_segment_id" in hits:
                    runner = pd.to_numeric(hits["runner_up_segment_id"], errors="coerce")
                    either = hit | (runner.to_numpy(dtype=float) == wanted)
                    near_either += int((either & (lead < clear_nats)).sum())
            if hit.any():
                first = float(hits["at"].to_numpy(dtype=float)[hit][0])
                delays_landed.append((first - changed) / DAY)
            named = int(hit[-1])
            first_named += int(hit[0])
            with_target += 1
            landed += named
            stayed_detected += int(before == wanted)
            if crossing[-1]:
                detected_crossing += 1
                landed_crossing += named
    active = set(events.loc[(events["ts"] >= start) & (events["ts"] <= end), "customer_id"])
    unchanged = active - set(changes["customer_id"])
    set_aside = churn_led | unresolved
    on_unchanged = mig["customer_id"].isin(unchanged) & ~mig.index.isin(list(set_aside))
    flaps = int(on_unchanged.sum())
    months = max((end - start) / DAY / 30.0, 1e-9)
    judged = len(mig) - len(set_aside - right_idx)
    within = _hits_within(counted, delays_by, end, within_days)
    settled_changes = counted[~young]
    settled_keys = set(
        zip(settled_changes["customer_id"], settled_changes["changed_at"], strict=True)
    )
    by_settling: dict[str, Any] = (
        {}
        if settling_days is None
        else {
            "settling_days": settling_days,
            "settling": int(young.sum()),
            "delay_days_settled": _dist(d for k, d in delays_by.items() if k in settled_keys),
            "recall_within_settled": _recall_within(settled_changes, delays_by, end, within_days),
        }
    )
    return {
        "alerts": len(mig),
        "right": len(right_idx),
        "churn_led": len(churn_led - right_idx),
        "unresolved": len(unresolved - right_idx),
        "precision": _ratio(len(right_idx), judged),
        "precision_ci95": wilson(len(right_idx), judged),
        "precision_all": _ratio(len(right_idx), len(mig)),
        "changes": len(counted),
        "detected": len(delays),
        "repeated": repeated,
        "recall": _ratio(len(delays), len(counted)),
        "recall_ci95": wilson(len(delays), len(counted)),
        "delay_days": _dist(delays),
        "delays": [round(d, 3) for d in delays],
        "recall_within": {d: _ratio(hit, n) for d, (hit, n) in within.items()},
        "recall_within_ci95": {d: wilson(hit, n) for d, (hit, n) in within.items()},
        "crossing": int(sum(crossing)),
        "recall_within_crossing": _recall_within(
            counted[np.array(crossing, dtype=bool)], delays_by, end, within_days
        ),
        "by_move": _by_move(counted, moves, delays_by, end, within_days),
        "with_target": with_target,
        "settled_read_days": _dist(read_days),
        "landed_in_target": _ratio(landed, with_target),
        "landed_alerts": _ratio(named_alerts, target_alerts),
        "landed_first": _ratio(first_named, with_target),
        **(
            {
                "clear_alerts": _ratio(clear[0], target_alerts),
                "landed_alerts_clear": _ratio(clear[1], clear[0]),
                "landed_alerts_near": _ratio(near[1], near[0]),
                "landed_alerts_near_either": _ratio(near_either, near[0]),
            }
            if clear_nats is not None
            else {}
        ),
        "delay_days_landed": _dist(delays_landed),
        "landed_crossing": _ratio(landed_crossing, detected_crossing),
        "detected_staying": stayed_detected,
        "unchanged_customers": len(unchanged),
        "unchanged_alerts": flaps,
        "flap_rate_per_30d": _ratio(flaps, len(unchanged) * months),
        "max_delay_days": max_delay_days,
        **by_settling,
    }


def _by_move(
    counted: pd.DataFrame,
    moves: Mapping[tuple[int, int], list[int]],
    delays: Mapping[tuple[str, float], float],
    end: float,
    within_days: Sequence[float],
) -> list[dict[str, Any]]:
    """Per move between two segments (the one a customer was in at its change, the one
    it settled in; changes that crossed a border only): its changes, how many were
    detected, their median delay and `recall_within`. The moves differ in speed by what
    the events say: a move to a busier segment shows in the events that start, one to a
    quieter segment mostly in those that stop. Most changes first, then by segment ids.

    >>> c = pd.DataFrame({"customer_id": ["a", "b", "c"], "changed_at": [0.0, 0.0, 0.0]})
    >>> rows = _by_move(c, {(1, 2): [0, 1], (2, 1): [2]}, {("a", 0.0): 2.0}, 60 * DAY, [7])
    >>> [(r["from_segment_id"], r["changes"], r["detected"], r["recall_within"]) for r in rows]
    [(1, 2, 1, {'7': 0.5}), (2, 1, 0, {'7': 0.0})]
    """
    rows = []
    for (src, dst), positions in moves.items():
        mine = counted.iloc[positions]
        keys = list(zip(mine["customer_id"], mine["changed_at"].astype(float), strict=True))
        found = [delays[k] for k in keys if k in delays]
        rows.append(
            {
                "from_segment_id": src,
                "to_segment_id": dst,
                "changes": len(keys),
                "detected": len(found),
                "delay_median_days": _dist(found)["median"],
                "recall_within": _recall_within(mine, delays, end, within_days),
            }
        )
    return sorted(rows, key=lambda r: (-r["changes"], r["from_segment_id"], r["to_segment_id"]))


def _recall_within(
    counted: pd.DataFrame,
    delays: Mapping[tuple[str, float], float],
    end: float,
    within_days: Sequence[float],
) -> dict[str, float | None]:
    """Per d: detected within d days / changes with d days of history after them.

    >>> c = pd.DataFrame({"customer_id": ["a", "b", "c"], "changed_at": [0.0, 0.0, 50 * DAY]})
    >>> _recall_within(c, {("a", 0.0): 2.0, ("b", 0.0): 10.0}, 60 * DAY, [7, 28])
    {'7': 0.3333, '28': 1.0}
    """
    got = _hits_within(counted, delays, end, within_days)
    return {d: _ratio(hit, n) for d, (hit, n) in got.items()}


def _hits_within(
    counted: pd.DataFrame,
    delays: Mapping[tuple[str, float], float],
    end: float,
    within_days: Sequence[float],
) -> dict[str, tuple[int, int]]:
    """Per d (as text): the changes detected within d days, and the changes with d days
    of history after them (`_recall_within`'s ratio; `wilson` gives its interval)."""
    out: dict[str, tuple[int, int]] = {}
    for d in within_days:
        pairs = [
            (cid, t)
            for cid, t in zip(counted["customer_id"], counted["changed_at"], strict=True)
            if t + d * DAY <= end
        ]
        hit = sum(1 for p in pairs if delays.get(p, math.inf) <= d)
        out[f"{d:g}"] = (hit, len(pairs))
    return out


def _settled(
    settled: pd.DataFrame | None, counted: pd.DataFrame, settle_days: float
) -> tuple[dict[tuple[str, float], int], dict[tuple[str, float], int], list[float]]:
    """(customer, change) -> the raw nearest centroid at the customer's last re-score at
    least `settle_days` after the change (absent when the history stops before); ->
    the segment it was in at its last re-score before the change (absent before its
    first); and the days from each change to the re-score its settled segment was read at.
    """
    if settled is None or settled.empty or counted.empty:
        return {}, {}, []
    ordered = settled.sort_values("at", kind="stable")
    last = ordered.groupby("customer_id").tail(1)
    when = dict(zip(last["customer_id"], last["at"].astype(float), strict=True))
    nearest = dict(zip(last["customer_id"], last["nearest"].astype(int), strict=True))
    by_customer = {cid: g for cid, g in ordered.groupby("customer_id", sort=False)}
    out, before, read = {}, {}, []
    for cid, changed in zip(counted["customer_id"], counted["changed_at"], strict=True):
        if cid in when and when[cid] >= changed + settle_days * DAY:
            out[(cid, float(changed))] = int(nearest[cid])
            read.append((when[cid] - float(changed)) / DAY)
        mine = by_customer.get(cid)
        if mine is not None:
            earlier = mine[mine["at"].astype(float) <= changed]
            if not earlier.empty and pd.notna(earlier["segment"].iloc[-1]):
                before[(cid, float(changed))] = int(earlier["segment"].iloc[-1])
    return out, before, read


def migration_behaviour(
    alerts: pd.DataFrame, start: float, end: float, return_days: float = 14.0
) -> dict[str, Any]:
    """Without truth: the migration matrix, the share of moving customers who moved back
    within `return_days` (a flap signal), the dwell before each migration (time since
    the customer's previous segment assignment, first or migration), and the later
    changes of segment that make no migration alert, by `placed_by` (corrections,
    reactivations, moves in silence and returns, placements still settling).

    >>> a = pd.DataFrame({"type": ["segment_assigned", "segment_migration", "segment_migration"],
    ...     "customer_id": ["a"] * 3, "at": [0.0, 10 * DAY, 12 * DAY],
    ...     "from_segment_id": [None, 1, 2], "to_segment_id": [None, 2, 1]})
    >>> b = migration_behaviour(a, 0.0, 30 * DAY)
    >>> b["moved_and_returned_share"], b["dwell_days"]["median"]
    (1.0, 6.0)
    """
    mig = in_window(alerts, "segment_migration", start, end)
    matrix: dict[str, dict[str, int]] = {}
    if len(mig):
        for src, dst, n in zip(*_pairs(mig, "from_segment_id", "to_segment_id"), strict=True):
            matrix.setdefault(str(int(src)), {})[str(int(dst))] = n
    returned = set()
    ordered = mig.sort_values(["customer_id", "at"], kind="stable")
    for cid, group in ordered.groupby("customer_id"):
        src = group["from_segment_id"].to_numpy(dtype=float)
        dst = group["to_segment_id"].to_numpy(dtype=float)
        at = group["at"].to_numpy(dtype=float)
        for i in range(len(group) - 1):
            back = (dst[i + 1] == src[i]) & (at[i + 1] - at[i] <= return_days * DAY)
            if back:
                returned.add(cid)
    # Every segment change (first assignment, migration) before each migration.
    moves = alerts[alerts["type"].isin(["segment_assigned", "segment_migration"])]
    assigned = moves.groupby("customer_id")["at"].apply(lambda t: np.unique(t.to_numpy()))
    dwell = []
    for cid, at in zip(mig["customer_id"], mig["at"], strict=True):
        times = assigned.get(cid)
        if times is None:
            continue
        before = times[times < at]
        if len(before):
            dwell.append((at - before[-1]) / DAY)
    movers = mig["customer_id"].nunique()
    placed = in_window(alerts, "segment_assigned", start, end)
    if "placed_by" in placed and "first" in placed:
        later = placed[placed["first"].eq(False) & placed["placed_by"].ne("migration")]
        by = {str(k): int(n) for k, n in later["placed_by"].value_counts().sort_index().items()}
    else:
        by = {}
    return {
        "alerts": len(mig),
        "customers_moved": int(movers),
        "matrix": matrix,
        "moved_and_returned_within_days": return_days,
        "moved_and_returned_share": _ratio(len(returned), movers),
        "dwell_days": _dist(dwell),
        "placed_without_migration": by,
    }


def evaluate(
    alerts: pd.DataFrame,
    scores: pd.DataFrame,
    events: pd.DataFrame,
    *,
    start: float,
    end: float,
    horizon_days: float,
    threshold: float,
    cooldown_days: float,
    qualifying_types: Sequence[str] = (),
    truth: pd.DataFrame | None = None,
    settling_days: float | None = None,
    clear_nats: float | None = None,
) -> dict[str, Any]:
    """Every figure of a backtest (what `metrics.json` holds), alerts in [start, end];
    `settling_days`, `clear_nats`: see `migration_quality`."""
    out: dict[str, Any] = {
        "window": {"from": _iso(start), "to": _iso(end), "days": round((end - start) / DAY, 3)},
        "volumes": volumes(alerts, start, end),
        "churn": churn_quality(
            alerts,
            scores,
            events,
            start=start,
            end=end,
            horizon_days=horizon_days,
            threshold=threshold,
            cooldown_days=cooldown_days,
            qualifying_types=qualifying_types,
        ),
        "migration_behaviour": migration_behaviour(alerts, start, end),
    }
    if truth is not None:
        out["migrations"] = migration_quality(
            alerts,
            truth,
            events,
            start=start,
            end=end,
            silence_days=horizon_days,
            qualifying_types=qualifying_types,
            settled=scores if "nearest" in scores else None,
            settling_days=settling_days,
            clear_nats=clear_nats,
        )
    return out
