"""Forks: serialize, travel to tasks and processes, write, come back, merge, commit."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.distributed import merge_sessions
from tests.conftest import StorageFactory, s3_test_storage

N_TASKS = 64
CHUNK = 16


async def setup_array(storage: aic.Storage, n: int = N_TASKS) -> tuple[aic.Repository, aic.Session]:
    repo = await aic.Repository.create(storage)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("data", shape=(n * CHUNK,), chunks=(CHUNK,), dtype="i8")
    await session.commit("empty array")
    return repo, await repo.writable_session("main")  # a committed session is read-only


async def write_region(payload: bytes, i: int) -> bytes:
    fork = aic.ForkSession.from_bytes(payload)
    arr = await zas.open_array(store=fork.store, path="data")
    await arr.setitem(slice(i * CHUNK, (i + 1) * CHUNK), np.full(CHUNK, i, dtype="i8"))
    return fork.to_bytes()


async def test_taskgroup_fanout(make_storage: StorageFactory) -> None:
    repo, session = await setup_array(make_storage())
    payload = session.fork().to_bytes()
    results: list[asyncio.Task[bytes]] = []
    async with asyncio.TaskGroup() as tg:
        for i in range(N_TASKS):
            results.append(tg.create_task(write_region(payload, i)))
    forks = [aic.ForkSession.from_bytes(t.result()) for t in results]
    await session.merge(*forks)
    await session.commit("64 forks")
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="data", mode="r")
    np.testing.assert_array_equal(
        await arr.getitem(slice(None)), np.repeat(np.arange(N_TASKS), CHUNK)
    )


def process_worker(fork: aic.ForkSession, i: int) -> aic.ForkSession:
    """Runs in another process: write through the fork's store with zarr's sync API."""
    arr = zarr.open_array(store=fork.store, path="data")
    arr[i * CHUNK : (i + 1) * CHUNK] = np.full(CHUNK, 100 + i, dtype="i8")
    return fork


@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_process_pool_fanout(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "local":
        storage = aic.local_filesystem_storage(tmp_path / "repo")
    else:
        storage = s3_test_storage(request.getfixturevalue("s3_endpoint"))
    n = 8
    repo, session = await setup_array(storage, n)
    fork = session.fork()
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [loop.run_in_executor(pool, process_worker, fork, i) for i in range(n)]
        forks = await asyncio.gather(*futures)
    await session.merge(*forks)
    sid = await session.commit("from processes")
    ro = await repo.readonly_session(snapshot_id=sid)
    arr = await zas.open_array(store=ro.store, path="data", mode="r")
    np.testing.assert_array_equal(
        await arr.getitem(slice(None)), np.repeat(np.arange(n) + 100, CHUNK)
    )


async def test_fork_rules() -> None:
    repo, session = await setup_array(aic.in_memory_storage(), 4)
    ro = await repo.readonly_session(branch="main")
    with pytest.raises(aic.SessionStateError, match="read-only"):
        ro.fork()
    arr = await zas.open_array(store=session.store, path="data")
    await arr.setitem(slice(0, CHUNK), np.ones(CHUNK, dtype="i8"))
    with pytest.raises(aic.SessionStateError, match="commit"):
        session.fork()
    await session.commit("one")
    with pytest.raises(aic.SessionStateError, match="committed snapshot"):
        session.fork()
    session = await repo.writable_session("main")  # a committed session is read-only
    fork = session.fork()
    with pytest.raises(aic.SessionStateError, match="merge"):
        await fork.commit("no")
    with pytest.raises(aic.SessionStateError):
        await fork.rebase(aic.BasicConflictSolver())
    with pytest.raises(aic.SessionStateError, match="ForkSession"):
        await session.merge(await repo.writable_session("main"))  # type: ignore[arg-type]
    with pytest.raises(aic.SessionStateError, match="fork"):
        session.allow_pickling()
    with pytest.raises(aic.SessionStateError, match="fork"):
        pickle.dumps(session)
    pickle.loads(pickle.dumps(ro))  # read-only sessions pickle

    # a fork from another base snapshot or branch does not merge
    stale = session.fork()
    arr = await zas.open_array(store=session.store, path="data")
    await arr.setitem(slice(CHUNK, 2 * CHUNK), np.ones(CHUNK, dtype="i8"))
    await session.commit("two")
    session = await repo.writable_session("main")  # a committed session is read-only
    with pytest.raises(aic.SessionStateError, match="snapshot"):
        await session.merge(stale)
    await repo.create_branch("other", session.snapshot_id)
    other = await repo.writable_session("other")
    with pytest.raises(aic.SessionStateError, match="branch"):
        await session.merge(other.fork())
    other_repo, other_session = await setup_array(aic.in_memory_storage(), 4)
    with pytest.raises(aic.SessionStateError, match="repository"):
        await session.merge(other_session.fork())
    del other_repo


async def test_later_forks_win_and_tree_merges() -> None:
    repo, session = await setup_array(aic.in_memory_storage(), 4)
    forks = [session.fork() for _ in range(4)]
    for value, fork in enumerate(forks):
        arr = await zas.open_array(store=fork.store, path="data")
        await arr.setitem(slice(0, CHUNK), np.full(CHUNK, value, dtype="i8"))  # same chunk
    # a tree reduction: (0+1) and (2+3), then both
    await forks[0].merge(forks[1])
    await forks[2].merge(forks[3])
    await session.merge(forks[0], forks[2])
    await session.commit("tree")
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="data", mode="r")
    np.testing.assert_array_equal(await arr.getitem(slice(0, CHUNK)), np.full(CHUNK, 3))


async def test_merged_payloads_read_rebase_and_commit() -> None:
    """Fork payloads merged as column tables: readable before the commit, overridden by
    the parent's own later writes, and rebased onto a branch that moved."""
    repo, session = await setup_array(aic.in_memory_storage(), 8)
    payloads = []
    for i in range(4):
        fork = session.fork()
        arr = await zas.open_array(store=fork.store, path="data")
        await arr.setitem(slice(i * CHUNK, (i + 1) * CHUNK), np.full(CHUNK, 10 + i, dtype="i8"))
        payloads.append(fork.to_bytes())
    other = await repo.writable_session("main")  # meanwhile, another writer commits
    arr = await zas.open_array(store=other.store, path="data")
    await arr.setitem(slice(6 * CHUNK, 8 * CHUNK), np.full(2 * CHUNK, 99, dtype="i8"))
    await other.commit("other writer")

    await session.merge(*[aic.ForkSession.from_bytes(p) for p in payloads])
    arr = await zas.open_array(store=session.store, path="data")
    np.testing.assert_array_equal(
        await arr.getitem(slice(0, 4 * CHUNK)), np.repeat([10, 11, 12, 13], CHUNK)
    )
    await arr.setitem(slice(3 * CHUNK, 4 * CHUNK), np.full(CHUNK, 7, dtype="i8"))  # wins
    before = session.changes.chunks
    with pytest.raises(aic.ConflictError):
        await session.commit("without rebase")
    assert session.changes.chunks == before  # a refused commit keeps every change
    await session.commit("rebased", rebase_with=aic.BasicConflictSolver())
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="data", mode="r")
    np.testing.assert_array_equal(
        await arr.getitem(slice(None)), np.repeat([10, 11, 12, 7, 0, 0, 99, 99], CHUNK)
    )


