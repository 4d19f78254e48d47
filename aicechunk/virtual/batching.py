"""Gathering the range reads of one event-loop turn so that ``ranges.plan_reads`` can
join them.

zarr reads the chunks of a selection concurrently: their virtual range reads all arrive
in the same turn of the event loop. A ``CoalescingReader`` queues them per object until
the end of that turn, then reads each object with the requests the planner chose, and
hands every caller exactly its bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aicechunk.drivers.base import Driver, LoopLocal, RangeRequest
from aicechunk.virtual.ranges import DEFAULT_MAX_GAP, DEFAULT_MAX_SPAN, PlannedRead, plan_reads

__all__ = ["CoalescingReader"]


@dataclass
class _Queue:
    """The range reads of one object waiting for the end of the turn."""

    driver: Driver
    key: str
    requests: list[tuple[int, int]] = field(default_factory=list)
    futures: list[asyncio.Future[bytes]] = field(default_factory=list)


class _Pending:
    """The queues of one event loop."""

    def __init__(self) -> None:
        self.queues: dict[tuple[int, str], _Queue] = {}
        self.scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()


class CoalescingReader:
    """Reads byte ranges through drivers, joining the ranges of one object requested in
    the same event-loop turn as the planner decides (``max_gap``, ``max_span``)."""

    def __init__(self, max_gap: int = DEFAULT_MAX_GAP, max_span: int = DEFAULT_MAX_SPAN) -> None:
        self.max_gap = max_gap
        self.max_span = max_span
        self._pending: LoopLocal[_Pending] = LoopLocal(_Pending)

    async def read(self, driver: Driver, key: str, wanted: RangeRequest) -> bytes:
        """The bytes of ``wanted`` in ``key`` (short if the object ends early)."""
        loop = asyncio.get_running_loop()
        pending = self._pending.get()
        future: asyncio.Future[bytes] = loop.create_future()
        queue = pending.queues.get((id(driver), key))
        if queue is None:
            queue = pending.queues[(id(driver), key)] = _Queue(driver, key)
        queue.requests.append((wanted.offset, wanted.length))
        queue.futures.append(future)
        if not pending.scheduled:
            pending.scheduled = True
            loop.call_soon(self._flush, pending)
        return await future

    def _flush(self, pending: _Pending) -> None:
        queues, pending.queues, pending.scheduled = pending.queues, {}, False
        for queue in queues.values():
            plan = plan_reads(queue.requests, max_gap=self.max_gap, max_span=self.max_span)
            for planned in plan:
                futures = [queue.futures[index] for index, _, _ in planned.parts]
                task = asyncio.ensure_future(_read(queue.driver, queue.key, planned, futures))
                pending.tasks.add(task)
                task.add_done_callback(pending.tasks.discard)


async def _read(
    driver: Driver, key: str, planned: PlannedRead, futures: list[asyncio.Future[bytes]]
) -> None:
    """Read ``planned`` and settle each of its parts' futures (``futures[i]`` belongs to
    ``planned.parts[i]``) with its slice, or with the read's error."""
    try:
        data = await driver.get(key, RangeRequest(planned.offset, planned.length))
    except BaseException as err:
        for future in futures:
            if future.done():
                continue
            if isinstance(err, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(err)
        if not isinstance(err, Exception):
            raise
        return
    for (_, start, stop), future in zip(planned.parts, futures, strict=True):
        if not future.done():  # a short object gives short slices: the caller says so
            future.set_result(data[start:stop])
