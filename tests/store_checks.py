"""What the store tests share: small events, batching, cut points, the reference check."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.catalog import Catalog
from models.events import Event
from stream.stores import FeatureStore

DAY = 86_400.0


def ev(eid: str, cid: str, kind: str, ts: str, **props: object) -> Event:
    """A validated event (``ts`` ISO 8601)."""
    return Event.model_validate(
        {"event_id": eid, "customer_id": cid, "type": kind, "ts": ts, "properties": props}
    )


async def apply_in_batches(store: FeatureStore, events: list[Event], size: int = 500) -> None:
    for i in range(0, len(events), size):
        await store.apply(events[i : i + size])


def assert_matches_reference(
    got_customers: list[str], got: np.ndarray, expected: pd.DataFrame, catalog: Catalog
) -> None:
    """The store's rows equal the batch reference's (`offline.reference.features_at`)."""
    assert sorted(got_customers) == list(expected.index), "store and reference see other customers"
    want = expected.loc[got_customers].to_numpy()
    for j, spec in enumerate(catalog.features):
        if spec.aggregation in ("count", "distinct", "active_days"):
            np.testing.assert_array_equal(got[:, j], want[:, j], err_msg=spec.name)
        else:  # sums, ratios and times: the order of additions differs
            np.testing.assert_allclose(
                got[:, j], want[:, j], rtol=1e-12, atol=1e-9, err_msg=spec.name
            )


def cut_points(events: list[Event]) -> list[float]:
    start = min(e.epoch for e in events)
    end = max(e.epoch for e in events)
    # One mid-history cut at an odd time of day, one near the start, the end.
    return [start + 20.3 * DAY, start + 47.61 * DAY, end]
