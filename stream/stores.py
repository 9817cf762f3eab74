"""The store interfaces the engine depends on, their result types and the key layout.

Two protocols: `FeatureStore` (customers' rolling features: `apply` a batch, `read` at a
time) and `AssignmentStore` (assignment states, the re-score schedule, population counts,
shared online centers, and the commit of staged feature states). Implementations:
`stream.store` (Redis, a server or a Redis Cluster) and `stream.memory_store` (one
process, for tests and tools). `tests/test_store_contract.py` runs the same suite over all.

Every implementation keeps the same keys and the same binary values (the feature state
of `stream.state`, the msgpack `CustomerState.to_list()`), so the layout below is one thing.
`StoreResults` turns per-customer states into the `ApplyResult` both return.

Pure: no Redis, no faust.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import msgpack
import numpy as np

from models.catalog import DEFAULT_PROFILE_RETENTION_DAYS, Catalog
from models.events import Event
from stream.decide import CustomerState
from stream.lifecycle import stage_field
from stream.state import StateCodec

EventStatus = Literal["applied", "duplicate", "too_late"]
#: Status by the code `store.lua` (and `stream.fold`) return: 0, 1, 2.
STATUSES: Final[tuple[EventStatus, ...]] = ("applied", "duplicate", "too_late")
#: How many days before its customer's newest event an event may still arrive.
DEFAULT_MAX_LATENESS_DAYS: Final = 7
#: How much longer an assignment state lives (TTL) than its customer's features: the
#: re-score deletes an expired customer's state in event time, and so takes it out of the
#: population counts, before Redis would drop it silently (a worker down or behind for
#: longer than this lets Redis win; `AssignmentStore.recount` shows the difference).
STATE_TTL_MARGIN_SECONDS: Final = 30 * 86_400


def customer_tag(customer_id: str) -> str:
    """A customer's Redis Cluster hash tag: the id, with `%`, `{` and `}` percent-escaped.

    Escaping keeps the tag inside one pair of braces whatever the id holds (an id with a
    `}` would otherwise cut the tag short and scatter its keys over slots), and it is
    reversible, so distinct ids always get distinct tags.

    >>> customer_tag("c42"), customer_tag("x}:f:{y"), customer_tag("100%")
    ('c42', 'x%7D:f:%7By', '100%25')
    """
    return customer_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def feature_key(prefix: str, customer_id: str) -> str:
    """The key of a customer's features.

    Distinct customer ids give distinct keys (the escaped id sits between fixed text),
    so a crafted id cannot reach another customer's state.

    >>> feature_key("segstream", "c42")
    'segstream:f:{c42}'
    """
    return f"{prefix}:f:{{{customer_tag(customer_id)}}}"


def state_key(prefix: str, customer_id: str) -> str:
    """The key of a customer's assignment state; same hash tag as its features.

    >>> state_key("segstream", "c42")
    'segstream:a:{c42}'
    """
    return f"{prefix}:a:{{{customer_tag(customer_id)}}}"


def owner_key(prefix: str, customer_id: str) -> str:
    """The key of a customer's owner record (the generation and token of the save that
    last wrote its assignment state, for fencing); same hash tag as its state.

    >>> owner_key("segstream", "c42")
    'segstream:o:{c42}'
    """
    return f"{prefix}:o:{{{customer_tag(customer_id)}}}"


def generation_key(prefix: str) -> str:
    """The counter a worker increments when it is assigned partitions (its generation)."""
    return f"{prefix}:generation"


def due_key(prefix: str, partition: int) -> str:
    """The sorted set of a partition's customers by next re-score time."""
    return f"{prefix}:due:{partition}"


def population_key(prefix: str, version: str) -> str:
    """The hash of customers per segment under one model version."""
    return f"{prefix}:population:{version}"


def count_states(
    values: Sequence[bytes | None], version: str
) -> tuple[dict[int, int], dict[str, int]]:
    """A recount: customers per segment and lifecycle stage among packed assignment states
    decided under `version` (what the population hash must equal).

    >>> import msgpack
    >>> s = CustomerState(segment=2, model_version="v1", stage="new")
    >>> count_states([msgpack.packb(s.to_list()), None], "v1")
    ({2: 1}, {'new': 1})
    """
    segments: Counter[int] = Counter()
    stages: Counter[str] = Counter()
    for value in values:
        if not value:
            continue
        state = CustomerState.from_list(msgpack.unpackb(value))
        if state.model_version != version:
            continue
        if state.segment is not None:
            segments[int(state.segment)] += 1
        if state.stage is not None:
            stages[str(state.stage)] += 1
    return dict(segments), dict(stages)


