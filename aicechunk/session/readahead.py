"""Read-ahead of native chunks for sessions that read an array in order.

zarr asks a store for at most ``async.concurrency`` (10) chunks at once, in the order of
the chunk grid. Against an object store that answers in tens of milliseconds, those ten
round trips, not the client, bound a read. When a session's reads of one array's chunks
come in grid order (C order), ``ReadAhead`` fetches the next ones concurrently, at most
``chunks`` of them and ``max_bytes`` of bytes not yet read, and serves the later reads
from what it fetched. Native chunk files never change once written (a new write is a new
file), and a prefetched chunk is only used when the reference read asks for that very
file, so what is served is always right.

A read outside the run (not in grid order) ends it: what was fetched ahead for that array
is dropped (fetches under way are cancelled). So does a new chunk grid (a resize). A run
not read during the session's last ``chunks`` reads is idle (a preview that read an
array's first chunks and moved on): when the bytes bound is reached, idle runs are
dropped, least recently read first, so that their unread prefetches neither hold the
bound for ever nor keep their bytes alive. Fetches ahead belong to the loop of the read
that started them: a read on another loop (sync code running each call with
``asyncio.run``, whose loop cancels what is left when the call returns) drops them and
starts none, so a loop per read fetches nothing twice; reads that share a loop fetch
ahead from their second read on. Fetching stops at the end of the grid and
skips chunks with no native reference (inline, virtual, unwritten) and chunks the
session is still uploading (their reads come from its buffer). A commit, rebase or
discard lets go of everything fetched ahead (``clear``). Reads of part of a
chunk (a shard's inner chunks) neither start nor use a run. A failed prefetch
costs nothing but its request: the read that wanted the chunk fetches it itself, and a
read that did not need it never sees the failure.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aicechunk.drivers.base import RangeRequest
from aicechunk.format import Coords
from aicechunk.format.ids import ChunkId, NodeId
from aicechunk.format.manifest import ChunkRef, NativeRef

__all__ = ["ReadAhead"]

Fetch = Callable[[ChunkId, RangeRequest], Coroutine[Any, Any, bytes]]
RefOf = Callable[[Coords], Awaitable[ChunkRef | None]]
#: a read this close to the end of the run (in chunks) still counts as in order: zarr's
#: concurrent reads reach the store in roughly, not exactly, grid order
SLACK = 2
#: reads in order before fetching ahead starts
RUN_TO_START = 2


@dataclass(slots=True)
class _Ahead:
    chunk_id: ChunkId
    request: RangeRequest
    task: asyncio.Task[bytes]


@dataclass(slots=True)
class _Run:
    """One array's reads: the furthest chunk read, how many came in order, and what is
    fetched ahead (by linear index in the grid)."""

    grid: tuple[int, ...]
    used: int = 0  # the session's read count at this run's latest read
    last: int = -1
    in_order: int = 0
    frontier: int = -1
    ahead: dict[int, _Ahead] = field(default_factory=dict)


def linear(coords: Coords, grid: tuple[int, ...]) -> int:
    """The C-order position of ``coords`` in ``grid``."""
    index = 0
    for c, n in zip(coords, grid, strict=True):
        index = index * n + c
    return index


def unravel(index: int, grid: tuple[int, ...]) -> Coords:
    """The coordinates at C-order position ``index`` of ``grid``."""
    out = []
    for n in reversed(grid):
        index, c = divmod(index, n)
        out.append(c)
    return tuple(reversed(out))


class ReadAhead:
    """A session's read-ahead: ``chunks`` ahead at most, ``max_bytes`` of fetched bytes
    not yet read at most (``chunks=0``: off)."""

    def __init__(self, fetch: Fetch, *, chunks: int, max_bytes: int) -> None:
        self._fetch = fetch
        self.chunks = chunks
        self.max_bytes = max_bytes
        self._start_afresh()

    def _start_afresh(self) -> None:
        self._runs: dict[NodeId, _Run] = {}
        self._held = 0
        self._reads = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # that of the latest read
        self.prefetched = 0  # fetches started ahead (for tests and benchmarks)

    def __getstate__(self) -> dict[str, Any]:
        # a session pickled (to a worker process) takes the settings, not the fetches
        return {"fetch": self._fetch, "chunks": self.chunks, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._fetch, self.chunks, self.max_bytes = (
            state["fetch"],
            state["chunks"],
            state["max_bytes"],
        )
        self._start_afresh()

    async def read(
        self,
        node: NodeId,
        grid: tuple[int, ...],
        coords: Coords,
        ref: NativeRef,
        request: RangeRequest,
        ref_of: RefOf,
    ) -> bytes:
        """The bytes ``request`` asks of ``ref``'s chunk file (the chunk at ``coords`` of
        array ``node``, whose grid is ``grid``); may fetch the next chunks ahead."""
        whole = request.offset == ref.offset and request.length == ref.length
        if self.chunks <= 0 or len(coords) != len(grid) or not whole:
            # parts of chunks (shards) are not read ahead: a reader may want few of them
            return await self._fetch(ref.chunk_id, request)
        loop = asyncio.get_running_loop()
        same_loop = loop is self._loop
        if not same_loop:  # what was fetched ahead was for another loop's reads
            self.clear()
            self._loop = loop
        run = self._runs.pop(node, None)  # put back last: the runs go least recent first
        if run is not None and run.grid != grid:
            self._end(run)  # resized: its fetches ahead follow the old grid
            run = None
        run = self._runs[node] = run or _Run(grid)
        self._reads += 1
        run.used = self._reads
        index = linear(coords, grid)
        ahead = run.ahead.pop(index, None)
        if ahead is not None:
            self._held -= ahead.request.length
        if ahead is not None or run.last - SLACK <= index <= run.last + 1 + SLACK:
            run.in_order += 1
            run.last = max(run.last, index)
        else:
            self._end(run)
            run.last, run.in_order = index, 1
        if run.in_order >= RUN_TO_START and same_loop:
            await self._fill(run, index, ref_of)
        if ahead is not None and ahead.chunk_id == ref.chunk_id:
            data = await self._result(ahead)
            if data is not None:
                start = request.offset - ahead.request.offset
                if start >= 0 and start + request.length <= len(data):
                    return data[start : start + request.length]
        return await self._fetch(ref.chunk_id, request)

    async def _result(self, ahead: _Ahead) -> bytes | None:
        """What a prefetch fetched; ``None`` if it failed or belongs to another loop."""
        task = ahead.task
        if task.get_loop() is not asyncio.get_running_loop():
            return None
        # a read cancelled while it waits leaves the prefetch be (it is dropped anyway)
        await asyncio.wait({task})
        if task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def _fill(self, run: _Run, index: int, ref_of: RefOf) -> None:
        total = math.prod(run.grid)
        loop = asyncio.get_running_loop()
        start = max(run.frontier, index) + 1
        for j in range(start, min(total, index + 1 + self.chunks)):
            if len(run.ahead) >= self.chunks:
                break
            ref = await ref_of(unravel(j, run.grid))
            run.frontier = j
            if not isinstance(ref, NativeRef) or j in run.ahead:
                continue
            if self._held + ref.length > self.max_bytes and not self._make_room(run, ref.length):
                run.frontier = j - 1  # try again once reads make room
                break
            request = RangeRequest(ref.offset, ref.length)
            task = loop.create_task(self._fetch(ref.chunk_id, request))
            task.add_done_callback(_quiet)
            run.ahead[j] = _Ahead(ref.chunk_id, request, task)
            self._held += ref.length
            self.prefetched += 1

    def _make_room(self, current: _Run, size: int) -> bool:
        """Drop idle runs, least recently read first, until ``size`` more bytes fit;
        whether they do."""
        for run in list(self._runs.values()):
            if self._held + size <= self.max_bytes:
                break
            if run is not current and run.ahead and self._reads - run.used >= self.chunks:
                self._end(run)
        return self._held + size <= self.max_bytes

    def _end(self, run: _Run) -> None:
        """Drop what was fetched ahead for ``run`` (a read broke the order)."""
        for ahead in run.ahead.values():
            _cancel(ahead.task)
            self._held -= ahead.request.length
        run.ahead.clear()
        run.frontier = -1

    def clear(self) -> None:
        """Drop everything fetched ahead (the session's snapshot changed)."""
        for run in self._runs.values():
            self._end(run)
        self._runs.clear()


def _cancel(task: asyncio.Task[bytes]) -> None:
    """Cancel ``task`` from any thread (on its loop's thread if that is another)."""
    other = task.get_loop()
    if task.done() or other.is_closed():
        return
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if other is running:
        task.cancel()
    else:
        other.call_soon_threadsafe(task.cancel)


def _quiet(task: asyncio.Task[bytes]) -> None:
    # a prefetch's failure is only the reader's business if it needs the chunk
    if not task.cancelled():
        task.exception()
