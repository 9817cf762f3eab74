"""Segment lineage: stable segment ids and names across retrainings.

k-means numbers its clusters arbitrarily; dashboards, onboarding flows and alert
consumers key on segment ids and names. When a previous bundle exists, `match_segments`
maps the new clusters onto the previous segments so that a segment that is still there
keeps its id and name, and records what happened to each one.

How segments are matched
------------------------
Both signals are measured on the same customers and in one space:

* **overlap**: the new training customers are assigned by the previous bundle too
  (nearest previous centroid, at the new as-of). `O[i, j]` counts customers the previous
  bundle puts in old segment `i` and the new model in new cluster `j`. From it:
  `out[i, j] = O[i, j] / O[i, :].sum()` (where old `i`'s customers went),
  `in[i, j] = O[i, j] / O[:, j].sum()` (where new `j`'s customers came from) and the
  Jaccard index `J[i, j] = O[i, j] / (|i| + |j| - O[i, j])`;
* **centroid distance**: the previous centroids are taken back to raw feature units
  (inverse scaling, `expm1` of the log columns) and scaled with the new scaler
  (`to_space`), so `D[i, j]` is a Euclidean distance in the new scaled space. It is
  divided by `s`, the median distance between two new centroids, and capped at 1.

The cost of pairing `i` with `j` is `w * (1 - J) + (1 - w) * min(D / s, 1)`
(`w = overlap_weight`, 0.5), and `scipy.optimize.linear_sum_assignment` finds the
one-to-one pairing of least total cost. A pair is **accepted** (the new cluster takes the
old id and name) when it shares most of either side: `out >= keep_share` or
`in >= keep_share` (0.5). The distance only steers the pairing: a segment that splits or
absorbs another legitimately moves its centroid, while the overlap says whether it is
still the same customers.

What happened to each segment
-----------------------------
A **flow** `i -> j` is significant when it is a real part of both sides
(`out >= flow_share` and `in >= flow_share`, 0.2) or when most of old `i` went to `j`
(`out >= keep_share`: `i` was absorbed). In the overlap matrix a split is a row with two
or more significant flows, a merge a column with two or more:

    old \\ new   n0   n1   n2          old A -> n0 and n1 (60% / 40%): A split;
    A          60   40    0          n0 keeps A's id (larger share), n1 gets a new id.
    B           0    0   50          old B and C -> n2: merged; n2 keeps the id of the
    C           0    0   45          better-matching one, the other is retired.

Each new segment gets a status:

* `kept`: it took an old id, is fed by that segment alone and that segment did not split;
* `split`: its main source split (the largest part keeps the old id, the others get new
  ids, all marked `split` with the source and shares);
* `merged`: two or more old segments flow into it (it keeps one of their ids, or a new one
  when no pairing was accepted);
* `new`: no significant source, or its only source went mostly elsewhere.

Each old id that no new segment took is **retired**, with the cause: `merged` (flows into
a merged segment), `split` (split and no part kept the id), `empty` (the previous bundle
assigns nobody to it any more) or `dissolved` (its customers spread thin). A retired id
is never given out again: new ids start at the manifest's `segment_ids.next`, the first id
above every id used before (retired ones included).

Pure: numpy and scipy only; no I/O. Must not import `stream/`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.bundle import Manifest, ScaledSpace


@dataclass(frozen=True)
class MatchRules:
    """The thresholds of the matching (see the module docstring)."""

    overlap_weight: float = 0.5
    keep_share: float = 0.5
    flow_share: float = 0.2

    def __post_init__(self) -> None:
        for name in ("overlap_weight", "keep_share", "flow_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")


@dataclass(frozen=True)
class Previous:
    """What the matching needs of the previous bundle."""

    version: str
    as_of: str
    space: ScaledSpace
    names: Mapping[int, str]
    #: Every id used by it or any bundle before it (retired ones included).
    used_ids: frozenset[int]

    @classmethod
    def from_manifest(cls, manifest: Manifest, space: ScaledSpace) -> Previous:
        """From a loaded bundle's manifest and scaled space (older bundles without
        `segment_ids` count only their own ids as used)."""
        names = {s.id: s.name for s in manifest.segments}
        recorded = () if manifest.segment_ids is None else manifest.segment_ids.used
        return cls(
            version=manifest.bundle_version,
            as_of=manifest.as_of,
            space=space,
            names=names,
            used_ids=frozenset([*recorded, *names]),
        )


@dataclass
class Lineage:
    """The outcome of a matching: stable ids per new cluster and the lineage records."""

    #: Stable segment id of each new cluster (position = cluster index).
    ids: np.ndarray
    #: Names carried over from the previous bundle, by stable id (accepted pairs only).
    kept_names: dict[int, str]
    previous: Previous | None
    segments: list[dict[str, Any]] = field(default_factory=list)
    retired: list[dict[str, Any]] = field(default_factory=list)
    #: (previous id, new stable id, customers) for every non-empty cell of the overlap.
    transitions: list[tuple[int, int, int]] = field(default_factory=list)
    same_segment_share: float | None = None
    customers: int = 0
    used_ids: list[int] = field(default_factory=list)
    rules: MatchRules = field(default_factory=MatchRules)

    @property
    def next_id(self) -> int:
        return max(self.used_ids, default=-1) + 1

    def ids_document(self) -> dict[str, Any]:
        """The manifest's `segment_ids`: every id ever used and the next free one."""
        return {"used": self.used_ids, "next": self.next_id}

    def document(self, names: Mapping[int, str]) -> dict[str, Any] | None:
        """The manifest's `lineage` (None for a first bundle), with the final names."""
        if self.previous is None:
            return None
        segments = [{**rec, "name": names[rec["id"]]} for rec in self.segments]
        return {
            "previous_version": self.previous.version,
            "previous_as_of": self.previous.as_of,
            "customers": self.customers,
            "same_segment_share": self.same_segment_share,
            "rules": vars(self.rules),
            "segments": segments,
            "retired": self.retired,
            "transitions": [{"from": i, "to": j, "customers": n} for i, j, n in self.transitions],
        }


