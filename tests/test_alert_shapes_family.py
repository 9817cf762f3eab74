"""Migration alerts with the shipped defaults on four more shapes of the family of
history shapes (`offline/shapes.py`): partial changes, personas close together and far
apart, and personas redrawn from the seed, which the defaults were never tuned on (low and
high activity and weekday seasonality: `test_alert_shapes_activity.py`).

Same run and same kind of bounds as `test_alert_shapes.py` (seed 31, which tuning never
saw; `tests/shape_backtest.py`); three modules of three or four shapes each, so that the
backtests spread over both test processes (each module runs on one). Where a bound is
below issue 22's target, the README's alert-quality section documents the shortfall with
these figures.
"""

from __future__ import annotations

from typing import Any

from tests.shape_backtest import Bounds, check_migrations, shape_fixture

#: Measured on seed 31, 250 days judged until day 150: precision / flaps per 30 d /
#: recall within 28 days / median delay / landing of the changes by their last alert /
#: landing of the alerts. partial 0.86 / 0.011 / 0.80 / 7.7 / 0.71 / 0.71 (only purchases
#: change: a move the other behaviours contradict; 30 % of its changes cross no border);
#: close 0.96 / 0.003 / 0.83 / 8.0 / 0.80 / 0.80 (personas near each other: the bundle
#: holds two Big Spenders segments of nearly the same rates; 0.88 when the nearest center
#: broke a near tie, before session 40); far 0.86 / 0.013 / 1.00 / 2.4 / 1.00 / 0.97. Far
#: and partial miss the precision and flap targets on this seed's long history (on their
#: 150-day ones 0.97 / 0.003 and 0.96 / 0.003; medians over seeds 31 to 53 in the README).
#: Redrawn 0.97 / 0.003 / 0.97 / 3.2 / 1.00 / 0.91: every target but the sudden delay of
#: 3 days, as on the sudden shape.
#: The median delay is over the detected changes: it rises where later changes are
#: detected too (read it with the recall).
BOUNDS = {
    "partial": Bounds(
        precision=0.8, flap=0.015, recall=0.7, delay=10.0, landed=0.65, landed_alerts=0.65
    ),
    "close": Bounds(
        precision=0.9, flap=0.01, recall=0.75, delay=10.0, landed=0.75, landed_alerts=0.75
    ),
    "far": Bounds(precision=0.8, flap=0.02, recall=0.9, delay=3.0, landed=0.9, landed_alerts=0.9),
    "redrawn": Bounds(
        precision=0.9, flap=0.01, recall=0.9, delay=4.0, landed=0.9, landed_alerts=0.9
    ),
}


backtested = shape_fixture(BOUNDS)


def test_migration_alerts_hold_on_every_shape(backtested: tuple[str, dict[str, Any]]) -> None:
    shape, metrics = backtested
    check_migrations(metrics, BOUNDS[shape])
