"""What every benchmark shares: the sizes, machine facts, Redis, histories and medians.

Must not import faust; talks to Redis only under a key prefix of its own.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

from offline.synthetic import DEFAULT_START, generate_history, write_history
from stream.redis_conn import start_embedded
from stream.replay import ReplaySummary, replay
from stream.runtime import open_runtime
from stream.settings import StreamSettings

DAY = 86_400.0


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark runs (`FULL` is the issue's; `QUICK` is the smoke test's)."""

    days: int  # history length of every generated history
    engine_customers: int  # section 1: engine vs naive (>= 10k customers, >= 200k events)
    naive_every: int  # the naive baseline runs every n-th customer's events...
    naive_seconds: float  # ...for at most this long per run
    e2e_events: int  # section 2: events produced before the workers start
    e2e_workers: tuple[int, ...]
    latency_rates: tuple[int, ...]  # section 3: offered events/s
    latency_seconds: float  # how long each offered load runs
    memory_customers: tuple[int, ...]  # section 4
    growth_customers: tuple[int, ...]  # section 5
    train_customers: tuple[int, ...]  # section 6
    hot_events: int = 100_000  # section 7: events of one customer id in one day


FULL = Sizes(
    days=90,
    engine_customers=10_000,
    naive_every=100,
    naive_seconds=120.0,
    e2e_events=500_000,
    e2e_workers=(1, 2),
    latency_rates=(2_000, 10_000),
    latency_seconds=15.0,
    memory_customers=(10_000, 100_000),
    growth_customers=(1_000, 10_000, 100_000),
    train_customers=(10_000, 100_000),
)

MEDIUM = Sizes(
    days=90,
    engine_customers=10_000,
    naive_every=100,
    naive_seconds=60.0,
    e2e_events=50_000,
    e2e_workers=(1, 2),
    latency_rates=(2_000, 10_000),
    latency_seconds=8.0,
    memory_customers=(10_000,),
    growth_customers=(1_000, 10_000),
    train_customers=(10_000,),
)

QUICK = Sizes(
    days=60,
    engine_customers=300,
    naive_every=10,
    naive_seconds=3.0,
    e2e_events=3_000,
    e2e_workers=(1, 2),
    latency_rates=(200, 500),
    latency_seconds=2.0,
    memory_customers=(100, 300),
    growth_customers=(100, 300),
    train_customers=(300,),
    hot_events=1_000,
)

PRESETS = {"quick": QUICK, "medium": MEDIUM, "full": FULL}


@dataclass(frozen=True)
class Target:
    """A goal next to a figure: `value >= bound` (or `<=` when `at_most`)."""

    text: str
    bound: float
    at_most: bool = False

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value <= self.bound if self.at_most else value >= self.bound


TARGETS = {
    "engine": Target(">= 50,000 events/s", 50_000),
    "ratio": Target(">= 10x naive", 10.0),
    "e2e": Target(">= 20,000 events/s per worker", 20_000),
    "p99": Target("p99 <= 100 ms at 2,000 events/s", 100.0, at_most=True),
    "memory": Target("<= 2 KiB per customer", 2048.0, at_most=True),
    "train": Target("< 2 minutes at 100k customers", 120.0, at_most=True),
    "hot": Target("<= 3x an ordinary customer's per-event cost", 3.0, at_most=True),
}


@dataclass
class Figure:
    """One reported number: the median of its runs, the runs, and its target if any."""

    section: str
    name: str
    unit: str
    runs: list[float]
    target: str | None = None
    met: bool | None = None
    note: str = ""
    #: The harness section that measured it, when not `section` (the end-to-end and
    #: latency runs report the worker's memory): `--keep` keeps it until that one reruns.
    source: str = ""
    value: float = field(init=False)

    def __post_init__(self) -> None:
        self.value = statistics.median(self.runs) if self.runs else float("nan")

    def judge(self, target: Target) -> Figure:
        self.target = target.text
        self.met = target.met(self.value)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def repeat(times: int, measure: Callable[[], float]) -> list[float]:
    """Run `measure` `times` times (at least once); its results in order."""
    return [measure() for _ in range(max(1, times))]


