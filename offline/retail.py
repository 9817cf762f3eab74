"""Retail purchase-only histories: "buy till you die" customers (issue 21).

Owns the generator of a shop's purchase log, the BG/NBD model of customer-base analysis:
each customer appears with a first purchase at a random moment of the history, then buys
as a Poisson process at a rate of its own (gamma-distributed across customers) and after
each purchase drops out for good with a probability of its own (beta-distributed). Most
customers buy once or twice and go quiet; a minority keep buying at very different rates.
Amounts are lognormal around a median of each customer's own.

The only events are `purchase` events. The truth row of each customer gives its first
purchase day, `churn_day` (the day after its last purchase if it dropped out: it is alive
on day d iff d < churn_day) and its `purchase_rate` and `dropout`; there are no personas
and no migrations (`persona` is `shopper`, the migration columns are empty). Churn labels
for training come from the events themselves (no purchase in the next 90 days).

Imports numpy, pandas, `offline.shapes`, and `offline.synthetic`'s delivery and table steps.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from offline.shapes import HistoryShape
from offline.synthetic import (
    _DAY_US,
    _NEVER,
    EVENT_TYPES,
    History,
    _dates,
    _start_us,
    customer_ids,
    deliver,
    event_frame,
)

RATE_SHAPE = 0.5  # gamma shape of purchase rates across customers: < 1, most buy rarely
RATE_MEAN = 1 / 30  # mean purchases per day while alive
DROPOUT_A, DROPOUT_B = 1.0, 1.5  # beta of the chance to drop out after a purchase (mean 0.4)
SPEND_MEDIAN = 40.0  # median of the customers' median purchase amounts
SPEND_CUSTOMER_SIGMA = 0.5  # log-spread of the customers' medians
SPEND_SIGMA = 0.6  # log-spread of one customer's amounts around its median


def generate_retail(
    customers: int,
    days: int,
    seed: int,
    *,
    start: datetime,
    duplicate_rate: float,
    late_rate: float,
    shape: HistoryShape,
) -> History:
    """A purchase-only history; `shape.activity` scales the purchase rates and
    `shape.weekend` the weekend's share of purchases (first purchases too).

    >>> h = generate_retail(
    ...     200, 120, 1, start=datetime(2026, 1, 1), duplicate_rate=0.0, late_rate=0.0,
    ...     shape=HistoryShape(kind="retail"),
    ... )
    >>> set(h.events["type"]), (h.events.groupby("customer_id").size() <= 2).mean() > 0.5
    ({'purchase'}, np.True_)
    """
    rng = np.random.default_rng(seed)
    start_us = _start_us(start)
    n = customers
    # Time runs in weighted days: a weekend day is `weekend` long, so a uniform draw of a
    # weighted moment lands on weekends that much less often.
    weekday = datetime.fromtimestamp(start_us / 1e6, UTC).weekday()
    weight = np.where((weekday + np.arange(days)) % 7 >= 5, shape.weekend, 1.0)
    edges = np.concatenate([[0.0], np.cumsum(weight)])
    if edges[-1] <= 0:
        raise ValueError("weekend: a history of weekend days only needs weekend > 0")
    rate = rng.gamma(RATE_SHAPE, RATE_MEAN / RATE_SHAPE, n) * shape.activity
    dropout = rng.beta(DROPOUT_A, DROPOUT_B, n)
    first_at = rng.random(n) * edges[-1]
    # Repeat purchases the customer would make if it never dropped out, and how many of
    # them it makes: it drops out after purchase number `lives` (the first counts).
    repeats = rng.poisson(rate * (edges[-1] - first_at))
    lives = rng.geometric(dropout)
    made = np.minimum(repeats, lives - 1)
    owner = np.repeat(np.arange(n), repeats)
    at = first_at[owner] + rng.random(owner.size) * (edges[-1] - first_at[owner])
    order = np.lexsort((at, owner))
    owner, at = owner[order], at[order]
    rank = np.arange(owner.size) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    keep = rank < made[owner]
    cust = np.concatenate([np.arange(n), owner[keep]])
    ts = _moment(np.concatenate([first_at, at[keep]]), edges, weight)
    srt = np.argsort(ts, kind="stable")
    cust, ts = cust[srt], ts[srt] + start_us
    median = rng.lognormal(np.log(SPEND_MEDIAN), SPEND_CUSTOMER_SIGMA, n)
    amount = np.round(rng.lognormal(np.log(median[cust]), SPEND_SIGMA), 2)
    rows = deliver(rng, ts, duplicate_rate, late_rate)
    ids = customer_ids(n)
    etype = np.full(ts.size, EVENT_TYPES.index("purchase"), dtype=np.int8)
    feat = np.full(ts.size, -1)
    events = event_frame(seed, ids, rows, cust, ts, etype, feat, amount)

    first_day = (ts[np.unique(cust, return_index=True)[1]] - start_us) // _DAY_US
    last_day = np.zeros(n, dtype=np.int64)
    np.maximum.at(last_day, cust, (ts - start_us) // _DAY_US)
    churn = np.where(made < repeats, last_day + 1, _NEVER)
    empty = pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]")
    truth = pd.DataFrame(
        {
            "customer_id": ids,
            "persona": pd.array(["shopper"] * n, dtype="str"),
            "first_day": _dates(start_us, first_day, np.ones(n, dtype=bool)),
            "churn_day": _dates(start_us, churn, churn < _NEVER),
            "migration_day": empty,
            "to_persona": pd.array([None] * n, dtype="str"),
            "purchase_rate": rate.round(5),
            "dropout": dropout.round(4),
        }
    )
    return History(events=events, truth=truth)


def _moment(at: np.ndarray, edges: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Microseconds since the start of weighted-day moments (see `generate_retail`)."""
    # side="right" skips days of zero weight, whose two edges are equal.
    day = np.minimum(np.searchsorted(edges, at, side="right") - 1, weight.size - 1)
    width = np.where(weight[day] > 0, weight[day], 1.0)
    frac = np.clip((at - edges[day]) / width, 0.0, 1.0 - 1e-9)
    moment: np.ndarray = day * _DAY_US + (frac * _DAY_US).astype(np.int64)
    return moment
