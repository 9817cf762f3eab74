"""The `segstream` command line: help, generate -> features, errors, catalog and schema."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from models.catalog import default_catalog, load_catalog
from models.eventfile import read_events
from models.events import SCHEMA_PATH, event_json_schema, parse_time
from offline.reference import events_frame, features_at
from segstream.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
AS_OF = "2026-01-08T00:00:00Z"

EXPORTS_TOML = """
[[catalog.features]]
name = "exports_30d"
aggregation = "count"
window_days = 30
filter = { types = ["feature_used"], where = { feature = "export" } }
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> tuple[int, str, str]:
    # 80 columns: a usual terminal; an error must stay on one line whatever the width
    result = runner.invoke(app, list(args), env={"COLUMNS": "80"})
    assert not isinstance(result.exception, Exception), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("history")
    code, _, err = invoke(
        CliRunner(),
        "generate",
        "--out",
        str(out),
        "--customers",
        "6",
        "--days",
        "10",
        "--seed",
        "3",
        "--start",
        "2026-01-01",
    )
    assert code == 0, err
    assert "wrote" in err
    return out / "events.jsonl"


def assert_one_line_error(code: int, stderr: str, *words: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("error: "), stderr
    flat = " ".join(stderr.split())
    for word in words:
        assert word in flat, f"{word!r} not in {stderr!r}"
    # one line, so that logs and `| grep error:` show the whole message
    assert len(stderr.strip().splitlines()) == 1, f"not one line: {stderr!r}"


def test_help_lists_the_commands(runner: CliRunner) -> None:
    code, out, _ = invoke(runner, "--help")
    assert code == 0
    for command in ("generate", "features", "catalog", "schema"):
        assert command in out


def test_generate_writes_a_valid_history(history: Path) -> None:
    assert history.exists()
    assert (history.parent / "truth.csv").exists()
    events = list(read_events(history))
    assert events
    assert {e.customer_id for e in events} <= {f"c{i}" for i in range(6)}
    assert all(e.ts.year == 2026 and e.ts.month == 1 and e.ts.day <= 10 for e in events)


def test_generate_is_reproducible(history: Path, tmp_path: Path, runner: CliRunner) -> None:
    code, _, err = invoke(
        runner,
        "generate",
        "--out",
        str(tmp_path),
        "--customers",
        "6",
        "--days",
        "10",
        "--seed",
        "3",
        "--start",
        "2026-01-01",
    )
    assert code == 0, err
    assert (tmp_path / "events.jsonl").read_text() == history.read_text()


def test_features_writes_the_catalog_csv(history: Path, tmp_path: Path, runner: CliRunner) -> None:
    out = tmp_path / "out" / "features.csv"
    code, _, err = invoke(
        runner, "features", "--events", str(history), "--as-of", AS_OF, "--out", str(out)
    )
    assert code == 0, err
    table = pd.read_csv(out, dtype={"customer_id": str})
    assert list(table.columns) == ["customer_id", *default_catalog().names]
    at = parse_time(AS_OF)
    seen = {e.customer_id for e in read_events(history) if e.epoch <= at}
    assert sorted(table["customer_id"]) == sorted(seen)
    assert f"{len(seen)} customers x 40 features" in err
    # the numbers are the batch reference's
    cat = default_catalog()
    want = features_at(events_frame(read_events(history), cat), cat, at)
    got = table.set_index("customer_id")
    pd.testing.assert_frame_equal(
        got, want, check_names=False, check_dtype=False, rtol=1e-9, atol=1e-9
    )


def test_features_with_config_adds_its_columns(
    history: Path, tmp_path: Path, runner: CliRunner
) -> None:
    config = tmp_path / "segstream.toml"
    config.write_text(EXPORTS_TOML)
    out = tmp_path / "features.csv"
    code, _, err = invoke(
        runner,
        "features",
        "--events",
        str(history),
        "--as-of",
        AS_OF,
        "--out",
        str(out),
        "--config",
        str(config),
    )
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table.columns) == ["customer_id", *default_catalog().names, "exports_30d"]
    exports = sum(
        1
        for e in read_events(history)
        if e.type == "feature_used"
        and e.properties["feature"] == "export"
        and e.epoch <= parse_time(AS_OF)
    )
    assert table["exports_30d"].sum() == exports


