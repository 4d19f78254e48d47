"""When work leaves the event loop: CPU-heavy encoding and decoding go to a worker thread
once they are big enough to stall other tasks, and stay inline when the thread hop would
cost more than the work.

The thresholds live here, once; domain code says what it does and how big it is.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "DECODE_BYTES_OFF_LOOP",
    "ENCODE_ITEMS_OFF_LOOP",
    "LOG_ROWS_OFF_LOOP",
    "off_loop",
    "start_now",
]

#: Files of at least this many stored bytes are decoded in a worker thread.
DECODE_BYTES_OFF_LOOP = 256 * 1024
#: Snapshots and transaction logs of at least this many entries are encoded in a thread.
ENCODE_ITEMS_OFF_LOOP = 10_000
#: A transaction log of at least this many chunk changes is built in a worker thread.
LOG_ROWS_OFF_LOOP = 10_000

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop(big: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``, in a worker thread if ``big`` (else inline: a thread hop
    costs tens of microseconds, more than small work)."""
    if big:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def start_now(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task running ``coro``, whose first step runs now, before this returns (Python
    3.12's eager start), up to its first wait: the I/O it starts is handed over before
    the caller goes on with work that holds the loop, and so joins the I/O handed over
    just before it, where ``create_task`` would start it only at the loop's next turn
    (as it still does on Python 3.11)."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, eager_start=True)
    return loop.create_task(coro)  # pragma: no cover - Python 3.11
