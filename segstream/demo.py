"""`segstream demo`: the whole system on one machine, with a live terminal view.

Owns the orchestration of the laptop demo: start an embedded Kafka-compatible broker
(Tansu) and an embedded Valkey on free loopback ports (or use the broker and Redis the
caller names), generate a history, train a bundle on everything before the last
`live_days` days, *backfill* the store with everything before those days (the history
replayed through the worker's engine into the worker's own key prefix, as `segstream
replay --backfill` does, so the worker starts warm, as a deployment does), run the faust
worker in this process with the event-time clock, stream the last days through the
broker at `rate` events/s and show what comes out of the output topics (`DemoView`).
Everything it started is stopped on the way out, whatever the way out is (end of
history, `duration`, SIGINT/SIGTERM, an exception).

It reads no environment variable (the CLI passes the broker and Redis URLs) and holds no
business rule: features, decisions and alerts are the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import signal
import time
import uuid
import warnings
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from stream.children import free_port

__all__ = ["DemoError", "DemoOptions", "DemoSummary", "DemoView", "run_demo", "summary_lines"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
HISTORY_START = datetime(2026, 1, 1, tzinfo=UTC)
PARTITIONS = 4
SHOWN = 8  # migrations and churn alerts kept on screen
PLAIN_EVERY = 5.0  # seconds between progress lines when stdout is not a terminal
CHUNK = 5000  # records sent before waiting for their acks
STOP_TIMEOUT = 15.0  # seconds the worker gets to stop


class DemoError(RuntimeError):
    """Something the demo needs is unavailable; the message is one line for the user."""


@dataclass(frozen=True)
class DemoOptions:
    """What to run: the history's size, the live pace, and where the services are.

    `duration` counts seconds of streaming (setup and training excluded); None runs
    until the history is exhausted or a signal. `broker_url`/`redis_url` None start
    embedded ones.
    """

    out: Path
    customers: int = 2000
    days: int = 90
    seed: int = 1
    rate: float = 500.0
    duration: float | None = None
    live_days: int = 14
    broker_url: str | None = None
    redis_url: str | None = None

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise DemoError(f"--customers must be >= 1, got {self.customers}")
        if self.days <= self.live_days + 14:
            raise DemoError(
                f"--days must be more than {self.live_days + 14} (the last {self.live_days} "
                f"days stream live after training on the days before), got {self.days}"
            )
        if self.rate <= 0:
            raise DemoError(f"--rate must be > 0 events/s, got {self.rate}")
        if self.duration is not None and self.duration <= 0:
            raise DemoError(f"--duration must be > 0 seconds, got {self.duration}")

    @property
    def live_start(self) -> datetime:
        """Where the live part begins; the bundle is trained on what came before."""
        return HISTORY_START + timedelta(days=self.days - self.live_days)


@dataclass
class DemoSummary:
    """What a run did, for the final lines and the exit code."""

    processed: int = 0
    seconds: float = 0.0
    alerts: dict[str, int] = field(default_factory=dict)
    populations: dict[str, int] = field(default_factory=dict)
    dlq: int = 0
    redis: str = ""
    state_keys: int = 0
    reason: str = ""


# --- the view ------------------------------------------------------------------------------


def _sum(registry: Any, name: str, by: str | None = None) -> dict[str, float]:
    """Samples of a metric summed over labels (or grouped by label `by`)."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels.get(by, "") if by else ""
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _driver(drivers: Sequence[dict[str, Any]], churn: bool) -> str:
    if not drivers:
        return "-"
    d = drivers[0]
    if churn:
        return f"{d['feature']} {d['value']:g} (typical {d['typical']:g})"
    return f"{d['feature']} {d['before']:g} -> {d['after']:g}"


