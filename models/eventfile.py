"""Event files: reading a history (JSONL, CSV or Parquet) through the event contract.

The trainer, the batch reference and `segstream replay` read histories through here, so
every path sees the same valid events and the same rejections. JSONL holds one event
object per line. CSV and Parquet hold the columns `event_id`, `customer_id`, `type`, `ts`
(RFC 3339 text) and `properties` (a JSON object as text; may be empty).

Must not import faust, redis, `offline/` or `stream/`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.events import Event, EventError, decode_event, validate_event

FORMATS = ("jsonl", "csv", "parquet")


def detect_format(path: Path) -> str:
    """The file's format from its name (`.jsonl`, `.ndjson`, `.json`, `.csv`, `.parquet`)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext in (".csv", ".parquet"):
        return ext[1:]
    raise ValueError(f"{path}: cannot tell the format from the name; use .jsonl, .csv or .parquet")


@dataclass
class ReadStats:
    """What a read saw: valid events and rejections by reason (with the first few)."""

    valid: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def reject(self, where: str, error: EventError) -> None:
        self.rejected[error.reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {error}")


def _rows(path: Path, fmt: str) -> Iterator[tuple[str, Any]]:
    if fmt == "jsonl":
        opener: Callable[..., Any] = open
        if path.suffix == ".gz":
            import gzip

            opener = gzip.open
        with opener(path, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    yield f"{path.name}:{n}", line
        return
    import pandas as pd

    frame = (
        pd.read_csv(path, dtype=str, keep_default_na=False)
        if fmt == "csv"
        else (pd.read_parquet(path))
    )
    missing = {"event_id", "customer_id", "type", "ts"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    has_props = "properties" in frame.columns
    records: list[dict[str, Any]] = frame.to_dict(orient="records")  # type: ignore[assignment]
    for n, record in enumerate(records, start=2 if fmt == "csv" else 1):
        props = record.get("properties") if has_props else None
        if isinstance(props, str):
            try:
                record["properties"] = json.loads(props) if props.strip() else {}
            except ValueError:
                record["properties"] = props  # the contract names the field
        elif props is None or (isinstance(props, float) and math.isnan(props)):
            record["properties"] = {}  # a null cell (pandas reads it as NaN)
        yield f"{path.name}:{n}", record


def read_events(path: Path, stats: ReadStats | None = None) -> Iterator[Event]:
    """Valid events of a history file, in file order; rejections are counted in `stats`.

    There is no future check: a history may lie after this machine's clock.
    """
    path = Path(path)
    fmt = detect_format(path)
    stats = stats if stats is not None else ReadStats()
    for where, raw in _rows(path, fmt):
        try:
            event = decode_event(raw) if fmt == "jsonl" else validate_event(raw)
        except EventError as exc:
            stats.reject(where, exc)
            continue
        stats.valid += 1
        yield event
