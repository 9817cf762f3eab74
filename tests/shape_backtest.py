"""The backtest of one generated history shape with the shipped defaults, for the
alert-quality tests (`test_alert_shapes.py`, `test_alert_shapes_family.py`,
`test_alert_shapes_activity.py`).

Each shape is generated with seed 31 (the detector was tuned on seed 101: see
`benchmarks/tune_alerts.py` and the README's alert-quality table), 300 customers x 250
days, migrations between day 100 and day 122, a bundle trained at day 100, then
`segstream backtest` with the defaults, through the CLI as a user runs it, judged until
day 150: the 4 weeks after the last change, while where each changed customer settles is
read at day 250, once its 90-day window holds only its new behaviour (read at day 150, a
customer still passing a segment on its way would count as settled there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from segstream.cli import app

AS_OF = "2026-04-11T00:00:00Z"  # day 100 of a history starting 2026-01-01
#: Day 150: the history is judged until here, and where each changed customer settles is
#: read at its end, day `DAYS`, once its 90-day window has turned over.
JUDGE_TO = "2026-05-31T00:00:00Z"
DAYS = 250
runner = CliRunner()

#: Issue 22's targets: precision, flaps per unchanged customer per 30 days, recall within
#: 28 days, landing where the customer settles; the delay's is per shape.
TARGETS = {"precision": 0.9, "flap": 0.01, "recall": 0.9, "landed": 0.9}


@dataclass(frozen=True)
class Bounds:
    """What a shape's backtest must reach: the targets where the detector meets them,
    else the figure the README documents, with a little room (a guard against getting
    worse, not the target)."""

    precision: float
    flap: float
    recall: float  # within 28 days of the change
    delay: float  # median days
    landed: float  # changes, by their last alert
    landed_alerts: float  # alerts


def invoke(*args: str, env: dict[str, str] | None = None) -> None:
    result = runner.invoke(app, list(args), env=env or {})
    assert result.exit_code == 0, result.output


def backtest_shape(shape: str, root: Path, redis_url: str) -> dict[str, Any]:
    """`metrics.json` of the backtest of `shape` (see the module docstring)."""
    window = [] if shape == "retail" else ["--migrate-from-day", "100", "--migrate-to-day", "122"]
    invoke(
        "generate", "--shape", shape, "--customers", "300", "--days", str(DAYS), "--seed", "31",
        *window, "--out", str(root),
    )  # fmt: skip
    invoke("train", "--events", str(root / "events.jsonl"), "--as-of", AS_OF,
           "--out", str(root / "models"))  # fmt: skip
    invoke(
        "backtest", "--events", str(root / "events.jsonl"), "--model",
        str(root / "models/current"), "--truth", str(root / "migrations.csv"),
        "--out", str(root / "bt"), "--to", JUDGE_TO,
        env={"SEGSTREAM_REDIS_URL": redis_url},
    )  # fmt: skip
    metrics: dict[str, Any] = json.loads((root / "bt/metrics.json").read_text())
    return metrics


def shape_fixture(shapes: Iterable[str]) -> Callable[..., tuple[str, dict[str, Any]]]:
    """A module-scoped fixture `backtested` over `shapes`: (shape, its `metrics.json`)."""

    @pytest.fixture(scope="module", params=list(shapes))
    def backtested(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        embedded_redis_url: str,
    ) -> tuple[str, dict[str, Any]]:  # fmt: skip
        shape = str(request.param)
        root = tmp_path_factory.mktemp(f"shape-{shape}")
        return shape, backtest_shape(shape, root, embedded_redis_url)

    return backtested


def check_migrations(metrics: dict[str, Any], bounds: Bounds) -> None:
    """The migration figures of a backtest within `bounds`."""
    mig = metrics["migrations"]
    within = mig["recall_within"]
    figures = {k: mig[k] for k in ("precision", "flap_rate_per_30d", "landed_in_target")}
    figures |= {"recall_within": within, "delay": mig["delay_days"], "changes": mig["changes"]}
    assert mig["changes"] >= 20, figures
    assert mig["precision"] >= bounds.precision, figures
    assert mig["flap_rate_per_30d"] <= bounds.flap, figures
    assert within["28"] >= bounds.recall, figures
    assert mig["delay_days"]["median"] <= bounds.delay, figures
    assert mig["landed_in_target"] >= bounds.landed, figures
    assert mig["landed_alerts"] >= bounds.landed_alerts, (mig["landed_alerts"], figures)
    # Recall grows with the days allowed since the change, over the changes with that
    # many days of history after them: a longer window may count one change fewer (high-
    # activity seed 31: 29 of 30 within 14 days, 28 of 29 within 28), so by one at most.
    slack = 1.0 / mig["changes"]
    assert within["7"] <= within["14"] + slack and within["14"] <= within["28"] + slack, figures
