"""The `segstream` command line: one entry point for every job.

Each command parses its options, builds what it needs once, and hands over to `offline/`
or `stream/`; no business logic lives here. This is the only place (with `stream/app.py`,
the faust entry point) that reads the environment.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from offline.shapes import SHAPE_HELP, SHAPES

if TYPE_CHECKING:
    from models.mapping import HistoryMapping

app = typer.Typer(
    help="segstream keeps every customer assigned to a behavioral segment in real time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

EventsOpt = Annotated[
    Path,
    typer.Option(
        "--events", exists=True, dir_okay=False, help="History file: .jsonl, .csv or .parquet."
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        exists=True,
        dir_okay=False,
        help="TOML config; its [catalog] section adds features (see README).",
    ),
]
StreamConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        exists=True,
        dir_okay=False,
        help="TOML config: \\[catalog] and \\[mapping] (default: SEGSTREAM_CONFIG_FILE).",
    ),
]
MapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--map",
        metavar="TARGET=COLUMN",
        help="Read a CSV/Parquet log with columns of its own: TARGET (customer_id, ts, type, "
        "event_id, session, amount, feature) is in COLUMN, e.g. --map customer_id=user_id. "
        "Repeat for each; overrides the config's \\[mapping] table. Without event_id, ids "
        "are derived from each row; a session column opens a session_start per session.",
    ),
]
MapTypeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--map-type",
        metavar="SOURCE=TYPE",
        help="The log's event SOURCE counts as our TYPE, e.g. --map-type "
        "order_completed=purchase (amount from --map amount=COLUMN, else 0). Repeatable.",
    ),
]
NaiveUtcOpt = Annotated[
    bool,
    typer.Option(
        "--naive-utc", help="Read a mapped time without a zone as UTC (else it is an error)."
    ),
]
DropUnmappedOpt = Annotated[
    bool,
    typer.Option(
        "--drop-unmapped",
        help="Skip source events no --map-type names (default: keep them under their own "
        "name; they count toward the type-agnostic features).",
    ),
]
FileOrderOpt = Annotated[
    bool,
    typer.Option(
        "--file-order",
        help="Read a mapped log in file order (the delivery order in replay) instead of "
        "time order (the default: exports are often sorted by customer).",
    ),
]


def _fail(message: str) -> typer.Exit:
    # Plain text, one line: user input in the message must not be read as rich markup.
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(2)


def _mapping(
    config: Path | None,
    maps: list[str] | None,
    types: list[str] | None,
    naive_utc: bool,
    drop_unmapped: bool,
    file_order: bool,
) -> HistoryMapping | None:
    """The config file's [mapping] with the --map options over it (raises ValueError)."""
    import tomllib

    from models.mapping import mapping_from_options, mapping_from_table

    base = None
    if config is not None:
        try:
            raw = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{config}: {exc}") from None
        base = mapping_from_table(raw.get("mapping"), config)
    return mapping_from_options(
        base,
        maps or [],
        types or [],
        naive_utc=naive_utc,
        drop_unmapped=drop_unmapped,
        file_order=file_order,
    )


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder for events.jsonl and truth.csv.")],
    customers: Annotated[int, typer.Option(help="How many customers.")] = 1000,
    days: Annotated[int, typer.Option(help="How many days of history.")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 1,
    start: Annotated[str, typer.Option(help="First day of the history (UTC date).")] = "2026-01-01",
    duplicates: Annotated[
        float, typer.Option(help="Share of events delivered twice (0 to <1).")
    ] = 0.0,
    late: Annotated[
        float, typer.Option(help="Share of events delivered up to 48 h late (0 to <1).")
    ] = 0.0,
    shape: Annotated[
        str,
        typer.Option(
            help="Preset shape of the history. "
            + "; ".join(f"{name}: {text}" for name, text in SHAPE_HELP.items())
            + ". The options below override the preset's."
        ),
    ] = "sudden",
    migration: Annotated[
        str | None,
        typer.Option(
            help="sudden: a migrating customer switches every rate on one day. gradual: its "
            "rates drift from the old persona's to the new over 2 to 4 weeks; the migration "
            "day is the drift's midpoint and truth.csv gains drift_start and drift_end."
        ),
    ] = None,
    changes: Annotated[
        str | None,
        typer.Option(
            help="Partial migrations: the one event type whose rate changes (e.g. purchase, "
            "session_start), towards the persona that differs most in it; the rest stay."
        ),
    ] = None,
    separation: Annotated[
        float | None,
        typer.Option(
            help="Persona separation: log rates scaled around the personas' mean, below 1 "
            "closer together (close: 0.5), above 1 farther apart (far: 1.6); each type's "
            "mean rate is kept."
        ),
    ] = None,
    activity: Annotated[
        float | None,
        typer.Option(help="Multiplier on every rate: low-activity 0.3, high-activity 3."),
    ] = None,
    weekend: Annotated[
        float | None,
        typer.Option(help="Multiplier on Saturday and Sunday rates (seasonal, B2B: 0.5)."),
    ] = None,
    dispersion: Annotated[
        float | None,
        typer.Option(
            help="Above 0, daily counts are negative binomial with variance mean + "
            "DISPERSION x mean^2 (overdispersed: 1); 0 is Poisson."
        ),
    ] = None,
    persona_spread: Annotated[
        float | None,
        typer.Option(
            help="Above 0, each seed redraws the personas: every rate and purchase amount "
            "median x a lognormal factor with this sigma (redrawn: 0.7)."
        ),
    ] = None,
    migrate_from_day: Annotated[
        int | None,
        typer.Option(
            help="Migrations (drift midpoints) fall on this day or later, e.g. just after a "
            "training date so a backtest sees them; default a third into the history."
        ),
    ] = None,
    migrate_to_day: Annotated[
        int | None,
        typer.Option(
            help="Migrations fall on this day or earlier; default 14 days before the end."
        ),
    ] = None,
) -> None:
    """Write a synthetic event history with its ground truth (personas, churn, migrations).

    OUT/migrations.csv (customer_id, changed_at, to_persona; started_at for gradual
    migrations) is a migration truth in the format `segstream backtest --truth` reads;
    to_persona is an extra column it ignores.
    --shape picks one of a family of histories (README: "Histories of every shape"); the
    retail shape writes purchase events only, with no personas or migrations.
    """
    from datetime import UTC, datetime

    from offline.history import generate
    from offline.synthetic import write_history

    try:
        if shape not in SHAPES:
            raise ValueError(f"--shape must be one of {', '.join(SHAPES)}, got {shape!r}")
        form = SHAPES[shape].with_options(
            migration=migration,
            changes=changes,
            separation=separation,
            activity=activity,
            weekend=weekend,
            dispersion=dispersion,
            persona_spread=persona_spread,
            migrate_from_day=migrate_from_day,
            migrate_to_day=migrate_to_day,
        )
        begin = datetime.fromisoformat(start).replace(tzinfo=UTC)
        t0 = time.perf_counter()
        history = generate(
            customers,
            days,
            seed,
            start=begin,
            duplicate_rate=duplicates,
            late_rate=late,
            shape=form,
        )
        paths = write_history(history, out)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    elapsed = time.perf_counter() - t0
    n = len(history.events)
    console.print(
        f"wrote {n:,} events for {customers:,} customers in {elapsed:.1f} s "
        f"({n / max(elapsed, 1e-9):,.0f} events/s)"
    )
    for name, path in paths.items():
        console.print(f"  {name}: {path}")