def counted_as(state: CustomerState | None) -> str:
    """What a state counts in: its version and population fields, tab-separated ('' for
    a deleted state or one without a version); commit.lua compares these strings.

    >>> counted_as(CustomerState(segment=3, model_version="v1", stage="new"))
    'v1\\t3\\tstage:new'
    """
    if state is None or not state.model_version:
        return ""
    found = [state.model_version]
    if state.segment is not None:
        found.append(str(state.segment))
    if state.stage is not None:
        found.append(stage_field(state.stage))
    return "\t".join(found)


def transition(was: str, now: str) -> dict[str, Counter[str]]:
    """The population changes of one customer moving from what it counted in (`was`,
    as `counted_as` gives it) to `now`, per version; fields that cancel are left out.

    >>> transition("v1\\t3\\tstage:new", "v1\\t4\\tstage:new")
    {'v1': Counter({'4': 1, '3': -1})}
    """
    changes: dict[str, Counter[str]] = {}
    for combo, by in ((was, -1), (now, 1)):
        if combo:
            version, *names = combo.split("\t")
            for name in names:
                changes.setdefault(version, Counter())[name] += by
    return {v: Counter({k: n for k, n in c.items() if n}) for v, c in changes.items()}


class Fenced(Exception):
    """A save refused because a customer's owner record holds a newer generation: the
    partition was assigned to another worker (or claimed again) since the batch was
    decided. The caller drops the batch: retrying cannot succeed, and the new owner
    processes its events from the last committed offset."""


def split_population(raw: Mapping[Any, Any]) -> tuple[dict[int, int], dict[str, int]]:
    """A population hash as customers per segment and per lifecycle stage.

    >>> split_population({b"0": b"3", b"stage:new": b"2", "1": 4})
    ({0: 3, 1: 4}, {'new': 2})
    """
    segments: dict[int, int] = {}
    stages: dict[str, int] = {}
    for key, value in raw.items():
        field = key.decode() if isinstance(key, bytes) else str(key)
        if field.startswith("stage:"):
            stages[field.removeprefix("stage:")] = int(value)
        else:
            segments[int(field)] = int(value)
    return segments, stages


def centers_key(prefix: str, version: str) -> str:
    """The hash of every worker's center statistics (worker id -> `CenterStats.pack()`).

    One key per model version, so all of a version's centers share one hash slot."""
    return f"{prefix}:center-stats:{version}"


def check_lateness(catalog: Catalog, max_lateness_days: int) -> None:
    """Refuse a lateness bound the retention cannot honour (fingerprints live in it)."""
    if not 0 <= max_lateness_days < catalog.retention_days:
        raise ValueError(
            f"max_lateness_days must be between 0 and the retention minus one "
            f"({catalog.retention_days - 1}), got {max_lateness_days}"
        )


def check_dedupe_cap(dedupe_max_events: int) -> None:
    """Refuse a fingerprint cap below 1 (the record must hold the event it just took)."""
    if dedupe_max_events < 1:
        raise ValueError(f"dedupe_max_events must be at least 1, got {dedupe_max_events}")


@dataclass(frozen=True)
class Features:
    """Features of some customers at their evaluation times (one row each)."""

    names: tuple[str, ...]  # the catalog's feature names, one per column
    customers: list[str]  # whose features each row holds
    at: np.ndarray  # Unix seconds, per row: when the features were evaluated
    values: np.ndarray  # (rows, features)
    #: Per row after an event whose value the catalog's `identity` counts: the days the
    #: customer used each value before its latest weeks ({value fingerprint: days},
    #: `StateCodec.aggregate`); None for other rows. None: not read.
    own: list[dict[int, float] | None] | None = None

    def row(self, customer_id: str) -> dict[str, float] | None:
        """The customer's latest row by feature name (None when the customer is not here)."""
        for i in range(len(self.customers) - 1, -1, -1):
            if self.customers[i] == customer_id:
                return dict(zip(self.names, self.values[i].tolist(), strict=True))
        return None


