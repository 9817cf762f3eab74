"""The alert rules of `stream.decide`, on a two-segment toy model (no Redis, no Kafka).

Each test drives `Decider.decide` row by row as the engine does and checks one rule a
user relies on: the first segment, hysteresis (margin and dwell), churn's rising edge and
cool-down, and what a model change does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream.decide import DAY, CustomerState, Decider, Decisions, Row, Rules

NAMES = ["tenure_days", "x", "y", "days_since_last_event"]
CENTERS = np.array([[0.0, 0.0], [10.0, 0.0]])  # segment 1 at the origin, segment 2 at x=10


@dataclass
class ToyModel:
    """Scaled space = (x, y); churn probability = y / 10; early classifier by x."""

    version: str = "v1"
    segment_names: dict[int, str] = field(default_factory=lambda: {1: "Casual", 2: "Power"})
    churn_threshold: float = 0.5
    early_model: object = True
    churn_model: object = True
    lapsing_segments: frozenset[int] = frozenset()

    def scale(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=float)[:, 1:3]

    def nearest(self, features: np.ndarray) -> np.ndarray:
        z = self.scale(features)
        return np.argmin(((z[:, None, :] - CENTERS[None, :, :]) ** 2).sum(axis=2), axis=1) + 1

    def early_segment(self, features: np.ndarray) -> np.ndarray:
        return np.where(features[:, 1] > 5, 2, 1)

    def churn_probability(self, features: np.ndarray) -> np.ndarray:
        return np.clip(features[:, 2] / 10, 0, 1)


class Customer:
    """One customer's evaluations through a decider, keeping its state between calls."""

    def __init__(self, decider: Decider, cid: str = "c1") -> None:
        self.decider = decider
        self.cid = cid
        self.state: dict[str, CustomerState] = {}
        self.alerts: list[tuple[str, dict[str, object]]] = []

    def see(
        self, day: float, x: float, y: float = 0.0, *, tenure: float = 100.0,
        rescore: bool = False, silent: float = 0.0,
    ) -> Decisions:  # fmt: skip
        feats = np.array([[tenure, x, y, silent]])  # silent: days since the last event
        z = self.decider.model.scale(feats)
        dist = np.sqrt(((z[:, None, :] - CENTERS[None, :, :]) ** 2).sum(axis=2))
        trigger = f"rescore:{int(day)}" if rescore else f"e{day}-{x}-{y}"
        out = self.decider.decide(
            [Row(self.cid, day * DAY, trigger)], feats, z, dist, self.state, score_churn=rescore
        )
        self.state = out.states
        self.alerts += [(a.kind, a.body) for a in out.alerts]
        return out

    def kinds(self) -> list[str]:
        """The segment and churn alerts (lifecycle ones have tests of their own)."""
        return [kind for kind, _ in self.alerts if kind != "lifecycle_changed"]

    def stages(self) -> list[tuple[object, object]]:
        return [
            (b["previous_stage"], b["stage"]) for k, b in self.alerts if k == "lifecycle_changed"
        ]

    @property
    def segment(self) -> int | None:
        return self.state[self.cid].segment


def decider(model: ToyModel | None = None, rules: Rules | None = None) -> Decider:
    return Decider(
        model or ToyModel(),
        [1, 2],
        NAMES,
        [1, 2],
        np.array([np.nan, 0.0, 0.0, 0.0]),
        rules or Rules(migration_margin=0.1, migration_dwell_days=3.0, churn_cooldown_days=14.0),
    )


def test_first_evaluation_assigns_a_segment_once() -> None:
    c = Customer(decider())
    c.see(1, x=9.0, tenure=1.0)
    c.see(2, x=9.5, tenure=2.0)
    assert c.kinds() == ["segment_assigned"]
    body = c.alerts[0][1]
    assert body["first"] is True and body["segment_id"] == 2
    assert body["placed_by"] == "early_life_classifier"
    assert body["segment_name"] == "Power"


def test_migration_needs_the_margin_and_the_dwell() -> None:
    c = Customer(decider())
    c.see(0, x=1.0)
    c.see(1, x=5.2)  # nearer to 2 by 4%: inside the margin, no candidate
    assert c.state["c1"].candidate is None
    c.see(2, x=8.0)  # clearly nearer: candidate from day 2
    c.see(4, x=8.0)  # 2 days of dwell: not yet
    assert c.kinds() == ["segment_assigned"] and c.segment == 1
    c.see(5, x=8.0)  # 3 days: the move
    assert c.kinds() == ["segment_assigned", "segment_migration", "segment_assigned"]
    move = c.alerts[1][1]
    assert (move["from_segment_id"], move["to_segment_id"]) == (1, 2)
    assert move["dwell_days"] == 3.0
    assert move["evidence_lead_nats"] is None  # the centers moved it, not the evidence
    drivers = move["drivers"]
    assert isinstance(drivers, list) and drivers[0]["feature"] == "x"
    assert (drivers[0]["before"], drivers[0]["after"]) == (1.0, 8.0)


