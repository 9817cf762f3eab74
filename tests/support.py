"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from models.catalog import Catalog
from stream.redis_conn import connect
from stream.store import RedisFeatureStore

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion (the tests are plain functions)."""
    return asyncio.run(coro)


@asynccontextmanager
async def open_store(url: str, catalog: Catalog, prefix: str) -> AsyncIterator[RedisFeatureStore]:
    """A store on a fresh connection, closed afterwards."""
    conn = await connect(url)
    store = RedisFeatureStore(conn.client, catalog, prefix=prefix)
    await store.load()
    try:
        yield store
    finally:
        await conn.close()