def machine(redis_url: str) -> dict[str, Any]:
    """Cores, memory, Python, OS and the Redis server's version, for every figure."""
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    info = redis.Redis.from_url(redis_url).info("server")
    server = "valkey" if "valkey_version" in info else "redis"
    version = str(info.get("valkey_version", info.get("redis_version", "?")))
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": f"{server} {version}",
        "redis_url": redis_url.rsplit("@", maxsplit=1)[-1],
        "load_average": list(os.getloadavg()),
    }


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """`url`, else the machine's 127.0.0.1:6379 if it answers, else an embedded Valkey."""
    if url:
        yield url
        return
    local = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(local, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        embedded, stop = start_embedded()
        try:
            yield embedded
        finally:
            stop()
        return
    yield local


def new_prefix(tag: str) -> str:
    """A key prefix no other run uses."""
    return f"segstream-bench-{tag}-{uuid.uuid4().hex[:10]}"


def drop(url: str, prefix: str) -> None:
    """Delete every key under `prefix`."""
    client = redis.Redis.from_url(url)
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)
    client.close()


@asynccontextmanager
async def timed_replay(
    url: str, bundle: Path, events: Path, batch_size: int, tag: str
) -> AsyncIterator[tuple[str, ReplaySummary, float]]:
    """Replay `events` through a fresh engine under a new key prefix, timed: (prefix,
    summary, seconds). The keys stay for the caller to measure until the context ends."""
    prefix = new_prefix(tag)
    settings = StreamSettings(redis_url=url, key_prefix=prefix)  # type: ignore[call-arg]
    runtime = await open_runtime(settings, model_path=bundle, prefix=prefix)
    try:
        with tempfile.TemporaryDirectory(prefix="segstream-bench-") as tmp:
            t0 = time.perf_counter()
            summary = await replay(
                runtime.engine, events, Path(tmp) / "alerts.jsonl", batch_size=batch_size
            )
            seconds = time.perf_counter() - t0
        yield prefix, summary, seconds
    finally:
        await runtime.close()
        drop(url, prefix)


def memory_usage(url: str, prefix: str, match: str = "*") -> tuple[int, int]:
    """(keys, bytes): `MEMORY USAGE` summed over the keys under `prefix` matching `match`."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:{match}", count=5000))
    total = 0
    for start in range(0, len(keys), 5000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 5000]:
            pipe.memory_usage(key, samples=0)
        total += sum(int(size or 0) for size in pipe.execute())
    client.close()
    return len(keys), total


@dataclass(frozen=True)
class HistoryFile:
    """A generated history on disk."""

    customers: int
    days: int
    path: Path  # events.jsonl, delivery order
    events: int
    train_as_of: str  # all but the last 14 days (as the demo trains)


class Histories:
    """Generated histories, written once per (customers, days) under `root`."""

    def __init__(self, root: Path, seed: int = 1) -> None:
        self.root = root
        self.seed = seed
        self._cache: dict[tuple[int, int], HistoryFile] = {}

    def get(self, customers: int, days: int) -> HistoryFile:
        key = (customers, days)
        if key not in self._cache:
            history = generate_history(customers, days, self.seed)
            folder = self.root / f"history-{customers}x{days}"
            path = write_history(history, folder)["events"]
            as_of = DEFAULT_START + timedelta(days=max(days - 14, 1)) - timedelta(seconds=1)
            self._cache[key] = HistoryFile(
                customers, days, path, len(history.events), as_of.strftime("%Y-%m-%dT%H:%M:%SZ")
            )
        return self._cache[key]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def segstream_command() -> list[str]:
    """The `segstream` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "segstream"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from segstream.cli import app; app()"]
