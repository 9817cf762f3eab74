"""Lua scripts and multi-key reads over one Redis server or a Redis Cluster.

The Redis stores say *what* to run (a script, its keys, its arguments); a `Topology`
says how that reaches the servers: `groups` splits keys into the sets one atomic call may
touch (all of them on a server; one hash slot each on a cluster), `run` sends one call
per group in one round trip and heals a lost script cache (restart, failover), and
`get_many` reads many keys at once. `topology(client)` picks the implementation once, so
no store method branches on the kind of deployment.

Each script is a ``.lua`` file beside this module (`pyproject.toml` ships
``stream/*.lua``), called by SHA.

Must not import faust or business logic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

#: One call of a script: its keys and its arguments.
Call = tuple[list[str], list[Any]]


class Script:
    """A Lua script of this package, by file name (e.g. ``store.lua``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("stream").joinpath(name).read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class Server:
    """A single Redis server: any keys go together, one call per batch."""

    #: Whether one call may touch any key (the commit then counts the population itself).
    together = True

    def __init__(self, client: Redis) -> None:
        self.client = client

    def groups(self, keys: Sequence[str]) -> list[list[int]]:
        return [list(range(len(keys)))] if keys else []

    async def load(self, script: Script) -> None:
        await self.client.script_load(script.source)

    async def run(self, script: Script, calls: list[Call]) -> list[Any]:
        if len(calls) == 1:
            keys, args = calls[0]
            try:
                return [await self.client.evalsha(script.sha, len(keys), *keys, *args)]  # type: ignore[misc]
            except NoScriptError:
                return [await _heal(self.client, script, keys, args)]
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return await _healed(self.client, script, calls, await pipe.execute(raise_on_error=False))

    async def scan(self, match: str) -> list[str]:
        """Every key matching `match` (SCAN; for recounts and tools, not the hot path)."""
        return [_text(k) async for k in self.client.scan_iter(match=match, count=1000)]

    async def get_many(self, keys: list[str]) -> list[Any]:
        # One MGET: a pipeline of GETs costs redis-py ~10 us per command to pack.
        return list(await self.client.mget(keys))


class Cluster:
    """A Redis Cluster: keys grouped by hash slot, one pipeline (one call per slot)."""

    together = False

    def __init__(self, client: RedisCluster) -> None:
        self.client = client

    def groups(self, keys: Sequence[str]) -> list[list[int]]:
        slots: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            slots.setdefault(key_slot(key.encode()), []).append(i)
        return list(slots.values())

    async def load(self, script: Script) -> None:
        await self.client.script_load(script.source)

    async def run(self, script: Script, calls: list[Call]) -> list[Any]:
        # redis-py's cluster pipeline blocks its `evalsha` method, but routes a raw
        # EVALSHA by its keys (all of one slot): still one pipeline, one per node.
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return await _healed(self.client, script, calls, await pipe.execute(raise_on_error=False))

    async def scan(self, match: str) -> list[str]:
        """Every key matching `match`, over every primary (SCAN runs per node)."""
        found: list[str] = []
        for node in self.client.get_primaries():
            cursor = 0
            while True:
                cursor, keys = await self.client.scan(  # type: ignore[misc]
                    cursor, match=match, count=1000, target_nodes=node
                )
                # redis-py answers a targeted SCAN with its cursor keyed by node name.
                if isinstance(cursor, dict):
                    cursor = next(iter(cursor.values()))
                found += [_text(k) for k in keys]
                if not cursor:
                    break
        return found

    async def get_many(self, keys: list[str]) -> list[Any]:
        # MGET across slots is refused: a pipeline of GETs, one batch per node.
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return list(await pipe.execute())


Topology = Server | Cluster


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def topology(client: Redis | RedisCluster) -> Topology:
    """The way calls reach `client`'s servers (a `RedisCluster` or a single server)."""
    return Cluster(client) if isinstance(client, RedisCluster) else Server(client)


async def _heal(
    client: Redis | RedisCluster, script: Script, keys: list[str], args: list[Any]
) -> Any:
    """One call whose server lost its script cache (restart, failover, SCRIPT FLUSH).

    EVAL runs the call and caches the script in one command: unlike a load followed by a
    second EVALSHA, no flush can fall between the two, so the retry cannot fail the same way.
    """
    return await client.eval(script.source, len(keys), *keys, *args)  # type: ignore[misc]


async def _healed(
    client: Redis | RedisCluster, script: Script, calls: list[Call], replies: list[Any]
) -> list[Any]:
    """The replies of a pipeline of EVALSHAs, each call a lost script cache refused run again
    by `_heal` (and only those: the others already ran); any other error raised."""
    replies = list(replies)
    for i, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            keys, args = calls[i]
            replies[i] = await _heal(client, script, keys, args)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
