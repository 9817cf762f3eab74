"""Issue #10: hot reload of a retrained bundle under traffic.

What a user relies on when a retrained bundle goes live in a running worker: customers the
new model places elsewhere get one `segment_reassigned` (cause `model_update`), never a
`segment_migration` caused by the model, and a real move right after the reload is still
on the migration topic.

One generated history, in which half the power users take on a new pattern (they start
buying and reading email) from day 60: the live bundle is trained before that (day 55, 5
segments), the retrained one at day 75 in the same folder (lineage keeps the ids) with a
6th segment, the split's child. The history is streamed through `Worker.handle` (event
clock, embedded Valkey) twice: once with the retrained bundle made `current` and hot
reloaded at day 75, once without (the control). Every published alert is collected.
Without the reassignment rule, each customer the new model places elsewhere would get a
migration about `dwell` days after the reload: measured with `Decider._reassign` stubbed
out, 39 more migrations after the reload than the control (82 against 43) with dwell 5 /
margin 0.15, 49 more with dwell 3 / margin 0.10. The windows below are counted in the
worker's own dwell, so the test holds for either default.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from models.bundle import Bundle, publish
from models.catalog import default_catalog
from models.events import parse_time
from offline.reference import features_at, load_frame
from offline.synthetic import PERSONAS, History, generate_history, split, write_history
from offline.train import TrainSettings, train
from stream.decide import DAY, Rules
from stream.metrics import Metrics
from stream.runtime import drop_prefix, open_runtime
from stream.settings import StreamSettings
from stream.worker import Message, Output, Worker
from tests.support import lines, unique

pytestmark = pytest.mark.slow

CATALOG = default_catalog()
START = parse_time("2026-01-01T00:00:00Z")
SHIFT_DAY, LIVE_DAY, RELOAD_DAY = 60, 55, 75
RELOAD = START + RELOAD_DAY * DAY  # the retrained bundle's as-of, and when it goes live
#: Fixed k, no bootstrap refits, early-life snapshots at two ages: a few seconds each.
FAST = TrainSettings(k=5, seed=0, n_bootstrap=0, ages=(7, 21))
BATCH = 1000


@dataclass
class Run:
    """What one pass of the stream published, and what Redis counted at its end."""

    alerts: list[tuple[str, dict[str, Any]]]  # (topic, body), in publication order
    switched: bool
    population: dict[int, int]  # the serving bundle's population counts

    def of(self, kind: str, *, after: float = -np.inf) -> list[dict[str, Any]]:
        return [b for _, b in self.alerts if b.get("type") == kind and at(b) >= after]


@dataclass
class Scenario:
    history: History
    live: Bundle
    new: Bundle
    settings: StreamSettings
    control: Run
    reload: Run
    rules: Rules  # the worker's (its settings' defaults); windows are counted in its dwell
    before: dict[str, int]  # each customer's segment when the reload happened
    placed: dict[str, int]  # where the new bundle puts each customer's features then
    young: set[str]  # customers the early-life classifier still placed then

    @property
    def dwell(self) -> float:
        return self.rules.migration_dwell_days * DAY


def at(body: dict[str, Any]) -> float:
    return datetime.fromisoformat(body["event_time"].replace("Z", "+00:00")).timestamp()


def move(migration: dict[str, Any]) -> tuple[str, int, int, str]:
    """What identifies a migration across the two runs (the ids differ by model version)."""
    b = migration
    return b["customer_id"], b["from_segment_id"], b["to_segment_id"], b["event_time"]


def carried(migration: dict[str, Any]) -> bool:
    """A migration whose dwell started before the reload: a move under way at it."""
    return bool(at(migration) - migration["dwell_days"] * DAY < RELOAD)


def truth_day(history: History, column: str) -> pd.Series:
    """Truth dates as Unix seconds (NaN where the customer has none)."""
    truth = history.truth.set_index("customer_id")[column]
    return (truth - pd.Timestamp(START, unit="s", tz="UTC")).dt.total_seconds() + START


async def stream(
    messages: list[Message],
    cut: int,
    settings: StreamSettings,
    live: Path,
    new: Path | None,
) -> Run:
    """Stream `messages` through a worker serving `live`; with `new`, make it `current` and
    hot reload it between message `cut - 1` and `cut` (the first event at the reload)."""
    settings = settings.model_copy(update={"key_prefix": unique("segstream-test-update")})
    runtime = await open_runtime(settings, model_path=live)
    sent: list[Output] = []

    async def collect(outputs: list[Output]) -> None:
        sent.extend(outputs)

    switched = False
    try:
        worker = Worker(runtime.engine, settings, Metrics(CollectorRegistry()))
        for lo in range(0, cut, BATCH):
            await worker.handle(messages[lo : min(lo + BATCH, cut)], collect)
        if new is not None:
            publish(settings.model_dir, new, CATALOG, action="promote")
            switched = await worker.check_model()
        for lo in range(cut, len(messages), BATCH):
            await worker.handle(messages[lo : lo + BATCH], collect)
        version = runtime.engine.bundle.version
        population = await runtime.engine.assignments.population(version)
    finally:
        await drop_prefix(runtime.connection, settings.key_prefix)
        await runtime.close()
    return Run([(o.topic, json.loads(o.value)) for o in sent], switched, population)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, embedded_redis_url: str) -> Scenario:
    root = tmp_path_factory.mktemp("model-update")
    # From day 60 half the power users buy and read email: a pattern the day-55 model
    # has no segment for and the day-75 model (k + 1) separates. No churners: a lapsing
    # cluster would take the 6th segment instead.
    into = replace(PERSONAS["power_user"], purchases=0.3, email_opens=1.0)
    history = generate_history(
        400, 100, seed=5, churn_share=0.0, migrate_share=0.15,
        shifts=split("power_user", into, "power_buyer", day=SHIFT_DAY),
    )  # fmt: skip
    events = write_history(history, root / "data")["events"]
    models = root / "models"
    live = train(
        events, START + LIVE_DAY * DAY, models, CATALOG, FAST,
        now=datetime(2026, 2, 25, tzinfo=UTC),
    ).bundle  # fmt: skip
    new = train(
        events, RELOAD, models, CATALOG, replace(FAST, k=6),
        now=datetime(2026, 3, 17, tzinfo=UTC), previous=models / "current", publish=False,
    ).bundle  # fmt: skip

    records = lines(history)
    messages = [Message(value, 0, i) for i, (_, value) in enumerate(records)]
    times = [parse_time(json.loads(value)["ts"]) for _, value in records]
    cut = next(i for i, t in enumerate(times) if t >= RELOAD)
    settings = StreamSettings(  # type: ignore[call-arg]
        redis_url=embedded_redis_url, model_dir=models, clock="event"
    )
    control = asyncio.run(stream(messages, cut, settings, live.path, None))
    reload = asyncio.run(stream(messages, cut, settings, live.path, new.path))

    before: dict[str, int] = {}  # the same in both runs: the stream up to the reload
    for _, body in reload.alerts:
        if body.get("type") == "segment_assigned" and at(body) < RELOAD:
            before[body["customer_id"]] = body["segment_id"]
    # Independently of the alerts: the new bundle on everyone's features at the reload,
    # placed as the rules place a customer (early-life classifier while young).
    feats = features_at(load_frame(events, CATALOG), CATALOG, RELOAD)[list(CATALOG.names)]
    x = feats.to_numpy(dtype=float)
    placed = new.nearest(x)
    rules = settings.rules()
    young = x[:, CATALOG.names.index("tenure_days")] < rules.early_days
    if new.early_model is not None and young.any():
        placed[young] = new.early_segment(x[young])
    return Scenario(
        history, live, new, settings, control, reload, rules, before,
        {str(c): int(s) for c, s in zip(feats.index, placed, strict=True)},
        {str(c) for c in feats.index[young]},
    )  # fmt: skip


def moved_by_model(s: Scenario) -> dict[str, tuple[int, int]]:
    """Customers settled before the reload whom the new bundle places elsewhere at it:
    (segment before, the new bundle's segment)."""
    return {
        c: (seg, s.placed[c]) for c, seg in s.before.items() if c in s.placed and s.placed[c] != seg
    }


def movers_until(s: Scenario, end: float) -> set[str]:
    """True movers (the generator's truth) whose behaviour changed before `end`."""
    movers = truth_day(s.history, "migration_day")
    return set(movers[movers < end].index)


def test_the_retrained_bundle_really_differs(scenario: Scenario) -> None:
    """The premise: a new segment (the split's child) under a new id, old ids kept."""
    live, new = scenario.live, scenario.new
    assert live.version != new.version
    assert new.manifest["lineage"]["previous_version"] == live.version
    added = set(new.segment_ids) - set(live.segment_ids)
    assert len(added) == 1 and set(live.segment_ids) < set(new.segment_ids)
    shifted = truth_day(scenario.history, "shift_day").dropna().index
    child = [scenario.placed[c] for c in shifted if c in scenario.placed]
    assert np.mean(np.isin(child, list(added))) >= 0.7, Counter(child)
    assert scenario.reload.switched and not scenario.control.switched


def test_customers_the_model_moved_are_reassigned_once(scenario: Scenario) -> None:
    s, live, new = scenario, scenario.live, scenario.new
    assert s.control.of("segment_reassigned") == []
    reassigned = s.reload.of("segment_reassigned")
    assert len(reassigned) >= 20
    by_customer = {b["customer_id"]: b for b in reassigned}
    assert len(by_customer) == len(reassigned), "one reassignment per customer and model"
    topics = {t for t, b in s.reload.alerts if b.get("type") == "segment_reassigned"}
    assert topics == {s.settings.assignments_topic}
    for body in reassigned:
        assert body["cause"] == "model_update"
        assert body["previous_model_version"] == live.version
        assert body["model_version"] == new.version
        # At the customer's first evaluation under the new bundle: its next event or, if
        # silent, the re-score at the next midnight; always within a day.
        assert RELOAD <= at(body) <= RELOAD + DAY
        assert body["previous_segment_id"] == s.before[body["customer_id"]]
        assert body["segment_id"] != body["previous_segment_id"]
        assert body["segment_id"] in new.segment_ids
        assert body["segment_name"] == new.segment_names[body["segment_id"]]
    # The customers of the split land in the new segment by reassignment: the flood a
    # plain migration rule would have sent to the migration topic.
    added = set(new.segment_ids) - set(live.segment_ids)
    shifted = [c for c in truth_day(s.history, "shift_day").dropna().index if c in s.before]
    into_new = [c for c in shifted if by_customer.get(c, {}).get("segment_id") in added]
    assert len(into_new) >= 0.75 * len(shifted), (len(into_new), len(shifted))
    # The reassignments are the new model's placements. It places the anchor (the
    # features when last settled), and `moved_by_model` the features at the reload: they
    # differ for some young customers and customers with a move under way.
    moved = moved_by_model(s)
    agree = [c for c, b in by_customer.items() if moved.get(c, (0, -1))[1] == b["segment_id"]]
    assert len(agree) >= 0.8 * len(reassigned), (len(agree), len(reassigned))
    # Redis counts the population under the new version from each customer's first
    # evaluation under it: every customer, in the segment it ended in.
    final: dict[str, int] = {}
    for _, body in s.reload.alerts:
        if body.get("type") in ("segment_assigned", "segment_reassigned"):
            final[body["customer_id"]] = body["segment_id"]
    assert s.reload.population == dict(Counter(final.values()))


def test_no_migration_is_caused_by_the_model(scenario: Scenario) -> None:
    s, new, dwell = scenario, scenario.new, scenario.dwell
    after = s.reload.of("segment_migration", after=RELOAD)
    control = s.control.of("segment_migration", after=RELOAD)
    assert after and all(b["model_version"] == new.version for b in after)
    # Each migration starts from the segment the customer was last told it is in, apart
    # from a move made in silence (`placed_by: inactivity`), which the migration confirms.
    segment: dict[str, int] = {}
    settled: dict[str, int] = {}
    for _, body in s.reload.alerts:
        kind, cid = body.get("type"), str(body.get("customer_id"))
        if kind == "segment_migration":
            assert body["from_segment_id"] == settled[cid], body
        elif kind == "segment_reassigned":
            assert body["previous_segment_id"] == segment[cid], body
        if kind in ("segment_assigned", "segment_reassigned"):
            segment[cid] = body["segment_id"]
            if body.get("placed_by") != "inactivity":
                settled[cid] = body["segment_id"]
    # The model's signature: a settled customer the new bundle places elsewhere, moved
    # from its old segment to that one by a dwell that started at the reload, where the
    # control (the old model all along) has no such move. With the rule the customer is
    # already there (reassigned): reaching it by migration would take two moves of a
    # full dwell each. Not the model's: true movers' migrations, moves under way at the
    # reload (they carry over), and young customers, whom the early-life classifier
    # places anew at each event without the margin.
    exempt = movers_until(s, RELOAD + 2 * dwell) | s.young
    also = {move(b) for b in control}
    moved = moved_by_model(s)
    caused = [
        b for b in after
        if b["customer_id"] in moved and b["customer_id"] not in exempt and not carried(b)
        and (b["from_segment_id"], b["to_segment_id"]) == moved[b["customer_id"]]
        and at(b) < RELOAD + 2 * dwell and move(b) not in also
    ]  # fmt: skip
    assert caused == []
    # A reassignment is rarely undone: the first row under the new bundle contradicting
    # the anchor's placement by the margin starts a move straight back (a customer right
    # on the new boundary). A few, not one per reassigned customer.
    reassigned = {b["customer_id"]: b for b in s.reload.of("segment_reassigned")}
    back = [
        b for b in after
        if (r := reassigned.get(b["customer_id"])) is not None
        and b["customer_id"] not in exempt
        and b["to_segment_id"] == r["previous_segment_id"]
        and at(b) - b["dwell_days"] * DAY <= at(r) + 60
    ]  # fmt: skip
    assert len(back) <= max(2, len(reassigned) // 10), [b["customer_id"] for b in back]
    # Counts against the control (same stream, no reload). Where the model's migrations
    # would land (up to two dwells after the reload): no more than the control's, but
    # for a little of the noise the two models' boundaries make differently. Over the
    # whole rest of the stream customers caught mid-shift still cross the new boundary
    # by their own behaviour; a missing rule would add about one migration per
    # reassigned customer, so a quarter of that is the slack.
    window = RELOAD + 2 * dwell
    soon = [b for b in after if at(b) < window]
    soon_control = [b for b in control if at(b) < window]
    slack = max(3, len(reassigned) // 10)
    assert len(soon) <= len(soon_control) + slack, (len(soon), len(soon_control))
    assert len(after) <= len(control) + len(reassigned) // 4, (len(after), len(control))


def test_real_moves_after_the_reload_are_still_alerted(scenario: Scenario) -> None:
    s, new = scenario, scenario.new
    movers = truth_day(s.history, "migration_day")
    soon = movers[(movers >= RELOAD) & (movers < RELOAD + 10 * DAY)]

    def caught(run: Run) -> set[str]:
        return {
            b["customer_id"]
            for b in run.of("segment_migration", after=RELOAD)
            if b["customer_id"] in soon.index and at(b) >= soon[b["customer_id"]]
        }

    # The movers the old model catches, the new one catches as well (but for one whose
    # path crosses the new segment: the new model reassigns it there, or the margin
    # holds it back), with its version.
    in_control, in_reload = caught(s.control), caught(s.reload)
    assert len(in_reload) >= max(3, len(in_control) - 1), (len(in_reload), len(in_control))
    assert len(in_control - in_reload) <= 1, sorted(in_control - in_reload)
    for body in s.reload.of("segment_migration", after=RELOAD):
        if body["customer_id"] in in_reload:
            assert body["model_version"] == new.version
            assert body["from_segment_id"] != body["to_segment_id"]
    # A move under way at the reload keeps its dwell: migrations under the new bundle
    # whose dwell started under the old one.
    under_way = [b for b in s.reload.of("segment_migration", after=RELOAD) if carried(b)]
    assert under_way and all(b["model_version"] == new.version for b in under_way)
