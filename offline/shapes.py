"""The shapes a synthetic history can take: one typed options object and its named presets.

Owns `HistoryShape` (how migrations happen, how far apart the personas are, how active and
how seasonal the product is, how noisy the daily counts are, or a retail purchase-only
history instead of personas) and `SHAPES`, the family of presets that benchmarks and tests
iterate over. The default shape reproduces the generator's original output exactly.

Imports only the standard library; `offline/synthetic.py` and `offline/retail.py` read it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

Migration = Literal["sudden", "gradual"]
Kind = Literal["personas", "retail"]

#: Per-day rate types a partial migration can change (`synthetic.RATE_TYPES`).
CHANGEABLE = (
    "session_start", "feature_used", "purchase", "support_ticket", "email_open", "page_view",
)  # fmt: skip
#: Options that only mean something for persona histories.
_PERSONA_ONLY = (
    "migration", "drift_days", "changes", "separation", "dispersion", "migrate_from_day",
    "migrate_to_day", "persona_spread",
)  # fmt: skip


@dataclass(frozen=True)
class HistoryShape:
    """How a synthetic history looks; every field at its default gives today's history.

    - `kind`: `personas` (behavioural personas with churn and migrations) or `retail`
      (purchase-only, "buy till you die" customers; see `offline/retail.py`).
    - `migration`: `sudden` switches every rate on the migration day; `gradual` drifts
      linearly from the old persona's rates to the new one's over `drift_days` (a range,
      drawn per customer); the truth's migration day is the drift's midpoint.
    - `changes`: with a rate type named (e.g. `purchase`), a migration changes only that
      type's rate, towards the persona whose rate of it differs most; the rest stay.
    - `separation`: scales each rate's log-distance from the personas' geometric mean
      (< 1 personas closer together, > 1 farther apart), keeping each type's mean rate.
    - `activity`: multiplies every rate (low- or high-activity product).
    - `weekend`: multiplies Saturday and Sunday rates (e.g. 0.5 for a B2B product).
    - `dispersion`: > 0 draws daily counts negative binomial with variance
      mean + dispersion * mean^2 instead of Poisson.
    - `migrate_from_day`, `migrate_to_day`: migrations (their midpoints) fall in this day
      window, inclusive; unset, from a third of the history to two weeks before its end.
    - `persona_spread`: > 0 redraws the personas from each history's seed: every rate and
      purchase amount median of every persona is multiplied by a lognormal factor with
      this sigma (0.7: mostly between a quarter and four times). The defaults were tuned
      on the five personas as they are; these are personas they have not seen.

    >>> HistoryShape(migration="gradual").migration
    'gradual'
    >>> HistoryShape(activity=0)
    Traceback (most recent call last):
    ...
    ValueError: activity must be > 0, got 0
    """

    kind: Kind = "personas"
    migration: Migration = "sudden"
    drift_days: tuple[int, int] = (14, 28)
    changes: str | None = None
    separation: float = 1.0
    activity: float = 1.0
    weekend: float = 1.0
    dispersion: float = 0.0
    migrate_from_day: int | None = None
    migrate_to_day: int | None = None
    persona_spread: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("personas", "retail"):
            raise ValueError(f"kind must be personas or retail, got {self.kind!r}")
        if self.migration not in ("sudden", "gradual"):
            raise ValueError(f"migration must be sudden or gradual, got {self.migration!r}")
        lo, hi = self.drift_days
        if not 1 <= lo <= hi:
            raise ValueError(f"drift_days must be 1 <= min <= max, got {self.drift_days}")
        if self.changes is not None and self.changes not in CHANGEABLE:
            raise ValueError(
                f"changes must be one of {', '.join(CHANGEABLE)}, got {self.changes!r}"
            )
        for name in ("separation", "activity"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.weekend >= 0:
            raise ValueError(f"weekend must be >= 0, got {self.weekend}")
        for name in ("dispersion", "persona_spread"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("migrate_from_day", "migrate_to_day"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.kind == "retail":
            defaults = {f.name: f.default for f in fields(self)}
            unused = [k for k in _PERSONA_ONLY if getattr(self, k) != defaults[k]]
            if unused:
                raise ValueError(f"retail histories have no personas: {', '.join(unused)} unused")

    def window(self, days: int) -> tuple[int, int]:
        """The days (inclusive) migrations fall in, for a history of `days` days.

        >>> HistoryShape().window(90), HistoryShape(migrate_from_day=50).window(90)
        ((30, 76), (50, 76))
        """
        lo = days // 3 if self.migrate_from_day is None else self.migrate_from_day
        hi = max(days - 14, lo) if self.migrate_to_day is None else self.migrate_to_day
        if not lo <= hi < days:
            raise ValueError(
                f"migrate_from_day <= migrate_to_day < days ({days}) must hold, got {lo}, {hi}"
            )
        return lo, hi

    def with_options(self, **options: Any) -> HistoryShape:
        """This shape with the options that are not None replaced (CLI overrides).

        >>> SHAPES["seasonal"].with_options(weekend=0.3, activity=None).weekend
        0.3
        """
        return replace(self, **{k: v for k, v in options.items() if v is not None})


#: Named presets: the family of histories benchmarks and tests run over. `sudden` is the
#: generator's original output.
SHAPES: dict[str, HistoryShape] = {
    "sudden": HistoryShape(),
    "gradual": HistoryShape(migration="gradual"),
    "partial": HistoryShape(changes="purchase"),
    "close": HistoryShape(separation=0.5),
    "far": HistoryShape(separation=1.6),
    "low-activity": HistoryShape(activity=0.3),
    "high-activity": HistoryShape(activity=3.0),
    "seasonal": HistoryShape(weekend=0.5),
    "overdispersed": HistoryShape(dispersion=1.0),
    "redrawn": HistoryShape(persona_spread=0.7),
    "retail": HistoryShape(kind="retail"),
}

#: One line per preset, for `segstream generate --help` and the README.
SHAPE_HELP: dict[str, str] = {
    "sudden": "today's history: a migrating customer switches every rate on one day",
    "gradual": "migrations drift from the old persona's rates to the new over 2 to 4 weeks",
    "partial": "a migration changes only the purchase rate; the other behaviours stay",
    "close": "personas half as far apart (log rates scaled x0.5 around their mean)",
    "far": "personas farther apart (log rates scaled x1.6 around their mean)",
    "low-activity": "every rate x0.3",
    "high-activity": "every rate x3",
    "seasonal": "weekend rates x0.5 (a B2B product)",
    "overdispersed": "negative binomial daily counts, variance = mean + mean^2",
    "redrawn": "each seed redraws the personas: every rate and amount x a lognormal factor, "
    "sigma 0.7",
    "retail": "purchase events only: most customers buy once or twice, a few keep buying",
}
