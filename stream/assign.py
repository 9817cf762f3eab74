"""Online centers: a river k-means seeded from the bundle's centroids, shared by workers.

`OnlineCenters.learn_one` feeds scaled points to a `river.cluster.KMeans` whose centers
start at the bundle's centroids and move by `halflife` toward the points they win, so
segments follow slow behavioral drift between retrainings. Assignment (`distances`) does
not use the local river state directly: it uses the *shared* centers, which every worker
of a consumer group refreshes at each sync (`merge`): a worker's movement since its last
sync is added to the shared centers (`AssignmentStore.sync_centers` of `stream.stores`)
and everybody reads the sum back. Between syncs every worker assigns with the same centers; they are
at most one sync interval stale.

Pure: no Redis, no faust.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from river import cluster


class OnlineCenters:
    """Shared k-means centers in the bundle's scaled space, learned online with river.

    >>> c = OnlineCenters(np.array([[0.0, 0.0], [10.0, 0.0]]), [7, 9], halflife=0.5, learn_every=1)
    >>> c.predict_one({0: 9.0, 1: 1.0})
    9
    >>> c.learn_one({0: 9.0, 1: 1.0}); c.local_delta().round(2).tolist()
    [[0.0, 0.0], [-0.5, 0.5]]
    """

    def __init__(
        self,
        centroids: np.ndarray,
        segment_ids: Sequence[int],
        *,
        halflife: float = 0.001,
        learn_every: int = 10,
    ) -> None:
        self.base_ = np.asarray(centroids, dtype=float).copy()
        self.segment_ids = list(segment_ids)
        self.halflife = halflife
        self.learn_every = max(1, learn_every)
        self.shared_ = self.base_.copy()
        self._seen = 0
        self.model = cluster.KMeans(n_clusters=len(self.segment_ids), halflife=halflife, seed=0)
        self._reset_local(self.shared_)

    def _reset_local(self, centers: np.ndarray) -> None:
        self.model.centers = {
            i: defaultdict(float, dict(enumerate(row.tolist()))) for i, row in enumerate(centers)
        }
        self._synced = centers.copy()

    def predict_one(self, x: dict[int, float]) -> int:
        """The segment id whose shared center is nearest to a scaled point."""
        z = np.array([x.get(j, 0.0) for j in range(self.shared_.shape[1])])
        return self.segment_ids[int(np.argmin(self.distances(z[None, :])[0]))]

    def learn_one(self, x: dict[int, float]) -> None:
        """Move the nearest local center toward the point (one in `learn_every` points)."""
        self._seen += 1
        if self._seen % self.learn_every == 0:
            self.model.learn_one(x)  # type: ignore[no-untyped-call]

    def learn_many(self, points: np.ndarray) -> None:
        """`learn_one` for each row, in order; only the rows it would learn are converted
        to river's dicts (most are skipped: one in `learn_every`)."""
        n = len(points)
        first = (-self._seen - 1) % self.learn_every  # offset of the next learned row
        self._seen += n
        for row in points[first :: self.learn_every]:
            self.model.learn_one(dict(enumerate(row.tolist())))  # type: ignore[no-untyped-call]

    def distances(self, points: np.ndarray) -> np.ndarray:
        """Euclidean distance from each scaled point to each shared center, (n, k)."""
        diff = points[:, None, :] - self.shared_[None, :, :]
        dist: np.ndarray = np.sqrt((diff**2).sum(axis=2))
        return dist

    def local_delta(self) -> np.ndarray:
        """How far this worker's river centers moved since the last sync."""
        d = self.shared_.shape[1]
        local = np.array(
            [[self.model.centers[i][j] for j in range(d)] for i in range(len(self.segment_ids))]
        )
        delta: np.ndarray = local - self._synced
        return delta

    def merge(self, shared: np.ndarray) -> None:
        """Adopt the group's shared centers (after this worker's delta was added to them)."""
        self.shared_ = np.asarray(shared, dtype=float).copy()
        self._reset_local(self.shared_)

    def drift(self) -> np.ndarray:
        """Per segment, how far the shared center moved from the bundle's centroid."""
        moved: np.ndarray = np.sqrt(((self.shared_ - self.base_) ** 2).sum(axis=1))
        return moved
