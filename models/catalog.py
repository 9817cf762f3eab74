"""The feature catalog: every behavioral feature, declared once, as data.

A feature is a name, an aggregation, an event filter and (for windowed aggregations) a
window in UTC calendar days: a W-day window at time t covers the UTC days
day(t)-W+1 .. day(t), counting only events at or before t. The window ``"lifetime"``
covers every day since the customer was first seen (counts, sums and active days; the
stream keeps them in the customer's profile, which outlives the day windows).

The catalog compiles into *base aggregates*: per-day counters, sums and distinct sets,
and per-customer first/last timestamps. The offline batch reference (`offline/reference.py`)
and the Redis store (`stream/store.py`) compute the base aggregates independently, and
`Catalog.assemble` turns them into features for both, so ratios, caps and recency are
written once. Tests check the two computations against each other.

Users add features in a TOML file with the same aggregations (see `load_catalog`).

Must not import pandas, faust, redis, `offline/` or `stream/`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SECONDS_PER_DAY: Final = 86_400
DEFAULT_WINDOWS: Final = (7, 30, 90)
DEFAULT_RETENTION_DAYS: Final = 90
#: Days a customer's profile (lifetime totals, first and last seen) outlives its last event.
DEFAULT_PROFILE_RETENTION_DAYS: Final = 730
#: days_since_last_* when the customer never had such an event, and its upper bound.
DEFAULT_RECENCY_CAP_DAYS: Final = 365.0

Aggregation = Literal[
    "count", "sum", "distinct", "active_days", "days_since_last", "tenure", "span_days", "ratio"
]
#: The window of a lifetime feature (`FeatureSpec.window_days`).
LIFETIME: Final = "lifetime"
Window = int | Literal["lifetime"]
WINDOWED: Final = frozenset({"count", "sum", "distinct", "active_days"})
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Identity:
    """Which values of one property a customer uses (`Catalog.identity`): the layout's
    distinct `slot`, its event `type` and property `prop`, and the days the customer's own
    shares are read from (before the latest `recent_days`, within `long_days`)."""

    slot: int
    type: str
    prop: str
    long_days: int
    recent_days: int

    @property
    def key(self) -> str:
        """The manifest's name for it (`SegmentRecord.shares`)."""
        return f"{self.type}.{self.prop}"

    def value(self, kind: str, properties: Mapping[str, Any] | None) -> str | None:
        """The value an event of type `kind` carries (as its `distinct` counts it); None
        for an event of another type or without one.

        >>> Identity(0, "feature_used", "feature", 90, 30).value("feature_used", {"feature": "api"})
        'api'
        """
        if kind != self.type:
            return None
        return distinct_key((properties or {}).get(self.prop))


class CatalogError(ValueError):
    """A catalog or catalog config that cannot work; the message names the feature."""


class EventFilter(BaseModel):
    """Which events a feature looks at: any of `types` (empty: every type), with
    properties equal to `where`.

    >>> EventFilter(types=("feature_used",), where={"feature": "export"}).matches(
    ...     "feature_used", {"feature": "export"})
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    types: tuple[str, ...] = ()
    where: dict[str, Scalar] = Field(default_factory=dict)

    def matches(self, event_type: str, properties: Mapping[str, Any]) -> bool:
        """True when an event of this type and properties passes the filter."""
        if self.types and event_type not in self.types:
            return False
        return all(_same_value(properties.get(key), value) for key, value in self.where.items())

    def key(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)


def _same_value(actual: Any, wanted: Scalar) -> bool:
    # bool is an int in Python; keep true != 1 as a JSON reader expects.
    return (type(actual) is type(wanted) and actual == wanted) or (
        isinstance(actual, int | float)
        and not isinstance(actual, bool)
        and isinstance(wanted, int | float)
        and not isinstance(wanted, bool)
        and actual == wanted
    )


def numeric_value(value: Any) -> float:
    """The number a `sum` adds for a property value: finite numbers as is, anything else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range, e.g. 10**400 in the JSON
        return 0.0
    return number if np.isfinite(number) else 0.0