def test_features_counts_rejected_events(tmp_path: Path, runner: CliRunner) -> None:
    events = tmp_path / "events.jsonl"
    good = {
        "event_id": "1",
        "customer_id": "a",
        "type": "purchase",
        "ts": "2026-01-05T00:00:00Z",
        "properties": {"amount": 8},
    }
    bad = {**good, "event_id": "2", "properties": {"amount": -8}}
    events.write_text(json.dumps(good) + "\nnot json\n" + json.dumps(bad) + "\n")
    out = tmp_path / "features.csv"
    code, _, err = invoke(
        runner, "features", "--events", str(events), "--as-of", AS_OF, "--out", str(out)
    )
    assert code == 0, err
    assert "1 valid events, 2 rejected" in " ".join(err.split())
    table = pd.read_csv(out).set_index("customer_id")
    assert table.loc["a", "revenue_7d"] == 8
    assert table.loc["a", "days_since_last_purchase"] == 3


@pytest.mark.parametrize(
    ("as_of", "words"),
    [
        ("yesterday", ["yesterday"]),
        ("2026-01-08T00:00:00", ["zone offset"]),
        ("2026-13-01", ["month"]),
    ],
)
def test_bad_as_of(
    as_of: str, words: list[str], history: Path, tmp_path: Path, runner: CliRunner
) -> None:
    out = tmp_path / "features.csv"
    code, _, err = invoke(
        runner, "features", "--events", str(history), "--as-of", as_of, "--out", str(out)
    )
    assert_one_line_error(code, err, *words)
    assert not out.exists()


def test_as_of_is_shown_verbatim_in_the_error(
    history: Path, tmp_path: Path, runner: CliRunner
) -> None:
    # the message is text, not console markup: brackets in user input are shown as typed
    out = tmp_path / "features.csv"
    code, _, err = invoke(
        runner, "features", "--events", str(history), "--as-of", "[/now]", "--out", str(out)
    )
    assert_one_line_error(code, err, "[/now]")


def test_bad_config_in_features(history: Path, tmp_path: Path, runner: CliRunner) -> None:
    config = tmp_path / "segstream.toml"
    config.write_text(
        '[[catalog.features]]\nname = "spend_30d"\naggregation = "sum"\nwindow_days = 30\n'
    )
    out = tmp_path / "features.csv"
    code, _, err = invoke(
        runner,
        "features",
        "--events",
        str(history),
        "--as-of",
        AS_OF,
        "--out",
        str(out),
        "--config",
        str(config),
    )
    assert_one_line_error(code, err, "spend_30d", "property")
    assert not out.exists()


def test_bad_config_in_catalog(tmp_path: Path, runner: CliRunner) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[catalog.features]]\nname = "m"\naggregation = "median"\n')
    code, out, err = invoke(runner, "catalog", "--config", str(config))
    assert_one_line_error(code, err, "'m'", "aggregation")
    assert out == ""


def test_broken_toml_config(tmp_path: Path, runner: CliRunner) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[catalog\nretention_days = 90\n")
    code, _, err = invoke(runner, "catalog", "--config", str(config))
    assert_one_line_error(code, err, "broken.toml")


def test_catalog_prints_the_markdown_table(runner: CliRunner) -> None:
    code, out, _ = invoke(runner, "catalog")
    assert code == 0
    assert out == default_catalog().markdown_table() + "\n"
    assert out.count("\n") == 2 + 40


def test_catalog_names_only(runner: CliRunner) -> None:
    code, out, _ = invoke(runner, "catalog", "--no-markdown")
    assert code == 0
    assert out.split() == list(default_catalog().names)


def test_catalog_with_config(tmp_path: Path, runner: CliRunner) -> None:
    config = tmp_path / "segstream.toml"
    config.write_text(EXPORTS_TOML)
    code, out, _ = invoke(runner, "catalog", "--config", str(config))
    assert code == 0
    assert out == load_catalog(config).markdown_table() + "\n"
    assert out.splitlines()[-1].startswith("| `exports_30d` | count | feature_used where")


def test_readme_shows_the_catalog_table() -> None:
    assert default_catalog().markdown_table() in README.read_text()


def test_schema_command_writes_the_published_schema(tmp_path: Path, runner: CliRunner) -> None:
    out = tmp_path / "event.schema.json"
    code, _, err = invoke(runner, "schema", "--out", str(out))
    assert code == 0, err
    assert json.loads(out.read_text()) == event_json_schema()
    assert out.read_text() == SCHEMA_PATH.read_text()