def to_space(source: ScaledSpace, target: ScaledSpace) -> np.ndarray:
    """`source`'s centroids as points of `target`'s scaled space.

    Each centroid goes back to raw feature units (inverse scaling, then `expm1` where
    `source` took `log1p`) and through `target`'s transform. A column `target` uses and
    `source` does not is put at `target`'s mean (0).

    >>> a = ScaledSpace(index=np.array([0]), log1p=np.array([False]), mean=np.array([1.0]),
    ...                 scale=np.array([2.0]), centroids=np.array([[1.0]]), segment_ids=(0,))
    >>> b = ScaledSpace(index=np.array([0, 1]), log1p=np.array([False, False]),
    ...                 mean=np.array([0.0, 5.0]), scale=np.array([1.0, 1.0]),
    ...                 centroids=np.zeros((1, 2)), segment_ids=(0,))
    >>> to_space(a, b).tolist()
    [[3.0, 0.0]]
    """
    raw = source.centroids * source.scale + source.mean
    raw = np.where(source.log1p, np.expm1(raw), raw)
    out = np.zeros((len(raw), len(target.index)))
    where = {int(c): k for k, c in enumerate(source.index)}
    for k, c in enumerate(target.index):
        if int(c) not in where:
            continue
        x = raw[:, where[int(c)]]
        x = np.log1p(np.maximum(x, 0.0)) if target.log1p[k] else x
        out[:, k] = (x - target.mean[k]) / target.scale[k]
    return out


def _first_ids(labels: np.ndarray, k: int, reserved: Iterable[int]) -> Lineage:
    taken = {int(i) for i in reserved}
    start = max(taken, default=-1) + 1
    ids = np.arange(start, start + k, dtype=np.int64)
    return Lineage(
        ids=ids,
        kept_names={},
        previous=None,
        customers=len(labels),
        used_ids=sorted(taken | {int(i) for i in ids}),
    )


