"""Write-behind of a writable session's chunk files.

zarr calls ``Store.set`` with at most ``async.concurrency`` (10) chunks in flight. Against
an object store with tens of milliseconds per request, that, not the client's CPU, bounds
a write. With write-behind, ``set`` records the chunk's reference at once and queues the
upload; uploads run ``concurrency`` at a time (the driver bounds them too), the bytes
waiting are bounded by ``max_bytes`` (``put`` waits while the buffer is full), and a
read of a chunk still uploading is served from the buffer.

Commit, flush and amend first call ``drain``: every queued upload must have landed. A
failed upload fails that call with ``ChunkUploadError`` before anything is written, so no
reference in a snapshot can point at a missing chunk; the bytes are kept and the next
``drain`` uploads them again. An upload cancelled with its event loop (``asyncio.run``
cancels what is left) is started again by ``drain`` in the loop that drains; a chunk file
found already written then (``write_once`` refused) was this upload's and counts as done.
A drain that is cancelled leaves the uploads running: they belong to this object, which
the next drain waits for. Uploads started on another running loop (zarr's synchronous API
runs the store on a loop thread of its own) are waited for on that loop, if it answers:
a loop that does not take up the wait within ``STALLED_AFTER`` seconds is blocked (a
notebook cell's loop, waiting for the synchronous commit that drains), and its uploads
are started again on the draining loop (the first to land wins; the other finds the
chunk stored). A loop that took up the wait and then stopped before answering is found
stopped when the drain looks again, at least every ``STALLED_AFTER`` seconds.

A ``put`` that finds uploads of an earlier loop cancelled because that loop closed (sync
code running each call with ``asyncio.run``) turns write-behind off for the rest of the
session: each such call writes its chunk before it returns, instead of queueing an upload
its loop will cancel and the commit send again. It is not turned back on: from inside a
put, a loop that lives on cannot be told from one that closes when the call returns, and
a guess that turned it on again would send those chunks twice. A session ends at its
commit (it is read-only then), and the next writable session starts with it on.

The byte count, the pending table and the per-loop limits are changed under a lock: puts
and finished uploads run on the threads of different loops (zarr's loop thread and the
caller's), and the room a put finds is taken in the same step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from aicechunk.errors import ChunkUploadError, PreconditionFailed, StorageError
from aicechunk.format.ids import ChunkId

__all__ = ["Uploads"]

Write = Callable[[ChunkId, bytes], Awaitable[None]]
#: seconds another running loop may take to start waiting for its uploads before it is
#: taken as blocked (its thread waits on the drain) and the uploads are redone here
STALLED_AFTER = 0.5


@dataclass(slots=True)
class _Upload:
    data: bytes
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None
    reported: bool = False
    tries: int = 0


class Uploads:
    """The chunk files a session has queued and not yet seen stored.

    ``max_bytes`` bounds the bytes held (0 turns write-behind off: ``put`` writes and
    returns when stored); ``concurrency`` how many uploads run at once."""

    def __init__(self, write: Write, *, max_bytes: int, concurrency: int) -> None:
        self._write = write
        self.max_bytes = max_bytes
        self.concurrency = max(1, concurrency)
        self._pending: dict[ChunkId, _Upload] = {}
        self._bytes = 0
        self._limits: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self._tasks: dict[asyncio.Task[None], None] = {}  # not done, oldest first
        self._loop: asyncio.AbstractEventLoop | None = None  # that of the latest put
        self._direct = False  # loops were seen closing on queued uploads: write at once
        # taken by ``put`` and ``_finish``, which run on the threads of different loops
        self._lock = threading.Lock()

    @property
    def pending_bytes(self) -> int:
        """Bytes of chunks queued, uploading or failed (held until stored)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._pending)

    def get(self, chunk_id: ChunkId) -> bytes | None:
        """The bytes of ``chunk_id`` if it is not yet known to be stored."""
        entry = self._pending.get(chunk_id)
        return None if entry is None else entry.data

    async def put(self, chunk_id: ChunkId, data: bytes) -> None:
        """Queue ``data`` as the chunk file ``chunk_id`` (waiting while the buffer is
        full); with write-behind off, write it now."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._direct = self._direct or self._cut_by(self._loop)
            self._loop = loop
        if self.max_bytes <= 0 or self._direct:
            await self._write(chunk_id, data)
            return
        while True:
            with self._lock:  # the room is taken in the step that finds it
                if not self._pending or self._bytes + len(data) <= self.max_bytes:
                    entry = _Upload(data)
                    self._pending[chunk_id] = entry
                    self._bytes += len(data)
                    break
                # the oldest upload of this loop (they start in order, so end about in order)
                oldest = next((t for t in list(self._tasks) if t.get_loop() is loop), None)
            if oldest is None:
                # nothing to wait for (failed, or uploading in another loop): no queueing
                await self._write(chunk_id, data)
                return
            await asyncio.wait({oldest})
        self._start(loop, chunk_id, entry)

    async def drain(self, needed: Callable[[], Collection[ChunkId]] | None = None) -> None:
        """Return once every queued chunk is stored; raise ``ChunkUploadError`` for the
        first that could not be (a failure is reported once: the next drain retries).
        ``needed`` gives the chunks the changes to save still name (asked only when an
        upload failed): a failed chunk outside them (overwritten, its array deleted) is
        dropped, not reported."""
        loop = asyncio.get_running_loop()
        stalled: set[asyncio.AbstractEventLoop] = set()
        while self._pending:
            failed = [
                (chunk_id, e)
                for chunk_id, e in list(self._pending.items())
                if e.error is not None and not e.reported
            ]
            if failed and needed is not None:
                named = needed()
                for chunk_id, entry in failed:
                    if chunk_id not in named:
                        self._finish(chunk_id, entry)  # nothing will reference it
                failed = [(c, e) for c, e in failed if c in named]
            if failed:
                for _, entry in failed:
                    entry.reported = True
                chunk_id, first = failed[0]
                err = first.error
                key = err.key if isinstance(err, StorageError) else None
                raise ChunkUploadError(
                    f"{len(failed)} chunk file(s) written behind could not be stored, so "
                    f"nothing was committed (the next commit tries again); first: {err}",
                    key=key or f"chunks/{chunk_id}",
                ) from err
            elsewhere: dict[asyncio.AbstractEventLoop, list[asyncio.Task[None]]] = {}
            for chunk_id, entry in list(self._pending.items()):
                task = entry.task
                if task is not None and not task.done() and task.get_loop() is not loop:
                    other = task.get_loop()
                    if other.is_running() and other not in stalled:
                        elsewhere.setdefault(other, []).append(task)  # e.g. zarr's loop
                        continue
                if task is None or task.done() or task.get_loop() is not loop:
                    # cancelled, failed before, loop gone or blocked: (re)start it here
                    self._start(loop, chunk_id, entry)
            waiting: list[asyncio.Future[object]] = []
            for other, tasks in elsewhere.items():
                started = threading.Event()
                future = asyncio.run_coroutine_threadsafe(_settled(tasks, started), other)
                if not await _taken_up(started):
                    stalled.add(other)  # blocked: the next round redoes its uploads here
                    continue
                waiting.append(asyncio.wrap_future(future))
            live = self._live(loop)
            if live:
                waiting.append(asyncio.ensure_future(asyncio.wait(live)))
            if waiting:
                # another loop may stop before the wait it took up ends (its ``asyncio.run``
                # returning): the wait is then never answered, so it is looked at again
                # every ``STALLED_AFTER`` seconds, and a loop found stopped has its
                # uploads redone here
                timeout = STALLED_AFTER if len(waiting) > bool(live) else None
                await asyncio.wait(waiting, timeout=timeout)

    def forget_failed(self) -> None:
        """Drop the chunks whose upload failed (their references were discarded)."""
        for chunk_id, entry in list(self._pending.items()):
            if entry.error is not None:
                self._finish(chunk_id, entry)

    # -- internals ------------------------------------------------------------------------

    def _cut_by(self, loop: asyncio.AbstractEventLoop | None) -> bool:
        """Whether ``loop`` closed and cancelled uploads it was running."""
        if loop is None or not loop.is_closed():
            return False
        return any(
            e.task is not None and e.task.get_loop() is loop and e.task.cancelled()
            for e in list(self._pending.values())
        )

    def _live(self, loop: asyncio.AbstractEventLoop) -> set[asyncio.Task[None]]:
        return {
            e.task
            for e in list(self._pending.values())  # a snapshot: other loops' threads finish uploads
            if e.task is not None and not e.task.done() and e.task.get_loop() is loop
        }

    def _start(self, loop: asyncio.AbstractEventLoop, chunk_id: ChunkId, entry: _Upload) -> None:
        entry.error, entry.reported = None, False
        entry.tries += 1
        with self._lock:  # loops of two threads may add theirs at once
            limit = self._limits.get(loop)
            if limit is None:
                self._limits = {lp: s for lp, s in self._limits.items() if not lp.is_closed()}
                limit = self._limits[loop] = asyncio.Semaphore(self.concurrency)
        task = entry.task = loop.create_task(self._upload(limit, chunk_id, entry))
        self._tasks[task] = None
        task.add_done_callback(self._tasks.pop)

    async def _upload(self, limit: asyncio.Semaphore, chunk_id: ChunkId, entry: _Upload) -> None:
        async with limit:
            if self._pending.get(chunk_id) is not entry:
                return  # stored by an earlier try meanwhile
            try:
                await self._write(chunk_id, entry.data)
            except PreconditionFailed:
                if entry.tries == 1:
                    entry.error = ChunkUploadError(
                        "a new chunk file's name was taken", key=f"chunks/{chunk_id}"
                    )
                    return
                # an earlier try of this upload landed before it was cancelled
            except Exception as err:
                entry.error = err
                return
        self._finish(chunk_id, entry)

    def _finish(self, chunk_id: ChunkId, entry: _Upload) -> None:
        with self._lock:  # two tries of one upload (on two loops) may both land
            if self._pending.get(chunk_id) is entry:
                del self._pending[chunk_id]
                self._bytes -= len(entry.data)


async def _settled(tasks: list[asyncio.Task[None]], started: threading.Event) -> object:
    """Return once ``tasks`` (of the running loop) are done, however they ended; set
    ``started`` first (the loop answers)."""
    started.set()
    await asyncio.wait(tasks)
    return None


async def _taken_up(started: threading.Event) -> bool:
    """Whether another loop sets ``started`` within ``STALLED_AFTER`` seconds."""
    deadline = asyncio.get_running_loop().time() + STALLED_AFTER
    delay = 0.0005
    while not started.is_set():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True
