"""Why a change's first migration alert named a segment the customer did not settle in.

The backtest reports alerts on the way (a change alerted into one segment, then into
another: `repeated`, `landed_alerts`) but not what the evidence looked like when the first
alert went out. This backtests a generated history with the shipped defaults, records the
evidence of every segment at each update where one crossed (`Evidence.update`; the
recording wraps `Evidence._overtaking`, which runs at every crossing, so the detector is
the shipped one, unchanged), and, for each change alerted more than once, classifies its
first alert by where the segment of its last alert (the destination) stood:

- in the tie: the destination had crossed its own threshold, within `TIE_NATS` of the
  leader, and another segment was named (the class tells whether the destination led,
  or was equal: at the cap of twice the threshold; until session 40 the nearest center
  named a near tie, since then its leader);
- within `TIE_NATS`, short of its threshold (gaining more or less at that update);
- beyond `TIE_NATS`: the segment on the way led by itself;
- no crossing: the alert came from a placement or a correction, not from the evidence.

Each class is split by whether the first alert named a segment busier than the customer's
(by its total rate). A diagnostic for the design log, not a figure of the README:

    python -m benchmarks.alerts_on_the_way DIR [DIR ...] --out OUT

where each DIR is a `segstream generate` folder with a trained `models/current` (the
folders `tune_alerts` writes, e.g. `held-out/sudden/seed-31`).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from models.bundle import load_bundle
from models.catalog import default_catalog
from segstream.cli import app as segstream_app
from stream import detect


@contextmanager
def wrapped(owner: type, **methods: Callable[..., Any]) -> Iterator[None]:
    """Replace methods of `owner` for the block (a diagnostic's recording around the shipped
    code); the originals come back even when the block fails."""
    saved = {name: getattr(owner, name) for name in methods}
    for name, method in methods.items():
        setattr(owner, name, method)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(owner, name, method)


def backtest(history: Path, out: Path, redis_url: str) -> None:
    """`segstream backtest` of a `segstream generate` folder's events, bundle and truth into
    `out`, in this process (so wrapped methods are the ones it runs)."""
    result = CliRunner().invoke(segstream_app, [
        "backtest", "--events", str(history / "events.jsonl"),
        "--model", str(history / "models/current"),
        "--truth", str(history / "migrations.csv"), "--out", str(out),
    ], env={"SEGSTREAM_REDIS_URL": redis_url})  # fmt: skip
    if result.exit_code != 0:
        raise RuntimeError(f"backtest of {history} failed: {result.output[-500:]}")


def record_crossings(history: Path, out: Path, redis_url: str) -> list[dict[str, Any]]:
    """Backtest `history` into `out` with the shipped defaults; the evidence at every
    update where a segment crossed: time, current segment position, the crossing one, the
    one named (None: held), and each segment's evidence, gain, threshold and total rate."""
    found: list[dict[str, Any]] = []
    stash: dict[str, Any] = {}
    overtaking, update = detect.Evidence._overtaking, detect.Evidence.update

    def overtaking_seen(
        self: detect.Evidence, best: int, current: int, sums: Sequence[float],
        gained: Sequence[float], scale: float, never: frozenset[int],
    ) -> bool:  # fmt: skip
        held = overtaking(self, best, current, sums, gained, scale, never)
        stash.update(
            best=best, held=held, sums=list(sums), gained=list(gained),
            threshold=[self.threshold_for(scale, current, s) for s in range(self.k)],
            total=list(self._total_list),
        )  # fmt: skip
        return held

    def update_seen(
        self: detect.Evidence, blob: bytes, at: float, column: int | None, current: int,
        *args: Any, **kwargs: Any,
    ) -> tuple[bytes, int | None, float]:  # fmt: skip
        stash.clear()
        result = update(self, blob, at, column, current, *args, **kwargs)
        if stash:
            found.append({"at": at, "current": current, "named": result[1], **stash})
        return result

    with wrapped(detect.Evidence, _overtaking=overtaking_seen, update=update_seen):
        backtest(history, out, redis_url)
    return found


def classify(history: Path, out: Path, crossings: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(class, customer) for the first alert of each change alerted more than once."""
    bundle = load_bundle(history / "models/current", default_catalog())
    names = {s.id: s.name for s in bundle.info.segments}
    position = [names[int(i)] for i in bundle.space.segment_ids]
    changed = {r["customer_id"]: r["changed_at"][:10] for r in _rows(history / "migrations.csv")}
    alerts: dict[str, list[dict[str, Any]]] = {}
    for line in (out / "alerts.jsonl").read_text().splitlines():
        alert = json.loads(line)
        who = alert["customer_id"]
        if alert["type"] == "segment_migration" and alert["event_time"][:10] >= changed.get(
            who, "9999"
        ):
            alerts.setdefault(who, []).append(alert)
    by_time: dict[float, list[dict[str, Any]]] = {}
    for c in crossings:
        by_time.setdefault(round(c["at"], 3), []).append(c)
    found = []
    for who, xs in sorted(alerts.items()):
        if len(xs) < 2:
            continue
        named = position.index(xs[0]["to_segment_name"])
        dest = position.index(xs[-1]["to_segment_name"])
        at = datetime.fromisoformat(xs[0]["event_time"].replace("Z", "+00:00")).timestamp()
        seen = [c for c in by_time.get(round(at, 3), []) if c["named"] == named]
        found.append((where_it_stood(seen[0], named, dest) if seen else "no crossing", who))
    return found


def where_it_stood(c: dict[str, Any], named: int, dest: int) -> str:
    """The class of a first alert naming segment position `named` whose change settled in
    `dest`, from the crossing `c` that made it (`record_crossings`)."""
    sums, lead = c["sums"], max(c["sums"])
    way = "into busier" if c["total"][named] > c["total"][c["current"]] else "into quieter"
    if sums[dest] >= c["threshold"][dest] and sums[dest] >= lead - detect.TIE_NATS:
        led = "destination led" if sums[dest] >= sums[named] else "destination trailed"
        return f"in the tie, another named ({led}); {way}"
    if sums[dest] >= sums[named] - detect.TIE_NATS:
        more = "more" if c["gained"][dest] > c["gained"][named] else "less"
        return f"within TIE_NATS, short of its threshold, gaining {more}; {way}"
    return f"beyond TIE_NATS; {way}"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def main(argv: Sequence[str] | None = None) -> None:
    """Classify the first alerts of changes alerted more than once (the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "histories",
        nargs="+",
        type=Path,
        help="`segstream generate` folders with a trained models/current",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for the backtests, one subfolder per history",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for i, history in enumerate(args.histories):
        where = args.out / f"{i:02d}-{history.parent.name}-{history.name}"
        crossings = record_crossings(history, where, args.redis_url)
        for kind, who in classify(history, where, crossings):
            counts[kind] += 1
            examples.setdefault(kind, []).append(f"{history.parent.name}/{history.name}:{who}")
    for kind, n in counts.most_common():
        print(f"{n:4d}  {kind}  (e.g. {', '.join(examples[kind][:3])})")


if __name__ == "__main__":
    main()
