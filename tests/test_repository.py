"""Repository, sessions and commits: versioned reads and writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from tests.conftest import StorageFactory


async def write_array(session: aic.Session, path: str, values: np.ndarray, chunks: int) -> None:
    group = await zas.open_group(store=session.store, mode="a")
    arr = await group.create_array(
        path, shape=values.shape, chunks=(chunks,), dtype=values.dtype, overwrite=True
    )
    await arr.setitem(slice(None), values)


async def read_array(session: aic.Session, path: str) -> np.ndarray:
    arr = await zas.open_array(store=session.store, path=path, mode="r")
    return np.asarray(await arr.getitem(slice(None)))


async def test_create_write_commit_read(make_storage: StorageFactory) -> None:
    storage = make_storage()
    repo = await aic.Repository.create(storage)
    assert await aic.Repository.exists(storage)
    session = await repo.writable_session("main")
    assert not session.has_uncommitted_changes
    await write_array(session, "t", np.arange(100, dtype="f4"), 10)
    assert session.has_uncommitted_changes
    sid = await session.commit("first write", metadata={"author": "me", "n": 1})
    assert not session.has_uncommitted_changes
    assert await repo.lookup_branch("main") == str(sid)

    reopened = await aic.Repository.open(storage)
    ro = await reopened.readonly_session(branch="main")
    assert ro.read_only
    np.testing.assert_array_equal(await read_array(ro, "t"), np.arange(100, dtype="f4"))
    history = [s async for s in reopened.ancestry(branch="main")]
    assert [h.message for h in history] == ["first write", "Repository initialized"]
    assert history[0].metadata == {"author": "me", "n": 1}
    assert history[0].parent_id == history[1].id == "1CECHNKREP0F1RSTCMT0"


async def test_create_refuses_existing_and_open_refuses_missing(
    make_storage: StorageFactory,
) -> None:
    storage = make_storage()
    with pytest.raises(aic.RepositoryNotFoundError):
        await aic.Repository.open(storage)
    await aic.Repository.create(storage)
    with pytest.raises(aic.RepositoryExistsError):
        await aic.Repository.create(storage)
    again = await aic.Repository.open_or_create(storage)
    assert await again.list_branches() == {"main"}


async def test_read_only_session_refuses_writes(repo: aic.Repository) -> None:
    ro = await repo.readonly_session(branch="main")
    with pytest.raises(ValueError, match="read-only"):
        await zas.open_group(store=ro.store, mode="w")  # zarr itself refuses
    from zarr.core.buffer import cpu

    with pytest.raises(aic.ReadOnlyError):
        await ro.store.set("zarr.json", cpu.Buffer.from_bytes(b"{}"))
    with pytest.raises(aic.ReadOnlyError):
        await ro.set_metadata("/", b'{"zarr_format":3,"node_type":"group"}')
    with pytest.raises(aic.ReadOnlyError):
        await ro.commit("nothing")


async def test_commit_without_changes_is_refused(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    with pytest.raises(aic.SessionStateError):
        await session.commit("empty")


async def test_inline_and_native_chunks(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    await write_array(session, "small", np.arange(8, dtype="i1"), 4)  # 4-byte chunks: inline
    await write_array(session, "big", np.arange(4096, dtype="i8"), 1024)  # 8 KiB: native
    small_ref = await session.get_chunk_ref("/small", (0,))
    big_ref = await session.get_chunk_ref("/big", (1,))
    assert type(small_ref).__name__ == "InlineRef"
    assert type(big_ref).__name__ == "NativeRef"
    await session.commit("two arrays")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "small"), np.arange(8, dtype="i1"))
    np.testing.assert_array_equal(await read_array(ro, "big"), np.arange(4096, dtype="i8"))


async def test_branches_and_tags(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    await write_array(session, "a", np.zeros(10, dtype="i4"), 5)
    first = await session.commit("zeros")
    await repo.create_branch("dev", first)
    with pytest.raises(aic.RefExistsError):
        await repo.create_branch("dev", first)
    dev = await repo.writable_session("dev")
    await write_array(dev, "a", np.ones(10, dtype="i4"), 5)
    second = await dev.commit("ones")
    assert await repo.list_branches() == {"main", "dev"}
    assert await repo.lookup_branch("dev") == str(second)
    assert await repo.lookup_branch("main") == str(first)

    await repo.create_tag("v1", first)
    assert await repo.list_tags() == {"v1"}
    assert await repo.lookup_tag("v1") == str(first)
    with pytest.raises(aic.RefExistsError):
        await repo.create_tag("v1", second)  # tags cannot move
    tagged = await repo.readonly_session(tag="v1")
    np.testing.assert_array_equal(await read_array(tagged, "a"), np.zeros(10, dtype="i4"))
    await repo.delete_tag("v1")
    assert await repo.list_tags() == set()
    with pytest.raises(aic.RefNotFoundError):
        await repo.lookup_tag("v1")
    with pytest.raises(aic.RefExistsError):
        await repo.create_tag("v1", second)  # a deleted tag name is never reused

    await repo.reset_branch("main", second)
    assert await repo.lookup_branch("main") == str(second)
    await repo.delete_branch("dev")
    assert await repo.list_branches() == {"main"}
    with pytest.raises(aic.RepositoryError):
        await repo.delete_branch("main")
    with pytest.raises(aic.RefNotFoundError):
        await repo.lookup_branch("dev")


@pytest.mark.parametrize("name", ["", "a/b", "..", "x\x00", "back\\slash"])
async def test_bad_ref_names(repo: aic.Repository, name: str) -> None:
    sid = await repo.lookup_branch("main")
    with pytest.raises(aic.InvalidRefNameError):
        await repo.create_branch(name, sid)
    with pytest.raises(aic.InvalidRefNameError):
        await repo.create_tag(name, sid)


async def test_time_travel(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    expected: dict[str, np.ndarray] = {}
    for i in range(4):
        values = np.full(20, i, dtype="i2") + np.arange(20, dtype="i2")
        await write_array(session, "x", values, 7)
        sid = await session.commit(f"commit {i}")
        expected[str(sid)] = values
    history = [s async for s in repo.ancestry(branch="main")]
    assert len(history) == 5
    for info in history[:-1]:
        ro = await repo.readonly_session(snapshot_id=info.id)
        np.testing.assert_array_equal(await read_array(ro, "x"), expected[info.id])
    empty = await repo.readonly_session(snapshot_id=history[-1].id)
    assert [k async for k in empty.store.list()] == []


async def test_conflicting_commit_raises(repo: aic.Repository) -> None:
    setup = await repo.writable_session("main")
    await zas.open_group(store=setup.store, mode="w")
    base = await setup.commit("root group")
    s1 = await repo.writable_session("main")
    s2 = await repo.writable_session("main")
    await write_array(s1, "a", np.arange(4, dtype="i4"), 2)
    await write_array(s2, "b", np.arange(4, dtype="i4"), 2)
    winner = await s1.commit("one")
    with pytest.raises(aic.ConflictError) as info:
        await s2.commit("two")
    assert info.value.branch == "main"
    assert info.value.actual == str(winner)
    assert info.value.expected == str(base)
    assert await repo.lookup_branch("main") == str(winner)
    # nothing of the loser became visible
    ro = await repo.readonly_session(branch="main")
    assert await ro.get_metadata("/b") is None
    # with a rebase the disjoint change lands on top
    third = await s2.commit("two", rebase_with=aic.BasicConflictSolver())
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "a"), np.arange(4, dtype="i4"))
    np.testing.assert_array_equal(await read_array(ro, "b"), np.arange(4, dtype="i4"))
    parents = [s.id async for s in repo.ancestry(branch="main")]
    assert parents[:3] == [str(third), str(winner), str(base)]

    # both creating the same node is a conflict no solver resolves
    s3 = await repo.writable_session("main")
    s4 = await repo.writable_session("main")
    await write_array(s3, "same", np.arange(2, dtype="i4"), 2)
    await write_array(s4, "same", np.arange(2, dtype="i4"), 2)
    await s3.commit("same 1")
    with pytest.raises(aic.RebaseFailedError) as failed:
        await s4.commit("same 2", rebase_with=aic.BasicConflictSolver())
    assert failed.value.conflicts[0].kind is aic.ConflictKind.NEW_NODE_CONFLICTS_WITH_EXISTING_NODE


async def _chunk_conflict(repo: aic.Repository) -> tuple[aic.Session, aic.Session]:
    setup = await repo.writable_session("main")
    await write_array(setup, "a", np.zeros(4, dtype="i8"), 2)
    await setup.commit("setup")
    ours = await repo.writable_session("main")
    theirs = await repo.writable_session("main")
    a_ours = await zas.open_array(store=ours.store, path="a")
    a_theirs = await zas.open_array(store=theirs.store, path="a")
    await a_theirs.setitem(slice(0, 2), np.array([7, 7]))
    await a_ours.setitem(slice(0, 2), np.array([1, 1]))
    await a_ours.setitem(slice(2, 4), np.array([2, 2]))
    await theirs.commit("theirs")
    return ours, theirs


async def test_version_selection_use_ours(repo: aic.Repository) -> None:
    ours, _ = await _chunk_conflict(repo)
    solver = aic.BasicConflictSolver(on_chunk_conflict=aic.VersionSelection.UseOurs)
    await ours.commit("ours", rebase_with=solver)
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "a"), [1, 1, 2, 2])


async def test_version_selection_use_theirs(repo: aic.Repository) -> None:
    ours, _ = await _chunk_conflict(repo)
    solver = aic.BasicConflictSolver(on_chunk_conflict=aic.VersionSelection.UseTheirs)
    await ours.commit("ours", rebase_with=solver)
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "a"), [7, 7, 2, 2])


async def test_version_selection_fail_and_detector(repo: aic.Repository) -> None:
    ours, _ = await _chunk_conflict(repo)
    tip = await repo.lookup_branch("main")
    for solver in (
        aic.BasicConflictSolver(on_chunk_conflict=aic.VersionSelection.Fail),
        aic.ConflictDetector(),
    ):
        with pytest.raises(aic.RebaseFailedError) as info:
            await ours.commit("ours", rebase_with=solver)
        assert [c.kind for c in info.value.conflicts] == [aic.ConflictKind.CHUNK_DOUBLE_UPDATE]
        assert info.value.conflicts[0].path == "/a"
        assert info.value.conflicts[0].chunk_coords == frozenset({(0,)})
    assert await repo.lookup_branch("main") == tip
    # the session kept its changes: a permissive rebase still works afterwards
    await ours.commit("ours", rebase_with=aic.BasicConflictSolver())


async def test_delete_of_updated_array_policy(repo: aic.Repository) -> None:
    setup = await repo.writable_session("main")
    await write_array(setup, "a", np.zeros(4, dtype="i8"), 2)
    await setup.commit("setup")
    deleter = await repo.writable_session("main")
    writer = await repo.writable_session("main")
    arr = await zas.open_array(store=writer.store, path="a")
    await arr.setitem(slice(0, 2), np.array([5, 5]))
    await writer.commit("write")
    await deleter.store.delete("a/zarr.json")
    strict = aic.BasicConflictSolver(fail_on_delete_of_updated_array=True)
    with pytest.raises(aic.RebaseFailedError) as info:
        await deleter.commit("delete", rebase_with=strict)
    assert info.value.conflicts[0].kind is aic.ConflictKind.DELETE_OF_UPDATED_ARRAY
    await deleter.commit("delete", rebase_with=aic.BasicConflictSolver())
    ro = await repo.readonly_session(branch="main")
    assert await ro.get_metadata("/a") is None


async def test_status_discard_and_diff(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    await write_array(session, "a", np.arange(6, dtype="i4"), 3)
    status = await session.status()
    assert status.new_arrays == {"/a"}
    assert status.new_groups == {"/"}
    assert status.updated_chunks == {"/a": {(0,), (1,)}}
    first = await session.commit("a")
    arr = await zas.open_array(store=session.store, path="a")
    await arr.setitem(slice(0, 3), np.array([9, 9, 9]))
    session.discard_changes()
    assert not session.has_uncommitted_changes
    arr = await zas.open_array(store=session.store, path="a")
    await arr.setitem(slice(3, 6), np.array([8, 8, 8]))
    second = await session.commit("b")
    diff = await repo.diff(from_snapshot_id=first, to_snapshot_id=second)
    assert diff.updated_chunks == {"/a": {(1,)}}
    assert not diff.new_arrays and not diff.deleted_arrays
    full = await repo.diff(from_snapshot_id="1CECHNKREP0F1RSTCMT0", to_branch="main")
    assert full.new_arrays == {"/a"}
    assert full.updated_chunks == {"/a": {(0,), (1,)}}


async def test_concurrent_writes_from_tasks(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    arr = await group.create_array("x", shape=(64,), chunks=(4,), dtype="i8")

    async def fill(i: int) -> None:
        await arr.setitem(slice(i * 4, i * 4 + 4), np.full(4, i))

    await asyncio.gather(*(fill(i) for i in range(16)))
    await session.commit("parallel")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "x"), np.repeat(np.arange(16), 4))


def test_session_across_event_loops(tmp_path: Path) -> None:
    """A script may call asyncio.run several times and use zarr's sync API in between."""
    storage = aic.local_filesystem_storage(tmp_path / "repo")
    repo = asyncio.run(aic.Repository.create(storage))
    session = asyncio.run(repo.writable_session("main"))
    arr = zarr.create_array(store=session.store, name="s", shape=(10,), chunks=(5,), dtype="u1")
    arr[:] = np.arange(10, dtype="u1")
    sid = asyncio.run(session.commit("sync write"))
    ro = asyncio.run(repo.readonly_session(snapshot_id=sid))
    np.testing.assert_array_equal(
        zarr.open_array(store=ro.store, path="s", mode="r")[:], np.arange(10, dtype="u1")
    )


