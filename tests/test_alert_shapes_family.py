"""Migration alerts with the shipped defaults on the rest of the family of history
shapes (`offline/shapes.py`): partial changes, personas close together and far apart,
low and high activity, weekday seasonality.

Same run and same kind of bounds as `test_alert_shapes.py` (seed 31, which tuning never
saw; `tests/shape_backtest.py`); a module of its own so the two halves run on both test
processes. Where a bound is below issue 22's target, the README's alert-quality section
documents the shortfall with these figures.
"""

from __future__ import annotations

from typing import Any

from tests.shape_backtest import Bounds, check_migrations, shape_fixture

#: Measured on seed 31 (a move the centers made in silence confirmed by the evidence):
#: precision / flaps per 30 d / recall within 28 days / median delay / landing.
#: partial 1.00 / 0.000 / 0.69 / 10.4 / 0.75 (only purchases change: a move the other
#: behaviours contradict); close 1.00 / 0.000 / 0.52 / 16.6 / 0.60; far 1.00 / 0.000 /
#: 0.93 / 3.3 / 1.00; low-activity 0.95 / 0.003 / 0.59 / 11.5 / 0.89; high-activity 0.88 /
#: 0.007 / 0.93 / 1.8 / 1.00; seasonal 0.94 / 0.005 / 0.90 / 7.4 / 0.97. The median delay
#: is over the detected changes: it rose where later changes are now detected too
#: (recall within 7 and 14 days held).
BOUNDS = {
    "partial": Bounds(precision=0.9, flap=0.01, recall=0.6, delay=12.0, landed=0.65),
    "close": Bounds(precision=0.9, flap=0.01, recall=0.4, delay=18.0, landed=0.55),
    "far": Bounds(precision=0.9, flap=0.01, recall=0.9, delay=4.5, landed=0.9),
    "low-activity": Bounds(precision=0.9, flap=0.01, recall=0.5, delay=16.0, landed=0.8),
    "high-activity": Bounds(precision=0.8, flap=0.015, recall=0.9, delay=3.0, landed=0.9),
    "seasonal": Bounds(precision=0.85, flap=0.01, recall=0.85, delay=8.5, landed=0.9),
}


backtested = shape_fixture(BOUNDS)


def test_migration_alerts_hold_on_every_shape(backtested: tuple[str, dict[str, Any]]) -> None:
    shape, metrics = backtested
    check_migrations(metrics, BOUNDS[shape])
