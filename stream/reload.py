"""Model hot reload: notice when `model_dir/current` points at another bundle, verify it.

The worker polls `ModelWatcher.poll()` between batches. A new target is loaded and
verified (hashes, catalog, trusted types) before the engine switches to it; a bundle that
fails is refused once, with the reason, and the bundle in service stays. Pure file
system work: no Kafka, no Redis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from models.bundle import Bundle, BundleError, load_bundle
from models.catalog import Catalog


@dataclass(frozen=True)
class Reload:
    """What a poll found: a verified bundle to switch to, or why the new one was refused."""

    target: str
    bundle: Bundle | None = None
    error: str | None = None


class ModelWatcher:
    """Watches `model_dir/current`; `poll()` reports each new target once."""

    def __init__(self, model_dir: Path, catalog: Catalog, *, serving: Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.catalog = catalog
        self._seen = self._target() if serving is None else Path(serving).resolve().name

    def _target(self) -> str:
        link = self.model_dir / "current"
        try:
            return Path(os.readlink(link)).name if link.is_symlink() else link.resolve().name
        except OSError:
            return ""

    def poll(self) -> Reload | None:
        """None while `current` is unchanged; else the new bundle or the refusal."""
        target = self._target()
        if not target or target == self._seen:
            return None
        self._seen = target
        try:
            return Reload(target, bundle=load_bundle(self.model_dir / target, self.catalog))
        except BundleError as exc:
            return Reload(target, error=str(exc))