async def test_merged_payloads_update_an_array_with_data() -> None:
    repo, session = await setup_array(aic.in_memory_storage(), 4)
    arr = await zas.open_array(store=session.store, path="data")
    await arr.setitem(slice(None), np.full(4 * CHUNK, 5, dtype="i8"))
    await session.commit("data")
    session = await repo.writable_session("main")  # a committed session is read-only
    first, second = session.fork(), session.fork()
    arr = await zas.open_array(store=first.store, path="data")
    await arr.setitem(slice(0, CHUNK), np.full(CHUNK, 1, dtype="i8"))
    await first.store.delete("data/c/2")
    arr = await zas.open_array(store=second.store, path="data")
    await arr.setitem(slice(3 * CHUNK, 4 * CHUNK), np.full(CHUNK, 3, dtype="i8"))
    forks = [aic.ForkSession.from_bytes(f.to_bytes()) for f in (first, second)]
    await session.merge(*forks)
    await session.commit("updates")
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="data", mode="r")
    np.testing.assert_array_equal(await arr.getitem(slice(None)), np.repeat([1, 5, 0, 3], CHUNK))


async def test_merge_sessions_flattens_nested_lists() -> None:
    repo, session = await setup_array(aic.in_memory_storage(), 4)
    forks = [session.fork() for _ in range(4)]
    for i, fork in enumerate(forks):
        arr = await zas.open_array(store=fork.store, path="data")
        await arr.setitem(slice(i * CHUNK, (i + 1) * CHUNK), np.full(CHUNK, i, dtype="i8"))
    with pytest.warns(DeprecationWarning):
        merged = await merge_sessions([forks[0], [forks[1], (forks[2],)]], forks[3])
    assert merged is forks[0]
    with (
        pytest.raises(aic.SessionStateError, match=r"Session\.merge"),
        pytest.warns(DeprecationWarning),
    ):
        await merge_sessions(forks[0], session)  # type: ignore[arg-type]
    await session.merge(merged)
    await session.commit("merged")
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="data", mode="r")
    np.testing.assert_array_equal(await arr.getitem(slice(None)), np.repeat(np.arange(4), CHUNK))


