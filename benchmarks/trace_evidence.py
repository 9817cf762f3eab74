"""One customer's migration evidence, update by update, in a backtest of a generated history.

The design log reasons from traces like these: why a crossing named the segment it did,
and what the events had said about each segment by then. This backtests a generated
history with the shipped defaults and records every update of one customer's evidence
(`Evidence.update`, called by the decider at the customer's events and at its daily
re-scores once the evidence governs it): the time, what triggered it, the customer's
segment, the segment named (if any), and per segment the evidence after the update, its
threshold, and the update's terms, each against the customer's own baseline and against
its current segment (the gain is the lesser of the two):

- `event`: the event's count term (0 at a re-score or for a type not modelled);
- `silence`: the rate term times the days since the last update;
- `amount`: a purchase amount's term;
- `feature`: the term of the feature's share (0 when the value was counted that day).

The recording wraps `Decider._detect` (to know whose evidence it is) and `Evidence.update`
for the run; the detector is the shipped one, unchanged. A diagnostic, not a figure of the
README:

    python -m benchmarks.trace_evidence DIR CUSTOMER [--since 2026-04-20] --out OUT

where DIR is a `segstream generate` folder with a trained `models/current` (the folders
`tune_alerts` writes, e.g. `held-out/sudden/seed-31`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.alerts_on_the_way import backtest, wrapped
from models.bundle import load_bundle
from models.catalog import default_catalog
from stream import detect
from stream.decide import Decider, Row

TERMS = ("event", "silence", "amount", "feature")


def trace(
    history: Path, customer: str, out: Path, redis_url: str, since: str = ""
) -> list[dict[str, Any]]:
    """Backtest `history` into `out` with the shipped defaults; every update of
    `customer`'s evidence from the UTC date `since` on (ISO, "" for all), in time order:
    `at`, `trigger` (the event's type, or "re-score"), `properties`, `current` and `named`
    (segment positions, `named` None when nothing crossed or the crossing waits), and per
    segment position the evidence `before` (None: the customer had no evidence yet) and
    after (`sums`), `threshold`, and each of `TERMS` as (own, segment) pairs."""
    found: list[dict[str, Any]] = []
    now: list[Row] = []
    decide, update = Decider._detect, detect.Evidence.update

    def detect_seen(self: Decider, row: Row, *args: Any, **kwargs: Any) -> bool:
        now.append(row)
        try:
            return decide(self, row, *args, **kwargs)
        finally:
            now.pop()

    def update_seen(
        self: detect.Evidence, blob: bytes, at: float, column: int | None, current: int,
        terms: detect.Terms, value: float | None = None,
        identity: tuple[int, Sequence[float], Sequence[float]] | None = None,
        never: frozenset[int] = frozenset(),
    ) -> tuple[bytes, int | None, float]:  # fmt: skip
        result = update(
            self, blob, at, column, current, terms, value, identity=identity,
            never=never,
        )  # fmt: skip
        row = now[-1] if now else None
        if row is not None and row.customer_id == customer and _day(at) >= since:
            found.append(_record(self, blob, result, row, column, current, terms, value, identity))
        return result

    with (
        wrapped(Decider, _detect=detect_seen),
        wrapped(detect.Evidence, update=update_seen),
    ):
        backtest(history, out, redis_url)
    return found


def _record(
    ev: detect.Evidence, blob: bytes, result: tuple[bytes, int | None, float], row: Row,
    column: int | None, current: int, terms: detect.Terms, value: float | None,
    identity: tuple[int, Sequence[float], Sequence[float]] | None,
) -> dict[str, Any]:  # fmt: skip
    """One update's record (`trace`), its terms worked out as `Evidence.update` does."""
    before = detect.unpack(blob, current, ev.k)
    after = detect.unpack(result[0], current, ev.k)
    days, counted = 0.0, False
    if before is not None:
        last, _, _, seen = before
        days = max(row.at - last, 0.0) / detect.DAY
        same_day = row.at // detect.DAY == last // detect.DAY
        counted = identity is not None and same_day and bool(seen & (1 << identity[0]))
    valued = ev._valued(column, value)
    typical = ev._log_typical
    feature = identity if identity is not None and not counted else None
    zero = (0.0, 0.0)
    per: dict[str, list[tuple[float, float]]] = {name: [] for name in TERMS}
    for s in range(ev.k):
        has_event = column is not None and s != current
        per["event"].append((terms.event[s], terms.seg_event[s]) if has_event else zero)
        per["silence"].append((-days * terms.gap[s], -days * terms.seg_gap[s]))
        per["amount"].append(
            (
                detect._value_term(valued, terms.own_value, typical[s]),
                detect._value_term(valued, typical[current], typical[s]),
            )
            if valued is not None
            else zero
        )
        per["feature"].append((feature[1][s], feature[2][s]) if feature is not None else zero)
    return {
        "at": row.at,
        "trigger": row.kind or "re-score",
        "properties": dict(row.properties or {}),
        "current": current,
        "named": result[1],
        "before": before[2] if before is not None else None,
        "sums": after[2] if after is not None else [0.0] * ev.k,
        "threshold": [ev.threshold_for(terms.scale, current, s) for s in range(ev.k)],
        **per,
    }


def render(updates: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """The updates as text: a header line per update, then a line per segment (the
    customer's own segment left out): evidence, threshold, and each term as own|segment."""
    width = max(len(n) for n in names)
    lines = []
    for u in updates:
        named = "-" if u["named"] is None else names[u["named"]]
        props = " ".join(f"{k}={v}" for k, v in u["properties"].items())
        lines.append(
            f"{_stamp(u['at'])}  {u['trigger']} {props}  in {names[u['current']]}, named {named}"
        )
        for s, name in enumerate(names):
            if s == u["current"]:
                continue
            cells = "  ".join(f"{t} {u[t][s][0]:+6.2f}|{u[t][s][1]:+6.2f}" for t in TERMS)
            lines.append(
                f"    {name:<{width}}  {u['sums'][s]:6.2f} of {u['threshold'][s]:5.2f}  {cells}"
            )
    return "\n".join(lines)


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).date().isoformat()


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")


def main(argv: Sequence[str] | None = None) -> None:
    """Print one customer's evidence, update by update (the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("history", type=Path, help="a `segstream generate` folder, trained")
    parser.add_argument("customer", help="the customer id, as in its events (c0042)")
    parser.add_argument("--since", default="", help="UTC date (YYYY-MM-DD) to trace from")
    parser.add_argument("--out", type=Path, required=True, help="folder for the backtest")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    updates = trace(args.history, args.customer, args.out, args.redis_url, args.since)
    bundle = load_bundle(args.history / "models/current", default_catalog())
    by_id = {s.id: s.name for s in bundle.info.segments}
    print(render(updates, [by_id[int(i)] for i in bundle.space.segment_ids]))


if __name__ == "__main__":
    main()