def distinct_key(value: Any) -> str | None:
    """The identity a `distinct` counts for a property value (None: not counted)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


class FeatureSpec(BaseModel):
    """One feature of the catalog."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    aggregation: Aggregation
    window_days: Window | None = None
    filter: EventFilter = Field(default_factory=EventFilter)
    property: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    cap_days: float = DEFAULT_RECENCY_CAP_DAYS
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        where = f"feature {self.name!r}"
        if not _NAME.match(self.name):
            raise ValueError(f"{where}: name must be lowercase letters, digits and _")
        windowed = self.aggregation in WINDOWED
        days = self.window_days
        if windowed and (days is None or (days != LIFETIME and days < 1)):
            raise ValueError(f"{where}: {self.aggregation} needs window_days >= 1 or 'lifetime'")
        if self.aggregation == "distinct" and days == LIFETIME:
            raise ValueError(f"{where}: distinct values are counted over day windows only")
        if not windowed and self.window_days is not None:
            raise ValueError(f"{where}: {self.aggregation} takes no window_days")
        if self.aggregation in ("sum", "distinct") and not self.property:
            raise ValueError(f"{where}: {self.aggregation} needs a property")
        if self.aggregation == "ratio" and not (self.numerator and self.denominator):
            raise ValueError(f"{where}: ratio needs numerator and denominator")
        if self.aggregation == "tenure" and (self.filter.types or self.filter.where):
            raise ValueError(f"{where}: tenure counts from the first event of any kind")
        if self.aggregation == "span_days" and not (self.filter.types or self.filter.where):
            raise ValueError(f"{where}: span_days needs a filter (for any event, use tenure)")
        return self


def _defaults() -> list[FeatureSpec]:
    kinds: list[tuple[str, Aggregation, tuple[str, ...], str | None, str]] = [
        ("events", "count", (), None, "events of any type"),
        ("sessions", "count", ("session_start",), None, "sessions started"),
        ("feature_uses", "count", ("feature_used",), None, "feature_used events"),
        ("distinct_features", "distinct", ("feature_used",), "feature", "distinct features used"),
        ("purchases", "count", ("purchase",), None, "purchases"),
        ("revenue", "sum", ("purchase",), "amount", "sum of purchase amounts"),
        ("support_tickets", "count", ("support_ticket",), None, "support tickets opened"),
        ("email_opens", "count", ("email_open",), None, "emails opened"),
        ("active_days", "active_days", (), None, "UTC days with at least one event"),
    ]
    specs = [
        FeatureSpec(
            name=f"{stem}_{w}d",
            aggregation=agg,
            window_days=w,
            filter=EventFilter(types=types),
            property=prop,
            description=f"{text}, last {w} days",
        )
        for w in DEFAULT_WINDOWS
        for stem, agg, types, prop, text in kinds
    ]
    specs += [
        FeatureSpec(
            name=f"{stem}_lifetime",
            aggregation=agg,
            window_days=LIFETIME,
            filter=EventFilter(types=types),
            property=prop,
            description=f"{text}, since first seen",
        )
        for stem, agg, types, prop, text in kinds
        if agg != "distinct" and stem != "email_opens"
    ]
    specs += [
        FeatureSpec(
            name="days_since_last_event",
            aggregation="days_since_last",
            description="days from the latest event to t",
        ),
        FeatureSpec(
            name="days_since_last_purchase",
            aggregation="days_since_last",
            filter=EventFilter(types=("purchase",)),
            description="days from the latest purchase to t",
        ),
        FeatureSpec(
            name="tenure_days", aggregation="tenure", description="days from the first event to t"
        ),
        FeatureSpec(
            name="avg_order_value_90d",
            aggregation="ratio",
            numerator="revenue_90d",
            denominator="purchases_90d",
            description="revenue_90d / purchases_90d, 0 without purchases",
        ),
        FeatureSpec(
            name="purchase_span_days",
            aggregation="span_days",
            filter=EventFilter(types=("purchase",)),
            description="days from the first event to the latest purchase, 0 without purchases",
        ),
        FeatureSpec(
            name="avg_days_between_purchases",
            aggregation="ratio",
            numerator="purchase_span_days",
            denominator="purchases_lifetime",
            description="purchase_span_days / purchases_lifetime, 0 without purchases",
        ),
    ]
    return specs


