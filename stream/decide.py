"""Alert decisions: from a customer's features and state to segment and churn alerts.

The pure core of the stream. `Decider.decide` takes evaluation rows (a customer's features
right after one of its events, or at a scheduled re-score), the customers' assignment
states and the model, and returns the new states and the alerts. It knows nothing of
Kafka, faust or Redis; the live worker and `segstream replay` both call it.

Rules (thresholds in `Rules`):
- first segment: the first evaluation of a customer assigns a segment
  (`segment_assigned`, `first: true`), which onboarding flows key on;
- placement: customers younger than `early_days` are placed by the bundle's early-life
  classifier, older ones by the nearest online center (`stream.assign`);
- migration with hysteresis: a different segment becomes a candidate only when it is
  nearer than the current one by the relative `migration_margin`, and the move is made
  only when the candidate held for `migration_dwell_days` of event time and an event of
  the customer confirms it; then `segment_migration` (with the 3 features that drove the
  move) and `segment_assigned`;
- early migration (the default detector, `Rules.migration_detector = "evidence"`): a
  settled customer's own events feed a per-customer CUSUM of the evidence for each
  other segment's daily rates (`stream.detect`); when one passes `migration_evidence`,
  the event that crossed it makes the `segment_migration` to that segment, without the
  margin and dwell (they still settle young customers, complete a move they began while
  the customer settled, and move silent ones); with
  `migration_evidence_rescore` the daily re-score counts the silence too, and completes
  a move whose evidence saw an event of the customer and whose destination explains the
  silence since (a quieter segment is then seen without waiting for the next event); it
  never names a Lapsing segment (going silent is churn's business);
- correction: a crossing whose customer's baseline (its counts before the latest 30
  days) already fits the destination better than its segment by
  `migration_correction` nats, by both the mix and the volume of its events, in a
  segment it was placed in while settling, was a misplacement (mostly by the early-life
  classifier) put right, not a move: `segment_assigned` (`placed_by: correction`), no
  `segment_migration`;
- quiet moves: a move completed at a daily re-score of a customer silent since the
  candidate appeared (features that only decayed) changes the segment with
  `segment_assigned` (`placed_by: inactivity`) only; the customer's next event settles
  it: back where it was before the silence, `segment_assigned` (`placed_by: return`);
  still in the new segment, the `segment_migration` from the segment before. A customer
  the evidence governs is settled by the evidence, which runs against the segment before
  the silence all along: a crossing, or evidence for the new segment of at least
  `QUIET_AGREEMENT` of the threshold, is the migration; else it returns;
- reactivation: a move out of a segment of silent customers (the bundle's
  `SegmentRecord.lapsing`) is a customer coming back, not a change of behaviour:
  `segment_assigned` (`placed_by: reactivation`), no `segment_migration`;
- settling: a move whose candidate appeared while the customer was young, or within
  one dwell after, only refines its placement: `segment_assigned` (`first: false`,
  `placed_by` the classifier or the centers), no `segment_migration`; it completes even
  once the evidence governs the customer (the hand-over from the classifier to the
  centers puts right what the classifier got wrong);
- model update: at the first evaluation of a customer under a new bundle, the new model
  places the customer's anchor (its features when last settled); a changed segment is a
  `segment_reassigned` (cause `model_update`, both versions), not a migration; the row is
  then judged by the rules above, and a pending candidate carries over;
- churn risk: judged at each customer's daily re-score (churn is the absence of events):
  rising edge of `P(churn) >= threshold`, at most once per `churn_cooldown_days`;
- lifecycle: every evaluation updates the customer's stage (`stream.lifecycle`: new,
  active, dormant, returning); a change after the first evaluation is a
  `lifecycle_changed` alert (dormant: a retention trigger; returning: a win-back).

Alert ids are deterministic: a hash of the type, the customer, the model version and what
triggered the decision (the event id, or the day of a scheduled re-score), so a replay or
a redelivery produces the same ids and consumers can de-duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import numpy as np

from stream.detect import Evidence, RateProfiles, Terms
from stream.lifecycle import next_stage

SCHEMA_VERSION: Final = 1
DAY: Final = 86_400.0
#: A re-score completes an evidence move only when the destination expects at most this
#: many events in the customer's silence so far (P(none) >= e^-2, about 14 %).
QUIET_EVENTS: Final = 2.0
#: A move the centers made in silence is a migration at the customer's next event when
#: the evidence for it (against the segment before the silence) has reached this share of
#: the threshold: the centers and the events agree. Below it, the customer is back where
#: it was. Half: on the held-out seeds it kept the right alerts of the seasonal, gradual
#: and low-activity shapes that requiring a full crossing lost, at the same precision.
QUIET_AGREEMENT: Final = 0.5


class Model(Protocol):
    """What decisions need of a model bundle (see `models.bundle.Bundle`)."""

    @property
    def version(self) -> str: ...
    @property
    def segment_names(self) -> dict[int, str]: ...
    @property
    def churn_threshold(self) -> float: ...

    def scale(self, features: np.ndarray) -> np.ndarray: ...
    def nearest(self, features: np.ndarray) -> np.ndarray: ...
    def early_segment(self, features: np.ndarray) -> np.ndarray: ...
    def churn_probability(self, features: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Rules:
    """Thresholds of the alert decisions (defaults backed by the backtest, see README)."""

    early_days: float = 30.0
    migration_margin: float = 0.2
    migration_dwell_days: float = 3.0
    churn_cooldown_days: float = 14.0
    drivers: int = 3
    dormant_days: float = 30.0
    #: `evidence`: settled customers move when the events' evidence for another segment
    #: crosses `migration_evidence` nats (`stream.detect`); `centers`: when the nearest
    #: center holds the margin for the dwell (the rule before issue 22).
    migration_detector: str = "evidence"
    #: Up to one event a day: a busier customer's threshold adds the log of its event
    #: rate, or of the destination's when that is quieter (`Evidence.threshold_for`). 8
    #: since the threshold follows the rate: at 9 for all, the high-activity shape's false
    #: alarms held every other shape back.
    migration_evidence: float = 8.0
    #: The evidence also counts silence at the customer's daily re-score, and a re-score
    #: completes a move whose evidence saw an event of the customer (a quieter segment is
    #: then seen without waiting for the next event); off: silence counts at the next event.
    migration_evidence_rescore: bool = True
    #: A crossing whose customer's baseline (before the latest 30 days) already fits the
    #: destination better than its segment by this many nats, by both the mix and the
    #: volume of its events (`RateProfiles.misfit`), in a segment it was placed in while
    #: settling, is a correction: `segment_assigned` (`placed_by: correction`), not a
    #: migration. 0: off. On the 54 held-out backtests it took those below precision 0.9
    #: from 6 to 3, for one right alert (docs/migration-detector.md, Corrections).
    migration_correction: float = 9.0
    #: A near tie (segments that crossed within `TIE_NATS` of each other) waits until the
    #: leader is `TIE_NATS` past its threshold. Off by default: on the held-out histories
    #: it lands more alerts where customers settle and costs the sudden shape up to 1.4
    #: days (docs/migration-detector.md, session 39); at 1,500 customers its landing gain
    #: is within noise and it costs every sudden seed 0.04 to 0.08 days (session 41).
    migration_tie_wait: bool = False


class CustomerState:
    """What the stream remembers of a customer between events (besides its features).

    Mutable on purpose: `Decider.decide` copies a customer's state once per batch and
    then updates it in place for each of its rows (a fresh object per row cost more than
    the rules themselves, measured).
    """

    __slots__ = (
        "anchor",
        "candidate",
        "candidate_since",
        "churn_alerted_at",
        "churn_high",
        "evidence",
        "last_seen",
        "model_version",
        "quiet_from",
        "segment",
        "since",
        "stage",
        "stage_since",
    )

    def __init__(
        self,
        segment: int | None = None,
        since: float = 0.0,  # event time the current segment was assigned
        candidate: int | None = None,
        candidate_since: float = 0.0,
        anchor: bytes = b"",  # float32 catalog features when last seen firmly in `segment`
        churn_high: bool = False,
        churn_alerted_at: float = -1e18,
        model_version: str = "",
        quiet_from: int | None = None,  # the segment before a move made in silence
        evidence: bytes = b"",  # packed migration evidence (`stream.detect.pack`)
        stage: str | None = None,  # lifecycle stage (stream.lifecycle)
        stage_since: float = 0.0,  # event time the stage began
        last_seen: float = 0.0,  # the newest event time decided
    ) -> None:
        self.segment = segment
        self.since = since
        self.candidate = candidate
        self.candidate_since = candidate_since
        self.anchor = anchor
        self.churn_high = churn_high
        self.churn_alerted_at = churn_alerted_at
        self.model_version = model_version
        self.quiet_from = quiet_from
        self.evidence = evidence
        self.stage = stage
        self.stage_since = stage_since
        self.last_seen = last_seen

    def to_list(self) -> list[Any]:
        return [
            self.segment,
            self.since,
            self.candidate,
            self.candidate_since,
            self.anchor,
            self.churn_high,
            self.churn_alerted_at,
            self.model_version,
            self.quiet_from,
            self.evidence,
            self.stage,
            self.stage_since,
            self.last_seen,
        ]

    @classmethod
    def from_list(cls, items: Sequence[Any]) -> CustomerState:
        seg, since, cand, cand_since, anchor, high, alerted, version, *rest = items
        # States saved before quiet moves had 8 items, before issue 22 9, before lifecycle
        # stages 10.
        defaults: list[Any] = [None, b"", None, 0.0, 0.0]
        quiet, evidence, stage, stage_since, last_seen = [*rest, *defaults[len(rest) :]][:5]
        return cls(
            seg, since, cand, cand_since, bytes(anchor), high, alerted, version, quiet,
            bytes(evidence), stage, stage_since, last_seen,
        )  # fmt: skip

    def copy(self) -> CustomerState:
        return CustomerState(*self.to_list())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CustomerState) and self.to_list() == other.to_list()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"CustomerState({fields})"


@dataclass(frozen=True)
class Row:
    """One evaluation: a customer's features at time `at`, and what triggered it."""

    customer_id: str
    at: float
    trigger: str  # the event id, or "rescore:<day>"
    kind: str = ""  # the event's type ("" at a re-score)
    #: The event's properties (None at a re-score): the evidence reads a value off them.
    properties: Mapping[str, Any] | None = None
    #: After an event whose value the catalog's `identity` counts: the days the customer
    #: used each value before its latest weeks (`stores.Features.own`); else None.
    own: Mapping[int, float] | None = None


