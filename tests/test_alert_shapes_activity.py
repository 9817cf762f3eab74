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

#: Measured on seed 31 (the threshold at 8 nats plus the log of a busy customer's event
#: rate or of a quieter destination's, corrections at 9, the hand-over's placements, ties
#: among crossed segments): precision / flaps per 30 d / recall within 28 days / median
#: delay / landing. low-activity 0.96 / 0.0025 / 0.72 / 9.0 / 0.90; high-activity 0.94 /
#: 0.005 / 0.97 / 1.8 / 1.00 (every target: the alerts on customers who fade out in the
#: history's last two weeks, which made most of its wrong ones, are now unresolved,
#: `segstream.backtest.migration_quality`, and its last wrong one named a Lapsing segment,
#: which the evidence no longer does; one power user moved to Email Readers at a quieter
#: destination's threshold); seasonal 0.97 / 0.0025 / 1.00 / 5.1 / 1.00.
BOUNDS = {
    "low-activity": Bounds(precision=0.9, flap=0.01, recall=0.55, delay=14.0, landed=0.8),
    "high-activity": Bounds(precision=0.9, flap=0.01, recall=0.9, delay=3.0, landed=0.9),
    "seasonal": Bounds(precision=0.9, flap=0.01, recall=0.9, delay=7.5, landed=0.9),
}


backtested = shape_fixture(BOUNDS)


def test_migration_alerts_hold_on_every_activity_shape(
    backtested: tuple[str, dict[str, Any]],
) -> None:
    shape, metrics = backtested
    check_migrations(metrics, BOUNDS[shape])