@dataclass(frozen=True)
class Layout:
    """The base aggregates a catalog needs, in a fixed order.

    Both computations (batch reference and Redis store) return these, one number each:
    `c{i}w{W}` counts and `a{i}w{W}` active days of counter i, `s{j}w{W}` sums, `d{k}w{W}`
    distinct values, `l{m}` the latest timestamp of last-filter m (NaN when none) and
    `first`, the earliest timestamp of any event. With `lifetime`, also `c{i}life`,
    `a{i}life` and `s{j}life`: the same over every day since the customer was first seen.
    """

    counters: tuple[EventFilter, ...]
    sums: tuple[tuple[EventFilter, str], ...]
    distincts: tuple[tuple[EventFilter, str], ...]
    lasts: tuple[EventFilter, ...]
    windows: tuple[int, ...]
    actives: tuple[int, ...]  # counters whose active days are needed
    lifetime: bool = False  # any lifetime feature: lifetime totals of every counter and sum

    @cached_property
    def columns(self) -> tuple[str, ...]:
        cols: list[str] = []
        for w in self.windows:
            cols += [f"c{i}w{w}" for i in range(len(self.counters))]
            cols += [f"a{i}w{w}" for i in self.actives]
            cols += [f"s{j}w{w}" for j in range(len(self.sums))]
            cols += [f"d{k}w{w}" for k in range(len(self.distincts))]
        if self.lifetime:
            cols += [f"c{i}life" for i in range(len(self.counters))]
            cols += [f"a{i}life" for i in self.actives]
            cols += [f"s{j}life" for j in range(len(self.sums))]
        cols += [f"l{m}" for m in range(len(self.lasts))]
        cols.append("first")
        return tuple(cols)


