"""Backoff: the one retry loop of the worker and its faust app.

A failed step waits 0.2 s, doubling up to 5 s, and runs again, for as long as it takes:
for failures that retrying fixes (Redis or the broker away for a while). Failures that
retrying cannot fix are not retried here: see `stream.worker.Worker.run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: Backoff: first wait, factor, longest wait (seconds).
RETRY_FIRST, RETRY_FACTOR, RETRY_MAX = 0.2, 2.0, 5.0


def delays() -> Iterator[float]:
    """The waits between tries, without end.

    >>> import itertools
    >>> list(itertools.islice(delays(), 7))
    [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    """
    delay = RETRY_FIRST
    while True:
        yield delay
        delay = min(delay * RETRY_FACTOR, RETRY_MAX)


async def until_done(
    what: str,
    step: Callable[[], Awaitable[T]],
    *,
    errors: tuple[type[BaseException], ...] = (Exception,),
    on_error: Callable[[str, BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run `step` until it succeeds; each failure in `errors` is reported to `on_error`
    (what, the error, the coming wait) and waited out. Others, and cancellation, raise."""
    for delay in delays():
        try:
            return await step()
        except errors as exc:
            if on_error is not None:
                on_error(what, exc, delay)
            await sleep(delay)
    raise AssertionError("unreachable: delays() never ends")


__all__ = ["RETRY_FACTOR", "RETRY_FIRST", "RETRY_MAX", "delays", "until_done"]