@dataclass
class Alert:
    """One alert to publish: its kind (which picks the topic), key and JSON body."""

    kind: str
    key: str
    body: dict[str, Any]


@dataclass(frozen=True)
class _Prepared:
    """A batch's evidence terms (`stream.detect.Evidence.prepare`): `at` maps a row to its
    position in `terms`; `current` is each row's segment position before the batch."""

    at: dict[int, int]
    current: list[int]
    terms: list[Terms]

    def governs(self, i: int) -> bool:
        return i in self.at


@dataclass
class Decisions:
    """The outcome of one batch of rows."""

    states: dict[str, CustomerState] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)  # per row
    churn: list[float] = field(default_factory=list)  # per row


def alert_id(kind: str, customer_id: str, model_version: str, trigger: str) -> str:
    """Deterministic id of a decision: the same decision replayed gets the same id.

    >>> alert_id("churn_risk", "c1", "v1", "e9") == alert_id("churn_risk", "c1", "v1", "e9")
    True
    """
    text = "\x1f".join((kind, customer_id, model_version, trigger))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _home(state: CustomerState) -> int | None:
    """The segment a customer's migrations start from: the one before its silence, if it
    moved in silence (the evidence runs against it), else its segment."""
    return state.segment if state.quiet_from is None else state.quiet_from


