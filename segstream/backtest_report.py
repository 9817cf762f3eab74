"""The backtest report: `report.html` with its figures, and `metrics.json`.

Renders what `segstream.backtest.evaluate` computed (volumes, churn alerts judged from
the history with the threshold sweep, migrations against a truth with the detection-delay
histogram, migrations without truth), one function per section; the tags come from
`offline.html`, shared with the bundle report. matplotlib runs with the Agg backend. No
evaluation happens here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from offline.html import escape, image, number, page, table

FIGURES = ("threshold_sweep.png", "migration_delay.png", "daily_volumes.png")


def _sweep_figure(churn: Mapping[str, Any], path: Path) -> None:
    sweep = pd.DataFrame(churn["sweep"])
    fig, left = plt.subplots(figsize=(6.5, 3.6))
    left.plot(sweep["threshold"], sweep["precision"], "o-", color="tab:blue", label="precision")
    left.plot(sweep["threshold"], sweep["recall"], "s--", color="tab:green", label="recall")
    left.set_xlabel("churn probability threshold")
    left.set_ylabel("precision / recall")
    left.set_ylim(0, 1.05)
    right = left.twinx()
    right.plot(sweep["threshold"], sweep["alerts_per_day"], "^:", color="tab:orange")
    right.set_ylabel("churn alerts per day", color="tab:orange")
    left.axvline(churn["threshold"], color="grey", linestyle=":")
    left.legend(loc="lower left", fontsize=8)
    left.set_title(f"Churn threshold sweep (bundle: {churn['threshold']:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _delay_figure(migrations: Mapping[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    delays = sorted(migrations["delays"])
    changes = max(int(migrations["changes"]), 1)
    if delays:
        ax.hist(delays, bins=min(30, max(5, len(delays) // 3)), color="tab:blue", alpha=0.8)
        median = migrations["delay_days"]["median"]
        ax.axvline(median, color="grey", linestyle=":", label=f"median {median:.1f} d")
        ax.legend(loc="upper center")
        # Recall as a function of days since the change (share of all counted changes).
        right = ax.twinx()
        right.step(delays, [(i + 1) / changes for i in range(len(delays))], where="post",
                   color="tab:green")  # fmt: skip
        right.set_ylim(0, 1.05)
        right.set_ylabel("recall within x days", color="tab:green")
    ax.set_xlabel("days from the change to its first migration alert")
    ax.set_ylabel("changes")
    ax.set_title("Migration detection delay, and recall by days since the change")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _volume_figure(volumes: Mapping[str, Any], path: Path) -> None:
    daily = pd.DataFrame.from_dict(volumes["daily"], orient="index").fillna(0).sort_index()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for kind in daily.columns:
        ax.plot(pd.to_datetime(daily.index), daily[kind], label=kind)
    ax.set_ylabel("alerts per day")
    ax.set_title("Daily alert volumes")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _kv(pairs: list[tuple[str, Any]]) -> str:
    return table(["figure", "value"], [[k, number(v)] for k, v in pairs])


def _dist_text(d: Mapping[str, Any]) -> str:
    if not d.get("count"):
        return "none"
    ci = d.get("median_ci95")
    within = f"95 % CI {ci[0]:.1f} to {ci[1]:.1f}; " if ci else ""
    return (
        f"median {d['median']:.1f} ({within}p25 {d['p25']:.1f}, p75 {d['p75']:.1f}, n={d['count']})"
    )


def _with_ci(value: Any, ci: Sequence[float] | None) -> str:
    """A ratio with its 95 % interval (`segstream.backtest.wilson`), as a table cell.

    >>> _with_ci(0.9, [0.7438, 0.9654]), _with_ci(None, None)
    ('0.900 (95 % CI 0.744 to 0.965)', 'None')
    """
    return f"{number(value)} (95 % CI {ci[0]:.3f} to {ci[1]:.3f})" if ci else number(value)


def write_report(metrics: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write metrics.json, report.html and the figures into `out_dir`; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "metrics.json", out_dir / "report.html"]
    written[0].write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    _volume_figure(metrics["volumes"], out_dir / FIGURES[2])
    _sweep_figure(metrics["churn"], out_dir / FIGURES[0])
    written += [out_dir / FIGURES[2], out_dir / FIGURES[0]]
    parts = [*_volumes_section(metrics), *_churn_section(metrics["churn"])]
    if "migrations" in metrics:
        _delay_figure(metrics["migrations"], out_dir / FIGURES[1])
        written.append(out_dir / FIGURES[1])
        parts += _migrations_section(metrics["migrations"])
        parts += _moves_section(metrics["migrations"], metrics.get("segment_names", {}))
    parts += _behaviour_section(metrics["migration_behaviour"])
    written[1].write_text(page("segstream backtest", parts), encoding="utf-8")
    return written


def _volumes_section(metrics: Mapping[str, Any]) -> list[str]:
    win, vol = metrics["window"], metrics["volumes"]
    seg_rows = [
        [kind, seg, number(n)]
        for kind, segs in sorted(vol["per_day_by_segment"].items())
        for seg, n in sorted(segs.items())
    ]
    return [
        "<h1>Alert backtest</h1>",
        f"<p>Model {escape(metrics.get('model_version', ''))}; alerts decided from "
        f"<b>{win['from']}</b> to <b>{win['to']}</b> ({win['days']:.1f} days), by the same "
        "engine as the live worker, replayed over the history on its event-time clock.</p>",
        "<h2>Volumes</h2>",
        table(
            ["type", "alerts per day", "customers alerted"],
            [
                [k, number(v), vol["customers_alerted"].get(k, 0)]
                for k, v in sorted(vol["per_day"].items())
            ],
        ),
        f"<p>Customers alerted (any type): {vol['customers_alerted']['any']:,}. Busiest hour: "
        f"{vol['busiest_hour']['start']} with {vol['busiest_hour']['alerts']:,} alerts "
        "(daily re-scores run at midnight of the event clock).</p>",
        image(FIGURES[2], "daily volumes"),
        table(["type", "segment", "alerts per day"], seg_rows),
    ]


def _churn_section(churn: Mapping[str, Any]) -> list[str]:
    sweep = [
        [number(r["threshold"], 2), number(r["precision"]), number(r["recall"]),
         number(r["alerts_per_day"])]
        for r in churn["sweep"]
    ]  # fmt: skip
    return [
        "<h2>Churn alerts, judged from the history</h2>",
        "<p class='explain'>An alert is right when the customer has no qualifying event in "
        f"the {churn['horizon_days']:.0f} days after it; only alerts whose horizon the "
        f"history covers are judged (decided until {churn['judged_until']}). Recall is "
        "the share of customers who went silent (last event in the window, then a whole "
        "horizon without one) alerted between their last event and the end of the horizon. "
        "Lead time: how much earlier than the end of that horizon the alert came.</p>",
        _kv(
            [
                ("threshold (bundle)", churn["threshold"]),
                ("alerts", churn["alerts"]),
                ("alerts per day", churn["alerts_per_day"]),
                ("judged alerts", churn["judgeable"]),
                ("precision", _with_ci(churn["precision"], churn.get("precision_ci95"))),
                ("customers who went silent", churn["went_silent"]),
                ("recall", _with_ci(churn["recall"], churn.get("recall_ci95"))),
                ("lead time, days", _dist_text(churn["lead_time_days"])),
                ("silence at alert, days", _dist_text(churn["silence_at_alert_days"])),
            ]
        ),
        image(FIGURES[0], "threshold sweep"),
        table(["threshold", "precision", "recall", "alerts per day"], sweep),
    ]


def _speed_rows(m: Mapping[str, Any]) -> list[list[Any]]:
    """Recall within d days of the change, and the delay quantiles: the speed users get."""
    ci = m.get("recall_within_ci95", {})
    rows = [
        [f"recall within {d} days", _with_ci(r, ci.get(d))]
        for d, r in m.get("recall_within", {}).items()
    ]
    rows += [
        [f"recall within {d} days, changes that crossed a border", number(r)]
        for d, r in m.get("recall_within_crossing", {}).items()
    ]
    rows += [
        [f"recall within {d} days, changes of settled customers", number(r)]
        for d, r in m.get("recall_within_settled", {}).items()
    ]
    delay = m["delay_days"]
    rows += [[f"delay {q}, days", number(delay[q])] for q in ("p25", "median", "p75", "p90")]
    if delay.get("median_ci95"):
        lo, hi = delay["median_ci95"]
        rows.append(["delay median, 95 % interval, days", f"{lo:.3f} to {hi:.3f}"])
    if "delay_days_settled" in m:
        rows.append(
            ["delay median, changes of settled customers, days",
             number(m["delay_days_settled"]["median"])]
        )  # fmt: skip
    return rows


def _migrations_section(m: Mapping[str, Any]) -> list[str]:
    return [
        "<h2>Migrations against the truth</h2>",
        "<p class='explain'>A migration alert is right when the customer changed at most "
        f"{m['max_delay_days']:.0f} days before it, or, for a gradual change whose truth "
        "gives its start (started_at), any time after that start. Recall counts the "
        "changes at least 14 days before the end of the window. A change crossed a "
        "border when the customer settles (its nearest center at least 28 days after) in "
        "another segment than it was in: one that stayed cannot have an alert that lands. "
        "The flap rate counts migration alerts on customers without a change, per "
        "customer per 30 days. Precision and the flap rate leave out churn-led alerts (the "
        "customer's events stopped for good soon after) and unresolved ones (no event of "
        "the customer after the alert, and too little history after its last one to tell "
        "whether it left); precision with them counts both as wrong. A change is landed "
        "when its last alert named the segment it settles in; an alert on the way (an "
        "email reader turning power user, alerted into Support-Heavy first) is right but "
        "names another, which the share of alerts that named it shows. Each alert after "
        "the first on the same change (one on the way, or a customer moved back and "
        "alerted again) is right too, and counted apart as repeated: a flow fires once "
        "per alert. Where a customer settles is its nearest center at its last re-score: read "
        "before its longest feature window has passed since the change, its features still "
        "hold weeks of its old behaviour and landing reads low; on a longer history, judge "
        "the weeks after the change with --to.</p>",
        _kv(
            [
                ("alerts", m["alerts"]),
                ("precision", _with_ci(m["precision"], m.get("precision_ci95"))),
                ("churn-led alerts", m["churn_led"]),
                ("unresolved alerts", m["unresolved"]),
                ("precision, churn-led and unresolved counted wrong", m["precision_all"]),
                ("changes", m["changes"]),
                ("recall", _with_ci(m["recall"], m.get("recall_ci95"))),
                ("detection delay, days", _dist_text(m["delay_days"])),
                ("changes that crossed a border", m.get("crossing")),
                *_settling_row(m),
                (
                    "where it settles read, days after the change",
                    _dist_text(m["settled_read_days"]) if "settled_read_days" in m else None,
                ),
                ("landed in the expected segment (its last alert)", m["landed_in_target"]),
                ("alerts that named the expected segment", m.get("landed_alerts")),
                ("changes whose first alert named it", m.get("landed_first")),
                *_runner_up_rows(m),
                (
                    "delay to the first alert that named it, days",
                    _dist_text(m["delay_days_landed"]) if "delay_days_landed" in m else None,
                ),
                ("landed, changes that crossed a border", m.get("landed_crossing")),
                ("detected changes that stayed in their segment", m.get("detected_staying")),
                ("repeated alerts (right, after the first on the same change)", m.get("repeated")),
                ("flap rate per unchanged customer per 30 days", m["flap_rate_per_30d"]),
            ]
        ),
        "<h3>How fast</h3>",
        "<p class='explain'>Recall within d days counts the changes with at least d days "
        "of history after them; the delay runs from the change to its first right alert. "
        "A gradual drift's change time is its midpoint: an alert in its first half has a "
        "negative delay. A customer that changes while it settles (younger than the "
        "engine's early days plus one dwell) is placed, not migrated, until it has settled: "
        "the rows for settled customers give the detector's own speed.</p>",
        table(["figure", "value"], _speed_rows(m)),
        image(FIGURES[1], "detection delay histogram"),
    ]


def _moves_section(m: Mapping[str, Any], names: Mapping[str, str]) -> list[str]:
    """The speed of each move between two segments (`segstream.backtest._by_move`)."""
    moves = m.get("by_move")
    if not moves:
        return []
    within = sorted(moves[0]["recall_within"], key=float)  # metrics.json sorts its keys

    def name(seg: int) -> str:
        return names.get(str(seg), str(seg))

    rows = [
        [name(r["from_segment_id"]), name(r["to_segment_id"]), r["changes"], r["detected"],
         *(number(r["recall_within"][d]) for d in within), number(r["delay_median_days"])]
        for r in moves
    ]  # fmt: skip
    head = ["from", "to", "changes", "detected", *(f"recall within {d} days" for d in within)]
    return [
        "<h3>How fast, by move</h3>",
        "<p class='explain'>The changes that crossed a border, by the segment the customer "
        "was in and the one it settled in. A move to a busier segment shows in the events "
        "that start; one to a quieter segment mostly in the events that stop coming, and "
        "takes longer to tell from a lull.</p>",
        table([*head, "median delay, days"], rows),
    ]


def _settling_row(m: Mapping[str, Any]) -> list[tuple[str, Any]]:
    if "settling" not in m:
        return []
    days = f"{m['settling_days']:g}"
    return [(f"changes while the customer settled (younger than {days} days)", m["settling"])]


def _runner_up_rows(m: Mapping[str, Any]) -> list[tuple[str, Any]]:
    if m.get("clear_alerts") is None:
        return []
    return [
        ("alerts whose segment led the runner-up clearly (evidence_lead_nats)", m["clear_alerts"]),
        ("  of those, named the expected segment", m["landed_alerts_clear"]),
        ("  of the near ties, named the expected segment", m["landed_alerts_near"]),
        (
            "  of the near ties, named it as the segment or the runner-up",
            m.get("landed_alerts_near_either"),
        ),
    ]


def _behaviour_section(b: Mapping[str, Any]) -> list[str]:
    return [
        "<h2>Migrations without truth</h2>",
        _kv(
            [
                ("migration alerts", b["alerts"]),
                ("customers who moved", b["customers_moved"]),
                (
                    f"moved and came back within {b['moved_and_returned_within_days']:.0f} days",
                    b["moved_and_returned_share"],
                ),
                ("dwell before a migration, days", _dist_text(b["dwell_days"])),
                (
                    "segment changes without a migration alert, by placed_by",
                    ", ".join(f"{k} {n}" for k, n in b["placed_without_migration"].items())
                    or "none",
                ),
            ]
        ),
        table(
            ["from \\ to", "to", "alerts"],
            [[src, dst, n] for src, row in sorted(b["matrix"].items()) for dst, n in row.items()],
        ),
    ]
