"""Run every benchmark and write results.md and results.json.

Usage: python -m benchmarks.run [--quick | --size quick|medium|full] [--repeats N]
       [--out benchmarks/] [--redis-url URL] [--only SECTION ...] [--context TEXT]

Sections: engine (vs the naive baseline), e2e, latency, memory, growth, training, hot; see
`benchmarks.report.SECTIONS`. Redis: `--redis-url`, else 127.0.0.1:6379 when it answers,
else an embedded Valkey; every run uses a key prefix of its own and deletes it. The broker
is an embedded Tansu. Exits 1 when a section failed (the others are still reported).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import e2e, engine, hot, report, training
from benchmarks.common import (
    PRESETS,
    TARGETS,
    Figure,
    Histories,
    HistoryFile,
    Sizes,
    machine,
    percentile,
    redis_server,
)
from stream.broker import start_embedded_broker


class Bench:
    """One run of the harness: sizes, Redis, scratch space and the figures so far."""

    def __init__(self, sizes: Sizes, repeats: int, redis_url: str, work: Path) -> None:
        self.sizes = sizes
        self.repeats = repeats
        self.redis_url = redis_url
        self.work = work
        self.histories = Histories(work)
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self.train_runs: dict[int, list[float]] = {}
        self.replays: dict[int, list[engine.ReplayRun]] = {}
        self._model: Path | None = None
        self.running = ""  # the section being measured

    def add(self, figure: Figure) -> Figure:
        if figure.section != self.running:
            figure.source = self.running
        self.figures.append(figure)
        return figure

    def history(self, customers: int) -> HistoryFile:
        return self.histories.get(customers, self.sizes.days)

    @property
    def model_dir(self) -> Path:
        """A bundle trained on the engine history (its time counts as one training run)."""
        if self._model is None:
            hist = self.history(self.sizes.engine_customers)
            out = self.work / "models"
            seconds = training.train_once(hist, out)
            self.train_runs.setdefault(hist.customers, []).append(seconds)
            self._model = out
        return self._model

    def replay_runs(self, customers: int) -> list[engine.ReplayRun]:
        """`repeats` replays of the history of `customers` customers (cached)."""
        if customers not in self.replays:
            hist = self.history(customers)
            bundle = training.bundle_dir(self.model_dir)
            self.replays[customers] = [
                engine.replay_once(self.redis_url, bundle, hist)
                for _ in range(max(1, self.repeats))
            ]
        return self.replays[customers]

    # -- sections ------------------------------------------------------------------------

    def engine(self) -> None:
        s = self.sizes
        hist = self.history(s.engine_customers)
        runs = self.replay_runs(s.engine_customers)
        name = f"engine, {hist.customers:,} customers, {hist.events:,} events"
        eng = self.add(_throughput("engine", name, runs).judge(TARGETS["engine"]))
        bundle = training.bundle_dir(self.model_dir)
        naive = [
            engine.naive_once(self.redis_url, bundle, hist, s.naive_every, s.naive_seconds)
            for _ in range(max(1, self.repeats))
        ]
        cut = any(n.events < n.slice_events for n in naive)
        note = (
            f"every {s.naive_every}th customer ({naive[0].slice_events:,} events), "
            f"at most {s.naive_seconds:g} s per run"
            + (
                "; cut by the time limit: the earliest days, thin windows, favour the baseline"
                if cut
                else ""
            )
        )
        base = self.add(
            Figure(
                "engine",
                "naive baseline (benchmarks/naive.py)",
                "events/s",
                [n.events_per_second for n in naive],
                note=note,
            )
        )
        ratios = [
            r.events_per_second / n.events_per_second for r, n in zip(runs, naive, strict=True)
        ]
        self.add(
            Figure(
                "engine",
                "engine / naive",
                "x",
                ratios,
                note=f"per run; medians give {eng.value / base.value:.1f}x",
            ).judge(TARGETS["ratio"])
        )

    def e2e(self) -> None:
        s = self.sizes
        per_customer = self.history(s.engine_customers).events / s.engine_customers
        customers = max(1, math.ceil(s.e2e_events / per_customer * 1.1))
        hist = self.history(customers)
        records = e2e.history_records(hist, s.e2e_events)
        with start_embedded_broker() as broker:
            for workers in s.e2e_workers:
                runs = [
                    e2e.throughput_once(
                        broker.bootstrap, self.redis_url, self.model_dir, records, workers
                    )
                    for _ in range(max(1, self.repeats))
                ]
                name = f"{workers} worker(s), {len(records):,} events"
                fig = self.add(
                    Figure(
                        "e2e",
                        name,
                        "events/s",
                        [r.events_per_second for r in runs],
                        note="first to last processed event (group join excluded)",
                    )
                )
                per = Figure(
                    "e2e",
                    f"{name}, per worker",
                    "events/s",
                    [r.events_per_second / workers for r in runs],
                ).judge(TARGETS["e2e"])
                self.add(per)
                self.add(
                    Figure(
                        "e2e",
                        f"{name}, spawn to all committed",
                        "s",
                        [r.commit_seconds for r in runs],
                    )
                )
                self.add(
                    Figure(
                        "e2e",
                        f"{name}, produce rate (setup)",
                        "events/s",
                        [r.produce_per_second for r in runs],
                    )
                )
                rss = [max(m["rss_bytes"] for m in r.rss) / 2**20 for r in runs]
                peak = [max(m["peak_rss_bytes"] for m in r.rss) / 2**20 for r in runs]
                self.add(
                    Figure(
                        "memory",
                        f"worker RSS after {name}",
                        "MiB",
                        rss,
                        note="largest worker, /proc VmRSS",
                    )
                )
                self.add(
                    Figure(
                        "memory",
                        f"worker peak RSS, {name}",
                        "MiB",
                        peak,
                        note="largest worker, /proc VmHWM",
                    )
                )
                del fig
            floor = [
                e2e.floor_once(broker.bootstrap, self.redis_url, self.model_dir, records)
                for _ in range(max(1, self.repeats))
            ]
            self.add(
                Figure(
                    "e2e",
                    f"faust floor: the worker's app and batch loop doing no work, "
                    f"{len(records):,} events",
                    "events/s",
                    floor,
                    note="no worker on this faust app and broker can pass it (faust_floor.py)",
                )
            )

    def latency(self) -> None:
        s = self.sizes
        results = []
        with start_embedded_broker() as broker:
            for _ in range(max(1, self.repeats)):
                results.append(
                    e2e.latency_once(
                        broker.bootstrap,
                        self.redis_url,
                        self.model_dir,
                        s.latency_rates,
                        s.latency_seconds,
                    )
                )
        for i, rate in enumerate(s.latency_rates):
            runs = [r[0][i] for r in results]
            note = (
                f"offered {rate:,}/s for {s.latency_seconds:g} s, achieved "
                f"{statistics.median(r.achieved_per_second for r in runs):,.0f}/s; matched "
                f"{sum(r.matched for r in runs):,} of {sum(r.sent for r in runs):,}; "
                + ", ".join(f"{k}={v}" for k, v in e2e.LATENCY_PROFILE.items())
            )
            self.add(
                Figure(
                    "latency",
                    f"p50 at {rate:,} events/s",
                    "ms",
                    [r.quantile(50) for r in runs],
                    note=note,
                )
            )
            p99 = Figure(
                "latency", f"p99 at {rate:,} events/s", "ms", [r.quantile(99) for r in runs]
            )
            if rate == 2_000:
                p99.judge(TARGETS["p99"])
            self.add(p99)
            self.add(Figure("latency", f"max at {rate:,} events/s", "ms", [r.max_ms for r in runs]))
            for q in (50, 99):
                self.add(
                    Figure(
                        "latency",
                        f"  p{q} to the alert's publish at {rate:,} events/s",
                        "ms",
                        [percentile(r.published_ms, q) for r in runs],
                        note="alert record timestamp - send time: without this "
                        "process's consumer delay"
                        if q == 50
                        else "",
                    )
                )
        rss = [max(m["rss_bytes"] for m in r[1]) / 2**20 for r in results]
        self.add(
            Figure("memory", "worker RSS after the latency runs", "MiB", rss, note="/proc VmRSS")
        )

    def memory(self) -> None:
        for customers in self.sizes.memory_customers:
            runs = self.replay_runs(customers)
            days = self.sizes.days
            self.add(
                Figure(
                    "memory",
                    f"Redis bytes per customer, {customers:,} customers x {days} days",
                    "bytes",
                    [r.bytes_per_customer for r in runs],
                    note="MEMORY USAGE summed over the run's prefix (features, assignment "
                    f"states, schedules), {runs[0].redis_keys:,} keys",
                ).judge(TARGETS["memory"])
            )
            self.add(
                Figure(
                    "memory",
                    f"  of which feature keys, {customers:,} customers",
                    "bytes",
                    [r.feature_bytes_per_customer for r in runs],
                )
            )

    def growth(self) -> None:
        costs: dict[int, float] = {}
        for customers in self.sizes.growth_customers:
            runs = self.replay_runs(customers)
            name = f"{customers:,} customers ({runs[0].events:,} events)"
            fig = self.add(_throughput("growth", f"engine, {name}", runs))
            costs[customers] = 1e6 / fig.value
            self.add(
                Figure(
                    "growth",
                    f"per-event cost, {name}",
                    "µs/event",
                    [1e6 / r.events_per_second for r in runs],
                )
            )
            self.add(
                Figure(
                    "growth",
                    f"Redis bytes per customer, {name}",
                    "bytes",
                    [r.bytes_per_customer for r in runs],
                )
            )
        if len(costs) > 1:
            spread = max(costs.values()) / min(costs.values())
            self.add(
                Figure(
                    "growth",
                    "per-event cost, largest / smallest",
                    "x",
                    [spread],
                    note="flat is ~1 (history length is the same per customer)",
                )
            )

    def training(self) -> None:
        self.model_dir  # noqa: B018 - trains the engine bundle (one run at that size)
        for customers in self.sizes.train_customers:
            hist = self.history(customers)
            runs = self.train_runs.setdefault(customers, [])
            while len(runs) < max(1, self.repeats):
                runs.append(training.train_once(hist, self.work / f"train-{customers}-{len(runs)}"))
            fig = Figure(
                "training",
                f"segstream train, {customers:,} customers x "
                f"{self.sizes.days} days ({hist.events:,} events)",
                "s",
                list(runs),
            )
            if customers >= 100_000:  # the target's size; smaller runs are not judged
                fig.judge(TARGETS["train"])
            self.add(fig)

    def hot(self) -> None:
        s = self.sizes
        files = hot.hot_history(
            self.history(s.engine_customers), s.hot_events, self.work / f"hot-{s.hot_events}"
        )
        bundle = training.bundle_dir(self.model_dir)
        hot_runs: list[hot.HotRun] = []
        spread_runs: list[hot.HotRun] = []
        for _ in range(max(1, self.repeats)):  # alternated: a change of load hits both
            hot_runs.append(hot.hot_once(self.redis_url, bundle, files.hot))
            spread_runs.append(hot.hot_once(self.redis_url, bundle, files.spread))
        n = files.events
        pairs = zip(hot_runs, spread_runs, strict=True)
        ratios = [h.us_per_event / o.us_per_event for h, o in pairs]
        self.add(
            Figure(
                "hot",
                f"per-event cost, {n:,} events of one customer id in one day",
                "µs/event",
                [r.us_per_event for r in hot_runs],
                note=f"`{hot.HOT_ID}`, replay path (stream.replay, batches of 1,000)",
            )
        )
        self.add(
            Figure(
                "hot",
                f"per-event cost, the same {n:,} events over {files.ordinary_customers:,} "
                "ordinary customers",
                "µs/event",
                [r.us_per_event for r in spread_runs],
                note="10 events each, same types, times and day",
            )
        )
        self.add(
            Figure(
                "hot",
                "hot / ordinary per-event cost",
                "x",
                ratios,
                note="per pair of runs",
            ).judge(TARGETS["hot"])
        )
        self.add(
            Figure(
                "hot",
                "bytes of the hot customer's feature state after the day",
                "bytes",
                [float(r.hot_state_bytes) for r in hot_runs],
                note="STRLEN; the idempotency record holds at most SEGSTREAM_DEDUPE_MAX_EVENTS "
                "(10,000) fingerprints of 6 bytes",
            )
        )


ORDER = ("engine", "memory", "growth", "training", "e2e", "latency", "hot")


def _throughput(section: str, name: str, runs: list[engine.ReplayRun]) -> Figure:
    """Events per second of replays, with the daily re-scores they also did."""
    first = runs[0]
    note = (
        f"plus {first.rescored:,} daily re-scores ({first.rescored / max(first.events, 1):.2f} "
        "per event: each customer once a day), in the time"
    )
    return Figure(section, name, "events/s", [r.events_per_second for r in runs], note=note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny sizes (the smoke test).")
    parser.add_argument("--size", choices=sorted(PRESETS), default=None)
    parser.add_argument("--repeats", type=int, default=None, help="Runs per figure (3; quick 1).")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--context", default="", help="A line for results.md (e.g. the load).")
    parser.add_argument("--work", type=Path, default=None, help="Keep scratch files here.")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="Keep the figures of the sections not run now from OUT/results.json (to "
        "measure section by section; each section's notes say when it was measured).",
    )
    args = parser.parse_args(argv)
    preset = args.size or ("quick" if args.quick else "full")
    repeats = args.repeats or (1 if preset == "quick" else 3)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="segstream-bench-"))
    failed = False
    try:
        with redis_server(args.redis_url) as url:
            bench = Bench(PRESETS[preset], repeats, url, work)
            meta: dict[str, Any] = {
                "machine": machine(url),
                "preset": preset,
                "repeats": repeats,
                "sizes": asdict(bench.sizes),
                "started": started.isoformat(timespec="seconds"),
                "context": args.context,
            }
            sections: dict[str, Callable[[], None]] = {
                "engine": bench.engine,
                "memory": bench.memory,
                "growth": bench.growth,
                "training": bench.training,
                "e2e": bench.e2e,
                "latency": bench.latency,
                "hot": bench.hot,
            }
            for key in ORDER:
                if key not in args.only:
                    continue
                print(f"[{time.perf_counter() - t0:7.1f}s] {key} ...", flush=True)
                load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
                bench.notes.append(
                    f"{key}: measured from {datetime.now(UTC).isoformat(timespec='seconds')}, "
                    f"load average then {load} (preset {preset}, {repeats} run(s) per figure) "
                    f"on {meta['machine']['platform']}"
                )
                bench.running = key
                try:
                    sections[key]()
                except Exception as exc:
                    failed = True
                    traceback.print_exc()
                    bench.notes.append(f"section {key} failed: {type(exc).__name__}: {exc}")
            meta["seconds"] = time.perf_counter() - t0
            meta["targets"] = {k: t.text for k, t in TARGETS.items()}
            figures, notes = bench.figures, bench.notes
            meta["ran"] = [key for key in ORDER if key in args.only]
            if args.keep:
                figures, notes = _kept(args.out / "results.json", args.only, figures, notes)
                meta["kept"] = sorted({f.section for f in figures} - set(args.only))
            paths = report.write(args.out, meta, figures, notes)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for path in paths:
        print(f"wrote {path}")
    print((args.out / "results.md").read_text())
    return 1 if failed else 0


def _kept(
    path: Path, ran: list[str], figures: list[Figure], notes: list[str]
) -> tuple[list[Figure], list[str]]:
    """This run's figures and notes, plus those of the sections it did not run from `path`."""
    if not path.exists():
        return figures, notes
    old = json.loads(path.read_text())
    kept: list[Figure] = []
    # A run may add to a section it did not run (latency measures the worker's memory):
    # a figure is dropped when the section that measured it ran again.
    fresh = {(f.section, f.name) for f in figures}
    for items in old.get("sections", {}).values():
        for f in items:
            source = f.get("source") or f["section"]
            if source in ran or (f["section"], f["name"]) in fresh:
                continue
            runs = [math.nan if v is None else float(v) for v in f["runs"]]
            kept.append(
                Figure(f["section"], f["name"], f["unit"], runs, f["target"], f["met"], f["note"],
                       source=f.get("source", ""))
            )  # fmt: skip
    old_notes = [n for n in old.get("notes", []) if n.split(":", 1)[0] not in ran]
    return kept + figures, old_notes + notes


if __name__ == "__main__":
    sys.exit(main())
