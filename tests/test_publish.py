"""The worker's publish on a real broker: a record the broker refuses for good is dropped
and counted, the others are delivered, and nothing is retried without end."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from stream.app import new_app, publisher
from stream.broker import create_topics
from stream.metrics import Metrics
from stream.worker import Output
from tests.kafka_support import KafkaBroker
from tests.support import records_by_topic, settings_for

pytestmark = pytest.mark.slow


def test_a_record_too_large_to_send_is_dropped_and_the_rest_delivered(
    kafka_broker: KafkaBroker, embedded_redis_url: str
) -> None:
    settings = settings_for(kafka_broker, embedded_redis_url)
    topic = settings.assignments_topic
    metrics = Metrics(CollectorRegistry())
    huge = b"x" * (2 * 1024 * 1024)  # over the producer's 1 MB max_request_size
    outputs = [Output(topic, "a", b'{"n": 1}'), Output(topic, "b", huge), Output(topic, "c", b"{}")]

    async def scenario() -> list[bytes]:
        await create_topics(kafka_broker.bootstrap, {topic: 1})
        app = new_app(settings)
        try:
            await asyncio.wait_for(publisher(app, metrics)(outputs), timeout=60)
        finally:
            await app.producer.stop()
        found = await records_by_topic(kafka_broker.bootstrap, [topic])
        return [r.value for r in found[topic]]

    delivered = asyncio.run(scenario())
    assert delivered == [b'{"n": 1}', b"{}"]
    refused = metrics.registry.get_sample_value(
        "segstream_records_unpublishable_total", {"reason": "MessageSizeTooLargeError"}
    )
    assert refused == 1
