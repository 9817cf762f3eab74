"""How fast any detector of event-type counts can be on the generator's personas.

A CUSUM of the log-likelihood ratio gains, per day after a switch from persona A to B,
the Kullback-Leibler divergence KL(B || A) of their Poisson daily counts (summed over the
event types) on average, so it needs about h / KL days to reach a threshold of h nats;
and its false alarms come at most about once per e^h days per alternative (Lorden), so
the flap target (0.01 per customer per 30 days, 4 alternative segments) needs h of about
9.4. This prints the divergence of every persona pair and, for a history's truth file,
the median of h / KL over its migrations after `--from-day`: the delay of an ideal
detector that knows every persona's rates and every customer's baseline exactly.
`--features` adds what the feature each feature_used event names would tell (the
personas draw them uniformly from pools of their own; a feature outside a pool counted at
1 % of its events, each event's term capped at 4 nats): the detector does not read it yet.

    python -m benchmarks.evidence_limit --truth data/sudden/truth.csv [--features]

`--shapes` simulates that ideal detector on every history shape instead (`offline/shapes.py`:
the shape's persona rates, weekends, drifts, partial changes and overdispersion, each
customer's lifelong activity multiplier), both for migrating customers and for unchanged
ones, so it also measures its false alarms rather than bounding them. For each shape it
prints the lowest threshold h at which the ideal detector keeps the flap target (0.01
alarms per unchanged customer per 30 days) and its median delay and recall within 7, 14
and 28 days there and at the shipped threshold: what no detector of the event-type counts
can beat on that shape.

    python -m benchmarks.evidence_limit --shapes [--moves 2000] [--seed 0]

`--baseline` asks what the shipped detector's own estimates cost on the sudden shape
(counts only): the same CUSUM with the customer's baseline rates known, read off
`--baseline-days` of its counts with `--prior-days` of its persona's rates (plug-in), and
read so but guarded as the shipped detector guards it (each day the lesser of the ratio
against that baseline and against the persona's rates, `stream/detect.py`).

    python -m benchmarks.evidence_limit --baseline [--baseline-days 60] [--prior-days 7]

`--history DIR` runs that ideal detector on a generated history's own events instead
(`segstream generate`'s folder: events, truth and migrations), event by event as the
shipped detector reads them: each event's count, feature and amount terms under the true
personas (the customer's multiplier read off its 90 days before), the days between events
as they pass, from each change and, for every unchanged customer, against every other
persona from the judged window's start. Its delays and false alarms are on the very events
a backtest of that history judges, so the two can be compared threshold by threshold
(`oracle_on_history`; shapes whose rates switch at once: sudden, close, far, low- and
high-activity, seasonal, whose weekends it reads, and overdispersed, whose negative-binomial
days it reads as `day_llr` does).

    python -m benchmarks.evidence_limit --history data/sudden [--shape sudden]

`--race` (with `--history`) runs a change's CUSUM against every other persona, not only
the one the customer turned into, and names the first to cross: the share of its alarms
that named the customer's new persona is what the backtest's `landed_first` asks of the
shipped detector's first alert. Beside it: whether, at that alarm, the new persona's
log-likelihood since the change led (naming by a known change time), and how often the new
persona's CUSUM leads 3 to 14 days after the change (naming by the leader then, at any
threshold). It reads gradual histories too (from each drift's start, the delay from its
midpoint): which persona a drift's days favour, and when.

    python -m benchmarks.evidence_limit --history data/gradual --shape gradual --race

`--against BT` (with `--history`) sets the ideal detector at `--at-h` beside the shipped
one's alerts of the same history (a `segstream backtest` folder's `alerts.jsonl`), change
by change, and asks where the shipped detector's days go: for each group of changes (the
customer settling at the change, the first alert at a daily re-score, moves to a quieter
or a busier persona) the median delay of all changes if that group's delays were the
ideal's (`days_by_group`). Pick `--at-h` where the ideal's false alarms are the backtest's,
or give the backtest's flap rate as `--at-flaps` and the ideal runs at the lowest h of its
grid whose false alarms are no more (`h_at_flaps`): the comparison at equal false alarms.

    python -m benchmarks.evidence_limit --history data/sudden --against data/sudden/bt --at-h 9
    python -m benchmarks.evidence_limit --history data/sudden --against data/sudden/bt \
        --at-flaps 0.0027

Pure: reads the truth CSV or a history's files only, or simulates.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from offline.shapes import SHAPES, HistoryShape
from offline.synthetic import (
    DEFAULT_START,
    FEATURES,
    MULTIPLIER_SIGMA,
    PERSONAS,
    RATE_TYPES,
    Persona,
    changed_types,
    draw_counts,
    drift_weight,
    most_different,
    separate,
    weekend_factor,
)
from stream.decide import Rules
from stream.detect import PRIOR_DAYS, RATE_FLOOR

#: Days after a change (a gradual drift's midpoint) the simulation follows, and days an
#: unchanged customer is watched (the backtest's judged window: days 100 to 150).
HORIZON_DAYS = 45
WATCH_DAYS = 50
FLAP_TARGET = 0.01  # alarms per unchanged customer per 30 days (issue 22)
SHIPPED_H = Rules().migration_evidence
#: The most evidence (nats, either way) one event's feature or amount gives the ideal
#: detector (`attribute_llr`): the shipped detector's cap on an amount.
ATTRIBUTE_CAP = 4.0


def divergence(new: tuple[float, ...], old: tuple[float, ...]) -> float:
    """KL(Poisson(new) || Poisson(old)) per day, summed over the event types.

    >>> round(divergence((2.0,), (1.0,)), 3)
    0.386
    """
    a, b = np.asarray(new), np.asarray(old)
    return float((a * np.log(a / b) - a + b).sum())


def pool_shares(p: Persona) -> np.ndarray:
    """The share of each of `FEATURES` in a persona's feature_used events (1 % off-pool)."""
    shares = np.full(len(FEATURES), 0.01 / len(FEATURES))
    shares[[FEATURES.index(f) for f in p.features]] += 0.99 / len(p.features)
    return shares


