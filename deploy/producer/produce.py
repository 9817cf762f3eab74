"""Demo producer: stream the recent part of a JSONL history to Kafka at a steady pace.

Reads a history written by ``segstream generate`` (one event object per line), keeps the
events of the last ``--since-days`` days (counted back from the newest event in the file;
0 keeps everything), and produces each raw line unchanged to ``--topic``, keyed by its
``customer_id`` (so a customer's events stay in order on one partition), at ``--rate``
events per second. Lines that are not JSON objects are sent as they are, without a key:
the worker sends them to ``events-dlq``, which is what a demo of the dead-letter path wants.

Used by docker-compose.yml (service ``producer``); on the host::

    python deploy/producer/produce.py --bootstrap localhost:19092 \\
        --file out/history/events.jsonl --since-days 14 --rate 200

Needs only aiokafka (a dependency of segstream). Stops by itself at the end of the file
(or after ``--limit`` events) and prints what it sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer


def _ts(line: str) -> datetime | None:
    """The event time of one JSONL line, or None when the line has no readable ``ts``."""
    try:
        obj = json.loads(line)
        return datetime.fromisoformat(str(obj["ts"]).replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        return None


def newest(path: Path) -> datetime | None:
    """The newest event time in the file (one pass; files are not assumed sorted)."""
    best: datetime | None = None
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            ts = _ts(line)
            if ts is not None and ts.tzinfo is not None and (best is None or ts > best):
                best = ts
    return best


def selected(path: Path, since: datetime | None) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) of every line at or after `since` (all lines when `since` is None)."""
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                yield None, line.encode()
                continue
            if since is not None:
                ts = _ts(line)
                if ts is not None and ts.tzinfo is not None and ts < since:
                    continue
            customer = obj.get("customer_id")
            key = str(customer).encode() if customer is not None else None
            yield key, line.encode()


async def produce(args: argparse.Namespace) -> int:
    path = Path(args.file)
    since: datetime | None = None
    if args.since_days > 0:
        end = newest(path)
        if end is not None:
            since = end - timedelta(days=args.since_days)
    print(f"streaming {path} from {since.isoformat() if since else 'the start'} "
          f"to {args.topic} at {args.rate:g} events/s", flush=True)  # fmt: skip

    # No idempotent producer: the worker drops redeliveries by event_id anyway, and not every
    # Kafka-compatible broker (e.g. the embedded Tansu of the tests) supports InitProducerId.
    producer: AIOKafkaProducer | None = None
    for attempt in range(30):  # the broker may still be electing its controller
        candidate = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=20)
        try:
            await candidate.start()
        except Exception as exc:  # aiokafka raises several connection errors
            await candidate.stop()
            print(f"broker not ready ({exc!r}), retry {attempt + 1}/30", flush=True)
            await asyncio.sleep(2)
        else:
            producer = candidate
            break
    if producer is None:
        print("error: could not connect to the broker", file=sys.stderr)
        return 1

    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    sent = 0
    t0 = time.monotonic()
    last_report = t0
    try:
        pending = []
        for key, value in selected(path, since):
            pending.append(await producer.send(args.topic, value=value, key=key))
            sent += 1
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
            if interval:  # pace against the schedule, not per message, so sleeps add up right
                delay = t0 + sent * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            now = time.monotonic()
            if now - last_report >= 10:
                print(f"sent {sent:,} events ({sent / (now - t0):,.0f}/s)", flush=True)
                last_report = now
            if args.limit and sent >= args.limit:
                break
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    elapsed = time.monotonic() - t0
    print(f"done: {sent:,} events in {elapsed:,.1f} s", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bootstrap", default="localhost:19092", help="Kafka host:port list.")
    parser.add_argument("--topic", default="events")
    parser.add_argument("--file", required=True, help="JSONL history (segstream generate).")
    parser.add_argument(
        "--since-days", type=float, default=14.0, help="Only the last N days (0: all)."
    )
    parser.add_argument("--rate", type=float, default=200.0, help="Events per second (0: max).")
    parser.add_argument("--limit", type=int, default=0, help="Stop after N events (0: no limit).")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(produce(parse_args())))
