"""Synthetic event histories with known ground truth.

Owns the generator of fake product usage: customers drawn from behavioural personas,
some signing up mid-history, some churning, some migrating to another persona, with
optional duplicate and late delivery. It writes the JSONL event contract plus the
truth and migration CSVs that training and evaluation compare against.

Population shifts (`Shift`, built with `split` or `merge`) change what the segments
themselves look like from some day, for the model lifecycle tests: part of a persona
takes on a new pattern (one segment becomes two), or two personas take on one common
pattern (two segments become one). Without shifts the output is unchanged.

A `HistoryShape` (`offline/shapes.py`) changes how the history looks: gradual or partial
migrations, personas closer or farther apart, activity, weekends, overdispersed counts, or a
retail purchase-only history (`offline/retail.py`). The default shape changes nothing.

`generate_history` runs named steps: draw personas, schedule churn and migrations, schedule
signups, pick shifted customers, then per block of customers daily rates, counts and events;
then features and amounts, delivery order (duplicates, late events) and the two tables.

Imports only numpy, pandas, the standard library and `offline.shapes` (nothing from
`models/`, `stream/`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from offline.shapes import HistoryShape

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

#: Types drawn from per-day Poisson rates, in the order of `Persona.rates`.
RATE_TYPES = (
    "session_start", "feature_used", "purchase", "support_ticket", "email_open", "page_view",
)  # fmt: skip
EVENT_TYPES = ("signup", *RATE_TYPES)
FEATURES = (
    "export", "search", "dashboard", "api", "share", "report", "import", "alerts",
    "billing", "settings", "comments", "calendar", "integrations", "automations",
    "templates", "audit_log",
)  # fmt: skip

SIGNUP_SHARE = 0.30
MULTIPLIER_SIGMA = 0.25
FADE_DAYS = 14
_DAY_US = 86_400_000_000
_HOUR_US = 3_600_000_000
_CHUNK = 4096  # customers per block; bounds the (customers, days, types) rate cube in memory
_NEVER = np.iinfo(np.int64).max // 2
DEFAULT_SHAPE = HistoryShape()
_HMS = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)]


#: `Persona`'s rate fields, in `RATE_TYPES` order.
_RATE_FIELDS = (
    "sessions", "feature_uses", "purchases", "support_tickets", "email_opens", "page_views",
)  # fmt: skip


@dataclass(frozen=True)
class Persona:
    """Mean per-day event rates of one behavioural segment, purchase amounts, feature pool."""

    sessions: float
    feature_uses: float
    purchases: float
    support_tickets: float
    email_opens: float
    page_views: float
    amount_median: float  # purchase amounts are lognormal around this median
    amount_sigma: float
    features: tuple[str, ...]

    @property
    def rates(self) -> tuple[float, ...]:
        """Per-day rates in `RATE_TYPES` order."""
        return tuple(getattr(self, name) for name in _RATE_FIELDS)


# Each persona dominates at least one rolling count, so k-means can tell them apart.
PERSONAS: dict[str, Persona] = {
    "power_user": Persona(1.0, 1.8, 0.04, 0.02, 0.10, 0.05, 30.0, 0.5, FEATURES),
    "big_spender": Persona(0.30, 0.25, 0.35, 0.02, 0.10, 0.05, 150.0, 0.6, FEATURES[:4]),
    "casual": Persona(0.22, 0.12, 0.02, 0.003, 0.06, 0.05, 8.0, 0.4, FEATURES[:3]),
    "support_heavy": Persona(0.60, 0.35, 0.02, 0.45, 0.10, 0.05, 15.0, 0.5, FEATURES[6:11]),
    "email_reader": Persona(0.04, 0.02, 0.005, 0.005, 0.80, 0.05, 10.0, 0.4, FEATURES[1:3]),
}


@dataclass(frozen=True)
class Shift:
    """From `day` on, `share` of `persona`'s customers behave as `into`, named `name`.

    The shifted customers are drawn (with their own random stream, so nothing else in the
    history moves) among the persona's customers that do not migrate. Build shifts with
    `split` and `merge`; `truth` gets `shift_day` and `shift_to` columns when there are any.
    """

    persona: str
    into: Persona
    name: str
    day: int
    share: float = 1.0


def blend(a: Persona, b: Persona) -> Persona:
    """A pattern halfway between two personas: mean rates, geometric mean purchase amount,
    the union of their feature pools.

    >>> mix = blend(PERSONAS["casual"], PERSONAS["email_reader"])
    >>> round(mix.email_opens, 2), mix.features
    (0.43, ('export', 'search', 'dashboard'))
    """
    pool = tuple(f for f in FEATURES if f in a.features or f in b.features)
    mean = [(x + y) / 2 for x, y in zip(a.rates, b.rates, strict=True)]
    return Persona(
        sessions=mean[0],
        feature_uses=mean[1],
        purchases=mean[2],
        support_tickets=mean[3],
        email_opens=mean[4],
        page_views=mean[5],
        amount_median=float(np.sqrt(a.amount_median * b.amount_median)),
        amount_sigma=(a.amount_sigma + b.amount_sigma) / 2,
        features=pool,
    )


def split(persona: str, into: Persona, name: str, day: int, share: float = 0.5) -> tuple[Shift]:
    """One persona becomes two: from `day`, `share` of its customers behave as `into`.

    >>> split("power_user", PERSONAS["power_user"], "power_user_b", day=30)[0].share
    0.5
    """
    return (Shift(persona, into, name, day, share),)


def merge(a: str, b: str, day: int, name: str | None = None) -> tuple[Shift, Shift]:
    """Two personas become one: from `day`, all their customers behave as `blend(a, b)`.

    >>> [s.persona for s in merge("casual", "email_reader", day=40)]
    ['casual', 'email_reader']
    """
    if a not in PERSONAS or b not in PERSONAS:
        raise ValueError(f"merge: unknown persona {a if a not in PERSONAS else b!r}")
    into, label = blend(PERSONAS[a], PERSONAS[b]), name or f"{a}+{b}"
    return (Shift(a, into, label, day), Shift(b, into, label, day))


def _check_shifts(shifts: Sequence[Shift], days: int) -> None:
    into: dict[str, Persona] = {}
    for s in shifts:
        if s.persona not in PERSONAS:
            raise ValueError(f"shift: unknown persona {s.persona!r}")
        if s.name in PERSONAS or into.setdefault(s.name, s.into) != s.into:
            raise ValueError(f"shift: name {s.name!r} is a persona or names two patterns")
        if not 0 <= s.day < days:
            raise ValueError(f"shift: day must be in [0, {days}), got {s.day}")
        if not 0.0 < s.share <= 1.0:
            raise ValueError(f"shift: share must be in (0, 1], got {s.share}")
    if len({s.persona for s in shifts}) != len(shifts):
        raise ValueError("shift: at most one shift per persona")


@dataclass(frozen=True)
class History:
    """Events in delivery order and one ground-truth row per customer."""

    events: pd.DataFrame
    truth: pd.DataFrame


def _check(customers: int, days: int, rates: dict[str, float], shares: dict[str, float]) -> None:
    if customers < 1:
        raise ValueError(f"customers must be >= 1, got {customers}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    for name, rate in rates.items():
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate}")
    for name, share in shares.items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    if sum(shares.values()) > 1.0:
        raise ValueError(f"churn_share + migrate_share must be <= 1, got {sum(shares.values())}")


def _dates(start_us: int, day: np.ndarray, applies: np.ndarray) -> pd.Series:
    at = pd.to_datetime(start_us + np.where(applies, day, 0) * _DAY_US, unit="us", utc=True)
    return pd.Series(at.as_unit("ns")).where(applies)


def _start_us(start: datetime) -> int:
    """`start` (naive means UTC) truncated to 00:00 UTC, in microseconds since the epoch."""
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    start = start.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(start.timestamp()) * 1_000_000


def separate(rates: np.ndarray, separation: float) -> np.ndarray:
    """Persona rates (personas x types) pulled together (< 1) or pushed apart (> 1).

    Each rate's log-distance from its type's geometric mean over the personas is scaled by
    `separation`; each type is then rescaled so its arithmetic mean is unchanged, so the
    volume of the history stays about the same.

    >>> separate(np.array([[1.0], [4.0]]), 0.5).round(3).ravel().tolist()
    [1.667, 3.333]
    """
    if separation == 1.0:
        return rates
    logs = np.log(rates)
    moved = np.exp(logs.mean(axis=0) + separation * (logs - logs.mean(axis=0)))
    scaled: np.ndarray = moved * (rates.mean(axis=0) / moved.mean(axis=0))
    return scaled


def redrawn_personas(shape: HistoryShape, seed: int) -> list[Persona]:
    """The personas of a history of `shape` and `seed`: `PERSONAS`, or with
    `shape.persona_spread` each rate and purchase amount median multiplied by its own
    lognormal factor, drawn from a stream of its own (the rest of the history's draws stay
    as they are). The feature pools and amount spreads stay.

    >>> spread = HistoryShape(persona_spread=0.7)
    >>> redrawn_personas(HistoryShape(), 1) == list(PERSONAS.values())
    True
    >>> redrawn_personas(spread, 1) == redrawn_personas(spread, 1) != redrawn_personas(spread, 2)
    True
    """
    personas = list(PERSONAS.values())
    if shape.persona_spread == 0.0:
        return personas
    draw = np.random.default_rng((seed, 3)).lognormal(
        0.0, shape.persona_spread, (len(personas), len(RATE_TYPES) + 1)
    )
    return [
        replace(
            p,
            **{
                name: getattr(p, name) * float(factor)
                for name, factor in zip(_RATE_FIELDS, draw[i, :-1], strict=True)
            },
            amount_median=p.amount_median * float(draw[i, -1]),
        )
        for i, p in enumerate(personas)
    ]


@dataclass(frozen=True)
class _Patterns:
    """Behaviour patterns (the personas, then any shift patterns) as lookup tables."""

    specs: list[Persona]
    rates: np.ndarray  # (patterns, types) per-day rates, after the shape's scaling
    pool: np.ndarray  # (patterns, features) indexes into FEATURES, the first pool_size used
    pool_size: np.ndarray

    @classmethod
    def build(cls, shifts: Sequence[Shift], shape: HistoryShape, seed: int) -> _Patterns:
        patterns = {s.name: s.into for s in shifts}  # shifted patterns follow the personas
        specs = [*redrawn_personas(shape, seed), *patterns.values()]
        rates = np.array([p.rates for p in specs])
        rates[: len(PERSONAS)] = separate(rates[: len(PERSONAS)], shape.separation)
        if shape.activity != 1.0:
            rates = rates * shape.activity
        pool = np.zeros((len(specs), len(FEATURES)), dtype=np.int64)
        for i, p in enumerate(specs):
            pool[i, : len(p.features)] = [FEATURES.index(f) for f in p.features]
        return cls(specs, rates, pool, np.array([len(p.features) for p in specs]))


@dataclass(frozen=True)
class _Customers:
    """Per-customer draws; days are day numbers, `_NEVER` where nothing happens."""

    persona: np.ndarray
    mult: np.ndarray  # lifelong activity multiplier
    churn: np.ndarray
    mig: np.ndarray  # migration day: the drift's midpoint when gradual
    drift_start: np.ndarray  # equal to mig when sudden
    drift_end: np.ndarray
    target: np.ndarray
    signs_up: np.ndarray
    first: np.ndarray  # signup day, 0 for customers already there at the start
    signup_off: np.ndarray  # signup moment within its day, in microseconds
    shift_day: np.ndarray
    shift_to: np.ndarray


def _draw_personas(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's persona and lifelong activity multiplier."""
    # Balanced shares keep every persona present even in tiny histories.
    persona = rng.permutation(np.arange(n) % len(PERSONAS))
    return persona, rng.lognormal(0.0, MULTIPLIER_SIGMA, n)