def _anchor(x: np.ndarray) -> bytes:
    return x.astype(np.float32).tobytes()


def iso(ts: float) -> str:
    """RFC 3339 (UTC) for an alert body."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class Decider:
    """Turns evaluation rows into assignment states and alerts (see the module docstring).

    `scaled_columns` are the catalog positions of the model's scaled space; `typical` is a
    catalog row of typical values (the reference for churn drivers).
    """

    def __init__(
        self,
        model: Model,
        segment_ids: Sequence[int],
        feature_names: Sequence[str],
        scaled_columns: Sequence[int],
        typical: np.ndarray,
        rules: Rules = Rules(),
        profiles: RateProfiles | None = None,
    ) -> None:
        self.model = model
        self.segment_ids = list(segment_ids)
        self.feature_names = list(feature_names)
        self.scaled_columns = list(scaled_columns)
        self.typical = np.asarray(typical, dtype=float)
        self.rules = rules
        self._tenure = self.feature_names.index("tenure_days")
        names = self.feature_names
        self._silence = (
            names.index("days_since_last_event") if "days_since_last_event" in names else None
        )
        self.has_early = getattr(model, "early_model", True) is not None
        self.lapsing: frozenset[int] = getattr(model, "lapsing_segments", frozenset())
        # Positions of the Lapsing segments among the evidence's: it never moves a customer
        # there (`_detect`).
        self._lapsing_at = frozenset(
            p for p, seg in enumerate(self.segment_ids) if seg in self.lapsing
        )
        self.has_churn = getattr(model, "churn_model", True) is not None
        # Without rate profiles (a catalog that counts no event types) the centers decide.
        self.evidence = (
            Evidence(profiles, rules.migration_evidence, self._tenure, rules.migration_tie_wait)
            if profiles is not None and rules.migration_detector == "evidence"
            else None
        )

    def decide(
        self,
        rows: Sequence[Row],
        features: np.ndarray,
        scaled: np.ndarray,
        distances: np.ndarray,
        states: dict[str, CustomerState],
        *,
        score_churn: bool = True,
    ) -> Decisions:
        """Decide every row in order; rows of one customer see each other's effects.

        `score_churn` is set for the daily re-score rows only: churn is the absence of
        events, so it is judged once a day per customer rather than at every event.
        """
        out = Decisions(states=dict(states))
        if not rows:
            return out
        # A bundle may lack a classifier (too little history to train one): then young
        # customers are placed by the centers too, and no churn alert is decided.
        young = features[:, self._tenure] < self.rules.early_days
        if not self.has_early:
            young[:] = False
        early = np.full(len(rows), -1, dtype=np.int64)
        if young.any():
            early[young] = self.model.early_segment(features[young])
        churn = (
            self.model.churn_probability(features)
            if self.has_churn and score_churn
            else np.full(len(rows), np.nan)
        )
        ids = np.asarray(self.segment_ids)
        targets = np.where(young, early, ids[np.argmin(distances, axis=1)]).tolist()
        young_list = young.tolist()
        churn_list = churn.tolist()
        prep = self._prepare(rows, features, young, states, score_churn)
        # One copy per customer and batch, updated in place row by row: the caller's
        # states stay as they were (the engine diffs them for the population counts).
        copied: set[str] = set()
        replaced = self._replaced(rows, out.states)
        churn_alerts: list[tuple[int, Alert]] = []
        for i, row in enumerate(rows):
            cid = row.customer_id
            if cid in copied:
                state = out.states[cid]
            else:
                found = out.states.get(cid)
                state = found.copy() if found is not None else CustomerState()
                out.states[cid] = state
                copied.add(cid)
            self._assign(
                row, state, targets[i], young_list[i], features, i, distances[i], out, replaced,
                prep, confirm=not score_churn,
            )  # fmt: skip
            if score_churn:
                before = len(out.alerts)
                self._churn(row, state, churn_list[i], out)
                churn_alerts += [(i, a) for a in out.alerts[before:]]
            self._lifecycle(row, state, features[i], event=not score_churn, out=out)
            out.segments.append(state.segment if state.segment is not None else -1)
        out.churn = churn_list
        pending = [(a.body, features[i], float(churn[i])) for i, a in churn_alerts]
        if pending:
            self._add_churn_drivers(pending)
        return out

    def _lifecycle(
        self, row: Row, state: CustomerState, x: np.ndarray, *, event: bool, out: Decisions
    ) -> None:
        """Move the customer's lifecycle stage; alert a change (not the first stage)."""
        silent = float(x[self._silence]) if self._silence is not None else 0.0
        gap = (row.at - state.last_seen) / DAY if event and state.last_seen else 0.0
        stage = next_stage(
            state.stage,
            tenure_days=float(x[self._tenure]),
            silent_days=silent,
            gap_days=max(gap, 0.0),
            in_stage_days=(row.at - state.stage_since) / DAY,
            early_days=self.rules.early_days,
            dormant_days=self.rules.dormant_days,
        )
        if event:
            state.last_seen = max(state.last_seen, row.at)
        if stage == state.stage:
            return
        if state.stage is not None:
            body = self._base("lifecycle_changed", row)
            body.update(
                stage=stage,
                previous_stage=state.stage,
                days_silent=round(max(gap, silent), 2),
                segment_id=state.segment,
                segment_name=self._name(state.segment),
            )
            out.alerts.append(Alert("lifecycle_changed", row.customer_id, body))
        state.stage, state.stage_since = stage, row.at

    def _base(self, kind: str, row: Row) -> dict[str, Any]:
        version = self.model.version
        return {
            "schema_version": SCHEMA_VERSION,
            "alert_id": alert_id(kind, row.customer_id, version, row.trigger),
            "type": kind,
            "customer_id": row.customer_id,
            "event_time": iso(row.at),
            "model_version": version,
        }

    def _name(self, segment: int | None) -> str | None:
        return None if segment is None else self.model.segment_names.get(segment, str(segment))

    def _assign(
        self,
        row: Row,
        state: CustomerState,
        target: int,
        young: bool,
        features: np.ndarray,
        i: int,
        dist: np.ndarray,
        out: Decisions,
        replaced: dict[str, int],
        prep: _Prepared | None,
        *,
        confirm: bool,
    ) -> None:
        """Update `state` in place for row `i` (features `features[i]`).

        `confirm` is set for rows of the customer's own events: only they complete a move.
        With the evidence detector, a settled customer's events feed its evidence and
        only the evidence completes a move; the centers still move a silent customer at
        its re-scores (`placed_by: inactivity`), young ones settle as before, and a move
        they began while the customer settled completes as a placement.
        """
        if state.segment is None:
            body = self._base("segment_assigned", row)
            body.update(
                segment_id=target,
                segment_name=self._name(target),
                previous_segment_id=None,
                previous_segment_name=None,
                first=True,
                placed_by="early_life_classifier" if young else "nearest_centroid",
            )
            out.alerts.append(Alert("segment_assigned", row.customer_id, body))
            state.segment, state.since, state.candidate = target, row.at, None
            state.anchor = _anchor(features[i])
            state.model_version = self.model.version
            return
        if state.model_version != self.model.version:
            self._reassign(row, state, replaced.get(row.customer_id, target), out)
        governed = prep is not None and prep.governs(i)
        quiet_from = state.quiet_from if confirm else None  # settled by this event
        if (
            quiet_from is not None
            and governed
            and prep is not None
            and quiet_from not in self.lapsing
        ):
            # The first event after a move made in silence, for a customer the evidence
            # governs: the evidence, which kept running against the segment before the
            # silence, says whether that was a migration (crossed, or half-way for the
            # segment the centers moved it to: the two agree); if not, the customer is
            # back where it was. The centers alone made most of the low-activity shape's
            # wrong alerts here: a customer between two segments of nearly the same
            # profile crossed their border at every lull. A customer back from a Lapsing
            # segment is a reactivation at this first event, as before (no migration).
            if self._detect(row, state, features[i], i, prep, out):
                return
            began = self._agreeing_evidence(state, prep.terms[prep.at[i]].scale)
            if began is not None and state.segment in self.lapsing:
                # Gone quiet, as the evidence agrees: churn's business, as in `_detect`. The
                # customer stays in the Lapsing segment without a migration alert, and its
                # way back out of it is a reactivation.
                state.quiet_from, state.evidence = None, b""
                state.anchor = _anchor(features[i])
                return
            if began is not None:
                state.candidate_since = began  # the dwell: the evidence's age
                self._migrate(row, state, state.segment, features[i], out)
                return
            self._place(row, state, quiet_from, features[i], "return", out, keep_evidence=True)
            return
        if quiet_from is not None:
            # The first event after a move made in silence settles it: back where it was
            # (the customer did not change), or still there (confirmed: the migration).
            if target == quiet_from:
                self._place(row, state, target, features[i], "return", out)
                return
            if target == state.segment:
                if young or self._clear_margin(quiet_from, target, dist):
                    self._complete(row, state, target, young, features[i], out)
                return  # near the border: the next event decides
        if (
            governed
            and prep is not None
            and self._detect(row, state, features[i], i, prep, out, confirm=confirm)
        ):
            return
        if target == state.segment:
            state.candidate = None
            if state.quiet_from is None:  # in silence, the anchor keeps the settled features
                state.anchor = _anchor(features[i])
            return
        if not young and not self._clear_margin(state.segment, target, dist):
            return  # too close to the border to even start counting dwell
        if state.candidate != target:
            state.candidate, state.candidate_since = target, row.at
            return
        held = row.at - state.candidate_since
        if held < self.rules.migration_dwell_days * DAY:
            return
        if not confirm:
            # At a daily re-score. A customer with events during the dwell waits for its
            # next event to confirm the move. One silent all along moved in silence:
            # features that only decayed are churn's business, and alerting them as
            # migrations made most of the false ones in the backtest. Its segment follows
            # (so the populations show who went quiet), with `segment_assigned` only.
            silent = self._silence is not None and features[i, self._silence] >= held / DAY
            if not silent:
                return
            quiet_from = _home(state)
            anchor = state.anchor  # still the settled features, for drivers and reloads
            self._place(row, state, target, features[i], "inactivity", out, keep_evidence=True)
            state.quiet_from, state.anchor = quiet_from, anchor
            return
        if governed and not self._settling_at(row, state.candidate_since, features[i]):
            # The evidence decides a settled customer's moves, not the centers. A move the
            # centers began while it settled (the early-life classifier handing over to
            # them) still completes, as a placement: the evidence runs against the
            # customer's own baseline and cannot see a misplacement it was settled into.
            return
        self._complete(row, state, target, young, features[i], out)

    def _prepare(
        self,
        rows: Sequence[Row],
        features: np.ndarray,
        young: np.ndarray,
        states: dict[str, CustomerState],
        score_churn: bool,
    ) -> _Prepared | None:
        """The batch's evidence terms for the rows the evidence governs: events (and,
        with `migration_evidence_rescore`, daily re-scores) of customers past the settling
        period (young + one dwell), computed at once."""
        if self.evidence is None or (score_churn and not self.rules.migration_evidence_rescore):
            return None
        settle = self.rules.early_days + self.rules.migration_dwell_days
        mask = ~young & (features[:, self._tenure] >= settle)
        if not mask.any():
            return None
        pos = {seg: p for p, seg in enumerate(self.segment_ids)}
        current = np.zeros(len(rows), dtype=np.int64)
        for i, row in enumerate(rows):
            st = states.get(row.customer_id)
            seg = _home(st) if st is not None else None
            current[i] = pos.get(seg, 0) if seg is not None else 0
        idx = np.flatnonzero(mask)
        columns = [self._column(rows[i]) for i in idx.tolist()]
        terms = self.evidence.prepare(features[idx], current[idx], columns)
        at = {int(i): j for j, i in enumerate(idx.tolist())}
        return _Prepared(at, current.tolist(), terms)

    def _column(self, row: Row) -> int | None:
        """The evidence's rate column of a row's event (None: a re-score, or not modelled)."""
        assert self.evidence is not None
        return self.evidence.profiles.column(row.kind) if row.kind else None

    def _detect(
        self, row: Row, state: CustomerState, x: np.ndarray, i: int, prep: _Prepared,
        out: Decisions, *, confirm: bool = True,
    ) -> bool:  # fmt: skip
        """Feed one event (`confirm`) or a daily re-score (the silence since the last
        update) to the customer's evidence; migrate when it crosses (True), to the
        segment with the most evidence among those past their threshold
        (`Evidence.update`).

        A re-score completes a move only when an event of the customer came after the
        evidence began, and the destination explains the silence since its last event
        (it expects at most `QUIET_EVENTS` in it): silence alone is churn's business (a
        customer who stopped would otherwise migrate to the quietest segment), and its
        next event decides.

        Nor does the evidence name a Lapsing segment (the bundle's segments of silent
        customers), for the same reason: a customer whose events point at silence is
        at churn risk, which the churn alert says; the centers still place a silent
        customer there (`inactivity`), where it stays when the evidence agrees at its
        next event (`_assign`). On the held-out histories moves into a Lapsing
        segment were 9 of the 75 wrong migration alerts at the shipped threshold, and
        none named the segment a changed customer settled in.
        """
        ev = self.evidence
        home = _home(state)
        assert ev is not None and home is not None
        if state.model_version != self.model.version or home not in self.segment_ids:
            return False
        current = self.segment_ids.index(home)
        column = self._column(row)
        if current == prep.current[i]:
            terms = prep.terms[prep.at[i]]
        else:  # the segment changed earlier in this batch: the baseline's prior with it
            terms = ev.prepare(x[None, :], np.array([current]), [column])[0]
        values, shares = ev.profiles.values, ev.profiles.shares
        value = values.value(row.properties) if values is not None else None
        seen = shares.observe(row.kind, row.properties) if shares is not None else None
        identity = None
        if seen is not None and shares is not None:
            identity = (seen[1], *shares.terms(seen[0], current, row.own))
        state.evidence, moved, began = ev.update(
            state.evidence, row.at, column, current, terms, value, identity=identity,
            never=self._lapsing_at,
        )  # fmt: skip
        if not confirm and (
            moved is None
            or state.last_seen <= began
            or ev.expected(moved, terms.scale, (row.at - state.last_seen) / DAY) > QUIET_EVENTS
        ):
            return False  # the centers' rules go on (quiet moves); the anchor stays
        if moved is None:
            # Firmly in its segment as far as the evidence goes: the anchor follows, so a
            # new model places the customer from what it does now (`_reassign`); in
            # silence it keeps the settled features.
            if state.quiet_from is None:
                state.anchor = _anchor(x)
            return False
        state.candidate_since = began  # the dwell: since the evidence began building
        target = self.segment_ids[moved]
        if self._misplaced(row, state, x, current, moved):
            self._place(row, state, target, x, "correction", out)
        else:
            rival = ev.runner_up(state.evidence, current, moved, self._lapsing_at)
            self._migrate(row, state, target, x, out, rival)
        return True

    def _misplaced(
        self, row: Row, state: CustomerState, x: np.ndarray, current: int, moved: int
    ) -> bool:
        """Whether a crossing from `current` to `moved` (row positions in the profiles)
        puts right a placement rather than following a change: the customer's baseline,
        from before its latest weeks, already fits the destination by
        `migration_correction` nats (`RateProfiles.misfit`), and its segment is one it
        was placed in while settling (by the early-life classifier or at the hand-over to
        the centers). A segment the evidence, a quiet move or a new model put it in was
        chosen from later behaviour than its baseline: there the baseline fitting
        elsewhere is the change itself (on the held-out seeds, correcting those cost two
        right alerts and four alerts' destinations)."""
        assert self.evidence is not None
        if self.rules.migration_correction <= 0 or _home(state) in self.lapsing:
            return False  # off; out of a Lapsing segment, a reactivation says more
        if not self._settling_at(row, state.since, x):
            return False
        misfit = self.evidence.profiles.misfit(x, float(x[self._tenure]), current, moved)
        return misfit >= self.rules.migration_correction

    def _settling_at(self, row: Row, when: float, x: np.ndarray) -> bool:
        """Whether the customer of `row` (features `x`) was still settling at time `when`:
        younger than `early_days` plus one dwell (the early-life classifier's days, then
        one dwell of the centers)."""
        tenure_then = float(x[self._tenure]) - (row.at - when) / DAY
        return tenure_then < self.rules.early_days + self.rules.migration_dwell_days

    def _complete(
        self, row: Row, state: CustomerState, target: int, young: bool, x: np.ndarray,
        out: Decisions,
    ) -> None:  # fmt: skip
        """A move that held its dwell, confirmed by an event: a migration, or a placement.

        A new customer's placement is still settling while the early-life classifier
        places it and for one dwell after it hands over to the centers: a change that
        started then refines where the customer belongs, it is not a move it made.
        Alerting those as migrations gave many of the false ones in the backtest.
        """
        if self._settling_at(row, state.candidate_since, x):
            placed_by = "early_life_classifier" if young else "nearest_centroid"
            self._place(row, state, target, x, placed_by, out)
        else:
            self._migrate(row, state, target, x, out)

    def _place(
        self, row: Row, state: CustomerState, target: int, x: np.ndarray, placed_by: str,
        out: Decisions, *, keep_evidence: bool = False,
    ) -> None:  # fmt: skip
        """A later change of segment: `segment_assigned` (`first: false`), state updated.

        The evidence is dropped (it was against the segment the customer leaves) unless
        `keep_evidence`: a move in silence and a return keep the segment migrations start
        from, and the evidence against it holds."""
        body = self._base("segment_assigned", row)
        body.update(
            segment_id=target,
            segment_name=self._name(target),
            previous_segment_id=state.segment,
            previous_segment_name=self._name(state.segment),
            first=False,
            placed_by=placed_by,
        )
        out.alerts.append(Alert("segment_assigned", row.customer_id, body))
        state.segment, state.since, state.candidate = target, row.at, None
        state.anchor = _anchor(x)
        state.quiet_from = None
        if not keep_evidence:
            state.evidence = b""

    def _reassign(self, row: Row, state: CustomerState, target: int, out: Decisions) -> None:
        """First look at a customer under a new bundle: where the new model puts it.

        `target` is the new model's segment for the customer's anchor (its features when
        it was last settled), not for this row: that separates what the model changed
        from what the customer did. A changed segment is a `segment_reassigned` (cause
        `model_update`), never a migration; the rules then judge this row as usual, and a
        move the customer had started (a candidate counting its dwell) carries over, so
        a real migration right after a reload is still caught.
        """
        previous_version, state.model_version = state.model_version, self.model.version
        if target == state.segment:
            return
        body = self._base("segment_reassigned", row)
        body.update(
            segment_id=target,
            segment_name=self._name(target),
            previous_segment_id=state.segment,
            previous_segment_name=self._name(state.segment),
            cause="model_update",
            previous_model_version=previous_version,
        )
        out.alerts.append(Alert("segment_reassigned", row.customer_id, body))
        state.segment, state.since = target, row.at
        state.evidence = b""
        state.quiet_from = None  # placed from the settled features: no longer in silence
        if state.candidate == target:
            state.candidate = None

    def _replaced(self, rows: Sequence[Row], states: dict[str, CustomerState]) -> dict[str, int]:
        """The new model's segment for each customer last decided by another model.

        Placed from the anchor (the features when it was last settled), by the early-life
        classifier or the nearest centroid, as a row would be: one batched model call.
        """
        version = self.model.version
        stale = [
            (cid, st.anchor)
            for cid in dict.fromkeys(r.customer_id for r in rows)
            if (st := states.get(cid)) is not None
            and st.segment is not None
            and st.model_version != version
            and st.anchor
        ]
        if not stale:
            return {}
        x = np.vstack([np.frombuffer(anchor, dtype=np.float32) for _, anchor in stale])
        x = x.astype(float)
        placed = self.model.nearest(x)
        young = x[:, self._tenure] < self.rules.early_days
        if self.has_early and young.any():
            placed[young] = self.model.early_segment(x[young])
        return {cid: int(seg) for (cid, _), seg in zip(stale, placed.tolist(), strict=True)}

    def _agreeing_evidence(self, state: CustomerState, scale: float) -> float | None:
        """Since when the evidence for the segment a customer was moved to in silence has
        been building, if it reached `QUIET_AGREEMENT` of the customer's threshold (at
        `scale` times its segment's rates, `Evidence.threshold_for`), else None."""
        assert self.evidence is not None and state.quiet_from is not None
        ids = self.segment_ids
        if state.segment not in ids or state.quiet_from not in ids:
            return None
        before = ids.index(state.quiet_from)
        nats, began = self.evidence.level(state.evidence, before, ids.index(state.segment))
        threshold = self.evidence.threshold_for(scale, before)
        return began if nats >= QUIET_AGREEMENT * threshold else None

    def _clear_margin(self, current: int, target: int, dist: np.ndarray) -> bool:
        d_cur = float(dist[self.segment_ids.index(current)])
        d_new = float(dist[self.segment_ids.index(target)])
        return d_cur > 0 and (d_cur - d_new) / d_cur >= self.rules.migration_margin

    def _migrate(
        self, row: Row, state: CustomerState, target: int, x: np.ndarray, out: Decisions,
        rival: tuple[int | None, float] | None = None,
    ) -> None:  # fmt: skip
        """A migration alert to `target`, and the move. `rival`: for a move the evidence
        named at its crossing, the runner-up's segment position and the named segment's
        lead over it (`Evidence.runner_up`); None for a move the centers made or one
        settled after a silence."""
        before = np.frombuffer(state.anchor, dtype=np.float32).astype(float) if state.anchor else x
        # The features that moved most in the model's own (scaled) units drove the move.
        move = self.model.scale(x[None, :])[0] - self.model.scale(before[None, :])[0]
        order = np.argsort(-np.abs(move))[: self.rules.drivers]
        drivers = []
        for j in order:
            col = self.scaled_columns[j]
            drivers.append(
                {
                    "feature": self.feature_names[col],
                    "before": round(float(before[col]), 4),
                    "after": round(float(x[col]), 4),
                }
            )
        # After a move made in silence, the move is from the segment before the silence.
        source = _home(state)
        if source in self.lapsing:
            # Out of a segment of silent customers: a customer coming back, placed where
            # it now belongs. On histories without a single change of behaviour these were
            # most of the migration alerts (README, alert quality).
            self._place(row, state, target, x, "reactivation", out)
            return
        body = self._base("segment_migration", row)
        body.update(
            from_segment_id=source,
            from_segment_name=self._name(source),
            to_segment_id=target,
            to_segment_name=self._name(target),
            dwell_days=round((row.at - state.candidate_since) / DAY, 3),
            drivers=drivers,
            **self._runner_up(rival),
        )
        out.alerts.append(Alert("segment_migration", row.customer_id, body))
        state.segment = source
        self._place(row, state, target, x, "migration", out)

    def _runner_up(self, rival: tuple[int | None, float] | None) -> dict[str, Any]:
        """A migration alert's runner-up fields: how clearly the events chose its segment.
        Under `stream.detect.TIE_NATS` of lead they had not yet told the two apart, and
        such alerts name a segment the customer only passes through far more often (the
        README, Alert quality)."""
        if rival is None:
            return {"evidence_lead_nats": None, "runner_up_segment_id": None,
                    "runner_up_segment_name": None}  # fmt: skip
        position, lead = rival
        segment = None if position is None else self.segment_ids[position]
        return {"evidence_lead_nats": round(lead, 2), "runner_up_segment_id": segment,
                "runner_up_segment_name": self._name(segment)}  # fmt: skip

    def _churn(self, row: Row, state: CustomerState, p: float, out: Decisions) -> None:
        threshold = self.model.churn_threshold
        high = p >= threshold
        rising = high and not state.churn_high
        cooled = row.at - state.churn_alerted_at >= self.rules.churn_cooldown_days * DAY
        if not (rising and cooled):
            state.churn_high = high
            return
        body = self._base("churn_risk", row)
        body.update(
            probability=round(p, 4),
            threshold=threshold,
            segment_id=state.segment,
            segment_name=self._name(state.segment),
            drivers=[],  # filled for the whole batch at once (see _add_churn_drivers)
        )
        out.alerts.append(Alert("churn_risk", row.customer_id, body))
        state.churn_high, state.churn_alerted_at = True, row.at

    def _add_churn_drivers(self, pending: list[tuple[dict[str, Any], np.ndarray, float]]) -> None:
        """Fill each churn alert's drivers: the features whose value raised the probability
        most, by setting each to its typical value (all alerts of a batch in one call)."""
        ref = self.typical
        plans = []
        for body, x, p in pending:
            cols = [j for j in range(len(x)) if np.isfinite(ref[j]) and x[j] != ref[j]]
            trials = np.repeat(x[None, :], len(cols), axis=0)
            trials[np.arange(len(cols)), cols] = ref[cols]
            plans.append((body, x, p, cols, trials))
        stacked = [t for *_, t in plans if len(t)]
        probs = self.model.churn_probability(np.vstack(stacked)) if stacked else np.empty(0)
        start = 0
        for body, x, p, cols, trials in plans:
            drop = p - probs[start : start + len(trials)]
            start += len(trials)
            best = np.argsort(-drop)[: self.rules.drivers]
            body["drivers"] = [
                {
                    "feature": self.feature_names[cols[b]],
                    "value": round(float(x[cols[b]]), 4),
                    "typical": round(float(ref[cols[b]]), 4),
                    "raises_probability_by": round(float(drop[b]), 4),
                }
                for b in best
                if drop[b] > 0
            ]
