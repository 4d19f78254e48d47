"""Write-behind and read-ahead (``session/uploads.py``, ``session/readahead.py``).

Write-behind: ``set`` returns before its chunk is stored; reads see the chunk at once;
commit waits for every upload and, if one failed, fails with ``ChunkUploadError`` and
moves nothing; the buffer is bounded; cancelled commits and event loops leave nothing
lost. Read-ahead: reads in grid order fetch ahead (counted at a ``CountingDriver``),
others do not; the run stops at the array's end; a failed prefetch fails no read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.drivers.base import Driver, ObjectInfo
from aicechunk.errors import ChunkUploadError
from aicechunk.testing import CountingDriver, FaultyDriver, InjectedFault

CHUNK = 128  # i8 values: 1 KiB chunk files (over the inline threshold)


async def make_repo(
    driver: Driver, *, behind: int | None = None, ahead: int | None = None
) -> aic.Repository:
    config = aic.RepositoryConfig.default()
    config.write_behind_bytes = behind
    config.read_ahead_chunks = ahead
    return await aic.Repository.create(aic.storage_from_driver(driver), config=config)


async def write_array(session: aic.Session, n_chunks: int) -> np.ndarray:
    values = np.arange(n_chunks * CHUNK, dtype="i8")
    arr = await zas.create_array(
        session.store, name="x", shape=values.shape, chunks=(CHUNK,), dtype="i8", compressors=None
    )
    await arr.setitem(slice(None), values)
    return values


async def read_array(session: aic.Session) -> np.ndarray:
    arr = await zas.open_array(store=session.store, path="x", mode="r")
    return np.asarray(await arr.getitem(slice(None)))


def uploads_of(session: aic.Session) -> Any:
    return session._state.uploads


# --- write-behind ------------------------------------------------------------------------


async def test_chunks_read_back_before_and_after_commit() -> None:
    slow = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", delay=0.05)
    repo = await make_repo(slow)
    session = await repo.writable_session("main")
    values = await write_array(session, 20)
    assert len(uploads_of(session)) > 0  # set returned before the uploads ended
    np.testing.assert_array_equal(await read_array(session), values)
    await session.commit("written behind")
    assert len(uploads_of(session)) == 0
    np.testing.assert_array_equal(await read_array(session), values)
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro), values)
    assert sum(1 for m, key in slow.calls if m == "put" and key.startswith("chunks/")) == 20


async def test_failed_upload_fails_the_commit_and_moves_nothing() -> None:
    inner = MemoryDriver()
    faulty = FaultyDriver(inner, methods={"put"}, key_prefix="chunks/", fail_calls={3})
    repo = await make_repo(faulty)
    tip = await repo.lookup_branch("main")
    session = await repo.writable_session("main")
    values = await write_array(session, 8)  # set does not see the failure
    snapshots = [k async for k in inner.list("snapshots/")]
    with pytest.raises(ChunkUploadError) as raised:
        await session.commit("one chunk is missing")
    assert isinstance(raised.value.__cause__, InjectedFault)
    assert raised.value.key is not None and raised.value.key.startswith("chunks/")
    assert await repo.lookup_branch("main") == tip
    assert [k async for k in inner.list("snapshots/")] == snapshots
    assert [k async for k in inner.list("manifests/")] == []
    # the bytes were kept: reads still work, and the next commit uploads them again
    np.testing.assert_array_equal(await read_array(session), values)
    await session.commit("retried")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro), values)


async def test_a_lost_answer_is_retried_as_stored() -> None:
    # the first upload lands and its answer is lost: the retry finds the file written
    faulty = FaultyDriver(
        MemoryDriver(), methods={"put"}, key_prefix="chunks/", fail_calls={1}, after=True
    )
    repo = await make_repo(faulty)
    session = await repo.writable_session("main")
    values = await write_array(session, 4)
    with pytest.raises(ChunkUploadError):
        await session.commit("answer lost")
    await session.commit("retried")
    np.testing.assert_array_equal(
        await read_array(await repo.readonly_session(branch="main")), values
    )


class WatchedDriver(CountingDriver):
    """Records the session's buffered bytes whenever a chunk upload starts."""

    def __init__(self, inner: Driver) -> None:
        super().__init__(inner)
        self.session: aic.Session | None = None
        self.buffered: list[int] = []

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        if self.session is not None and key.startswith("chunks/"):
            self.buffered.append(uploads_of(self.session).pending_bytes)
        await asyncio.sleep(0.01)
        return await super()._put_once(key, data)