@dataclass
class StagedFeatures:
    """New feature states computed but not yet written (`FeatureStore.apply(stage=True)`).

    `digests` are the hex SHA1 of each key's state when it was read (empty: none): the
    commit (`AssignmentStore.save(features=...)`) writes a state only over the one it was
    computed from. Another writer in between (two workers briefly owning one partition
    during a rebalance) makes it a conflict, and the customer's `events` are applied
    again instead, which the idempotent store allows.
    """

    keys: list[str] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    states: list[bytes] = field(default_factory=list)
    events: list[list[Event]] = field(default_factory=list)

    def add(self, key: str, digest: bytes, state: bytes, events: list[Event]) -> None:
        self.keys.append(key)
        self.digests.append(digest)
        self.states.append(state)
        self.events.append(events)


@dataclass(frozen=True)
class ApplyResult:
    """What a batch did: per input event, its status and its customer's features after it.

    `features` has one row per event, in input order (a duplicate's row shows the state it
    found), except a ``too_late`` event of a customer with no stored state, which has none:
    `rows` maps each event to its row; `features.row(c)` is customer c's state after the
    whole batch.
    """

    statuses: list[EventStatus]
    features: Features
    #: Per input event, its row in `features`, or -1 when it has none (a ``too_late``
    #: event of a customer with no stored state has no row).
    rows: list[int] = field(default_factory=list)
    #: With `apply(stage=True)`: the states to commit (customers with an applied event).
    staged: StagedFeatures | None = None
    #: Event fingerprints the per-customer cap (`dedupe_max_events`) pushed out of the
    #: idempotency record while their day could still take an event: dedupe past the cap
    #: is best-effort, and this counts what it gave up.
    evicted: int = 0

    def count(self, status: EventStatus) -> int:
        return sum(1 for s in self.statuses if s == status)


@dataclass(frozen=True)
class CustomerApplied:
    """One customer's part of a batch, as the store computed it."""

    key: str
    customer_id: str
    codes: Sequence[int]  # per event, an index into `STATUSES`
    after: Sequence[bytes | None]  # per event, the state right after it (None: none yet)
    digest: bytes  # hex SHA1 of the state before the batch (b"" when none or not staged)
    evicted: int = 0  # fingerprints the cap evicted (see `ApplyResult.evicted`)


class StoreResults:
    """Features and batch results from binary states, for one catalog (every store's)."""

    def __init__(
        self, catalog: Catalog, profile_days: int = DEFAULT_PROFILE_RETENTION_DAYS
    ) -> None:
        self.catalog = catalog
        self.codec = StateCodec(catalog)
        self.profile_days = profile_days

    def features(
        self,
        customers: list[str],
        states: list[bytes],
        at: np.ndarray,
        events: Sequence[Event] | None = None,
    ) -> Features:
        """Feature rows of `states` at `at`; with the `events` that made them (one per
        state), also what the customer's past says of each event's value (`Features.own`)."""
        if not states:
            values = np.empty((0, len(self.catalog.names)))
            return Features(self.catalog.names, [], np.empty(0), values)
        probes = None if events is None else self._probes(events)
        base, when = self.codec.aggregate(states, at, probes)
        own = base["own"].tolist() if "own" in base else None
        values = self.catalog.assemble(base, when)
        return Features(self.catalog.names, customers, when, values, own)

    def _probes(self, events: Sequence[Event]) -> np.ndarray | None:
        """Which events carry a value of the catalog's `identity` (None: it has none)."""
        ident = self.catalog.identity
        if ident is None:
            return None
        return np.array([ident.value(e.type, e.properties) is not None for e in events], dtype=bool)

    def read(self, ids: list[str], values: Sequence[bytes | None], at: float) -> Features:
        """Features of the ids whose state was found (`values` aligned with `ids`) and
        whose profile has not expired by `at` (silent for at most `profile_days`): the key's
        TTL runs on the wall clock, this on event time, so replay and the worker agree."""
        found = [(cid, v) for cid, v in zip(ids, values, strict=True) if v]
        if found:
            newest = self.codec.newest([v for _, v in found])
            alive = at - newest <= self.profile_days * 86_400
            found = [item for item, ok in zip(found, alive.tolist(), strict=True) if ok]
        return self.features(
            [cid for cid, _ in found], [v for _, v in found], np.full(len(found), at)
        )

    def empty(self) -> ApplyResult:
        return ApplyResult([], self.features([], [], np.empty(0)))

    def apply_result(
        self,
        events: Sequence[Event],
        mine: dict[str, list[int]],
        applied: Sequence[CustomerApplied],
        *,
        stage: bool,
        at: float | None,
    ) -> ApplyResult:
        """The `ApplyResult` of a batch; `mine` maps a customer to its events' indices."""
        statuses: list[EventStatus] = ["applied"] * len(events)
        states: list[bytes | None] = [None] * len(events)
        staged = StagedFeatures()
        evicted = 0
        for part in applied:
            evicted += part.evicted
            changed = False
            idxs = mine[part.customer_id]
            for idx, code, state in zip(idxs, part.codes, part.after, strict=True):
                statuses[idx] = STATUSES[code]
                states[idx] = state or None
                changed = changed or code == 0
            if stage and changed:
                last = part.after[-1]
                assert last is not None  # an applied event leaves a state
                staged.add(part.key, part.digest, last, [events[i] for i in idxs])
        known = [i for i, st in enumerate(states) if st is not None]
        rows = [-1] * len(events)
        for row, i in enumerate(known):
            rows[i] = row
        features = self.features(
            [events[i].customer_id for i in known],
            [states[i] for i in known],  # type: ignore[misc]
            np.full(len(known), at or 0.0),
            [events[i] for i in known],
        )
        return ApplyResult(
            statuses=statuses,
            features=features,
            rows=rows,
            staged=staged if stage else None,
            evicted=evicted,
        )


