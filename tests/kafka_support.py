"""Pytest plugin: a Kafka-compatible broker for the whole test session.

`kafka_broker` is an embedded Tansu broker (`stream.broker.start_embedded_broker`, memory
storage, stopped at the end of the session), or, when ``SEGSTREAM_TEST_BROKER_URL`` is set
(``kafka://host:port`` or ``host:port``), a stand-in for that external broker whose `stop`
does nothing. Tests must use unique topic names and group ids: the broker is shared.

Registered from conftest.py with ``pytest_plugins = ["tests.kafka_support"]``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.broker import start_embedded_broker

ENV_VAR = "SEGSTREAM_TEST_BROKER_URL"


class KafkaBroker(Protocol):
    """What tests need from a broker."""

    @property
    def url(self) -> str: ...  # kafka://host:port, for faust

    @property
    def bootstrap(self) -> str: ...  # host:port, for aiokafka

    def stop(self) -> None: ...


@dataclass(frozen=True)
class ExternalBroker:
    """A broker someone else runs; `stop` leaves it alone."""

    bootstrap: str

    @classmethod
    def from_url(cls, url: str) -> ExternalBroker:
        """Accept ``kafka://host:port``, ``host:port`` or a comma-separated list of either."""
        hosts = [part.strip().removeprefix("kafka://") for part in url.split(",")]
        return cls(",".join(host.rstrip("/") for host in hosts if host))

    @property
    def url(self) -> str:
        return ";".join(f"kafka://{host}" for host in self.bootstrap.split(","))

    def stop(self) -> None:
        return None


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """The session's broker: embedded Tansu, or the one named by SEGSTREAM_TEST_BROKER_URL."""
    external = os.environ.get(ENV_VAR)
    if external:
        yield ExternalBroker.from_url(external)
        return
    broker = start_embedded_broker()
    try:
        yield broker
    finally:
        broker.stop()


async def read_all(bootstrap: str, topic: str, timeout: float = 20) -> dict[int, list[Any]]:
    """Every record in `topic` by partition, read until each partition's fetch highwater.

    Not ``end_offsets()``: Tansu 0.6 answers ListOffsets(latest) with the base offset of the
    partition's last record batch + 1, which is short when producers batch (faust does).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for tp, batch in (await consumer.getmany(timeout_ms=200)).items():
                records[tp.partition].extend(batch)
            ends = [consumer.highwater(tp) for tp in tps]
            positions = [await consumer.position(tp) for tp in tps]
            if None not in ends and positions == ends:
                return records
        raise AssertionError(f"could not read {topic} to its end in {timeout}s")
    finally:
        await consumer.stop()
