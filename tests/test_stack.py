"""A rehearsal of `docker compose up` without Docker: the first minutes an operator sees.

`Stack` reads docker-compose.yml itself and runs each segstream service's exact
`entrypoint`/`command`/`environment` here, as subprocesses, in the compose start order,
with what only Docker provides rewritten: the kafka image becomes an embedded Tansu
broker (the topics of the `topics` service created on it, same partitions), the redis
image an embedded Valkey, named volumes and bind mounts become folders (`/data`,
`/models`, `/opt/producer`, ...), host names and ports become loopback ones, and
``${VAR:-default}`` is interpolated as compose does (the test sets
``SEGSTREAM_DEMO_CUSTOMERS`` and ``SEGSTREAM_DEMO_RATE`` for a shorter run). Prometheus
is the real server (Debian's package) with deploy/prometheus/prometheus.yml and
rules.yml, its target rewritten and its scrape interval shortened. Grafana is not run:
the test asks Prometheus what the dashboard's panels ask, and the read API what the
"Latest alerts" table reads.

Run it for a person with ``make stack`` (prints what Prometheus answers).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stream.broker import create_topics, start_embedded_broker
from stream.children import free_port
from stream.redis_conn import start_embedded
from tests.test_deploy import COMPOSE, ROOT, load_yaml, prometheus_tools

BIN = Path(sys.executable).parent
PSI_THRESHOLD = 0.25  # SegstreamPopulationShift and the dashboard's red line
# The rehearsal's size: 1,000 customers at 100 events/s is ~5 days of event time a minute
# (the stack's 5,000 at 20/s: ~0.2 days a minute), so a minute shows several midnights;
# too fast to judge SegstreamMassMigration, which `make stack` does at the stack's pace.
# `make stack` runs it at the compose file's own defaults and for longer (the environment
# names the size, the duration and a folder for the picture of docs/operations.md).
ENV = {"SEGSTREAM_DEMO_CUSTOMERS": "1000", "SEGSTREAM_DEMO_RATE": "100"}
ENV.update({k: os.environ[k] for k in ENV if k in os.environ})
STREAM_SECONDS = float(os.environ.get("SEGSTREAM_STACK_SECONDS", "60"))
OUT = os.environ.get("SEGSTREAM_STACK_OUT")
OPERATIONS = ROOT / "docs" / "operations.md"

_VAR = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable syntax: ``${VAR}``, ``${VAR:-default}``, ``$VAR``, ``$$`` = ``$``.

    >>> interpolate("--rate=${RATE:-200} $$x", {})
    '--rate=200 $x'
    """

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(3)
        return env.get(name) or (m.group(2) or "")

    return _VAR.sub(one, text)


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


