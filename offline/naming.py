"""Segment profiles and business names, with the reason for each name.

Owns `profile_segments` (size, share, and per feature the segment's mean and median
against the population's, with the standardized difference in the scaled space; plus the
segment's median days since its last event, an absolute recency the clustering does not
see) and `name_segments` / `explain_names` (deterministic rules on those profiles, config
overrides, names kept from the previous bundle, and the rule and numbers behind each).
`identity_shares` records which values (features) each segment's members use.

Names are unique without numeric suffixes: when two segments would get the same
behavioural name, each is qualified by the trait that sets it apart from the others of
that name ("Big Spenders (frequent)" and "Big Spenders (high order value)"). The lapsing
rule is absolute (the segment's median silence in days), never relative to a population
that may itself be mostly lapsed.

Must not import `stream/`, matplotlib or the other trainer steps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.catalog import SECONDS_PER_DAY, Identity

#: Values of an identity (`Catalog.identity`) whose shares a bundle records: the most
#: used ones; the rest share the remainder (a catalog may count thousands of page names).
MAX_SHARE_VALUES = 32

#: A segment stands out on a feature when its mean in the scaled space is this many
#: population standard deviations away from the population mean.
NOTABLE_Z = 0.5

#: Behavioral names and the features that signal them (the strongest one counts). The
#: signals are intensities over the longest window (and lifetime totals when the catalog
#: has them), not the 7- or 30-day counts: in a purchase log those mostly say *when* a
#: customer last bought, and every recent buyer would be a "Big Spender".
BEHAVIORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Power Users", ("feature_uses_90d", "distinct_features_90d", "feature_uses_lifetime")),
    ("Big Spenders", ("revenue_90d", "avg_order_value_90d", "purchases_90d", "revenue_lifetime")),
    ("Support-Heavy", ("support_tickets_90d", "support_tickets_lifetime")),
    ("Email Readers", ("email_opens_90d", "email_opens_lifetime")),
)
#: Life-stage names take precedence: a silent or brand-new group is that first. Lapsing
#: is absolute: a segment whose customers' median silence reaches `LAPSING_DAYS`.
LAPSING, LAPSING_FEATURE, LAPSING_DAYS = "Lapsing", "days_since_last_event", 30.0
NEW, NEW_FEATURE, NEW_Z = "New Customers", "tenure_days", -1.0
FALLBACK = "Casual"

#: How a qualifier reads a feature stem (the name without its window), when a segment
#: is above (first) or below (second) the others sharing its name.
TRAITS: dict[str, tuple[str, str]] = {
    "events": ("busy", "quiet"),
    "sessions": ("many sessions", "few sessions"),
    "feature_uses": ("heavy use", "light use"),
    "distinct_features": ("broad use", "narrow use"),
    "purchases": ("frequent", "occasional"),
    "revenue": ("high spend", "low spend"),
    "avg_order_value": ("high order value", "small baskets"),
    "support_tickets": ("many tickets", "few tickets"),
    "email_opens": ("email readers", "ignore email"),
    "active_days": ("regular", "irregular"),
    "avg_days_between_purchases": ("slow to return", "quick to return"),
}


@dataclass(frozen=True)
class SegmentProfile:
    """What sets one segment apart."""

    id: int
    size: int
    share: float
    #: feature -> {"z", "mean", "median", "pop_mean", "pop_median"}
    features: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Median days since the customers' last event (None when the catalog has no
    #: `days_since_last_event`).
    silent_days: float | None = None
    #: sum feature -> the members' median value per event (sum over count, members
    #: with at least one such event): their typical purchase amount.
    typical: dict[str, float] = field(default_factory=dict)

    @property
    def lapsing(self) -> bool:
        """A segment of silent customers: its members' median silence is `LAPSING_DAYS`
        or more. Moves out of it are reactivations, and no new customer is placed in it
        from its first weeks (`offline.steps.fit_early`)."""
        return self.silent_days is not None and self.silent_days >= LAPSING_DAYS

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
            "means": {f: stats["mean"] for f, stats in sorted(self.features.items())},
            "typical": dict(sorted(self.typical.items())),
        }


def profile_segments(
    raw: pd.DataFrame,
    scaled: np.ndarray,
    columns: Sequence[str],
    labels: np.ndarray,
    k: int,
    ids: Sequence[int] | None = None,
    valued: Mapping[str, str] | None = None,
) -> list[SegmentProfile]:
    """Per-segment profiles: `raw` is the catalog features (one row per customer),
    `scaled` the same customers in the scaled space with `columns`, `labels` their ids
    (0..k-1, or the segment ids `ids` when given, in that order). `valued` (sum feature
    -> count feature, `Catalog.valued_counts`) gives the typical values per event.

    A median over the members, not the ratio of the means: a "Casual" segment also holds
    fading big spenders, whose rare large baskets would pull a mean far above what its
    casual members pay.

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
        silent = (
            round(float(raw.loc[rows, LAPSING_FEATURE].median()), 4)
            if LAPSING_FEATURE in raw.columns and rows.any()
            else None
        )
        typical = {}
        for total, count in (valued or {}).items():
            if total in raw.columns and count in raw.columns:
                n_events = raw.loc[rows, count].to_numpy(dtype=float)
                buyers = n_events > 0
                if buyers.any():
                    per = raw.loc[rows, total].to_numpy(dtype=float)[buyers] / n_events[buyers]
                    typical[total] = round(float(np.median(per)), 4)
        profiles.append(
            SegmentProfile(seg, size, size / n, stats, silent_days=silent, typical=typical)
        )
    return profiles


