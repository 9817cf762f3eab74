"""Where the stores run, for the contract suite: open a pair of stores, look at the keys.

A `StoreBackend` opens the feature and assignment stores of one implementation under one
key prefix (`open`), and lets a test look underneath them the way an operator would
(`keys`, `get`, `ttl`, `zrange`, ...) without knowing which it is: the in-memory
`Keyspace`, one Redis server, or a Redis Cluster (scanned node by node).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster as SyncCluster

from models.catalog import Catalog, default_catalog
from stream.memory_store import Keyspace, MemoryAssignmentStore, MemoryFeatureStore
from stream.redis_conn import connect
from stream.store import RedisAssignmentStore, RedisFeatureStore
from stream.stores import AssignmentStore, FeatureStore
from tests.servers import HOST


@dataclass
class Stores:
    """One implementation's feature and assignment stores (sharing their backend)."""

    features: FeatureStore
    assignments: AssignmentStore


class StoreBackend:
    """A place the stores run, under `prefix`; `nodes` servers hold its keys."""

    kind: str
    prefix: str
    nodes: int = 1

    def open(self, catalog: Catalog | None = None, *, state_ttl: int = 3600,
             **options: Any) -> Any:  # fmt: skip
        """An async context of `Stores` (`options` go to the feature store)."""
        raise NotImplementedError

    def keys(self) -> list[str]:
        return sorted(k for n in self.keys_per_node().values() for k in n)

    def keys_per_node(self) -> dict[int, list[str]]:
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def ttl(self, key: str) -> float:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def zrange(self, key: str) -> list[str]:
        """Every member by score."""
        raise NotImplementedError

    def zscore(self, key: str, member: str) -> float | None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Delete everything under the prefix."""


class MemoryBackend(StoreBackend):
    def __init__(self, prefix: str) -> None:
        self.kind = "memory"
        self.prefix = prefix
        self.keyspace = Keyspace()

    @asynccontextmanager
    async def open(  # type: ignore[override]
        self, catalog: Catalog | None = None, *, state_ttl: int = 3600, **options: Any
    ) -> AsyncIterator[Stores]:
        features = MemoryFeatureStore(
            catalog or default_catalog(), keyspace=self.keyspace, prefix=self.prefix, **options
        )
        yield Stores(
            features,
            MemoryAssignmentStore(
                keyspace=self.keyspace, prefix=self.prefix, ttl_seconds=state_ttl
            ),
        )

    def keys_per_node(self) -> dict[int, list[str]]:
        return {0: self.keyspace.keys(self.prefix)}

    def get(self, key: str) -> bytes | None:
        return self.keyspace.get(key)

    def ttl(self, key: str) -> float:
        found = self.keyspace.ttl(key)
        return -2 if found is None else found

    def delete(self, key: str) -> None:
        self.keyspace.delete(key)

    def zrange(self, key: str) -> list[str]:
        return self.keyspace.zrange(key)

    def zscore(self, key: str, member: str) -> float | None:
        return self.keyspace.zscore(key, member)

    def cleanup(self) -> None:
        self.keyspace.drop(self.prefix)


class RedisBackend(StoreBackend):
    """One server (`ports` empty) or a cluster (`ports`: its nodes)."""

    def __init__(self, kind: str, url: str, prefix: str, ports: list[int] | None = None) -> None:
        self.kind = kind
        self.url = url
        self.prefix = prefix
        self.ports = ports or []
        self.nodes = max(1, len(self.ports))
        self.client: redis.Redis | SyncCluster = (
            SyncCluster(host=HOST, port=self.ports[0]) if self.ports else redis.Redis.from_url(url)
        )

    @asynccontextmanager
    async def open(  # type: ignore[override]
        self, catalog: Catalog | None = None, *, state_ttl: int = 3600, **options: Any
    ) -> AsyncIterator[Stores]:
        conn = await connect(self.url)
        try:
            features = RedisFeatureStore(
                conn.client, catalog or default_catalog(), prefix=self.prefix, **options
            )
            await features.load()
            states = RedisAssignmentStore(conn.client, prefix=self.prefix, ttl_seconds=state_ttl)
            yield Stores(features, states)
        finally:
            await conn.close()

    def node_clients(self) -> dict[int, redis.Redis]:
        if not self.ports:
            assert isinstance(self.client, redis.Redis)
            return {0: self.client}
        return {port: redis.Redis(host=HOST, port=port) for port in self.ports}

    def keys_per_node(self) -> dict[int, list[str]]:
        found = {}
        for node, client in self.node_clients().items():  # SCAN is per node on a cluster
            found[node] = [
                k.decode() for k in client.scan_iter(match=f"{self.prefix}:*", count=1000)
            ]
        return found

    def script_calls(self) -> int:
        """EVALSHA calls so far, over every node (other sessions may add theirs)."""
        total = 0
        for client in self.node_clients().values():
            stats = client.info("commandstats")
            total += int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
        return total

    def flush_scripts(self) -> None:
        """As after a restart or a failover: every node forgets its scripts."""
        for client in self.node_clients().values():
            client.script_flush()

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self.client.get(key)  # type: ignore[assignment]
        return value

    def ttl(self, key: str) -> float:
        return float(self.client.ttl(key))  # type: ignore[arg-type]

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def zrange(self, key: str) -> list[str]:
        return [m.decode() for m in self.client.zrange(key, 0, -1)]  # type: ignore[union-attr]

    def zscore(self, key: str, member: str) -> float | None:
        score: float | None = self.client.zscore(key, member)  # type: ignore[assignment]
        return score

    def cleanup(self) -> None:
        for client in self.node_clients().values():
            for key in list(client.scan_iter(match=f"{self.prefix}:*", count=1000)):
                client.delete(key)
        self.client.close()


def backend_for(
    kind: str, url: str | None, prefix: str, ports: list[int] | None = None
) -> StoreBackend:
    """The backend named `kind` (``memory``, ``system``, ``embedded``, ``cluster``)."""
    if kind == "memory":
        return MemoryBackend(prefix)
    assert url is not None
    return RedisBackend(kind, url, prefix, ports)