class DemoView:
    """What the screen shows, fed by the output topics and the worker's metrics.

    `record` takes one output record (its topic kind and JSON body), `sample` the metrics
    registry; `render` is the rich view, `line` the plain progress line, `summary` the end.

    >>> view = DemoView(metrics_url="http://m", api_url="http://a/c1")
    >>> view.record("migrations", {"customer_id": "c1", "from_segment_name": "A",
    ...     "to_segment_name": "B", "drivers": [{"feature": "f", "before": 1, "after": 2}]})
    >>> view.migrations[0]
    ('c1', 'A -> B', 'f 1 -> 2')
    """

    def __init__(self, *, metrics_url: str, api_url: str) -> None:
        self.metrics_url = metrics_url
        self.api_url = api_url
        self.phase = "starting"
        self.note = ""
        self.migrations: deque[tuple[str, str, str]] = deque(maxlen=SHOWN)
        self.churn: deque[tuple[str, str, str]] = deque(maxlen=SHOWN)
        self.records: Counter[str] = Counter()
        self.processed = 0
        self.rate = 0.0
        self.alerts: dict[str, int] = {}
        self.populations: dict[str, int] = {}
        self.event_time = ""
        self.produced = 0
        self.total = 0
        self.started = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque(maxlen=8)

    def record(self, kind: str, body: dict[str, Any]) -> None:
        """One record from an output topic (`kind`: migrations, churn, dlq, ...)."""
        self.records[kind] += 1
        if kind == "migrations":
            move = f"{body.get('from_segment_name')} -> {body.get('to_segment_name')}"
            self.migrations.appendleft(
                (str(body.get("customer_id")), move, _driver(body.get("drivers") or [], False))
            )
        elif kind == "churn":
            self.churn.appendleft(
                (
                    str(body.get("customer_id")),
                    f"{float(body.get('probability', 0.0)):.2f}",
                    _driver(body.get("drivers") or [], True),
                )
            )

    def sample(self, registry: Any, watermark: float | None, now: float) -> None:
        """Read the worker's metrics: events processed (and their rate), alerts, populations."""
        self.processed = int(sum(_sum(registry, "segstream_events_processed_total").values()))
        self._samples.append((now, self.processed))
        t0, n0 = self._samples[0]
        self.rate = (self.processed - n0) / (now - t0) if now > t0 else 0.0
        self.alerts = {
            k: int(v) for k, v in _sum(registry, "segstream_alerts_total", "type").items() if v
        }
        pop = _sum(registry, "segstream_segment_population", "segment")
        self.populations = {k: int(v) for k, v in sorted(pop.items())}
        if watermark:
            self.event_time = datetime.fromtimestamp(watermark, UTC).strftime("%Y-%m-%d %H:%M")

    @property
    def dlq(self) -> int:
        return self.records["dlq"]

    def render(self) -> RenderableType:
        head = Table.grid(padding=(0, 2))
        head.add_row(
            Text(f"segstream demo - {self.phase}", style="bold"),
            f"{self.rate:,.0f} events/s",
            f"processed {self.processed:,}",
            f"sent {self.produced:,}/{self.total:,}",
            f"event time {self.event_time or '-'}",
            f"DLQ {self.dlq:,}",
        )
        pops = Table(title="segment populations", expand=False)
        pops.add_column("segment")
        pops.add_column("customers", justify="right")
        for name, count in self.populations.items():
            pops.add_row(name, f"{count:,}")
        moves = Table(title=f"latest migrations (of {self.alerts.get('segment_migration', 0):,})")
        for col in ("customer", "from -> to", "top driver (before -> after)"):
            moves.add_column(col)
        for row in self.migrations:
            moves.add_row(*row)
        churn = Table(title=f"latest churn alerts (of {self.alerts.get('churn_risk', 0):,})")
        for col in ("customer", "P(churn)", "top driver"):
            churn.add_column(col)
        for row in self.churn:
            churn.add_row(*row)
        links = Text(f"metrics {self.metrics_url}\nread API {self.api_url}", style="cyan")
        parts: list[RenderableType] = [head, pops, moves, churn, links]
        if self.note:
            parts.append(Text(self.note, style="yellow"))
        parts.append(Text("Ctrl-C to stop", style="dim"))
        return Group(*parts)

    def line(self) -> str:
        alerts = " ".join(f"{k}={v}" for k, v in sorted(self.alerts.items())) or "none"
        return (
            f"[{time.monotonic() - self.started:5.0f} s] {self.phase}: sent "
            f"{self.produced:,}/{self.total:,}, processed {self.processed:,} "
            f"({self.rate:,.0f} events/s), event time {self.event_time or '-'}, "
            f"alerts {alerts}, DLQ {self.dlq}"
        )


