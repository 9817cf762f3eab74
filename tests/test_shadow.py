"""Shadow mode's core (`stream.shadow`): a candidate bundle decides beside the live one.

No Redis or Kafka here: the live decisions come from a `Decider` over reference features,
as the engine would pass them. The worker test checks the metrics end to end.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from models.bundle import Bundle, load_bundle
from models.catalog import default_catalog
from models.events import parse_time
from offline.reference import features_at, load_frame
from offline.synthetic import generate_history, write_history
from stream.decide import DAY, CustomerState, Decider, Row, Rules
from stream.metrics import Metrics
from stream.runtime import drop_prefix, open_runtime
from stream.settings import StreamSettings
from stream.shadow import Shadow
from stream.worker import Message, Output, Worker
from tests.support import lines, unique

CATALOG = default_catalog()


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[list[Row], np.ndarray]]:
    """Two evaluations of 300 customers, 10 days apart (the second a daily re-score)."""
    folder = tmp_path_factory.mktemp("shadow-history")
    frame = load_frame(write_history(generate_history(300, 80, seed=11), folder)["events"], CATALOG)
    out = []
    for day, trigger in ((60, "e"), (70, "rescore:70")):
        at = parse_time("2026-01-01T00:00:00Z") + day * DAY
        feats = features_at(frame, CATALOG, at)
        rows = [Row(str(cid), at, f"{trigger}{cid}") for cid in feats.index]
        out.append((rows, feats[list(CATALOG.names)].to_numpy(dtype=float)))
    return out


def live_decider(bundle: Bundle) -> Decider:
    return Decider(
        bundle,
        bundle.segment_ids,
        CATALOG.names,
        bundle.space.index.tolist(),
        bundle.space.typical_row(len(CATALOG.names)),
        Rules(),
    )


def run(
    live_bundle: Bundle, shadow: Shadow, snapshots: list[tuple[list[Row], np.ndarray]]
) -> tuple[Counter[str], Counter[str], Counter[tuple[int, int]]]:
    """Live decisions over the snapshots, the shadow observing from the second one on (a
    candidate deployed beside a running worker): the live alert counts while observed, the
    candidate's would-be alert counts and the (live, candidate) segment pairs."""
    live = live_decider(live_bundle)
    states: dict[str, CustomerState] = {}
    sent: Counter[str] = Counter()
    would: Counter[str] = Counter()
    pairs: Counter[tuple[int, int]] = Counter()
    for n, (rows, x) in enumerate(snapshots):
        z = live_bundle.scale(x)
        dist = np.sqrt(((z[:, None, :] - live_bundle.centroids[None]) ** 2).sum(axis=2))
        out = live.decide(rows, x, z, dist, states, score_churn=n > 0)
        if n > 0:
            tally = shadow.observe(rows, x, states, out, rescore=True)
            sent.update(a.kind for a in out.alerts)
            would.update(tally.alerts)
            pairs.update(tally.pairs)
        states = out.states
    return sent, would, pairs


def test_a_shadow_of_the_live_bundle_agrees_and_would_send_the_same_alerts(
    trained_bundle: Path, snapshots: list[tuple[list[Row], np.ndarray]]
) -> None:
    bundle = load_bundle(trained_bundle, CATALOG)
    shadow = Shadow(bundle, CATALOG, Rules())
    sent, would, pairs = run(bundle, shadow, snapshots)
    assert shadow.agreement() == 1.0
    assert shadow.churn_correlation() == pytest.approx(1.0)
    assert would == sent and sum(sent.values()) > 0
    assert all(live == cand for live, cand in pairs)


def test_a_different_candidate_shows_its_disagreement_and_its_reassignments(
    trained_bundle: Path, snapshots: list[tuple[list[Row], np.ndarray]]
) -> None:
    bundle = load_bundle(trained_bundle, CATALOG)
    # The same centroids under other ids: every settled customer lands elsewhere.
    rolled = replace(bundle.space, centroids=np.roll(bundle.space.centroids, 1, axis=0))
    candidate = replace(bundle, version="candidate", space=rolled)
    shadow = Shadow(candidate, CATALOG, Rules())
    sent, would, pairs = run(bundle, shadow, snapshots)
    assert shadow.agreement() < 0.8
    assert sum(n for (live, cand), n in pairs.items() if live != cand) > 0
    # Customers the live model had settled get the candidate's model-update decision:
    # what a promotion would send, never a migration caused by the model.
    assert "segment_reassigned" not in sent
    assert would["segment_reassigned"] > 0
    assert would["segment_migration"] <= sent["segment_migration"] + 5
    assert shadow.churn_correlation() == pytest.approx(1.0)  # the same churn model


def test_the_worker_exposes_shadow_metrics_and_publishes_nothing_more(
    trained_bundle: Path, embedded_redis_url: str
) -> None:
    """`SEGSTREAM_SHADOW_MODEL_DIR` set: the same outputs as without it, plus metrics."""
    messages = [Message(v, 0, i) for i, (_, v) in enumerate(lines(generate_history(40, 40, 4)))]

    async def run_worker(shadow: Path | None) -> tuple[list[Output], bytes]:
        settings = StreamSettings(  # type: ignore[call-arg]
            redis_url=embedded_redis_url,
            key_prefix=unique("segstream-test-shadow"),
            shadow_model_dir=shadow,
            clock="event",
        )
        runtime = await open_runtime(settings, model_path=trained_bundle)
        registry = CollectorRegistry()
        sent: list[Output] = []

        async def publish(outputs: list[Output]) -> None:
            sent.extend(outputs)

        try:
            worker = Worker(runtime.engine, settings, Metrics(registry))
            for start in range(0, len(messages), 500):
                await worker.handle(messages[start : start + 500], publish)
        finally:
            await drop_prefix(runtime.connection, settings.key_prefix)
            await runtime.close()
        return sent, generate_latest(registry)

    plain, plain_metrics = asyncio.run(run_worker(None))
    shadowed, text = asyncio.run(run_worker(trained_bundle))
    assert sorted(shadowed) == sorted(plain)
    assert b"segstream_shadow_model_info{" not in plain_metrics
    version = load_bundle(trained_bundle, CATALOG).version
    assert f'segstream_shadow_model_info{{version="{version}"}} 1.0'.encode() in text
    assert b"segstream_shadow_agreement_ratio 1.0" in text
    assert b"segstream_shadow_evaluations_total{" in text
    assert b'segstream_shadow_alerts_total{type="segment_assigned"}' in text
