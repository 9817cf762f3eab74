"""Shared online centers with 1 to 8 workers, before and after the statistics merge (issue 20).

    python -m benchmarks.centers [--customers 1500] [--rows-per-sync 60000] [--syncs 12]

Trains a bundle on a persona history (`offline.synthetic`), replays the history through the
engine on the memory store and keeps the rows the engine taught its online centers (scaled
rows of settled customers, with their event times). Then, for 1, 2, 3, 4 and 8 workers on one
store, each worker learns `--rows-per-sync` rows per sync (2,000 events/s for a 30 s sync
by default; its share of the rows, cycled) and syncs, `--syncs` times:

- *before*: the code this change replaced (a river k-means per worker, learning one row in
  10, whose movement since its last sync is added to a shared sum, then bundle + sum is
  adopted); the sum lives in a dict, the same arithmetic as the old `HINCRBYFLOAT` hash;
- *after*: `stream.assign.OnlineCenters` through `RedisAssignmentStore.sync_centers` on a
  real Redis (an embedded Valkey when 127.0.0.1:6379 does not answer).

Printed per design and worker count: the largest center drift over all syncs, in units of
the distance from that center's bundle centroid to the nearest other one, and the share of
customers (their final scaled rows) whose nearest shared center is not their nearest
bundle centroid (at the last sync, and the largest over the syncs). Last, how far the
single-worker centers of both designs are apart (same units).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from river import cluster

from benchmarks.common import drop, new_prefix, redis_server
from models.bundle import load_bundle
from models.catalog import default_catalog
from offline.synthetic import DEFAULT_START, generate_history, write_history
from offline.train import TrainSettings, train
from stream.assign import OnlineCenters
from stream.engine import Engine
from stream.memory_store import memory_stores
from stream.redis_conn import connect
from stream.replay import replay
from stream.store import RedisAssignmentStore

WORKERS = (1, 2, 3, 4, 8)


class Recorder(OnlineCenters):
    """The engine's online centers, keeping every row it is taught."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rows: list[np.ndarray] = []
        self.times: list[np.ndarray] = []

    def learn_many(self, points: np.ndarray, times: np.ndarray) -> None:
        self.rows.append(points.copy())
        self.times.append(np.asarray(times, dtype=float).copy())
        super().learn_many(points, times)


class OldCenters:
    """The online centers before this change (river k-means, movement summed), verbatim
    in what they compute."""

    def __init__(self, base: np.ndarray, halflife: float, learn_every: int = 10) -> None:
        self.base = base.copy()
        self.learn_every = learn_every
        self.seen = 0
        self.model = cluster.KMeans(n_clusters=len(base), halflife=halflife, seed=0)
        self.shared = base.copy()
        self.merge(self.shared)

    def learn_many(self, points: np.ndarray) -> None:
        first = (-self.seen - 1) % self.learn_every
        self.seen += len(points)
        for row in points[first :: self.learn_every]:
            self.model.learn_one(dict(enumerate(row.tolist())))  # type: ignore[no-untyped-call]

    def local_delta(self) -> np.ndarray:
        k, d = self.base.shape
        local = np.array([[self.model.centers[i][j] for j in range(d)] for i in range(k)])
        delta: np.ndarray = local - self.synced
        return delta

    def merge(self, shared: np.ndarray) -> None:
        self.shared = shared.copy()
        self.model.centers = {
            i: defaultdict(float, dict(enumerate(row.tolist()))) for i, row in enumerate(shared)
        }
        self.synced = shared.copy()


