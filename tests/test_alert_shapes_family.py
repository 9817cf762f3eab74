"""Migration alerts with the shipped defaults on three more shapes of the family of
history shapes (`offline/shapes.py`): partial changes, personas close together and far
apart (low and high activity and weekday seasonality: `test_alert_shapes_activity.py`).

Same run and same kind of bounds as `test_alert_shapes.py` (seed 31, which tuning never
saw; `tests/shape_backtest.py`); three modules of three or four shapes each, so that the
backtests spread over both test processes (each module runs on one). Where a bound is
below issue 22's target, the README's alert-quality section documents the shortfall with
these figures.
"""

from __future__ import annotations

from typing import Any

from tests.shape_backtest import Bounds, check_migrations, shape_fixture

#: Measured on seed 31 (the threshold at 8 nats plus the log of a busy customer's event
#: rate or of a quieter destination's, corrections at 9, the hand-over's placements, ties
#: among crossed segments): precision / flaps per 30 d / recall within 28 days / median
#: delay / landing. partial 0.96 / 0.0025 / 0.72 / 6.9 / 0.76 (only purchases change: a
#: move the other behaviours contradict); close 0.93 / 0.005 / 0.83 / 9.3 / 0.60 (0.52
#: before the tie among crossed segments; 0.69 recall and 0.57 landing before the
#: hand-over's placements: four more changes found, one more landed, in a bundle with two
#: Big Spenders segments of nearly the same rates); far
#: 0.97 / 0.0025 / 0.97 / 2.8 / 1.00. The median delay is over the detected changes: it
#: rises where later changes are detected too (read it with the recall).
BOUNDS = {
    "partial": Bounds(precision=0.9, flap=0.01, recall=0.6, delay=10.0, landed=0.65),
    "close": Bounds(precision=0.9, flap=0.01, recall=0.75, delay=15.0, landed=0.5),
    "far": Bounds(precision=0.9, flap=0.01, recall=0.9, delay=4.5, landed=0.9),
}


backtested = shape_fixture(BOUNDS)


def test_migration_alerts_hold_on_every_shape(backtested: tuple[str, dict[str, Any]]) -> None:
    shape, metrics = backtested
    check_migrations(metrics, BOUNDS[shape])
