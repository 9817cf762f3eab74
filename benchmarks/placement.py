"""Who sits in the wrong segment at a date: a backtest's placements against the personas
of a generated history.

A wrong migration alert moves a settled customer into a segment its behaviour does not
fit, and the evidence, run against the customer's own baseline, does not bring it back
(docs/migration-detector.md, The guard, the activity scale, the Casual profile and the
way back from a wrong move). This counts, among the customers settled and active at
`--day` (first seen `--settled-days` before it or earlier, not churned by it), those whose
segment then (their latest `segment_assigned` before it) is not the one most customers of
their persona are in, and how many of those had a migration alert before it.

    python -m benchmarks.placement --history OUT/sudden/seed-32 \\
        --alerts OUT/sudden/seed-32/bt-evidence-0.2-3.0-8.0/alerts.jsonl --day 100
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.evidence_limit import history_day


@dataclass(frozen=True)
class Placements:
    """The count at one date (see the module docstring)."""

    settled: int  # customers settled and active at the date
    wrong: int  # of them, in a segment other than their persona's most common one
    after_alert: int  # of those, with a migration alert before the date
    customers: tuple[str, ...]  # the wrong ones


def wrong_segments(
    truth: pd.DataFrame, alerts: Sequence[dict[str, object]], day: float, settled_days: float
) -> Placements:
    """`truth`: a history's `truth.csv` (customer_id, persona, first_day, churn_day);
    `alerts`: the backtest's alerts, in the order published."""
    segment: dict[str, str] = {}
    alerted: set[str] = set()
    for a in alerts:
        at = history_day(str(a["event_time"]))
        if at >= day:
            continue
        if a["type"] == "segment_assigned":
            segment[str(a["customer_id"])] = str(a["segment_name"])
        elif a["type"] == "segment_migration":
            alerted.add(str(a["customer_id"]))
    people = truth.set_index("customer_id")
    first = people["first_day"].map(history_day)
    churn = people["churn_day"].map(history_day, na_action="ignore")
    keep = (first <= day - settled_days) & ~(churn <= day)  # NaN: never churned
    seg = pd.Series(segment, dtype=object)
    people = people[keep & people.index.isin(seg.index)]
    seg = seg[people.index]
    common = seg.groupby(people["persona"]).agg(lambda s: s.value_counts().index[0])
    wrong = seg[seg != people["persona"].map(common)]
    return Placements(
        settled=len(people),
        wrong=len(wrong),
        after_alert=sum(c in alerted for c in wrong.index),
        customers=tuple(sorted(wrong.index)),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=Path, required=True, help="A generated history.")
    parser.add_argument("--alerts", type=Path, required=True, help="A backtest's alerts.jsonl.")
    parser.add_argument("--day", type=float, default=100.0, help="Days since the start.")
    parser.add_argument("--settled-days", type=float, default=45.0)
    args = parser.parse_args(argv)
    truth = pd.read_csv(args.history / "truth.csv", dtype=str)
    with open(args.alerts) as lines:
        alerts = [json.loads(line) for line in lines]
    got = wrong_segments(truth, alerts, args.day, args.settled_days)
    print(
        f"day {args.day:g}: {got.wrong} of {got.settled} settled customers in a segment "
        f"other than their persona's most common one, {got.after_alert} after a migration "
        f"alert: {', '.join(got.customers)}"
    )


if __name__ == "__main__":
    main()
