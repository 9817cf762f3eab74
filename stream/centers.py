"""The shared online centers' merge: per-worker sufficient statistics, summed.

Each worker keeps, per bundle center, the decayed weight and the decayed weighted sum of the
scaled rows it learned (`CenterStats`). A row teaches the center of the bundle cell it falls
in (its nearest *bundle* centroid), so which center a row teaches depends on the row alone,
not on a worker's view of the moving centers. Weights decay in event time (half-life
`halflife_seconds`), and a worker's statistics carry the event time they are referenced to,
so a row's weight is a function of the row and the merge time only. The shared centers are

    center_i = (W * base_i + sum_w S_w,i) / (W + sum_w N_w,i)

with every worker's statistics rescaled to the newest reference time among them, and `W`
the bundle centroid's prior weight (in rows). Then:

- the result is the same whether 1 or 8 workers saw the events, in any order of syncs
  (a sum of per-row terms; equal up to floating-point rounding);
- a worker writes its *absolute* statistics under its own id, so a retried sync writes the
  same value again: duplicates are no-ops;
- each center's displacement from its bundle centroid is clamped to `max_shift` (< 1/2)
  times the distance to the nearest other bundle centroid, so a center is always nearer its
  own bundle centroid than any other: a segment's name can never move to another center.

A worker that left stops contributing as its rows' weights decay; its entry is dropped
once negligible (`stale`).

Pure: numpy and msgpack only; no Redis, no faust.

>>> base = np.array([[0.0, 0.0], [10.0, 0.0]])
>>> one = CenterStats.empty(2, 2)
>>> one.learn(base, np.array([[2.0, 0.0], [9.0, 1.0]]), np.array([0.0, 0.0]), DAY)
>>> merge_centers(base, [one], prior_weight=1.0, halflife_seconds=DAY).tolist()
[[1.0, 0.0], [9.5, 0.5]]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import msgpack
import numpy as np

DAY: Final = 86_400.0
#: A center moves at most this share of the distance to the nearest other bundle centroid.
MAX_SHIFT: Final = 0.45
#: Entries whose weight decayed by this many half-lives are dropped (factor 2**-50 < 1e-15).
STALE_HALFLIVES: Final = 50.0


def nearest(base: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The index of each point's nearest bundle centroid (the center it teaches)."""
    diff = points[:, None, :] - base[None, :, :]
    cells: np.ndarray = (diff**2).sum(axis=2).argmin(axis=1)
    return cells


@dataclass
class CenterStats:
    """One worker's decayed sufficient statistics, referenced to event time `at`.

    `count[i]` is the decayed weight of the rows it learned for center i (each row weighs 1
    at its own event time, halved every `halflife_seconds`), `total[i]` their weighted sum.
    """

    at: float
    count: np.ndarray  # (k,)
    total: np.ndarray  # (k, d)

    @classmethod
    def empty(cls, k: int, d: int) -> CenterStats:
        return cls(-math.inf, np.zeros(k), np.zeros((k, d)))

    def learn(
        self, base: np.ndarray, points: np.ndarray, times: np.ndarray, halflife_seconds: float
    ) -> None:
        """Add rows (scaled, with their event times) to the nearest bundle centers' sums."""
        if not len(points):
            return
        newest = float(np.max(times))
        if newest > self.at:
            if self.at > -math.inf:
                self.count, self.total = self.scaled(newest, halflife_seconds)
            self.at = newest
        weight = np.exp2(-(self.at - np.asarray(times, dtype=float)) / halflife_seconds)
        cells = nearest(base, points)
        np.add.at(self.count, cells, weight)
        np.add.at(self.total, cells, points * weight[:, None])

    def scaled(self, at: float, halflife_seconds: float) -> tuple[np.ndarray, np.ndarray]:
        """The statistics as of a later event time `at` (every weight decayed to it)."""
        if self.at == -math.inf:
            return np.zeros_like(self.count), np.zeros_like(self.total)
        factor = math.exp2(-(at - self.at) / halflife_seconds)
        return self.count * factor, self.total * factor

    def pack(self) -> bytes:
        """The value a worker writes (msgpack; float64 round-trips exactly)."""
        k, d = self.total.shape
        value: bytes = msgpack.packb(
            [self.at, k, d, self.count.tolist(), self.total.ravel().tolist()]
        )
        return value

    @classmethod
    def unpack(cls, value: bytes) -> CenterStats:
        at, k, d, count, total = msgpack.unpackb(value)
        return cls(float(at), np.array(count, dtype=float), np.array(total).reshape(k, d))


def shift_bounds(base: np.ndarray, max_shift: float = MAX_SHIFT) -> np.ndarray:
    """Per center, how far it may move: `max_shift` times the distance to the nearest
    other bundle centroid (infinite for a lone center).

    >>> shift_bounds(np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 10.0]]), 0.45).tolist()
    [1.8, 1.8, 4.5]
    """
    if not 0 <= max_shift < 0.5:
        raise ValueError(f"max_shift must be in [0, 0.5), got {max_shift}")
    dist = np.sqrt(((base[:, None, :] - base[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(dist, np.inf)
    bounds: np.ndarray = max_shift * dist.min(axis=1)
    return bounds


def clamp(base: np.ndarray, centers: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Pull each center back onto the ball of radius `bounds[i]` around its bundle centroid."""
    moved = centers - base
    norm = np.sqrt((moved**2).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(norm > bounds, bounds / norm, 1.0)
    clamped: np.ndarray = base + moved * factor[:, None]
    return clamped


def merge_centers(
    base: np.ndarray,
    stats: Iterable[CenterStats],
    *,
    prior_weight: float,
    halflife_seconds: float,
    max_shift: float = MAX_SHIFT,
) -> np.ndarray:
    """The shared centers from every worker's statistics (any order, any split of rows).

    `prior_weight` is the bundle centroid's weight in rows (`inf` freezes the centers).
    """
    base = np.asarray(base, dtype=float)
    found = [s for s in stats if s.at > -math.inf]
    if not found or math.isinf(prior_weight):
        return base.copy()
    at = max(s.at for s in found)
    count = np.zeros(len(base))
    total = np.zeros_like(base)
    # Sorted by reference time, then values: the float sum is then the same in every order
    # the entries were read in.
    for s in sorted(found, key=lambda s: (s.at, s.count.tolist(), s.total.ravel().tolist())):
        c, t = s.scaled(at, halflife_seconds)
        count += c
        total += t
    centers = (prior_weight * base + total) / (prior_weight + count)[:, None]
    return clamp(base, centers, shift_bounds(base, max_shift))


def stale(stats: Mapping[str, CenterStats], halflife_seconds: float) -> list[str]:
    """Entries whose weight has decayed to nothing against the newest (a worker that left).

    Dropping one changes the centers by less than 2**-50 of its rows' relative weight."""
    times = [s.at for s in stats.values() if s.at > -math.inf]
    if not times:
        return []
    newest = max(times)
    horizon = STALE_HALFLIVES * halflife_seconds
    # An empty entry (a worker that learned nothing yet) holds nothing: dropped too.
    return sorted(name for name, s in stats.items() if newest - s.at > horizon)