async def test_bad_payloads() -> None:
    _, session = await setup_array(aic.in_memory_storage(), 2)
    fork = session.fork()
    arr = await zas.open_array(store=fork.store, path="data")
    await arr.setitem(slice(None), np.arange(2 * CHUNK))
    payload = fork.to_bytes()
    again = aic.ForkSession.from_bytes(payload)
    assert again.changes == fork.changes
    cases = {
        "truncated": payload[:10],
        "cut": payload[:-3],
        "checksum": payload[:-1] + bytes([payload[-1] ^ 1]),
        "magic": b"X" + payload[1:],
        "version": payload[:8] + b"\x09\x00" + payload[10:],
        "empty": b"",
    }
    for what, bad in cases.items():
        with pytest.raises(aic.ForkPayloadError):
            aic.ForkSession.from_bytes(bad)
        assert what


async def test_payload_grows_with_changes_not_repository() -> None:
    repo, session = await setup_array(aic.in_memory_storage(), 64)
    arr = await zas.open_array(store=session.store, path="data")
    await arr.setitem(slice(None), np.arange(64 * CHUNK))
    await session.commit("big repository")
    session = await repo.writable_session("main")  # a committed session is read-only
    empty = len(session.fork().to_bytes())
    fork = session.fork()
    one = await zas.open_array(store=fork.store, path="data")
    await one.setitem(slice(0, CHUNK), np.zeros(CHUNK, dtype="i8"))
    assert len(fork.to_bytes()) < empty + 400
    assert empty < 400
    del repo


async def test_a_fork_replacing_a_node_the_parent_added_leaves_one_node() -> None:
    """The parent adds group /x after forking, the fork adds array /x: after the merge
    (the fork wins) one node /x, an array, and the parent's chunks of a replaced array
    are gone with it."""
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    await zas.open_group(store=session.store, mode="w")
    await session.commit("root")
    for parent_kind in ("group", "array"):
        session = await repo.writable_session("main")
        fork = session.fork()
        if parent_kind == "group":
            await zas.open_group(store=session.store, path="x", mode="w")
        else:
            parent_arr = await zas.create_array(session.store, name="x", shape=(4,), dtype="u1")
            await parent_arr.setitem(slice(None), 1)
        arr = await zas.create_array(fork.store, name="x", shape=(4,), chunks=(2,), dtype="u1")
        await arr.setitem(slice(0, 2), 7)
        await session.merge(aic.ForkSession.from_bytes(fork.to_bytes()))
        assert [n.path for n in await session.list_nodes()] == ["/", "/x"]
        await session.commit(f"fork's array over the parent's {parent_kind}")
        ro = await repo.readonly_session(branch="main")
        assert [n.path for n in await ro.list_nodes()] == ["/", "/x"]
        assert [k async for k in ro.store.list_prefix("x/")] == ["x/zarr.json", "x/c/0"]
        session = await repo.writable_session("main")
        await session.delete_node("/x")
        await session.commit("clean")


@pytest.mark.parametrize("through_payload", [False, True], ids=["fork", "payload"])
async def test_a_fork_that_deletes_and_recreates_an_array_is_merged_whole(
    through_payload: bool,
) -> None:
    # the fork's deletion names the old node: merged before its new node, not after it
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    first = await zas.create_array(session.store, name="t", shape=(6,), chunks=(6,), dtype="f8")
    await first.setitem(slice(None), np.arange(6.0))
    await session.commit("first")
    session = await repo.writable_session("main")
    fork = session.fork()
    again = await zas.create_array(
        fork.store, name="t", shape=(3,), chunks=(3,), dtype="f8", overwrite=True
    )
    await again.setitem(slice(None), np.ones(3))
    if through_payload:
        fork = aic.ForkSession.from_bytes(fork.to_bytes())
    await session.merge(fork)
    status = await session.status()
    assert status.deleted_arrays == {"/t"} and status.new_arrays == {"/t"}
    await session.commit("recreated")
    ro = await repo.readonly_session(branch="main")
    back = await zas.open_array(store=ro.store, path="t")
    np.testing.assert_array_equal(await back.getitem(slice(None)), np.ones(3))
