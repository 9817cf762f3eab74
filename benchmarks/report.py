"""results.md (a table) and results.json from the figures of one run.

Must not import faust, redis or the benchmarks that produce the figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import Figure

SECTIONS = {
    "engine": "1. Engine throughput (replay path, real Redis, no Kafka)",
    "e2e": "2. End-to-end throughput (Kafka-protocol broker, `segstream worker` processes)",
    "latency": "3. Latency, produce to `segment_assigned` alert",
    "memory": "4. Memory",
    "growth": "5. Cost growth with the number of customers",
    "training": "6. Training (`segstream train`)",
    "hot": "7. A hot customer id (one id gets every event of a day)",
}

CAVEAT = (
    "Figures are the median of the runs listed. Unless the header says otherwise they are "
    "indicative only: the harness is the deliverable, and a figure means little unless it "
    "was measured on a quiet machine (see the load average above)."
)


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.3g}"


def _met(figure: Figure) -> str:
    if figure.target is None:
        return ""
    if figure.met is None:
        return f"{figure.target}: n/a"
    return f"{figure.target}: **{'met' if figure.met else 'missed'}**"


def markdown(meta: dict[str, Any], figures: list[Figure], notes: list[str]) -> str:
    """The results table, grouped by section, with the machine and the notes."""
    m = meta["machine"]
    lines = [
        "# segstream benchmark results",
        "",
        f"Written by `python -m benchmarks.run` ({meta['preset']} sizes, {meta['repeats']} "
        f"run(s) per figure) on {meta['started']} in {meta['seconds']:.0f} s."
        + (
            f" That run measured {', '.join(meta['ran'])}; the other sections were kept from "
            "earlier runs (`--keep`): the notes give each section's sizes, runs and load."
            if meta.get("kept")
            else ""
        ),
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
        f"{m['redis']} at {m['redis_url']}, {m['platform']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])}.",
        "",
        f"{meta.get('context', '')}".strip(),
        "",
        CAVEAT,
        "",
    ]
    for key, title in SECTIONS.items():
        lines += [f"## {title}", ""]
        rows = [f for f in figures if f.section == key]
        if not rows:
            lines += ["not run", ""]
            continue
        lines += [
            "| figure | median | unit | runs | target | note |",
            "|---|---:|---|---|---|---|",
        ]
        for f in rows:
            runs = ", ".join(_num(r) for r in f.runs)
            lines.append(
                f"| {f.name} | {_num(f.value)} | {f.unit} | {runs} | {_met(f)} | {f.note} |"
            )
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write(out: Path, meta: dict[str, Any], figures: list[Figure], notes: list[str]) -> list[Path]:
    """Write out/results.md and out/results.json; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    js = out / "results.json"
    md.write_text(markdown(meta, figures, notes))
    doc = {
        **meta,
        "sections": {key: [f.to_dict() for f in figures if f.section == key] for key in SECTIONS},
        "notes": notes,
    }
    js.write_text(json.dumps(_clean(doc), indent=2, allow_nan=False, default=str) + "\n")
    return [md, js]


def _clean(value: Any) -> Any:
    """NaN and infinities as null, so results.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
