"""Migration alerts with the shipped defaults on held-out histories: the sudden, gradual
and overdispersed shapes, and a purchase-only history without migrations.

`tests/shape_backtest.py` runs each (seed 31, which tuning never saw); the other shapes
are in `test_alert_shapes_family.py` and `test_alert_shapes_activity.py`. The bounds are
issue 22's targets where the detector meets them, and the figures measured on this seed,
with a little room, where the README documents it falling short: they guard what users
get today against getting worse.
"""

from __future__ import annotations

from typing import Any

from tests.shape_backtest import Bounds, check_migrations, shape_fixture

#: Measured on seed 31 (issue 22: amounts and the features used as evidence, a feature
#: outside a segment's habits up to 4 nats, negative-binomial counts, moves out of a
#: Lapsing segment as reactivations, a baseline leaving out the latest 30 days, ties named
#: by the nearest center among the segments that crossed, the threshold at 8 nats plus the
#: log of a busy customer's event rate or of a quieter destination's, corrections at 9;
#: the hand-over's placements; `benchmarks/tuning-detector/held-out/`): sudden (its
#: 150-day history, before session 39) precision 0.94, 0.005 flaps, recall within 28
#: days 1.00, median delay 4.0 days, 0.86 landing (0.83 before session 36's tie among
#: crossed segments; a support-heavy customer turning casual is alerted to Big Spenders
#: first); gradual (alerts right from the drift's start)
#: 1.00 / 0.000 / 1.00 / 4.9 / 0.90; overdispersed 1.00 / 0.000 / 0.93 / 4.4 / 0.81.
BOUNDS = {
    "sudden": Bounds(
        precision=0.9, flap=0.01, recall=0.9, delay=6.0, landed=0.8, landed_alerts=0.9
    ),
    "gradual": Bounds(precision=0.9, flap=0.01, recall=0.9, delay=7.0, landed=0.8),
    "overdispersed": Bounds(precision=0.9, flap=0.01, recall=0.9, delay=6.0, landed=0.8),
}


#: Sudden is generated 250 days long and judged until day 150, so where each changed
#: customer settles is read once its 90-day window has turned over (session 39): there
#: its alerts meet the landing target, 0.91 of them (0.88 read at day 150), with
#: precision 0.97, 0.003 flaps, recall within 28 days 1.00 and a median delay of 4.2 days.
backtested = shape_fixture([*BOUNDS, "retail"], long=["sudden"])


def test_migration_alerts_are_right_fast_and_land_where_the_customer_settles(
    backtested: tuple[str, dict[str, Any]],
) -> None:
    shape, metrics = backtested
    mig = metrics["migrations"]
    if shape == "retail":
        # No personas, no migrations: the detector must stay quiet on purchase-only data.
        assert mig["changes"] == 0
        # Target 0.01. Measured 0.012 while a customer coming back from a Lapsing segment
        # made a migration alert (every one of them here); 0.0 since it is a reactivation.
        assert mig["flap_rate_per_30d"] is not None and mig["flap_rate_per_30d"] <= 0.01
        return
    check_migrations(metrics, BOUNDS[shape])
