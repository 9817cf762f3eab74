"""Foreign histories: how a CSV or Parquet log whose columns and event types are not ours
becomes events of the contract.

Owns `HistoryMapping` (which column holds what, which source event is which of our types,
how naive timestamps and missing amounts are read), its two sources (the config file's
`[mapping]` table and `--map` style options) and `RowMapper`, which turns one source row
into the dict of one event (then validated by `models.events` like any other) and opens a
`session_start` at the first event of each session. `models.eventfile.read_events` is its
only reader.

A mapped log is read in time order unless `file_order` (replay takes the order it reads
as the delivery order, and exports are often sorted by customer). Event ids, when the log
has none, are a hash of the row number and the row's mapped cells
(after parsing, so a CSV and a Parquet copy of one log give the same ids): a re-read of
the same file gives the same ids, so replay recognizes what it has seen; two identical rows
are still two events. A session's `session_start` id is a hash of customer and session, so
it is the same whichever event of the session comes first.

Must not import faust, redis, pandas, `offline/` or `stream/`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.events import MAX_TYPE_LENGTH, Event, EventError

#: The targets a `--map TARGET=COLUMN` may name: the fields of `HistoryMapping` that hold
#: a column name.
COLUMN_TARGETS: Final = ("customer_id", "ts", "type", "event_id", "session", "amount", "feature")


class HistoryMapping(BaseModel):
    """Where a foreign log keeps each part of an event, and what its event types mean.

    Column fields name a column of the file; `types` maps a source event (the `type`
    column's value) to one of our types. Unmapped source events keep their own name
    (the contract accepts any type; it counts toward type-agnostic features) unless
    `drop_unmapped`. A purchase without an amount counts with amount 0; a feature_used
    without a `feature` column takes the source event's name as its feature.

    >>> m = HistoryMapping(customer_id="user_id", ts="timestamp", type="event",
    ...                    types={"order_completed": "purchase"}, naive_utc=True)
    >>> sorted(m.columns().values())
    ['event', 'timestamp', 'user_id']
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    customer_id: str = Field("customer_id", description="Column of the customer id.")
    ts: str = Field("ts", description="Column of the event time.")
    type: str = Field("type", description="Column of the source event type.")
    event_id: str | None = Field(
        None, description="Column of a unique event id; without it ids are derived per row."
    )
    session: str | None = Field(
        None, description="Column of a session id: a session_start opens each new session."
    )
    amount: str | None = Field(None, description="Column of a purchase's amount (empty: 0).")
    feature: str | None = Field(
        None, description="Column of a feature_used's feature (default: the source event)."
    )
    types: dict[str, str] = Field(
        default_factory=dict, description="Source event -> our type (e.g. purchase)."
    )
    naive_utc: bool = Field(False, description="Read a time without a zone as UTC.")
    drop_unmapped: bool = Field(False, description="Skip source events not in `types`.")
    file_order: bool = Field(
        False,
        description="Read rows in file order (the delivery order, as for our own files) "
        "instead of time order (stable: rows of equal time keep file order).",
    )

    @field_validator("customer_id", "ts", "type", "event_id", "session", "amount", "feature")
    @classmethod
    def _column_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name a column")
        return value

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: dict[str, str]) -> dict[str, str]:
        for source, target in value.items():
            if not 0 < len(target) <= MAX_TYPE_LENGTH:
                raise ValueError(
                    f"{source!r} maps to {target!r}: a type has 1 to {MAX_TYPE_LENGTH} characters"
                )
        return value

    def columns(self) -> dict[str, str]:
        """Target -> column, for every column this mapping reads."""
        return {t: c for t in COLUMN_TARGETS if (c := getattr(self, t)) is not None}

    def check_columns(self, available: Iterable[str], source: str) -> None:
        """Raise `ValueError` naming every mapped column that `source` lacks.

        >>> HistoryMapping(ts="when").check_columns(["customer_id", "type", "ts"], "log.csv")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: log.csv: the mapping reads ts from column 'when', which the file lacks ...
        """
        have = list(available)
        lacking = [f"{t} from column {c!r}" for t, c in self.columns().items() if c not in have]
        if lacking:
            raise ValueError(
                f"{source}: the mapping reads {', '.join(lacking)}, which the file lacks "
                f"(its columns: {', '.join(map(str, have))})"
            )