def most_different(rates: np.ndarray, column: int) -> np.ndarray:
    """For each persona, the other persona whose rate in `column` differs most (in log)."""
    logs = np.log(rates[: len(PERSONAS), column])
    best: np.ndarray = np.abs(logs[:, None] - logs[None, :]).argmax(axis=1)
    return best


def _schedule_changes(
    rng: np.random.Generator,
    shape_rng: np.random.Generator,
    persona: np.ndarray,
    days: int,
    churn_share: float,
    migrate_share: float,
    shape: HistoryShape,
    rates: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Churn day, migration day, drift start and end, target persona of each customer."""
    n, n_p = persona.size, len(PERSONAS)
    order = rng.permutation(n)
    n_churn = round(churn_share * n)
    n_mig = min(round(migrate_share * n), n - n_churn)
    churn = np.full(n, _NEVER, dtype=np.int64)
    hi = max(days - 10, 1)
    churn[order[:n_churn]] = np.minimum(rng.integers(min(20, hi), hi + 1, n_churn), days - 1)
    mig = np.full(n, _NEVER, dtype=np.int64)
    lo, hi = shape.window(days)
    movers = order[n_churn : n_churn + n_mig]
    mig[movers] = rng.integers(lo, hi + 1, n_mig)
    target = (persona + rng.integers(1, n_p, n)) % n_p
    if shape.changes is not None:
        # Towards a persona that differs in the changed behaviour, or nothing would show.
        target = most_different(rates, RATE_TYPES.index(shape.changes))[persona]
    drift_start, drift_end = mig.copy(), mig.copy()
    if shape.migration == "gradual":
        length = shape_rng.integers(shape.drift_days[0], shape.drift_days[1] + 1, n_mig)
        drift_start[movers] = mig[movers] - length // 2
        drift_end[movers] = drift_start[movers] + length
    return churn, mig, drift_start, drift_end, target


def _schedule_signups(
    rng: np.random.Generator, days: int, churn: np.ndarray, change: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Who signs up during the history, on which day and at which moment of it."""
    n = churn.size
    # Signup day >= 1, so first_day > start iff the customer signed up; churners and
    # migrators keep some normal life before their change, or do not sign up at all.
    last_signup = np.minimum(days - 1, np.minimum(churn - 2 * FADE_DAYS, change - FADE_DAYS))
    signs_up = (rng.random(n) < SIGNUP_SHARE) & (last_signup >= 1)
    first = np.where(signs_up, rng.integers(1, np.maximum(last_signup, 1) + 1), 0)
    return signs_up, first, rng.integers(0, _DAY_US * 3 // 4, n)


def _shift_customers(
    seed: int, shifts: Sequence[Shift], persona: np.ndarray, mig: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Shift day and pattern index of each customer a `Shift` picks."""
    n, n_p = persona.size, len(PERSONAS)
    names = list({s.name: None for s in shifts})
    shift_day = np.full(n, _NEVER, dtype=np.int64)
    shift_to = np.full(n, -1, dtype=np.int64)
    shift_rng = np.random.default_rng((seed, 1))  # its own stream: the rest stays as is
    for s in shifts:
        pick = np.flatnonzero((persona == list(PERSONAS).index(s.persona)) & (mig == _NEVER))
        pick = shift_rng.permutation(pick)[: round(s.share * pick.size)]
        shift_day[pick] = s.day
        shift_to[pick] = n_p + names.index(s.name)
    return shift_day, shift_to


def _draw_customers(
    seed: int,
    days: int,
    churn_share: float,
    migrate_share: float,
    shifts: Sequence[Shift],
    shape: HistoryShape,
    rng: np.random.Generator,
    shape_rng: np.random.Generator,
    patterns: _Patterns,
    n: int,
) -> _Customers:
    persona, mult = _draw_personas(rng, n)
    churn, mig, drift_start, drift_end, target = _schedule_changes(
        rng, shape_rng, persona, days, churn_share, migrate_share, shape, patterns.rates
    )
    signs_up, first, signup_off = _schedule_signups(rng, days, churn, drift_start)
    shift_day, shift_to = _shift_customers(seed, shifts, persona, mig)
    return _Customers(
        persona, mult, churn, mig, drift_start, drift_end, target, signs_up, first, signup_off,
        shift_day, shift_to,
    )  # fmt: skip


def weekend_factor(shape: HistoryShape, start_weekday: int, day: np.ndarray) -> np.ndarray:
    """Each day's rate factor for the day of the week (`shape.weekend` on Saturdays and
    Sundays; `start_weekday` is day 0's, Monday = 0)."""
    factor: np.ndarray = np.where((start_weekday + day) % 7 >= 5, shape.weekend, 1.0)
    return factor


def drift_weight(day: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """How far a migration has moved on each day: 0 before `start`, 1 from `end` on, and
    linear in between, reaching 1/2 at the midpoint, the day the truth records (a sudden
    migration has start = end)."""
    weight = np.clip((day + 0.5 - start) / np.maximum(end - start, 1), 0.0, 1.0)
    out: np.ndarray = np.where(day >= end, 1.0, np.where(day < start, 0.0, weight))
    return out


def changed_types(shape: HistoryShape) -> np.ndarray:
    """Per type of `RATE_TYPES`, 1.0 where a migration changes its rate: every type, or
    only the one a partial change names."""
    if shape.changes is None:
        return np.ones(len(RATE_TYPES))
    changed: np.ndarray = (np.array(RATE_TYPES) == shape.changes).astype(float)
    return changed


def _daily_rates(
    cs: _Customers, c: slice, start_weekday: int, days: int, patterns: _Patterns,
    shape: HistoryShape,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Rates (customers, days, types) of a block of customers, and per (customer, day) the
    pattern before any migration and the one it has taken on (for features and amounts)."""
    day = np.arange(days)
    fade = np.clip((cs.churn[c, None] - day) / (FADE_DAYS + 1), 0.0, 1.0)
    factor = np.where(day < cs.first[c, None], 0.0, fade)
    if shape.weekend != 1.0:
        factor = factor * weekend_factor(shape, start_weekday, day)
    pers0 = np.broadcast_to(cs.persona[c, None], factor.shape)
    if cs.shift_day[c].min(initial=_NEVER) < _NEVER:
        pers0 = np.where(day >= cs.shift_day[c, None], cs.shift_to[c, None], pers0)
    scale = cs.mult[c, None, None] * factor[:, :, None]
    if shape.migration == "sudden" and shape.changes is None:
        pers = np.where(day >= cs.mig[c, None], cs.target[c, None], pers0)
        return patterns.rates[pers] * scale, pers0, pers
    weight = drift_weight(day, cs.drift_start[c, None], cs.drift_end[c, None])
    pers = np.where(weight >= 0.5, cs.target[c, None], pers0)
    changed = changed_types(shape)
    old, new = patterns.rates[pers0], patterns.rates[cs.target[c]][:, None, :]
    return (old + weight[:, :, None] * changed * (new - old)) * scale, pers0, pers


def draw_counts(
    rng: np.random.Generator, shape_rng: np.random.Generator, rates: np.ndarray,
    dispersion: float,
) -> np.ndarray:  # fmt: skip
    """Daily event counts: Poisson, or negative binomial as a gamma-Poisson mixture."""
    if dispersion > 0:
        rates = rates * shape_rng.gamma(1.0 / dispersion, dispersion, rates.shape)
    return rng.poisson(rates)


def _make_events(
    rng: np.random.Generator, cs: _Customers, b: int, counts: np.ndarray,
    pers0: np.ndarray, pers: np.ndarray, changes: str | None,
) -> tuple[np.ndarray, ...]:  # fmt: skip
    """One event per count, at a random moment of its day: customer, time, type, pattern."""
    days, n_t = counts.shape[1], counts.shape[2]
    cell = np.repeat(np.arange(counts.size), counts.ravel())
    cust = b + cell // (days * n_t)
    ev_day = cell // n_t % days
    # On the signup day every event falls after the signup moment.
    lo_off = np.where(cs.signs_up[cust] & (ev_day == cs.first[cust]), cs.signup_off[cust], -1)
    off = lo_off + 1 + (rng.random(cust.size) * (_DAY_US - lo_off - 1)).astype(np.int64)
    kind = (cell % n_t + 1).astype(np.int8)
    ev_pers = pers.ravel()[cell // n_t]
    if changes is not None:
        # A partial change takes on the new pattern's features or amounts only for its type.
        same = kind != EVENT_TYPES.index(changes)
        ev_pers = np.where(same, pers0.ravel()[cell // n_t], ev_pers)
    return cust, ev_day * _DAY_US + off, kind, ev_pers


def _attributes(
    rng: np.random.Generator, etype: np.ndarray, ev_pers: np.ndarray, patterns: _Patterns
) -> tuple[np.ndarray, np.ndarray]:
    """The feature of each feature_used event (-1 elsewhere), the amount of each purchase."""
    total = etype.size
    feat = np.full(total, -1)
    is_feat = np.flatnonzero(etype == EVENT_TYPES.index("feature_used"))
    fp = ev_pers[is_feat]
    feat[is_feat] = patterns.pool[
        fp, (rng.random(fp.size) * patterns.pool_size[fp]).astype(np.int64)
    ]
    amount = np.full(total, np.nan)
    is_buy = np.flatnonzero(etype == EVENT_TYPES.index("purchase"))
    bp = ev_pers[is_buy]
    specs = patterns.specs
    med, sig = np.log([p.amount_median for p in specs]), np.array([p.amount_sigma for p in specs])
    amount[is_buy] = np.round(rng.lognormal(med[bp], sig[bp]), 2)
    return feat, amount


def deliver(
    rng: np.random.Generator, ts: np.ndarray, duplicate_rate: float, late_rate: float
) -> np.ndarray:
    """Rows of events (in time order) in delivery order, a redelivered row twice."""
    # Late events are held back up to 48 h, duplicates re-sent within a day.
    total = ts.size
    key = ts.copy()
    late = np.flatnonzero(rng.random(total) < late_rate)
    key[late] += rng.integers(1_000_000, 48 * _HOUR_US + 1, late.size)
    dup = np.flatnonzero(rng.random(total) < duplicate_rate)
    dup_key = key[dup] + rng.integers(1, _DAY_US + 1, dup.size)
    rows = np.concatenate([np.arange(total), dup])
    return rows[np.argsort(np.concatenate([key, dup_key]), kind="stable")]


def customer_ids(n: int) -> pd.api.extensions.ExtensionArray:
    """c0..c{n-1}, zero-padded to the width of `n`."""
    width = len(str(n))
    return pd.array([f"c{i:0{width}d}" for i in range(n)], dtype="str")


def event_frame(
    seed: int, ids: pd.api.extensions.ExtensionArray, rows: np.ndarray, cust: np.ndarray,
    ts: np.ndarray, etype: np.ndarray, feat: np.ndarray, amount: np.ndarray,
) -> pd.DataFrame:  # fmt: skip
    """The events table in delivery order (`rows`) from per-event arrays in time order."""
    # Arrow-backed take and concat: per-event Python strings would dominate the run time.
    return pd.DataFrame(
        {
            "event_id": f"e-{seed}-" + pd.Series(rows).astype("str"),
            "customer_id": ids.take(cust[rows]),
            "type": pd.array(EVENT_TYPES, dtype="str").take(etype[rows]),
            "ts": pd.to_datetime(ts[rows], unit="us", utc=True).as_unit("ns"),
            "feature": pd.array(FEATURES, dtype="str").take(feat[rows], allow_fill=True),
            "amount": amount[rows],
        }
    )


def _truth_frame(
    ids: pd.api.extensions.ExtensionArray, start_us: int, cs: _Customers,
    shifts: Sequence[Shift], shape: HistoryShape,
) -> pd.DataFrame:  # fmt: skip
    n = cs.persona.size
    names = pd.array(list(PERSONAS), dtype="str")
    is_mig = cs.mig < _NEVER
    truth = pd.DataFrame(
        {
            "customer_id": ids,
            "persona": names.take(cs.persona),
            "first_day": _dates(start_us, cs.first, np.ones(n, dtype=bool)),
            "churn_day": _dates(start_us, cs.churn, cs.churn < _NEVER),
            "migration_day": _dates(start_us, cs.mig, is_mig),
            "to_persona": names.take(np.where(is_mig, cs.target, -1), allow_fill=True),
        }
    )
    if shape.migration == "gradual":
        truth["drift_start"] = _dates(start_us, cs.drift_start, is_mig)
        truth["drift_end"] = _dates(start_us, cs.drift_end, is_mig)
    if shifts:
        shifted = cs.shift_day < _NEVER
        truth["shift_day"] = _dates(start_us, cs.shift_day, shifted)
        shift_names = pd.array(list({s.name: None for s in shifts}), dtype="str")
        to = np.where(shifted, cs.shift_to - len(PERSONAS), -1)
        truth["shift_to"] = shift_names.take(to, allow_fill=True)
    return truth


def generate_history(
    customers: int,
    days: int,
    seed: int,
    *,
    start: datetime = DEFAULT_START,
    duplicate_rate: float = 0.0,
    late_rate: float = 0.0,
    churn_share: float = 0.15,
    migrate_share: float = 0.10,
    shifts: Sequence[Shift] = (),
    shape: HistoryShape = DEFAULT_SHAPE,
) -> History:
    """Generate `days` days of events for `customers` customers, deterministically from `seed`.

    `start` (naive means UTC) is truncated to 00:00 UTC; day d is [start + d, start + d + 1).
    `shifts` (see `split`, `merge`) change whole groups of customers' behaviour from a day.
    `shape` (see `offline/shapes.py`, `SHAPES`) picks the kind of history; a retail shape
    hands over to `offline/retail.py`, where churn and migration shares do not apply.

    >>> h = generate_history(10, 14, seed=7)
    >>> h.truth["persona"].value_counts().tolist()
    [2, 2, 2, 2, 2]
    """
    _check(
        customers,
        days,
        {"duplicate_rate": duplicate_rate, "late_rate": late_rate},
        {"churn_share": churn_share, "migrate_share": migrate_share},
    )
    _check_shifts(shifts, days)
    if shape.kind == "retail":
        raise ValueError("shape: retail histories come from offline.history.generate")
    shape.window(days)  # checks the migration window fits the history
    rng = np.random.default_rng(seed)
    shape_rng = np.random.default_rng((seed, 2))  # draws only non-default shapes make
    start_us = _start_us(start)
    patterns = _Patterns.build(shifts, shape, seed)
    cs = _draw_customers(
        seed, days, churn_share, migrate_share, shifts, shape, rng, shape_rng, patterns, customers
    )
    weekday = datetime.fromtimestamp(start_us / 1e6, UTC).weekday()
    parts: list[tuple[np.ndarray, ...]] = []
    for b in range(0, customers, _CHUNK):
        c = slice(b, b + _CHUNK)
        rates, pers0, pers = _daily_rates(cs, c, weekday, days, patterns, shape)
        counts = draw_counts(rng, shape_rng, rates, shape.dispersion)
        parts.append(_make_events(rng, cs, b, counts, pers0, pers, shape.changes))
    signers = np.flatnonzero(cs.signs_up)
    signup_ts = cs.first[signers] * _DAY_US + cs.signup_off[signers]
    parts.append((signers, signup_ts, np.zeros(signers.size, np.int8), cs.persona[signers]))
    cust, ts, etype, ev_pers = (np.concatenate(x) for x in zip(*parts, strict=True))
    srt = np.argsort(ts, kind="stable")
    cust, ts, etype, ev_pers = cust[srt], ts[srt] + start_us, etype[srt], ev_pers[srt]
    feat, amount = _attributes(rng, etype, ev_pers, patterns)
    rows = deliver(rng, ts, duplicate_rate, late_rate)
    ids = customer_ids(customers)
    events = event_frame(seed, ids, rows, cust, ts, etype, feat, amount)
    return History(events=events, truth=_truth_frame(ids, start_us, cs, shifts, shape))


def _ts_parts(ts: pd.Series) -> tuple[list[str], list[str], list[int]]:
    # Date, HH:MM:SS and microseconds from lookup tables: strftime per event is far slower.
    day, tod = np.divmod(pd.DatetimeIndex(ts).as_unit("us").asi8, _DAY_US)
    uniq, inv = np.unique(day, return_inverse=True)
    dates = [str(d) for d in uniq.astype("datetime64[D]")]
    sec, frac = np.divmod(tod, 1_000_000)
    return [dates[i] for i in inv.tolist()], [_HMS[s] for s in sec.tolist()], frac.tolist()


def _quoted(col: pd.Series) -> list[str]:
    """JSON string literals of a str column ("" for NA), escaping each distinct value once."""
    codes, uniques = pd.factorize(col)
    values = pd.Series(uniques, dtype="str")
    if values.str.contains(r'[\x00-\x1f"\\]', regex=True).any():
        table = [json.dumps(v) for v in values.tolist()]
    else:
        table = ('"' + values + '"').tolist()
    table.append("")  # code -1 (NA) indexes this
    return [table[k] for k in codes.tolist()]


def write_history(history: History, out_dir: Path) -> dict[str, Path]:
    """Write out_dir/events.jsonl, out_dir/truth.csv and out_dir/migrations.csv; return their paths.

    Events are written in delivery order, one compact JSON object per line.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "events": out_dir / "events.jsonl",
        "truth": out_dir / "truth.csv",
        "migrations": out_dir / "migrations.csv",
    }
    line = '{"event_id":%s,"customer_id":%s,"type":%s,"ts":"%sT%s.%06d+00:00","properties":%s}\n'
    ev = history.events
    with paths["events"].open("w", encoding="utf-8", newline="\n") as fh:
        for b in range(0, len(ev), 500_000):
            chunk = ev.iloc[b : b + 500_000]
            props = [f'{{"feature":{f}}}' if f else "{}" for f in _quoted(chunk["feature"])]
            amounts = chunk["amount"].to_numpy()
            for i in np.flatnonzero(~np.isnan(amounts)).tolist():
                props[i] = f'{{"amount":{amounts[i]:.2f}}}'
            ids = [_quoted(chunk[col]) for col in ("event_id", "customer_id", "type")]
            rows = zip(*ids, *_ts_parts(chunk["ts"]), props, strict=True)
            fh.write("".join([line % row for row in rows]))

    truth = history.truth.copy()
    for col in ("first_day", "churn_day", "migration_day", "drift_start", "drift_end", "shift_day"):
        if col in truth:
            truth[col] = truth[col].dt.strftime("%Y-%m-%d")
    truth.to_csv(paths["truth"], index=False, lineterminator="\n")
    movers = history.truth.dropna(subset=["migration_day"])
    changed_at = zip(*_ts_parts(movers["migration_day"]), strict=True)
    migrations = pd.DataFrame(
        {
            "customer_id": movers["customer_id"],
            "changed_at": [f"{d}T{t}.{u:06d}+00:00" for d, t, u in changed_at],
            "to_persona": movers["to_persona"],
        }
    )
    if "drift_start" in movers:  # a gradual change: the backtest counts alerts from its start
        started = zip(*_ts_parts(movers["drift_start"]), strict=True)
        migrations["started_at"] = [f"{d}T{t}.{u:06d}+00:00" for d, t, u in started]
    migrations.to_csv(paths["migrations"], index=False, lineterminator="\n")
    return paths