@app.command()
def features(
    events: EventsOpt,
    as_of: Annotated[
        str, typer.Option("--as-of", help="RFC 3339 time, e.g. 2026-03-31T00:00:00Z.")
    ],
    out: Annotated[Path, typer.Option("--out", help="CSV to write (customer_id, features...).")],
    config: ConfigOpt = None,
    map_: MapOpt = None,
    map_type: MapTypeOpt = None,
    naive_utc: NaiveUtcOpt = False,
    drop_unmapped: DropUnmappedOpt = False,
    file_order: FileOrderOpt = False,
) -> None:
    """Compute the feature catalog for every customer at a time, with the batch reference."""
    from models.catalog import CatalogError, load_catalog
    from models.eventfile import ReadStats
    from models.events import parse_time
    from offline.reference import features_at, load_frame

    try:
        catalog = load_catalog(config)
        at = parse_time(as_of)
        stats = ReadStats()
        mapping = _mapping(config, map_, map_type, naive_utc, drop_unmapped, file_order)
        frame = load_frame(events, catalog, stats, mapping=mapping)
    except (CatalogError, ValueError) as exc:
        raise _fail(str(exc)) from None
    table = features_at(frame, catalog, at)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, float_format="%.10g")
    console.print(
        f"{len(table):,} customers x {len(catalog.names)} features -> {out} "
        f"({stats.valid:,} valid events, {sum(stats.rejected.values()):,} rejected"
        + (f", {stats.dropped:,} unmapped dropped)" if stats.dropped else ")")
    )
    for example in stats.examples:
        console.print(f"  rejected {example}")