def mapping_from_table(table: Any, source: Path | str | None = None) -> HistoryMapping | None:
    """The mapping of a config file's `[mapping]` table (None when there is none).

    >>> mapping_from_table({"customer_id": "user_id", "types": {"pay": "purchase"}}).types
    {'pay': 'purchase'}
    >>> mapping_from_table({"user": "user_id"}, "my.toml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: my.toml: [mapping] user: unknown key; the keys are customer_id, ts, type, ...
    """
    if table is None:
        return None
    where = f"{source}: [mapping]" if source is not None else "[mapping]"
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    try:
        return HistoryMapping.model_validate(table)
    except ValidationError as exc:
        raise ValueError(f"{where} {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key; the keys are {', '.join(HistoryMapping.model_fields)}"
    return f"{key}: {err['msg'].removeprefix('Value error, ')}"


def _pairs(items: Iterable[str], option: str, shape: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        left, eq, right = item.partition("=")
        if not eq or not left.strip() or not right.strip():
            raise ValueError(f"{option} {item!r}: expected {shape}")
        pairs.append((left.strip(), right.strip()))
    return pairs


def mapping_from_options(
    base: HistoryMapping | None,
    maps: Iterable[str] = (),
    types: Iterable[str] = (),
    *,
    naive_utc: bool = False,
    drop_unmapped: bool = False,
    file_order: bool = False,
) -> HistoryMapping | None:
    """`base` (the config file's mapping) with command-line options laid over it.

    `maps` holds `TARGET=COLUMN` (e.g. `customer_id=user_id`), `types` holds
    `SOURCE=TYPE` (e.g. `order_completed=purchase`). None when nothing maps anything.

    >>> m = mapping_from_options(None, ["customer_id=user_id"], ["pay=purchase"])
    >>> m.customer_id, m.ts, m.types
    ('user_id', 'ts', {'pay': 'purchase'})
    >>> mapping_from_options(None, ["user=user_id"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --map user=user_id: unknown target 'user'; the targets are customer_id, ts, ...
    """
    maps, types = list(maps), list(types)
    if base is None and not (maps or types or naive_utc or drop_unmapped or file_order):
        return None
    values: dict[str, Any] = base.model_dump() if base is not None else {}
    for target, column in _pairs(maps, "--map", "TARGET=COLUMN, e.g. customer_id=user_id"):
        if target not in COLUMN_TARGETS:
            raise ValueError(
                f"--map {target}={column}: unknown target {target!r}; the targets are "
                f"{', '.join(COLUMN_TARGETS)}"
            )
        values[target] = column
    shape = "SOURCE=TYPE, e.g. order_completed=purchase"
    values["types"] = {**values.get("types", {}), **dict(_pairs(types, "--map-type", shape))}
    values["naive_utc"] = values.get("naive_utc", False) or naive_utc
    values["drop_unmapped"] = values.get("drop_unmapped", False) or drop_unmapped
    values["file_order"] = values.get("file_order", False) or file_order
    try:
        return HistoryMapping.model_validate(values)
    except ValidationError as exc:
        raise ValueError(f"mapping: {_first_error(exc)}") from None


def _blank(value: Any) -> bool:
    # An empty CSV cell, or a null Parquet cell (None, NaN or NaT: not equal to itself).
    return value is None or (isinstance(value, str) and not value.strip()) or value != value  # noqa: PLR0124


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a Parquet id column with nulls is read as floats
    return str(value).strip()


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class RowMapper:
    """Turns the rows of one file, in order, into event dicts (`event`) and opens each
    session once (`session_start`). Holds the sessions seen so far."""

    def __init__(self, mapping: HistoryMapping) -> None:
        self.mapping = mapping
        self._sessions: set[tuple[str, str]] = set()

    def event(
        self, where: str, row: int, record: Mapping[str, Any]
    ) -> tuple[dict[str, Any], str] | None:
        """The event dict of data row `row` (1-based; `where` names it in errors) and its
        session ("" when none), or None for a dropped unmapped event.

        Raises `EventError` naming the source column for a bad cell, and `ValueError` at
        a time without a zone when the mapping does not say how to read it.
        """
        m = self.mapping
        customer = self._cell(record, m.customer_id)
        source_type = self._cell(record, m.type)
        if source_type in m.types:
            kind = m.types[source_type]
        elif m.drop_unmapped:
            return None
        else:
            kind = source_type
        when = self._time(record, where)
        props = record.get("properties")  # a `properties` column, as eventfile parsed it
        props = dict(props) if isinstance(props, dict) else {}
        amount = ""
        if kind == "purchase" and "amount" not in props:
            props["amount"] = self._amount(record)
            amount = repr(props["amount"])
        feature = ""
        if kind == "feature_used" and "feature" not in props:
            cell = record.get(m.feature) if m.feature is not None else None
            props["feature"] = source_type if _blank(cell) else _text(cell)
            feature = props["feature"]
        session = ""
        if m.session is not None and not _blank(record.get(m.session)):
            session = _text(record[m.session])
        if m.event_id is not None:
            event_id = self._cell(record, m.event_id)
        else:
            event_id = "row-" + _digest(
                str(row), customer, when, source_type, session, amount, feature
            )
        event = {
            "event_id": event_id,
            "customer_id": customer,
            "type": kind,
            "ts": when,
            "properties": props,
        }
        return event, session

    def session_start(self, event: Event, session: str) -> dict[str, Any] | None:
        """A `session_start` for `event` if it is the first valid event of its session."""
        if not session:
            return None
        key = (event.customer_id, session)
        if key in self._sessions:
            return None
        self._sessions.add(key)
        if event.type == "session_start":
            return None  # the log opens its sessions itself
        return {
            "event_id": "session-" + _digest(event.customer_id, session),
            "customer_id": event.customer_id,
            "type": "session_start",
            "ts": event.ts.isoformat(),
            "properties": {"session": session},
        }

    def _cell(self, record: Mapping[str, Any], column: str) -> str:
        value = record.get(column)
        if _blank(value):
            raise EventError(column, "missing", "is empty")
        return _text(value)

    def _amount(self, record: Mapping[str, Any]) -> float:
        column = self.mapping.amount
        if column is None:
            return 0.0
        value: Any = record.get(column)
        if _blank(value):
            return 0.0
        if isinstance(value, bool):
            raise EventError(column, "wrong_type", f"amount must be a number, got {value}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise EventError(
                column, "wrong_type", f"amount must be a number, got {str(value)[:40]!r}"
            ) from None
        if not math.isfinite(number) or number < 0:
            raise EventError(
                column, "invalid_value", f"amount must be finite and >= 0, got {value!r}"
            )
        return number

    def _time(self, record: Mapping[str, Any], where: str) -> str:
        column = self.mapping.ts
        value = record.get(column)
        if _blank(value):
            raise EventError(column, "missing", "is empty")
        if isinstance(value, datetime):  # a Parquet timestamp column
            when = value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
        else:
            text = str(value).strip()
            try:
                when = datetime.fromisoformat(text.replace("z", "Z"))
            except ValueError:
                raise EventError(
                    column, "invalid_value", f"{text[:40]!r} is not a date and time"
                ) from None
        if when.tzinfo is None:
            if not self.mapping.naive_utc:
                raise ValueError(
                    f"{where}: {column} {str(value)[:40]!r} has no zone; "
                    "say how to read it: --naive-utc (or naive_utc = true in [mapping]) "
                    "reads it as UTC"
                )
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC).isoformat()