def match_segments(
    labels: np.ndarray,
    centroids: np.ndarray,
    space: ScaledSpace,
    previous: Previous | None,
    previous_labels: np.ndarray | None,
    *,
    reserved: Iterable[int] = (),
    rules: MatchRules | None = None,
) -> Lineage:
    """Stable ids for the new clusters.

    `labels` are the training customers' new clusters (0..k-1), `centroids` their centres
    in the new scaled `space`; `previous_labels` are the same customers' segment ids under
    the previous bundle. `reserved` adds ids that must never be given out (e.g. ids of
    bundles that were never promoted). Without a previous bundle the ids are 0..k-1, or
    start above the reserved ones (a retraining with lineage turned off must not give an
    old id a new meaning).

    >>> space = ScaledSpace(index=np.array([0]), log1p=np.array([False]),
    ...                     mean=np.array([0.0]), scale=np.array([1.0]),
    ...                     centroids=np.array([[0.0], [5.0], [9.0]]), segment_ids=(0, 1, 2))
    >>> old = ScaledSpace(index=np.array([0]), log1p=np.array([False]),
    ...                   mean=np.array([0.0]), scale=np.array([1.0]),
    ...                   centroids=np.array([[9.0], [0.0]]), segment_ids=(4, 7))
    >>> prev = Previous("v1", "", old, {4: "Big", 7: "Small"}, frozenset({4, 5, 7}))
    >>> labels = np.array([0, 0, 1, 2, 2])       # new clusters
    >>> before = np.array([7, 7, 4, 4, 4])       # the previous bundle's ids, same customers
    >>> lin = match_segments(labels, space.centroids, space, prev, before)
    >>> lin.ids.tolist(), lin.kept_names, [s["status"] for s in lin.segments]
    ([7, 8, 4], {4: 'Big', 7: 'Small'}, ['split', 'kept', 'split'])
    """
    rules = rules or MatchRules()
    labels = np.asarray(labels, dtype=np.int64)
    k = len(centroids)
    if previous is None or previous_labels is None:
        return _first_ids(labels, k, reserved)
    old_ids = list(previous.space.segment_ids)
    overlap = _Overlap.count(old_ids, previous_labels, labels, k)
    accepted = _pair(overlap, _pairing_cost(overlap, previous, space, centroids, rules), rules)
    used = set(previous.used_ids) | {int(i) for i in reserved}
    ids = _stable_ids(k, accepted, old_ids, used)
    used |= {int(i) for i in ids}
    flows = _Flows.of(overlap, rules)
    transitions = [
        (old_ids[i], int(ids[j]), int(overlap.o[i, j]))
        for i, j in zip(*np.nonzero(overlap.o), strict=True)
    ]
    same = float(np.mean(ids[labels] == np.asarray(previous_labels))) if len(labels) else None
    return Lineage(
        ids=ids,
        kept_names={old_ids[i]: previous.names[old_ids[i]] for i in sorted(accepted.values())},
        previous=previous,
        segments=_segment_records(ids, accepted, overlap, flows, old_ids, previous.names),
        retired=_retired_records(ids, accepted, overlap, flows, old_ids, previous.names),
        transitions=sorted(transitions),
        same_segment_share=same,
        customers=len(labels),
        used_ids=sorted(used),
        rules=rules,
    )


