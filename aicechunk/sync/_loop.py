"""The one event loop the synchronous facade runs the async core on.

It is zarr's: zarr's synchronous API (``zarr.open_array(...)[...] = ...``) runs the store's
coroutines on a daemon thread with its own loop, and the facade runs sessions and
repositories on that same loop, so the network clients the drivers make per loop are made
once, not once for zarr and once for the facade. zarr starts the loop lazily, from any
thread, and forgets it in a child process after ``fork`` (``os.register_at_fork``), so a
worker process starts a loop of its own on first use; a spawned worker starts one anyway.

A blocking call waits on the calling thread only: from a thread whose own loop is running
(a notebook cell, a coroutine) it blocks that loop until the work is done, as icechunk's
calls do. Only a blocking call made *on* the facade's loop thread could never finish; it
raises ``EventLoopError`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

from zarr.core.sync import _get_loop as _zarr_loop

from aicechunk.errors import EventLoopError

__all__ = ["facade_loop", "iterate", "run"]

T = TypeVar("T")


def facade_loop() -> asyncio.AbstractEventLoop:
    """The loop blocking calls run on (zarr's I/O loop, started on first use)."""
    return _zarr_loop()


def _refuse_on_own_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    if running is loop:
        raise EventLoopError(
            "a blocking aicechunk.sync call was made on the facade's own event loop thread, "
            "where it would wait forever: await the call's *_async twin there instead"
        )


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the facade's loop and wait for its result on this thread.

    If the wait is interrupted (``KeyboardInterrupt``), the coroutine is cancelled.
    """
    loop = facade_loop()
    try:
        _refuse_on_own_loop(loop)
    except EventLoopError:
        coro.close()
        raise
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def iterate(items: AsyncIterator[T]) -> Iterator[T]:
    """A synchronous iterator over an async one, one item per step (lazy: breaking out
    early reads no more, and the async iterator is closed)."""
    try:
        while True:
            try:
                item = run(_await(anext(items)))
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            # closed by the garbage collector maybe on the loop thread itself: then let go
            with contextlib.suppress(EventLoopError, RuntimeError):
                run(aclose())
