"""Online centers shared by workers: the merge is the same for 1 to 8 workers, in any order.

Property-tested (hypothesis) on the pure merge (`stream.centers`, `stream.assign`): the same
rows split over 1 to 8 workers, synced in a random interleaving with retried (duplicated)
syncs, give the centers a single worker gives, within `TOLERANCE`; a retried sync changes
nothing; no center ever moves more than `MAX_SHIFT` of the distance to the nearest other
bundle centroid, so every center stays nearest to its own bundle centroid.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.assign import OnlineCenters
from stream.centers import DAY, MAX_SHIFT, CenterStats, merge_centers, shift_bounds

CENTROIDS = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -2.0]])
SEGMENTS = [3, 5, 8]
#: The stated tolerance: the merge is a sum, so splits differ by float rounding only.
TOLERANCE = 1e-9


def _rows(seed: int, n: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Scaled rows around the centroids (with `spread` large, far beyond them) and event
    times over 30 days."""
    rng = np.random.default_rng(seed)
    points = CENTROIDS[rng.integers(0, 3, n)] + rng.normal(scale=spread, size=(n, 3))
    return points, rng.uniform(0, 30 * DAY, n)


def _bounded(centers: OnlineCenters) -> None:
    moved = np.sqrt(((centers.shared_ - CENTROIDS) ** 2).sum(axis=1))
    assert (moved <= shift_bounds(CENTROIDS, MAX_SHIFT) * (1 + 1e-12)).all()
    # Hence each center is nearer its own bundle centroid than any other: names stay.
    own = np.sqrt(((centers.shared_[:, None, :] - CENTROIDS[None]) ** 2).sum(axis=2))
    assert (own.argmin(axis=1) == np.arange(len(CENTROIDS))).all()


@settings(max_examples=60, deadline=None)
@given(
    workers=st.integers(min_value=1, max_value=8),
    n=st.integers(min_value=0, max_value=300),
    spread=st.sampled_from([0.5, 2.0, 20.0]),
    halflife=st.sampled_from([0.001, 0.05, 0.5]),
    chunk=st.integers(min_value=1, max_value=40),
    syncs=st.floats(min_value=0.05, max_value=0.9),
    retries=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_any_split_interleaving_and_retry_gives_the_single_worker_centers(
    workers: int,
    n: int,
    spread: float,
    halflife: float,
    chunk: int,
    syncs: float,
    retries: float,
    seed: int,
) -> None:
    """`seed` draws which worker sees each row and the interleaving: at each step one
    worker learns its next rows (up to `chunk`) or, with chance `syncs`, syncs, and with
    chance `retries` syncs again at once (a retry after a lost reply)."""
    points, times = _rows(seed, n, spread)
    single = OnlineCenters(CENTROIDS, SEGMENTS, halflife=halflife, memory_days=3.0, worker="s")
    single.learn_many(points, times)
    single.merge({"s": single.stats_.pack()})
    _bounded(single)

    rng = np.random.default_rng(seed + 1)
    group = [
        OnlineCenters(CENTROIDS, SEGMENTS, halflife=halflife, memory_days=3.0, worker=f"w{i}")
        for i in range(workers)
    ]
    owner = rng.integers(0, workers, n)
    queues = [np.flatnonzero(owner == w).tolist() for w in range(workers)]
    shared: dict[str, bytes] = {}  # the hash every worker writes its entry to

    def sync(w: OnlineCenters) -> np.ndarray:  # what centers.lua does
        for name, value in w.forget_.items():
            if shared.get(name) == value:
                del shared[name]
        shared[w.worker] = w.stats_.pack()
        return w.merge(dict(shared)).copy()

    while any(queues):
        w = int(rng.choice([i for i, q in enumerate(queues) if q]))
        if rng.random() >= syncs:
            take = int(rng.integers(1, chunk + 1))
            rows, queues[w] = queues[w][:take], queues[w][take:]
            group[w].learn_many(points[rows], times[rows])
        else:
            first = sync(group[w])
            _bounded(group[w])
            if rng.random() < retries:
                np.testing.assert_array_equal(sync(group[w]), first)  # the retry: a no-op
    for i in rng.permutation(workers):
        sync(group[i])
    final = group[0].merge(dict(shared))
    np.testing.assert_allclose(final, single.shared_, rtol=0, atol=TOLERANCE)
    for w in group:  # every worker ends on the same centers
        np.testing.assert_allclose(w.merge(dict(shared)), final, rtol=0, atol=TOLERANCE)
        _bounded(w)


def test_a_center_follows_its_rows_and_forgets_the_prior() -> None:
    """With many rows near a centroid the center is their weighted mean, as the river
    k-means of one worker converged to; a center no row taught stays at the bundle's."""
    rng = np.random.default_rng(3)
    target = CENTROIDS[1] + np.array([0.6, -0.4, 0.2])
    points = target + rng.normal(scale=0.1, size=(20_000, 3))
    c = OnlineCenters(CENTROIDS, SEGMENTS, halflife=0.001, worker="w")
    c.learn_many(points, np.zeros(len(points)))
    c.merge({})
    assert np.linalg.norm(c.shared_[1] - target) < 0.06  # 1000 rows of prior in 21,000
    np.testing.assert_array_equal(c.shared_[[0, 2]], CENTROIDS[[0, 2]])
    assert c.predict_one(dict(enumerate(target))) == 5


def test_old_rows_decay_in_event_time_and_a_departed_worker_is_dropped() -> None:
    """A row weighs half after `memory_days`; a worker whose newest row is 50 half-lives
    older than the group's is forgotten (its weight is below 2**-50)."""
    left = CenterStats.empty(3, 3)
    left.learn(CENTROIDS, np.array([[1.0, 0.0, 0.0]]), np.array([0.0]), DAY)
    late = CenterStats.empty(3, 3)
    late.learn(CENTROIDS, np.array([[-1.0, 0.0, 0.0]]), np.array([DAY]), DAY)
    merged = merge_centers(CENTROIDS, [left, late], prior_weight=1e-12, halflife_seconds=DAY)
    # weights 1/2 (a day old) and 1: (0.5 * 1 - 1) / 1.5
    assert abs(merged[0, 0] + 1 / 3) < 1e-9
    c = OnlineCenters(CENTROIDS, SEGMENTS, memory_days=1.0, worker="w")
    c.learn_many(np.array([[0.1, 0.0, 0.0]]), np.array([51 * DAY]))
    c.merge({"gone": left.pack(), "w": c.stats_.pack()})
    assert list(c.forget_) == ["gone"]


def test_a_bundle_with_one_segment_is_not_bounded() -> None:
    c = OnlineCenters(np.array([[0.0, 0.0]]), [1], halflife=0.5, worker="w")
    c.learn_many(np.array([[100.0, 0.0]] * 4), np.zeros(4))
    c.merge({})
    assert c.shared_[0, 0] == 400 / 6  # (2 * 0 + 4 * 100) / (2 + 4)
