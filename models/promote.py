"""Promotion and rollback: quality gates, and which bundle is live.

Owns `Gates` (how much worse than the live bundle a candidate may be, and absolute
floors; the `[gates]` section of the config file), `check_gates`, `promote` (verify,
gate, switch `current`) and `rollback` (switch `current` back to the version that was live
before). Both switch through `models.bundle.publish`, so the bundle is verified and the
symlink swapped atomically.

The promotion history is `DIR/history.jsonl`, one JSON line per switch of `current`
(`publish` writes it: the trainer's own publish, `promote` and `rollback` alike) with
the action, the version that went live, the version it replaced, the time and, for a
promotion, the gate results and whether `--force` overrode them. `live_stack` rebuilds
the sequence of live versions from it: a train or promote pushes a version, a rollback
pops one. So a second rollback goes one step further back (C -> B -> A), it does not
toggle between two versions. Rolling back needs no gates: the target was live before.

Must not import pandas, `offline/` or `stream/`: it reads manifests only.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from models.bundle import (
    CURRENT,
    MANIFEST,
    Bundle,
    BundleError,
    load_bundle,
    publish,
    read_history,
)
from models.catalog import Catalog

#: Gate name -> (label, path of the value in the manifest's `metrics`).
METRICS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "silhouette": ("silhouette", ("segmentation", "silhouette")),
    "stability_ari": ("stability (bootstrap ARI)", ("segmentation", "stability_ari")),
    "churn_auc": ("churn ROC AUC", ("churn", "roc_auc")),
}
DEFAULT_MAX_DROP: Final = {"silhouette": 0.05, "stability_ari": 0.05, "churn_auc": 0.02}


class PromotionRefused(BundleError):
    """A candidate failed its gates (or there is nothing to roll back to)."""

    def __init__(self, message: str, results: Sequence[GateResult] = ()) -> None:
        super().__init__(message)
        self.results = list(results)


@dataclass(frozen=True)
class Gates:
    """The quality gates: `max_drop[m]` is how far below the live bundle's value metric `m`
    may be, `minimum[m]` a floor whatever the live bundle. Metrics: see `METRICS`.

    >>> Gates().max_drop["churn_auc"]
    0.02
    """

    max_drop: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_DROP))
    minimum: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table in (self.max_drop, self.minimum):
            unknown = [m for m in table if m not in METRICS]
            if unknown:
                raise ValueError(
                    f"[gates]: unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})"
                )
            if any(not math.isfinite(v) for v in table.values()):
                raise ValueError("[gates]: values must be finite numbers")

    @classmethod
    def load(cls, path: Path | None, **max_drop: float | None) -> Gates:
        """Gates from the config file's `[gates.max_drop]` and `[gates.min]` tables, then
        the given max drops (None means "not given")::

            [gates.max_drop]
            silhouette = 0.05
            churn_auc = 0.02
            [gates.min]
            churn_auc = 0.75
        """
        raw: dict[str, Any] = {}
        if path is not None:
            try:
                raw = tomllib.loads(Path(path).read_text()).get("gates", {})
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"{path}: {exc}") from None
        drops, floors = raw.get("max_drop", {}), raw.get("min", {})
        if not isinstance(drops, dict) or not isinstance(floors, dict):
            raise ValueError(f"{path}: [gates.max_drop] and [gates.min] must be tables")
        try:
            merged = {**DEFAULT_MAX_DROP, **{k: float(v) for k, v in drops.items()}}
            merged |= {k: float(v) for k, v in max_drop.items() if v is not None}
            return cls(max_drop=merged, minimum={k: float(v) for k, v in floors.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: [gates]: {exc}") from None


@dataclass(frozen=True)
class GateResult:
    """One gate on one metric."""

    metric: str
    candidate: float | None
    live: float | None
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


def metric(manifest: Mapping[str, Any], name: str) -> float | None:
    """A gate metric from a manifest (None when absent or not a number).

    >>> metric({"metrics": {"churn": {"roc_auc": 0.9}}}, "churn_auc")
    0.9
    >>> metric({"metrics": {"churn": None}}, "churn_auc") is None
    True
    """
    value: Any = manifest.get("metrics", {})
    for key in METRICS[name][1]:
        value = value.get(key) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def check_gates(
    candidate: Mapping[str, Any], live: Mapping[str, Any] | None, gates: Gates
) -> list[GateResult]:
    """Judge a candidate manifest against the live one (None: nothing is live).

    >>> live = {"metrics": {"segmentation": {"silhouette": 0.40}}}
    >>> worse = {"metrics": {"segmentation": {"silhouette": 0.30}}}
    >>> [r.reason for r in check_gates(worse, live, Gates()) if not r.passed]
    ['silhouette 0.300 is 0.100 below the live bundle (0.400); at most 0.050 allowed']
    """
    results = []
    for name in sorted({*gates.max_drop, *gates.minimum}, key=list(METRICS).index):
        label = METRICS[name][0]
        c = metric(candidate, name)
        v = None if live is None else metric(live, name)
        floor, drop = gates.minimum.get(name), gates.max_drop.get(name)
        if c is None:
            passed = v is None and floor is None
            reason = (
                "not measured in either bundle"
                if passed
                else f"the candidate has no {label} (live: "
                + ("-" if v is None else f"{v:.3f}")
                + (f", floor {floor:.3f}" if floor is not None else "")
                + ")"
            )
        elif floor is not None and c < floor:
            passed, reason = False, f"{label} {c:.3f} is below the floor {floor:.3f}"
        elif v is not None and drop is not None and c < v - drop:
            passed = False
            reason = (
                f"{label} {c:.3f} is {v - c:.3f} below the live bundle ({v:.3f}); "
                f"at most {drop:.3f} allowed"
            )
        else:
            passed = True
            reason = f"{label} {c:.3f}" + ("" if v is None else f" (live {v:.3f})")
        results.append(GateResult(name, c, v, passed, reason))
    return results


def live_stack(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The versions that were live, oldest first, the live one last, from the history.

    >>> live_stack([{"action": "train", "version": "A", "replaced": None},
    ...             {"action": "promote", "version": "B", "replaced": "A"},
    ...             {"action": "promote", "version": "C", "replaced": "B"},
    ...             {"action": "rollback", "version": "B", "replaced": "C"}])
    ['A', 'B']
    """
    stack: list[str] = []
    for entry in entries:
        version, replaced = entry.get("version"), entry.get("replaced")
        if not isinstance(version, str):
            continue
        if entry.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != version:
                stack.append(version)
            continue
        if not stack and isinstance(replaced, str):
            stack.append(replaced)  # a history started after the first bundle went live
        if not stack or stack[-1] != version:
            stack.append(version)
    return stack


