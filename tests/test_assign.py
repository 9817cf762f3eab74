"""Online centers: a batch of points teaches them exactly what the same points one by one do."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.assign import OnlineCenters

CENTROIDS = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -2.0]])


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=0, max_value=25), max_size=8),
    learn_every=st.integers(min_value=1, max_value=12),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_learn_many_is_learn_one_row_by_row(chunks: list[int], learn_every: int, seed: int) -> None:
    """The engine feeds each batch's rows at once; however a stream is cut into batches,
    the centers move as if every row came alone (the same rows learned, in order)."""
    rng = np.random.default_rng(seed)
    batched = OnlineCenters(CENTROIDS, [3, 5, 8], halflife=0.2, learn_every=learn_every)
    single = OnlineCenters(CENTROIDS, [3, 5, 8], halflife=0.2, learn_every=learn_every)
    for size in chunks:
        points = rng.normal(scale=3.0, size=(size, 3))
        batched.learn_many(points)
        for row in points:
            single.learn_one(dict(enumerate(row.tolist())))
    np.testing.assert_array_equal(batched.local_delta(), single.local_delta())
    assert batched.predict_one({0: 3.0, 1: 1.0}) == single.predict_one({0: 3.0, 1: 1.0})
