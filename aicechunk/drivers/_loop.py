"""What belongs to one event loop: values per loop, clients per loop, closing at loop end.

Network clients and asyncio primitives belong to the loop that made them. A driver keeps
them here, made lazily in the loop that uses them, so the same driver works from
``asyncio.run`` called several times, from zarr's synchronous API (which runs its own
loop) and after unpickling. A client nobody closed is closed when its loop ends, not
reported as unclosed by the garbage collector.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Client", "LoopClients", "LoopLocal", "close_at_loop_end", "forget_at_loop_end"]

T = TypeVar("T")
C = TypeVar("C")


class LoopLocal(Generic[T]):
    """One value per running event loop, made by ``factory`` on first use in that loop."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        """The value for the running loop."""
        loop = asyncio.get_running_loop()
        try:
            return self._values[loop]
        except KeyError:
            value = self._factory()
            self._values[loop] = value
            return value

    def pop_current(self) -> T | None:
        """Remove and return the running loop's value, if it has one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._values.pop(loop, None)

    def discard(self, value: T) -> None:
        """Forget the running loop's value if it is ``value``."""
        loop = asyncio.get_running_loop()
        if self._values.get(loop) is value:
            del self._values[loop]

    def in_use(self) -> bool:
        """Whether a loop that is not closed still holds a value."""
        return any(not loop.is_closed() for loop in list(self._values))


# --- closing at loop end ---------------------------------------------------------------


class _LoopEnd:
    """Closers to run when an event loop shuts down (see ``close_at_loop_end``)."""

    def __init__(self) -> None:
        self.closers: dict[int, Callable[[], Awaitable[object]]] = {}
        self.runner: AsyncIterator[None] | None = None


_LOOP_ENDS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopEnd] = (
    weakref.WeakKeyDictionary()
)


async def _run_at_loop_end(end: _LoopEnd) -> AsyncIterator[None]:
    # A started async generator is finalized by the loop's shutdown_asyncgens(), which
    # asyncio.run (and asyncio.Runner) await before closing the loop: its finally block
    # is the one place a library can still await inside a loop that is ending.
    try:
        yield
    finally:
        await _close_now(end)


async def _close_now(end: _LoopEnd) -> None:
    closers, end.closers = list(end.closers.values()), {}
    for close in closers:
        with contextlib.suppress(Exception):
            await close()


@atexit.register
def _close_in_loops_still_running() -> None:
    # Loops that never end before the interpreter does (zarr's synchronous API runs one
    # on a daemon thread; spawned pool workers exit that way) get their closers run here,
    # in their own thread, instead of the garbage collector reporting unclosed sessions.
    for loop, end in list(_LOOP_ENDS.items()):
        if end.closers and loop.is_running() and not loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_close_now(end), loop).result(timeout=5)


async def close_at_loop_end(token: object, close: Callable[[], Awaitable[object]]) -> None:
    """Run ``close()`` when the running loop shuts down (``asyncio.run`` returning), so
    network sessions a user never closed are closed properly instead of being reported
    as unclosed by the garbage collector. ``forget_at_loop_end(token)`` cancels it;
    ``close`` should keep ``token`` alive (the registration is keyed by its identity)."""
    loop = asyncio.get_running_loop()
    end = _LOOP_ENDS.get(loop)
    if end is None:
        end = _LoopEnd()
        _LOOP_ENDS[loop] = end
        runner = _run_at_loop_end(end)
        await runner.__anext__()
        end.runner = runner
    end.closers[id(token)] = close


def forget_at_loop_end(token: object) -> None:
    """Cancel a ``close_at_loop_end`` registration made in the running loop."""
    with contextlib.suppress(RuntimeError):
        end = _LOOP_ENDS.get(asyncio.get_running_loop())
        if end is not None:
            end.closers.pop(id(token), None)


# --- one client per loop ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Client(Generic[C]):
    """A network client open in one loop, the bound on its requests in flight, and how
    to let it go (close it, or give back a share of a client others use too)."""

    value: C
    limit: asyncio.Semaphore
    release: Callable[[], Awaitable[object]]

    async def aclose(self) -> None:
        """Let the client go."""
        await self.release()


class LoopClients(Generic[C]):
    """A driver's clients: one per running loop, opened by ``open`` on first use (once,
    however many tasks ask at the same time; a failed opening is not kept), released by
    ``close()`` or when the loop ends."""

    def __init__(self, open: Callable[[], Awaitable[Client[C]]]) -> None:
        self._open = open
        self._opening: LoopLocal[asyncio.Future[Client[C]]] = LoopLocal(
            lambda: asyncio.ensure_future(self._open_until_loop_end())
        )

    async def _open_until_loop_end(self) -> Client[C]:
        client = await self._open()
        await close_at_loop_end(client, client.aclose)
        return client

    async def get(self) -> Client[C]:
        """The running loop's client, opened if need be."""
        opening = self._opening.get()
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            return opening.result()  # the common case, without a shield per call
        try:
            # shielded: a caller cancelled while waiting leaves the opening to the others
            return await asyncio.shield(opening)
        except BaseException:
            if opening.done() and (opening.cancelled() or opening.exception() is not None):
                self._opening.discard(opening)  # the next call tries again
            raise

    async def close(self) -> None:
        """Release the running loop's client; the next use opens another."""
        opening = self._opening.pop_current()
        if opening is None:
            return
        try:
            client = await asyncio.shield(opening)
        except Exception:
            return  # it never opened: nothing to release
        forget_at_loop_end(client)
        await client.aclose()
