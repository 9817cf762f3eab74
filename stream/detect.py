"""Early migration evidence: each segment a profile of daily event rates, and a CUSUM.

Owns `RateProfiles` (read once per bundle from its centroids and the catalog's count
features) and `Evidence`, the per-customer sequential test the decider runs at each of
the customer's own events: for every other segment s, a CUSUM of the log-likelihood
ratio of the customer's daily counts of each event type (negative binomial, with the
customer's own burstiness: `RateProfiles.dispersion`) under s's rates against the better
of two explanations of "nothing changed":

- the customer's own baseline: its rates over the long window minus the latest profile
  window (in the default catalog, days 31 to 90 back), so an atypical but steady customer
  raises no evidence, and a change of the last weeks, sudden or drifting, is judged
  against the customer from before it;
- the rates of its current segment, so a customer who did move is not pulled back by a
  baseline that still remembers the old behaviour.

A purchase also says something by its amount: where the catalog sums a property of one
counted event type (the default's `revenue_*d`, `amount` of `purchase`), each segment gets
a typical value (its members' median value per event, `SegmentRecord.typical`), and an
event's value adds
the log-likelihood ratio of its log under that segment against the customer's own and its
current segment's (a lognormal of spread `AMOUNT_SIGMA`, at most `AMOUNT_CAP` nats an
event). A casual customer who starts buying like a big spender shows it in one or two
purchases, long before its purchase rate alone would.

Which values a customer uses says something too: where the catalog counts the distinct
values of a property of one event type (`Catalog.identity`: the default's `feature` of
`feature_used`), the trainer records each segment's share of every value
(`SegmentRecord.shares`), the store reads on how many of its days before the latest 30
the customer used each value (`stores.Features.own`), and each such event adds the
log-likelihood ratio of its value under a segment's shares against the customer's own and
its current segment's (at most `SHARE_CAP` nats an event). A power user who turns to
support-heavy work shows it in the features it opens, before the counts move.

A crossing is not always a change: a customer the early-life classifier misplaced raises
evidence for its own segment once the evidence governs it. `RateProfiles.misfit` reads
the customer's baseline counts against both segments, and the decider makes a crossing
whose baseline already fits the destination a correction, not a migration.

The 30- and 90-day windows move slowly after a change; the events themselves do not, so
the evidence crosses its threshold within days of a sudden switch. A busy customer's
threshold grows with the log of its event rate (`Evidence.threshold_for`): each event is
a step of the test, so it would otherwise raise more false alarms a day than a quiet one;
for a move to a quieter segment, the slow kind, the rate is the quieter one's.
The destination is the segment with the most evidence. The state is `k` float16 sums and
the time of the last update, packed into a few bytes (`pack`/`unpack`); it changes at the
customer's events (silence is accounted for at the next one, or at the daily re-score on
the event clock), so it is the same whatever the batching.

Imports numpy, the catalog and the bundle's space only; `stream.decide` calls it, the
engine builds it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np

from models.bundle import Bundle, ScaledSpace
from models.catalog import Catalog, Identity
from stream.fold import value_number

DAY: Final = 86_400.0
#: Rates below this (per day) are raised to it: a segment that "never" does something
#: would make one such event infinite evidence.
RATE_FLOOR: Final = 0.003
#: Days of the current segment's rates mixed into a customer's own baseline (a prior):
#: a customer with few days of history is judged mostly against its segment.
PRIOR_DAYS: Final = 7.0
#: The spread (standard deviation of the log, in nats) of one event's value around its
#: segment's typical value. Wider than the generator's personas (0.4 to 0.6) on purpose:
#: real amounts vary more within a customer, and a narrow spread would make every unusual
#: basket strong evidence.
AMOUNT_SIGMA: Final = 1.0
#: The most evidence (nats, either way) one value can give: no single purchase moves a
#: customer alone (the default threshold is 8, more for a busy customer).
AMOUNT_CAP: Final = 4.0
#: Bounds of a customer's negative-binomial size (`RateProfiles.dispersion`): the upper
#: one is Poisson for all purposes.
MIN_SIZE: Final = 0.1
MAX_SIZE: Final = 1e6
#: Events of the current segment's typical value mixed into the customer's own (a prior).
PRIOR_VALUES: Final = 2.0
#: Events per member of all segments' typical value mixed into a segment's own.
VALUE_PRIOR_EVENTS: Final = 0.05
#: The least share of a value (of the identity's, `ShareProfile`): a segment whose
#: members never used a value would make one use of it infinite evidence. One (day, value)
#: pair in about 300: a feature a segment's members rarely open says almost as much as
#: one they never do (0.01 before: it held the evidence of a feature outside a segment's
#: habits to log(share / 0.01), about 3 nats, on seed 101 a day slower on the gradual,
#: seasonal and overdispersed shapes at the same precision).
SHARE_FLOOR: Final = 0.003
#: The most evidence (nats, either way) one event's value gives: as much as an amount's
#: (`AMOUNT_CAP`). A value counts once a UTC day (`Evidence.update`), so a session that
#: opens one unusual feature many times is one value's worth.
SHARE_CAP: Final = 4.0
#: (Day, value) pairs of a prior mixed into a customer's own shares: the segments' shares
#: weighted by how well each explains its days (`ShareProfile.own_shares`).
PRIOR_PAIRS: Final = 20.0
#: Segments whose evidence is within this many nats of the leader's when it crosses are a
#: near tie (e^2: odds under 7.4 to 1): the alert names the leader and carries the
#: runner-up (`Evidence.runner_up`), and with `tie_wait` the alert waits.
TIE_NATS: Final = 2.0
#: Up to this event rate (events a day, of the modelled types) a customer's threshold is
#: the configured one; above it, the configured one plus the log of its rate over this
#: (`Evidence.threshold_for`). Quieter customers' thresholds do not fall below it: their
#: baselines rest on few events, and their false alarms do not fall with their rates (with
#: the log below it too, down to 0.1 a day, low activity's precision fell to 0.85 on seed
#: 101, docs/migration-detector.md).
THRESHOLD_RATE: Final = 1.0


@dataclass(frozen=True)
class ValueProfile:
    """Per segment, the typical value of one property on the events of one rate column
    (the default catalog: `amount` of `purchase`), and where to read the customer's own
    sum of it in a feature row (`long_col`, `recent_col`: the same windows as the count's,
    `RateProfiles.long_cols`/`recent_cols`)."""

    column: int
    property: str
    log_typical: np.ndarray  # (segments,) log of the segment's typical value per event
    long_col: int
    recent_col: int

    def value(self, properties: Mapping[str, object] | None) -> float | None:
        """The log of an event's value, None when it has none (or none above 0)."""
        got = (properties or {}).get(self.property)
        if isinstance(got, bool) or not isinstance(got, int | float) or not got > 0:
            return None
        return math.log(float(got)) if math.isfinite(got) else None


