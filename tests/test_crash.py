"""Crashes and outages: nothing lost, nothing double counted (issue 8).

The scenarios run `segstream worker` as real subprocesses against the embedded Tansu broker
and real Redis, on a small generated history streamed with the event clock:

- a worker SIGKILLed at random points five times and restarted each time;
- two workers in one consumer group, one SIGKILLed mid-stream, the other taking over;
- the worker's Redis (a private redis-server with an append-only file) stopped for 10 s
  and started again.

Each ends when the group's committed offsets cover every produced record, and checks that
every customer's features in Redis equal the batch reference (`offline.reference`) and that
every alert id `stream.replay` gives for the same history was published at least once.
One fast test drives the core alone to pin down the order that makes the alert half hold:
a crash after the alerts were published but before the states were saved re-emits them.
The worker processes and their group come from `tests/workers.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from offline.synthetic import generate_history
from stream.children import HOST
from stream.metrics import Metrics
from stream.redis_conn import RedisUnavailable, connect
from stream.runtime import open_runtime
from stream.settings import StreamSettings
from stream.worker import Message, Output, Worker
from tests.kafka_support import KafkaBroker
from tests.servers import RedisServer, start_server, system_url
from tests.support import drop, lines, replay_alert_ids
from tests.workers import Expected, Group, check_end_state, new_group, produce_into

pytestmark = pytest.mark.slow

#: Short enough for kills to land between commits, so restarts resume mid-stream.
COMMIT_INTERVAL = 0.5


# --- the history and what it must produce ------------------------------------------------


@pytest.fixture(scope="module")
def expected(
    tmp_path_factory: pytest.TempPathFactory, embedded_redis_url: str, trained_bundle: Path
) -> Expected:
    """150 customers x 35 days (~5,000 events) and the alert ids replay gives for it."""
    folder = tmp_path_factory.mktemp("crash-history")
    records = lines(generate_history(150, 35, seed=44))
    events_path = folder / "events.jsonl"
    events_path.write_bytes(b"".join(v + b"\n" for _, v in records))
    settings = StreamSettings(redis_url=embedded_redis_url, metrics_port=0, web_port=0)
    alerts = folder / "alerts.jsonl"
    ids = asyncio.run(replay_alert_ids(settings, trained_bundle, events_path, alerts))
    bodies = [json.loads(line) for line in alerts.read_text().splitlines()]
    firsts = {b["alert_id"] for b in bodies if b.get("first") is True}
    assert ids and len(firsts) == 150
    return Expected(records, events_path, ids, firsts)


@pytest.fixture
def group_for(kafka_broker: KafkaBroker, trained_bundle: Path, tmp_path: Path) -> Iterator[Any]:
    """Makes a `Group` on a Redis URL with fresh topics; stops its workers afterwards."""
    made: list[tuple[Group, str]] = []

    def make(redis_url: str, partitions: int) -> Group:
        group = new_group(
            kafka_broker,
            redis_url,
            trained_bundle,
            tmp_path,
            partitions,
            batch_size=100,
            batch_seconds=0.2,
            commit_interval_seconds=COMMIT_INTERVAL,
            rebalance_timeout_seconds=3.0,
        )
        made.append((group, redis_url))
        return group

    yield make
    for group, url in made:
        group.stop()
        with contextlib.suppress(RedisUnavailable):  # a stopped private server
            asyncio.run(drop(url, group.settings.key_prefix))


# --- the order that keeps alerts: the core alone ------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: nothing in the worker catches a BaseException."""


