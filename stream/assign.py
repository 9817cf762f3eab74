"""Online centers: the bundle's centroids, moved by what the workers learn, shared by all.

`OnlineCenters.learn_many` adds settled customers' scaled rows, with their event times, to
this worker's decayed sufficient statistics per bundle center (`stream.centers`). Assignment
(`distances`) uses the *shared* centers, which every worker of a consumer group refreshes at
each sync: it writes its own statistics (absolute values under its worker id, so a retried
sync changes nothing) with `AssignmentStore.sync_centers` of `stream.stores`, reads every
worker's back and merges them (`merge`). The merge is a sum, so it is the same whether one
worker or eight saw the rows, in whatever order they synced; each center stays within
`max_shift` of the distance to the nearest other bundle centroid. Between syncs every worker
assigns with the same centers; they are at most one sync interval stale.

Pure: no Redis, no faust.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence

import numpy as np

from stream.centers import DAY, MAX_SHIFT, CenterStats, merge_centers, shift_bounds, stale


class OnlineCenters:
    """Shared centers in the bundle's scaled space, learned online from every worker's rows.

    `halflife` is the weight of one row against the bundle centroid's prior (which weighs
    ``1/halflife`` rows; 0 freezes the centers); `memory_days` the half-life of a row's
    weight in event time.

    >>> c = OnlineCenters(np.array([[0.0, 0.0], [10.0, 0.0]]), [7, 9], halflife=0.5, worker="w1")
    >>> c.predict_one({0: 9.0, 1: 1.0})
    9
    >>> c.learn_one({0: 9.0, 1: 1.0}, at=0.0)
    >>> _ = c.merge({"w1": c.stats_.pack()}); c.shared_.round(2).tolist()
    [[0.0, 0.0], [9.67, 0.33]]
    """

    def __init__(
        self,
        centroids: np.ndarray,
        segment_ids: Sequence[int],
        *,
        halflife: float = 0.001,
        memory_days: float = 7.0,
        max_shift: float = MAX_SHIFT,
        worker: str | None = None,
    ) -> None:
        self.base_ = np.asarray(centroids, dtype=float).copy()
        self.segment_ids = list(segment_ids)
        self.halflife = halflife
        self.prior_weight = 1.0 / halflife if halflife > 0 else math.inf
        self.halflife_seconds = memory_days * DAY
        self.max_shift = max_shift
        self.bounds_ = shift_bounds(self.base_, max_shift)
        # A fresh id per process: a restarted worker's rows before the restart stay in its
        # old entry (and decay out of it), its new rows go to the new one; none counts twice.
        self.worker = worker or secrets.token_hex(8)
        self.stats_ = CenterStats.empty(*self.base_.shape)
        self.shared_ = self.base_.copy()
        self.forget_: dict[str, bytes] = {}  # stale entries seen at the last merge

    def predict_one(self, x: dict[int, float]) -> int:
        """The segment id whose shared center is nearest to a scaled point."""
        z = np.array([x.get(j, 0.0) for j in range(self.shared_.shape[1])])
        return self.segment_ids[int(np.argmin(self.distances(z[None, :])[0]))]

    def learn_one(self, x: dict[int, float], at: float) -> None:
        """Learn one scaled point seen at event time `at`."""
        z = np.array([[x.get(j, 0.0) for j in range(self.base_.shape[1])]])
        self.learn_many(z, np.array([at]))

    def learn_many(self, points: np.ndarray, times: np.ndarray) -> None:
        """Learn scaled rows with their event times (any order, any batching: a sum)."""
        self.stats_.learn(self.base_, points, times, self.halflife_seconds)

    def distances(self, points: np.ndarray) -> np.ndarray:
        """Euclidean distance from each scaled point to each shared center, (n, k)."""
        diff = points[:, None, :] - self.shared_[None, :, :]
        dist: np.ndarray = np.sqrt((diff**2).sum(axis=2))
        return dist

    def merge(self, group: Mapping[str, bytes]) -> np.ndarray:
        """Adopt the merge of every worker's statistics (as `sync_centers` returned them,
        this worker's included); remember which entries went stale, to drop at the next sync."""
        stats = {name: CenterStats.unpack(value) for name, value in group.items()}
        stats[self.worker] = self.stats_  # ours as we have it (the same as written)
        self.shared_ = merge_centers(
            self.base_,
            stats.values(),
            prior_weight=self.prior_weight,
            halflife_seconds=self.halflife_seconds,
            max_shift=self.max_shift,
        )
        gone = stale(stats, self.halflife_seconds)
        self.forget_ = {n: group[n] for n in gone if n != self.worker and n in group}
        return self.shared_

    def drift(self) -> np.ndarray:
        """Per segment, how far the shared center moved from the bundle's centroid."""
        moved: np.ndarray = np.sqrt(((self.shared_ - self.base_) ** 2).sum(axis=1))
        return moved
