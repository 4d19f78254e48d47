"""The local driver's worker threads: a pool for large operations, and one thread of
its own for small ones, fed in batches.

Many threads each taking the GIL back after every system call cost more than the calls
(a third less throughput on 4 KiB chunks), and so does one hand-off per operation: small
operations queued meanwhile go to the small-op thread together, with one wake-up and one
call back into the loop for the lot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, ClassVar, TypeVar

from aicechunk.drivers._loop import LoopLocal

__all__ = ["Workers"]

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

_Done = list[tuple[asyncio.Future[Any], Any, BaseException | None]]


class _Lane:
    """The small-op thread: runs the jobs put to it, one after another. A bare thread
    and queue, not a one-thread executor: a hand-off makes no ``concurrent.futures``
    future, lock or work item (about half of an executor's round trip, which every
    small operation pays). Stopped by ``shutdown`` or at the interpreter's exit, after
    the jobs queued before."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="aicechunk-local-small_0", daemon=True
        )
        self._thread.start()
        _LANES.add(self)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except BaseException:  # a bug in a job: logged, and later jobs still run
                logger.exception("a job of the local driver's small-op thread failed")

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the thread, after the jobs queued before it."""
        self._jobs.put(job)

    def shutdown(self, wait: bool = False) -> None:
        """Stop the thread once the queued jobs are done (waiting for that if ``wait``)."""
        self._jobs.put(None)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()


_LANES: weakref.WeakSet[_Lane] = weakref.WeakSet()


def _stop_lanes() -> None:
    # as the executors' threads are: queued work finishes before the interpreter exits
    for lane in list(_LANES):
        lane.shutdown(wait=True)


_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_stop_lanes)


class _Batches:
    """Small file operations of one event loop, handed to the small-op thread in
    batches."""

    def __init__(self, executor: _Lane) -> None:
        self.loop = asyncio.get_running_loop()
        self.executor = executor
        self._queue: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        with self._lock:
            self._queue.append((fn, args, future))
            if self._scheduled:
                return future
            self._scheduled = True
        self.executor.submit(self._drain)
        return future

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._scheduled = False
                    return
            done: _Done = []
            for fn, args, future in batch:
                try:
                    done.append((future, fn(*args), None))
                except BaseException as err:  # handed to the waiting task
                    done.append((future, None, err))
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                self.loop.call_soon_threadsafe(_deliver, done)


def _deliver(done: _Done) -> None:
    for future, value, err in done:
        if future.cancelled():
            continue
        if err is not None:
            future.set_exception(err)
        else:
            future.set_result(value)


class Workers:
    """Threads that run blocking file operations for every loop using them (the local
    drivers of a process with the same ``max_workers`` share one ``Workers``).

    Each loop owns only its batches (which also mark it as a user); the threads start
    on first use and stop when the last open loop using them closes (they start again
    on the next call), so closing in one loop never breaks operations in another.
    """

    _shared: ClassVar[dict[int, Workers]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def shared(cls, max_workers: int) -> Workers:
        """The process's workers of ``max_workers`` threads, shared by every driver
        asking for that many: opening a repository again starts no threads."""
        with cls._shared_lock:
            found = cls._shared.get(max_workers)
            if found is None:
                found = cls._shared[max_workers] = cls(max_workers)
            return found

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._lock = threading.Lock()  # guards the executors and the batches
        self._pool: ThreadPoolExecutor | None = None
        self._lane: _Lane | None = None
        self._batches: LoopLocal[_Batches] = LoopLocal(lambda: _Batches(self._small_thread()))
        _ALL.add(self)

    def _forget_threads(self) -> None:
        # in a child process after fork: the parent's threads do not exist here
        self._lock = threading.Lock()
        self._pool = self._lane = None
        self._batches = LoopLocal(lambda: _Batches(self._small_thread()))

    def _small_thread(self) -> _Lane:
        if self._lane is None:
            self._lane = _Lane()
        return self._lane

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the pool."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._batches.get()  # the running loop is a user of the threads
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="aicechunk-local"
                )
            future = loop.run_in_executor(self._pool, partial(fn, *args))
        return await future

    async def run_small(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the small-op thread, batched with the loop's other small ones;
        ``fn`` must never wait long (a lock held by another process, a large file)."""
        with self._lock:
            future = self._batches.get().submit(fn, args)
        result: _T = await future
        return result

    async def close(self) -> None:
        """Release what the running loop holds; stop the threads if no other open loop
        uses them."""
        with self._lock:
            self._batches.pop_current()
            if self._batches.in_use():
                return
            pool, self._pool = self._pool, None
            lane, self._lane = self._lane, None
        for executor in (pool, lane):
            if executor is not None:
                executor.shutdown(wait=False)


_ALL: weakref.WeakSet[Workers] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _LANES.clear()  # the parent's threads, which do not exist here
    Workers._shared_lock = threading.Lock()
    for workers in list(_ALL):
        workers._forget_threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
