"""Rich renderings of the offline results for the CLI: the training progress bars, the
end-of-training summary and the bundle comparison tables.

The only place `offline/` results meet rich: `offline/` reports progress through
`offline.steps.Progress` and returns plain values; this module draws them.
"""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from offline.compare import Comparison, pair_rows, summary_rows
from offline.train import TrainResult


class TrainingBars:
    """An `offline.steps.Progress` that draws one rich bar per training step.

    Use as a context manager around `offline.train.train`; the steps call it from two
    threads (churn runs on its own), hence the lock around the step -> task map.
    """

    def __init__(self, console: Console) -> None:
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self._bars = Progress(*columns, console=console, transient=False)
        self._tasks: dict[str, TaskID] = {}
        self._totals: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> TrainingBars:
        self._bars.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._bars.stop()

    def start(self, step: str, total: int | None = None) -> None:
        with self._lock:
            self._tasks[step] = self._bars.add_task(step, total=total)
            self._totals[step] = total

    def advance(self, step: str, completed: int, total: int | None = None) -> None:
        with self._lock:
            task = self._tasks[step]
            if total is not None:
                self._totals[step] = total
            total = self._totals[step]
        self._bars.update(task, completed=completed, total=total)

    def done(self, step: str) -> None:
        """The step's bar ends full (a step of unknown size counts as one unit)."""
        with self._lock:
            task, total = self._tasks[step], self._totals[step] or 1
        self._bars.update(task, total=total, completed=total)


def training_summary(result: TrainResult) -> list[Table]:
    """The end-of-run summary: headline metrics, then the segments."""
    m = result.metrics
    seg, churn, early = m["segmentation"], m["churn"], m["early"]
    head = Table(title=f"bundle {result.bundle.version}", show_header=False)
    head.add_column("metric")
    head.add_column("value", justify="right")
    head.add_row("customers", f"{seg['customers']:,}")
    if "clustered" in seg:
        head.add_row("clustered", f"{seg['clustered']:,} ({seg['clustered_population']})")
    head.add_row("k", str(seg["k"]))
    head.add_row("silhouette", f"{seg['silhouette']:.3f}")
    stability = seg["stability_ari"]
    head.add_row("stability (bootstrap ARI)", "-" if stability is None else f"{stability:.3f}")
    if churn:
        head.add_row(
            "churn ROC AUC / PR AUC (holdout)",
            f"{churn['roc_auc']:.3f} / {churn['average_precision']:.3f}",
        )
        base = churn.get("baselines") or {}
        for key, label in (("recency", "recency alone"), ("rfm_logit", "RFM logistic reg.")):
            if key in base:
                head.add_row(
                    f"  baseline: {label}",
                    f"{base[key]['roc_auc']:.3f} / {base[key]['average_precision']:.3f}",
                )
        head.add_row(
            "churn precision / recall at threshold",
            f"{churn['precision_at_threshold']:.3f} / {churn['recall_at_threshold']:.3f} "
            f"(p >= {churn['threshold']:.3f})",
        )
    else:
        head.add_row("churn model", "none")
    if early:
        head.add_row(
            "early-life accuracy / balanced (holdout)",
            f"{early['accuracy']:.3f} / {early.get('balanced_accuracy', float('nan')):.3f}",
        )
        if "majority_accuracy" in early:
            head.add_row(
                "  baseline: majority segment",
                f"{early['majority_accuracy']:.3f} / {early['majority_balanced_accuracy']:.3f}",
            )
    else:
        head.add_row("early-life accuracy (holdout)", "none")
    head.add_row("outcomes", m["outcomes"]["note"])
    info = result.bundle.info
    lineage = info.lineage
    status: dict[int, str] = {}
    if lineage:
        head.add_row("previous bundle", lineage["previous_version"])
        head.add_row("customers keeping their segment", f"{lineage['same_segment_share']:.1%}")
        status = {int(r["id"]): r["status"] for r in lineage["segments"]}
        retired = ", ".join(f"{r['id']} {r['name']} ({r['cause']})" for r in lineage["retired"])
        head.add_row("retired segments", retired or "none")
    segs = Table(title="segments")
    columns = ("id", "name", "size", "share", "retention 30d", "stands out on", "why the name")
    for col in (*columns, "since previous") if status else columns:
        segs.add_column(col, justify="right" if col in ("id", "size", "share") else "left")
    for s in info.segments:
        top = ", ".join(f"{t['feature']} {t['z']:+.1f}" for t in s.top_features[:3])
        row = [
            str(s.id), s.name, f"{s.size:,}", f"{s.share:.1%}",
            f"{s.outcomes.retention:.1%}" if s.outcomes else "-", top, s.name_reason,
        ]  # fmt: skip
        segs.add_row(*row, *([status.get(s.id, "")] if status else []))
    return [head, segs]


def warning_lines(result: TrainResult) -> list[str]:
    """The trainer's warnings as red rich markup lines (`segstream train` prints them last,
    where nobody can miss them)."""
    return [f"[bold red]WARNING: {escape(w)}[/]" for w in result.warnings]


def comparison_tables(c: Comparison) -> list[Table]:
    """What `segstream compare` prints."""
    head = Table(title="live vs candidate", show_header=False)
    head.add_column("what")
    head.add_column("value", justify="right")
    for what, value in summary_rows(c):
        head.add_row(what, value)
    pairs = Table(title="segment pairs (same id = same segment)")
    for col in ("live segment", "candidate segment", "customers", "share of live segment"):
        pairs.add_column(col, justify="right" if col in ("customers",) else "left")
    for row in pair_rows(c):
        pairs.add_row(*row)
    return [head, pairs]