def _signal(profile: SegmentProfile, features: Sequence[str]) -> tuple[float, str]:
    values = [(z, f) for f in features if (z := profile.z(f)) is not None]
    return max(values) if values else (float("-inf"), "")


def rule_name(profile: SegmentProfile) -> str:
    """The business name the rules give one profile (not yet made unique).

    >>> rule_name(SegmentProfile(0, 10, 0.1, {"support_tickets_90d": {"z": 2.0}}))
    'Support-Heavy'
    >>> rule_name(SegmentProfile(0, 10, 0.1, {"tenure_days": {"z": -1.5}}))
    'New Customers'
    >>> rule_name(SegmentProfile(0, 10, 0.1, {}, silent_days=45.0))
    'Lapsing'
    """
    return rule_reason(profile)[0]


def rule_reason(profile: SegmentProfile) -> tuple[str, str]:
    """The rule name of one profile and why (the rule and its numbers)."""
    if profile.lapsing:
        return LAPSING, (
            f"median {profile.silent_days:.0f} days since the last event, "
            f">= {LAPSING_DAYS:.0f} (an absolute rule)"
        )
    tenure = profile.z(NEW_FEATURE)
    if tenure is not None and tenure <= NEW_Z:
        return NEW, f"{NEW_FEATURE} z={tenure:+.1f} <= {NEW_Z:+.1f}"
    best, best_z, why = FALLBACK, NOTABLE_Z, ""
    strongest = (float("-inf"), "")
    for candidate, signals in BEHAVIORS:
        z, feature = _signal(profile, signals)
        strongest = max(strongest, (z, feature))
        if z > best_z:
            best, best_z, why = candidate, z, f"{feature} z={z:+.1f}, the highest signal"
    if best != FALLBACK:
        return best, f"{why} above {NOTABLE_Z} among the behaviours' signals"
    if strongest[1]:
        return FALLBACK, (
            f"no behaviour signal above z={NOTABLE_Z} (strongest: {strongest[1]} "
            f"z={strongest[0]:+.1f})"
        )
    return FALLBACK, "no behaviour signal in the clustered features"


def _stem(feature: str) -> str:
    """A feature's name without its window ("purchases_30d" -> "purchases")."""
    return re.sub(r"_(\d+d|lifetime)$", "", feature)


def trait(feature: str, high: bool) -> str:
    """How a qualifier reads a feature.

    >>> trait("purchases_30d", True), trait("avg_order_value_90d", True), trait("x_7d", False)
    ('frequent', 'high order value', 'low x')
    """
    stem = _stem(feature)
    words = TRAITS.get(stem)
    if words is not None:
        return words[0] if high else words[1]
    return f"{'high' if high else 'low'} {stem.replace('_', ' ')}"


def _qualifiers(group: Sequence[SegmentProfile]) -> dict[int, tuple[str, str]]:
    """For segments sharing one name: each one's distinguishing trait and why, the feature
    on which it stands farthest (in z) above or below the mean of the others of the group;
    a trait already given to another member is skipped."""
    out: dict[int, tuple[str, str]] = {}
    used: set[str] = set()
    ranked = []
    for p in group:
        others = [o for o in group if o.id != p.id]
        options = []
        for f in p.features:
            zs = [o.z(f) for o in others]
            if not others or any(z is None for z in zs):
                continue
            z, rest = p.features[f]["z"], float(np.mean([float(v) for v in zs if v is not None]))
            options.append((abs(z - rest), f, z > rest, z, rest))
        options.sort(key=lambda o: (-o[0], o[1]))
        ranked.append((options[0][0] if options else 0.0, p, options))
    # The most distinct segment chooses first, so it gets its best trait.
    for _, p, options in sorted(ranked, key=lambda r: (-r[0], r[1].id)):
        for _gap, f, high, z, rest in options:
            word = trait(f, high)
            if word in used:
                continue
            used.add(word)
            n = len(group) - 1
            where = "in the other" if n == 1 else f"on average in the {n} others"
            out[p.id] = (word, f"{f} z={z:+.1f} vs {rest:+.1f} {where} of that name")
            break
    return out


