"""Event files: reading a history (JSONL, CSV or Parquet) through the event contract.

The trainer, the batch reference and `segstream replay` read histories through here, so
every path sees the same valid events and the same rejections. JSONL holds one event
object per line. CSV and Parquet hold the columns `event_id`, `customer_id`, `type`, `ts`
(RFC 3339 text) and `properties` (a JSON object as text; may be empty). A CSV or Parquet
log with other columns and event types is read through a `models.mapping.HistoryMapping`.

Must not import faust, redis, `offline/` or `stream/`.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.events import Event, EventError, decode_event, validate_event
from models.mapping import HistoryMapping, RowMapper

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
    #: Rows of source events a mapping leaves out (`drop_unmapped`): not errors.
    dropped: int = 0

    def reject(self, where: str, error: EventError) -> None:
        self.rejected[error.reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {error}")

    def add(self, other: ReadStats) -> None:
        """Count in what a read of a later part of the same file saw."""
        self.valid += other.valid
        self.dropped += other.dropped
        self.rejected.update(other.rejected)
        self.examples.extend(other.examples[: 5 - len(self.examples)])


Span = tuple[int, int]
_BLOCK = 1 << 24


def jsonl_spans(path: Path, parts: int) -> list[Span]:
    """Byte ranges `[start, end)` that cut a plain JSONL file into at most `parts` runs of
    whole lines, for reading in several processes; one range for a gzipped file (it cannot
    be entered in the middle).
    """
    path = Path(path)
    size = path.stat().st_size
    if parts <= 1 or path.suffix == ".gz" or detect_format(path) != "jsonl":
        return [(0, size)]
    cuts = [0]
    with open(path, "rb") as fh:
        for i in range(1, parts):
            fh.seek(max(size * i // parts - 1, cuts[-1]))
            fh.readline()  # to the start of the next whole line
            cuts.append(min(fh.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _lines_before(fh: Any, offset: int) -> int:
    fh.seek(0)
    count, left = 0, offset
    while left > 0:
        block = fh.read(min(_BLOCK, left))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


def _rows(
    path: Path, fmt: str, span: Span | None = None, mapping: HistoryMapping | None = None
) -> Iterator[tuple[str, int, Any]]:
    """(where, data row number from 1, raw line or record) for each row of the file."""
    if fmt == "jsonl":
        if mapping is not None:
            raise ValueError(f"{path}: a mapping reads CSV or Parquet logs, not JSONL")
        opener: Callable[..., Any] = open
        if path.suffix == ".gz":
            import gzip

            opener = gzip.open
        with opener(path, "rb") as fh:
            start, end = span if span is not None else (0, None)
            first = 1 + _lines_before(fh, start)  # line numbers as in the whole file
            fh.seek(start)
            pos = start
            for n, line in enumerate(fh, start=first):
                if end is not None and pos >= end:
                    break
                pos += len(line)
                if line.strip():
                    yield f"{path.name}:{n}", n, line
        return
    if span is not None:
        raise ValueError(f"{path}: only plain JSONL files are read in parts")
    import pandas as pd

    frame = (
        pd.read_csv(path, dtype=str, keep_default_na=False)
        if fmt == "csv"
        else (pd.read_parquet(path))
    )
    if mapping is not None:
        mapping.check_columns(frame.columns, str(path))
    else:
        missing = {"event_id", "customer_id", "type", "ts"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    has_props = "properties" in frame.columns
    numbers: list[int] | range = range(1, len(frame) + 1)
    if mapping is not None and not mapping.file_order:
        # Time order, stable: an export is often sorted by customer, and replay takes the
        # order it reads as the delivery order. Rows keep their numbers (errors, ids).
        when = pd.to_datetime(frame[mapping.ts], utc=True, errors="coerce", format="ISO8601")
        order = when.dt.tz_localize(None).to_numpy().argsort(kind="stable")
        frame, numbers = frame.iloc[order], (order + 1).tolist()
    records: list[dict[str, Any]] = frame.to_dict(orient="records")  # type: ignore[assignment]
    header = 1 if fmt == "csv" else 0  # `where` names the CSV line, the Parquet row
    for row, record in zip(numbers, records, strict=True):
        props = record.get("properties") if has_props else None
        if isinstance(props, str):
            try:
                record["properties"] = json.loads(props) if props.strip() else {}
            except ValueError:
                record["properties"] = props  # the contract names the field
        elif props is None or (isinstance(props, float) and math.isnan(props)):
            record["properties"] = {}  # a null cell (pandas reads it as NaN)
        yield f"{path.name}:{row + header}", row, record


def read_events(
    path: Path,
    stats: ReadStats | None = None,
    span: Span | None = None,
    mapping: HistoryMapping | None = None,
) -> Iterator[Event]:
    """Valid events of a history file, in file order (a mapped log: in time order unless
    its `file_order`); rejections are counted in `stats`.

    `span` (from `jsonl_spans`) reads only the whole lines in that byte range of a plain
    JSONL file; rejections still name the line of the whole file.
    `mapping` reads a CSV or Parquet log with columns and event types of its own; its
    events then pass the same contract. A mapped column the file lacks, or a time
    without a zone the mapping does not say how to read, raises `ValueError` at once.
    There is no future check: a history may lie after this machine's clock.
    """
    path = Path(path)
    fmt = detect_format(path)
    stats = stats if stats is not None else ReadStats()
    if mapping is not None:
        yield from _read_mapped(path, fmt, stats, mapping)
        return
    for where, _, raw in _rows(path, fmt, span):
        try:
            event = decode_event(raw) if fmt == "jsonl" else validate_event(raw)
        except EventError as exc:
            stats.reject(where, exc)
            continue
        stats.valid += 1
        yield event


def _read_mapped(
    path: Path, fmt: str, stats: ReadStats, mapping: HistoryMapping
) -> Iterator[Event]:
    mapper = RowMapper(mapping)
    for where, row, raw in _rows(path, fmt, None, mapping):
        try:
            mapped = mapper.event(where, row, raw)
            if mapped is None:
                stats.dropped += 1
                continue
            event = validate_event(mapped[0])
            opened = mapper.session_start(event, mapped[1])
            start = validate_event(opened) if opened is not None else None
        except EventError as exc:
            stats.reject(where, exc)
            continue
        if start is not None:
            stats.valid += 1
            yield start
        stats.valid += 1
        yield event
