"""End to end through a Kafka-protocol broker: `segstream worker` processes, throughput, latency.

Throughput: N events are produced to a fresh input topic first; then W `segstream worker`
processes start in one consumer group (settings by environment, event-time clock, fresh
key prefix, free ports), and we poll their `/metrics` until
`segstream_events_processed_total` sums to N, then the group's committed offsets until they
cover every record. Reported: events/s from the first processed event to the last (group
join excluded), the wall time from spawn, and each worker's resident memory (VmRSS/VmHWM).

Latency: one worker runs; new customers' first events (`signup`, timestamped now) are sent
at an offered rate, and each customer's `segment_assigned` alert is matched on the
assignments topic by customer id and `event_time`; latency is receive time minus send time.

Must not import faust (the worker runs in its own process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import HistoryFile, drop, new_prefix, percentile, segstream_command
from stream.broker import create_topics
from stream.children import free_port, stop

PARTITIONS = 8
OUTPUTS = ("assign", "migrate", "churn", "population", "model", "dlq")


@dataclass
class Deployment:
    """Topics, group and prefix of one run, and the workers started for it."""

    bootstrap: str
    redis_url: str
    model_dir: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    prefix: str = field(default_factory=lambda: new_prefix("e2e"))
    workers: list[tuple[subprocess.Popen[bytes], int, IO[bytes]]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def topic(self, name: str) -> str:
        return f"bench-{name}-{self.tag}"

    @property
    def group(self) -> str:
        return f"segstream-bench-{self.tag}"

    async def create(self) -> None:
        names = [self.topic("events")] + [self.topic(o) for o in OUTPUTS]
        await create_topics(self.bootstrap, dict.fromkeys(names, PARTITIONS))

    def env(self, metrics_port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SEGSTREAM_BROKER_URL": f"kafka://{self.bootstrap}",
                "SEGSTREAM_REDIS_URL": self.redis_url,
                "SEGSTREAM_MODEL_DIR": str(self.model_dir),
                "SEGSTREAM_CLOCK": "event",
                "SEGSTREAM_APP_ID": self.group,
                "SEGSTREAM_KEY_PREFIX": self.prefix,
                "SEGSTREAM_METRICS_PORT": str(metrics_port),
                "SEGSTREAM_WEB_PORT": str(free_port()),
                "SEGSTREAM_INPUT_TOPIC": self.topic("events"),
                "SEGSTREAM_ASSIGNMENTS_TOPIC": self.topic("assign"),
                "SEGSTREAM_MIGRATIONS_TOPIC": self.topic("migrate"),
                "SEGSTREAM_CHURN_TOPIC": self.topic("churn"),
                "SEGSTREAM_POPULATION_TOPIC": self.topic("population"),
                "SEGSTREAM_MODEL_TOPIC": self.topic("model"),
                "SEGSTREAM_DLQ_TOPIC": self.topic("dlq"),
                "SEGSTREAM_INPUT_PARTITIONS": str(PARTITIONS),
            }
        )
        env.update(self.extra_env)
        return env

    def start_worker(self, logdir: Path) -> None:
        port = free_port()
        log = (logdir / f"worker-{len(self.workers)}.log").open("wb")
        process = subprocess.Popen(
            [*segstream_command(), "worker", "--log-level", "warning"],
            env=self.env(port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=logdir,
            start_new_session=True,
        )
        self.workers.append((process, port, log))

    def processed(self) -> float:
        """`segstream_events_processed_total` summed over the workers (0 before they serve)."""
        total = 0.0
        for process, port, _ in self.workers:
            if process.poll() is not None:
                raise RuntimeError(f"worker {process.pid} exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
            for family in text_string_to_metric_families(text):
                if family.name == "segstream_events_processed":
                    total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total

    def rss(self) -> list[dict[str, int]]:
        """Each worker's VmRSS and VmHWM in bytes (from /proc; psutil is not a dependency)."""
        out = []
        for process, _, _ in self.workers:
            mem = {"pid": process.pid, "rss_bytes": 0, "peak_rss_bytes": 0}
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        mem["rss_bytes"] = int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        mem["peak_rss_bytes"] = int(line.split()[1]) * 1024
            out.append(mem)
        return out

    async def committed(self) -> int:
        """Records the group has committed on the input topic."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            total = 0
            for p in range(PARTITIONS):
                offset = await consumer.committed(TopicPartition(self.topic("events"), p))
                total += offset or 0
            return total
        finally:
            await consumer.stop()

    def stop(self) -> None:
        for process, _, log in self.workers:
            stop(process, 10.0)
            log.close()
        self.workers.clear()
        drop(self.redis_url, self.prefix)


async def _produce_all(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    t0 = time.perf_counter()
    try:
        for start in range(0, len(records), 5000):
            chunk = records[start : start + 5000]
            futures = [await producer.send(topic, v, key=k) for k, v in chunk]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records) / (time.perf_counter() - t0)


def history_records(history: HistoryFile, limit: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of the first `limit` events of a history file, in delivery order."""
    out: list[tuple[bytes, bytes]] = []
    with history.path.open("rb") as fh:
        for line in fh:
            if len(out) >= limit:
                break
            value = line.rstrip(b"\n")
            out.append((json.loads(value)["customer_id"].encode(), value))
    return out


