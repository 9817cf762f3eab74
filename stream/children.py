"""Child server processes (the embedded broker and Valkey): free ports and spawning.

A child is started in its own session, so a Ctrl-C in our terminal is ours to handle
(we stop it in order), and on Linux it is asked to exit when the thread that started it
dies, so even a SIGKILL of ours leaves no server behind. Nothing here knows what the
server is.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"


#: Where the kernel keeps its ephemeral ports (Linux); elsewhere the OS picks (`free_port`).
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: The lowest port `free_port` hands out below the ephemeral range (above the well-known
#: ones and the usual service ports: Redis 6379, Kafka 9092, Prometheus 9090, 6066).
LOWEST_PORT = 20_000
#: Ports handed out by any process of this machine's user, one empty file each, so two
#: processes picking at once (two test workers, a test and the demo) never get the same
#: one; a reservation older than `RESERVED_SECONDS` is stale (its server has long bound
#: the port, or never will).
RESERVED = Path(tempfile.gettempdir()) / f"segstream-ports-{os.getuid()}"
RESERVED_SECONDS = 600.0
_pick = random.SystemRandom()  # not the global generator: a test may have seeded it


def free_port() -> int:
    """A loopback port nobody listens on right now, for a server that binds it a moment
    later. Between the two, the port must not go to anyone else: it is picked outside the
    kernel's ephemeral range where the kernel says where that is (Linux), so no outgoing
    connection of another process (a Kafka client's, say) can take it, and reserved in
    `RESERVED`, so no other caller of this function can. bind(0) handed out ephemeral
    ports, and a worker's web server once lost its port to a connection that way
    ("address already in use" in `tests/test_scale_out.py`)."""
    low = _ephemeral_low()
    if low is not None and low - LOWEST_PORT > 1_000:
        for _ in range(200):
            port = _pick.randrange(LOWEST_PORT, low)
            if port_free(port) and _reserve(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        got: int = sock.getsockname()[1]
        return got


def _reserve(port: int) -> bool:
    """Claim `port` for `RESERVED_SECONDS` (False: another process holds a fresh claim)."""
    path = RESERVED / str(port)
    try:
        RESERVED.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > RESERVED_SECONDS:
                path.unlink(missing_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True  # no place to keep claims (a read-only temp folder): take it unclaimed
    return True


def _ephemeral_low() -> int | None:
    """The first port of the kernel's ephemeral range, None where it cannot be read."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def port_free(port: int) -> bool:
    """True when `port` can be bound on the loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def spawn(cmd: list[str], *, cwd: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start a server process in its own session that exits when we do."""
    # The parent-death signal is tied to the spawning *thread*, so only use it from the
    # main thread (a pool thread could exit and take the server with it).
    on_linux_main = (
        sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
    )
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent if on_linux_main else None,  # noqa: PLW1509
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate, then kill after `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
