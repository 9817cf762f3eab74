"""Building a ready engine from settings: connect Redis, load the bundle, load the script.

Shared by `segstream replay`, the faust worker and the demo, so they start the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from models.bundle import Bundle, load_bundle
from models.catalog import Catalog, load_catalog
from stream.engine import Engine
from stream.redis_conn import Connection, connect
from stream.settings import StreamSettings
from stream.shadow import Shadow
from stream.store import RedisAssignmentStore, RedisFeatureStore


@dataclass
class Runtime:
    """An engine and the connection it runs on (close it when done)."""

    engine: Engine
    connection: Connection
    catalog: Catalog

    async def close(self) -> None:
        await self.connection.close()


def load_model(settings: StreamSettings, catalog: Catalog, path: Path | None = None) -> Bundle:
    """The bundle at `path`, else `model_dir/current`, verified against the catalog."""
    return load_bundle(path or settings.model_dir / "current", catalog)


async def open_runtime(
    settings: StreamSettings, *, model_path: Path | None = None, prefix: str | None = None
) -> Runtime:
    """Connect, verify the bundle and return an engine ready for `process`."""
    catalog = load_catalog(settings.config_file)
    bundle = load_model(settings, catalog, model_path)
    # One thread per model call: OpenMP pools spinning on a busy 2-core host made churn
    # scoring 50x slower (measured). Set after loading, once the libraries are loaded.
    threadpool_limits(limits=1)
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_connect_timeout_seconds,
    }
    if settings.redis_password:  # else the URL's, if any
        options["password"] = settings.redis_password.get_secret_value()
    conn = await connect(settings.redis_url, **options)
    key_prefix = prefix or settings.key_prefix
    store = RedisFeatureStore(
        conn.client, catalog, prefix=key_prefix, max_lateness_days=settings.max_lateness_days
    )
    await store.load()
    assignments = RedisAssignmentStore(
        conn.client, prefix=key_prefix, ttl_seconds=store.ttl_seconds
    )
    engine = Engine(
        catalog,
        store,
        assignments,
        bundle,
        rules=settings.rules(),
        centers_halflife=settings.centers_halflife,
        psi_window=settings.psi_window,
        rescore_batch=settings.rescore_batch_size,
        shadow=_shadow(settings, catalog),
    )
    return Runtime(engine=engine, connection=conn, catalog=catalog)


def _shadow(settings: StreamSettings, catalog: Catalog) -> Shadow | None:
    """The candidate bundle of shadow mode, verified like the live one; None when off."""
    if settings.shadow_model_dir is None:
        return None
    candidate = load_bundle(settings.shadow_model_dir, catalog)
    return Shadow(
        candidate,
        catalog,
        settings.rules(),
        halflife=settings.centers_halflife,
        window=settings.psi_window,
    )


async def drop_prefix(conn: Connection, prefix: str) -> int:
    """Delete every key under a prefix (a replay's scratch state); returns how many."""
    deleted = 0
    batch: list[bytes] = []
    async for key in conn.client.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += await conn.client.delete(*batch)
            batch = []
    if batch:
        deleted += await conn.client.delete(*batch)
    return deleted
