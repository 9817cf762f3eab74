"""The step planner: which steps a batch of events becomes, and when midnight strikes.

Replay, backtest and the live worker cut their input into the same steps, so their alerts
do not depend on how a stream was cut into batches:

- `Apply(lo, hi)`: apply events ``lo:hi`` of the batch, decide, publish, save;
- `Rescore(at, drain)`: re-score the customers whose daily check is due at `at` (with
  `drain`, repeat until nobody is due, as at a midnight of event time);
- `SyncCenters()`: share the online centers with the group;
- `CheckHealth(at)`: the population-shift and retrain checks, judged at `at`.

`plan_event_clock` is the event clock, one per input partition: a partition's time is
the newest event time it has reached, and each midnight it crosses cuts the batch there:
the events before it are applied, then that partition's re-score, the center sync and the
health check run at midnight itself. A partition's events keep the producer's order, so
its re-scores happen after the same events whichever worker owns it, however the group
rebalances and however far other partitions ran ahead or lag (issue 20). Replay plans
the whole file as one stream in delivery order, whose midnights re-score every partition.
`plan_wall_clock` is the live worker's other mode: the whole batch, then a health check at
the wall clock; its re-scores and syncs run on timers.

Pure: no I/O, no engine. The clock state is a frozen value returned with the steps, so a
caller adopts it only once the steps succeeded (a batch retried after a failure is planned
again from the same state into the same steps).

>>> steps, clock = plan_event_clock(EventClock(), [10.0, DAY + 5.0], [0, 0], {0})
>>> [type(s).__name__ for s in steps]
['Rescore', 'Apply', 'Rescore', 'SyncCenters', 'CheckHealth', 'Apply']
>>> clock.boundary == {0: 2 * DAY}
True
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from stream.decide import DAY


def next_midnight(ts: float) -> float:
    """The first UTC midnight after `ts` (the event clock's next re-score).

    >>> next_midnight(DAY + 5.0) == 2 * DAY, next_midnight(DAY) == 2 * DAY
    (True, True)
    """
    return (math.floor(ts / DAY) + 1) * DAY


@dataclass(frozen=True)
class Apply:
    """Apply events ``lo:hi`` of the batch (decide, publish, then save)."""

    lo: int
    hi: int


@dataclass(frozen=True)
class Rescore:
    """Re-score whoever is due at `at`; with `drain`, until nobody is due.

    `partitions`: whose schedules (None: every partition the runner owns).
    """

    at: float
    drain: bool = True
    partitions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SyncCenters:
    """Share this worker's online centers with the group and adopt the merge."""


@dataclass(frozen=True)
class CheckHealth:
    """Judge population shift and center drift at `at`."""

    at: float


Step = Apply | Rescore | SyncCenters | CheckHealth


@dataclass(frozen=True)
class EventClock:
    """Where event time stands per partition: the next midnight it runs, the newest event
    time it has reached."""

    boundary: dict[int, float] = field(default_factory=dict)
    reached: dict[int, float] = field(default_factory=dict)


def midnight(at: float, partitions: tuple[int, ...] | None = None) -> list[Step]:
    """What runs when event time reaches midnight `at` (re-scoring `partitions`' schedules,
    None: every owned one)."""
    return [Rescore(at, partitions=partitions), SyncCenters(), CheckHealth(at)]


def plan_event_clock(
    clock: EventClock,
    epochs: Sequence[float],
    partitions: Sequence[int],
    owned: Collection[int],
    *,
    whole: bool = False,
) -> tuple[list[Step], EventClock]:
    """The steps of a batch on the event clock, and the clock after it.

    `epochs` and `partitions` are the batch's valid events' times and source partitions,
    in delivery order; `owned` the partitions this consumer owns (a partition outside it
    still counts for its own events, as one just assigned does; the midnights of one
    neither owned nor in the batch are forgotten). Each partition crosses its own
    midnights and re-scores its own schedule; with `whole` (replay: the batch is one
    stream, partition 0) a midnight re-scores every partition the runner owns.

    A partition met for the first time (a start, a partition just assigned) first
    re-scores whoever of it is due at the midnight that began its first event's day: a
    previous owner that stopped between its last event before that midnight and the
    re-score there left them due; everyone it did re-score is due a day later, so this
    finds nobody then (and nobody on a new store).

    >>> steps, _ = plan_event_clock(EventClock(), [5.0, 9.0, DAY + 1.0], [0, 1, 1], {0, 1})
    >>> [(type(s).__name__, getattr(s, "partitions", "")) for s in steps][:5]
    [('Rescore', (0,)), ('Apply', ''), ('Rescore', (1,)), ('Apply', ''), ('Rescore', (1,))]
    """
    keep = set(owned) | set(partitions)
    boundary = {p: b for p, b in clock.boundary.items() if p in keep}
    reached = dict(clock.reached)
    steps: list[Step] = []
    cut = 0
    for i, (t, p) in enumerate(zip(epochs, partitions, strict=True)):
        reached[p] = max(reached.get(p, t), t)
        scope = None if whole else (p,)
        due: list[Step] = []
        if p not in boundary:
            due = [Rescore(math.floor(t / DAY) * DAY, partitions=scope)]
            boundary[p] = next_midnight(t)
        elif reached[p] >= boundary[p]:
            due = midnight(boundary[p], scope)
            boundary[p] = next_midnight(reached[p])
        if due:
            if cut < i:
                steps.append(Apply(cut, i))
            cut = i
            steps += due
    if cut < len(epochs):
        steps.append(Apply(cut, len(epochs)))
    return steps, EventClock(boundary, reached)


def plan_wall_clock(count: int, now: float) -> list[Step]:
    """The steps of a batch of `count` events on the wall clock (re-scores run on a timer).

    >>> plan_wall_clock(3, 100.0)
    [Apply(lo=0, hi=3), CheckHealth(at=100.0)]
    """
    steps: list[Step] = [Apply(0, count)] if count else []
    return [*steps, CheckHealth(now)]


__all__ = [
    "DAY",
    "Apply",
    "CheckHealth",
    "EventClock",
    "Rescore",
    "Step",
    "SyncCenters",
    "midnight",
    "next_midnight",
    "plan_event_clock",
    "plan_wall_clock",
]