def test_a_crash_after_publishing_before_saving_publishes_the_alerts_again(
    embedded_redis_url: str, trained_bundle: Path
) -> None:
    """The bug this order fixes: the states used to be saved before the alerts were
    published, so a crash in between made the redelivered events' decisions no-ops and
    the alerts were never sent. Now the crashed step's decisions are made again: its
    customers' first assignments (the first publish) and the midnight re-score's alerts
    (the second) come out again with the same ids."""
    records = lines(generate_history(30, 8, seed=5))
    messages = [Message(v, 0, i) for i, (_, v) in enumerate(records)]
    settings = StreamSettings(
        redis_url=embedded_redis_url,
        key_prefix=f"segstream-test-{uuid.uuid4().hex[:8]}",
        clock="event",
        metrics_port=0,
        web_port=0,
    )

    def ids(outputs: list[Output], **match: Any) -> set[str]:
        bodies = [json.loads(o.value) for o in outputs]
        return {b["alert_id"] for b in bodies if all(b.get(k) == v for k, v in match.items())}

    async def run(crash_at: int) -> tuple[list[Output], list[Output]]:
        """One worker until its `crash_at`-th publish (acked by the broker), then a new
        worker (a restarted process: nothing in memory) on the same Redis and input.
        Returns what that publish sent and everything the restarted worker sent."""
        crashed: list[Output] = []
        after: list[Output] = []
        calls = 0

        async def dying(out: list[Output]) -> None:
            nonlocal calls
            calls += 1
            if calls == crash_at:
                crashed.extend(out)  # acked...
                raise Crash  # ...and the process dies before the states are saved

        async def publish(out: list[Output]) -> None:
            after.extend(out)

        for sink in (dying, publish):
            runtime = await open_runtime(settings, model_path=trained_bundle)
            try:
                worker = Worker(runtime.engine, settings, Metrics(CollectorRegistry()))
                with contextlib.suppress(Crash):
                    await worker.handle(messages, sink)
            finally:
                await runtime.close()
        await drop(embedded_redis_url, settings.key_prefix)
        return crashed, after

    async def body() -> None:
        try:
            crashed, after = await run(1)  # the part of the batch before the first midnight
            firsts = ids(crashed, first=True)
            assert firsts and firsts <= ids(after)
            crashed, after = await run(2)  # the re-score at the first midnight
            rescored = ids(crashed, type="churn_risk") | ids(crashed, first=False)
            assert ids(crashed) <= ids(after), len(ids(crashed) - ids(after))
            print(f"\nre-published: {len(firsts)} first assignments, {len(rescored)} re-score")
        finally:
            await drop(embedded_redis_url, settings.key_prefix)

    asyncio.run(body())


# --- SIGKILL at random points --------------------------------------------------------------