def _live_manifest(model_dir: Path) -> dict[str, Any] | None:
    link = model_dir / CURRENT
    if not link.exists():
        return None
    try:
        doc = json.loads((link / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # an unreadable live bundle: the candidate is judged on floors alone
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class Promotion:
    """What `promote` did."""

    bundle: Bundle
    previous: str | None
    results: list[GateResult]
    forced: bool
    changed: bool


def promote(
    version_dir: Path,
    catalog: Catalog,
    gates: Gates,
    *,
    force: bool = False,
    at: datetime | None = None,
) -> Promotion:
    """Make `DIR/VERSION` live: verify it, judge it against the live bundle, switch
    `DIR/current`. Raises `PromotionRefused` (with the results) when a gate fails and
    `force` is not set, `BundleError` when the bundle does not verify.
    """
    version_dir = Path(version_dir)
    if version_dir.name == CURRENT or not (version_dir / MANIFEST).is_file():
        raise BundleError(f"{version_dir}: give a version directory, DIR/<version>")
    version_dir = version_dir.resolve()
    model_dir = version_dir.parent
    candidate = load_bundle(version_dir, catalog)
    live = _live_manifest(model_dir)
    previous = None if live is None else str(live.get("bundle_version"))
    if previous == candidate.version:
        return Promotion(candidate, previous, [], forced=False, changed=False)
    results = check_gates(candidate.manifest, live, gates)
    failed = [r for r in results if not r.passed]
    if failed and not force:
        raise PromotionRefused(
            f"{candidate.version} refused: " + "; ".join(r.reason for r in failed), results
        )
    detail = {
        "forced": bool(failed),
        "gates": [r.to_dict() for r in results],
    }
    bundle = publish(model_dir, version_dir, catalog, action="promote", at=at, detail=detail)
    return Promotion(bundle, previous, results, forced=bool(failed), changed=True)


def rollback(model_dir: Path, catalog: Catalog, *, at: datetime | None = None) -> Bundle:
    """Make the version that was live before the live one live again (verified first).

    Refused when the history does not know how the live version got there (someone moved
    `current` by hand) or when nothing was live before it.
    """
    model_dir = Path(model_dir)
    link = model_dir / CURRENT
    if not link.exists():
        raise BundleError(f"{link}: no current bundle, nothing to roll back")
    live = link.resolve().name
    stack = live_stack(read_history(model_dir))
    if not stack or stack[-1] != live:
        raise PromotionRefused(
            f"{model_dir / 'history.jsonl'} does not end with the live version {live} "
            "(was current moved by hand?); promote the version you want with "
            "`segstream promote DIR/VERSION`"
        )
    if len(stack) < 2:
        raise PromotionRefused(f"nothing to roll back to: {live} is the first live version")
    target = model_dir / stack[-2]
    return publish(model_dir, target, catalog, action="rollback", at=at)
