"""Read-ahead (``session/readahead.py``) as long-lived readers use it: a notebook or an
xarray preview reads the first chunks of many arrays and never the rest, arrays are
resized, and what is served is checked against the data."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.testing import CountingDriver

CHUNK = 128  # i8 values: 1 KiB chunk files
ARRAYS, CHUNKS = 5, 40


async def many_arrays() -> tuple[aic.Repository, CountingDriver]:
    counting = CountingDriver(MemoryDriver())
    repo = await aic.Repository.create(aic.storage_from_driver(counting))
    session = await repo.writable_session("main")
    for k in range(ARRAYS):
        arr = await zas.create_array(
            session.store,
            name=f"a{k}",
            shape=(CHUNKS * CHUNK,),
            chunks=(CHUNK,),
            dtype="i8",
            compressors=None,
        )
        await arr.setitem(slice(None), np.arange(CHUNKS * CHUNK) + k)
    await session.commit("arrays")
    return repo, counting


def held(session: aic.Session) -> tuple[int, int]:
    """The bytes the read-ahead counts as held, and those its runs really hold."""
    ahead = session._state.readahead
    real = sum(a.request.length for run in ahead._runs.values() for a in run.ahead.values())
    return ahead._held, real


async def test_previews_of_many_arrays_each_read_ahead_within_the_bound() -> None:
    # before: the first array's unread prefetches held the whole bound for ever, so no
    # other array of the session was ever read ahead again (and their bytes stayed)
    repo, _ = await many_arrays()
    ro = await repo.readonly_session(branch="main")
    ahead = ro._state.readahead
    ahead.chunks, ahead.max_bytes = 2, 2 * CHUNK * 8
    started = []
    for k in range(ARRAYS):
        arr = await zas.open_array(store=ro.store, path=f"a{k}", mode="r")
        before = ahead.prefetched
        for i in range(3):  # a preview: the first chunks, in order, one by one
            got = await arr.getitem(slice(i * CHUNK, (i + 1) * CHUNK))
            np.testing.assert_array_equal(got, np.arange(i * CHUNK, (i + 1) * CHUNK) + k)
        started.append(ahead.prefetched - before)
        count, real = held(ro)
        assert count == real <= ahead.max_bytes
    assert all(n > 0 for n in started), started


async def test_a_resized_array_drops_its_old_run() -> None:
    repo, _ = await many_arrays()
    session = await repo.writable_session("main")
    arr = await zas.open_array(store=session.store, path="a0")
    for i in range(3):
        await arr.getitem(slice(i * CHUNK, (i + 1) * CHUNK))
    assert held(session)[1] > 0
    await arr.resize((2 * CHUNKS * CHUNK,))  # a new grid: the old run is over
    arr = await zas.open_array(store=session.store, path="a0")
    await arr.getitem(slice(0, CHUNK))
    count, real = held(session)
    assert count == real
    values = await arr.getitem(slice(None))
    np.testing.assert_array_equal(values[: CHUNKS * CHUNK], np.arange(CHUNKS * CHUNK))


async def test_a_session_that_read_ahead_pickles() -> None:
    # xarray/dask hand a read-only session's store to processes after reading some of it
    # (a preview, then .compute(scheduler="processes")): its fetches ahead stay behind
    repo, _ = await many_arrays()
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="a1", mode="r")
    for i in range(3):
        await arr.getitem(slice(i * CHUNK, (i + 1) * CHUNK))
    assert ro._state.readahead.prefetched > 0
    for copy in (pickle.loads(pickle.dumps(ro)), pickle.loads(pickle.dumps(ro.store))):
        store = copy if isinstance(copy, aic.IcechunkStore) else copy.store
        again = await zas.open_array(store=store, path="a1", mode="r")
        np.testing.assert_array_equal(
            await again.getitem(slice(None)), np.arange(CHUNKS * CHUNK) + 1
        )


def test_reads_each_on_a_loop_of_their_own_fetch_nothing_twice() -> None:
    # sync code calling the async API through asyncio.run per read: what was fetched
    # ahead is cancelled with its loop, so fetching ahead only doubled the requests
    repo, counting = asyncio.run(many_arrays())
    ro = asyncio.run(repo.readonly_session(branch="main"))

    async def read(i: int) -> np.ndarray:
        arr = await zas.open_array(store=ro.store, path="a2", mode="r")
        return np.asarray(await arr.getitem(slice(i * CHUNK, (i + 1) * CHUNK)))

    counting.reset()
    for i in range(CHUNKS):
        np.testing.assert_array_equal(
            asyncio.run(read(i)), np.arange(i * CHUNK, (i + 1) * CHUNK) + 2
        )
    gets = [k for m, k in counting.calls if m == "get" and k.startswith("chunks/")]
    assert len(gets) == len(set(gets)) == CHUNKS

    async def read_all() -> np.ndarray:  # one loop for many reads: read ahead as before
        arr = await zas.open_array(store=ro.store, path="a3", mode="r")
        for i in range(CHUNKS):
            await arr.getitem(slice(i * CHUNK, (i + 1) * CHUNK))
        return np.asarray(await arr.getitem(slice(None)))

    before = ro._state.readahead.prefetched
    np.testing.assert_array_equal(asyncio.run(read_all()), np.arange(CHUNKS * CHUNK) + 3)
    assert ro._state.readahead.prefetched > before