@dataclass(frozen=True)
class ShareProfile:
    """Per segment, the share of each value of the catalog's `identity` among its members'
    distinct (day, value) pairs; the last column holds the values the bundle did not list
    (each segment's remainder). `prints` maps a listed value's fingerprint
    (`stream.fold.value_number`, as the store keeps it) to its column."""

    identity: Identity
    index: Mapping[str, int]  # value -> column
    prints: Mapping[int, int]  # value fingerprint -> column
    log_share: np.ndarray  # (segments, values + 1)

    def observe(self, kind: str, properties: Mapping[str, object] | None) -> tuple[int, int] | None:
        """An event's value: its column and its bit in a day's mask of the values counted
        (0-31, from its fingerprint); None for an event of another type, or no value."""
        key = self.identity.value(kind, properties)
        if key is None:
            return None
        bit = value_number(key) % 32
        return self.index.get(key, len(self.index)), bit

    def own_shares(self, own: Mapping[int, float]) -> np.ndarray:
        """A customer's own share of every column, from the days it used each value
        before its latest weeks (`own`), with `PRIOR_PAIRS` pairs of a prior: the
        segments' shares weighted by how well each explains those days (their posterior
        under equal odds). A customer spread over many values has seen most of them on
        a day or two; a prior of its own segment's shares would make each of them look
        rare for it, and a misplaced customer (a power user the early classifier put among
        the support-heavy) would raise evidence from its own steady use.

        >>> segments = [{"f.x": {"a": 0.9}}, {"f.x": {"b": 0.9}}]
        >>> p = share_profile(Identity(0, "f", "x", 90, 30), segments)
        >>> p.own_shares({value_number("a"): 3.0}).round(2).tolist()  # a, b, the rest
        [0.91, 0.0, 0.09]
        """
        width = self.log_share.shape[1]
        days = np.zeros(width)
        for fp, d in own.items():
            days[self.prints.get(fp, width - 1)] += d
        known = ~np.isnan(self.log_share[:, 0])
        fit = self.log_share[known] @ days
        weight = np.exp(fit - fit.max())
        prior = weight @ np.exp(self.log_share[known]) / weight.sum()
        mixed: np.ndarray = (days + PRIOR_PAIRS * prior) / (days.sum() + PRIOR_PAIRS)
        return mixed

    def terms(
        self, column: int, current: int, own: Mapping[int, float] | None
    ) -> tuple[list[float], list[float]]:
        """Per segment, the log-likelihood ratio of one event's value (`column`) under its
        shares against the customer's own share (`own_shares`; none read: its current
        segment's) and against its current segment's (position `current`), within
        +-`SHARE_CAP`.

        >>> f = Identity(0, "f", "x", 90, 30)
        >>> p = ShareProfile(f, {"a": 0}, {}, np.log(np.array([[0.9, 0.1], [0.1, 0.9]])))
        >>> [round(v, 2) for v in p.terms(0, 1, None)[1]]
        [2.2, 0.0]
        """
        row = self.log_share[:, column]
        # NaN (a segment without shares, `share_profile`) gives no evidence: 0.
        seg = np.nan_to_num(np.clip(row - row[current], -SHARE_CAP, SHARE_CAP))
        if own is None:
            return seg.tolist(), seg.tolist()
        mine = self.own_shares(own)[column]
        vs_own = np.clip(row - math.log(max(mine, SHARE_FLOOR)), -SHARE_CAP, SHARE_CAP)
        return np.nan_to_num(vs_own).tolist(), seg.tolist()


