"""Write-behind across event loops, as notebooks mix them: chunks written with zarr's
async API on the notebook's running loop, then a commit through the synchronous facade
(icechunk's API), which runs on zarr's loop thread while it blocks the notebook's.

The commit must not wait for the notebook loop to finish the uploads (that loop is
blocked until the commit returns: it waited for ever); it takes them over.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.testing import CountingDriver, FaultyDriver

NOTEBOOK = textwrap.dedent(
    """
    import asyncio
    import numpy as np
    import zarr
    import zarr.api.asynchronous as zas
    import aicechunk as aic
    import aicechunk.sync as aics
    from aicechunk.drivers import MemoryDriver
    from aicechunk.testing import FaultyDriver

    slow = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", delay=0.2)

    async def cell() -> None:  # a notebook cell: its loop is running
        repo = aics.Repository.create(aic.storage_from_driver(slow))
        session = repo.writable_session("main")
        arr = await zas.create_array(
            session.store, name="x", shape=(1000,), chunks=(100,), dtype="i8",
            compressors=None,
        )
        await arr.setitem(slice(None), np.arange(1000))
        assert len(aics._unwrap(session)._state.uploads) > 0  # still uploading here
        session.commit("from a notebook")  # blocks this loop until it returns
        ro = repo.readonly_session(branch="main")
        got = zarr.open_array(ro.store, path="x", mode="r")[:]
        assert (got == np.arange(1000)).all()
        print("committed")

    asyncio.run(cell())
    """
)


def test_sync_commit_from_a_running_loop_that_holds_the_uploads() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", NOTEBOOK], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "committed"


def test_sets_each_on_a_loop_of_their_own_upload_once() -> None:
    # sync code calling the async API through asyncio.run per write: each loop cancels
    # the upload it queued when the call returns, and the commit sent every chunk again
    slow = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", delay=0.01)
    counting = CountingDriver(slow)

    async def make() -> tuple[aic.Repository, aic.Session]:
        repo = await aic.Repository.create(aic.storage_from_driver(counting))
        session = await repo.writable_session("main")
        await zas.create_array(
            session.store, name="x", shape=(4000,), chunks=(100,), dtype="i8", compressors=None
        )
        return repo, session

    repo, session = asyncio.run(make())
    counting.reset()

    async def write(i: int) -> None:
        arr = await zas.open_array(store=session.store, path="x")
        await arr.setitem(slice(i * 100, (i + 1) * 100), np.arange(i * 100, (i + 1) * 100))

    for i in range(40):
        asyncio.run(write(i))
    asyncio.run(session.commit("one loop per call"))
    puts = [k for m, k in counting.calls if m.startswith("put") and k.startswith("chunks/")]
    assert len(set(puts)) == 40 and len(puts) <= 41  # the first call's, at most, twice

    async def read() -> np.ndarray:
        ro = await repo.readonly_session(branch="main")
        arr = await zas.open_array(store=ro.store, path="x", mode="r")
        return np.asarray(await arr.getitem(slice(None)))

    np.testing.assert_array_equal(asyncio.run(read()), np.arange(4000))


async def test_a_chunk_no_change_names_any_more_does_not_block_the_commit() -> None:
    # a chunk whose upload keeps failing, then overwritten (or its array deleted): the
    # snapshot will not reference it, so its failure must not fail every commit after
    faulty = FaultyDriver(
        MemoryDriver(), methods={"put"}, key_prefix="chunks/", fail_calls=set(range(1, 200))
    )
    repo = await aic.Repository.create(aic.storage_from_driver(faulty))
    session = await repo.writable_session("main")
    arr = await zas.create_array(
        session.store, name="x", shape=(400,), chunks=(100,), dtype="i8", compressors=None
    )
    await arr.setitem(slice(0, 100), np.arange(100))  # its uploads fail, every time
    await asyncio.sleep(0.01)
    await arr.setitem(slice(0, 100), np.full(100, 7))  # ...and so does this one's
    faulty.disarm()
    await arr.setitem(slice(0, 100), np.full(100, 9))  # replaced by one that lands
    await session.commit("only the last chunk is referenced")
    ro = await repo.readonly_session(branch="main")
    got = await (await zas.open_array(store=ro.store, path="x", mode="r")).getitem(slice(0, 100))
    np.testing.assert_array_equal(got, np.full(100, 9))


async def test_a_drain_whose_wait_another_loop_took_up_then_dropped_still_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another loop takes up the drain's wait for its uploads and then stops before
    answering (its ``asyncio.run`` returns: the loop closes with the wait pending). The
    drain must not wait for ever on that answer: it looks again, finds the loop stopped
    and uploads the chunk itself."""
    import threading

    import aicechunk.session.uploads as uploads_module
    from aicechunk.format.ids import ChunkId
    from aicechunk.session.uploads import Uploads

    taken = threading.Event()
    real = uploads_module._settled

    async def settled(tasks: list[asyncio.Task[None]], started: threading.Event) -> object:
        taken.set()
        return await real(tasks, started)

    monkeypatch.setattr(uploads_module, "_settled", settled)

    here = asyncio.get_running_loop()
    stored: list[ChunkId] = []
    never = asyncio.Event()

    async def write(chunk_id: ChunkId, data: bytes) -> None:
        if asyncio.get_running_loop() is not here:
            await never.wait()  # the other loop's upload never ends there
        stored.append(chunk_id)

    uploads = Uploads(write, max_bytes=1_000, concurrency=2)
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    chunk = ChunkId.random()
    asyncio.run_coroutine_threadsafe(uploads.put(chunk, b"x" * 10), other).result(10)
    draining = asyncio.ensure_future(uploads.drain())
    assert await asyncio.to_thread(taken.wait, 10)  # the other loop took the wait up
    other.call_soon_threadsafe(other.stop)  # and stops before answering it
    await asyncio.to_thread(thread.join, 10)
    other.close()
    await asyncio.wait_for(draining, 10)
    assert stored == [chunk] and len(uploads) == 0
