"""Engine throughput on the replay path (real Redis, no Kafka), the naive baseline, and memory.

`replay_once` runs a history file through `stream.replay.replay` with a fresh engine under a
fresh key prefix and returns events/s plus `MEMORY USAGE` summed over the prefix (measured
before the prefix is deleted). `naive_once` runs `benchmarks.naive.NaiveEngine` over every
n-th customer's events of the same file for at most a given time.

Must not import faust.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import HistoryFile, drop, memory_usage, new_prefix, timed_replay
from benchmarks.naive import NaiveEngine
from models.bundle import load_bundle
from models.catalog import default_catalog
from models.eventfile import read_events
from stream.redis_conn import connect


@dataclass(frozen=True)
class ReplayRun:
    """One replay of a history through the engine."""

    events: int
    customers: int
    seconds: float
    redis_keys: int
    redis_bytes: int  # every key under the prefix (features, assignment states, schedules)
    feature_bytes: int  # the feature keys only ({prefix}:f:*)
    rescored: int = 0  # daily re-scores (every customer once a day), work besides the events

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else math.nan

    @property
    def bytes_per_customer(self) -> float:
        return self.redis_bytes / self.customers if self.customers else math.nan

    @property
    def feature_bytes_per_customer(self) -> float:
        return self.feature_bytes / self.customers if self.customers else math.nan


async def _replay(url: str, bundle: Path, history: HistoryFile, batch_size: int) -> ReplayRun:
    run = timed_replay(url, bundle, history.path, batch_size, "engine")
    async with run as (prefix, summary, seconds):
        keys, total = memory_usage(url, prefix)
        _, features = memory_usage(url, prefix, "f:*")
    return ReplayRun(
        summary.events, summary.customers, seconds, keys, total, features, summary.rescored
    )


def replay_once(url: str, bundle: Path, history: HistoryFile, batch_size: int = 1000) -> ReplayRun:
    """Replay `history` through a fresh engine once; throughput and Redis memory."""
    return asyncio.run(_replay(url, bundle, history, batch_size))


@dataclass(frozen=True)
class NaiveRun:
    """One naive run over a slice of a history."""

    events: int  # processed (the slice may be cut by the time limit)
    slice_events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else math.nan


async def _naive(
    url: str, bundle: Path, history: HistoryFile, every: int, max_seconds: float
) -> NaiveRun:
    catalog = default_catalog()
    events = list(read_events(history.path))
    customers = sorted({e.customer_id for e in events})
    chosen = set(customers[:: max(1, every)])
    picked = [e for e in events if e.customer_id in chosen]
    prefix = new_prefix("naive")
    conn = await connect(url)
    try:
        engine = NaiveEngine(conn.client, catalog, load_bundle(bundle, catalog), prefix)  # type: ignore[arg-type]
        done, seconds = await engine.run(picked, max_seconds=max_seconds)
        return NaiveRun(done, len(picked), seconds)
    finally:
        await conn.close()
        drop(url, prefix)


def naive_once(
    url: str, bundle: Path, history: HistoryFile, every: int, max_seconds: float
) -> NaiveRun:
    """Run the naive baseline over every `every`-th customer's events, at most `max_seconds`."""
    return asyncio.run(_naive(url, bundle, history, every, max_seconds))
