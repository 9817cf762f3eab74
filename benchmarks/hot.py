"""A hot customer id: the per-event cost of one id that gets every event of a day.

Usage (the benchmark is `python -m benchmarks.run --only hot`; this is for profiling):
python -m benchmarks.hot --events 20000 [--store] [--only hot|spread|both]

A placeholder id such as ``guest`` collects every anonymous event. `hot_history` writes
`count` events of one UTC day (types and properties taken in order from a generated
history) twice: all under one customer id, and spread over `count // 10` ordinary
customers (10 events each, as the issue's 20,000 over 2,000). `hot_once` replays one file
through `stream.replay.replay` (the path of `segstream replay`) with a fresh engine under a
fresh key prefix, and returns its time and the hot customer's stored state size (read
before the prefix is deleted).

Must not import faust.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, timedelta
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import HistoryFile, drop, new_prefix, timed_replay
from models.eventfile import read_events
from offline.synthetic import DEFAULT_START
from stream.stores import feature_key

HOT_ID = "guest"


@dataclass(frozen=True)
class HotFiles:
    """The same events of one day, under one id and spread over ordinary ids."""

    hot: Path
    spread: Path
    events: int
    ordinary_customers: int


@dataclass(frozen=True)
class HotRun:
    """One replay of a hot or spread file."""

    events: int
    seconds: float
    hot_state_bytes: int  # STRLEN of the hot id's feature state (0 for the spread file)

    @property
    def us_per_event(self) -> float:
        return self.seconds / self.events * 1e6 if self.events else math.nan


def hot_history(template: HistoryFile, count: int, out: Path) -> HotFiles:
    """Write `count` events of the day after `template`'s history, hot and spread."""
    kinds = [(e.type, e.properties) for e in islice(read_events(template.path), count)]
    day = DEFAULT_START + timedelta(days=template.days)
    customers = max(1, count // 10)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "hot.jsonl", out / "spread.jsonl")
    with paths[0].open("w") as hot, paths[1].open("w") as spread:
        for i, (kind, props) in enumerate(islice(cycle(kinds), count)):
            # In time order over the day, as a placeholder id collects them.
            ts = (day + timedelta(seconds=86_399 * i / count)).astimezone(UTC).isoformat()
            body = {"event_id": f"hot-{i}", "type": kind, "ts": ts, "properties": props}
            hot.write(json.dumps({**body, "customer_id": HOT_ID}) + "\n")
            spread.write(json.dumps({**body, "customer_id": f"c{i % customers:06d}"}) + "\n")
    return HotFiles(paths[0], paths[1], count, customers)


async def _replay(url: str, bundle: Path, events: Path, batch_size: int) -> HotRun:
    async with timed_replay(url, bundle, events, batch_size, "hot") as (prefix, summary, seconds):
        client = redis.Redis.from_url(url)
        size = int(client.strlen(feature_key(prefix, HOT_ID)))
        client.close()
    return HotRun(summary.events, seconds, size)


def hot_once(url: str, bundle: Path, events: Path, batch_size: int = 1000) -> HotRun:
    """Replay `events` through a fresh engine once (the replay path, real Redis)."""
    return asyncio.run(_replay(url, bundle, events, batch_size))


async def _store_only(url: str, events: Path, batch_size: int = 1000) -> dict[str, float]:
    """The feature store alone on `events`: seconds in total, in `store.lua` (with the
    network) and in the window aggregation (`StoreResults.apply_result`)."""
    from models.catalog import default_catalog
    from stream.redis_conn import connect
    from stream.store import RedisFeatureStore

    spent = {"script": 0.0, "aggregate": 0.0}
    items = list(read_events(events))
    prefix = new_prefix("hot-store")
    conn = await connect(url)
    store = RedisFeatureStore(conn.client, default_catalog(), prefix=prefix)
    await store.load()
    net, results = store._net, store._results  # timed where they are called
    script, aggregate = net.run, results.apply_result

    async def timed_run(*args: Any) -> Any:
        t = time.perf_counter()
        out = await script(*args)
        spent["script"] += time.perf_counter() - t
        return out

    def timed_aggregate(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = aggregate(*args, **kwargs)
        spent["aggregate"] += time.perf_counter() - t
        return out

    net.run = timed_run  # type: ignore[method-assign,assignment]
    results.apply_result = timed_aggregate  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        for i in range(0, len(items), batch_size):
            await store.apply(items[i : i + batch_size])
        spent["total"] = time.perf_counter() - t0
    finally:
        await conn.close()
        drop(url, prefix)
    return spent


def _main() -> None:  # pragma: no cover - a profiling entry point
    import argparse

    from benchmarks.common import Histories
    from benchmarks.training import bundle_dir, train_once

    parser = argparse.ArgumentParser(description="Replay a hot and a spread day once each.")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--work", type=Path, default=Path("/tmp/segstream-hot"))
    parser.add_argument("--only", choices=("hot", "spread", "both"), default="both")
    parser.add_argument(
        "--store", action="store_true", help="Time the feature store alone (script, numpy)."
    )
    args = parser.parse_args()
    hist = Histories(args.work).get(300, 60)
    model = args.work / "models"
    if not (model / "current").exists():
        train_once(hist, model)
    files = hot_history(hist, args.events, args.work / f"hot-{args.events}")
    for name in ("hot", "spread"):
        if args.only in (name, "both"):
            if args.store:
                spent = asyncio.run(_store_only(args.redis_url, getattr(files, name)))
                print(f"{name} (store alone): " + ", ".join(
                    f"{k} {v:.2f} s" for k, v in spent.items()
                ) + f", {spent['total'] / files.events * 1e6:.1f} us/event")  # fmt: skip
                continue
            run = hot_once(args.redis_url, bundle_dir(model), getattr(files, name))
            print(f"{name}: {run.seconds:.2f} s, {run.us_per_event:.1f} us/event, "
                  f"state {run.hot_state_bytes} B")  # fmt: skip


if __name__ == "__main__":
    _main()