async def test_buffer_is_bounded_and_set_waits() -> None:
    watched = WatchedDriver(MemoryDriver())
    bound = 4 * CHUNK * 8
    repo = await make_repo(watched, behind=bound)
    session = await repo.writable_session("main")
    watched.session = session
    values = await write_array(session, 30)
    assert watched.buffered and max(watched.buffered) <= bound
    await session.commit("bounded")
    np.testing.assert_array_equal(
        await read_array(await repo.readonly_session(branch="main")), values
    )


async def test_write_behind_off_writes_before_set_returns() -> None:
    counting = CountingDriver(MemoryDriver())
    repo = await make_repo(counting, behind=0)
    session = await repo.writable_session("main")
    await write_array(session, 5)
    assert sum(1 for _, key in counting.calls if key.startswith("chunks/")) == 5
    assert len(uploads_of(session)) == 0


async def test_cancelled_commit_leaves_uploads_to_the_next() -> None:
    slow = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", delay=0.05)
    repo = await make_repo(slow)
    tip = await repo.lookup_branch("main")
    session = await repo.writable_session("main")
    values = await write_array(session, 10)
    commit = asyncio.create_task(session.commit("cancelled"))
    await asyncio.sleep(0.01)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    assert await repo.lookup_branch("main") == tip
    await session.commit("again")
    assert len(uploads_of(session)) == 0
    np.testing.assert_array_equal(
        await read_array(await repo.readonly_session(branch="main")), values
    )
    # nothing of the session is still running
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in others if "_upload" in repr(t.get_coro())]


def test_uploads_cut_by_their_loop_are_redone() -> None:
    # asyncio.run cancels what is left when it returns: the uploads of that loop's sets
    # are started again by the commit, in its own loop
    slow = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", delay=0.2)

    async def write() -> tuple[aic.Repository, aic.Session, np.ndarray]:
        repo = await make_repo(slow)
        session = await repo.writable_session("main")
        return repo, session, await write_array(session, 6)

    repo, session, values = asyncio.run(write())
    assert len(uploads_of(session)) == 6

    async def commit() -> np.ndarray:
        await session.commit("after the loop ended")
        return await read_array(await repo.readonly_session(branch="main"))

    np.testing.assert_array_equal(asyncio.run(commit()), values)


async def test_discarded_failures_do_not_fail_later_commits() -> None:
    faulty = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", fail_calls={1})
    repo = await make_repo(faulty)
    session = await repo.writable_session("main")
    await write_array(session, 3)
    await asyncio.sleep(0.01)
    session.discard_changes()
    await write_array(session, 2)
    await session.commit("only the second array")


async def test_forks_write_directly_and_merge() -> None:
    counting = CountingDriver(MemoryDriver())
    repo = await make_repo(counting)
    session = await repo.writable_session("main")
    values = await write_array(session, 4)
    await session.commit("base")
    session = await repo.writable_session("main")  # a committed session is read-only
    fork = session.fork()
    arr = await zas.open_array(store=fork.store, path="x")
    before = sum(1 for _, key in counting.calls if key.startswith("chunks/"))
    await arr.setitem(slice(0, CHUNK), -values[:CHUNK])
    # a fork is sent elsewhere as it is: its chunks are stored before set returns
    assert sum(1 for _, key in counting.calls if key.startswith("chunks/")) == before + 1
    restored = aic.ForkSession.from_bytes(fork.to_bytes())
    await session.merge(restored)
    await session.commit("merged")
    got = await read_array(await repo.readonly_session(branch="main"))
    np.testing.assert_array_equal(got[:CHUNK], -values[:CHUNK])


def test_zarr_sync_api_and_sync_facade() -> None:
    from aicechunk import sync as aics

    slow = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", delay=0.02)
    config = aics.RepositoryConfig.default()
    repo = aics.Repository.create(aic.storage_from_driver(slow), config=config)
    session = repo.writable_session("main")
    arr = zarr.create_array(
        session.store, name="x", shape=(10 * CHUNK,), chunks=(CHUNK,), dtype="i8"
    )
    values = np.arange(10 * CHUNK)
    arr[:] = values
    np.testing.assert_array_equal(arr[:], values)
    session.commit("sync")
    ro = repo.readonly_session(branch="main")
    np.testing.assert_array_equal(zarr.open_array(ro.store, path="x", mode="r")[:], values)


# --- read-ahead --------------------------------------------------------------------------


async def repo_with_array(n_chunks: int, ahead: int | None = None) -> tuple[Any, Any, np.ndarray]:
    counting = CountingDriver(MemoryDriver())
    repo = await make_repo(counting, ahead=ahead)
    session = await repo.writable_session("main")
    values = await write_array(session, n_chunks)
    await session.commit("data")
    return repo, counting, values


def chunk_gets(counting: CountingDriver) -> list[str]:
    return [key for method, key in counting.calls if method == "get" and key.startswith("chunks/")]


