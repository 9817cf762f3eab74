"""A clickstream that is not ours trains, replays and backtests through a mapping, end to end.

The log has the shape of retentioneering's `ecom` dataset (columns user_id, session_id,
event, timestamp without a zone, platform; page events, a cart funnel, purchase without an
amount; sorted by user), generated here with a seed: tests cannot download. The mapping
comes from the config file for train and backtest and from `--map` options for features
and replay, so both forms are run.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from segstream.cli import app

BROWSE = ("home", "catalog", "search", "filter_results", "product_view", "promo_page")
FUNNEL = ("add_to_cart", "cart", "shipping_details", "payment_details", "purchase")
START = datetime(2024, 1, 1)
AS_OF = "2024-04-10T00:00:00Z"  # day 100 of 150
DAY = 86_400.0

CONFIG = """
[mapping]
customer_id = "user_id"
ts = "timestamp"
type = "event"
session = "session_id"
naive_utc = true

[mapping.types]
home = "feature_used"
catalog = "feature_used"
search = "feature_used"
filter_results = "feature_used"
product_view = "feature_used"
promo_page = "feature_used"
add_to_cart = "feature_used"
cart = "feature_used"
shipping_details = "feature_used"
payment_details = "feature_used"
purchase = "purchase"
support_chat = "support_ticket"
"""

OPTIONS = [
    "--map", "customer_id=user_id", "--map", "ts=timestamp", "--map", "type=event",
    "--map", "session=session_id", "--naive-utc", "--map-type", "purchase=purchase",
    "--map-type", "support_chat=support_ticket",
    *[arg for e in BROWSE + FUNNEL[:-1] for arg in ("--map-type", f"{e}=feature_used")],
]  # fmt: skip


def clickstream(users: int = 150, days: int = 150, seed: int = 11) -> pd.DataFrame:
    """Sessions of browsing, some ending in the cart funnel; a third of users stop early."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, str, str, str]] = []
    sessions = 0
    for u in range(users):
        first = int(rng.integers(0, 90))
        last = int(first + rng.integers(15, 70)) if rng.random() < 0.35 else days
        rate, buyer = rng.uniform(0.15, 0.7), rng.random() < 0.5
        platform = str(rng.choice(["desktop", "mobile", "tablet"]))
        for day in range(first, min(last, days)):
            if rng.random() >= rate:
                continue
            sessions += 1
            t = START + timedelta(days=day, seconds=int(rng.integers(0, 80_000)))
            path = ["home", *rng.choice(BROWSE, size=int(rng.integers(1, 4)))]
            if buyer and rng.random() < 0.4:
                path += list(FUNNEL[: int(rng.integers(2, len(FUNNEL) + 1))])
            if rng.random() < 0.04:
                path.append("support_chat")
            for event in path:
                t += timedelta(seconds=int(rng.integers(5, 300)))
                stamp = t.strftime("%Y-%m-%d %H:%M:%S")
                rows.append((f"user_{u:04d}", f"sess_{sessions:06d}", event, stamp, platform))
    return pd.DataFrame(rows, columns=["user_id", "session_id", "event", "timestamp", "platform"])


