"""Read-ahead across a session's life: what was fetched ahead must never be served after
the session's view changed (a rebase onto another writer's commit, a local overwrite, a
discard), its bytes are let go when the session commits, rebases or discards, and chunks
this session is still uploading are not fetched ahead (they are read from its buffer)."""

from __future__ import annotations

import asyncio

import numpy as np
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.testing import CountingDriver, FaultyDriver
from tests.test_readahead_edges import held

CHUNK = 128  # i8 values: 1 KiB chunk files
CHUNKS = 40


def values(start: int, stop: int, base: int) -> np.ndarray:
    return np.arange(start * CHUNK, stop * CHUNK) + base


async def read_in_order(arr: zas.AsyncArray, start: int, stop: int, base: int) -> None:  # type: ignore[type-arg]
    for i in range(start, stop):
        got = await arr.getitem(slice(i * CHUNK, (i + 1) * CHUNK))
        np.testing.assert_array_equal(got, values(i, i + 1, base))


async def test_nothing_fetched_ahead_is_served_after_the_view_changed() -> None:
    repo = await aic.Repository.create(aic.in_memory_storage())
    setup = await repo.writable_session("main")
    arr = await zas.create_array(
        setup.store,
        name="a",
        shape=(CHUNKS * CHUNK,),
        chunks=(CHUNK,),
        dtype="i8",
        compressors=None,
    )
    await arr.setitem(slice(None), values(0, CHUNKS, 0))
    await setup.commit("zero")

    reader = await repo.writable_session("main")
    mine = await zas.open_array(store=reader.store, path="a")
    await read_in_order(mine, 0, 4, 0)
    await asyncio.sleep(0.05)  # the prefetches of the next chunks land
    assert reader._state.readahead is not None and reader._state.readahead.prefetched > 0
    assert held(reader)[0] > 0

    # another writer replaces chunks 4..9; after a rebase this session reads theirs
    other = await repo.writable_session("main")
    theirs = await zas.open_array(store=other.store, path="a")
    await theirs.setitem(slice(4 * CHUNK, 10 * CHUNK), values(4, 10, 1000))
    await other.commit("theirs")
    await reader.rebase(aic.ConflictDetector())
    assert held(reader) == (0, 0)  # what was fetched for the old snapshot is let go
    await read_in_order(mine, 4, 10, 1000)
    await read_in_order(mine, 10, 14, 0)
    await asyncio.sleep(0.05)

    # a local overwrite of a chunk fetched ahead is what is read
    assert held(reader)[0] > 0
    await mine.setitem(slice(14 * CHUNK, 15 * CHUNK), values(14, 15, 7))
    await read_in_order(mine, 14, 15, 7)
    # a discard goes back to the snapshot's bytes and lets the prefetches go
    reader.discard_changes()
    assert held(reader) == (0, 0)
    await read_in_order(mine, 14, 18, 0)
    await asyncio.sleep(0.05)
    assert held(reader)[0] > 0
    await mine.setitem(slice(0, CHUNK), values(0, 1, 5))
    await reader.commit("mine")
    assert held(reader) == (0, 0)


async def test_chunks_still_uploading_are_not_fetched_ahead() -> None:
    slow = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", delay=0.2)
    counting = CountingDriver(slow)
    repo = await aic.Repository.create(aic.storage_from_driver(counting))
    session = await repo.writable_session("main")
    arr = await zas.create_array(
        session.store,
        name="a",
        shape=(CHUNKS * CHUNK,),
        chunks=(CHUNK,),
        dtype="i8",
        compressors=None,
    )
    uploads = session._state.uploads
    assert uploads is not None
    await arr.setitem(slice(0, 4 * CHUNK), values(0, 4, 0))
    await uploads.drain()  # the first four are stored, the rest still upload as read
    await arr.setitem(slice(4 * CHUNK, None), values(4, CHUNKS, 0))
    assert len(uploads) == CHUNKS - 4
    counting.reset()
    await read_in_order(arr, 0, 12, 0)  # 4..11 from the write-behind buffer
    await asyncio.sleep(0)
    gets = [key for method, key in counting.calls if method.startswith("get")]
    assert len(gets) == 4, gets  # the stored ones only: no GET of a file still uploading
    await session.commit("written")