async def test_sequential_reads_prefetch_and_stop_at_the_end() -> None:
    repo, counting, values = await repo_with_array(40, ahead=8)
    ro = await repo.readonly_session(branch="main")
    counting.reset()
    np.testing.assert_array_equal(await read_array(ro), values)
    gets = chunk_gets(counting)
    assert len(gets) == len(set(gets)) == 40  # every chunk once: none past the end
    assert ro._state.readahead.prefetched > 0


async def test_random_reads_do_not_prefetch() -> None:
    repo, counting, values = await repo_with_array(40, ahead=8)
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="x", mode="r")
    counting.reset()
    for i in (17, 3, 31, 9, 25, 0, 38):
        got = await arr.getitem(slice(i * CHUNK, (i + 1) * CHUNK))
        np.testing.assert_array_equal(got, values[i * CHUNK : (i + 1) * CHUNK])
    assert len(chunk_gets(counting)) == 7
    assert ro._state.readahead.prefetched == 0


async def test_read_ahead_is_bounded_by_config() -> None:
    repo, counting, _ = await repo_with_array(40, ahead=3)
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="x", mode="r")
    counting.reset()
    for i in range(4):  # one by one, in order
        await arr.getitem(slice(i * CHUNK, (i + 1) * CHUNK))
    # 4 read, and never more than 3 fetched beyond the furthest read
    assert len(chunk_gets(counting)) <= 4 + 3


async def test_read_ahead_off() -> None:
    repo, counting, values = await repo_with_array(20, ahead=0)
    ro = await repo.readonly_session(branch="main")
    counting.reset()
    np.testing.assert_array_equal(await read_array(ro), values)
    assert len(chunk_gets(counting)) == 20
    assert ro._state.readahead.prefetched == 0


async def test_failed_prefetch_fails_no_read() -> None:
    repo, _, values = await repo_with_array(30, ahead=8)
    inner = repo.storage.driver()
    # every third chunk GET fails once: prefetches among them are fetched again by the
    # read that needs them (the driver's own retry would hide this: FaultyDriver has none)
    faulty = FaultyDriver(inner, methods={"get"}, key_prefix="chunks/", fail_calls={3, 6, 9})
    reader = aic.Repository(
        aic.storage_from_driver(faulty), repo.config, spec_version=repo.spec_version
    )
    ro = await reader.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="x", mode="r")
    first = np.asarray(await arr.getitem(slice(0, 2 * CHUNK)))  # starts the run
    np.testing.assert_array_equal(first, values[: 2 * CHUNK])
    np.testing.assert_array_equal(await arr.getitem(slice(2 * CHUNK, None)), values[2 * CHUNK :])
    assert faulty.injected >= 1


@pytest.mark.parametrize("spec", [1, 2])
async def test_settings_persist_and_reach_sessions(spec: int) -> None:
    config = aic.RepositoryConfig.default()
    config.write_behind_bytes = 1000
    config.read_ahead_chunks = 3
    repo = await aic.Repository.create(aic.in_memory_storage(), config=config, spec_version=spec)
    await repo.save_config()
    saved = await aic.Repository.fetch_config(repo.storage)
    assert (saved.write_behind_bytes, saved.read_ahead_chunks) == (1000, 3)
    session = await repo.writable_session("main")
    assert uploads_of(session).max_bytes == 1000
    assert session._state.readahead.chunks == 3
    with pytest.raises(ValueError):
        config.read_ahead_chunks = -1


async def test_fork_with_changes_reads_chunks_still_uploading() -> None:
    slow = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", delay=0.2)
    repo = await make_repo(slow)
    session = await repo.writable_session("main")
    values = await write_array(session, 5)
    fork = session.fork_with_changes()
    assert len(uploads_of(session)) > 0
    np.testing.assert_array_equal(await read_array(fork), values)
    await session.merge(fork)
    await session.commit("with the fork")


async def test_partial_reads_of_shards_do_not_prefetch() -> None:
    counting = CountingDriver(MemoryDriver())
    repo = await make_repo(counting, ahead=8)
    session = await repo.writable_session("main")
    values = np.arange(8 * 4 * CHUNK, dtype="i8")
    arr = await zas.create_array(
        session.store,
        name="x",
        shape=values.shape,
        chunks=(CHUNK,),
        shards=(4 * CHUNK,),
        dtype="i8",
        compressors=None,
    )
    await arr.setitem(slice(None), values)
    await session.commit("sharded")
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="x", mode="r")
    for shard in range(8):  # the first inner chunk of each shard, in order: ranges only
        at = shard * 4 * CHUNK
        got = await arr.getitem(slice(at, at + CHUNK))
        np.testing.assert_array_equal(got, values[at : at + CHUNK])
    assert ro._state.readahead.prefetched == 0