@dataclass(frozen=True)
class ThroughputRun:
    """One end-to-end run with `workers` processes."""

    workers: int
    events: int
    produce_per_second: float
    seconds: float  # first processed event -> last processed event
    wall_seconds: float  # worker spawn -> last processed event
    commit_seconds: float  # worker spawn -> every record committed (NaN if not within limit)
    rss: list[dict[str, int]]

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


async def _throughput(
    bootstrap: str,
    redis_url: str,
    model_dir: Path,
    records: list[tuple[bytes, bytes]],
    workers: int,
    timeout: float,
) -> ThroughputRun:
    dep = Deployment(bootstrap, redis_url, model_dir)
    await dep.create()
    produced = await _produce_all(bootstrap, dep.topic("events"), records)
    n = len(records)
    with tempfile.TemporaryDirectory(prefix="segstream-bench-e2e-") as tmp:
        try:
            t0 = time.perf_counter()
            for _ in range(workers):
                dep.start_worker(Path(tmp))
            first = done = committed_at = math.nan
            while time.perf_counter() - t0 < timeout:
                count = await asyncio.to_thread(dep.processed)
                now = time.perf_counter()
                if count > 0 and math.isnan(first):
                    first = now
                if count >= n:
                    done = now
                    break
                await asyncio.sleep(_poll_interval(count, n, now - first))
            if math.isnan(done):
                raise TimeoutError(f"{workers} worker(s) processed too few of {n} in {timeout}s")
            rss = dep.rss()
            while time.perf_counter() - t0 < timeout:
                if await dep.committed() >= n:
                    committed_at = time.perf_counter()
                    break
                await asyncio.sleep(0.2)
        except BaseException:
            for i in range(len(dep.workers)):
                log = Path(tmp) / f"worker-{i}.log"
                if log.exists():
                    print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            dep.stop()
    return ThroughputRun(workers, n, produced, done - first, done - t0, committed_at - t0, rss)


def _poll_interval(count: float, n: int, elapsed: float) -> float:
    """Seconds until the next `/metrics` poll: 0.1 s around the first and the last event,
    up to 1 s in between. Each poll costs the worker ~5-10 ms of GIL time; polling every
    0.1 s throughout took ~10% of a busy worker's samples (py-spy), slowing what we time."""
    if count <= 0 or elapsed <= 0:
        return 0.1
    left = (n - count) / (count / elapsed)  # seconds to go at the rate so far
    return min(1.0, max(0.1, left / 2))


def throughput_once(
    bootstrap: str,
    redis_url: str,
    model_dir: Path,
    records: list[tuple[bytes, bytes]],
    workers: int,
    timeout: float = 1800.0,
) -> ThroughputRun:
    """Produce `records`, start `workers` workers, time until all are processed and committed."""
    return asyncio.run(_throughput(bootstrap, redis_url, model_dir, records, workers, timeout))


async def _floor(
    bootstrap: str,
    redis_url: str,
    model_dir: Path,
    records: list[tuple[bytes, bytes]],
    timeout: float,
) -> float:
    dep = Deployment(bootstrap, redis_url, model_dir)
    await dep.create()
    await _produce_all(bootstrap, dep.topic("events"), records)
    root = Path(__file__).resolve().parents[1]
    env = dep.env(free_port())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="segstream-bench-floor-") as tmp:
        out = Path(tmp) / "floor.json"
        command = [sys.executable, "-m", "benchmarks.faust_floor", str(len(records)), str(out)]
        done = await asyncio.to_thread(
            subprocess.run, command, env=env, cwd=tmp, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"faust floor failed ({done.returncode}): {done.stderr[-3000:]}")
        found = json.loads(out.read_text())
    return float(found["events"]) / float(found["seconds"])


def floor_once(
    bootstrap: str,
    redis_url: str,
    model_dir: Path,
    records: list[tuple[bytes, bytes]],
    timeout: float = 1800.0,
) -> float:
    """Events/s of `benchmarks.faust_floor`: the worker's faust app and batch loop doing no
    work, over the same `records` on a fresh topic; the ceiling of any worker on it."""
    return asyncio.run(_floor(bootstrap, redis_url, model_dir, records, timeout))


#: The worker settings of the latency runs: small batches and a short fetch wait trade
#: CPU for latency (defaults 0.5 s and 100 ms favour throughput; README "Benchmarks").
LATENCY_PROFILE: Final = {
    "SEGSTREAM_BATCH_SECONDS": "0.02",
    "SEGSTREAM_KAFKA_FETCH_MAX_WAIT_MS": "20",
}


