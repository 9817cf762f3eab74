"""The faust application: the thin agent around `stream.worker.Worker`.

Owns the wiring only: topics, the agent that reads batches with
``stream.take_events(batch_size, within=batch_seconds)`` and hands each to the core with a
``publish`` callback that sends records and waits for every broker ack (the core calls it
before saving the states those records stand for, and the agent asks for the next batch
only after, so the offsets faust commits later cover only durable, published work), the
Kafka credentials (SASL, TLS) built from the settings, the worker consumer's fetch wait
(`KafkaTransport`: faust hard-codes it), the re-score and center-sync timers, the
Prometheus ``/metrics`` server on ``metrics_port`` and the read API (`stream.web`) on the
faust web server (``web_port``). Decoding, features, decisions and metrics live elsewhere.

Run it with ``segstream worker`` or ``faust -A stream.app worker -l info``; both build the
settings once from ``SEGSTREAM_*`` variables (`stream.app.app`, built on first access:
importing this module builds no app).

Exceptions never escape the agent's loop body (faust would ack the batch and lose it):
Redis failures are retried inside `Worker`, a batch that keeps failing otherwise is split
by `Worker.run` down to the record at fault, and transient publish failures are retried
here with the same backoff (`stream.retry`); records the broker refuses for good are
counted and dropped (`unpublishable`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiokafka
import faust
from aiokafka import errors as kafka_errors
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import AppT, TransportT
from prometheus_client import CollectorRegistry

from stream.metrics import Metrics
from stream.pipeline import Pipeline, RuntimeFactory
from stream.retry import until_done
from stream.runtime import open_runtime
from stream.settings import StreamSettings
from stream.web import RecentAlerts, register
from stream.worker import Message, Output, Worker

log = logging.getLogger(__name__)

#: Consumer-group timings: Tansu (and Kafka) answer a join after a share of the session
#: timeout, so a short session makes joins take seconds; the heartbeat stays below a third.
SESSION_TIMEOUT = 6.0
HEARTBEAT_INTERVAL = 0.5


class _WorkerConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(
        self, transport: faust_aiokafka.Transport
    ) -> aiokafka.AIOKafkaConsumer:
        assert isinstance(transport, KafkaTransport)  # only KafkaTransport creates this thread
        consumer = super()._create_worker_consumer(transport)
        # aiokafka copies this into its Fetcher in `start()`, which faust calls next.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _WorkerConsumerThread:
        return _WorkerConsumerThread(self, loop=self.loop, beacon=self.beacon)


class KafkaTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport, with the worker consumer's fetch wait set by us.

    faust hard-codes ``fetch_max_wait_ms=1500``: on a broker that holds a fetch for the
    whole wait even when records arrive meanwhile (the embedded Tansu), a caught-up worker
    saw each event up to 1.5 s late. Kafka answers as soon as there is data, so there the
    wait only sets how often an idle worker asks.
    """

    Consumer = _Consumer

    def __init__(self, url: list[Any], app: AppT, *, fetch_max_wait_ms: int) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms


class SegstreamApp(faust.App):  # type: ignore[misc]
    """A faust app that carries its `Pipeline` (for the web views and tests), on a
    `KafkaTransport` whose worker consumer waits at most `fetch_max_wait_ms` per fetch."""

    segstream: Pipeline

    def __init__(self, id: str, *, fetch_max_wait_ms: int, **options: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(id, **options)

    def _new_transport(self) -> TransportT:
        return KafkaTransport(
            self.conf.broker_consumer, self, fetch_max_wait_ms=self.fetch_max_wait_ms
        )


def kafka_ssl_context(settings: StreamSettings) -> ssl.SSLContext:
    """The TLS context for the brokers: verify them (by the CA file, else the system's CAs),
    and present a client certificate when one is configured.

    Raises `ValueError` naming the setting when a file cannot be read or parsed (at start-up,
    before any connection is tried).
    """
    cafile = settings.kafka_ssl_cafile
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"SEGSTREAM_KAFKA_SSL_CAFILE={cafile}: cannot load it: {exc}") from None
    if settings.kafka_ssl_certfile is not None:
        cert, key = settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
        try:
            context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"SEGSTREAM_KAFKA_SSL_CERTFILE={cert} / SEGSTREAM_KAFKA_SSL_KEYFILE={key}: "
                f"cannot load the client certificate: {exc}"
            ) from None
    return context