@dataclass
class Stack:
    """The compose services as local processes, under `root`."""

    root: Path
    env: dict[str, str]
    hosts: dict[str, str] = field(default_factory=dict)  # compose address -> local address
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def spec(self) -> dict[str, Any]:
        data = load_yaml(COMPOSE)
        assert isinstance(data, dict)
        return data

    def service(self, name: str) -> dict[str, Any]:
        return dict(self.spec["services"][name])

    def mounts(self, name: str) -> dict[str, Path]:
        """Container path -> local path, for the service's volumes and bind mounts."""
        out: dict[str, Path] = {}
        for volume in self.service(name).get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if source.startswith((".", "/")):
                out[target] = (ROOT / source).resolve()
            else:
                out[target] = self.root / "volumes" / source
                out[target].mkdir(parents=True, exist_ok=True)
        return out

    def rewrite(self, text: str, name: str) -> str:
        """Compose's text as it runs here: variables, volume paths, host names."""
        text = interpolate(text, self.env)
        for target, local in sorted(self.mounts(name).items(), key=lambda kv: -len(kv[0])):
            text = re.sub(rf"(?<![\w/.]){re.escape(target)}(?=/|\b|$)", str(local), text)
        for address, local in self.hosts.items():
            text = text.replace(address, local)
        return text

    def argv(self, name: str) -> list[str]:
        service = self.service(name)
        entrypoint = _argv(service.get("entrypoint")) or ["segstream"]  # the Dockerfile's
        words = [*entrypoint, *_argv(service.get("command"))]
        return [self.rewrite(word, name) for word in words]

    def environment(self, name: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # segstream and python
        env["PYTHONUNBUFFERED"] = "1"
        for key, value in (self.service(name).get("environment") or {}).items():
            env[key] = self.rewrite(str(value), name)
        env.update(extra or {})
        return env

    def start(self, name: str, extra: Mapping[str, str] | None = None) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            self.argv(name),
            env=self.environment(name, extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,  # stopped as a group, like a container
        )
        log.close()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def complete(self, name: str, timeout: float) -> None:
        """Run a one-shot service to its end (depends_on: service_completed_successfully)."""
        self.start(name)
        code = self.procs[name].wait(timeout)
        assert code == 0, f"{name} exited with {code}:\n{self.log(name)[-3000:]}"

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def alive(self, name: str) -> None:
        proc = self.procs[name]
        assert proc.poll() is None, f"{name} exited:\n{self.log(name)[-3000:]}"


def topics_of(stack: Stack) -> dict[str, int]:
    """The topics (and partitions) the `topics` service creates, read from its script."""
    script = " ".join(_argv(stack.service("topics").get("command")))
    names = re.search(r"for t in ([^;]+);", script)
    parts = re.search(r"--partitions (\d+)", script)
    assert names and parts, script
    return dict.fromkeys(names.group(1).split(), int(parts.group(1)))


def prometheus_config(stack: Stack, metrics: str, interval: str) -> Path:
    """deploy/prometheus/prometheus.yml (and rules.yml beside it), the worker target
    rewritten to `metrics` and every interval shortened to `interval`."""
    mounts = stack.mounts("prometheus")
    config = load_yaml(mounts["/etc/prometheus/prometheus.yml"])
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        for static in job["static_configs"]:
            static["targets"] = [
                metrics if t == "worker:9464" else f"127.0.0.1:{stack.ports['prometheus']}"
                for t in static["targets"]
            ]
    folder = stack.root / "prometheus"
    folder.mkdir(exist_ok=True)
    shutil.copy(mounts["/etc/prometheus/rules.yml"], folder / "rules.yml")
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    return folder


def http(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, body): the body parsed when it is JSON, else the text."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(what: str, check: Any, timeout: float, stack: Stack, service: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.alive(service)
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f} s\n{stack.log(service)[-3000:]}")


class Prometheus:
    """Instant and range queries against the rehearsal's Prometheus."""

    def __init__(self, port: int) -> None:
        self.api = f"http://127.0.0.1:{port}/api/v1"
        self.base = f"{self.api}/query?query="

    def series(self, expr: str, start: float, end: float, step: float) -> dict[str, Any]:
        """{labels: [[unix time, value], ...]} of a range query."""
        query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
        status, body = http(f"{self.api}/query_range?{query}")
        assert status == 200 and body["status"] == "success", (expr, body)
        return {
            " -> ".join(v for k, v in sorted(row["metric"].items()) if k != "__name__"): [
                [float(t), float(v)] for t, v in row["values"]
            ]
            for row in body["data"]["result"]
        }

    def vector(self, expr: str) -> dict[str, float]:
        """{label values joined by ' -> ': value} of an instant query."""
        status, body = http(self.base + urllib.parse.quote(expr))
        assert status == 200 and body["status"] == "success", (expr, body)
        return {
            " -> ".join(v for k, v in sorted(row["metric"].items()) if k != "__name__"): float(
                row["value"][1]
            )
            for row in body["data"]["result"]
        }

    def scalar(self, expr: str) -> float:
        values = self.vector(expr)
        assert len(values) == 1, (expr, values)
        return next(iter(values.values()))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    broker = start_embedded_broker()
    redis_url, stop_redis = start_embedded()
    stack = Stack(tmp_path, dict(ENV))
    stack.ports = {"metrics": free_port(), "web": free_port(), "prometheus": free_port()}
    stack.hosts = {
        "kafka://kafka:9092": broker.url,
        "kafka:9092": broker.bootstrap,
        "redis://redis:6379/0": redis_url,
    }
    try:
        yield stack
    finally:
        for name in list(stack.procs)[::-1]:
            stack.stop(name)
        stop_redis()
        broker.stop()


