"""Building a ready engine from settings: open the stores, load the bundle and scripts.

Shared by `segstream replay`, the faust worker and the demo, so they start the same way.
The stores are picked by `SEGSTREAM_REDIS_URL`'s scheme from `STORES` (STYLE.md 6):
``memory://`` gives the in-memory stores of `stream.memory_store` (one process, nothing
kept), every other scheme the Redis stores on a connection from `stream.redis_conn`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from models.bundle import Bundle, load_bundle
from models.catalog import Catalog, load_catalog
from stream.engine import Engine
from stream.memory_store import MemoryConnection, memory_stores
from stream.redis_conn import Connection, connect
from stream.settings import StreamSettings
from stream.shadow import Shadow
from stream.store import RedisAssignmentStore, RedisFeatureStore
from stream.stores import STATE_TTL_MARGIN_SECONDS, AssignmentStore, FeatureStore

#: Where the stores live: a Redis connection or the in-memory keyspace.
StoreConnection = Connection | MemoryConnection


@dataclass
class OpenStores:
    """A feature store and an assignment store over one connection."""

    features: FeatureStore
    assignments: AssignmentStore
    connection: StoreConnection


@dataclass
class Runtime:
    """An engine and the connection it runs on (close it when done)."""

    engine: Engine
    connection: StoreConnection
    catalog: Catalog

    async def close(self) -> None:
        await self.connection.close()


def load_model(settings: StreamSettings, catalog: Catalog, path: Path | None = None) -> Bundle:
    """The bundle at `path`, else `model_dir/current`, verified against the catalog."""
    return load_bundle(path or settings.model_dir / "current", catalog)


async def _redis_stores(settings: StreamSettings, catalog: Catalog, prefix: str) -> OpenStores:
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_connect_timeout_seconds,
    }
    if settings.redis_password:  # else the URL's, if any
        options["password"] = settings.redis_password.get_secret_value()
    conn = await connect(settings.redis_url, **options)
    store = RedisFeatureStore(
        conn.client, catalog, prefix=prefix, max_lateness_days=settings.max_lateness_days,
        profile_days=settings.profile_retention_days,
        dedupe_max_events=settings.dedupe_max_events,
    )  # fmt: skip
    await store.load()
    assignments = RedisAssignmentStore(
        conn.client, prefix=prefix, ttl_seconds=store.ttl_seconds + STATE_TTL_MARGIN_SECONDS
    )
    return OpenStores(store, assignments, conn)


async def _memory_stores(settings: StreamSettings, catalog: Catalog, prefix: str) -> OpenStores:
    features, assignments = memory_stores(
        catalog, prefix=prefix, max_lateness_days=settings.max_lateness_days,
        profile_days=settings.profile_retention_days,
        dedupe_max_events=settings.dedupe_max_events,
    )  # fmt: skip
    return OpenStores(features, assignments, MemoryConnection(features.keyspace))


#: Store backends by URL scheme; any scheme not here is a Redis one (`redis_conn.BACKENDS`).
STORES: dict[str, Callable[[StreamSettings, Catalog, str], Awaitable[OpenStores]]] = {
    "memory": _memory_stores,
}


async def open_stores(settings: StreamSettings, catalog: Catalog, prefix: str) -> OpenStores:
    """The stores `settings.redis_url` names, under `prefix`."""
    scheme = settings.redis_url.partition("://")[0].lower()
    return await STORES.get(scheme, _redis_stores)(settings, catalog, prefix)


async def open_runtime(
    settings: StreamSettings, *, model_path: Path | None = None, prefix: str | None = None
) -> Runtime:
    """Open the stores, verify the bundle and return an engine ready for `process`."""
    catalog = load_catalog(settings.config_file)
    bundle = load_model(settings, catalog, model_path)
    # One thread per model call: OpenMP pools spinning on a busy 2-core host made churn
    # scoring 50x slower (measured). Set after loading, once the libraries are loaded.
    threadpool_limits(limits=1)
    stores = await open_stores(settings, catalog, prefix or settings.key_prefix)
    engine = Engine(
        catalog,
        stores.features,
        stores.assignments,
        bundle,
        rules=settings.rules(),
        centers_halflife=settings.centers_halflife,
        centers_memory_days=settings.centers_memory_days,
        psi_window=settings.psi_window,
        rescore_batch=settings.rescore_batch_size,
        shadow=_shadow(settings, catalog),
    )
    return Runtime(engine=engine, connection=stores.connection, catalog=catalog)


def _shadow(settings: StreamSettings, catalog: Catalog) -> Shadow | None:
    """The candidate bundle of shadow mode, verified like the live one; None when off.

    Shadow mode needs no store: the candidate's customer states live in memory
    (`stream.shadow`).
    """
    if settings.shadow_model_dir is None:
        return None
    candidate = load_bundle(settings.shadow_model_dir, catalog)
    return Shadow(
        candidate,
        catalog,
        settings.rules(),
        halflife=settings.centers_halflife,
        memory_days=settings.centers_memory_days,
        window=settings.psi_window,
    )


async def drop_prefix(conn: StoreConnection, prefix: str) -> int:
    """Delete every key under a prefix (a replay's scratch state); returns how many."""
    return await conn.drop(prefix)