def learned_rows(root: Path, customers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(the bundle's centroids, the rows the engine learned, their times, the halflife)."""
    catalog = default_catalog()
    events = write_history(generate_history(customers, 120, seed=21), root / "data")["events"]
    as_of = (DEFAULT_START + timedelta(days=90) - timedelta(seconds=1)).timestamp()
    result = train(
        events, as_of, root / "models", catalog, TrainSettings(seed=0),
        now=datetime(2026, 4, 1, tzinfo=UTC),
    )  # fmt: skip
    bundle = load_bundle(result.bundle.path, catalog)
    features, assignments = memory_stores(catalog, prefix="bench-centers")
    recorder = Recorder(bundle.centroids, bundle.segment_ids)
    engine = Engine(catalog, features, assignments, bundle, centers=recorder)
    asyncio.run(replay(engine, events, root / "alerts.jsonl"))
    return (
        np.asarray(bundle.centroids, dtype=float),
        np.concatenate(recorder.rows),
        np.concatenate(recorder.times),
        engine.centers_halflife,
    )


def nearest_other(base: np.ndarray) -> np.ndarray:
    dist = np.sqrt(((base[:, None, :] - base[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(dist, np.inf)
    other: np.ndarray = dist.min(axis=1)
    return other


def placed_elsewhere(base: np.ndarray, centers: np.ndarray, points: np.ndarray) -> float:
    def near(c: np.ndarray) -> np.ndarray:
        found: np.ndarray = ((points[:, None, :] - c[None]) ** 2).sum(axis=2).argmin(axis=1)
        return found

    return float((near(base) != near(centers)).mean())


def cycled(rows: np.ndarray, n: int, start: int) -> np.ndarray:
    """`n` rows of `rows` from position `start`, wrapping around."""
    take: np.ndarray = rows[(start + np.arange(n)) % len(rows)]
    return take


async def simulate(
    base: np.ndarray,
    rows: np.ndarray,
    times: np.ndarray,
    halflife: float,
    workers: int,
    per_sync: int,
    syncs: int,
    redis_url: str,
) -> dict[str, tuple[float, float, float, np.ndarray]]:
    """Per design: (max drift, share elsewhere at the end, max share elsewhere, centers)."""
    other = nearest_other(base)
    owner = np.random.default_rng(workers).integers(0, workers, len(rows))
    mine = [np.flatnonzero(owner == w) for w in range(workers)]
    probe = rows[-min(len(rows), 20_000) :]  # the newest rows: customers as they are now
    old = [OldCenters(base, halflife) for _ in range(workers)]
    moved = np.zeros_like(base)  # the old HINCRBYFLOAT hash
    new = [OnlineCenters(base, range(len(base)), halflife=halflife) for _ in range(workers)]  # type: ignore[arg-type]
    prefix = new_prefix("centers")
    conn = await connect(redis_url)
    store = RedisAssignmentStore(conn.client, prefix=prefix, ttl_seconds=86_400)
    out: dict[str, list[tuple[float, float, np.ndarray]]] = {"before": [], "after": []}
    try:
        for s in range(syncs):
            for w in range(workers):
                idx = cycled(mine[w], per_sync, s * per_sync)
                old[w].learn_many(rows[idx])
                new[w].learn_many(rows[idx], times[idx])
            for w in np.roll(np.arange(workers), s).tolist():  # who syncs first varies
                moved += old[w].local_delta()
                old[w].merge(base + moved)
                c = new[w]
                c.merge(await store.sync_centers("v", c.worker, c.stats_.pack(), c.forget_))
            for name, shared in (("before", old[0].shared), ("after", new[0].shared_)):
                drift = float((np.sqrt(((shared - base) ** 2).sum(axis=1)) / other).max())
                out[name].append((drift, placed_elsewhere(base, shared, probe), shared))
    finally:
        await conn.close()
        drop(redis_url, prefix)
    return {
        name: (
            max(d for d, _, _ in runs),
            runs[-1][1],
            max(p for _, p, _ in runs),
            runs[-1][2],
        )
        for name, runs in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--rows-per-sync", type=int, default=60_000)
    parser.add_argument("--syncs", type=int, default=12)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-centers-") as tmp:
        base, rows, times, halflife = learned_rows(Path(tmp), args.customers)
    print(f"{len(rows):,} learned rows, {len(base)} centers; {args.rows_per_sync:,} rows per"
          f" worker per sync, {args.syncs} syncs")  # fmt: skip
    print()
    print("| workers | design | max center drift | customers placed elsewhere: last sync | max |")
    print("|---|---|---|---|---|")
    single: dict[str, np.ndarray] = {}
    with redis_server(args.redis_url) as url:
        for n in WORKERS:
            found = asyncio.run(
                simulate(base, rows, times, halflife, n, args.rows_per_sync, args.syncs, url)
            )
            for name, (drift, last, most, centers) in found.items():
                print(f"| {n} | {name} | {drift:.3g} | {last:.1%} | {most:.1%} |")
                if n == 1:
                    single[name] = centers
    apart = np.sqrt(((single["after"] - single["before"]) ** 2).sum(axis=1)) / nearest_other(base)
    print()
    print(f"1 worker, after vs before: centers {apart.max():.3g} apart at most (same units)")


if __name__ == "__main__":
    main()