@pytest.mark.slow
def test_the_first_minutes_of_docker_compose_up(stack: Stack) -> None:
    _, prometheus = prometheus_tools()
    bootstrap = stack.hosts["kafka:9092"]
    asyncio.run(create_topics(bootstrap, topics_of(stack)))  # service `topics`
    stack.complete("trainer", timeout=900)  # ~1 min at the test's size, more for make stack
    stack.complete("backfill", timeout=900)
    stack.complete("backfill", timeout=60)  # a second `up`: the backfill is not redone
    assert stack.log("backfill").count(" daily re-scores") == 1, stack.log("backfill")
    assert "already backfilled up to 2026-05-16T18:00:00Z" in stack.log("backfill")

    ports = stack.ports
    stack.start(
        "worker",
        {"SEGSTREAM_METRICS_PORT": str(ports["metrics"]), "SEGSTREAM_WEB_PORT": str(ports["web"])},
    )
    metrics = f"127.0.0.1:{ports['metrics']}"
    wait_for("worker /metrics", lambda: http(f"http://{metrics}/metrics")[0], 120, stack, "worker")

    # The docs' curl examples answer at once: the backfill wrote that customer.
    api = f"http://127.0.0.1:{ports['web']}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    deploying = readme[readme.index("## Deploying") :].split("\n## ", 1)[0]
    for text in (deploying, OPERATIONS.read_text(encoding="utf-8")):
        examples = re.findall(r"curl localhost:6066(/customers/\w+)", text)
        assert examples, "no curl of the read API"
        for example in examples:
            status, body = http(api + example)
            assert status == 200 and body["segment_name"], (example, status, body)

    folder = prometheus_config(stack, metrics, "1s")
    command = [
        prometheus,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={stack.root / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
    ]
    stack.procs["prometheus"] = subprocess.Popen(
        command,
        stdout=(stack.root / "prometheus.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    prom = Prometheus(ports["prometheus"])
    started = time.monotonic()  # the producer's start (wall time: + time.time() - monotonic)
    stack.start("producer")

    # Before any migration happened, the panels have series to draw (0, not "No data").
    wait_for(
        "populations", lambda: prom.vector("segstream_segment_population"), 60, stack, "worker"
    )
    segments = set(prom.vector("sum by (segment) (segstream_segment_population)"))
    pairs = prom.vector("sum by (from_segment, to_segment) (segstream_segment_migrations_total)")
    assert len(pairs) == len(segments) * (len(segments) - 1), pairs
    assert set(prom.vector("sum by (segment) (segstream_churn_alerts_total)")) == segments

    # A restart of the producer half-way resumes where it was: nothing re-sent.
    time.sleep(STREAM_SECONDS / 2)
    stack.alive("producer")
    stack.stop("producer")
    stack.start("producer")
    time.sleep(STREAM_SECONDS / 2)
    stack.alive("producer")
    stack.alive("worker")
    resumed = re.findall(r"from position ([\d,]+)", stack.log("producer"))
    assert len(resumed) == 2 and int(resumed[1].replace(",", "")) > 0, stack.log("producer")

    window = f"{int(time.monotonic() - started)}s"
    picture = {
        "populations": prom.vector("sum by (segment) (segstream_segment_population)"),
        "migrations": prom.scalar(f"sum(increase(segstream_segment_migrations_total[{window}]))"),
        "churn_alerts": prom.scalar(f"sum(increase(segstream_churn_alerts_total[{window}]))"),
        "psi": prom.scalar("segstream_population_psi"),
        "applied": prom.scalar("sum(segstream_events_processed_total)"),
        "duplicates": prom.scalar("sum(segstream_events_duplicate_total)"),
        "rejected": prom.vector("sum by (reason) (segstream_events_rejected_total)"),
        "alerts": prom.vector("sum by (type) (segstream_alerts_total)"),
        "firing": prom.vector('ALERTS{alertstate="firing"}'),
        # What SegstreamMassMigration compares with 5 %, at this run's pace for an hour.
        "migrated_share_per_hour": prom.scalar(
            f"sum(rate(segstream_segment_migrations_total[{window}])) * 3600"
            " / sum(segstream_segment_population)"
        ),
        "rules_holding": sorted(
            rule["alert"]
            for group in load_yaml(stack.mounts("prometheus")["/etc/prometheus/rules.yml"])[
                "groups"
            ]
            for rule in group["rules"]
            if "alert" in rule and prom.vector(rule["expr"])
        ),
    }
    (stack.root / "picture.json").write_text(json.dumps(picture, indent=2))
    print(json.dumps(picture, indent=2))

    assert set(picture["populations"]) == segments and all(picture["populations"].values())
    assert picture["migrations"] > 0, picture
    assert picture["churn_alerts"] > 0, picture
    assert 0 <= picture["psi"] < PSI_THRESHOLD, picture
    assert picture["alerts"].get("population_shift", 0) == 0, picture
    assert picture["rules_holding"] == [], picture  # no alert rule's condition holds
    if OUT:  # at the stack's own pace (not the test's faster one): no mass migration
        assert picture["migrated_share_per_hour"] < 0.05, picture
    assert picture["duplicates"] == 0 and not any(picture["rejected"].values()), picture
    assert picture["applied"] > 0.5 * STREAM_SECONDS * float(ENV["SEGSTREAM_DEMO_RATE"])

    # The "Latest alerts" table's source: the worker's newest alerts, newest first.
    status, rows = http(api + "/alerts/recent?limit=20")
    assert status == 200 and 0 < len(rows) <= 20, (status, rows)
    assert {row["type"] for row in rows} <= {"segment_migration", "churn_risk"}, rows
    assert rows[0]["event_time"] >= rows[-1]["event_time"], rows
    if OUT:
        record_first_hour(prom, started, time.time() - time.monotonic(), Path(OUT), picture)

    # The operator's one-off commands, exactly as docs/operations.md shows them.
    run_documented_ops_commands(stack)


def documented_ops_commands() -> list[list[str]]:
    """The `docker compose run --rm ops ...` commands of docs/operations.md, as argv."""
    text = OPERATIONS.read_text(encoding="utf-8")
    found = re.findall(r"^docker compose run --rm ops (.+)$", text, re.M)
    return [shlex.split(line, comments=True) for line in found]


def run_documented_ops_commands(stack: Stack) -> None:
    """Train a candidate, compare, promote and roll back through the `ops` service."""
    commands = documented_ops_commands()
    assert [c[0] for c in commands] == ["train", "compare", "promote", "rollback"], commands
    candidate = ""
    models = stack.mounts("ops")["/models"]
    for argv in commands:
        words = [stack.rewrite(w, "ops") for w in argv]
        if candidate:  # the docs' example folder stands for the one `train` printed
            words = [re.sub(rf"{re.escape(str(models))}/\d{{8}}T\d{{6}}Z-\w+", candidate, w)
                     for w in words]  # fmt: skip
        proc = subprocess.run(
            ["segstream", *words],
            env=stack.environment("ops"),
            cwd=stack.root,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
        if argv[0] == "train":
            candidate = proc.stdout.strip().splitlines()[-1]
            assert Path(candidate).parent == models, candidate
    history = (models / "history.jsonl").read_text().splitlines()
    assert len(history) >= 2, history  # the promotion and the rollback, logged
    assert (models / "current").resolve().name != Path(candidate).name  # rolled back


def record_first_hour(
    prom: Prometheus, started: float, offset: float, out: Path, picture: dict[str, Any]
) -> None:
    """The dashboard's first panels over the run, as JSON and as a PNG for the docs."""
    start, end = started + offset, time.time()
    step = max(1.0, (end - start) / 200)
    queries = {
        "Segment populations": "sum by (segment) (segstream_segment_population)",
        "Migrations / s": "sum(rate(segstream_segment_migrations_total[30s]))",
        "Churn alerts / s": "sum(rate(segstream_churn_alerts_total[30s]))",
        "Population PSI": "max(segstream_population_psi)",
    }
    data = {title: prom.series(expr, start, end, step) for title, expr in queries.items()}
    out.mkdir(parents=True, exist_ok=True)
    record = {"env": ENV, "start": start, "queries": queries, "series": data, "end": picture}
    (out / "first-hour.json").write_text(json.dumps(record, indent=1))
    plot_first_hour(record, out / "first-hour.png")


def plot_first_hour(record: dict[str, Any], path: Path) -> None:
    """Four panels of `record_first_hour`'s JSON, minutes from the producer's start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start, env = record["start"], record["env"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for ax, (title, series) in zip(axes.flat, record["series"].items(), strict=True):
        for label, points in sorted(series.items()):
            xs = [(t - start) / 60 for t, _ in points]
            ax.plot(xs, [v for _, v in points], label=label or None, linewidth=1.2)
        if title == "Population PSI":
            ax.axhline(PSI_THRESHOLD, color="red", linestyle="--", linewidth=1)
            ax.text(0, PSI_THRESHOLD * 0.93, "SegstreamPopulationShift", color="red", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if title == "Segment populations":
            ax.legend(fontsize=7, loc="center left")
    for ax in axes[1]:
        ax.set_xlabel("minutes after the producer started")
    fig.suptitle(
        f"segstream stack rehearsal: {env['SEGSTREAM_DEMO_CUSTOMERS']} customers, "
        f"{env['SEGSTREAM_DEMO_RATE']} events/s (Prometheus, tests/test_stack.py)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