def share_profile(
    identity: Identity | None, shares: Sequence[Mapping[str, Mapping[str, float]]]
) -> ShareProfile | None:
    """The bundle's recorded shares (`SegmentRecord.shares`, one mapping per segment in
    `space.segment_ids` order) of the catalog's identity; None when no segment has any
    (an older bundle, a catalog without the identity, a log without its values). A
    segment without shares (its members used no value in the profile window) has a row
    of NaN: no evidence either way (`ShareProfile.terms`)."""
    if identity is None or not shares:
        return None
    got = [s.get(identity.key) or {} for s in shares]
    if not any(got):
        return None
    values = sorted({v for g in got for v in g})
    index = {v: i for i, v in enumerate(values)}
    table = np.zeros((len(got), len(values) + 1))
    for r, g in enumerate(got):
        for v, share in g.items():
            table[r, index[v]] = share
        table[r, -1] = 1.0 - table[r, :-1].sum()
    log_share = np.log(np.maximum(table, SHARE_FLOOR))
    log_share[[not g for g in got]] = np.nan
    prints = {value_number(v): i for v, i in index.items()}
    return ShareProfile(identity, index, prints, log_share)


@dataclass(frozen=True)
class Terms:
    """What `Evidence.prepare` computes for one customer at one evaluation (see there)."""

    event: list[float]  # [s] for the row's event type, against the customer's own baseline
    gap: list[float]  # [s] per day, against the same
    seg_event: list[float]  # [s] for the row's event type, against its current segment
    seg_gap: list[float]  # [s] per day, against the same
    scale: float
    own_value: float  # log of the customer's own typical value (with the prior)


