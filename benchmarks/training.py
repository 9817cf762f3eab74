"""Wall time of `segstream train` (a subprocess, as an operator runs it) on a generated history.

Must not import faust.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from benchmarks.common import HistoryFile, segstream_command


def train_once(history: HistoryFile, out: Path) -> float:
    """Run `segstream train` on `history` into `out`; its wall time in seconds.

    Raises `RuntimeError` with the command's output tail when it fails.
    """
    cmd = [
        *segstream_command(),
        "train",
        "--events",
        str(history.path),
        "--as-of",
        history.train_as_of,
        "--out",
        str(out),
        "--seed",
        "0",
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"segstream train failed ({done.returncode}): {done.stdout[-2000:]}"
            f"{done.stderr[-2000:]}"
        )
    return seconds


def bundle_dir(out: Path) -> Path:
    """The model folder's published bundle (`out/current`)."""
    return out / "current"