@dataclass(frozen=True)
class _Overlap:
    """The overlap matrix `o` (old segment rows, new cluster columns) and its shares."""

    o: np.ndarray
    #: Where old `i`'s customers went: o[i, j] / |i|.
    out: np.ndarray
    #: Where new `j`'s customers came from: o[i, j] / |j|.
    inn: np.ndarray
    jaccard: np.ndarray
    #: Customers per old segment (a column).
    size_old: np.ndarray

    @classmethod
    def count(
        cls, old_ids: list[int], previous_labels: np.ndarray, labels: np.ndarray, k: int
    ) -> _Overlap:
        row = {sid: r for r, sid in enumerate(old_ids)}
        prev_rows = np.array([row[int(s)] for s in previous_labels], dtype=np.int64)
        o = np.zeros((len(old_ids), k), dtype=np.int64)
        np.add.at(o, (prev_rows, labels), 1)
        size_old, size_new = o.sum(axis=1, keepdims=True), o.sum(axis=0, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.nan_to_num(o / size_old)
            inn = np.nan_to_num(o / size_new)
            jac = np.nan_to_num(o / (size_old + size_new - o))
        return cls(o, out, inn, jac, size_old)

    def part(self, i: int, j: int) -> dict[str, Any]:
        """The record of flow i -> j: customers and both shares."""
        return {
            "customers": int(self.o[i, j]),
            "share_of_previous": round(float(self.out[i, j]), 4),
            "share_of_new": round(float(self.inn[i, j]), 4),
        }


def _pairing_cost(
    overlap: _Overlap,
    previous: Previous,
    space: ScaledSpace,
    centroids: np.ndarray,
    rules: MatchRules,
) -> np.ndarray:
    """`w * (1 - J) + (1 - w) * min(D / s, 1)` for every (old, new) pair."""
    k = len(centroids)
    old_c = to_space(previous.space, space)
    dist = np.sqrt(((old_c[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    between = np.sqrt(((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    spread = float(np.median(between[np.triu_indices(k, 1)])) if k > 1 else 1.0
    cost: np.ndarray = rules.overlap_weight * (1 - overlap.jaccard) + (
        1 - rules.overlap_weight
    ) * np.minimum(dist / max(spread, 1e-9), 1.0)
    return cost


def _pair(overlap: _Overlap, cost: np.ndarray, rules: MatchRules) -> dict[int, int]:
    """new cluster -> old row, for the least-cost one-to-one pairs sharing most of a side."""
    rows, cols = linear_sum_assignment(cost)
    return {
        int(j): int(i)
        for i, j in zip(rows, cols, strict=True)
        if overlap.out[i, j] >= rules.keep_share or overlap.inn[i, j] >= rules.keep_share
    }


def _stable_ids(
    k: int, accepted: Mapping[int, int], old_ids: list[int], used: set[int]
) -> np.ndarray:
    """The old id for an accepted pair, else the next id above every `used` one."""
    next_id = max(used, default=-1) + 1
    ids = np.empty(k, dtype=np.int64)
    for j in range(k):
        if j in accepted:
            ids[j] = old_ids[accepted[j]]
        else:
            ids[j], next_id = next_id, next_id + 1
    return ids


@dataclass(frozen=True)
class _Flows:
    """The significant flows of an overlap and what they make of each segment."""

    #: (old, new) -> a significant flow.
    flow: np.ndarray
    #: Per new cluster, the old rows flowing into it.
    sources: list[list[int]]
    #: Per old row: it split (2+ significant flows out).
    splits: np.ndarray
    #: Per new cluster: a merge (2+ significant flows in).
    merges: np.ndarray

    @classmethod
    def of(cls, overlap: _Overlap, rules: MatchRules) -> _Flows:
        out, inn = overlap.out, overlap.inn
        flow = ((out >= rules.flow_share) & (inn >= rules.flow_share)) | (out >= rules.keep_share)
        sources = [np.flatnonzero(flow[:, j]).tolist() for j in range(flow.shape[1])]
        return cls(flow, sources, flow.sum(axis=1) >= 2, flow.sum(axis=0) >= 2)


def _segment_records(
    ids: np.ndarray,
    accepted: Mapping[int, int],
    overlap: _Overlap,
    flows: _Flows,
    old_ids: list[int],
    names: Mapping[int, str],
) -> list[dict[str, Any]]:
    """One record per new segment, in id order: status, the old segment it took over,
    the significant flows into it."""
    records = []
    for j in sorted(range(len(ids)), key=lambda c: int(ids[c])):
        i = accepted.get(j)
        sources = flows.sources[j]
        if flows.merges[j]:
            status = "merged"
        elif i is not None:
            status = "split" if flows.splits[i] else "kept"
        elif len(sources) == 1 and flows.splits[sources[0]]:
            status = "split"
        else:
            status = "new"
        records.append(
            {
                "id": int(ids[j]),
                "status": status,
                "previous_id": None if i is None else old_ids[i],
                "previous_name": None if i is None else names.get(old_ids[i]),
                "from": [
                    {"id": old_ids[s], "name": names.get(old_ids[s]), **overlap.part(s, j)}
                    for s in sources
                ],
            }
        )
    return records


def _retired_records(
    ids: np.ndarray,
    accepted: Mapping[int, int],
    overlap: _Overlap,
    flows: _Flows,
    old_ids: list[int],
    names: Mapping[int, str],
) -> list[dict[str, Any]]:
    """One record per old segment no new one took over, with the cause."""
    records = []
    taken = set(accepted.values())
    for i in range(len(old_ids)):
        if i in taken:
            continue
        into = np.flatnonzero(flows.flow[i]).tolist()
        if any(flows.merges[j] for j in into):
            cause = "merged"
        elif len(into) >= 2:
            cause = "split"
        elif overlap.size_old[i, 0] == 0:
            cause = "empty"
        else:
            cause = "dissolved"
        records.append(
            {
                "id": old_ids[i],
                "name": names.get(old_ids[i]),
                "status": "retired",
                "cause": cause,
                "into": [{"id": int(ids[j]), **overlap.part(i, j)} for j in into],
            }
        )
    return records


def relabel(labels: np.ndarray, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Cluster indices -> stable ids.

    >>> relabel(np.array([0, 2, 1]), [7, 8, 4]).tolist()
    [7, 4, 8]
    """
    return np.asarray(ids, dtype=np.int64)[np.asarray(labels, dtype=np.int64)]