def test_leaving_a_segment_of_silent_customers_is_a_reactivation_not_a_migration() -> None:
    """Segment 1 as the bundle's Lapsing segment: the same move as above, out of it, is a
    customer coming back (`placed_by: reactivation`); into it, still a migration."""
    model = ToyModel(segment_names={1: "Lapsing", 2: "Power"}, lapsing_segments=frozenset({1}))
    c = Customer(decider(model))
    c.see(0, x=1.0)
    c.see(2, x=8.0)
    c.see(5, x=8.0)
    assert c.kinds() == ["segment_assigned", "segment_assigned"] and c.segment == 2
    body = c.alerts[-1][1]
    assert body["placed_by"] == "reactivation" and body["previous_segment_id"] == 1
    c.see(8, x=1.0)
    c.see(11, x=1.0)  # back into the silent segment: a change the alerts must show
    assert c.kinds()[-2:] == ["segment_migration", "segment_assigned"] and c.segment == 1


def test_a_brief_excursion_is_not_a_migration() -> None:
    c = Customer(decider())
    c.see(0, x=1.0)
    c.see(1, x=9.0)
    c.see(2, x=9.0)
    c.see(3, x=1.0)  # back home before the dwell: the candidate is dropped
    c.see(6, x=9.0)  # a new excursion starts its dwell again
    assert c.kinds() == ["segment_assigned"]
    assert c.state["c1"].candidate_since == 6 * DAY


def test_a_move_made_in_silence_is_a_placement_and_coming_back_is_not_a_migration() -> None:
    """A quiet week decays the features at each daily re-score: the segment follows (the
    populations must show who went quiet) but that is no migration, and neither is
    coming back to the segment the customer had before."""
    c = Customer(decider())
    c.see(0, x=1.0)
    c.see(1, x=8.0, rescore=True, silent=1.0)  # decayed into the other segment: candidate
    c.see(4, x=8.0, rescore=True, silent=4.0)  # silent through the dwell: a quiet move
    assert c.kinds() == ["segment_assigned"] * 2 and c.segment == 2
    assert c.alerts[1][1]["placed_by"] == "inactivity"
    c.see(6, x=1.0)  # its own event, as before the silence
    assert c.kinds() == ["segment_assigned"] * 3 and c.segment == 1
    assert c.alerts[2][1]["placed_by"] == "return"
    assert c.state["c1"].quiet_from is None
    stays = Customer(decider())
    stays.see(0, x=1.0)
    stays.see(1, x=8.0, rescore=True, silent=1.0)
    stays.see(4, x=8.0, rescore=True, silent=4.0)  # the quiet move
    stays.see(5, x=9.0, rescore=True, silent=5.0)  # still silent, decaying further
    stays.see(6, x=8.0)  # active again, and still there: that is the migration
    assert stays.kinds() == ["segment_assigned"] * 2 + ["segment_migration", "segment_assigned"]
    move = stays.alerts[2][1]
    assert (move["from_segment_id"], move["to_segment_id"], move["dwell_days"]) == (1, 2, 5.0)
    # The drivers start from the features before the silence, not from a silent re-score.
    assert (move["drivers"][0]["before"], move["drivers"][0]["after"]) == (1.0, 8.0)
    assert stays.alerts[3][1]["previous_segment_id"] == 1


def test_a_move_with_events_during_the_dwell_waits_for_an_event_to_complete() -> None:
    c = Customer(decider())
    c.see(0, x=1.0)
    c.see(1, x=8.0)  # candidate, on an event
    c.see(4, x=8.0, rescore=True, silent=0.5)  # dwell held, but it was active: wait
    assert c.kinds() == ["segment_assigned"] and c.segment == 1
    c.see(5, x=8.0)  # the next event confirms: a migration
    assert c.kinds()[1:] == ["segment_migration", "segment_assigned"]


def test_a_settling_customer_is_placed_again_not_migrated() -> None:
    """While young, and for one dwell after (early_days 30 + dwell 3), a change of
    segment refines the placement: `segment_assigned` with `placed_by`, no migration."""
    c = Customer(decider())
    c.see(1, x=1.0, tenure=1.0)
    c.see(5, x=9.0, tenure=5.0)  # the classifier now says Power: candidate
    c.see(8, x=9.0, tenure=8.0)  # held for the dwell
    c.see(31, x=1.0, tenure=31.0)  # the centers take over, and say Casual
    c.see(34, x=1.0, tenure=34.0)
    assert c.kinds() == ["segment_assigned"] * 3
    placed = [
        (b["segment_id"], b["first"], b["placed_by"])
        for kind, b in c.alerts
        if kind == "segment_assigned"
    ]
    assert placed == [
        (1, True, "early_life_classifier"),
        (2, False, "early_life_classifier"),
        (1, False, "nearest_centroid"),
    ]
    c.see(40, x=9.0, tenure=40.0)  # settled: a real move is a migration again
    c.see(43, x=9.0, tenure=43.0)
    assert c.kinds()[3:] == ["segment_migration", "segment_assigned"]