async def test_one_chunk_read_costs_four_requests(tmp_path: Path) -> None:
    """Fresh repository, one chunk: ref, snapshot, manifest, chunk; nothing more."""
    from aicechunk.drivers import LocalDriver
    from aicechunk.testing import CountingDriver

    storage = aic.local_filesystem_storage(tmp_path / "r")
    repo = await aic.Repository.create(storage)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    arr = await group.create_array("x", shape=(1024,), chunks=(256,), dtype="f8", compressors=None)
    await arr.setitem(slice(None), np.arange(1024, dtype="f8"))
    await session.commit("x")

    counting = CountingDriver(LocalDriver(tmp_path / "r"))
    fresh = await aic.Repository.open(aic.storage_from_driver(counting))
    counting.reset()
    ro = await fresh.readonly_session(branch="main")
    chunk = await ro.get_chunk("/x", (2,))
    assert chunk is not None and len(chunk) == 2048
    calls = [f"{method} {key}" for method, key in counting.calls]
    kinds = [c.split(" ")[1].split("/")[0] for c in calls]
    assert kinds == ["refs", "snapshots", "manifests", "chunks"], calls


async def test_caches_are_bounded_by_caching_config(tmp_path: Path) -> None:
    from aicechunk.config import CachingConfig
    from aicechunk.drivers import LocalDriver
    from aicechunk.testing import CountingDriver

    storage = aic.local_filesystem_storage(tmp_path / "r")
    repo = await aic.Repository.create(storage)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    for name in ("a", "b"):
        arr = await group.create_array(name, shape=(8,), chunks=(2,), dtype="i8")
        await arr.setitem(slice(None), np.arange(8))
    await session.commit("two arrays")

    async def manifest_reads(config: aic.RepositoryConfig) -> int:
        counting = CountingDriver(LocalDriver(tmp_path / "r"))
        reopened = await aic.Repository.open(aic.storage_from_driver(counting), config=config)
        ro = await reopened.readonly_session(branch="main")
        for _ in range(3):
            for name in ("/a", "/b"):
                for i in range(4):
                    await ro.get_chunk_ref(name, (i,))
        return sum(1 for method, key in counting.calls if key.startswith("manifests/"))

    assert await manifest_reads(aic.RepositoryConfig.default()) == 2  # each manifest once
    small = aic.RepositoryConfig.default()
    small.caching = CachingConfig(num_chunk_refs=4)  # room for one 4-ref manifest
    assert await manifest_reads(small) == 6  # a, b alternate and evict each other


async def test_close_in_one_loop_leaves_reads_in_other_loops_working(tmp_path: Path) -> None:
    """``repo.close()`` releases what the calling loop holds; reads running in other
    loops at the same time (120 in all) are not broken by it."""
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "repo"))
    session = await repo.writable_session("main")
    await write_array(session, "x", np.arange(64), chunks=4)
    await session.commit("data")
    readers, reads = 4, 30

    def read_in_new_loop() -> int:
        async def main() -> int:
            failed = 0
            for _ in range(reads):
                try:
                    ro = await repo.readonly_session(branch="main")
                    np.testing.assert_array_equal(await read_array(ro, "x"), np.arange(64))
                except Exception:
                    failed += 1
            return failed

        return asyncio.run(main())

    tasks = [asyncio.ensure_future(asyncio.to_thread(read_in_new_loop)) for _ in range(readers)]
    while not all(task.done() for task in tasks):
        await repo.close()
        await asyncio.sleep(0.001)
    assert sum(task.result() for task in tasks) == 0