# --- services ------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _bootstrap(url: str) -> str:
    """aiokafka's ``host:port[,host:port]`` from faust-style ``kafka://host:port[;...]``."""
    hosts = [
        p.strip().removeprefix("kafka://").rstrip("/") for p in url.replace(";", ",").split(",")
    ]
    return ",".join(h for h in hosts if h)


def _start_broker(stack: contextlib.ExitStack) -> tuple[str, str]:
    from stream.broker import BrokerStartError, start_embedded_broker

    try:
        broker = start_embedded_broker()
    except (BrokerStartError, ImportError, OSError) as exc:
        raise DemoError(f"cannot start the embedded broker (Tansu): {_first_line(exc)}") from None
    stack.callback(broker.stop)
    return broker.url, broker.bootstrap


def _start_valkey(stack: contextlib.ExitStack) -> str:
    from stream.redis_conn import start_embedded

    # valkey-server runs in its own session (stream.children), so a Ctrl-C in the
    # terminal reaches only us, and we stop it after the worker.
    try:
        url, stop = start_embedded()
    except Exception as exc:  # RedisUnavailable, or ImportError/OSError from the wheel
        raise DemoError(f"cannot start the embedded Valkey: {_first_line(exc)}") from None
    stack.callback(stop)
    return url


async def _check_external(bootstrap: str | None, redis_url: str | None) -> None:
    """Fail fast when a broker or Redis named by the caller does not answer."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from stream.redis_conn import RedisUnavailable, connect

    if redis_url is not None:
        try:
            conn = await connect(redis_url)
        except (RedisUnavailable, ValueError) as exc:
            raise DemoError(str(exc)) from None
        await conn.close()
    if bootstrap is not None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
        except (KafkaError, OSError) as exc:
            raise DemoError(f"broker at {bootstrap} is not reachable: {exc}") from None
        await admin.close()


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Send every log record (faust, aiokafka, the worker) to a file, not the screen."""
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --- the run -------------------------------------------------------------------------------


@dataclass
class _Plan:
    """The prepared run: files, settings and what to send."""

    settings: Any  # StreamSettings
    bootstrap: str
    records: list[tuple[bytes, bytes]]  # the live part, sent at the demo's rate
    example: str
    redis_note: str
    drop_state: bool


