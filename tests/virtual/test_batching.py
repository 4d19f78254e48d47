"""``CoalescingReader``: concurrent range reads of one object, joined as the planner
says, each caller getting exactly its bytes or the read's error."""

from __future__ import annotations

import asyncio

import pytest

from aicechunk.drivers.base import ByteRange, RangeRequest
from aicechunk.drivers.memory import MemoryDriver
from aicechunk.errors import ObjectNotFound
from aicechunk.virtual.batching import CoalescingReader

BLOB = bytes(range(256)) * 64  # 16 KiB


class CountingDriver(MemoryDriver):
    """A memory driver that records the ranges it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[ByteRange | None] = []

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        self.reads.append(byte_range)
        return await super()._get(key, byte_range)


@pytest.fixture
async def driver() -> CountingDriver:
    made = CountingDriver()
    await made.put("blob", BLOB)
    await made.put("other", BLOB[::-1])
    return made


async def test_one_turn_of_requests_is_one_read_per_object(driver: CountingDriver) -> None:
    reader = CoalescingReader()
    wanted = [("blob", i * 100, 64) for i in range(50)] + [("other", 5, 10), ("other", 20, 1)]
    got = await asyncio.gather(*(reader.read(driver, k, RangeRequest(o, n)) for k, o, n in wanted))
    for (key, offset, length), data in zip(wanted, got, strict=True):
        source = BLOB if key == "blob" else BLOB[::-1]
        assert data == source[offset : offset + length]
    assert sorted(driver.reads, key=str) == [RangeRequest(0, 4964), RangeRequest(5, 16)]


async def test_the_limits_are_the_planners(driver: CountingDriver) -> None:
    reader = CoalescingReader(max_gap=10, max_span=1000)
    wanted = [(0, 10), (21, 10), (31, 10), (900, 200)]
    got = await asyncio.gather(*(reader.read(driver, "blob", RangeRequest(*w)) for w in wanted))
    assert got == [BLOB[o : o + n] for o, n in wanted]
    assert sorted(driver.reads, key=str) == [
        RangeRequest(0, 10),
        RangeRequest(21, 20),
        RangeRequest(900, 200),
    ]


async def test_sequential_requests_are_not_held_back(driver: CountingDriver) -> None:
    reader = CoalescingReader()
    for offset in (0, 10, 20):
        assert (
            await reader.read(driver, "blob", RangeRequest(offset, 5)) == BLOB[offset : offset + 5]
        )
    assert len(driver.reads) == 3


async def test_a_failed_read_fails_each_of_its_callers(driver: CountingDriver) -> None:
    reader = CoalescingReader()
    results = await asyncio.gather(
        reader.read(driver, "missing", RangeRequest(0, 4)),
        reader.read(driver, "missing", RangeRequest(8, 4)),
        reader.read(driver, "blob", RangeRequest(0, 4)),
        return_exceptions=True,
    )
    assert isinstance(results[0], ObjectNotFound) and isinstance(results[1], ObjectNotFound)
    assert results[2] == BLOB[:4]


async def test_a_short_object_gives_short_slices(driver: CountingDriver) -> None:
    reader = CoalescingReader()
    got = await asyncio.gather(
        reader.read(driver, "blob", RangeRequest(len(BLOB) - 4, 8)),
        reader.read(driver, "blob", RangeRequest(len(BLOB) + 10, 8)),
    )
    assert got == [BLOB[-4:], b""]


async def test_a_cancelled_caller_leaves_the_others_served(driver: CountingDriver) -> None:
    reader = CoalescingReader()
    first = asyncio.ensure_future(reader.read(driver, "blob", RangeRequest(0, 4)))
    second = asyncio.ensure_future(reader.read(driver, "blob", RangeRequest(4, 4)))
    await asyncio.sleep(0)  # both queued
    first.cancel()
    assert await second == BLOB[4:8]
    with pytest.raises(asyncio.CancelledError):
        await first


def test_each_event_loop_has_its_own_queue(driver: CountingDriver) -> None:
    reader = CoalescingReader()
    for _ in range(2):  # zarr's sync API runs a loop per call
        assert asyncio.run(reader.read(driver, "blob", RangeRequest(3, 3))) == BLOB[3:6]
