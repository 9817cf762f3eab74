"""Which input partition a customer's events land in: the producer's default partitioner.

Producers key events by customer id; Kafka's default partitioner (the Java client's, and
aiokafka's) puts a key in ``murmur2(key) & 0x7fffffff`` modulo the partition count. A
backfill (`segstream replay --backfill`) schedules each customer's daily re-score in that
partition, so the worker that owns the partition, and no other, re-scores it.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_of(customer_id: str, partitions: int) -> int:
    """The partition the default partitioner gives a record keyed by `customer_id`.

    >>> [partition_of(c, 8) for c in ("c0001", "c0002", "guest")]
    [3, 5, 6]
    >>> partition_of("anyone", 1)
    0
    """
    return int(murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions


__all__ = ["partition_of"]
