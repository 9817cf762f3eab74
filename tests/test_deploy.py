"""Checks of the deployment files: docker-compose.yml, Dockerfile, deploy/.

No Docker engine is assumed: the compose file is checked structurally (services, build
contexts, `segstream` sub-commands and options, bind mounts, depends_on, ports). The
Prometheus side is checked for real with Debian's `prometheus` package: `promtool check`
on the config and rules, `promtool test rules` on deploy/prometheus/rules_test.yml, and a
live Prometheus server scraping a `stream.metrics.Metrics` registry. The dashboard and the
rules may only use metric names that `stream.metrics.Metrics` declares.

`promtool`/`prometheus` are taken from PATH or /usr/bin, installed with apt when missing
and running as root; otherwise the tests fail with what to install (never a silent skip).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from stream.children import free_port
from stream.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "segstream.json"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
INFINITY = DEPLOY / "grafana" / "provisioning" / "datasources" / "infinity.yml"
DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "segstream.yml"
SEGSTREAM = Path(sys.executable).with_name("segstream")

METRIC_RE = re.compile(r"\bsegstream_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    """Parse YAML with PyYAML: the venv's if importable, else the system Python's."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if not python or Path(python).resolve() == Path(sys.executable).resolve():
            continue
        code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
        proc = subprocess.run(
            [python, "-c", code, str(path)], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            return json.loads(proc.stdout)
    pytest.fail(
        "PyYAML is needed to parse the deploy files: not importable in this venv nor in "
        "the system python3 (add pyyaml to the dev dependencies, or apt-get install "
        "python3-yaml)"
    )


def _find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/bin") / name
    return str(candidate) if candidate.exists() else None


@cache
def prometheus_tools() -> tuple[str, str]:
    """(promtool, prometheus): found on PATH or /usr/bin, apt-installed when missing."""
    promtool, server = _find_tool("promtool"), _find_tool("prometheus")
    if promtool and server:
        return promtool, server
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
        proc = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:  # an empty or stale package list: update once, retry
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
            proc = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
        promtool, server = _find_tool("promtool"), _find_tool("prometheus")
        if promtool and server:
            return promtool, server
        detail = (proc.stderr or proc.stdout)[-2000:]
        pytest.fail(
            f"`apt-get install -y prometheus` did not provide promtool/prometheus:\n{detail}"
        )
    pytest.fail(
        "promtool and prometheus are needed (Debian package `prometheus`): not on PATH or in "
        "/usr/bin, and not root to install them. Run `sudo apt-get install -y prometheus`."
    )


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool, _ = prometheus_tools()
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


@cache
def declared_metrics() -> frozenset[str]:
    """Every sample name `stream.metrics.Metrics` can expose, labelled series or not."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.update({f"{family.name}_total", f"{family.name}_created"})
        elif family.type == "histogram":
            names.update(f"{family.name}{s}" for s in (*HISTOGRAM_SUFFIXES, "_created"))
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """segstream_* metric names in a PromQL expression (histogram suffixes stripped)."""
    names = set()
    for found in METRIC_RE.findall(expr):
        name = found
        for suffix in HISTOGRAM_SUFFIXES:
            if found.endswith(suffix) and found.removesuffix(suffix) in declared_metrics():
                name = found.removesuffix(suffix)
        names.add(name)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every target in the dashboard, rows' nested panels too."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((panel.get("title", "?"), target["expr"]))

    walk(dash["panels"])
    return out


def rule_list() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return dict(json.loads(resp.read()))


# --------------------------------------------------------------------------- Prometheus


def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config() -> None:
    proc = promtool("check", "config", str(PROM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout + proc.stderr  # rules.yml resolved and checked


def test_promtool_rule_unit_tests() -> None:
    text = RULES_TEST.read_text(encoding="utf-8")
    for alert in ("SegstreamMassMigration", "SegstreamNoEvents"):
        assert f"alertname: {alert}" in text
    proc = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_are_complete() -> None:
    """Each alert has `for:`, a severity and annotations that tell an operator what to do."""
    rules = rule_list()
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    for needed in (
        "SegstreamMassMigration",
        "SegstreamChurnAlertSpike",
        "SegstreamRejectedEvents",
        "SegstreamConsumerLag",
        "SegstreamNoEvents",
        "SegstreamCentroidDrift",
        "SegstreamRedisErrors",
    ):
        assert needed in alerts
    for rule in rules:
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    mass = " ".join(by_name["SegstreamMassMigration"]["expr"].split())
    assert "sum(increase(segstream_segment_migrations_total[1h]))" in mass
    assert "sum(segstream_segment_population) > 0.05" in mass
    assert " ".join(by_name["SegstreamCentroidDrift"]["expr"].split()) == (
        "max(segstream_centroid_drift) > 1.0"
    )


def test_rules_use_only_declared_metrics() -> None:
    used = {(rule["alert"], n) for rule in rule_list() for n in metric_names(rule["expr"])}
    unknown = sorted((alert, n) for alert, n in used if n not in declared_metrics())
    assert not unknown, f"rules use metrics stream.metrics.Metrics does not declare: {unknown}"


def test_dashboard_uses_only_declared_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    used = {(title, n) for title, expr in exprs for n in metric_names(expr)}
    unknown = sorted((title, n) for title, n in used if n not in declared_metrics())
    assert not unknown, f"dashboard uses metrics stream.metrics.Metrics does not declare: {unknown}"
    everything = " ".join(expr for _, expr in exprs)
    for needed in (
        "segstream_segment_population",
        "segstream_segment_migrations_total",
        "segstream_churn_alerts_total",
        "segstream_events_processed_total",
        "segstream_event_seconds_bucket",
        "segstream_batch_seconds_bucket",
        "segstream_store_seconds_bucket",
        "segstream_events_rejected_total",
        "segstream_centroid_drift",
        "segstream_model_info",
        "segstream_consumer_lag",
        "segstream_population_psi",
    ):
        assert needed in everything, needed
    assert "histogram_quantile(0.99" in everything and "histogram_quantile(0.5" in everything


def test_grafana_provisioning() -> None:
    datasource = load_yaml(DATASOURCE)["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    infinity = load_yaml(INFINITY)["datasources"][0]
    assert infinity["type"] == "yesoreyeram-infinity-datasource"
    plugins = compose()["services"]["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    assert infinity["type"] in plugins.split(",")
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    uids = {
        target["datasource"]["uid"]
        for panel in dash["panels"]
        for target in panel.get("targets", [])
    }
    assert uids == {datasource["uid"], infinity["uid"]}
    # The alert table reads the worker's read API, at the address compose gives it.
    (table,) = [p for p in dash["panels"] if p.get("datasource", {}).get("uid") == infinity["uid"]]
    url = urllib.parse.urlsplit(table["targets"][0]["url"])
    assert f"{url.scheme}://{url.netloc}" in infinity["jsonData"]["allowedHosts"]
    assert url.path == "/alerts/recent"
    port = str(compose()["services"]["worker"]["environment"]["SEGSTREAM_WEB_PORT"])
    assert url.netloc == f"worker:{port}"
    provider = load_yaml(DASHBOARD_PROVIDER)["providers"][0]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


@pytest.fixture
def metrics_endpoint() -> Iterator[int]:
    """A live /metrics of a `Metrics` registry with two segments' populations."""
    metrics = Metrics(CollectorRegistry())
    metrics.set_population({0: 1200, 1: 800}, {0: "loyal", 1: "bargain"})
    metrics.set_model("test-version")
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    yield port
    server.shutdown()
    server.server_close()
    thread.join(5)


def _grafana_to_promql(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
    )


def test_prometheus_scrapes_live_metrics(tmp_path: Path, metrics_endpoint: int) -> None:
    _, server = prometheus_tools()
    web_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(  # JSON is YAML
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "segstream",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_endpoint}"]}],
                    }
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            server,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{web_port}/api/v1/query?query="
    try:
        segments: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(segments) != {"loyal", "bargain"}:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                body = http_json(base + "segstream_segment_population")
            except OSError:
                body = {}
            segments = {
                row["metric"]["segment"]: float(row["value"][1])
                for row in body.get("data", {}).get("result", [])
            }
            time.sleep(0.25)
        assert segments == {"loyal": 1200.0, "bargain": 800.0}, (
            f"no populations from Prometheus in 30 s: {segments}\n"
            + (tmp_path / "prometheus.log").read_text()[-2000:]
        )
        # Every dashboard and rule expression is valid PromQL for a real server.
        exprs = [expr for _, expr in dashboard_exprs()] + [rule["expr"] for rule in rule_list()]
        for expr in exprs:
            body = http_json(base + urllib.parse.quote(_grafana_to_promql(expr)))
            assert body["status"] == "success", (expr, body)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    assert proc.poll() is not None


