"""Demo producer: stream the recent part of a JSONL history to Kafka, paced, without end.

Reads a history written by ``segstream generate`` (one event object per line), keeps the
events after ``--after`` (an RFC 3339 time: the ``--as-of`` of ``segstream replay
--backfill``, which keeps the events up to it; or the last ``--since-days`` days, counted
back from the newest event), and produces them in file
order to ``--topic``, keyed by ``customer_id`` (a customer's events stay in order on one
partition), at ``--rate`` events per second. Lines that are not JSON objects are sent as
they are, without a key: the worker sends them to ``events-dlq``.

With ``--loop`` it does not stop at the end: loop *k* sends the same events again with
their ``ts`` moved *k* whole spans later (the span: whole days from ``--after`` to the
newest event) and ``-L<k>`` appended to their ``event_id``, so event time keeps moving
forward and nothing is a duplicate of what was sent before.

With ``--state FILE`` the position survives a restart, and nothing is sent twice: before
each chunk (about a second of events) the file records the position *after* it, so a
restarted producer (a crash, ``docker compose restart``, ``down`` and ``up`` the next
day) goes on from there. A crash mid-chunk skips the rest of that chunk rather than risk
a duplicate. The pace restarts from the restart: event time goes on where it stopped,
however long the producer was down. Without ``--state`` every run starts from the
beginning (and the worker drops what it already applied as duplicates).

Used by docker-compose.yml (service ``producer``); on the host, with the stack's history
copied out (see docs/operations.md)::

    python deploy/producer/produce.py --bootstrap localhost:19092 \\
        --file history/events.jsonl --after 2026-05-16T18:00:00Z --rate 20

Needs only aiokafka (a dependency of segstream). Prints what it sent every 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer

DAY = timedelta(days=1)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ts(obj: object) -> datetime | None:
    """The event time of a parsed line, or None when it has no readable aware ``ts``."""
    if not isinstance(obj, dict):
        return None
    try:
        ts = _time(str(obj["ts"]))
    except (ValueError, KeyError):
        return None
    return ts if ts.tzinfo is not None else None


@dataclass
class Record:
    """One line to send: its key, its bytes, and (for a JSON object) the parsed object."""

    key: bytes | None
    value: bytes
    obj: dict[str, object] | None


def load(path: Path, after: datetime | None, since_days: float) -> tuple[list[Record], int]:
    """The lines to stream and the loop span in whole days (at least 1)."""
    parsed: list[tuple[str, object]] = []
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            try:
                parsed.append((line, json.loads(line)))
            except ValueError:
                parsed.append((line, None))
    times = [ts for _, obj in parsed if (ts := _ts(obj)) is not None]
    newest = max(times, default=None)
    if after is None and newest is not None and since_days > 0:
        after = newest - timedelta(days=since_days)
    start = after if after is not None else min(times, default=None)
    records = []
    for line, obj in parsed:
        if not isinstance(obj, dict):
            records.append(Record(None, line.encode(), None))
            continue
        ts = _ts(obj)
        if after is not None and ts is not None and ts <= after:
            continue
        customer = obj.get("customer_id")
        key = str(customer).encode() if customer is not None else None
        records.append(Record(key, line.encode(), obj))
    span = 1
    if start is not None and newest is not None:
        span = max(1, math.ceil((newest - start) / DAY))
    return records, span


def shifted(record: Record, loop: int, span_days: int) -> bytes:
    """The record as loop `loop` sends it: ``ts`` + loop x span days, ``event_id`` suffixed.

    >>> r = Record(b"c1", b"", {"event_id": "e1", "ts": "2026-05-17T10:00:00+00:00"})
    >>> shifted(r, 2, 14)
    b'{"event_id": "e1-L2", "ts": "2026-06-14T10:00:00+00:00"}'
    """
    if loop == 0 or record.obj is None:
        return record.value
    obj = dict(record.obj)
    ts = _ts(obj)
    if ts is not None:
        obj["ts"] = (ts + loop * span_days * DAY).isoformat()
    if "event_id" in obj:
        obj["event_id"] = f"{obj['event_id']}-L{loop}"
    return json.dumps(obj).encode()


def resume(state: Path | None) -> int:
    """Where to start: the position recorded in `state`, or 0 (no state, or a first run).

    >>> resume(None)
    0
    """
    if state is None:
        return 0
    try:
        return max(0, int(json.loads(state.read_text(encoding="utf-8"))["position"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def reserve(state: Path | None, position: int) -> None:
    """Record `position` as where a restart begins, before sending what comes before it."""
    if state is None:
        return
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps({"position": position}), encoding="utf-8")
    os.replace(tmp, state)  # atomic: a crash leaves the old state or the new one


async def connect(bootstrap: str) -> AIOKafkaProducer | None:
    # No idempotent producer: the worker drops redeliveries by event_id anyway, and not every
    # Kafka-compatible broker (e.g. the embedded Tansu of the tests) supports InitProducerId.
    for attempt in range(30):  # the broker may still be electing its controller
        candidate = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        try:
            await candidate.start()
        except Exception as exc:  # aiokafka raises several connection errors
            await candidate.stop()
            print(f"broker not ready ({exc!r}), retry {attempt + 1}/30", flush=True)
            await asyncio.sleep(2)
        else:
            return candidate
    return None


async def produce(args: argparse.Namespace) -> int:
    path = Path(args.file)
    after = _time(args.after) if args.after else None
    records, span = load(path, after, args.since_days)
    if not records:
        print(f"error: no event to send in {path}", file=sys.stderr)
        return 1
    producer = await connect(args.bootstrap)
    if producer is None:
        print("error: could not connect to the broker", file=sys.stderr)
        return 1
    rate = args.rate
    state = Path(args.state) if args.state else None
    position = resume(state)
    if not args.loop and position >= len(records):
        print(f"nothing left: all {len(records):,} events were sent before", flush=True)
        await producer.stop()
        return 0
    since = args.after or f"the last {args.since_days:g} days"
    print(f"streaming {len(records):,} events of {path} after {since} "
          f"to {args.topic} at {rate:g} events/s, from position {position:,}"
          f"{f', looping every {span} days' if args.loop else ''}", flush=True)  # fmt: skip

    interval = 1.0 / rate if rate > 0 else 0.0
    chunk = max(1, min(500, int(rate) or 500))  # about a second of events
    t0 = time.monotonic()  # pace against the schedule, not per message: sleeps add up right
    sent = 0
    last_report = t0
    try:
        while args.loop or position < len(records):
            end = position + chunk if args.loop else min(position + chunk, len(records))
            if args.limit:
                end = min(end, position + args.limit - sent)
            reserve(state, end)
            pending = []
            for at in range(position, end):
                loop, index = divmod(at, len(records))
                record = records[index]
                value = shifted(record, loop, span)
                pending.append(await producer.send(args.topic, value=value, key=record.key))
                sent += 1
                if interval:
                    delay = t0 + sent * interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
            await asyncio.gather(*pending)
            position = end
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                print(f"sent {sent:,} events (position {position:,}, loop {loop})", flush=True)
            if args.limit and sent >= args.limit:
                break
    finally:
        await producer.stop()
    print(f"done: {sent:,} events sent, position {position:,}", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bootstrap", default="localhost:19092", help="Kafka host:port list.")
    parser.add_argument("--topic", default="events")
    parser.add_argument("--file", required=True, help="JSONL history (segstream generate).")
    parser.add_argument("--after", default="", help="Send the events after this time (RFC 3339).")
    parser.add_argument(
        "--since-days",
        type=float,
        default=14.0,
        help="Without --after: only the last N days (0: all).",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="Events per second (0: max).")
    parser.add_argument("--loop", action="store_true", help="Start over, later, at the end.")
    parser.add_argument("--state", default="", help="File that keeps the position (restarts).")
    parser.add_argument("--limit", type=int, default=0, help="Stop after N events (0: no limit).")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(produce(parse_args())))
