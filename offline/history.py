"""One entry point for a synthetic history of any shape.

`generate` hands persona histories (`offline.synthetic.generate_history`) and purchase-only
retail histories (`offline.retail.generate_retail`) the same arguments, so callers that
iterate over `offline.shapes.SHAPES` need not know which generator makes which shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from offline.retail import generate_retail
from offline.shapes import HistoryShape
from offline.synthetic import DEFAULT_SHAPE, DEFAULT_START, History, Shift, generate_history


def generate(
    customers: int,
    days: int,
    seed: int,
    *,
    start: datetime = DEFAULT_START,
    duplicate_rate: float = 0.0,
    late_rate: float = 0.0,
    churn_share: float = 0.15,
    migrate_share: float = 0.10,
    shifts: Sequence[Shift] = (),
    shape: HistoryShape = DEFAULT_SHAPE,
) -> History:
    """A history of `shape` (see `generate_history` for the arguments).

    A retail history has no personas: shifts are refused, churn and migration shares
    do not apply.

    >>> from offline.shapes import SHAPES
    >>> set(generate(50, 30, seed=1, shape=SHAPES["retail"]).events["type"])
    {'purchase'}
    """
    if shape.kind != "retail":
        return generate_history(
            customers, days, seed, start=start, duplicate_rate=duplicate_rate,
            late_rate=late_rate, churn_share=churn_share, migrate_share=migrate_share,
            shifts=shifts, shape=shape,
        )  # fmt: skip
    if shifts:
        raise ValueError("shifts: a retail history has no personas to shift")
    return generate_retail(
        customers, days, seed, start=start, duplicate_rate=duplicate_rate,
        late_rate=late_rate, shape=shape,
    )  # fmt: skip


__all__ = ["generate"]
