"""How fast any detector of event-type counts can be on the generator's personas.

A CUSUM of the log-likelihood ratio gains, per day after a switch from persona A to B,
the Kullback-Leibler divergence KL(B || A) of their Poisson daily counts (summed over the
event types) on average, so it needs about h / KL days to reach a threshold of h nats;
and its false alarms come at most about once per e^h days per alternative (Lorden), so
the flap target (0.01 per customer per 30 days, 4 alternative segments) needs h of about
9.4. This prints the divergence of every persona pair and, for a history's truth file,
the median of h / KL over its migrations after `--from-day`: the delay of an ideal
detector that knows every persona's rates and every customer's baseline exactly.
`--features` adds what the feature each feature_used event names would tell (the
personas draw them uniformly from pools of their own; a feature outside a pool counted at
1 % of its events, each event's term capped at 4 nats): the detector does not read it yet.

    python -m benchmarks.evidence_limit --truth data/sudden/truth.csv [--features]

Pure: reads the truth CSV only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from offline.synthetic import DEFAULT_START, FEATURES, PERSONAS, Persona


def divergence(new: tuple[float, ...], old: tuple[float, ...]) -> float:
    """KL(Poisson(new) || Poisson(old)) per day, summed over the event types.

    >>> round(divergence((2.0,), (1.0,)), 3)
    0.386
    """
    a, b = np.asarray(new), np.asarray(old)
    return float((a * np.log(a / b) - a + b).sum())


def pool_shares(p: Persona) -> np.ndarray:
    """The share of each of `FEATURES` in a persona's feature_used events (1 % off-pool)."""
    shares = np.full(len(FEATURES), 0.01 / len(FEATURES))
    shares[[FEATURES.index(f) for f in p.features]] += 0.99 / len(p.features)
    return shares


def feature_divergence(new: Persona, old: Persona) -> float:
    """What the features named by `new`'s feature_used events add per day: their rate
    times the expected (capped) log-ratio of the two personas' feature shares.

    >>> round(feature_divergence(PERSONAS["casual"], PERSONAS["casual"]), 3)
    0.0
    """
    a, b = pool_shares(new), pool_shares(old)
    return float(new.feature_uses * (a * np.minimum(np.log(a / b), 4.0)).sum())


def pair_divergence(new: str, old: str, features: bool) -> float:
    a, b = PERSONAS[new], PERSONAS[old]
    extra = feature_divergence(a, b) if features else 0.0
    return divergence(a.rates, b.rates) + extra


def ideal_delays(
    truth: pd.DataFrame, threshold: float, from_day: int, features: bool = False
) -> np.ndarray:
    """h / KL(to || from) for each migration of `truth` on or after `from_day`."""
    moved = truth.dropna(subset=["migration_day"])
    start = pd.Timestamp(DEFAULT_START).tz_localize(None) + pd.Timedelta(days=from_day)
    moved = moved[pd.to_datetime(moved["migration_day"]) >= start]
    pairs = zip(moved["persona"].astype(str), moved["to_persona"].astype(str), strict=True)
    return np.array([threshold / pair_divergence(b, a, features) for a, b in pairs])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", type=Path, default=None, help="A history's truth.csv.")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[6.0, 8.5, 10.0])
    parser.add_argument("--from-day", type=int, default=100)
    parser.add_argument("--features", action="store_true", help="Count feature names too.")
    args = parser.parse_args(argv)
    names = list(PERSONAS)
    print("KL(to || from), nats per day; rows: from, columns: to")
    print(" " * 14 + " ".join(n[:12].rjust(12) for n in names))
    for f in names:
        cells = [
            "-".rjust(12) if t == f else f"{pair_divergence(t, f, args.features):12.2f}"
            for t in names
        ]
        print(f[:14].ljust(14) + " ".join(cells))
    if args.truth is None:
        return
    truth = pd.read_csv(args.truth)
    for h in args.thresholds:
        d = ideal_delays(truth, h, args.from_day, args.features)
        print(
            f"h={h:g}: {len(d)} migrations, ideal median delay {np.median(d):.1f} days, "
            f"within 7 days {np.mean(d <= 7):.2f}, within 28 days {np.mean(d <= 28):.2f}"
        )


if __name__ == "__main__":
    main()
