"""`segstream demo` end to end, as a user runs it: a subprocess, its output, its processes.

The first test starts from nothing (no SEGSTREAM_BROKER_URL / SEGSTREAM_REDIS_URL): the
demo must start its own Tansu and Valkey, stream, print a summary and leave no process
behind. The second points it at the session's broker and the test's Valkey and checks it
used them (and started neither). The view's pure parts are checked without a broker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import redis

from segstream.demo import DemoError, DemoOptions, DemoSummary, DemoView, summary_lines
from tests.kafka_support import KafkaBroker

SEGSTREAM = Path(sys.executable).with_name("segstream")


@dataclass
class Watched:
    """A finished demo process, with the broker/Valkey processes it started (its children)."""

    returncode: int
    stdout: str
    stderr: str
    children: dict[int, str]

    def left_behind(self) -> dict[int, str]:
        time.sleep(0.5)  # a process asked to stop may take a moment to disappear
        return {pid: name for pid, name in self.children.items() if alive(pid)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def watch(
    cmd: list[str], env: dict[str, str], timeout: float, interrupt_on: str | None = None
) -> Watched:
    """Run `cmd`; note its tansu/valkey-server children while it runs (other test runs on
    this machine start their own, so a before/after pgrep would count theirs). With
    `interrupt_on`, send SIGINT once that text appears on stdout."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: dict[int, str] = {}
    chunks: dict[str, list[str]] = {"out": [], "err": []}

    def read(name: str, stream: IO[str]) -> None:
        for line in stream:
            chunks[name].append(line)
            if interrupt_on and name == "out" and interrupt_on in line and "sent" not in chunks:
                proc.send_signal(signal.SIGINT)  # once: a second one means "hurry"
                chunks["sent"] = []

    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=read, args=("out", proc.stdout)),
        threading.Thread(target=read, args=("err", proc.stderr)),
    ]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"demo still running after {timeout} s")
        found = subprocess.run(
            ["pgrep", "-a", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        )
        for row in found.stdout.splitlines():
            pid, _, command = row.partition(" ")
            for name in ("tansu", "valkey-server"):
                if name in command:
                    children[int(pid)] = name
        time.sleep(0.2)
    for t in readers:
        t.join(10)
    return Watched(proc.returncode, "".join(chunks["out"]), "".join(chunks["err"]), children)


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_")}
    env.update(extra)
    return env


def args(options: str, tmp_path: Path) -> list[str]:
    return [str(SEGSTREAM), "demo", *options.split(), "--out", str(tmp_path / "demo")]


def count(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in output:\n{text}"
    return int(match.group(1).replace(",", ""))


@pytest.mark.slow
def test_demo_from_nothing_streams_and_leaves_no_process(tmp_path: Path) -> None:
    started = time.monotonic()
    result = watch(
        args("--customers 300 --days 60 --duration 25 --rate 2000", tmp_path), demo_env(), 150
    )
    seconds = time.monotonic() - started
    out = result.stdout
    print(f"\ndemo took {seconds:.1f} s\n{out[-1500:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded Tansu" in out and "embedded Valkey" in out
    # The worker starts warm: the days before the live part were backfilled into Redis.
    assert count(r"backfill: ([\d,]+) events", out) > 0
    assert count(r"events processed ([\d,]+)", out) > 0
    assert count(r"segment_assigned=(\d+)", out) >= 1
    assert "population_shift" not in out.split("summary:")[-1]  # no shift in this history
    assert re.search(r"populations: \w", out)
    assert "http://127.0.0.1:" in out and "/metrics" in out and "/customers/" in out
    assert sorted(set(result.children.values())) == ["tansu", "valkey-server"]
    assert result.left_behind() == {}


@pytest.mark.slow
def test_demo_uses_the_named_broker_and_redis(
    kafka_broker: KafkaBroker, embedded_redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(embedded_redis_url)
    before = set(client.scan_iter(match="segstream-demo-*", count=1000))
    env = demo_env(SEGSTREAM_BROKER_URL=kafka_broker.url, SEGSTREAM_REDIS_URL=embedded_redis_url)
    result = watch(args("--customers 150 --days 45 --duration 10 --rate 3000", tmp_path), env, 120)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"redis: {embedded_redis_url} (SEGSTREAM_REDIS_URL)" in out
    assert "(SEGSTREAM_BROKER_URL)" in out and "embedded Tansu" not in out
    # It wrote its state there (counted before it removed it: that Redis is not its own).
    assert count(r"state: ([\d,]+) keys in Redis " + re.escape(embedded_redis_url), out) > 0
    assert set(client.scan_iter(match="segstream-demo-*", count=1000)) == before
    client.close()
    assert "tansu" not in result.children.values()


def test_unreachable_redis_fails_fast_with_one_line(tmp_path: Path) -> None:
    # "Fast" is no retry loop: the run's timeout would end one, no clock is asserted.
    result = subprocess.run(
        args("", tmp_path),
        env=demo_env(SEGSTREAM_REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Redis at redis://127.0.0.1:1/0")


def test_options_are_checked() -> None:
    with pytest.raises(DemoError, match="--days"):
        DemoOptions(out=Path("x"), days=20)
    with pytest.raises(DemoError, match="--rate"):
        DemoOptions(out=Path("x"), rate=0)


def test_view_keeps_the_latest_alerts_and_summarises() -> None:
    view = DemoView(metrics_url="http://m/metrics", api_url="http://a/customers/c1")
    for i in range(12):
        view.record(
            "churn",
            {"customer_id": f"c{i}", "probability": 0.81, "drivers": [
                {"feature": "days_since_last_event", "value": 20.0, "typical": 2.0}]},
        )  # fmt: skip
    view.record("dlq", {"reason": "not_json"})
    assert len(view.churn) == 8 and view.churn[0][0] == "c11"
    assert view.churn[0][2] == "days_since_last_event 20 (typical 2)"
    assert view.dlq == 1
    assert "DLQ 1" in view.line()
    lines = summary_lines(
        DemoSummary(
            processed=1200,
            seconds=4.0,
            alerts={"segment_assigned": 3},
            populations={"Casual": 2},
            reason="history exhausted",
        )
    )
    assert lines[:3] == [
        "summary: events processed 1,200 in 4.0 s (300 events/s)",
        "alerts: segment_assigned=3",
        "populations: Casual=2",
    ]


@pytest.mark.slow
def test_sigint_during_streaming_ends_cleanly(tmp_path: Path) -> None:
    result = watch(
        args("--customers 300 --days 60 --rate 200", tmp_path), demo_env(), 120, "live ("
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ended: stopped by a signal" in result.stdout
    assert len(result.children) == 2
    assert result.left_behind() == {}