def name_segments(
    profiles: Sequence[SegmentProfile],
    overrides: Mapping[str, str] | None = None,
    kept: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """Unique names for the segments: rule names, config overrides (`{"2": "Whales"}`) win,
    then `kept` names (segments that keep their name from the previous bundle); segments
    the rules would give one name are told apart by a trait.

    >>> ps = [SegmentProfile(0, 1, 0.5, {"email_opens_90d": {"z": 1.0},
    ...                                  "sessions_30d": {"z": 0.8}}),
    ...       SegmentProfile(1, 1, 0.5, {"email_opens_90d": {"z": 1.2},
    ...                                  "sessions_30d": {"z": -0.4}})]
    >>> name_segments(ps)
    {0: 'Email Readers (many sessions)', 1: 'Email Readers (few sessions)'}
    >>> name_segments(ps, {"1": "Newsletter Fans"})
    {0: 'Email Readers', 1: 'Newsletter Fans'}
    """
    return {seg: name for seg, (name, _) in explain_names(profiles, overrides, kept).items()}


def explain_names(
    profiles: Sequence[SegmentProfile],
    overrides: Mapping[str, str] | None = None,
    kept: Mapping[int, str] | None = None,
) -> dict[int, tuple[str, str]]:
    """`name_segments` with the reason for each name: segment id -> (name, why)."""
    ids = [p.id for p in profiles]
    overrides = dict(overrides or {})
    unknown = [key for key in overrides if not key.isdigit() or int(key) not in ids]
    if unknown:
        raise ValueError(
            f"[segments.names]: no segment {', '.join(unknown)} (ids are {ids[0]}..{ids[-1]})"
        )
    fixed = {int(key): (str(value), "set in the config") for key, value in overrides.items()}
    if len({name for name, _ in fixed.values()}) != len(fixed):
        raise ValueError("[segments.names]: two segments are given the same name")
    for seg, name in (kept or {}).items():
        if seg in fixed or seg not in ids:
            continue
        if name in {n for n, _ in fixed.values()}:
            raise ValueError(
                f"[segments.names]: {name!r} is the name segment {seg} keeps from the "
                "previous bundle"
            )
        fixed[seg] = (name, "kept from the previous bundle (same segment)")
    rules = {p.id: rule_reason(p) for p in profiles}
    free = [p for p in profiles if p.id not in fixed]
    taken = {name for name, _ in fixed.values()}
    by_name: dict[str, list[SegmentProfile]] = {}
    for p in free:
        by_name.setdefault(rules[p.id][0], []).append(p)
    names = dict(fixed)
    for base, group in by_name.items():
        if len(group) == 1 and base not in taken:
            names[group[0].id] = rules[group[0].id]
            continue
        # Qualify against every segment of that base name, the fixed ones too.
        rivals = [p for p in profiles if p.id in fixed and fixed[p.id][0] == base]
        quals = _qualifiers([*group, *rivals])
        for p in group:
            word, why = quals.get(p.id, (f"segment {p.id}", "no trait tells it apart"))
            names[p.id] = (f"{base} ({word})", f"{rules[p.id][1]}; told apart by {why}")
    # A qualified name may still collide with a fixed one: the last resort is the id.
    seen: set[str] = set()
    for seg in sorted(names, key=lambda i: (i not in fixed, i)):
        name, why = names[seg]
        if name in seen:
            names[seg] = (f"{name} [{seg}]", why)
        seen.add(names[seg][0])
    return {p.id: names[p.id] for p in profiles}


def identity_shares(
    frame: pd.DataFrame,
    names: Sequence[Sequence[str]],
    identity: Identity | None,
    labels: pd.Series,
    as_of: float,
) -> dict[int, dict[str, dict[str, float]]]:
    """Per segment id (`labels`: customer id -> segment), its members' share of each value
    of `identity` among their distinct (customer, day, value) triples in the `recent_days`
    up to `as_of` (the profile window), for the `MAX_SHARE_VALUES` most used values:
    `{segment: {identity.key: {value: share}}}`. The shares of a segment sum to at most
    1; the rest is its other values'. `frame` is an `offline.reference.events_frame`,
    `names` what its distinct numbers stand for (per distinct); empty without them.

    Counted per day, not per event, as the stream reads a customer's own shares from
    its days (`stream.state.StateCodec.aggregate`).
    """
    if identity is None or identity.slot >= len(names):
        return {}
    code = f"m:d{identity.slot}"
    ts = frame["ts"].to_numpy()
    keep = (ts <= as_of) & (ts > as_of - identity.recent_days * SECONDS_PER_DAY)
    keep &= frame[code].to_numpy() >= 0
    seen = frame.loc[keep, ["customer_id", "day", code]].drop_duplicates()
    seg = seen["customer_id"].map(labels)
    seen = seen[seg.notna().to_numpy()]
    if seen.empty:
        return {}
    table = seen.groupby([seg.dropna().astype(int).to_numpy(), seen[code].to_numpy()]).size()
    counts = table.unstack(fill_value=0)
    top = counts.sum(axis=0).sort_values(ascending=False, kind="stable").index[:MAX_SHARE_VALUES]
    shares = counts[top].div(counts.sum(axis=1), axis=0)
    values = names[identity.slot]
    out: dict[int, dict[str, dict[str, float]]] = {}
    for s, row in zip(shares.index.tolist(), shares.to_numpy().tolist(), strict=True):
        listed = zip(shares.columns.tolist(), row, strict=True)
        out[int(s)] = {identity.key: {values[int(c)]: round(v, 5) for c, v in listed if v > 0}}
    return out
