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

#: Measured on seed 31, 250 days judged until day 150 (`tests/shape_backtest.py`; the
#: detector as the README's alert-quality section describes it): precision / flaps per
#: 30 d / recall within 28 days / median delay / landing of the changes by their last
#: alert / landing of the alerts. sudden 0.97 / 0.003 / 1.00 / 4.2 / 1.00 / 0.94 (the
#: delay target is 3 days: the README documents the shortfall); gradual 0.97 / 0.003 /
#: 1.00 / 5.4 (from the drift's midpoint) / 0.97 / 0.94; overdispersed 0.91 / 0.008 / 0.90
#: / 4.3 / 0.96 / 0.93 (delay short of 3 days).
BOUNDS = {
    "sudden": Bounds(
        precision=0.9, flap=0.01, recall=0.9, delay=5.0, landed=0.9, landed_alerts=0.9
    ),
    "gradual": Bounds(
        precision=0.9, flap=0.01, recall=0.9, delay=7.0, landed=0.9, landed_alerts=0.9
    ),
    "overdispersed": Bounds(
        precision=0.9, flap=0.01, recall=0.9, delay=5.0, landed=0.9, landed_alerts=0.9
    ),
}


backtested = shape_fixture([*BOUNDS, "retail"])


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
