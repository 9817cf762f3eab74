"""Migration alerts with the shipped defaults on the activity shapes of the family of
history shapes (`offline/shapes.py`): low and high activity, weekday seasonality.

Same run and same kind of bounds as `test_alert_shapes.py` (seed 31, which tuning never
saw; `tests/shape_backtest.py`), in a module of its own so its backtests run beside
`test_alert_shapes_family.py`'s. Where a bound is below issue 22's target, the README's
alert-quality section documents the shortfall with these figures.
"""

from __future__ import annotations

from typing import Any

from tests.shape_backtest import Bounds, check_migrations, shape_fixture

#: Measured on seed 31, 250 days judged until day 150: precision / flaps per 30 d /
#: recall within 28 days / median delay / landing of the changes by their last alert /
#: landing of the alerts. low-activity 0.97 / 0.003 / 0.83 / 10.5 / 1.00 / 0.90 (a third
#: of the events is a third of the evidence); high-activity 0.94 / 0.005 / 1.00 / 1.4 /
#: 1.00 / 0.97 (every target); seasonal 1.00 / 0.000 / 1.00 / 4.5 / 0.97 / 0.88 (the
#: delay and the landing of the alerts short of their targets on this seed).
BOUNDS = {
    "low-activity": Bounds(
        precision=0.9, flap=0.01, recall=0.75, delay=14.0, landed=0.9, landed_alerts=0.8
    ),
    "high-activity": Bounds(
        precision=0.9, flap=0.01, recall=0.9, delay=3.0, landed=0.9, landed_alerts=0.9
    ),
    "seasonal": Bounds(
        precision=0.9, flap=0.01, recall=0.9, delay=6.0, landed=0.9, landed_alerts=0.8
    ),
}


backtested = shape_fixture(BOUNDS)


def test_migration_alerts_hold_on_every_activity_shape(
    backtested: tuple[str, dict[str, Any]],
) -> None:
    shape, metrics = backtested
    check_migrations(metrics, BOUNDS[shape])
