"""Migration alerts on histories this project did not write: how many, and how many flap.

A public log has no truth of who changed behaviour, so this reports what a user would
see before turning the alerts on: for CDNOW (purchases only) and retentioneering's
`ecom` clickstream (`benchmarks/real_histories.py` reads both from their wheels), a bundle
trained at the same date as there, then `segstream backtest` without truth after it,
once per detector: the shipped evidence, the nearest-center rule before it (margin 0.2,
dwell 3) and the raw nearest center. Per detector: migration alerts per active customer
per 30 days, the share of movers who moved back within 14 days (a flap signal), the
median dwell before a migration, the reactivations (`segment_assigned` with
`placed_by: reactivation`: customers coming back from a segment of silent ones) and the
corrections (`placed_by: correction`: a crossing whose customer's baseline already fit
the destination, `Rules.migration_correction`); neither makes a migration alert. The
evidence also runs without corrections, every crossing a migration.

    .venv/bin/python -m benchmarks.real_migrations [--only cdnow,ecom] [--out DIR]

Writes the table to stdout and `benchmarks/real_migrations.md`. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import redis_server
from benchmarks.real_histories import CASES, NOW
from models.catalog import default_catalog
from models.events import parse_time
from offline.train import TrainSettings, train
from segstream.backtest_run import backtest
from stream.decide import Rules
from stream.settings import StreamSettings

DETECTORS = {
    "evidence (shipped)": Rules(),
    "evidence without corrections": replace(Rules(), migration_correction=0.0),
    "rules (margin 0.2, dwell 3)": replace(Rules(), migration_detector="centers"),
    "nearest": replace(
        Rules(), migration_detector="centers", migration_margin=0.0, migration_dwell_days=0.0
    ),
}


def run_case(key: str, folder: Path, redis_url: str) -> list[dict[str, Any]]:
    """One row per detector for one public log."""
    case = CASES[key]
    events = case.events(folder)
    settings = TrainSettings(
        churn_horizon_days=case.horizon_days, qualifying_types=case.qualifying, seed=0
    )
    models = folder / f"models-{key}"
    train(events, parse_time(case.as_of), models, default_catalog(), settings, now=NOW)
    stream = StreamSettings(redis_url=redis_url)
    active = active_after(events, parse_time(case.as_of))
    rows: list[dict[str, Any]] = []
    for name, rules in DETECTORS.items():
        out = folder / f"bt-{key}-{len(rows)}"
        metrics, _ = backtest(stream, events, models / "current", out, rules=rules)
        moves = metrics["migration_behaviour"]
        days = metrics["window"]["days"]
        lines = (out / "alerts.jsonl").read_text().splitlines()
        placed_by = [json.loads(line).get("placed_by") for line in lines]
        rows.append(
            {
                "case": case.name,
                "detector": name,
                "days": days,
                "active": active,
                "alerts": moves["alerts"],
                "per_customer_per_30d": moves["alerts"] / max(active, 1) / days * 30,
                "moved_and_returned_share": moves["moved_and_returned_share"],
                "dwell_median_days": moves["dwell_days"]["median"],
                "reactivations": placed_by.count("reactivation"),
                "corrections": placed_by.count("correction"),
            }
        )
        print(rows[-1], flush=True)
    return rows


def active_after(events: Path, start: float) -> int:
    """Customers with an event after `start` (the ones a migration alert could concern)."""
    seen = set()
    with events.open() as lines:
        for line in lines:
            doc = json.loads(line)
            if parse_time(doc["ts"]) > start:
                seen.add(doc["customer_id"])
    return len(seen)


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    def f(v: Any, nd: int = 2) -> str:
        return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)

    out = [
        "# Migration alerts on public logs (no truth: volume and flapping)",
        "",
        f"`{command}`; judged from the training date to the end of each log.",
        "",
        "| log | detector | active customers | migration alerts | per customer per 30 d "
        "| moved back within 14 d | median dwell (days) | reactivations | corrections |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['case']} | {r['detector']} | {f(r['active'])} | {r['alerts']} | "
            f"{f(r['per_customer_per_30d'], 4)} | {f(r['moved_and_returned_share'])} | "
            f"{f(r['dwell_median_days'], 1)} | {r['reactivations']} | "
            f"{r['corrections']} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="cdnow,ecom", help="Comma-separated: cdnow, ecom.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/real_migrations.md"))
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, redis_server(args.redis_url) as url:
        for key in args.only.split(","):
            rows += run_case(key, Path(tmp), url)
    command = "python -m benchmarks.real_migrations" + (
        f" --only {args.only}" if args.only != "cdnow,ecom" else ""
    )
    text = markdown(rows, command)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