def run_demo(options: DemoOptions, console: Console) -> DemoSummary:
    """Run the demo to its end; raise `DemoError` (one line) when something is unavailable.

    A Ctrl-C or SIGTERM during setup raises KeyboardInterrupt after stopping everything;
    during streaming it ends the run normally (the summary says so).
    """
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with contextlib.ExitStack() as stack, _logs_to(out / "demo.log"):
            plan = _prepare(options, console, stack)
            return asyncio.run(_stream(options, plan, console))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prepare(options: DemoOptions, console: Console, stack: contextlib.ExitStack) -> _Plan:
    from models.catalog import default_catalog
    from offline.synthetic import generate_history, write_history
    from offline.train import TrainSettings, train
    from stream.settings import StreamSettings

    t0 = time.perf_counter()
    asyncio.run(
        _check_external(
            _bootstrap(options.broker_url) if options.broker_url else None, options.redis_url
        )
    )
    if options.broker_url:
        broker_url, bootstrap = options.broker_url, _bootstrap(options.broker_url)
        console.print(f"broker: {bootstrap} (SEGSTREAM_BROKER_URL)")
    else:
        broker_url, bootstrap = _start_broker(stack)
        console.print(f"broker: embedded Tansu on {bootstrap}")
    if options.redis_url:
        from stream.redis_conn import redact

        redis_url, redis_note = (
            options.redis_url,
            f"{redact(options.redis_url)} (SEGSTREAM_REDIS_URL)",
        )
    else:
        redis_url = _start_valkey(stack)
        redis_note = f"{redis_url} (embedded Valkey)"
    console.print(f"redis: {redis_note}")

    history = generate_history(options.customers, options.days, options.seed)
    paths = write_history(history, out_dir=options.out / "history")
    live_at = options.live_start
    live = (history.events["ts"] >= live_at).to_numpy()
    console.print(
        f"history: {len(history.events):,} events, {options.customers:,} customers x "
        f"{options.days} days -> {paths['events']}"
    )
    as_of = live_at.timestamp() - 1
    models = options.out / "models"
    console.print(f"training on the history before {live_at:%Y-%m-%d} ...")
    result = train(
        paths["events"],
        as_of,
        models,
        default_catalog(),
        TrainSettings(seed=options.seed),
        now=datetime.now(UTC),
    )
    console.print(
        f"bundle {result.bundle.path.name}: segments "
        f"{', '.join(result.bundle.segment_names.values())}"
    )
    for note in result.notes:
        console.print(f"note: {note}")

    lines = paths["events"].read_bytes().splitlines()
    records = [
        (cid.encode(), line)
        for cid, line, now in zip(history.events["customer_id"], lines, live, strict=True)
        if now
    ]
    truth = history.truth
    movers = truth.dropna(subset=["migration_day"])["customer_id"]
    example = str(movers.iloc[0] if len(movers) else truth["customer_id"].iloc[0])
    tag = uuid.uuid4().hex[:8]
    name = f"segstream-demo-{tag}"
    settings = StreamSettings(
        broker_url=broker_url,
        redis_url=redis_url,
        key_prefix=name,
        app_id=name,
        model_dir=models,
        input_topic=f"demo-{tag}-events",
        assignments_topic=f"demo-{tag}-segment-assignments",
        migrations_topic=f"demo-{tag}-segment-migrations",
        churn_topic=f"demo-{tag}-churn-alerts",
        population_topic=f"demo-{tag}-population-alerts",
        model_topic=f"demo-{tag}-model-alerts",
        lifecycle_topic=f"demo-{tag}-lifecycle-alerts",
        dlq_topic=f"demo-{tag}-events-dlq",
        input_partitions=PARTITIONS,
        metrics_port=free_port(),
        web_port=free_port(),
        clock="event",
        batch_size=1000,
        batch_seconds=0.2,
        rebalance_timeout_seconds=6.0,
        rescore_interval_seconds=3600.0,
        model_poll_seconds=3600.0,
    )
    earlier = options.out / "history" / "backfill.jsonl"
    earlier.write_bytes(b"".join(line + b"\n" for line, now in zip(lines, live, strict=True)
                                 if not now))  # fmt: skip
    console.print(f"backfill: the history before {live_at:%Y-%m-%d} into Redis ...")
    if options.redis_url is not None:
        stack.callback(_drop_state, settings)
    done = asyncio.run(_backfill(settings, earlier, models / "current"))
    console.print(
        f"backfill: {done.events:,} events of {done.customers:,} customers, "
        f"{done.rescored:,} daily re-scores; the worker starts warm"
    )
    console.print(f"setup took {time.perf_counter() - t0:.1f} s")
    return _Plan(
        settings=settings,
        bootstrap=bootstrap,
        records=records,
        example=example,
        redis_note=redis_note,
        drop_state=options.redis_url is not None,
    )


async def _backfill(settings: Any, events: Path, model: Path) -> Any:
    """Replay `events` into the worker's key prefix (`segstream replay --backfill`): each
    customer's features, segment and next daily re-score, in its input partition."""
    from stream.health import HealthMonitor
    from stream.replay import replay
    from stream.runtime import open_runtime

    runtime = await open_runtime(settings, model_path=model, prefix=settings.key_prefix)
    try:
        health = HealthMonitor(
            psi_threshold=settings.psi_threshold,
            psi_window=settings.psi_window,
            drift_bound=settings.drift_bound,
        )
        return await replay(
            runtime.engine,
            events,
            events.with_name("backfill-alerts.jsonl"),
            health=health,
            partitions=settings.input_partitions,
        )
    finally:
        await runtime.close()


