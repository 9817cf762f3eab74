"""Lifecycle: where a customer stands in its life with the product, beside its segment.

The behavioral segment says *how* a customer uses the product; the lifecycle stage says
*whether* it still does:

- ``new``: first seen less than `early_days` ago (placed by the early-life classifier);
- ``active``: older, with an event in the last `dormant_days`;
- ``dormant``: no event for `dormant_days` (judged at its daily re-score);
- ``returning``: an event after a silence of `dormant_days` or more (a win-back); it
  stays returning for `dormant_days`, then becomes active.

A customer keeps its id, profile and segment through all of them: one who comes back is
``returning``, never new again, and never gets a second first assignment.

Pure: the decider (`stream.decide`) calls `next_stage` for every evaluation row.

>>> next_stage(None, tenure_days=2, silent_days=0, gap_days=0, in_stage_days=0,
...            early_days=30, dormant_days=30)
'new'
>>> next_stage("dormant", tenure_days=200, silent_days=0, gap_days=45, in_stage_days=15,
...            early_days=30, dormant_days=30)
'returning'
"""

from __future__ import annotations

from typing import Final, Literal

Stage = Literal["new", "active", "dormant", "returning"]
STAGES: Final[tuple[Stage, ...]] = ("new", "active", "dormant", "returning")


def next_stage(
    previous: str | None,
    *,
    tenure_days: float,
    silent_days: float,
    gap_days: float,
    in_stage_days: float,
    early_days: float,
    dormant_days: float,
) -> Stage:
    """The stage after one evaluation.

    `silent_days`: days since the customer's last event at the evaluation (0 right after
    an event); `gap_days`: at an event, the days since the event before it (0 otherwise);
    `in_stage_days`: days since the customer entered `previous`.
    """
    if silent_days >= dormant_days:
        return "dormant"
    if gap_days >= dormant_days or (previous == "dormant" and gap_days > 0):
        return "returning"
    if previous == "returning" and in_stage_days < dormant_days:
        return "returning"
    return "new" if tenure_days < early_days else "active"


def stage_field(stage: str) -> str:
    """The population hash field that counts customers in `stage` (beside the segments'
    numeric fields).

    >>> stage_field("dormant")
    'stage:dormant'
    """
    return f"stage:{stage}"


__all__ = ["STAGES", "Stage", "next_stage", "stage_field"]