def test_sigkill_at_random_points_loses_nothing_and_counts_nothing_twice(
    group_for: Any, system_or_embedded: str, kafka_broker: KafkaBroker, expected: Expected
) -> None:
    rng = random.Random(int(os.environ.get("SEGSTREAM_CRASH_SEED", "0")) or None)
    group: Group = group_for(system_or_embedded, 1)
    # A fifth of the history before each start, so every worker has a stream to die in
    # (with all of it up front, a fast machine could finish before the fifth kill).
    chunk = -(-len(expected.records) // 5)
    kills = []
    for n in range(5):
        produce_into(group, expected.records[n * chunk : (n + 1) * chunk])
        proc = group.start()
        group.wait("the worker processing batches", lambda p=proc: p.batches() >= 1)
        delay = rng.uniform(0.0, 1.5)  # into the stream: mid-batch, mid-publish, mid-save
        time.sleep(delay)
        committed = asyncio.run(group.committed())
        proc.kill()
        kills.append((round(delay, 2), sum(max(c, 0) for c in committed.values())))
    group.start()
    group.wait_done()
    group.stop()
    missing = check_end_state(group.settings, system_or_embedded, kafka_broker, expected)
    print(
        f"\ncrash: {len(expected.records)} events, kills (delay s, records committed) {kills}; "
        f"{len(missing)} of {len(expected.alert_ids)} replay alert ids not published"
    )
    assert not missing


@pytest.fixture
def system_or_embedded(embedded_redis_url: str) -> str:
    """The system Redis when there is one (with the test's own prefix), else embedded."""
    return system_url() or embedded_redis_url


# --- two workers, one killed ---------------------------------------------------------------


def test_two_workers_one_killed_the_other_takes_over(
    group_for: Any, system_or_embedded: str, kafka_broker: KafkaBroker, expected: Expected
) -> None:
    rng = random.Random()
    group: Group = group_for(system_or_embedded, 3)
    a, b = group.start(), group.start()
    group.wait("both workers up", lambda: "Ready" in a.log_text() and "Ready" in b.log_text())
    # The first half until both own partitions and work, then the rest and, into it, a kill.
    half = len(expected.records) // 2
    produce_into(group, expected.records[:half])
    group.wait("both workers processing", lambda: a.batches() >= 1 and b.batches() >= 1)
    produce_into(group, expected.records[half:])
    time.sleep(rng.uniform(0.1, 1.0))
    b.kill()
    group.wait_done()
    assert a.alive
    group.stop()
    # Every replay alert id too: the event clock runs per partition, so the partitions
    # the survivor takes over are re-scored after the same events as in replay's file
    # order (tests/test_scale_out.py says why; it checks 4 workers on a cluster).
    missing = check_end_state(group.settings, system_or_embedded, kafka_broker, expected)
    assert not missing, f"{len(missing)} of {len(expected.alert_ids)} replay ids not published"


# --- Redis stopped for 10 s ----------------------------------------------------------------

OUTAGE_SECONDS = 10.0
REDIS_SECRET = "0utage-Pw-31"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    options = ["--save", "", "--appendonly", "yes", "--requirepass", REDIS_SECRET]
    server = start_server(tmp_path, options, password=REDIS_SECRET)
    try:
        yield server
    finally:
        server.stop()


def test_redis_down_for_ten_seconds_is_retried_and_nothing_is_lost(
    group_for: Any, private_redis: RedisServer, kafka_broker: KafkaBroker, expected: Expected
) -> None:
    """A real outage: the server is stopped (connections reset, then refused) and started
    again from its append-only file, with an empty script cache. Chosen over a proxy that
    drops connections because it is what an operator sees (a restart, a failover), and
    it also exercises the reload of the store's script."""
    group: Group = group_for(private_redis.url(password=REDIS_SECRET), 1)
    worker = group.start()
    produce_into(group, expected.records)
    group.wait("the worker processing batches", lambda: worker.batches() >= 2)
    private_redis.stop()
    stopped = time.monotonic()
    committed_at_stop = asyncio.run(group.committed())
    group.wait("a Redis error counted", lambda: worker.metrics().get(
        "segstream_redis_errors_total", 0) >= 1, timeout=30)  # fmt: skip
    during = worker.metrics()
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
    assert worker.alive, worker.log_text()[-3000:]
    after = worker.metrics()
    # Nothing was stored during the outage, so nothing new may be committed beyond the
    # batch that was in flight when it began (faust commits what was acked before).
    assert after["segstream_events_processed_total"] == during["segstream_events_processed_total"]
    committed_late = asyncio.run(group.committed())
    private_redis.start()
    group.wait_done()
    assert worker.alive
    errors = worker.metrics()["segstream_redis_errors_total"]
    group.stop()
    log = worker.log_text()
    assert REDIS_SECRET not in log
    redacted = f"redis://:***@{HOST}:{private_redis.port}/0"
    failures = [line for line in log.splitlines() if "failed during" in line]
    assert failures and all(redacted in line for line in failures), failures[:3]
    waits = [float(line.rsplit("retrying in ", 1)[1].split()[0]) for line in failures]
    assert {0.2, 0.4, 0.8, 1.6} <= set(waits), waits  # backoff, doubling
    assert max(waits) <= 5.0
    missing = check_end_state(
        group.settings, private_redis.url(password=REDIS_SECRET), kafka_broker, expected
    )
    print(
        f"\nredis outage: {errors:.0f} Redis errors, {len(failures)} retries logged, "
        f"committed at stop {committed_at_stop}, 10 s later {committed_late}; "
        f"{len(missing)} replay ids not published"
    )
    assert not missing  # one partition, no crash: the worker's ids are replay's


# --- a hung Redis ------------------------------------------------------------------------


def test_a_hung_redis_times_out_instead_of_blocking(tmp_path: Path) -> None:
    """A server that accepts connections but never answers (a hung process, a black hole):
    with the socket timeouts set, `connect` fails with a clear error instead of waiting on
    the operating system's TCP timeouts; the worker's retries see the same timeout."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(16)  # the kernel completes handshakes; nobody ever reads or writes
    port = listener.getsockname()[1]
    settings = StreamSettings(
        redis_url=f"redis://{HOST}:{port}/0",
        redis_socket_timeout_seconds=0.5,
        redis_connect_timeout_seconds=0.5,
        metrics_port=0,
        web_port=0,
    )

    async def body() -> str:
        try:
            await asyncio.wait_for(
                connect(
                    settings.redis_url,
                    socket_timeout=settings.redis_socket_timeout_seconds,
                    socket_connect_timeout=settings.redis_connect_timeout_seconds,
                ),
                timeout=60,  # a guard: without the timeouts this would wait for minutes
            )
        except RedisUnavailable as exc:
            return str(exc)
        raise AssertionError("connected to a server that never answers")

    try:
        message = asyncio.run(body())
    finally:
        listener.close()
    assert f"Redis at redis://{HOST}:{port}/0 is not reachable" in message, message