def feature_divergence(new: Persona, old: Persona) -> float:
    """What the features named by `new`'s feature_used events add per day: their rate
    times the expected (capped) log-ratio of the two personas' feature shares.

    >>> round(feature_divergence(PERSONAS["casual"], PERSONAS["casual"]), 3)
    0.0
    """
    a, b = pool_shares(new), pool_shares(old)
    return float(new.feature_uses * (a * np.minimum(np.log(a / b), 4.0)).sum())


def pair_divergence(new: str, old: str, features: bool) -> float:
    a, b = PERSONAS[new], PERSONAS[old]
    extra = feature_divergence(a, b) if features else 0.0
    return divergence(a.rates, b.rates) + extra


def ideal_delays(
    truth: pd.DataFrame, threshold: float, from_day: int, features: bool = False
) -> np.ndarray:
    """h / KL(to || from) for each migration of `truth` on or after `from_day`."""
    moved = truth.dropna(subset=["migration_day"])
    start = pd.Timestamp(DEFAULT_START).tz_localize(None) + pd.Timedelta(days=from_day)
    moved = moved[pd.to_datetime(moved["migration_day"]) >= start]
    pairs = zip(moved["persona"].astype(str), moved["to_persona"].astype(str), strict=True)
    return np.array([threshold / pair_divergence(b, a, features) for a, b in pairs])


def shape_rates(shape: HistoryShape) -> np.ndarray:
    """The personas' daily rates (personas, types) in a history of `shape`."""
    if shape.persona_spread:
        raise ValueError("a history with redrawn personas: the ideal knows only `PERSONAS`")
    rates = np.array([p.rates for p in PERSONAS.values()])
    scaled: np.ndarray = separate(rates, shape.separation) * shape.activity
    return scaled


def day_llr(counts: np.ndarray, new: np.ndarray, old: np.ndarray, dispersion: float) -> np.ndarray:
    """The log-likelihood ratio of one day's counts (summed over the last axis, the types)
    under rates `new` against `old`: Poisson, or negative binomial of variance
    mean + dispersion * mean^2 (what the generator draws).

    >>> round(float(day_llr(np.array([2.0]), np.array([2.0]), np.array([1.0]), 0.0)), 3)
    0.386
    """
    if dispersion <= 0:
        out: np.ndarray = (counts * np.log(new / old) - (new - old)).sum(axis=-1)
        return out
    r = 1.0 / dispersion
    step = np.log((r + old) / (r + new))
    nb: np.ndarray = (counts * (np.log(new / old) + step) + r * step).sum(axis=-1)
    return nb


def count_terms(new: np.ndarray, old: np.ndarray, dispersion: float) -> tuple[np.ndarray, float]:
    """`day_llr` split as a CUSUM read event by event needs it: a term per event of each
    type (the last axis) and the nats lost per day (the drift), so that a day's events'
    terms minus the drift are that day's log-likelihood ratio.

    >>> terms, drift = count_terms(np.array([2.0]), np.array([1.0]), 0.0)
    >>> round(float(terms[0]), 3), drift
    (0.693, 1.0)
    """
    if dispersion <= 0:
        return np.log(new / old), float((new - old).sum())
    r = 1.0 / dispersion
    step = np.log((r + old) / (r + new))
    return np.log(new / old) + step, float(-r * step.sum())


def _cusum(llr: np.ndarray, thresholds: np.ndarray, restart: bool) -> np.ndarray:
    """Per row of daily `llr` (rows, days) and threshold, when the CUSUM first reaches it
    (days from the first day's start, interpolated within the day: a detector reading each
    event sees the day's evidence build through it; `restart`: the number of alarms
    instead, starting again from 0 after each)."""
    n, days = llr.shape
    s = np.zeros((n, len(thresholds)))
    first = np.full((n, len(thresholds)), np.inf)
    alarms = np.zeros((n, len(thresholds)))
    for d in range(days):
        prev = s
        s = np.maximum(s + llr[:, d, None], 0.0)
        hit = s >= thresholds[None, :]
        within = np.clip((thresholds[None, :] - prev) / np.maximum(s - prev, 1e-12), 0.0, 1.0)
        first = np.where(hit & np.isinf(first), d + within, first)
        alarms += hit
        if restart:
            s = np.where(hit, 0.0, s)
    return alarms if restart else first


def lognormal_llr(y: Any, new_mu: Any, new_sigma: Any, old_mu: Any, old_sigma: Any) -> Any:
    """The log-likelihood ratio of log values `y` under a normal (`new_mu`, `new_sigma`)
    against one at (`old_mu`, `old_sigma`): an amount's evidence (floats or arrays).

    >>> round(float(lognormal_llr(1.0, 1.0, 0.5, 0.0, 0.5)), 3)
    2.0
    """
    return (
        np.log(old_sigma / new_sigma)
        + (y - old_mu) ** 2 / (2 * old_sigma**2)
        - (y - new_mu) ** 2 / (2 * new_sigma**2)
    )