def invoke(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("own-history")
    frame = clickstream()
    frame.to_csv(root / "ecom.csv", index=False)
    (root / "ecom.toml").write_text(CONFIG)
    return root, frame


@pytest.fixture(scope="module")
def trained(log: tuple[Path, pd.DataFrame]) -> Path:
    root, _ = log
    invoke(
        "train", "--events", str(root / "ecom.csv"), "--config", str(root / "ecom.toml"),
        "--as-of", AS_OF, "--out", str(root / "models"),
    )  # fmt: skip
    return root / "models" / "current"


def test_train_learns_from_the_mapped_log(log: tuple[Path, pd.DataFrame], trained: Path) -> None:
    _, frame = log
    manifest = json.loads((trained / "manifest.json").read_text())
    seen = frame[pd.to_datetime(frame["timestamp"], utc=True) <= pd.Timestamp(AS_OF)]
    assert manifest["metrics"]["segmentation"]["customers"] == seen["user_id"].nunique()
    data = manifest["training_data"]
    assert data["events"] == len(frame) + frame["session_id"].nunique()  # + session starts
    assert data["rejected"] == {}
    assert manifest["metrics"]["churn"]["roc_auc"] > 0.5


def test_features_count_sessions_and_purchases_of_the_log(
    log: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    root, frame = log
    out = tmp_path / "features.csv"
    invoke("features", "--events", str(root / "ecom.csv"), "--as-of", AS_OF, "--out", str(out),
           *OPTIONS)  # fmt: skip
    table = pd.read_csv(out, index_col="customer_id")
    at = pd.Timestamp(AS_OF)
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    # the catalog's 30-day window: the UTC days (at - 29 d, at], up to `at` itself
    recent = frame[(ts <= at) & (ts.dt.floor("D") > at.floor("D") - pd.Timedelta(days=30))]
    first = frame.assign(ts=ts).groupby("session_id").agg(user=("user_id", "first"),
                                                           ts=("ts", "min"))  # fmt: skip
    started = first[(first["ts"] <= at) & (first["ts"].dt.floor("D") > at - pd.Timedelta(30, "D"))]
    sessions = started.groupby("user")["ts"].size()
    purchases = recent[recent["event"] == "purchase"].groupby("user_id").size()
    got = table["sessions_30d"]
    assert sessions.sum() > 100 and purchases.sum() > 20  # the check has something to check
    assert got.to_dict() == sessions.reindex(got.index, fill_value=0).astype(float).to_dict()
    want = purchases.reindex(got.index, fill_value=0).astype(float)
    assert table["purchases_30d"].to_dict() == want.to_dict()


def test_replay_applies_every_event_once(
    log: tuple[Path, pd.DataFrame], trained: Path, embedded_redis_url: str, tmp_path: Path
) -> None:
    root, frame = log
    events = len(frame) + frame["session_id"].nunique()  # each session opens once
    prefix = f"segstream-test-{uuid.uuid4().hex[:12]}"
    env = {"SEGSTREAM_REDIS_URL": embedded_redis_url, "SEGSTREAM_KEY_PREFIX": prefix}
    args = ["replay", "--events", str(root / "ecom.csv"), "--model", str(trained),
            "--alerts-out", str(tmp_path / "alerts.jsonl"), "--backfill", *OPTIONS]  # fmt: skip
    try:
        first = invoke(*args, "--state-out", str(tmp_path / "state.csv"), env=env)
        assert f"{events:,} events ({{'applied': {events}}})" in first
        state = pd.read_csv(tmp_path / "state.csv")
        assert len(state) == frame["user_id"].nunique() and state["segment_id"].notna().all()
        # the same file again: the same derived ids, so no event counts twice (the store
        # calls those it has seen duplicate, or too_late when a week behind their customer)
        again = invoke(*args, env=env)
        assert again.startswith(f"{events:,} events (") and "applied" not in again
        # (the summary's first line may wrap at the console's width: find the alerts line)
        assert re.search(r"^alerts: \{\} ", again, re.MULTILINE), again
    finally:
        client = redis.Redis.from_url(embedded_redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def test_backtest_judges_the_alerts_on_the_mapped_log(
    log: tuple[Path, pd.DataFrame], trained: Path, embedded_redis_url: str, tmp_path: Path
) -> None:
    root, frame = log
    out = invoke(
        "backtest", "--events", str(root / "ecom.csv"), "--config", str(root / "ecom.toml"),
        "--model", str(trained), "--out", str(tmp_path / "bt"),
        env={"SEGSTREAM_REDIS_URL": embedded_redis_url},
    )  # fmt: skip
    events = len(frame) + frame["session_id"].nunique()
    assert f"{events:,} events replayed" in out
    churn = json.loads((tmp_path / "bt" / "metrics.json").read_text())["churn"]
    assert churn["alerts"] > 0 and churn["judgeable"] > 0
    assert churn["precision"] is not None


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--map", "user=user_id"], ["unknown target 'user'", "customer_id, ts, type"]),
        (["--map", "customer_id=uid"], ["customer_id from column 'uid'", "lacks"]),
        ([], ["ecom.csv:", ": timestamp '2024-", "has no zone", "--naive-utc"]),
    ],
)
def test_a_bad_mapping_is_one_clear_line(
    log: tuple[Path, pd.DataFrame], tmp_path: Path, options: list[str], words: list[str]
) -> None:
    root, _ = log
    mapping = [o for o in OPTIONS if o != "--naive-utc"] + options
    result = CliRunner().invoke(
        app,
        ["features", "--events", str(root / "ecom.csv"), "--as-of", AS_OF,
         "--out", str(tmp_path / "f.csv"), *mapping],
        env={"COLUMNS": "80"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    for word in words:
        assert word in result.stderr, result.stderr