def kafka_credentials(settings: StreamSettings) -> faust.auth.Credentials | None:
    """faust's ``broker_credentials`` for the configured security protocol (None: plaintext).

    The password goes to faust (and aiokafka) only: `faust.SASLCredentials` prints the user
    alone, and the settings keep it as a `SecretStr`.

    >>> s = StreamSettings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="app",
    ...                    kafka_sasl_password="s3cret", kafka_sasl_mechanism="SCRAM-SHA-512")
    >>> creds = kafka_credentials(s)
    >>> creds, creds.protocol.value, creds.mechanism.value
    (<SASLCredentials: username=app>, 'SASL_PLAINTEXT', 'SCRAM-SHA-512')
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = kafka_ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        ssl_context=context,  # SASL_SSL when set, SASL_PLAINTEXT otherwise
        mechanism=settings.kafka_sasl_mechanism,
    )


#: Broker errors about the record itself: retrying the same record cannot succeed.
UNPUBLISHABLE = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordException,
)


_NO_META = (None, None, None)  # partition, timestamp, headers: the producer's defaults


def unpublishable(exc: BaseException) -> str | None:
    """The reason a send can never succeed (faust wraps aiokafka's error), or None.

    >>> unpublishable(kafka_errors.MessageSizeTooLargeError()), unpublishable(OSError())
    ('MessageSizeTooLargeError', None)
    """
    for err in (exc, exc.__cause__):
        if isinstance(err, UNPUBLISHABLE):
            return type(err).__name__
    return None


async def _until_done(what: str, step: Callable[[], Awaitable[Any]]) -> Any:
    """Run `step` until it succeeds, backing off; nothing escapes but cancellation."""
    return await until_done(what, step, on_error=_log_failure)


def _log_failure(what: str, exc: BaseException, delay: float) -> None:
    log.error("%s failed; retrying in %.1f s", what, delay, exc_info=exc)


def new_app(settings: StreamSettings) -> SegstreamApp:
    """A faust app with the worker's broker, consumer-group and web options, and no agents.

    `create_app` adds segstream's agent, timers and views; `benchmarks.faust_floor` adds a
    no-op agent, to measure what faust costs with these very options.
    """
    return SegstreamApp(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=kafka_credentials(settings),
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        store="memory://",
        # faust creates its data folder even with the memory store; nothing in it outlives
        # the process, so keep it out of the working directory.
        datadir=str(Path(tempfile.gettempdir()) / f"{settings.app_id}-faust-data"),
        autodiscover=False,
        topic_partitions=settings.input_partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT,
        broker_heartbeat_interval=HEARTBEAT_INTERVAL,
        broker_rebalance_timeout=settings.rebalance_timeout_seconds,
        broker_commit_interval=settings.commit_interval_seconds,
        web_enabled=bool(settings.web_port),
        web_port=settings.web_port or 6066,
        web_in_thread=False,
    )


def input_topic(app: SegstreamApp, settings: StreamSettings) -> Any:
    """The input topic, records as raw bytes (the core decodes and validates them)."""
    return app.topic(
        settings.input_topic,
        partitions=settings.input_partitions,
        key_serializer="raw",
        value_serializer="raw",
    )


def publisher(app: SegstreamApp, metrics: Metrics) -> Callable[[list[Output]], Awaitable[None]]:
    """The core's `publish`: send records straight to faust's producer and return once the
    broker acked every one.

    Transient failures are retried with backoff, resending only what was not acked; a
    record the broker refuses for good (`unpublishable`) is counted, logged and dropped.
    Straight to the producer because `Topic.send` cost ~210 us of CPU per record (futures,
    callbacks, sensors we do not use), the producer's `send` ~30 us.
    """

    def refuse(out: Output, exc: BaseException) -> bool:
        reason = unpublishable(exc)
        if reason is None:
            return False
        metrics.unpublishable.labels(reason).inc()
        log.error("the broker refused a %d-byte record for %s (key %.80s): %s; dropped",
                  len(out.value), out.topic, out.key, reason)  # fmt: skip
        return True

    async def publish(outputs: list[Output]) -> None:
        todo = list(outputs)

        async def send_all() -> None:
            nonlocal todo
            producer = await app.maybe_start_producer()
            sent: list[tuple[Output, Any]] = []
            for out in todo:
                key = out.key.encode()
                try:
                    sent.append((out, await producer.send(out.topic, key, out.value, *_NO_META)))
                except Exception as exc:
                    if not refuse(out, exc):
                        raise
            acks = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
            failed = [
                (out, ack)
                for (out, _), ack in zip(sent, acks, strict=True)
                if isinstance(ack, BaseException) and not refuse(out, ack)
            ]
            todo = [out for out, _ in failed]  # a retry sends only what was not acked
            if failed:
                raise failed[0][1]

        if outputs:
            await _until_done("publishing", send_all)

    return publish


def create_app(
    settings: StreamSettings,
    runtime_factory: RuntimeFactory = open_runtime,
    *,
    registry: CollectorRegistry | None = None,
) -> SegstreamApp:
    """The faust app for `settings`; `runtime_factory` opens the engine (tests pass theirs).

    The pipeline is reachable as ``app.segstream`` (a `Pipeline`).
    """
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    app = new_app(settings)
    pipeline = Pipeline(settings, runtime_factory, metrics)
    app.segstream = pipeline

    source = input_topic(app, settings)

    def owned() -> list[int]:
        return sorted(
            tp.partition for tp in app.consumer.assignment() if tp.topic == settings.input_topic
        )

    pipeline.owned = owned

    recent = RecentAlerts(
        {
            settings.migrations_topic,
            settings.churn_topic,
            settings.population_topic,
            settings.model_topic,
        }
    )
    send = publisher(app, metrics)

    async def publish(outputs: list[Output]) -> None:
        await send(outputs)
        recent.record(outputs)  # acked: now they were published

    def update_lag(core: Worker) -> None:
        for tp in app.consumer.assignment():
            if tp.topic == settings.input_topic:
                highwater = app.consumer.highwater(tp)
                if highwater is not None:
                    metrics.set_lag(tp.partition, core.lag(tp.partition, highwater))

    @app.task  # type: ignore[untyped-decorator]
    async def start() -> None:
        pipeline.serve_metrics()
        await _until_done("opening the runtime", pipeline.worker)

    @app.agent(source)
    async def segment(stream: Any) -> None:  # a faust.Stream (StreamT lacks take_events)
        async for events in stream.take_events(settings.batch_size, within=settings.batch_seconds):
            messages = [Message(e.value, e.message.partition, e.message.offset) for e in events]
            core = await _until_done("opening the runtime", pipeline.worker)
            # The core publishes (and awaits the acks) before it saves any state; faust
            # acks these events only when we ask for the next batch.
            await core.run(messages, publish)
            update_lag(core)

    @app.timer(settings.rescore_interval_seconds)  # type: ignore[untyped-decorator]
    async def rescore() -> None:
        core = await _until_done("opening the runtime", pipeline.worker)
        update_lag(core)  # the re-score judges a partition behind on its own event time
        await _until_done("re-scoring", partial(core.tick, publish))

    @app.timer(settings.centers_sync_seconds)  # type: ignore[untyped-decorator]
    async def sync_centers() -> None:
        core = await _until_done("opening the runtime", pipeline.worker)
        await _until_done("syncing centers", core.sync_centers)

    @app.timer(settings.model_poll_seconds)  # type: ignore[untyped-decorator]
    async def reload_model() -> None:
        core = await _until_done("opening the runtime", pipeline.worker)
        await core.check_model()

    def inputs(tps: Any) -> list[int]:
        return sorted(tp.partition for tp in tps if tp.topic == settings.input_topic)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        # Another worker may now write these customers' states: no re-score of them from
        # now on, read them again later, and a late save of theirs is fenced.
        if pipeline.core is not None:
            pipeline.core.revoked(inputs(revoked))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        # A new generation for these partitions (before the core exists, `Pipeline.worker`
        # claims what the consumer owns when it builds it).
        if pipeline.core is not None:
            await pipeline.core.assigned(inputs(assigned))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close(sender: Any, **kwargs: Any) -> None:
        await pipeline.close()

    register(app, pipeline, recent)
    return app


def __getattr__(name: str) -> Any:
    """`stream.app.app`, the app of ``faust -A stream.app``, built from ``SEGSTREAM_*`` on
    first use (importing this module builds nothing)."""
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _default_app() -> SegstreamApp:
    return create_app(StreamSettings())


__all__ = [
    "KafkaTransport",
    "Pipeline",
    "SegstreamApp",
    "create_app",
    "input_topic",
    "kafka_credentials",
    "kafka_ssl_context",
    "new_app",
]