def attribute_llr(
    rng: np.random.Generator,
    counts: np.ndarray,
    drawn: np.ndarray,
    new: np.ndarray,
    old: np.ndarray,
    changed: np.ndarray,
) -> np.ndarray:
    """The log-likelihood ratio (moves, days) of what the day's events carry besides their
    counts, under persona `new` against `old` (per move): the feature each feature_used
    event names (drawn uniformly from the pool of persona `drawn`, per (move, day), as the
    generator does; judged by `pool_shares`) and the amount of each purchase (lognormal
    around `drawn`'s median). Each event's term is capped at `ATTRIBUTE_CAP` nats either
    way, as any detector must (a pool or an amount never seen would be infinite
    evidence). Where a partial change leaves a type (`changed` 0), its attribute
    does not move, and says nothing."""
    moves, days = drawn.shape
    out = np.zeros((moves, days))
    names = list(PERSONAS)
    feat_col, buy_col = RATE_TYPES.index("feature_used"), RATE_TYPES.index("purchase")
    # Features: per pool, the day's uses split among its features.
    shares = np.array([pool_shares(PERSONAS[n]) for n in names])  # (personas, features)
    f_new = np.where(changed[feat_col] > 0, new, old)
    llr_f = np.clip(np.log(shares[f_new] / shares[old]), -ATTRIBUTE_CAP, ATTRIBUTE_CAP)
    uses = counts[:, :, feat_col].astype(np.int64)
    for p, name in enumerate(names):
        cells = np.flatnonzero((drawn == p).ravel() & (uses.ravel() > 0))
        pool = np.zeros(len(FEATURES))
        pool[[FEATURES.index(f) for f in PERSONAS[name].features]] = 1.0
        picked = rng.multinomial(uses.ravel()[cells], pool / pool.sum())  # (cells, features)
        row = cells // days
        out.ravel()[cells] += (picked * llr_f[row]).sum(axis=1)
    # Amounts: each purchase's log under the two personas' lognormals.
    med = np.log([PERSONAS[n].amount_median for n in names])
    sig = np.array([PERSONAS[n].amount_sigma for n in names])
    a_new = np.where(changed[buy_col] > 0, new, old)
    buys = counts[:, :, buy_col].astype(np.int64).ravel()
    cell = np.repeat(np.arange(buys.size), buys)
    who = drawn.ravel()[cell]
    y = rng.normal(med[who], sig[who])
    row = cell // days
    mn, sn, mo, so = med[a_new[row]], sig[a_new[row]], med[old[row]], sig[old[row]]
    term = lognormal_llr(y, mn, sn, mo, so)
    np.add.at(out.ravel(), cell, np.clip(term, -ATTRIBUTE_CAP, ATTRIBUTE_CAP))
    return out


def ideal_on_shape(
    shape: HistoryShape,
    thresholds: np.ndarray,
    moves: int,
    rng: np.random.Generator,
    attributes: bool = False,
) -> dict[str, np.ndarray]:
    """The ideal detector on `shape`: it knows every persona's rates (as the shape scales
    them), each customer's multiplier and the days of the week, and which types a partial
    change moves; with `attributes`, also every persona's features and amounts
    (`attribute_llr`). Per threshold: the delays (days, inf: never within
    `HORIZON_DAYS`) of `moves` simulated migrations, from the change (a drift's midpoint;
    the CUSUM starts at the drift's start), and the alarms per unchanged customer per 30
    days."""
    rates = shape_rates(shape)
    k = len(rates)
    changed = changed_types(shape)
    old = rng.integers(0, k, moves)
    new = (old + rng.integers(1, k, moves)) % k
    if shape.changes is not None:
        new = most_different(rates, RATE_TYPES.index(shape.changes))[old]
    mult = rng.lognormal(0.0, MULTIPLIER_SIGMA, moves)[:, None, None]
    lo, hi = shape.with_options(migrate_from_day=100, migrate_to_day=122).window(150)
    mid = rng.integers(lo, hi + 1, moves)
    length = np.zeros(moves, dtype=np.int64)
    if shape.migration == "gradual":
        length = rng.integers(shape.drift_days[0], shape.drift_days[1] + 1, moves)
    start = mid - length // 2
    span = int(length.max()) // 2 + HORIZON_DAYS + 1
    day = start[:, None] + np.arange(span)[None, :]  # absolute day of each simulated day
    weight = drift_weight(day, start[:, None], (start + length)[:, None])
    week = weekend_factor(shape, DEFAULT_START.weekday(), day)[:, :, None]
    before = rates[old][:, None, :] * mult * week
    after = before + changed * (rates[new][:, None, :] * mult * week - before)
    truth = before + weight[:, :, None] * (after - before)
    counts = draw_counts(rng, rng, truth, shape.dispersion).astype(float)
    llr = day_llr(counts, after, before, shape.dispersion)
    if attributes:  # the generator switches features and amounts at a drift's midpoint
        drawn = np.where(weight >= 0.5, new[:, None], old[:, None])
        llr = llr + attribute_llr(rng, counts, drawn, new, old, changed)
    first = _cusum(llr, thresholds, restart=False)
    delays = first + (start - mid)[:, None]
    # Unchanged customers against every alternative the ideal detector watches.
    p = rng.integers(0, k, moves)
    steady_mult = rng.lognormal(0.0, MULTIPLIER_SIGMA, moves)[:, None, None]
    day = 100 + np.arange(WATCH_DAYS)[None, :]
    week = weekend_factor(shape, DEFAULT_START.weekday(), day)[:, :, None]
    base = rates[p][:, None, :] * steady_mult * week
    steady = np.broadcast_to(base, (moves, WATCH_DAYS, len(RATE_TYPES)))
    counts = draw_counts(rng, rng, steady, shape.dispersion).astype(float)

    def steady_llr(q: np.ndarray) -> np.ndarray:
        alt = base + changed * (rates[q][:, None, :] * steady_mult * week - base)
        llr = day_llr(counts, alt, base, shape.dispersion)
        if attributes:
            drawn = np.broadcast_to(p[:, None], (moves, WATCH_DAYS))
            llr = llr + attribute_llr(rng, counts, drawn, q, p, changed)
        return llr

    flaps = _flaps(steady_llr, p, k, thresholds)
    return {"delays": np.maximum(delays, 0.0), "flaps": flaps}