def by_customer(events: Sequence[Event]) -> dict[str, list[int]]:
    """Each customer's event indices, customers in order of first appearance."""
    mine: dict[str, list[int]] = {}
    for idx, event in enumerate(events):
        mine.setdefault(event.customer_id, []).append(idx)
    return mine


class FeatureStore(Protocol):
    """Customers' rolling features: exact, idempotent per event, lateness-bounded.

    `apply` returns each event's status and its customer's features right after it;
    with `stage=True` it writes nothing and returns the new states in `staged`, which
    `AssignmentStore.save(features=...)` commits with the decisions they led to.
    """

    prefix: str
    ttl_seconds: int
    max_lateness_days: int
    profile_days: int

    async def load(self) -> None:
        """Prepare for use (load scripts); idempotent."""
        ...

    async def apply(
        self, events: Sequence[Event], *, at: float | None = None, stage: bool = False
    ) -> ApplyResult: ...

    async def read(self, customer_ids: Sequence[str], *, at: float) -> Features: ...


class AssignmentStore(Protocol):
    """Customers' assignment states, re-score schedule, population and shared centers."""

    prefix: str
    ttl_seconds: int

    def forget(self) -> None:
        """Drop whatever is cached in memory (call when partitions are reassigned)."""
        ...

    async def load(self, customer_ids: Sequence[str]) -> dict[str, CustomerState]: ...

    async def save(
        self,
        states: Mapping[str, CustomerState | None],
        due: dict[int, dict[str, float]],
        *,
        reschedule: bool = False,
        features: StagedFeatures | None = None,
        feature_ttl: int | None = None,
        unschedule: dict[int, list[str]] | None = None,
        owners: Mapping[str, int] | None = None,
        token: str | None = None,
    ) -> list[int]:
        """Write states (None deletes one), schedule (NX unless `reschedule`), removals
        from the schedule and the staged `features` (compare-and-set); count each state's
        population transition once; return the positions in `features` that met a
        conflict. `owners` gives each state's generation (default 0); `token` names the
        save, the same on every retry of it (a replay then counts nothing again). Raises
        `Fenced` when a customer's owner record holds a newer generation."""
        ...

    async def claim(self) -> int:
        """A new generation for partitions just assigned to this worker (increments the
        shared counter: every claim is newer than all before it)."""
        ...

    async def recount(self, version: str) -> tuple[dict[int, int], dict[str, int]]:
        """Customers per segment and stage under `version`, counted from the stored
        assignment states (a scan): what `population` and `stages` must equal."""
        ...

    async def unschedule(self, partition: int, customer_ids: Sequence[str]) -> None: ...

    async def due(self, partition: int, now: float, limit: int) -> list[str]: ...

    async def sync_centers(
        self, version: str, worker: str, stats: bytes, forget: Mapping[str, bytes] | None = None
    ) -> dict[str, bytes]:
        """Write this worker's center statistics (its absolute values: a retry writes the
        same), drop each `forget` entry that still holds the value given, and return
        every worker's (`stream.centers`)."""
        ...

    async def population(self, version: str) -> dict[int, int]: ...
    async def stages(self, version: str) -> dict[str, int]: ...