@dataclass(frozen=True)
class Catalog:
    """An ordered, validated set of features plus the retention they need.

    >>> cat = default_catalog()
    >>> len(cat.names), cat.names[0], cat.names[-1]
    (40, 'events_7d', 'avg_days_between_purchases')
    """

    features: tuple[FeatureSpec, ...]
    retention_days: int = DEFAULT_RETENTION_DAYS
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.features:
            if spec.name in seen:
                raise CatalogError(f"feature {spec.name!r} is declared twice")
            if spec.aggregation == "ratio":
                for part in (spec.numerator, spec.denominator):
                    if part not in seen:
                        raise CatalogError(
                            f"feature {spec.name!r}: {part!r} must be declared before it"
                        )
            days = spec.window_days
            if isinstance(days, int) and days > self.retention_days:
                raise CatalogError(
                    f"feature {spec.name!r}: window of {spec.window_days} days is longer than "
                    f"the retention of {self.retention_days} days"
                )
            seen.add(spec.name)

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.features)

    @cached_property
    def valued_counts(self) -> dict[int, int]:
        """Each windowed `sum` of a property of one event type (no `where`) that has a
        `count` of that type over the same window: sum column -> count column. Their
        ratio is a customer's typical value per event (its mean purchase amount); the
        trainer records each segment's (`SegmentRecord.typical`) for the migration
        evidence (`stream.detect`).

        >>> cat = default_catalog()
        >>> [(cat.names[s], cat.names[c]) for s, c in cat.valued_counts.items()][:1]
        [('revenue_7d', 'purchases_7d')]
        """
        counts: dict[tuple[tuple[str, ...], object], int] = {
            (spec.filter.types, spec.window_days): col
            for col, spec in enumerate(self.features)
            if spec.aggregation == "count" and len(spec.filter.types) == 1 and not spec.filter.where
        }
        return {
            col: counts[(spec.filter.types, spec.window_days)]
            for col, spec in enumerate(self.features)
            if spec.aggregation == "sum"
            and spec.window_days != LIFETIME
            and not spec.filter.where
            and (spec.filter.types, spec.window_days) in counts
        }

    @cached_property
    def identity(self) -> Identity | None:
        """The first `distinct` of a property of one event type (no `where`) counted over
        at least two windows: which values a customer uses (the default's `feature` of
        `feature_used`). The trainer records each segment's shares of its values
        (`SegmentRecord.shares`), the store reads the customer's own from its days before
        the latest `recent_days` within `long_days`, and the migration evidence weighs each
        event's value by them (`stream.detect`). None when the catalog has no such count.

        >>> default_catalog().identity
        Identity(slot=0, type='feature_used', prop='feature', long_days=90, recent_days=30)
        """
        lay = self.layout
        for slot, (flt, prop) in enumerate(lay.distincts):
            if len(flt.types) != 1 or flt.where:
                continue
            windows = sorted(
                int(spec.window_days)
                for spec in self.features
                if spec.aggregation == "distinct"
                and (spec.filter, spec.property) == (flt, prop)
                and isinstance(spec.window_days, int)
            )
            if len(windows) >= 2:
                return Identity(slot, flt.types[0], prop, windows[-1], windows[-2])
        return None

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the catalog's definition: bundles trained on another one are refused."""
        payload = {
            "retention_days": self.retention_days,
            "features": [s.model_dump(exclude={"description"}) for s in self.features],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "retention_days": self.retention_days,
            "features": [s.model_dump(exclude_defaults=True) for s in self.features],
        }

    @cached_property
    def layout(self) -> Layout:
        counters: list[EventFilter] = []
        sums: list[tuple[EventFilter, str]] = []
        distincts: list[tuple[EventFilter, str]] = []
        lasts: list[EventFilter] = []
        windows: set[int] = set()
        actives: set[int] = set()
        lifetime = False

        def slot(items: list[Any], item: Any) -> int:
            if item not in items:
                items.append(item)
            return items.index(item)

        for spec in self.features:
            if spec.window_days == LIFETIME:
                lifetime = True
            elif spec.window_days is not None:
                windows.add(spec.window_days)
            match spec.aggregation:
                case "count":
                    slot(counters, spec.filter)
                case "active_days":
                    actives.add(slot(counters, spec.filter))
                case "sum":
                    slot(sums, (spec.filter, spec.property))
                case "distinct":
                    slot(distincts, (spec.filter, spec.property))
                case "days_since_last" | "span_days":
                    slot(lasts, spec.filter)
        return Layout(
            counters=tuple(counters),
            sums=tuple(sums),
            distincts=tuple(distincts),
            lasts=tuple(lasts),
            windows=tuple(sorted(windows)),
            actives=tuple(sorted(actives)),
            lifetime=lifetime,
        )

    def base_column(self, spec: FeatureSpec) -> str:
        """The base aggregate a windowed, recency or span feature reads."""
        lay = self.layout
        w = "life" if spec.window_days == LIFETIME else f"w{spec.window_days}"
        match spec.aggregation:
            case "count":
                return f"c{lay.counters.index(spec.filter)}{w}"
            case "active_days":
                return f"a{lay.counters.index(spec.filter)}{w}"
            case "sum":
                return f"s{lay.sums.index((spec.filter, spec.property))}{w}"  # type: ignore[arg-type]
            case "distinct":
                return f"d{lay.distincts.index((spec.filter, spec.property))}{w}"  # type: ignore[arg-type]
            case "days_since_last" | "span_days":
                return f"l{lay.lasts.index(spec.filter)}"
            case "tenure":
                return "first"
        raise CatalogError(f"feature {spec.name!r} has no base aggregate")

    def assemble(self, base: Mapping[str, np.ndarray], at: np.ndarray | float) -> np.ndarray:
        """Features from base aggregates: one row per customer, one column per feature.

        `base` maps each `Layout.columns` name to an array with one value per customer;
        `at` is the evaluation time (Unix seconds), one for all or one per customer.
        """
        at_arr = np.asarray(at, dtype=float)
        n = len(base["first"])
        out = np.zeros((n, len(self.features)), dtype=float)
        by_name: dict[str, np.ndarray] = {}
        for col, spec in enumerate(self.features):
            if spec.aggregation in WINDOWED:
                values = np.asarray(base[self.base_column(spec)], dtype=float)
            elif spec.aggregation == "days_since_last":
                last = np.asarray(base[self.base_column(spec)], dtype=float)
                days = (at_arr - last) / SECONDS_PER_DAY
                values = np.where(np.isnan(last), spec.cap_days, np.minimum(days, spec.cap_days))
            elif spec.aggregation == "tenure":
                values = (at_arr - np.asarray(base["first"], dtype=float)) / SECONDS_PER_DAY
            elif spec.aggregation == "span_days":
                last = np.asarray(base[self.base_column(spec)], dtype=float)
                span = (last - np.asarray(base["first"], dtype=float)) / SECONDS_PER_DAY
                values = np.where(np.isnan(last), 0.0, span)
            else:  # ratio
                num = by_name[spec.numerator]  # type: ignore[index]
                den = by_name[spec.denominator]  # type: ignore[index]
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = np.where(den != 0, num / np.where(den != 0, den, 1.0), 0.0)
            by_name[spec.name] = values
            out[:, col] = values
        return out

    def markdown_table(self) -> str:
        """The catalog as the README shows it."""
        rows = ["| feature | aggregation | events | window | what |", "|---|---|---|---|---|"]
        for s in self.features:
            events = ", ".join(s.filter.types) or "any"
            if s.filter.where:
                events += " where " + ", ".join(f"{k}={v!r}" for k, v in s.filter.where.items())
            what_of = f"`{s.property}`" if s.property else ""
            if s.aggregation == "ratio":
                what_of = f"{s.numerator} / {s.denominator}"
            agg = f"{s.aggregation}({what_of})" if what_of else s.aggregation
            days = s.window_days
            window = f"{days} d" if isinstance(days, int) else (days or "-")
            rows.append(f"| `{s.name}` | {agg} | {events} | {window} | {s.description} |")
        return "\n".join(rows)


