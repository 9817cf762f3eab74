"""Migration alerts with the shipped defaults on held-out histories of several shapes.

Each shape is generated with seed 31 (the detector was tuned on seed 101: see
`benchmarks/tune_alerts.py` and the README's alert-quality table), 300 customers x 150
days, migrations between day 100 and day 122, a bundle trained at day 100, then
`segstream backtest` with the defaults. The bounds are the issue-22 targets where the
detector meets them (precision and flap rate on the sudden shape, flap rate on the
gradual one), and the figures measured on this seed, with a little room, where the
README documents it falling short (delay everywhere, recall on the gradual shape,
landing, precision on the gradual and overdispersed shapes, flaps on the overdispersed
one): they guard what users get today against getting worse.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from segstream.cli import app

AS_OF = "2026-04-11T00:00:00Z"  # day 100 of a history starting 2026-01-01
runner = CliRunner()

#: shape -> (min precision, max flap per 30 d, min recall within 28 days, max median
#: delay in days, min share landing where the customer settles). Measured on seed 31
#: with the profiles from the segments' means and silence counted at the re-score:
#: sudden 1.00 / 0.0 / 0.93 / 7.2 / 0.89; gradual 0.90 / 0.0 / 0.79 / 10.3 / 0.83;
#: overdispersed 0.84 / 0.015 / 0.86 / 6.2 / 0.85 (short of the targets: README).
BOUNDS: dict[str, tuple[float, float, float, float, float]] = {
    "sudden": (0.9, 0.01, 0.85, 8.5, 0.85),
    "gradual": (0.85, 0.01, 0.75, 12.0, 0.8),
    "overdispersed": (0.8, 0.02, 0.8, 8.0, 0.8),
}


def invoke(*args: str, env: dict[str, str] | None = None) -> None:
    result = runner.invoke(app, list(args), env=env or {})
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module", params=[*BOUNDS, "retail"])
def backtested(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    embedded_redis_url: str,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    shape = str(request.param)
    root = tmp_path_factory.mktemp(f"shape-{shape}")
    window = [] if shape == "retail" else ["--migrate-from-day", "100", "--migrate-to-day", "122"]
    invoke(
        "generate", "--shape", shape, "--customers", "300", "--days", "150", "--seed", "31",
        *window, "--out", str(root),
    )  # fmt: skip
    invoke("train", "--events", str(root / "events.jsonl"), "--as-of", AS_OF,
           "--out", str(root / "models"))  # fmt: skip
    invoke(
        "backtest", "--events", str(root / "events.jsonl"), "--model",
        str(root / "models/current"), "--truth", str(root / "migrations.csv"),
        "--out", str(root / "bt"), env={"SEGSTREAM_REDIS_URL": embedded_redis_url},
    )  # fmt: skip
    metrics: dict[str, Any] = json.loads((root / "bt/metrics.json").read_text())
    return shape, metrics


def test_migration_alerts_are_right_fast_and_land_where_the_customer_settles(
    backtested: tuple[str, dict[str, Any]],
) -> None:
    shape, metrics = backtested
    mig = metrics["migrations"]
    if shape == "retail":
        # No personas, no migrations: the detector must stay quiet on purchase-only data.
        assert mig["changes"] == 0
        # Target 0.01; measured 0.0081 with the detector alone and 0.0122 on the merged
        # code of issue 20 (11 alerts on 300 customers instead of 9; one alert is 0.002):
        # a guard with room, not the target (README, alert quality).
        assert mig["flap_rate_per_30d"] is not None and mig["flap_rate_per_30d"] <= 0.015
        return
    precision, flap, recall, delay, landed = BOUNDS[shape]
    within = mig["recall_within"]
    figures = {k: mig[k] for k in ("precision", "flap_rate_per_30d", "landed_in_target")}
    figures |= {"recall_within": within, "delay": mig["delay_days"], "changes": mig["changes"]}
    assert mig["changes"] >= 20, figures
    assert mig["precision"] >= precision, figures
    assert mig["flap_rate_per_30d"] <= flap, figures
    assert within["28"] >= recall, figures
    assert mig["delay_days"]["median"] <= delay, figures
    assert mig["landed_in_target"] >= landed, figures
    # Recall can only grow with the days allowed since the change.
    assert within["7"] <= within["14"] <= within["28"], figures