@dataclass(frozen=True)
class LatencyRun:
    """Produce-to-alert latency at one offered load."""

    offered_per_second: float
    achieved_per_second: float
    sent: int
    matched: int
    latencies_ms: list[float] = field(repr=False)
    #: Send time to the alert record's timestamp (when the worker handed it to its
    #: producer): the worker's share, without this process's consumer delay.
    published_ms: list[float] = field(repr=False, default_factory=list)

    def quantile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms) if self.latencies_ms else float("nan")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


async def _wait_ready(dep: Deployment, producer: AIOKafkaProducer, seen: dict[str, float]) -> None:
    """Send warm-up events until one comes back as an alert (the group has joined)."""
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        cid = f"warm-{uuid.uuid4().hex[:12]}"
        body = {"event_id": cid, "customer_id": cid, "type": "signup", "ts": _iso(time.time())}
        await producer.send_and_wait(
            dep.topic("events"), json.dumps(body).encode(), key=cid.encode()
        )
        for _ in range(20):
            if cid in seen:
                return
            await asyncio.sleep(0.1)
    raise TimeoutError("the worker never answered a warm-up event")


async def _latency(dep: Deployment, rates: tuple[int, ...], seconds: float) -> list[LatencyRun]:
    # A short fetch wait: a broker may hold an empty fetch for the whole wait even when
    # records arrive meanwhile, which would add up to 500 ms (the default) to every figure.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=dep.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5
    )
    parts = [TopicPartition(dep.topic("assign"), p) for p in range(PARTITIONS)]
    consumer.assign(parts)
    await consumer.start()
    await consumer.seek_to_end(*parts)
    producer = AIOKafkaProducer(bootstrap_servers=dep.bootstrap, linger_ms=2)
    await producer.start()
    received: dict[str, float] = {}
    published: dict[str, float] = {}
    sent_at: dict[str, tuple[float, str]] = {}

    async def consume() -> None:
        async for msg in consumer:
            now = time.time()
            alert = json.loads(msg.value)
            cid = alert.get("customer_id")
            if alert.get("type") != "segment_assigned" or cid in received:
                continue
            if cid in sent_at and alert.get("event_time", "")[:19] != sent_at[cid][1][:19]:
                continue  # not the alert of the event we sent
            received[cid] = now
            published[cid] = msg.timestamp / 1000  # CreateTime, set by the worker's producer

    task = asyncio.create_task(consume())
    runs: list[LatencyRun] = []
    try:
        await _wait_ready(dep, producer, received)
        for rate in rates:
            sent_at.clear()
            tick = 0.01
            t0 = time.perf_counter()
            count = 0
            while (elapsed := time.perf_counter() - t0) < seconds:
                due = int(rate * min(elapsed + tick, seconds)) - count
                for _ in range(due):
                    cid = f"lat-{rate}-{uuid.uuid4().hex[:12]}"
                    now = time.time()
                    ts = _iso(now)
                    body = {"event_id": cid, "customer_id": cid, "type": "signup", "ts": ts}
                    sent_at[cid] = (now, ts)
                    await producer.send(
                        dep.topic("events"), json.dumps(body).encode(), key=cid.encode()
                    )
                count += due
                await asyncio.sleep(max(0.0, t0 + elapsed + tick - time.perf_counter()))
            achieved = count / (time.perf_counter() - t0)
            await producer.flush()
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline and any(c not in received for c in sent_at):
                await asyncio.sleep(0.1)
            matched = [(c, s) for c, (s, _) in sent_at.items() if c in received]
            latencies = [(received[c] - s) * 1000 for c, s in matched]
            to_publish = [(published[c] - s) * 1000 for c, s in matched]
            runs.append(
                LatencyRun(rate, achieved, len(sent_at), len(matched), latencies, to_publish)
            )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await producer.stop()
        await consumer.stop()
    return runs


async def _latency_run(
    bootstrap: str,
    redis_url: str,
    model_dir: Path,
    rates: tuple[int, ...],
    seconds: float,
    worker_env: dict[str, str],
) -> tuple[list[LatencyRun], list[dict[str, int]]]:
    dep = Deployment(bootstrap, redis_url, model_dir)
    dep.extra_env = dict(worker_env)
    await dep.create()
    with tempfile.TemporaryDirectory(prefix="segstream-bench-lat-") as tmp:
        try:
            dep.start_worker(Path(tmp))
            runs = await _latency(dep, rates, seconds)
            return runs, dep.rss()
        except BaseException:
            log = Path(tmp) / "worker-0.log"
            if log.exists():
                print(f"--- worker log (tail)\n{log.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            dep.stop()


def latency_once(
    bootstrap: str,
    redis_url: str,
    model_dir: Path,
    rates: tuple[int, ...],
    seconds: float,
    worker_env: dict[str, str] | None = None,
) -> tuple[list[LatencyRun], list[dict[str, Any]]]:
    """One worker (`worker_env`: its extra settings); each offered rate for `seconds`;
    latencies of first-segment alerts."""
    env = LATENCY_PROFILE if worker_env is None else worker_env
    return asyncio.run(_latency_run(bootstrap, redis_url, model_dir, rates, seconds, env))