def default_catalog() -> Catalog:
    """The 40 built-in features (see the README's table)."""
    return Catalog(features=tuple(_defaults()))


def load_catalog(path: Path | None) -> Catalog:
    """The default catalog plus the features of a TOML config file, if given.

    The file may set `retention_days` under `[catalog]` and add features as
    `[[catalog.features]]` tables with the keys of `FeatureSpec`, for example::

        [[catalog.features]]
        name = "exports_30d"
        aggregation = "count"
        window_days = 30
        filter = { types = ["feature_used"], where = { feature = "export" } }
    """
    if path is None:
        return default_catalog()
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from None
    return catalog_from_config(raw.get("catalog", {}), source=str(path))


def catalog_from_config(section: Mapping[str, Any], *, source: str = "config") -> Catalog:
    """Build a catalog from the `[catalog]` section of a config (already parsed)."""
    extra: list[FeatureSpec] = []
    for i, item in enumerate(section.get("features", [])):
        try:
            extra.append(FeatureSpec.model_validate(item))
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            name = item.get("name", f"#{i + 1}") if isinstance(item, dict) else f"#{i + 1}"
            msg = err["msg"].removeprefix("Value error, ")
            raise CatalogError(
                f"{source}: feature {name!r}: {loc + ': ' if loc else ''}{msg}"
            ) from None
    retention = section.get("retention_days", DEFAULT_RETENTION_DAYS)
    if not isinstance(retention, int) or retention < 1:
        raise CatalogError(f"{source}: retention_days must be a whole number >= 1")
    return Catalog(features=(*_defaults(), *extra), retention_days=retention, source=dict(section))
