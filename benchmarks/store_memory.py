"""Redis bytes per customer and store throughput for a generated history (the store alone).

Usage: python -m benchmarks.store_memory --customers 10000 --days 90 [--redis-url URL]

Applies the whole history to the store in batches of 1,000 events (time order), then sums
`MEMORY USAGE` over the customers' keys. Uses its own key prefix and deletes it afterwards.
It holds the whole history in memory, sorted (~1.7 KB per event: 10k customers x 90 days
take ~2 GB; 100k customers took 17 GB here and stalled): for 100k customers use
`python -m benchmarks.run --only memory`, which streams the history from a file.
`python -m benchmarks.run` measures the same through the whole engine (sections 4 and 5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from models.catalog import default_catalog
from models.eventfile import read_events
from models.events import Event
from offline.synthetic import generate_history, write_history
from stream.redis_conn import connect
from stream.store import RedisFeatureStore


def _events(customers: int, days: int, seed: int) -> list[Event]:
    with tempfile.TemporaryDirectory(prefix="segstream-bench-") as tmp:
        path = write_history(generate_history(customers, days, seed), Path(tmp))["events"]
        return list(read_events(path))


async def measure(url: str, events: list[Event], batch: int) -> dict[str, float]:
    prefix = f"segstream-bench-{uuid.uuid4().hex[:8]}"
    conn = await connect(url)
    store = RedisFeatureStore(conn.client, default_catalog(), prefix=prefix)
    await store.load()
    try:
        t0 = time.perf_counter()
        for i in range(0, len(events), batch):
            await store.apply(events[i : i + batch])
        elapsed = time.perf_counter() - t0
        keys = [k async for k in conn.client.scan_iter(match=f"{prefix}:*", count=5000)]
        pipe = conn.client.pipeline(transaction=False)
        for k in keys:
            pipe.memory_usage(k, samples=0)
        sizes = [int(s) for s in await pipe.execute()]
        return {
            "events": len(events),
            "customers": len(keys),
            "seconds": elapsed,
            "events_per_second": len(events) / elapsed,
            "bytes_per_customer_mean": sum(sizes) / len(keys),
            "bytes_per_customer_median": statistics.median(sizes),
            "bytes_per_customer_p99": sorted(sizes)[int(0.99 * (len(sizes) - 1))],
        }
    finally:
        async for k in conn.client.scan_iter(match=f"{prefix}:*", count=5000):
            await conn.client.delete(k)
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    events = sorted(_events(args.customers, args.days, args.seed), key=lambda e: e.epoch)
    result = asyncio.run(measure(args.redis_url, events, args.batch))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
