"""A worker whose store starts empty raises no false population shift.

The bundle's segment shares describe customers with full 90-day windows. Replaying only
the last weeks of a history (what a deployment without a backfill sees) places everyone
with partial windows, most by the early-life classifier: counted in the PSI window, that
raised `population_shift` (PSI 4.8 on day one in the compose stack) where nothing shifted.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from offline.synthetic import generate_history, write_history
from stream.health import HealthMonitor
from stream.replay import replay
from stream.runtime import open_runtime
from stream.settings import StreamSettings


def test_a_cold_start_raises_no_population_shift(tmp_path: Path, trained_bundle: Path) -> None:
    history = generate_history(400, 120, seed=33)
    events = write_history(history, tmp_path / "history")["events"]
    lines = events.read_text().splitlines()
    cut = min(i for i, line in enumerate(lines) if json.loads(line)["ts"] >= "2026-04-16")
    tail = tmp_path / "tail.jsonl"
    tail.write_text("\n".join(lines[cut:]) + "\n")  # the last 15 days only
    settings = StreamSettings(redis_url="memory://", psi_window=300, metrics_port=0, web_port=0)

    def run(path: Path) -> tuple[list[str], int]:
        async def body() -> tuple[list[str], int]:
            runtime = await open_runtime(settings, model_path=trained_bundle)
            health = HealthMonitor(
                psi_threshold=settings.psi_threshold,
                psi_window=settings.psi_window,
                drift_bound=settings.drift_bound,
            )
            out = tmp_path / f"alerts-{path.stem}.jsonl"
            try:
                await replay(runtime.engine, path, out, health=health)
                window = int(runtime.engine.population_shift()["window"])
            finally:
                await runtime.close()
            kinds = [json.loads(line)["type"] for line in out.read_text().splitlines()]
            return kinds, window

        return asyncio.run(body())

    cold, cold_window = run(tail)
    assert "segment_assigned" in cold
    assert "population_shift" not in cold and "retrain_recommended" not in cold
    assert cold_window == 0  # nobody with full windows yet
    _, warm_window = run(events)
    assert warm_window == settings.psi_window  # the full history fills it