@dataclass(frozen=True)
class RateProfiles:
    """Per-segment daily rates of the event types the catalog counts, and where to read a
    customer's own counts of them in a feature row.

    Column m of `rates` is event type `types[m]`; the last column ("other") holds every
    other type when the catalog counts events of any type. `long_cols`/`recent_cols` are
    the catalog columns of each column's counts over the longest window and over the
    latest `recent_days` that the baseline leaves out (for "other": the any-type counts;
    the typed ones are subtracted).

    The recent window is the profile window (30 days in the default catalog) when it is
    shorter than the long one, else the shortest. It was the shortest (7 days) before:
    a drift over 2 to 4 weeks then leaked into the baseline it was judged against, and
    on the gradual shape (seed 101) recall was 0.88 where leaving out 30 days gives 0.98.
    """

    types: tuple[str, ...]
    other: bool
    rates: np.ndarray  # (segments, columns) per-day rates, rows in segment-id order
    long_cols: tuple[int, ...]
    recent_cols: tuple[int, ...]
    long_days: float
    recent_days: float
    profile_days: float
    #: Catalog column of the long window's active days (None: no
    #: dispersion estimate, the events are taken as Poisson).
    active_col: int | None = None
    #: The typical value of each segment's events of one column (None: no values).
    values: ValueProfile | None = None
    #: Each segment's shares of the identity's values (None: not read).
    shares: ShareProfile | None = None

    @property
    def columns(self) -> int:
        return len(self.types) + int(self.other)

    def column(self, event_type: str) -> int | None:
        """The rate column an event of `event_type` counts in (None: not modelled)."""
        try:
            return self.types.index(event_type)
        except ValueError:
            return len(self.types) if self.other else None

    def counts(self, x: np.ndarray, cols: Sequence[int]) -> np.ndarray:
        """Per rate column, the counts of the feature columns `cols` in rows `x` (n, catalog)."""
        got = x[:, list(cols)]
        if self.other:
            got[:, -1] = np.maximum(got[:, -1] - got[:, :-1].sum(axis=1), 0.0)
        return got

    def baseline_counts(self, x: np.ndarray, tenure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row, its counts per rate column over its baseline (the long window without
        the latest `recent_days`), and the baseline's days."""
        own = np.maximum(self.counts(x, self.long_cols) - self.counts(x, self.recent_cols), 0.0)
        days = np.clip(np.minimum(tenure, self.long_days) - self.recent_days, 0.0, None)
        return own, days

    def baseline(self, x: np.ndarray, tenure: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Each row's own daily rates before its latest `recent_days`, with the rates of
        its current segment (`current`: row positions in `rates`) as a prior."""
        own, days = self.baseline_counts(x, tenure)
        prior = self.rates[current] * PRIOR_DAYS
        rates: np.ndarray = np.maximum((own + prior) / (days + PRIOR_DAYS)[:, None], RATE_FLOOR)
        return rates

    def misfit(self, x: np.ndarray, tenure: float, current: int, other: int) -> float:
        """How much better (nats) segment `other` explains a customer's baseline counts
        (row `x`: its long window without the latest `recent_days`) than `current` (row
        positions in `rates`): the lesser of two log-likelihood ratios, of the mix of its
        event types (multinomial) and of their volume (Poisson over the baseline's days).

        Both must favour `other`: in a low-activity bundle two segments may differ by
        volume alone (a casual customer's mix then "fits" the support-heavy segment), and
        in a close-together one by mix alone.

        >>> p = RateProfiles(("a", "b"), False, np.array([[1.0, 0.1], [0.1, 1.0]]), (0, 1),
        ...                  (2, 3), 90.0, 30.0, 30.0)
        >>> row = np.array([6.0, 60.0, 2.0, 20.0])  # 40 b and 4 a in days 31 to 90
        >>> round(p.misfit(row, 120.0, 0, 1), 1), round(p.misfit(row, 120.0, 1, 0), 1)
        (82.9, -82.9)
        """
        counts, days = self.baseline_counts(x[None, :], np.array([tenure]))
        own = counts[0]
        r = np.maximum(self.rates[[current, other]], RATE_FLOOR)
        mix = np.log(r / r.sum(axis=1, keepdims=True))
        by_mix = float(own @ (mix[1] - mix[0]))
        by_volume = float(own @ np.log(r[1] / r[0]) - float(days[0]) * (r[1].sum() - r[0].sum()))
        return min(by_mix, by_volume)

    def dispersion(self, x: np.ndarray, tenure: np.ndarray) -> np.ndarray:
        """Each row's negative-binomial size r (per type, per day): the r at which
        independent daily counts NB(mean b_m, r) of its event types leave as many days
        without an event as it had (long window), `MAX_SIZE` (Poisson) when it had no
        fewer active days than a Poisson customer. Smaller r: burstier.

        >>> p = RateProfiles(("a",), False, np.ones((1, 1)), (0,), (0,), 90.0, 7.0, 30.0, 1)
        >>> p.dispersion(np.array([[90.0, 57.0], [90.0, 30.0]]), np.array([200.0] * 2)).round(2)
        array([1.0e+06, 2.5e-01])
        """
        n = len(x)
        if self.active_col is None:
            return np.full(n, MAX_SIZE)
        days = np.clip(np.minimum(tenure, self.long_days), 1.0, None)
        rates = np.maximum(self.counts(x, self.long_cols), 0.0) / days[:, None] + 1e-9
        active = np.clip(x[:, self.active_col], 0.0, days)
        # log P(no event in a day) observed, and as a function of r: sum_m r log(r/(r+b_m)).
        target = np.log(np.clip(1.0 - active / days, 1e-6, 1.0))
        lo, hi = np.full(n, np.log(MIN_SIZE)), np.full(n, np.log(MAX_SIZE))
        for _ in range(40):  # bisection on log r: the zero share falls as r grows
            mid = (lo + hi) / 2
            r = np.exp(mid)[:, None]
            zero = (r * -np.log1p(rates / r)).sum(axis=1)
            bursty = zero < target  # fewer empty days at this r than it had: r is smaller
            hi = np.where(bursty, mid, hi)
            lo = np.where(bursty, lo, mid)
        size: np.ndarray = np.exp((lo + hi) / 2)
        size[size > MAX_SIZE / 2] = MAX_SIZE
        return size


def bundle_profiles(catalog: Catalog, bundle: Bundle) -> RateProfiles | None:
    """A bundle's profiles, from its segments' recorded members' means where it has them
    (the live engine and the shadow read the same ones)."""
    by_id = {s.id: s.means for s in bundle.info.segments}
    by_id_typical = {s.id: s.typical for s in bundle.info.segments}
    by_id_shares = {s.id: s.shares for s in bundle.info.segments}
    means = [by_id.get(int(i), {}) for i in bundle.space.segment_ids]
    typical = [by_id_typical.get(int(i), {}) for i in bundle.space.segment_ids]
    profiles = rate_profiles(
        catalog, bundle.space, means if all(means) else None, typical if any(typical) else None
    )
    shares = share_profile(
        catalog.identity, [by_id_shares.get(int(i), {}) for i in bundle.space.segment_ids]
    )
    return None if profiles is None else replace(profiles, shares=shares)


def rate_profiles(
    catalog: Catalog,
    space: ScaledSpace,
    means: Sequence[Mapping[str, float]] | None = None,
    typical: Sequence[Mapping[str, float]] | None = None,
) -> RateProfiles | None:
    """The profiles of a bundle: for each count feature of a single event type (and of
    any type), its per-day rate in each segment, read off its shortest full window
    among those the segmentation uses (30 days in the default catalog: 90-day counts of
    customers younger than 90 days are short). None when the catalog counts no events.

    `means` (one mapping per segment, in `space.segment_ids` order: the bundle's
    `SegmentRecord.means`) gives each segment's members' mean counts; without them (older
    bundles) the counts are read off the centroids. A centroid is a mean of log counts:
    it sits well below the members' mean where they differ (a "Casual" segment holding
    fading customers read 0.09 sessions a day off its centroid, 0.14 off its members'
    mean), and a customer who became casual then raised little evidence for it.

    >>> from models.catalog import default_catalog
    >>> cat = default_catalog()
    >>> idx = np.array([cat.names.index("sessions_30d")])
    >>> space = ScaledSpace(index=idx, log1p=np.array([True]), mean=np.zeros(1),
    ...     scale=np.ones(1), centroids=np.log1p(np.array([[3.0], [30.0]])), segment_ids=(0, 1))
    >>> p = rate_profiles(cat, space)
    >>> p.types, p.other, p.rates.round(2).tolist()
    (('session_start',), False, [[0.1], [1.0]])
    >>> means = [{"sessions_30d": 6.0}, {"sessions_30d": 45.0}]  # the members' means
    >>> rate_profiles(cat, space, means).rates.round(2).tolist()
    [[0.2], [1.5]]
    """
    windows: dict[tuple[str, ...], dict[int, int]] = {}
    for col, spec in enumerate(catalog.features):
        f = spec.filter
        days = spec.window_days
        if f.where or len(f.types) > 1 or not isinstance(days, int):
            continue  # lifetime counts are no daily rate
        if spec.aggregation == "count":
            windows.setdefault(tuple(f.types), {})[days] = col
    used = {int(c): j for j, c in enumerate(np.asarray(space.index).tolist())}
    # Centroids back in raw units (the space's inverse transform).
    raw = np.asarray(space.centroids) * np.asarray(space.scale) + np.asarray(space.mean)
    raw = np.where(np.asarray(space.log1p), np.expm1(raw), raw)
    picked: list[tuple[tuple[str, ...], int, int, int, int]] = []  # key, profile col, days...
    for key, by_window in windows.items():
        if len(by_window) < 2:
            continue
        long_w, short_w = max(by_window), min(by_window)
        seen = [w for w in sorted(by_window) if w > short_w and by_window[w] in used]
        if not seen:
            continue
        recent = seen[0] if seen[0] < long_w else short_w  # left out of the baseline
        picked.append((key, by_window[seen[0]], seen[0], by_window[long_w], by_window[recent]))
    typed = [p for p in picked if p[0]]
    anytype = [p for p in picked if not p[0]]
    if not typed:
        return None
    longs = {w for *_, lc, _ in picked for w in [catalog.features[lc].window_days]}
    recents = {w for *_, rc in picked for w in [catalog.features[rc].window_days]}
    if len(longs) != 1 or len(recents) != 1:
        return None  # windows that differ by type: no common baseline period
    cols = typed + anytype[:1]
    long_window = catalog.features[cols[0][3]].window_days
    actives = [
        i
        for i, spec in enumerate(catalog.features)
        if spec.aggregation == "active_days"
        and spec.window_days == long_window
        and not spec.filter.types
        and not spec.filter.where
    ]
    active = actives[0] if actives else None
    names = [catalog.names[c[1]] for c in cols]
    if means is not None and len(means) == len(raw) and all(n in m for m in means for n in names):
        counts = np.array([[m[n] for n in names] for m in means], dtype=float)
    else:
        counts = np.stack([raw[:, used[c[1]]] for c in cols], axis=1)
    rates = np.maximum(counts, 0.0) / np.array([c[2] for c in cols], dtype=float)
    if anytype:
        rates[:, -1] = rates[:, -1] - rates[:, :-1].sum(axis=1)
    values = _value_profile(catalog, typed, counts, means, typical, raw, used)
    return RateProfiles(
        types=tuple(c[0][0] for c in typed),
        other=bool(anytype),
        rates=np.maximum(rates, RATE_FLOOR),
        long_cols=tuple(c[3] for c in cols),
        recent_cols=tuple(c[4] for c in cols),
        long_days=float(longs.pop() or 0),
        recent_days=float(recents.pop() or 0),
        profile_days=float(cols[0][2]),
        active_col=active,
        values=values,
    )


def _value_profile(
    catalog: Catalog,
    typed: Sequence[tuple[tuple[str, ...], int, int, int, int]],
    counts: np.ndarray,
    means: Sequence[Mapping[str, float]] | None,
    typical: Sequence[Mapping[str, float]] | None,
    raw: np.ndarray,
    used: Mapping[int, int],
) -> ValueProfile | None:
    """The first property summed over each of a typed count column's windows (profile,
    long and recent: `Catalog.valued_counts`), read from the members' means or else the
    centroids.

    The means are per member: a "Casual" mean of 0.45 purchases and 4 in revenue over 30
    days is hundreds of purchases. Only a segment that barely has such events is pulled
    towards the typical value of all of them (`VALUE_PRIOR_EVENTS` per member)."""

    summed: dict[int, dict[str, int]] = {}  # count column -> property -> its sum column
    for sum_col, count_col in catalog.valued_counts.items():
        summed.setdefault(count_col, {})[str(catalog.features[sum_col].property)] = sum_col
    for m, (_, profile_col, _, long_col, recent_col) in enumerate(typed):
        for prop, col in summed.get(profile_col, {}).items():
            long_sum = summed.get(long_col, {}).get(prop)
            recent_sum = summed.get(recent_col, {}).get(prop)
            if long_sum is None or recent_sum is None:
                continue
            name = catalog.names[col]
            if means is not None and len(means) == len(counts) and all(name in x for x in means):
                total = np.array([x[name] for x in means], dtype=float)
            elif col in used:
                total = raw[:, used[col]]
            else:
                continue
            n = np.maximum(counts[:, m], 0.0)
            total = np.maximum(total, 0.0)
            if total.sum() <= 0 or n.sum() <= 0:
                continue
            overall = total.sum() / n.sum()
            values = (total + overall * VALUE_PRIOR_EVENTS) / (n + VALUE_PRIOR_EVENTS)
            if typical is not None and len(typical) == len(counts):
                # The members' medians (`offline.naming`); a segment without a buyer: the ratio.
                values = np.array(
                    [t.get(name, v) for t, v in zip(typical, values.tolist(), strict=True)]
                )
            return ValueProfile(
                column=m,
                property=prop,
                log_typical=np.log(np.maximum(values, 1e-9)),
                long_col=long_sum,
                recent_col=recent_sum,
            )
    return None


_HEAD: Final = struct.Struct("<IH")
#: With the values already counted today: the head, a format byte (1) and their mask.
#: Its odd length tells it from the plain head (even with any number of float16s).
_HEAD_SEEN: Final = struct.Struct("<IHBI")
_TICK: Final = 600.0  # seconds: the resolution of the evidence's age


def pack(last: float, start: float, sums: Sequence[float], current: int, seen: int = 0) -> bytes:
    """The evidence state in bytes: the last update (whole seconds), how long before it
    the leading evidence began (10-minute ticks), a float16 sum per segment but the
    current one (always 0) and, when not 0, `seen`: a mask of the identity's values
    already counted on the last update's UTC day (`ShareProfile.observe`).

    >>> unpack(pack(86_400.0, 80_400.0, [0.0, 0.0, 1.5], 1), 1, 3)
    (86400.0, 80400.0, [0.0, 0.0, 1.5], 0)
    >>> unpack(pack(86_400.0, 80_400.0, [0.0, 0.0, 1.5], 1, seen=5), 1, 3)[3]
    5
    """
    age = min(max(int((last - start) // _TICK), 0), 65_535)
    others = np.asarray([v for i, v in enumerate(sums) if i != current], dtype="<f2").tobytes()
    if seen:
        return _HEAD_SEEN.pack(int(last), age, 1, seen) + others
    return _HEAD.pack(int(last), age) + others


def unpack(blob: bytes, current: int, k: int) -> tuple[float, float, list[float], int] | None:
    """The evidence state packed by `pack` for `k` segments (None when absent). One of a
    bundle with fewer segments reads as 0 for the new ones (lineage appends new ids), so
    evidence under way when a retrained bundle comes in carries over."""
    head = _HEAD_SEEN if len(blob) % 2 else _HEAD
    if len(blob) < head.size:
        return None
    last, age, *rest = head.unpack_from(blob)
    seen = rest[1] if rest else 0
    others = np.frombuffer(blob, dtype="<f2", offset=head.size).astype(float).tolist()
    others = (others + [0.0] * k)[: k - 1]
    sums = [*others[:current], 0.0, *others[current:]]
    return float(last), float(last) - age * _TICK, sums, seen


class Evidence:
    """The sequential test over one bundle's profiles (see the module docstring).

    `prepare` computes, for a batch of rows, what does not depend on the customer's state
    (its baseline's terms); `update` then runs the CUSUM of one row in pure Python (k is
    small), and says which segment crossed the customer's threshold (`threshold_for`:
    `threshold` up to one event a day, more above), if any.
    """

    def __init__(
        self, profiles: RateProfiles, threshold: float, tenure_col: int, tie_wait: bool = False
    ) -> None:
        self.profiles = profiles
        self.threshold = threshold
        self.tenure_col = tenure_col
        self.tie_wait = tie_wait
        total = profiles.rates.sum(axis=1)
        self._total_list = total.tolist()
        self._total = total
        self.k = len(total)
        values = profiles.values
        self._log_typical = values.log_typical.tolist() if values is not None else []

    def prepare(
        self, x: np.ndarray, current: np.ndarray, columns: Sequence[int | None]
    ) -> list[Terms]:
        """Per row (`current`: its segment position; `columns`: the rate column of its
        event, None at a re-score), what does not depend on the customer's state: the
        terms of the log-likelihood ratio of its daily counts under each segment s's rates
        (times a) against its own baseline b and against its current segment's rates
        (`_nb_terms`: a term per event of its column and a rate per day), a, and the log
        of the customer's own typical value (`ValueProfile`; its segment's as a prior).

        `a` is the customer's activity relative to its current segment (sum(b) over
        sum(l_c), within [1/3, 3]): a customer who does half of what its segment does is
        expected to do half of what a new segment does too, so its move is judged by the
        mix of its events, not by its volume alone. The counts are negative binomial with
        the customer's own size r (`RateProfiles.dispersion`): a bursty customer's burst
        of one day tells little more than one event.
        """
        tenure = x[:, self.tenure_col]
        base = self.profiles.baseline(x, tenure, current)
        scale = np.clip(base.sum(axis=1) / self._total[current], 1.0 / 3.0, 3.0)
        size = self.profiles.dispersion(x, tenure)[:, None, None]
        new = scale[:, None, None] * self.profiles.rates[None, :, :]  # (n, s, m)
        event, gap = _nb_terms(new, base[:, None, :], size)
        seg_event, seg_gap = _nb_terms(new, self.profiles.rates[current][:, None, :], size)
        own = np.zeros(len(x))
        values = self.profiles.values
        if values is not None:
            prior = np.exp(values.log_typical[current]) * PRIOR_VALUES
            n = self.profiles.counts(x, self.profiles.long_cols)[:, values.column]
            n = n - self.profiles.counts(x, self.profiles.recent_cols)[:, values.column]
            total = x[:, values.long_col] - x[:, values.recent_col]
            own = np.log((np.maximum(total, 0.0) + prior) / (np.maximum(n, 0.0) + PRIOR_VALUES))
        # Only the row's own column is kept: the arrays are (rows, segments, columns).
        col = np.array([-1 if c is None else c for c in columns], dtype=np.int64)
        rows = np.arange(len(x))[:, None]
        segs = np.arange(self.k)[None, :]
        pick = np.maximum(col, 0)[:, None]
        mine = np.where((col >= 0)[:, None], event[rows, segs, pick], 0.0)
        seg_mine = np.where((col >= 0)[:, None], seg_event[rows, segs, pick], 0.0)
        return [
            Terms(*parts)
            for parts in zip(
                mine.tolist(),
                gap.tolist(),
                seg_mine.tolist(),
                seg_gap.tolist(),
                scale.tolist(),
                own.tolist(),
                strict=True,
            )
        ]

    def threshold_for(self, scale: float, current: int, to: int | None = None) -> float:
        """The threshold of a customer at `scale` times segment position `current`'s
        rates, for a move to segment position `to` (None: to a segment at least as busy):
        `threshold` up to one event a day (`THRESHOLD_RATE`), plus the log of the rate
        over that above, the lesser of its rate in `current` and the one it would have
        in `to`.

        Each event is a step of the CUSUM, and a CUSUM's false alarms come about once in
        e^h steps, so at one threshold a customer with three times the events raises
        three times the false alarms a day, and the busiest customers and products set
        the threshold of everyone (at 9 nats, the high-activity shape's false alarms held
        it; the other shapes were slower for it). With the log of the rate added, a busy
        customer's false alarms a day are about those of one at `THRESHOLD_RATE`, and
        the threshold of everyone else can be lower (docs/migration-detector.md, A
        threshold by event rate).

        A move to a quieter segment is the slow one (its evidence comes mostly from the
        events that stop coming: on the held-out sudden histories a median 6.9 days from
        power user to big spender, 1.9 for the reverse), so a nat of threshold costs it
        the most days; its threshold follows the quieter rate, which spends the false
        alarms the busy customer's rate paid for where they buy the most days (the design
        log, A quieter destination's threshold)."""
        rate = scale * self._total_list[current]
        if to is not None:
            rate = min(rate, scale * self._total_list[to])
        if rate <= THRESHOLD_RATE:
            return self.threshold
        return self.threshold + math.log(rate / THRESHOLD_RATE)

    def expected(self, segment: int, scale: float, days: float) -> float:
        """How many events a customer at `scale` times segment position `segment`'s
        rates does in `days` (what a silence that long says about that segment)."""
        return float(scale * self._total_list[segment] * days)

    def update(
        self,
        blob: bytes,
        at: float,
        column: int | None,
        current: int,
        terms: Terms,
        value: float | None = None,
        identity: tuple[int, Sequence[float], Sequence[float]] | None = None,
        never: frozenset[int] = frozenset(),
    ) -> tuple[bytes, int | None, float]:
        """One event of the customer at `at` (rate column `column`, None: not modelled,
        as given to `prepare` for `terms`; `value`: the log of its value,
        `ValueProfile.value`) while in segment position `current`: the new state, the
        segment position whose evidence crossed the threshold, if any, and since when the
        leading evidence has been building (the move's dwell). `identity`: the event's
        value's bit (`ShareProfile.observe`) and its terms (`ShareProfile.terms`), against
        the customer's own share and against its current segment's; a value already
        counted on the same UTC day adds nothing. `never`: segment positions the
        evidence runs for but never names (the decider's Lapsing segments).

        The destination is the segment with the most evidence among those past their own
        threshold. Within `TIE_NATS` of it the events have not told the segments apart
        well, and until session 40 the nearest center named one of those: the features
        still hold the weeks before the change, so the nearer center is often a segment
        the customer only passes, and judged where customers settle (read once their
        90-day windows have turned over) the leader landed more of the alerts (up in 28
        of 87 backtests, down in 10) with fewer alerts on the way (docs/migration-
        detector.md, session 40). A segment short of its own threshold is never named.
        With `tie_wait`, a near tie among crossed segments waits until the leader is
        `TIE_NATS` past its own threshold: the alerts land where customers settle more
        often, for hours to days of delay (docs/migration-detector.md, session 39).
        A crossing into a busier segment waits while a segment short of its threshold
        overtakes it (`_overtaking`)."""
        found = unpack(blob, current, self.k)
        if found is None:
            return pack(at, at, [0.0] * self.k, current), None, at
        last, start, sums, seen = found
        if at // DAY != last // DAY:
            seen = 0
        if identity is not None:
            bit = 1 << identity[0]
            # A value counts once a day, as the shares it is weighed by (a customer who
            # opens one new feature ten times in a session has used one new feature).
            identity, seen = (None, seen) if seen & bit else (identity, seen | bit)
        was = max(sums)
        dt = max(at - last, 0.0) / DAY
        valued = self._valued(column, value)
        gap, seg_gap, event, seg_event = terms.gap, terms.seg_gap, terms.event, terms.seg_event
        cap = 2.0 * self.threshold_for(terms.scale, current)
        best, best_sum = None, 0.0
        gained = [0.0] * self.k
        for s in range(self.k):
            if s == current:
                sums[s] = 0.0
                continue
            own = -dt * gap[s]
            seg = -dt * seg_gap[s]
            if column is not None:
                own += event[s]
                seg += seg_event[s]
            if valued is not None:
                own += _value_term(valued, terms.own_value, self._log_typical[s])
                seg += _value_term(valued, self._log_typical[current], self._log_typical[s])
            if identity is not None:
                own += identity[1][s]
                seg += identity[2][s]
            gained[s] = min(own, seg)
            total = min(max(sums[s] + gained[s], 0.0), cap)
            sums[s] = total
            # No segment's threshold is under the configured one: most updates end here,
            # before the per-destination threshold is worked out.
            if s in never or total < best_sum or total < self.threshold:
                continue
            if total >= self.threshold_for(terms.scale, current, s):
                best, best_sum = s, total
        if best is not None and self._overtaking(best, current, sums, gained, terms.scale, never):
            best = None
        if (
            best is not None
            and self.tie_wait
            and best_sum < self.threshold_for(terms.scale, current, best) + TIE_NATS
            and any(
                s not in (best, current)
                and s not in never
                and sums[s] >= best_sum - TIE_NATS
                and sums[s] >= self.threshold_for(terms.scale, current, s)
                for s in range(self.k)
            )
        ):
            best = None  # a near tie the next events may still separate
        if was <= 0.0:  # a new run of evidence begins with this event
            start = at
        return pack(max(at, last), start, sums, current, seen), best, start

    def _overtaking(
        self,
        best: int,
        current: int,
        sums: Sequence[float],
        gained: Sequence[float],
        scale: float,
        never: frozenset[int],
    ) -> bool:
        """Whether a crossing into segment position `best`, busier than `current`, waits:
        another segment within `TIE_NATS` of it, short of its own threshold, gained more
        at this update (`gained`), so the events point past `best`.

        A customer drifting from a quiet segment to a busy one passes the segments whose
        rates lie between: on gradual seed 52 an email reader turning power user crosses
        into Big Spenders first (31 events in 30 days, against the readers' 27), so its
        first alert named a segment it only passes through. Held, it is alerted once, a
        few hours later, into the segment it settles in. A move to a quieter segment is
        not held: there an event is evidence against the destination, so a rival that
        gains at the event only delays the alert until the silence builds the evidence
        again (held both ways, alerts came up to 3.5 days later: docs/migration-detector.md,
        A crossing into a busier segment waits for a rival that overtakes it)."""
        if self._total_list[best] <= self._total_list[current]:
            return False
        return any(
            s not in (current, best)
            and s not in never
            and sums[s] >= sums[best] - TIE_NATS
            and gained[s] > gained[best]
            and sums[s] < self.threshold_for(scale, current, s)
            for s in range(self.k)
        )

    def runner_up(
        self, blob: bytes, current: int, named: int, never: frozenset[int] = frozenset()
    ) -> tuple[int | None, float]:
        """After an update that named segment position `named` (in a state packed while in
        `current`): the other segment with the most evidence (not `current`, not one of
        `never`) and by how many nats `named` leads it (its whole evidence when there is
        none). Under `TIE_NATS` the events had not told the two apart well when the alert
        went out (`update`); a negative lead is a runner-up with more evidence that had not
        crossed its own, higher threshold. Read only when an alert goes out, off the hot
        path.

        >>> flat = RateProfiles(("a",), False, np.ones((3, 1)), (0,), (0,), 90.0, 30.0, 30.0)
        >>> e = Evidence(flat, 8.0, 0)
        >>> e.runner_up(pack(0.0, 0.0, [0.0, 9.0, 7.5], 0), 0, 1)
        (2, 1.5)
        """
        found = unpack(blob, current, self.k)
        sums = found[2] if found is not None else [0.0] * self.k
        others = [s for s in range(self.k) if s not in (current, named) and s not in never]
        if not others:
            return None, sums[named]
        rival = max(others, key=lambda s: sums[s])
        return rival, sums[named] - sums[rival]

    def level(self, blob: bytes, current: int, segment: int) -> tuple[float, float]:
        """The evidence (nats) for segment position `segment` in a state packed while in
        `current`, and since when the leading evidence has been building ((0, 0) when
        there is no state)."""
        found = unpack(blob, current, self.k)
        if found is None:
            return 0.0, 0.0
        _, start, sums, _ = found
        return sums[segment], start

    def _valued(self, column: int | None, value: float | None) -> float | None:
        values = self.profiles.values
        if value is None or values is None or column != values.column:
            return None
        return value


def _nb_terms(new: np.ndarray, old: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The log-likelihood ratio of daily counts NB(mean `new`, size r) against NB(`old`,
    r), split as the Poisson one is: a term per event of type m, log(new/old) -
    log((r+new)/(r+old)), and a rate per day, sum_m r log((r+new)/(r+old)). With r
    large it is the Poisson's (log(new/old) and new - old); with r small, a burst of
    events of one day says little more than one event."""
    step = np.log1p((new - old) / (size + old))
    event = np.log(new / old) - step
    gap = (size * step).sum(axis=2)
    return event, gap


def _value_term(y: float, old: float, new: float) -> float:
    """The log-likelihood ratio of a log value `y` under a lognormal at `new` against one
    at `old` (spread `AMOUNT_SIGMA`), within +-`AMOUNT_CAP`."""
    llr = ((y - old) ** 2 - (y - new) ** 2) / (2.0 * AMOUNT_SIGMA**2)
    return min(max(llr, -AMOUNT_CAP), AMOUNT_CAP)


__all__ = [
    "Evidence", "RateProfiles", "ShareProfile", "Terms", "ValueProfile", "bundle_profiles",
    "pack", "rate_profiles", "share_profile", "unpack",
]  # fmt: skip