@app.command()
def catalog(
    config: ConfigOpt = None,
    markdown: Annotated[bool, typer.Option(help="Print the README table.")] = True,
) -> None:
    """Show the feature catalog (defaults plus the config's features)."""
    from models.catalog import CatalogError, load_catalog

    try:
        cat = load_catalog(config)
    except CatalogError as exc:
        raise _fail(str(exc)) from None
    typer.echo(cat.markdown_table() if markdown else "\n".join(cat.names))


@app.command()
def schema(
    out: Annotated[
        Path | None, typer.Option(help="Write here instead of models/event.schema.json.")
    ] = None,
) -> None:
    """Write the event contract's JSON Schema."""
    from models.events import SCHEMA_PATH, write_json_schema

    path = write_json_schema(out or SCHEMA_PATH)
    console.print(f"wrote {path}")


@app.command()
def train(
    events: EventsOpt,
    as_of: Annotated[
        str, typer.Option("--as-of", help="Train on what was known at this RFC 3339 time.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Model folder; the bundle goes to OUT/<version>/.")
    ],
    k: Annotated[
        str | None, typer.Option("--k", help="Number of segments, or 'auto' (3 to 8).")
    ] = None,
    churn_horizon_days: Annotated[
        int | None,
        typer.Option("--churn-horizon-days", help="Churn = no qualifying event in these days."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            exists=True,
            dir_okay=False,
            help="TOML config: \\[catalog] features, \\[segments] k and names, \\[churn] "
            "types, \\[mapping] of a foreign log.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed, the same bundle.")] = 0,
    readers: Annotated[
        int | None,
        typer.Option(
            "--readers",
            min=0,
            help="Processes that decode a large JSONL history (0: one per CPU; default 0, "
            "or [train] readers in the config).",
        ),
    ] = None,
    previous: Annotated[
        Path | None,
        typer.Option(
            "--previous",
            help="Bundle whose segment ids and names to keep (default: OUT/current if any).",
        ),
    ] = None,
    no_previous: Annotated[
        bool, typer.Option("--no-previous", help="Start new segment ids; ignore OUT/current.")
    ] = False,
    no_publish: Annotated[
        bool,
        typer.Option(
            "--no-publish",
            help="Write and verify the bundle but leave OUT/current alone (then compare and "
            "promote it); prints the bundle's path on stdout.",
        ),
    ] = False,
    map_: MapOpt = None,
    map_type: MapTypeOpt = None,
    naive_utc: NaiveUtcOpt = False,
    drop_unmapped: DropUnmappedOpt = False,
    file_order: FileOrderOpt = False,
) -> None:
    """Learn segments, churn risk and early-life segments; publish a verified bundle.

    When a previous bundle exists (--previous, or OUT/current), segments still there keep
    their id and name, and the manifest and report say what split, merged, appeared or
    retired.
    """
    from datetime import UTC, datetime

    from models.bundle import BundleError
    from models.catalog import CatalogError, load_catalog
    from models.events import parse_time
    from offline.train import load_settings, parse_k
    from offline.train import train as run_training
    from segstream.views import TrainingBars, training_summary, warning_lines

    t0 = time.perf_counter()
    try:
        catalog = load_catalog(config)
        at = parse_time(as_of)
        settings = load_settings(
            config,
            k=parse_k(k) if k is not None else None,
            churn_horizon_days=churn_horizon_days,
            seed=seed,
            readers=readers,
            mapping=_mapping(config, map_, map_type, naive_utc, drop_unmapped, file_order),
        )
        if previous is not None and no_previous:
            raise ValueError("--previous and --no-previous contradict each other")
        if previous is None and not no_previous and (out / "current").exists():
            previous = out / "current"
        with TrainingBars(console) as bars:
            result = run_training(
                events, at, out, catalog, settings, now=datetime.now(UTC), progress=bars,
                previous=previous, publish=not no_publish,
            )  # fmt: skip
    except (CatalogError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from None
    for table in training_summary(result):
        console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    for line in warning_lines(result):
        console.print(line)
    seconds = time.perf_counter() - t0
    if no_publish:
        console.print(f"wrote {result.bundle.path} in {seconds:.1f} s; current not moved")
        typer.echo(str(result.bundle.path))
    else:
        console.print(f"published {result.bundle.path} as {out / 'current'} in {seconds:.1f} s")


@app.command()
def replay(
    events: EventsOpt,
    model: Annotated[Path, typer.Option("--model", help="A bundle: DIR/current or DIR/<version>.")],
    alerts_out: Annotated[Path, typer.Option("--alerts-out", help="Alerts, one JSON per line.")],
    state_out: Annotated[
        Path | None, typer.Option("--state-out", help="CSV: segment, churn risk, features.")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Stop and evaluate at this time (default: last event)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Events per batch.")] = 1000,
    backfill: Annotated[
        bool,
        typer.Option(
            help="Write into the live key prefix (SEGSTREAM_KEY_PREFIX) and keep it: warms "
            "up a new deployment's features and segments from history before the worker "
            "starts. Each customer's re-score is scheduled in the partition Kafka's default "
            "partitioner gives its id (of SEGSTREAM_INPUT_PARTITIONS), where the worker "
            "that owns it finds it. Without it, a scratch prefix is used and deleted."
        ),
    ] = False,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="With --backfill: do nothing when this Redis was backfilled before (the key "
            "PREFIX:backfilled, set at the end of a backfill, says up to when), so a "
            "deployment can run the same backfill at every start.",
        ),
    ] = False,
    config: StreamConfigOpt = None,
    map_: MapOpt = None,
    map_type: MapTypeOpt = None,
    naive_utc: NaiveUtcOpt = False,
    drop_unmapped: DropUnmappedOpt = False,
    file_order: FileOrderOpt = False,
) -> None:
    """Run a history through the same engine as the worker, without Kafka.

    Uses SEGSTREAM_REDIS_URL (default: an embedded Valkey) under a fresh key prefix, so
    it never touches a live worker's state, unless --backfill asks for exactly that.
    """
    import asyncio
    import uuid
    from datetime import UTC, datetime

    from models.bundle import BundleError
    from models.catalog import CatalogError
    from models.events import parse_time
    from stream.health import HealthMonitor
    from stream.redis_conn import RedisUnavailable
    from stream.replay import replay as run_replay
    from stream.runtime import drop_prefix, open_runtime
    from stream.settings import StreamSettings

    settings = StreamSettings(config_file=config) if config else StreamSettings()
    try:
        mapping = _mapping(
            settings.config_file, map_, map_type, naive_utc, drop_unmapped, file_order
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    prefix = (
        settings.key_prefix if backfill else f"{settings.key_prefix}-replay-{uuid.uuid4().hex[:8]}"
    )

    if once and not backfill:
        raise _fail("--once goes with --backfill")
    marker = f"{prefix}:backfilled"

    async def main() -> None:
        runtime = await open_runtime(settings, model_path=model, prefix=prefix)
        try:
            done = await runtime.connection.get(marker) if once else None
            if done is not None:
                console.print(f"already backfilled up to {done} ({marker}): nothing to do")
                return
            t0 = time.perf_counter()
            health = HealthMonitor(
                psi_threshold=settings.psi_threshold,
                psi_window=settings.psi_window,
                drift_bound=settings.drift_bound,
            )
            summary = await run_replay(
                runtime.engine,
                events,
                alerts_out,
                state_out=state_out,
                as_of=parse_time(as_of) if as_of else None,
                batch_size=batch_size,
                health=health,
                partitions=settings.input_partitions if backfill else 1,
                mapping=mapping,
            )
            elapsed = time.perf_counter() - t0
            console.print(
                f"{summary.events:,} events ({dict(summary.statuses)}), "
                f"{summary.customers:,} customers in {elapsed:.1f} s "
                f"({summary.events / max(elapsed, 1e-9):,.0f} events/s), "
                f"{summary.rescored:,} daily re-scores"
            )
            console.print(f"alerts: {dict(summary.alerts)} -> {alerts_out}")
            if summary.evicted:
                console.print(
                    f"{summary.evicted:,} event fingerprints evicted by the per-customer "
                    "cap (SEGSTREAM_DEDUPE_MAX_EVENTS): dedupe of those is best-effort"
                )
            if summary.rejected:
                console.print(f"rejected by the contract: {dict(summary.rejected)}")
            if state_out:
                console.print(f"state -> {state_out}")
            if backfill:
                upto = as_of or datetime.fromtimestamp(summary.watermark, UTC).isoformat()
                await runtime.connection.put(marker, upto)
        finally:
            if not backfill:
                await drop_prefix(runtime.connection, prefix)
            await runtime.close()

    try:
        asyncio.run(main())
    except (CatalogError, BundleError, RedisUnavailable, ValueError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def backtest(
    events: EventsOpt,
    model: Annotated[Path, typer.Option("--model", help="A bundle: DIR/current or DIR/<version>.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html and metrics.json.")],
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Evaluate alerts from this time (default: bundle's as-of)."),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="...until this time (default: the last event).")
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            exists=True,
            dir_okay=False,
            help="Migration truth CSV: customer_id, changed_at[, to_segment][, started_at] "
            "(`generate` writes one: migrations.csv).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Events per batch.")] = 1000,
    config: StreamConfigOpt = None,
    map_: MapOpt = None,
    map_type: MapTypeOpt = None,
    naive_utc: NaiveUtcOpt = False,
    drop_unmapped: DropUnmappedOpt = False,
    file_order: FileOrderOpt = False,
) -> None:
    """Measure how right the alerts are: replay a history through the worker's engine.

    Churn alerts are judged from the history itself, migrations against --truth. Uses
    SEGSTREAM_REDIS_URL (default: an embedded Valkey) under a scratch key prefix that is
    deleted, and the SEGSTREAM_* alert thresholds, as `replay` does.
    """
    from models.bundle import BundleError
    from models.catalog import CatalogError
    from segstream.backtest import TruthError
    from segstream.backtest_report import write_report
    from segstream.backtest_run import backtest as run_backtest
    from stream.redis_conn import RedisUnavailable
    from stream.settings import StreamSettings

    t0 = time.perf_counter()
    try:
        settings = StreamSettings(config_file=config) if config else StreamSettings()
        mapping = _mapping(
            settings.config_file, map_, map_type, naive_utc, drop_unmapped, file_order
        )
        metrics, run = run_backtest(
            settings, events, model, out, truth=truth, start=from_, end=to,
            batch_size=batch_size, mapping=mapping,
        )  # fmt: skip
    except (CatalogError, BundleError, RedisUnavailable, TruthError, ValueError) as exc:
        raise _fail(str(exc)) from None
    write_report(metrics, out)
    console.print(
        f"{run.summary.events:,} events replayed in {time.perf_counter() - t0:.1f} s; "
        f"alerts -> {out / 'alerts.jsonl'}"
    )
    churn = metrics["churn"]
    console.print(
        f"churn: {churn['alerts']} alerts, precision {churn['precision']}, recall "
        f"{churn['recall']}, lead time median {churn['lead_time_days']['median']} d"
    )
    if "migrations" in metrics:
        m = metrics["migrations"]
        console.print(
            f"migrations: precision {m['precision']} ({m['precision_all']} counting "
            f"{m['churn_led']} churn-led and {m['unresolved']} unresolved alerts as "
            f"wrong), recall {m['recall']}, delay median "
            f"{m['delay_days']['median']} d{_interval(m['delay_days']['median_ci95'])} "
            f"({m['delay_days_settled']['median']} d over the "
            f"{m['changes'] - m['settling']} changes of customers settled at the change), "
            f"flap rate {m['flap_rate_per_30d']} per 30 d"
        )
    console.print(f"report -> {out / 'report.html'}, {out / 'metrics.json'}")


def _interval(ci: list[float] | None) -> str:
    """A median's 95 % interval for a summary line ("" without one)."""
    return f" [95 % CI {ci[0]} to {ci[1]}]" if ci else ""


@app.command()
def worker(
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Run the live worker: events in, segment and churn alerts out, in real time.

    Every setting comes from SEGSTREAM_* variables (see the README's configuration
    table): it consumes SEGSTREAM_INPUT_TOPIC in batches, publishes alerts to the
    assignment, migration, churn, population and model topics and bad events to
    SEGSTREAM_DLQ_TOPIC, serves Prometheus metrics on SEGSTREAM_METRICS_PORT and
    GET /customers/{id} on SEGSTREAM_WEB_PORT. The same as `faust -A stream.app worker`.
    """
    from models.bundle import BundleError
    from models.catalog import CatalogError, load_catalog

    try:
        from stream import app as faust_app  # builds StreamSettings() from the environment
        from stream.runtime import load_model

        settings = faust_app.app.segstream.settings
        load_model(settings, load_catalog(settings.config_file))  # fail fast on a bad bundle
    except (CatalogError, BundleError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    import faust

    faust.Worker(faust_app.app, loglevel=log_level).execute_from_commandline()


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="How many customers to generate.")] = 2000,
    days: Annotated[int, typer.Option(help="Days of history; the last 14 stream live.")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed of the history and the bundle.")] = 1,
    rate: Annotated[float, typer.Option(help="Events per second in the live part.")] = 500.0,
    duration: Annotated[
        float | None,
        typer.Option(
            help="Stop after this many seconds of streaming (default: the history's end)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Work folder (default: a temporary one).")
    ] = None,
) -> None:
    """Run everything on this machine and watch customers move between segments live.

    Starts an embedded Kafka-compatible broker (Tansu) and an embedded Valkey on free
    loopback ports (or uses SEGSTREAM_BROKER_URL and SEGSTREAM_REDIS_URL), generates a
    history, trains a bundle on all but its last 14 days, backfills Redis with those days
    (as `replay --backfill` does), runs the worker, streams the last 14 days at --rate and
    shows the output live.
    Ctrl-C stops it and everything it started.
    """
    import os
    import tempfile

    from rich.console import Console as StdoutConsole

    from segstream.demo import DemoError, DemoOptions, run_demo, summary_lines

    screen = StdoutConsole(soft_wrap=True)  # plain lines stay whole in CI logs
    with tempfile.TemporaryDirectory(prefix="segstream-demo-") as scratch:
        try:
            options = DemoOptions(
                out=out or Path(scratch),
                customers=customers,
                days=days,
                seed=seed,
                rate=rate,
                duration=duration,
                broker_url=os.environ.get("SEGSTREAM_BROKER_URL") or None,
                redis_url=os.environ.get("SEGSTREAM_REDIS_URL") or None,
            )
            summary = run_demo(options, screen)
        except DemoError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            typer.echo("interrupted during setup; everything started was stopped", err=True)
            raise typer.Exit(130) from None
    for line in summary_lines(summary):
        screen.print(line, highlight=False, markup=False)


@app.command()
def compare(
    live: Annotated[Path, typer.Option("--live", help="Live bundle: DIR/current or DIR/<ver>.")],
    candidate: Annotated[
        Path, typer.Option("--candidate", help="Candidate bundle: DIR/<version>.")
    ],
    events: EventsOpt,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Score customers at this RFC 3339 time (default: last)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for compare.html and compare.json.")
    ] = Path("compare"),
    config: ConfigOpt = None,
    early_days: Annotated[
        float, typer.Option(help="Younger customers are placed by the early-life classifier.")
    ] = 30.0,
) -> None:
    """Compare two bundles on the same customers: segments kept, churn scores, alerts."""
    from datetime import UTC, datetime

    from models.bundle import BundleError, load_bundle
    from models.catalog import CatalogError, load_catalog
    from models.events import parse_time
    from offline.compare import compare as run_compare
    from offline.compare import write_html
    from offline.reference import load_frame
    from segstream.views import comparison_tables

    try:
        catalog = load_catalog(config)
        live_bundle = load_bundle(live, catalog)
        cand_bundle = load_bundle(candidate, catalog)
        frame = load_frame(events, catalog)
        if frame.empty:
            raise ValueError(f"{events}: no valid event")
        at = parse_time(as_of) if as_of else float(frame["ts"].max())
        shown = as_of or datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
        result = run_compare(live_bundle, cand_bundle, frame, catalog, at, shown, early_days)
        paths = write_html(result, out)
    except (CatalogError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from None
    screen = Console()
    for table in comparison_tables(result):
        screen.print(table)
    console.print(f"wrote {paths[0]} and {paths[1]}")


GateDropOpt = Annotated[float | None, typer.Option(help="Override the [gates] table.")]


@app.command()
def promote(
    version: Annotated[Path, typer.Argument(help="The bundle to make live: DIR/<version>.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            exists=True,
            dir_okay=False,
            help="TOML config: \\[catalog] (the stream's) and \\[gates.max_drop], \\[gates.min].",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even when gates fail (recorded).")
    ] = False,
    max_silhouette_drop: GateDropOpt = None,
    max_stability_drop: GateDropOpt = None,
    max_churn_auc_drop: GateDropOpt = None,
) -> None:
    """Make a bundle live: verify it, check the quality gates, switch DIR/current.

    The gates compare the candidate's silhouette, stability and churn ROC AUC with the
    live bundle's (by default none may drop by more than 0.05, 0.05 and 0.02). A refused
    candidate exits with 1 and the reasons. Every switch is logged in DIR/history.jsonl.
    """
    from datetime import UTC, datetime

    from rich.table import Table

    from models.bundle import BundleError
    from models.catalog import CatalogError, load_catalog
    from models.promote import GateResult, Gates, PromotionRefused
    from models.promote import promote as run_promote

    def show(results: list[GateResult]) -> None:
        table = Table(title="quality gates")
        for col in ("metric", "candidate", "live", "result"):
            table.add_column(col)
        for r in results:
            table.add_row(
                r.metric,
                "-" if r.candidate is None else f"{r.candidate:.3f}",
                "-" if r.live is None else f"{r.live:.3f}",
                "pass" if r.passed else f"FAIL: {r.reason}",
            )
        console.print(table)

    try:
        catalog = load_catalog(config)
        gates = Gates.load(
            config,
            silhouette=max_silhouette_drop,
            stability_ari=max_stability_drop,
            churn_auc=max_churn_auc_drop,
        )
        done = run_promote(version, catalog, gates, force=force, at=datetime.now(UTC))
    except PromotionRefused as exc:
        show(exc.results)
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(1) from None
    except (CatalogError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from None
    show(done.results)
    if not done.changed:
        console.print(f"{done.bundle.version} is already live; nothing changed")
        return
    if done.forced:
        failed = "; ".join(r.reason for r in done.results if not r.passed)
        console.print(
            f"[bold red]FORCED: {done.bundle.version} promoted although its gates failed "
            f"({failed}); recorded in history.jsonl[/]",
            markup=True,
            highlight=False,
        )
    console.print(
        f"promoted {done.bundle.version} (was {done.previous or 'none'}); "
        f"roll back with `segstream rollback {done.bundle.path.parent}`"
    )


@app.command()
def rollback(
    model_dir: Annotated[
        Path,
        typer.Argument(
            envvar="SEGSTREAM_MODEL_DIR", help="Model folder holding current and history.jsonl."
        ),
    ],
    config: ConfigOpt = None,
) -> None:
    """Make the version that was live before the live one live again (verified first)."""
    from datetime import UTC, datetime

    from models.bundle import BundleError, resolve_current
    from models.catalog import CatalogError, load_catalog
    from models.promote import rollback as run_rollback

    try:
        catalog = load_catalog(config)
        before = resolve_current(model_dir).name
        bundle = run_rollback(model_dir, catalog, at=datetime.now(UTC))
    except (CatalogError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"rolled back from {before} to {bundle.version}")


if __name__ == "__main__":  # pragma: no cover
    app()