def _drop_state(settings: Any) -> None:
    """Remove the run's keys from a Redis that is not the demo's own (also when the run
    fails between the backfill and the end, where `_stream` would have done it)."""
    from stream.redis_conn import connect
    from stream.runtime import drop_prefix

    async def drop() -> None:
        conn = await connect(settings.redis_url)
        try:
            await drop_prefix(conn, settings.key_prefix)
        finally:
            await conn.close()

    try:
        asyncio.run(drop())
    except Exception as exc:  # best effort on the way out; the run's result stands
        log.warning("could not remove the demo's keys %s:*: %r", settings.key_prefix, exc)


def _topics(settings: Any) -> dict[str, str]:
    """Output topic -> the view's kind of record."""
    return {
        settings.assignments_topic: "assignments",
        settings.migrations_topic: "migrations",
        settings.churn_topic: "churn",
        settings.population_topic: "population",
        settings.model_topic: "model",
        settings.lifecycle_topic: "lifecycle",
        settings.dlq_topic: "dlq",
    }


async def _stream(options: DemoOptions, plan: _Plan, console: Console) -> DemoSummary:
    import faust
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from stream.app import create_app
    from stream.broker import create_topics
    from stream.redis_conn import connect
    from stream.runtime import drop_prefix

    settings = plan.settings
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stop = asyncio.Event()
    streaming = stopping = False

    def on_signal() -> None:
        if stopping:  # the shutdown is under way (and bounded): let it finish
            return
        if (stop.is_set() or not streaming) and main is not None:
            main.cancel()
        stop.set()

    def catch_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)

    catch_signals()
    outputs = _topics(settings)
    try:
        await create_topics(
            plan.bootstrap,
            {settings.input_topic: PARTITIONS, **dict.fromkeys(outputs, PARTITIONS)},
        )
    except (KafkaError, RuntimeError, OSError) as exc:
        raise DemoError(f"cannot create the demo's topics: {_first_line(exc)}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = create_app(settings)
        app.conf.datadir = options.out / "faust"
    view = DemoView(
        metrics_url=f"http://{HOST}:{settings.metrics_port}/metrics",
        api_url=f"http://{HOST}:{settings.web_port}/customers/{plan.example}",
    )
    view.total = len(plan.records)
    summary = DemoSummary(redis=plan.redis_note)
    worker = faust.Worker(
        app,
        loop=loop,
        daemon=False,
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,
        stdout=io.StringIO(),
    )
    consumer = AIOKafkaConsumer(
        *outputs, bootstrap_servers=plan.bootstrap, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=plan.bootstrap, linger_ms=10)
    last: dict[int, int] = {}
    tasks: list[asyncio.Task[None]] = []

    async def consume() -> None:
        while True:
            for tp, batch in (await consumer.getmany(timeout_ms=200)).items():
                kind = outputs[tp.topic]
                for rec in batch:
                    with contextlib.suppress(ValueError):
                        view.record(kind, json.loads(rec.value))

    async def send(chunk: list[tuple[bytes, bytes]]) -> None:
        futures = [await producer.send(settings.input_topic, v, key=k) for k, v in chunk]
        for meta in await asyncio.gather(*futures):
            last[meta.partition] = max(last.get(meta.partition, -1), meta.offset)
        view.produced += len(chunk)

    def caught_up() -> bool:
        core = app.segstream.core
        return core is not None and all(
            core.last_offsets.get(p, -1) >= off for p, off in last.items()
        )

    async def produce() -> None:
        view.phase = f"live ({options.rate:,.0f} events/s)"
        begin, sent = time.monotonic(), 0
        while sent < len(plan.records):
            due = int((time.monotonic() - begin) * options.rate)
            if due > sent:
                upto = min(due, len(plan.records), sent + CHUNK)
                await send(plan.records[sent:upto])
                sent = upto
            await asyncio.sleep(0.05)
        while not caught_up():
            await asyncio.sleep(0.1)
        view.phase = "history exhausted"

    console.print(f"metrics: {view.metrics_url}\nread API: {view.api_url}", highlight=False)
    started = time.monotonic()
    try:
        await consumer.start()
        await producer.start()
        await worker.start()
        catch_signals()  # faust installed its own handlers; ours stop the run gracefully
        streaming = True
        started = view.started = time.monotonic()
        tasks = [loop.create_task(consume()), loop.create_task(produce())]
        summary.reason = await _watch(view, app, options, console, stop, tasks[1], started)
    finally:
        streaming, stopping = False, True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        summary.seconds = time.monotonic() - started
        view.sample(app.segstream.metrics.registry, None, time.monotonic())
        try:  # bounded: a worker stuck retrying a dead Redis must not hold the exit
            await asyncio.wait_for(worker.stop(), STOP_TIMEOUT)
        except Exception as exc:
            log.warning("the worker did not stop cleanly: %r", exc)
        with contextlib.suppress(Exception):
            await app.segstream.close()
        for client in (producer, consumer):
            with contextlib.suppress(Exception):
                await client.stop()
        summary.state_keys = await _count_state(connect, drop_prefix, plan)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    summary.processed = view.processed
    summary.alerts = dict(view.alerts)
    summary.populations = dict(view.populations)
    summary.dlq = view.dlq
    return summary


async def _count_state(connect: Any, drop_prefix: Any, plan: _Plan) -> int:
    """How many Redis keys the run wrote; removed when the Redis is someone else's."""
    prefix = plan.settings.key_prefix
    try:
        conn = await connect(plan.settings.redis_url)
    except Exception:
        return 0
    try:
        keys = 0
        async for _ in conn.client.scan_iter(match=f"{prefix}:*", count=5000):
            keys += 1
        if plan.drop_state:
            await drop_prefix(conn, prefix)
        return keys
    finally:
        await conn.close()


async def _watch(
    view: DemoView,
    app: Any,
    options: DemoOptions,
    console: Console,
    stop: asyncio.Event,
    producing: asyncio.Task[None],
    started: float,
) -> str:
    """Refresh the view until the end; return why it ended."""
    from rich.live import Live

    registry = app.segstream.metrics.registry
    tty = console.is_terminal
    live = Live(view.render(), console=console, refresh_per_second=4) if tty else None
    next_line = started + PLAIN_EVERY

    def reason() -> str | None:
        if stop.is_set():
            return "stopped by a signal"
        if options.duration is not None and time.monotonic() - started >= options.duration:
            return f"--duration {options.duration:g} s reached"
        if producing.done():
            if not producing.cancelled() and (exc := producing.exception()) is not None:
                raise exc
            return "history exhausted"
        return None

    with live if live is not None else contextlib.nullcontext():
        while (why := reason()) is None:
            now = time.monotonic()
            core = app.segstream.core
            view.sample(registry, core.watermark if core is not None else None, now)
            if live is not None:
                live.update(view.render())
            elif now >= next_line:
                console.print(view.line(), highlight=False)
                next_line = now + PLAIN_EVERY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.25)
        if why == "history exhausted":
            await asyncio.sleep(1.0)  # let the view's consumer read the last outputs
        core = app.segstream.core
        view.sample(registry, core.watermark if core is not None else None, time.monotonic())
        if live is not None:
            live.update(view.render())
    if not tty:
        console.print(view.line(), highlight=False)
    return why


def summary_lines(summary: DemoSummary) -> list[str]:
    """The final summary, plain text (CI logs and the test read it).

    >>> summary_lines(DemoSummary(processed=5, seconds=2.0, alerts={"segment_assigned": 3}))[0]
    'summary: events processed 5 in 2.0 s (2 events/s)'
    """
    rate = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
    alerts = " ".join(f"{k}={v}" for k, v in sorted(summary.alerts.items())) or "none"
    pops = ", ".join(f"{k}={v:,}" for k, v in summary.populations.items()) or "none"
    lines = [
        f"summary: events processed {summary.processed:,} in {summary.seconds:.1f} s "
        f"({rate:,.0f} events/s)",
        f"alerts: {alerts}",
        f"populations: {pops}",
        f"dead letters: {summary.dlq:,}",
    ]
    if summary.redis:
        lines.append(f"state: {summary.state_keys:,} keys in Redis {summary.redis}")
    if summary.reason:
        lines.append(f"ended: {summary.reason}")
    return lines