# --------------------------------------------------------------------------- compose


@cache
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


@cache
def cli_help(*command: str) -> tuple[int, str]:
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    proc = subprocess.run(
        [str(SEGSTREAM), *command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def cli_commands() -> set[str]:
    """The sub-commands listed by `segstream --help`."""
    code, text = cli_help()
    assert code == 0, text
    section = text.split("Commands", 1)[1]
    return set(re.findall(r"^[│|]?\s+([a-z][a-z0-9-]*)\s{2,}\S", section, re.M))


def dockerfile_entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.M)
    assert match, "Dockerfile has no exec-form ENTRYPOINT"
    return list(json.loads(match.group(1)))


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def segstream_invocations() -> list[tuple[str, list[str]]]:
    """(service, argv after `segstream`) of every segstream call the compose file makes."""
    calls = []
    for name, service in compose()["services"].items():
        if "build" not in service:
            continue
        entrypoint = _argv(service.get("entrypoint")) or dockerfile_entrypoint()
        command = _argv(service.get("command"))
        if entrypoint == ["segstream"]:
            calls.append((name, command))
        elif entrypoint[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
            script = " ".join(entrypoint[2:] + command)
            for line in re.split(r"[\n;&|]+", script):
                words = shlex.split(line, comments=True)
                if "segstream" in words:
                    calls.append((name, words[words.index("segstream") + 1 :]))
    return calls


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of a service's bind mounts (sources starting with . or /)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, _, rest = str(volume).partition(":")
        if source.startswith((".", "/", "~")):
            mounts.append((source, rest.split(":")[0]))
    return mounts


def test_compose_services_and_images() -> None:
    services = compose()["services"]
    needed_services = ("kafka", "redis", "trainer", "backfill", "worker", "producer")
    for needed in (*needed_services, "prometheus", "grafana", "ops"):
        assert needed in services, needed
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: no image and no build"
        if "build" in service:
            build = service["build"]
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert (context / (dockerfile or "Dockerfile")).is_file(), name
        else:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name


def test_compose_segstream_commands_exist() -> None:
    calls = segstream_invocations()
    used = {argv[0] for _, argv in calls if argv}
    assert {"generate", "train", "worker"} <= used, used
    available = cli_commands()
    assert {"generate", "train"} <= available, available
    missing = sorted(used - available)
    assert not missing, f"compose calls segstream sub-commands that do not exist: {missing}"
    for service, argv in calls:  # every --option given exists on that sub-command
        if not argv:
            continue
        code, text = cli_help(argv[0])
        assert code == 0, text
        for option in (word.split("=")[0] for word in argv[1:] if word.startswith("--")):
            assert option in text, f"{service}: `segstream {argv[0]}` has no option {option}"


def test_compose_trainer_and_producer() -> None:
    """The bundle is trained before the backfill's end, and the producer streams exactly
    what the backfill left out: no cold start, no day seen twice, no model that saw it."""
    services = compose()["services"]
    calls: dict[str, list[str]] = {"generate": [""], "train": [""], "replay": [""]}
    for service, argv in segstream_invocations():
        if service in ("trainer", "backfill") and argv and argv[0] in calls:
            calls[argv[0]] = argv
    assert calls["generate"][1:] == [
        "--customers",
        "${SEGSTREAM_DEMO_CUSTOMERS:-5000}",
        "--days",
        "150",
        "--migrate-from-day",
        "100",
        "--migrate-to-day",
        "146",
        "--out",
        "/data/history",
    ]
    assert calls["train"][1:] == [
        "--events",
        "/data/history/events.jsonl",
        "--as-of",
        "2026-04-30T23:59:59Z",
        "--out",
        "/models",
    ]
    backfill = dict(w.split("=", 1) if "=" in w else (w, "") for w in calls["replay"][1:])
    assert "--backfill" in backfill and "--once" in backfill
    assert backfill["--events"] == "/data/history/events.jsonl"
    assert backfill["--model"] == "/models/current"
    env = services["backfill"]["environment"]
    assert env["SEGSTREAM_REDIS_URL"] == services["worker"]["environment"]["SEGSTREAM_REDIS_URL"]
    assert str(env["SEGSTREAM_INPUT_PARTITIONS"]) == "8"  # the `topics` service's partitions
    assert "--partitions 8" in " ".join(_argv(services["topics"]["command"]))

    producer = services["producer"]
    script = _argv(producer["entrypoint"])[-1]
    sources = {target: source for source, target in bind_mounts(producer)}
    directory = str(Path(script).parent)
    assert directory in sources, f"producer script {script} is not bind-mounted"
    assert (ROOT / sources[directory] / Path(script).name).is_file()
    options = dict(w.split("=", 1) if "=" in w else (w, "") for w in _argv(producer["command"]))
    assert "--help" not in options
    assert options["--after"] == backfill["--as-of"]
    assert calls["train"][4] < backfill["--as-of"]  # RFC 3339 UTC strings sort as times
    assert "--loop" in options
    state = options["--state"]
    writable = [v for v in producer["volumes"] if not str(v).endswith(":ro")]
    assert any(state.startswith(str(v).split(":")[1] + "/") for v in writable), state


def test_compose_ops_service_writes_models() -> None:
    """`docker compose run --rm ops <segstream command>`: the one-off commands of
    docs/operations.md, with the models volume the worker reads (read-only) writable."""
    services = compose()["services"]
    ops = services["ops"]
    assert ops["profiles"] == ["ops"]  # not started by `docker compose up`
    assert "entrypoint" not in ops and "command" not in ops  # segstream <arguments>
    assert "models:/models" in ops["volumes"]
    assert "models:/models:ro" in services["worker"]["volumes"]
    assert ops["environment"]["SEGSTREAM_MODEL_DIR"] == "/models"


def test_documented_compose_commands_are_valid() -> None:
    """Every `docker compose run --rm ops segstream-command --options` in the docs and the
    README names a sub-command and options that exist, and paths the ops service mounts."""
    text = (ROOT / "docs" / "operations.md").read_text() + (ROOT / "README.md").read_text()
    runs = re.findall(r"^docker compose run --rm ops (.+)$", text, re.M)
    assert len(runs) >= 4, runs
    mounts = {str(v).split(":")[1] for v in compose()["services"]["ops"]["volumes"]}
    for run in runs:
        argv = shlex.split(run, comments=True)
        code, help_text = cli_help(argv[0])
        assert code == 0, (run, help_text)
        for word in argv[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in help_text, (run, word)
            elif word.startswith("/"):
                assert "/" + word.split("/")[1] in mounts, (run, word)


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for source, target in bind_mounts(service):
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name}: bind mount {source} -> {target} does not exist"
            assert path.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
    declared = set(compose().get("volumes") or {})
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).partition(":")[0] if not isinstance(volume, dict) else ""
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: named volume {source} not declared"


def test_compose_depends_on_and_health() -> None:
    services = compose()["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        items = depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)
        for other, spec in items:
            assert other in services, f"{name} depends on unknown service {other}"
            condition = spec.get("condition", "service_started")
            assert condition in conditions, (name, other, condition)
            if condition == "service_healthy":
                assert "healthcheck" in services[other], f"{other} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[other].get("restart", "no") == "no", other
    worker = services["worker"]["depends_on"]
    assert worker["kafka"]["condition"] == "service_healthy"
    assert worker["redis"]["condition"] == "service_healthy"
    assert worker["trainer"]["condition"] == "service_completed_successfully"
    assert worker["backfill"]["condition"] == "service_completed_successfully"
    assert services["producer"]["depends_on"]["worker"]["condition"] == "service_healthy"
    # Started, not healthy: when the worker fails, Prometheus and Grafana are there to say so.
    assert services["prometheus"]["depends_on"]["worker"]["condition"] == "service_started"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_worker_environment() -> None:
    env = compose()["services"]["worker"]["environment"]
    assert env["SEGSTREAM_BROKER_URL"] == "kafka://kafka:9092"
    assert env["SEGSTREAM_REDIS_URL"] == "redis://redis:6379/0"
    assert env["SEGSTREAM_MODEL_DIR"] == "/models"
    assert str(env["SEGSTREAM_METRICS_PORT"]) == "9464"
    assert str(env["SEGSTREAM_WEB_PORT"]) == "6066"
    targets = load_yaml(PROM_CONFIG)["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["worker:9464"]


def test_compose_ports_do_not_collide() -> None:
    seen: dict[tuple[str, str], str] = {}
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip, published = port.get("host_ip", "0.0.0.0"), str(port.get("published"))
            else:
                parts = str(port).split("/")[0].split(":")
                host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
                published = parts[-2] if len(parts) >= 2 else parts[0]
            for key in ((host_ip, published), ("0.0.0.0", published)):
                assert key not in seen, f"{name}: port {published} also used by {seen[key]}"
            seen[(host_ip, published)] = name
            if host_ip != "0.0.0.0":
                seen[("0.0.0.0", published)] = name


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install \.", text)
    assert dockerfile_entrypoint() == ["segstream"]
    for match in re.finditer(r"^COPY\s+(?!--)(.+)\s+\S+\s*$", text, re.M):
        for source in match.group(1).split():
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    for needed in ("pyproject.toml", "README.md", "segstream", "models", "offline", "stream"):
        assert needed not in ignored, needed


def test_the_image_build_keeps_building() -> None:
    """setuptools dropped the `license = { text = ... }` table (deadline 2027-02-18) and an
    open-ended backend floor takes whatever is newest: the build pins both, and the image
    installs every dependency at the version constraints.txt names."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"  # an SPDX expression
    (backend,) = project["build-system"]["requires"]
    assert re.fullmatch(r"setuptools>=(\d+),<(\d+)", backend), backend
    assert int(re.findall(r"\d+", backend)[0]) >= 77  # the first to read SPDX strings
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    wanted = [re.split(r"[<>=\[ ]", d)[0].lower() for d in project["project"]["dependencies"]]
    assert [d for d in wanted if d not in pins] == []
    lo, hi = (int(v) for v in re.findall(r"\d+", backend))
    assert lo <= int(pins["setuptools"].split(".")[0]) < hi
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "PIP_CONSTRAINT=/src/constraints.txt pip install ." in text
    assert re.search(r"^COPY .*constraints\.txt", text, re.M)


# --------------------------------------------------------------------------- producer


@cache
def producer_module() -> Any:
    """deploy/producer/produce.py, imported from its file (it is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("produce", DEPLOY / "producer" / "produce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["produce"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _history(path: Path) -> Path:
    start = datetime(2026, 5, 10, tzinfo=UTC)
    rows = [
        {"event_id": f"e{i}", "customer_id": f"c{i % 3}", "type": "page_view",
         "ts": (start + timedelta(hours=6 * i)).isoformat()}
        for i in range(40)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    return path


def test_producer_sends_after_the_backfill_and_loops_forward(tmp_path: Path) -> None:
    """Loop k repeats the streamed events k spans later with new ids: per customer, event
    time only grows across loops, and no event id repeats."""
    produce = producer_module()
    after = produce._time("2026-05-15T00:00:00Z")
    records, span = produce.load(_history(tmp_path / "events.jsonl"), after, 14.0)
    kept = [r for r in records if r.obj is not None]
    assert all(produce._ts(r.obj) > after for r in kept)
    assert len(kept) == 19  # up to 2026-05-15T00:00 (event 20) is the backfill's
    assert [r.key for r in records if r.obj is None] == [None]  # the bad line, for the DLQ
    assert span == 5  # 2026-05-15 to the newest event (2026-05-19 18:00): 5 whole days
    last: dict[bytes, str] = {}
    ids: set[str] = set()
    for loop in range(3):
        for record in kept:
            body = json.loads(produce.shifted(record, loop, span))
            assert body["ts"] >= last.get(record.key, ""), (loop, body)
            last[record.key] = body["ts"]
            assert body["event_id"] not in ids
            ids.add(body["event_id"])
    assert produce.shifted(kept[0], 0, span) == kept[0].value  # loop 0: the line as written


def test_producer_restart_resumes_past_everything_sent(tmp_path: Path) -> None:
    """The position after a chunk is recorded before the chunk is sent: a restart starts
    past every event that may have been sent, never before it."""
    produce = producer_module()
    state = tmp_path / "producer" / "state.json"
    assert produce.resume(state) == 0  # a first run
    produce.reserve(state, 500)  # about to send 0..499
    assert produce.resume(state) == 500
    produce.reserve(state, 1000)
    assert produce.resume(state) == 1000
    state.write_text("{")  # a torn file (cannot happen: replaced atomically) starts over
    assert produce.resume(state) == 0
    produce.reserve(None, 5)  # no --state: nothing kept
    assert produce.resume(None) == 0


def test_retrain_cronjob_runs_segstream_itself_on_a_writable_claim() -> None:
    """The job trains in its own container (no `kubectl exec` into a worker), from an image
    a cluster can pull, on the models claim mounted writable."""
    text = (DEPLOY / "retrain" / "cronjob.yaml").read_text(encoding="utf-8")
    assert "kubectl exec" not in text
    job = load_yaml(DEPLOY / "retrain" / "cronjob.yaml")["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    registry, _, tag = container["image"].rpartition(":")
    assert "/" in registry and "." in registry.split("/")[0] and tag not in ("", "latest", "local")
    script = " ".join(container["args"])
    assert "segstream train" in script and "segstream promote" in script
    (models,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert not models.get("readOnly", False)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"]