def _flaps(
    llr_against: Callable[[np.ndarray], np.ndarray], p: np.ndarray, k: int, thresholds: np.ndarray
) -> np.ndarray:
    """Per threshold, the alarms per unchanged customer (persona `p`) per 30 days of a
    CUSUM restarted after each alarm, against every other of the `k` personas in turn
    (`llr_against(q)`: the daily log-likelihood ratios of persona q against the customer's
    own, (customers, `WATCH_DAYS`))."""
    alarms = np.zeros((len(p), len(thresholds)))
    for shift in range(1, k):
        alarms += _cusum(llr_against((p + shift) % k), thresholds, restart=True)
    flaps: np.ndarray = alarms.mean(axis=0) / (WATCH_DAYS / 30.0)
    return flaps


def estimated_baseline(
    thresholds: np.ndarray,
    moves: int,
    rng: np.random.Generator,
    baseline_days: float = 60.0,  # the default catalog's 90-day window minus its latest 30
    prior_days: float = PRIOR_DAYS,
) -> dict[str, dict[str, np.ndarray]]:
    """The CUSUM of the sudden shape's daily counts (Poisson, counts only) against the
    customer's baseline rates, three ways: `known` (its persona's rates times its
    multiplier, as `ideal_on_shape`), `plug-in` (its counts over `baseline_days` with
    `prior_days` of its persona's rates, the alternative scaled by its activity as the
    shipped detector scales it) and `guarded` (each day the lesser of the plug-in ratio
    and the ratio against its persona's rates: the shipped detector's guard). Per way, as
    `ideal_on_shape`: the delays of `moves` migrations and the alarms per unchanged
    customer per 30 days."""
    shape = SHAPES["sudden"]
    rates = shape_rates(shape)
    k, types = rates.shape
    old = rng.integers(0, k, moves)
    new = (old + rng.integers(1, k, moves)) % k
    mult = rng.lognormal(0.0, MULTIPLIER_SIGMA, moves)[:, None, None]
    after = np.broadcast_to(rates[new][:, None, :] * mult, (moves, HORIZON_DAYS, types))
    moved = draw_counts(rng, rng, after, 0.0).astype(float)
    steady_p = rng.integers(0, k, moves)
    steady_mult = rng.lognormal(0.0, MULTIPLIER_SIGMA, moves)[:, None, None]
    base = rates[steady_p][:, None, :] * steady_mult
    steady = draw_counts(rng, rng, np.broadcast_to(base, (moves, WATCH_DAYS, types)), 0.0)

    def estimate(persona: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        own = rng.poisson(baseline_days * rates[persona][:, None, :] * m)
        prior = prior_days * rates[persona][:, None, :]
        b = np.maximum((own + prior) / (baseline_days + prior_days), RATE_FLOOR)
        scale = np.clip(b.sum(-1, keepdims=True) / rates[persona].sum(-1)[:, None, None], 1 / 3, 3)
        return b, scale

    def llr(
        counts: np.ndarray, persona: np.ndarray, m: np.ndarray, target: np.ndarray,
        fitted: tuple[np.ndarray, np.ndarray], way: str,
    ) -> np.ndarray:  # fmt: skip
        segment = rates[persona][:, None, :]  # the customer's segment is its persona here
        if way == "known":
            return day_llr(counts, rates[target][:, None, :] * m, segment * m, 0.0)
        b, scale = fitted
        alt = rates[target][:, None, :] * scale
        got = day_llr(counts, alt, b, 0.0)
        return np.minimum(got, day_llr(counts, alt, segment, 0.0)) if way == "guarded" else got

    fit_moved, fit_steady = estimate(old, mult), estimate(steady_p, steady_mult)
    out = {}
    for way in ("known", "plug-in", "guarded"):
        delays = _cusum(llr(moved, old, mult, new, fit_moved, way), thresholds, restart=False)
        against = partial(llr, steady, steady_p, steady_mult, fitted=fit_steady, way=way)
        out[way] = {"delays": delays, "flaps": _flaps(against, steady_p, k, thresholds)}
    return out


#: Shapes `oracle_on_history` reads right: rates that switch at once and entirely, flat or
#: scaled alike on weekends, with Poisson or negative-binomial days.
ORACLE_SHAPES = (
    "sudden", "close", "far", "low-activity", "high-activity", "seasonal", "overdispersed",
)  # fmt: skip
#: And with `race`: a gradual drift too. The alternatives are the personas' own rates, so
#: the race asks which persona the days of a drift favour first, not how fast a detector
#: that knew the drift's path would be.
RACE_SHAPES = (*ORACLE_SHAPES, "gradual")
#: Days after a change (a drift's midpoint) at which the race asks which persona leads.
LEAD_DAYS = (3.0, 5.0, 7.0, 10.0, 14.0)


def _event_term(
    kind: str, props: dict[str, object], new: str, old: str, counts: np.ndarray
) -> float:
    """What one event tells the ideal detector, persona `new` against `old` (`counts`: the
    per-event count terms of each type, `count_terms`): its type's count term, and for a
    feature_used event its feature's and for a purchase its amount's log-likelihood ratio
    (each capped at `ATTRIBUTE_CAP`, as `attribute_llr`)."""
    term = float(counts[RATE_TYPES.index(kind)])
    value = props.get("feature") if kind == "feature_used" else props.get("amount")
    if kind == "feature_used" and value in FEATURES:
        f = FEATURES.index(str(value))
        ratio = math.log(pool_shares(PERSONAS[new])[f] / pool_shares(PERSONAS[old])[f])
        term += max(min(ratio, ATTRIBUTE_CAP), -ATTRIBUTE_CAP)
    if kind == "purchase" and isinstance(value, int | float) and value > 0:
        a, b = PERSONAS[new], PERSONAS[old]
        llr = lognormal_llr(
            math.log(value), math.log(a.amount_median), a.amount_sigma,
            math.log(b.amount_median), b.amount_sigma,
        )  # fmt: skip
        term += max(min(float(llr), ATTRIBUTE_CAP), -ATTRIBUTE_CAP)
    return term


def _alarms(
    events: list[tuple[float, float]], start: float, end: float, drift: float, h: float,
    restart: bool, week: Callable[[float], float] | None = None,
) -> list[float]:  # fmt: skip
    """The times (days) a CUSUM run from `start` to `end` over `events` ((day, term),
    sorted) reaches `h`, with `drift` nats lost per day between them (negative: silence
    is evidence, and the sum may cross between two events); only the first, unless
    `restart` (then it starts again from 0 after each). `week`: the drift's factor on the
    day a time falls in (a seasonal history's weekend rates); the silence is then summed
    day by day."""
    s, last, hits = 0.0, start, []
    for t, term in [*((t, x) for t, x in events if start <= t < end), (end, None)]:
        for begin, stop, factor in _pieces(last, t, week):  # the silence before t
            d, at = drift * factor, begin
            while d < 0 and s - d * (stop - at) >= h:  # crosses in this piece
                at += (h - s) / -d
                hits.append(at)
                if not restart:
                    return hits
                s = 0.0
            s = max(s - d * (stop - at), 0.0)
        last = max(last, t)
        if term is None:
            break
        s = max(s + term, 0.0)
        if s >= h:
            hits.append(t)
            if not restart:
                return hits
            s = 0.0
    return hits


def _sum_since(
    events: list[tuple[float, float]], start: float, t: float, drift: float,
    week: Callable[[float], float] | None = None,
) -> float:  # fmt: skip
    """The log-likelihood ratio of the days from `start` to `t` (the events' terms, the
    last one at `t` included, and the drift over the silence), never reset to 0: the
    evidence of one persona since a known change, which a CUSUM's running sum is not.

    >>> _sum_since([(1.0, 2.0), (3.0, 5.0)], 0.0, 3.0, 1.0)
    4.0
    """
    return sum(x for te, x in events if start <= te <= t) - _silence(start, t, drift, week)


def _leads(name: str, scores: dict[str, float]) -> bool:
    """Whether `name`'s score is above every other's (a tie is not a lead).

    >>> _leads("a", {"a": 2.0, "b": 1.0}), _leads("a", {"a": 2.0, "b": 2.0})
    (True, False)
    """
    return all(scores[name] > x for p, x in scores.items() if p != name)


def _cusum_at(
    events: list[tuple[float, float]], start: float, t: float, drift: float,
    week: Callable[[float], float] | None = None,
) -> float:  # fmt: skip
    """A CUSUM's running sum at `t`, run from `start` over `events` (the last one at `t`
    included), reset to 0 wherever it would fall below.

    >>> _cusum_at([(1.0, 2.0), (3.0, 5.0)], 0.0, 3.0, 1.0)  # 0, then 2, then 0 + 5
    5.0
    """
    s, last = 0.0, start
    for te, x in events:
        if start <= te <= t:
            s = max(max(s - _silence(last, te, drift, week), 0.0) + x, 0.0)
            last = te
    return max(s - _silence(last, t, drift, week), 0.0)


def _silence(start: float, t: float, drift: float, week: Callable[[float], float] | None) -> float:
    """The drift over the days from `start` to `t`, at each day's factor of `week`."""
    return sum(drift * factor * (stop - at) for at, stop, factor in _pieces(start, t, week))


def _pieces(
    start: float, t: float, week: Callable[[float], float] | None
) -> Iterator[tuple[float, float, float]]:
    """The time from `start` to `t` as (from, to, factor of the drift): one piece at 1,
    or with `week` one per day at that day's factor.

    >>> list(_pieces(0.5, 2.25, lambda day: 0.5 if day >= 1 else 1.0))
    [(0.5, 1.0, 1.0), (1.0, 2.0, 0.5), (2.0, 2.25, 0.5)]
    """
    last = start
    while last < t:
        stop = t if week is None else min(t, math.floor(last) + 1.0)
        yield last, stop, 1.0 if week is None else week(last)
        last = stop


def history_day(ts: str) -> float:
    """A generated history's timestamp as days since its start (`DEFAULT_START`)."""
    return (pd.Timestamp(ts).timestamp() - DEFAULT_START.timestamp()) / 86_400.0


def oracle_on_history(
    history: Path, thresholds: np.ndarray, shape: str = "sudden", from_day: int = 100,
    days: int = 150, race: bool = False,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The ideal detector on a generated history's own events (see the module docstring):
    per threshold, the delays (days; inf: none within `HORIZON_DAYS`) of the migrations on
    or after `from_day`, and the alarms per unchanged customer (no change, no churn, seen
    30 days before `from_day`) per 30 days against every other persona from `from_day`
    to `days` (a CUSUM started again after each alarm).

    With `race`, a change's CUSUM runs against every other persona, not only the one the
    customer turns into, and the first to cross is the alarm: `landed` says, per change
    and threshold, whether it named the persona the customer turned into (what the
    shipped detector's `landed_first` asks of its first alert), and `landed_since` whether,
    at that alarm, that persona's log-likelihood since the change was the highest of all
    (how a detector that knew when the change began would name it); `led` says, per change
    and `LEAD_DAYS` after it, whether that persona's CUSUM led every other's (what a
    detector that named its leader then would name, at any threshold). A gradual change's
    runs start at its drift's start and its delays count from the midpoint, as the
    backtest's."""
    readable = RACE_SHAPES if race else ORACLE_SHAPES
    if shape not in readable:
        raise ValueError(f"--shape {shape}: the oracle reads only {', '.join(readable)}")
    rates = shape_rates(SHAPES[shape])
    weekday = DEFAULT_START.weekday()
    week: Callable[[float], float] | None = None
    if SHAPES[shape].weekend != 1.0:
        # Every rate is scaled alike on weekends: an event's ratio is unchanged, the
        # silence's evidence (the drift) and the expected counts scale with it.
        def week(day: float) -> float:
            return float(weekend_factor(SHAPES[shape], weekday, np.array(math.floor(day))))

    # The share of a plain day's counts an average day holds (a week's mean factor).
    week_mean = float(weekend_factor(SHAPES[shape], weekday, np.arange(7)).mean())

    names = list(PERSONAS)
    truth = pd.read_csv(history / "truth.csv", dtype=str).set_index("customer_id")
    per: dict[str, list[tuple[float, str, dict[str, object]]]] = {}
    with open(history / "events.jsonl") as lines:
        for line in lines:
            e = json.loads(line)
            if e["type"] in RATE_TYPES:
                per.setdefault(e["customer_id"], []).append(
                    (history_day(e["ts"]), e["type"], e.get("properties") or {})
                )
    for seen in per.values():
        seen.sort(key=lambda e: e[0])
    changes = pd.read_csv(history / "migrations.csv")
    changed_at = {
        str(c): history_day(t)
        for c, t in zip(changes["customer_id"], changes["changed_at"], strict=True)
    }
    started = changes["started_at"] if "started_at" in changes else changes["changed_at"]
    started_at = dict(zip(map(str, changes["customer_id"]), map(history_day, started), strict=True))

    def multiplier(cid: str, persona: str, until: float) -> float:
        seen = per.get(cid, [])
        first = seen[0][0] if seen else until
        span = max(min(90.0, until - first), 1.0)
        count = sum(1 for t, _, _ in seen if until - span <= t < until)
        return max(count / float(rates[names.index(persona)].sum() * span * week_mean), 0.05)

    def terms_of(
        cid: str, old: str, new: str, start: float
    ) -> tuple[list[tuple[float, float]], float]:
        """Each event's term of persona `new` against `old`, and the drift per day."""
        m = multiplier(cid, old, start)
        counts, drift = count_terms(
            m * rates[names.index(new)], m * rates[names.index(old)], SHAPES[shape].dispersion
        )
        return [(t, _event_term(k, p, new, old, counts)) for t, k, p in per.get(cid, [])], drift

    def run(
        cid: str, old: str, new: str, start: float, end: float, restart: bool
    ) -> list[list[float]]:
        """Per threshold, the alarms of the CUSUM of persona `new` against `old`."""
        terms, drift = terms_of(cid, old, new, start)
        return [_alarms(terms, start, end, drift, h, restart, week) for h in thresholds]

    rows, landed, best, leaders = [], [], [], []
    for cid, at in changed_at.items():
        if at < from_day:
            continue
        row = truth.loc[cid]
        old, new, start = str(row["persona"]), str(row["to_persona"]), started_at[cid]
        rivals = [p for p in names if p != old] if race else [new]
        read = [terms_of(cid, old, p, start) for p in rivals]
        # Per threshold, the first alarm of each rival: (time, is the destination).
        firsts = [
            [(g[0], p == new) if g else (np.inf, False)
             for g in (_alarms(terms, start, at + HORIZON_DAYS, drift, h, False, week)
                       for h in thresholds)]
            for p, (terms, drift) in zip(rivals, read, strict=True)
        ]  # fmt: skip
        # Two rivals crossing at one event: the tuple order names the one that is not the
        # destination, so a tie never counts as landed.
        first = [min(by_rival) for by_rival in zip(*firsts, strict=True)]
        rows.append([t - at for t, _ in first])
        landed.append([hit for _, hit in first])
        if not race:
            continue
        pairs = list(zip(rivals, read, strict=True))
        # At each alarm, the log-likelihood since the change; `LEAD_DAYS` after it, the CUSUM.
        best.append([
            bool(np.isfinite(t))
            and _leads(new, {p: _sum_since(e, start, t, dr, week) for p, (e, dr) in pairs})
            for t, _ in first
        ])  # fmt: skip
        leaders.append([
            _leads(new, {p: _cusum_at(e, start, at + d, dr, week) for p, (e, dr) in pairs})
            for d in LEAD_DAYS
        ])  # fmt: skip
    delays = np.array(rows, dtype=float).reshape(-1, len(thresholds))
    alarms, steady = np.zeros(len(thresholds)), 0
    for key, row in truth.iterrows():
        seen = per.get(str(key), [])
        if pd.notna(row["migration_day"]) or pd.notna(row["churn_day"]) or not seen:
            continue
        if seen[0][0] > from_day - 30:
            continue
        steady += 1
        for other in names:
            if other != row["persona"]:
                got = run(str(key), str(row["persona"]), other, from_day, days, True)
                alarms += [len(hits) for hits in got]
    flaps = alarms / max(steady, 1) / ((days - from_day) / 30.0)
    landing = np.array(landed, dtype=bool).reshape(-1, len(thresholds))
    named = np.array(best, dtype=bool).reshape(len(best), len(thresholds))
    led = np.array(leaders, dtype=bool).reshape(len(leaders), len(LEAD_DAYS))
    return {
        "delays": delays, "flaps": flaps, "landed": landing, "landed_since": named, "led": led,
    }  # fmt: skip


HISTORY_THRESHOLDS = np.arange(7.0, 12.01, 0.5)  # the ideal's grid on a history's events


def h_at_flaps(thresholds: np.ndarray, flaps: np.ndarray, rate: float) -> float:
    """The lowest threshold whose false alarms (`flaps`, per threshold) are at most `rate`,
    or, when none is, the one with the fewest: the ideal detector at a backtest's own false
    alarms. A history's unchanged customers make a few alarms at most, so the grid's false
    alarms move in steps and `rate` lands between them.

    >>> h_at_flaps(np.array([8.0, 9.0, 10.0]), np.array([0.01, 0.004, 0.0]), 0.005)
    9.0
    >>> h_at_flaps(np.array([8.0, 9.0]), np.array([0.01, 0.004]), 0.0)
    9.0
    """
    ok = np.flatnonzero(flaps <= max(rate, float(flaps.min())))
    return float(thresholds[ok[0]])


def days_by_group(
    shipped: np.ndarray, ideal: np.ndarray, groups: dict[str, np.ndarray]
) -> dict[str, tuple[int, float]]:
    """Per group of changes (a mask over them): how many, and the median delay of all
    changes if that group's shipped delays were the ideal's (inf: no alert in time). The
    median it moves from is the shipped detector's (`all`), so the group that moves it most
    is where its days go; the groups overlap and their gains do not add up.

    >>> days_by_group(np.array([1.0, 4.0, 6.0]), np.array([1.0, 2.0, 2.0]),
    ...               {"slow": np.array([False, False, True])})
    {'all': (3, 4.0), 'slow': (1, 2.0)}
    """
    out = {"all": (len(shipped), float(np.median(shipped)))}
    for name, mask in groups.items():
        out[name] = (int(mask.sum()), float(np.median(np.where(mask, ideal, shipped))))
    return out


def against_backtest(
    history: Path, alerts: Path, h: float, shape: str = "sudden", from_day: int = 100,
    at_flaps: float | None = None,
) -> str:  # fmt: skip
    """The ideal detector at `h` (or, with `at_flaps`, at `h_at_flaps` of its grid) beside
    the shipped one's `alerts` of `history`, change by change (see the module docstring): a
    markdown table of `days_by_group`."""
    thresholds = np.array([h]) if at_flaps is None else HISTORY_THRESHOLDS
    oracle = oracle_on_history(history, thresholds, shape, from_day)
    if at_flaps is not None:
        h = h_at_flaps(thresholds, oracle["flaps"], at_flaps)
    j = int(np.flatnonzero(thresholds == h)[0])
    changes = pd.read_csv(history / "migrations.csv")
    changes = changes[[history_day(t) >= from_day for t in changes["changed_at"]]]
    truth = pd.read_csv(history / "truth.csv", dtype=str).set_index("customer_id")
    first: dict[str, float] = {}
    moved: dict[str, list[float]] = {}
    with open(history / "events.jsonl") as lines:
        for line in lines:
            e = json.loads(line)
            first.setdefault(e["customer_id"], history_day(e["ts"]))
    with open(alerts) as lines:
        for line in lines:
            a = json.loads(line)
            if a["type"] == "segment_migration":
                moved.setdefault(a["customer_id"], []).append(history_day(a["event_time"]))
    rules = Rules()
    settling_days = rules.early_days + rules.migration_dwell_days
    rates = shape_rates(SHAPES[shape]).sum(axis=1)
    names = list(PERSONAS)
    shipped, young, rescored, quieter = [], [], [], []
    for cid, at in zip(
        changes["customer_id"], map(history_day, changes["changed_at"]), strict=True
    ):
        hits = [t for t in moved.get(cid, []) if at <= t <= at + HORIZON_DAYS]
        shipped.append(min(hits) - at if hits else np.inf)
        young.append(at - first[cid] < settling_days)
        # The re-scores run at UTC midnight on the event clock; an event there is unlikely.
        rescored.append(bool(hits) and min(hits) % 1.0 == 0.0)
        row = truth.loc[cid]
        quieter.append(
            rates[names.index(str(row["to_persona"]))] < rates[names.index(str(row["persona"]))]
        )
    ideal = oracle["delays"][:, j]
    if len(ideal) != len(shipped):  # the oracle keys changes by customer: one change each
        raise ValueError(f"{history}: a customer changes more than once; --against reads one")
    to_quieter = np.array(quieter)
    got = days_by_group(
        np.array(shipped), ideal,
        {
            f"settling at the change (younger than {settling_days:g} days)": np.array(young),
            "first alert at a daily re-score": np.array(rescored),
            "moves to a quieter persona": to_quieter,
            "moves to a busier persona": ~to_quieter,
        },
    )  # fmt: skip
    rows = [
        f"The ideal detector at h = {h:g}: {oracle['flaps'][j]:.4f} false alarms per unchanged "
        f"customer per 30 days; median delay {np.median(ideal):.2f} days over the "
        f"{len(ideal)} changes from day {from_day} (inf where none within {HORIZON_DAYS} days).",
        "",
        "| changes | n | median delay of all changes, these at the ideal's (d) |",
        "|---|---|---|",
    ]
    own = {"all": "none: the shipped detector's own delays"}
    rows += [f"| {own.get(name, name)} | {n} | {m:.2f} |" for name, (n, m) in got.items()]
    return "\n".join(rows)


def shapes_table(moves: int, seed: int, attributes: bool = False) -> str:
    """The ideal detector on every non-retail shape (markdown)."""
    thresholds = np.arange(4.0, 14.01, 0.5)
    rows = [
        "| shape | h at the flap target | median delay (d) | recall 7 d | 14 d | 28 d "
        f"| at h = {SHIPPED_H:g}: median delay | recall 7 d | 14 d | 28 d |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, shape in SHAPES.items():
        if shape.kind == "retail" or shape.persona_spread:
            continue
        got = ideal_on_shape(shape, thresholds, moves, np.random.default_rng(seed), attributes)
        ok = np.flatnonzero(got["flaps"] <= FLAP_TARGET)
        cells = []
        for j in (
            int(ok[0]) if len(ok) else len(thresholds) - 1,
            int(np.argmin(abs(thresholds - SHIPPED_H))),
        ):
            d = got["delays"][:, j]
            cells += [f"{np.median(d):.1f}", *(f"{np.mean(d <= w):.2f}" for w in (7, 14, 28))]
        h = f"{thresholds[ok[0]]:g}" if len(ok) else f"> {thresholds[-1]:g}"
        rows.append(f"| {name} | {h} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", type=Path, default=None, help="A history's truth.csv.")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[6.0, 8.5, 10.0])
    parser.add_argument("--from-day", type=int, default=100)
    parser.add_argument("--features", action="store_true", help="Count feature names too.")
    parser.add_argument(
        "--shapes", action="store_true", help="Simulate the ideal detector on every shape."
    )
    parser.add_argument(
        "--attributes",
        action="store_true",
        help="With --shapes: the ideal detector reads features and amounts too.",
    )
    parser.add_argument(
        "--baseline", action="store_true",
        help="What estimating the customer's baseline costs (sudden shape, counts only).",
    )  # fmt: skip
    parser.add_argument("--baseline-days", type=float, default=60.0, help="With --baseline.")
    parser.add_argument("--prior-days", type=float, default=PRIOR_DAYS, help="With --baseline.")
    parser.add_argument(
        "--history", type=Path, default=None,
        help="A generated history's folder: the ideal detector on its own events.",
    )  # fmt: skip
    parser.add_argument("--shape", default="sudden", help="With --history: the history's shape.")
    parser.add_argument(
        "--race", action="store_true",
        help="With --history: every persona is an alternative, the first to cross is named; "
        "adds the share of alarms that named the customer's new persona (reads gradual too).",
    )  # fmt: skip
    parser.add_argument(
        "--against", type=Path, default=None,
        help="With --history: a backtest folder of it; where the shipped detector's days go.",
    )  # fmt: skip
    parser.add_argument(
        "--at-h", type=float, default=SHIPPED_H,
        help="With --against: the ideal detector's threshold (nats).",
    )  # fmt: skip
    parser.add_argument(
        "--at-flaps", type=float, default=None,
        help="With --against, instead of --at-h: the backtest's flap rate (migration alerts "
        "per unchanged customer per 30 days); the ideal runs where its false alarms are no more.",
    )  # fmt: skip
    parser.add_argument("--moves", type=int, default=2000, help="Customers simulated per shape.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.baseline:
        thresholds = np.arange(7.0, 10.01, 0.5)
        got = estimated_baseline(
            thresholds, args.moves, np.random.default_rng(args.seed), args.baseline_days,
            args.prior_days,
        )  # fmt: skip
        print("| baseline | h | median delay (d) | recall 28 d | alarms per customer per 30 d |")
        print("|---|---|---|---|---|")
        for way, res in got.items():
            for j, h in enumerate(thresholds):
                d, f = res["delays"][:, j], res["flaps"][j]
                print(f"| {way} | {h:g} | {np.median(d):.2f} | {np.mean(d <= 28):.3f} | {f:.4f} |")
        return
    if args.shapes:
        print(shapes_table(args.moves, args.seed, args.attributes))
        return
    if args.history is not None and args.against is not None:
        alerts = args.against / "alerts.jsonl"
        print(
            against_backtest(
                args.history, alerts, args.at_h, args.shape, args.from_day, args.at_flaps
            )
        )
        return
    if args.history is not None:
        thresholds = HISTORY_THRESHOLDS
        oracle = oracle_on_history(
            args.history, thresholds, args.shape, args.from_day, race=args.race
        )
        landing = (
            " the alarm named the new persona | it led by its likelihood since the change |"
            if args.race
            else ""
        )
        print(
            "| h | median delay (d) | recall 7 d | 28 d | alarms per unchanged customer per 30 d "
            f"|{landing}"
        )
        print("|---|---|---|---|---|" + ("---|---|" if args.race else ""))
        for j, h in enumerate(thresholds):
            d = oracle["delays"][:, j]
            cells = [f"{np.median(d):.2f}", f"{np.mean(d <= 7):.2f}", f"{np.mean(d <= 28):.2f}"]
            cells.append(f"{oracle['flaps'][j]:.4f}")
            if args.race:
                seen = np.isfinite(d)
                for key in ("landed", "landed_since"):
                    cells.append(f"{oracle[key][seen, j].mean():.3f}" if seen.any() else "-")
            print(f"| {h:g} | " + " | ".join(cells) + " |")
        if args.race:
            led = oracle["led"].mean(axis=0)
            print(
                "\nThe new persona's CUSUM leads every other's, days after the change: "
                + ", ".join(f"{d:g} d: {x:.3f}" for d, x in zip(LEAD_DAYS, led, strict=True))
            )
        return
    names = list(PERSONAS)
    print("KL(to || from), nats per day; rows: from, columns: to")
    print(" " * 14 + " ".join(n[:12].rjust(12) for n in names))
    for f in names:
        cells = [
            "-".rjust(12) if t == f else f"{pair_divergence(t, f, args.features):12.2f}"
            for t in names
        ]
        print(f[:14].ljust(14) + " ".join(cells))
    if args.truth is None:
        return
    truth = pd.read_csv(args.truth)
    for h in args.thresholds:
        d = ideal_delays(truth, h, args.from_day, args.features)
        print(
            f"h={h:g}: {len(d)} migrations, ideal median delay {np.median(d):.1f} days, "
            f"within 7 days {np.mean(d <= 7):.2f}, within 28 days {np.mean(d <= 28):.2f}"
        )


if __name__ == "__main__":
    main()
