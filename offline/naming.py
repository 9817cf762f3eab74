"""Segment profiles and business names.

Owns `profile_segments` (size, share, and per feature the segment's mean and median
against the population's, with the standardized difference in the scaled space) and
`name_segments` (deterministic rules on those profiles, unique names, config overrides).

Must not import `stream/`, matplotlib or the other trainer steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: A segment stands out on a feature when its mean in the scaled space is this many
#: population standard deviations away from the population mean.
NOTABLE_Z = 0.5

#: Behavioral names and the features that signal them (the strongest one counts).
BEHAVIORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Power Users", ("feature_uses_30d", "distinct_features_30d", "feature_uses_90d")),
    ("Big Spenders", ("revenue_30d", "avg_order_value_90d", "revenue_90d", "purchases_30d")),
    ("Support-Heavy", ("support_tickets_30d", "support_tickets_90d")),
    ("Email Readers", ("email_opens_30d", "email_opens_90d")),
)
#: Life-stage names take precedence: a silent or brand-new group is that first.
LAPSING, LAPSING_FEATURE, LAPSING_Z = "Lapsing", "days_since_last_event", 1.0
NEW, NEW_FEATURE, NEW_Z = "New Customers", "tenure_days", -1.0
FALLBACK = "Casual"


@dataclass(frozen=True)
class SegmentProfile:
    """What sets one segment apart."""

    id: int
    size: int
    share: float
    #: feature -> {"z", "mean", "median", "pop_mean", "pop_median"}
    features: dict[str, dict[str, float]] = field(default_factory=dict)

    def z(self, feature: str) -> float | None:
        stats = self.features.get(feature)
        return None if stats is None else stats["z"]

    def top(self, n: int = 5) -> list[str]:
        """The n features with the largest |z|."""
        ranked = sorted(self.features, key=lambda f: (-abs(self.features[f]["z"]), f))
        return ranked[:n]

    def to_dict(self, n_top: int = 6) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "share": round(self.share, 6),
            "top_features": [{"feature": f, **self.features[f]} for f in self.top(n_top)],
        }


def profile_segments(
    raw: pd.DataFrame,
    scaled: np.ndarray,
    columns: Sequence[str],
    labels: np.ndarray,
    k: int,
    ids: Sequence[int] | None = None,
) -> list[SegmentProfile]:
    """Per-segment profiles: `raw` is the catalog features (one row per customer),
    `scaled` the same customers in the scaled space with `columns`, `labels` their ids
    (0..k-1, or the segment ids `ids` when given, in that order).

    >>> raw = pd.DataFrame({"x": [0.0, 0.0, 10.0, 12.0]})
    >>> scaled = np.array([[-1.0], [-1.0], [0.9], [1.1]])
    >>> [p.z("x") for p in profile_segments(raw, scaled, ["x"], np.array([0, 0, 1, 1]), 2)]
    [-1.0, 1.0]
    """
    n = len(labels)
    pop_mean = raw[list(columns)].mean()
    pop_median = raw[list(columns)].median()
    profiles = []
    for seg in range(k) if ids is None else ids:
        rows = labels == seg
        part = raw.loc[rows, list(columns)]
        z = scaled[rows].mean(axis=0) if rows.any() else np.zeros(len(columns))
        stats = {
            col: {
                "z": round(float(z[j]), 4),
                "mean": round(float(part[col].mean()), 4),
                "median": round(float(part[col].median()), 4),
                "pop_mean": round(float(pop_mean[col]), 4),
                "pop_median": round(float(pop_median[col]), 4),
            }
            for j, col in enumerate(columns)
        }
        size = int(rows.sum())
        profiles.append(SegmentProfile(id=seg, size=size, share=size / n, features=stats))
    return profiles


def _signal(profile: SegmentProfile, features: Sequence[str]) -> float:
    values = [z for f in features if (z := profile.z(f)) is not None]
    return max(values) if values else float("-inf")


def rule_name(profile: SegmentProfile) -> str:
    """The business name the rules give one profile (not yet made unique).

    >>> rule_name(SegmentProfile(0, 10, 0.1, {"support_tickets_30d": {"z": 2.0}}))
    'Support-Heavy'
    >>> rule_name(SegmentProfile(0, 10, 0.1, {"tenure_days": {"z": -1.5}}))
    'New Customers'
    """
    recency = profile.z(LAPSING_FEATURE)
    if recency is not None and recency >= LAPSING_Z:
        return LAPSING
    tenure = profile.z(NEW_FEATURE)
    if tenure is not None and tenure <= NEW_Z:
        return NEW
    best, best_z = FALLBACK, NOTABLE_Z
    for candidate, signals in BEHAVIORS:
        z = _signal(profile, signals)
        if z > best_z:
            best, best_z = candidate, z
    return best


def name_segments(
    profiles: Sequence[SegmentProfile],
    overrides: Mapping[str, str] | None = None,
    kept: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """Unique names for the segments: rule names, config overrides (`{"2": "Whales"}`) win,
    then `kept` names (segments that keep their name from the previous bundle), and a
    repeated name gets " 2", " 3"... in segment id order.

    >>> ps = [SegmentProfile(i, 1, 0.5, {"email_opens_30d": {"z": 1.0}}) for i in range(2)]
    >>> name_segments(ps)
    {0: 'Email Readers', 1: 'Email Readers 2'}
    >>> name_segments(ps, {"1": "Newsletter Fans"})
    {0: 'Email Readers', 1: 'Newsletter Fans'}
    >>> name_segments(ps, kept={1: "Email Readers"})
    {0: 'Email Readers 2', 1: 'Email Readers'}
    """
    ids = [p.id for p in profiles]
    overrides = dict(overrides or {})
    unknown = [key for key in overrides if not key.isdigit() or int(key) not in ids]
    if unknown:
        raise ValueError(
            f"[segments.names]: no segment {', '.join(unknown)} (ids are {ids[0]}..{ids[-1]})"
        )
    fixed = {int(key): str(value) for key, value in overrides.items()}
    if len(set(fixed.values())) != len(fixed):
        raise ValueError("[segments.names]: two segments are given the same name")
    for seg, name in (kept or {}).items():
        if seg in fixed or seg not in ids:
            continue
        if name in fixed.values():
            raise ValueError(
                f"[segments.names]: {name!r} is the name segment {seg} keeps from the "
                "previous bundle"
            )
        fixed[seg] = name
    names: dict[int, str] = {}
    taken = set(fixed.values())
    for p in profiles:
        if p.id in fixed:
            names[p.id] = fixed[p.id]
            continue
        base = rule_name(p)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base} {n}"
        taken.add(name)
        names[p.id] = name
    return names