def test_churn_alerts_on_the_rising_edge_with_a_cooldown() -> None:
    c = Customer(decider())
    c.see(0, x=1.0, y=0.0)
    c.see(1, x=1.0, y=6.0, rescore=True)  # crosses 0.5: alert
    c.see(2, x=1.0, y=7.0, rescore=True)  # still high: no repeat
    c.see(3, x=1.0, y=1.0, rescore=True)  # falls
    c.see(4, x=1.0, y=8.0, rescore=True)  # rises again inside the cool-down: silent
    c.see(20, x=1.0, y=1.0, rescore=True)
    c.see(21, x=1.0, y=8.0, rescore=True)  # after the cool-down: alert
    churn = [b for k, b in c.alerts if k == "churn_risk"]
    assert [b["event_time"] for b in churn] == ["1970-01-02T00:00:00Z", "1970-01-22T00:00:00Z"]
    assert churn[0]["probability"] == 0.6


def test_events_never_judge_churn() -> None:
    c = Customer(decider())
    c.see(0, x=1.0, y=9.0)  # an event row: churn is judged at the daily re-score only
    assert "churn_risk" not in c.kinds()


def test_alert_ids_are_deterministic() -> None:
    a, b = Customer(decider()), Customer(decider())
    for c in (a, b):
        c.see(0, x=1.0)
        c.see(1, x=1.0, y=9.0, rescore=True)
    assert [x["alert_id"] for _, x in a.alerts] == [x["alert_id"] for _, x in b.alerts]
    assert len({x["alert_id"] for _, x in a.alerts}) == len(a.alerts)


def test_the_callers_states_are_not_modified() -> None:
    c = Customer(decider())
    c.see(0, x=1.0)
    before = c.state["c1"].copy()
    kept = dict(c.state)
    c.see(1, x=9.0)
    assert kept["c1"] == before
    assert c.state["c1"] != before


def test_a_model_change_reassigns_without_a_migration() -> None:
    c = Customer(decider())
    c.see(0, x=4.0)
    assert c.segment == 1
    # The new bundle's centers put the same behavior (x=4) nearer to segment 2: the
    # model changed, not the customer.
    c.decider = decider(ToyModel(version="v2"))
    shifted = CENTERS.copy()
    CENTERS[1] = [5.0, 0.0]
    try:
        c.see(1, x=4.0)
    finally:
        CENTERS[:] = shifted
    assert c.kinds() == ["segment_assigned", "segment_reassigned"]
    body = c.alerts[1][1]
    assert body["cause"] == "model_update"
    assert (body["previous_segment_id"], body["segment_id"]) == (1, 2)
    assert (body["previous_model_version"], body["model_version"]) == ("v1", "v2")
    c.see(2, x=4.0)
    assert c.kinds() == ["segment_assigned", "segment_reassigned"]  # once per model


def test_an_unchanged_segment_under_a_new_model_is_silent() -> None:
    c = Customer(decider())
    c.see(0, x=1.0)
    c.decider = decider(ToyModel(version="v2"))
    c.see(1, x=1.0)
    assert c.kinds() == ["segment_assigned"]
    assert c.state["c1"].model_version == "v2"


def test_a_move_under_way_survives_a_model_change() -> None:
    c = Customer(decider())
    c.see(0, x=1.0)
    c.see(1, x=9.0)  # candidate 2 from day 1
    c.decider = decider(ToyModel(version="v2"))
    c.see(2, x=9.0)  # same centers: the settled behavior is still segment 1; dwell goes on
    assert c.state["c1"].candidate == 2 and c.state["c1"].candidate_since == 1 * DAY
    c.see(4, x=9.0)  # dwell counted from before the reload
    assert c.kinds() == ["segment_assigned", "segment_migration", "segment_assigned"]


def test_lifecycle_stages_follow_tenure_silence_and_returns() -> None:
    """new while young, active after, dormant after 30 silent days (at a re-score),
    returning at the next event (for 30 days), then active again; no alert for the first
    stage, and no second first assignment."""
    c = Customer(decider())
    c.see(0, x=1.0, tenure=0.0)
    c.see(31, x=1.0, tenure=31.0)
    c.see(61, x=1.0, tenure=61.0, rescore=True, silent=30.0)
    c.see(100, x=1.0, tenure=100.0)
    c.see(110, x=1.0, tenure=110.0)
    c.see(131, x=1.0, tenure=131.0)
    assert c.stages() == [
        ("new", "active"),
        ("active", "dormant"),
        ("dormant", "returning"),
        ("returning", "active"),
    ]
    returning = [b for k, b in c.alerts if k == "lifecycle_changed" and b["stage"] == "returning"]
    assert returning[0]["days_silent"] == 69.0
    assert sum(1 for k, b in c.alerts if k == "segment_assigned" and b["first"]) == 1
