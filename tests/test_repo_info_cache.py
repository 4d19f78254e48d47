"""The repo info store decodes a repo info file once: what it read or wrote last is not
decoded again, and a file another writer changed is (the cache is keyed by the bytes). A
change starts from the file this store last read or wrote, without reading it (a commit:
when the tip it holds is the session's), and a change made on a file that changed since is
made again on the new one; one refused there, or found done, is tried on the file as
stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
import aicechunk.repo_info_store as ris
from aicechunk.drivers import LocalDriver, MemoryDriver
from aicechunk.format import repo_updates as ru
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import REPO_INFO_KEY, decode_repo_info
from aicechunk.repo_info_store import RepoInfoStore
from aicechunk.testing import CountingDriver


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the repo info files the store decodes, as it decodes them."""
    seen: list[int] = []
    real: Callable[..., Any] = ris.decode_repo_info

    def counting(data: bytes, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(ris, "decode_repo_info", counting)
    return seen


async def _commit(repo: aic.Repository, branch: str, value: int) -> str:
    session = await repo.writable_session(branch)
    arr = await zas.open_array(store=session.store, path="x", mode="r+")
    await arr.setitem(slice(0, 1), np.array([value], dtype="i4"))
    return await session.commit(f"{branch} {value}")


async def test_a_writer_decodes_the_file_once(decodes: list[int]) -> None:
    driver = MemoryDriver()
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=2)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(4,), chunks=(1,), dtype="i4")
    base = await session.commit("array")
    decodes.clear()
    for i in range(3):
        await repo.create_branch(f"b{i}", base)
        await _commit(repo, f"b{i}", i)
    assert decodes == []  # every read found the bytes this store wrote
    stored = decode_repo_info(await driver.get(REPO_INFO_KEY))
    assert stored.branches == (await repo._assets.refs.info()).branches  # type: ignore[attr-defined]
    assert await repo.list_branches() == {"main", "b0", "b1", "b2"}


async def test_another_writers_change_is_read(decodes: list[int]) -> None:
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    repo = await aic.Repository.create(storage, spec_version=2)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(4,), chunks=(1,), dtype="i4")
    base = await session.commit("array")
    other = await aic.Repository.open(storage)
    await other.create_branch("theirs", base)
    decodes.clear()
    assert "theirs" in await repo.list_branches()
    assert len(decodes) == 1
    # the next commit of ours applies to the file the other writer made, then is read
    # back without decoding it again
    tip = await _commit(repo, "theirs", 7)
    assert await repo.lookup_branch("theirs") == tip
    assert len(decodes) == 1
    assert await other.lookup_branch("theirs") == tip
    assert [u.kind async for u in other.ops_log()] == [u.kind async for u in repo.ops_log()]


async def test_a_commit_on_the_tip_last_seen_reads_nothing() -> None:
    """The compare-and-swap of a commit starts from the file this process last saw when
    it holds the session's tip: the conditional write confirms it; the files of the
    commit are written before the repo info file, its backup beside them."""
    driver = CountingDriver(MemoryDriver())
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=2)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(4,), chunks=(1,), dtype="i4")
    await session.commit("array")
    session = await repo.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x", mode="r+")
    await arr.setitem(slice(0, 1), np.array([1], dtype="i4"))
    driver.calls.clear()
    await session.commit("one more")
    assert driver.calls.count(("get", REPO_INFO_KEY)) == 0
    assert [m for m, _ in driver.calls] == ["put"] * 5
    assert driver.calls[-1] == ("put", REPO_INFO_KEY)
    firsts = {key.partition("/")[0] for _, key in driver.calls[:-1]}
    assert firsts == {"transactions", "manifests", "snapshots", "overwritten"}


async def _two_writers() -> tuple[aic.Repository, aic.Repository, SnapshotId]:
    """Two repository objects on one storage (two processes, as far as caching goes),
    both having seen the file with an array on ``main``; and that commit."""
    storage = aic.storage_from_driver(MemoryDriver())
    ours = await aic.Repository.create(storage, spec_version=2)
    session = await ours.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(4,), chunks=(1,), dtype="i4")
    base = SnapshotId(await session.commit("array"))
    theirs = await aic.Repository.open(storage)
    assert await theirs.list_branches() == {"main"}
    return ours, theirs, base


async def test_a_commit_on_a_tip_moved_elsewhere_conflicts_or_rebases() -> None:
    ours, theirs, _ = await _two_writers()
    session = await ours.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x", mode="r+")
    await arr.setitem(slice(1, 2), np.array([5], dtype="i4"))
    moved = await _commit(theirs, "main", 7)  # our store still holds the file before it
    with pytest.raises(aic.ConflictError):
        await session.commit("ours")
    assert await theirs.lookup_branch("main") == moved
    rebased = await session.commit("ours", rebase_with=aic.ConflictDetector())
    assert await theirs.lookup_branch("main") == rebased
    values = await zas.open_array(store=(await theirs.readonly_session("main")).store, path="x")
    assert (await values.getitem(slice(0, 2))).tolist() == [7, 5]


async def test_a_commit_on_a_file_changed_elsewhere_lands_on_the_new_one() -> None:
    ours, theirs, base = await _two_writers()
    session = await ours.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x", mode="r+")
    await arr.setitem(slice(1, 2), np.array([5], dtype="i4"))
    await theirs.create_branch("theirs", base)  # another ref: no conflict
    tip = await session.commit("ours")
    assert await theirs.lookup_branch("main") == tip
    assert await theirs.list_branches() == {"main", "theirs"}
    kinds = [type(u.kind) async for u in theirs.ops_log()][:2]
    assert kinds == [ru.NewCommit, ru.BranchCreated]


async def test_a_commit_on_a_file_made_read_only_elsewhere_is_refused() -> None:
    ours, theirs, base = await _two_writers()
    session = await ours.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x", mode="r+")
    await arr.setitem(slice(1, 2), np.array([5], dtype="i4"))
    await theirs.set_status(aic.RepoStatus(aic.RepoAvailability.read_only))
    with pytest.raises(aic.ReadOnlyRepositoryError):  # the file as stored is read-only
        await session.commit("ours")
    assert await theirs.lookup_branch("main") == base


async def test_a_commit_refused_on_the_file_last_seen_is_tried_on_the_stored_one() -> None:
    ours, theirs, _ = await _two_writers()
    session = await ours.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x", mode="r+")
    await arr.setitem(slice(1, 2), np.array([5], dtype="i4"))
    # this process makes the repository read-only, another one puts it back online
    await ours.set_status(aic.RepoStatus(aic.RepoAvailability.read_only))
    await theirs.set_status(aic.RepoStatus(aic.RepoAvailability.online))
    tip = await session.commit("ours")
    assert await theirs.lookup_branch("main") == tip


async def test_a_change_on_a_stale_file_is_retried_on_the_new_one() -> None:
    memory = MemoryDriver()
    repo = await aic.Repository.create(aic.storage_from_driver(memory), spec_version=2)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(4,), chunks=(1,), dtype="i4")
    base = SnapshotId(await session.commit("array"))
    await _commit(repo, "main", 1)
    ours, theirs = CountingDriver(memory), RepoInfoStore(memory)
    store = RepoInfoStore(ours)
    tip = await store.fetch_branch("main")
    await theirs.create_branch("theirs", base)  # the file changes under our read
    ours.calls.clear()
    await store.update_branch("main", base, tip, None)
    # the first write, on the file as read, fails; the change is made again on the new one
    assert ours.calls.count(("put", REPO_INFO_KEY)) == 2
    info = await theirs.info()
    assert info.branches == {"main": base, "theirs": base}
    kinds = [type(u.kind) for u in info.latest_updates[:2]]
    assert kinds == [ru.BranchReset, ru.BranchCreated]


async def test_nested_metadata_edited_in_place_is_not_seen_by_later_reads() -> None:
    """What ``get_metadata`` hands out is the caller's: editing a nested value in place
    changes neither later reads nor what the next change writes."""
    repo = await aic.Repository.create(aic.in_memory_storage(), spec_version=2)
    await repo.set_metadata({"owner": {"name": "ana"}})
    got = await repo.get_metadata()
    got["owner"]["name"] = "eve"
    assert await repo.get_metadata() == {"owner": {"name": "ana"}}
    await repo.update_metadata({"other": 1})
    reopened = await aic.Repository.open(repo.storage)
    assert await reopened.get_metadata() == {"owner": {"name": "ana"}, "other": 1}


async def test_large_repo_info_files_are_coded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decoding and encoding a repo info file grows with history: past the thresholds it
    runs in a worker thread, so the event loop keeps serving other tasks."""
    import threading

    threads: set[str] = set()
    real_decode, real_encode = ris.decode_repo_info, ris.encode_repo_info

    def decode(*args: Any, **kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return real_decode(*args, **kwargs)

    def encode(*args: Any) -> Any:
        threads.add(threading.current_thread().name)
        return real_encode(*args)

    monkeypatch.setattr(ris, "decode_repo_info", decode)
    monkeypatch.setattr(ris, "encode_repo_info", encode)
    monkeypatch.setattr(ris, "DECODE_BYTES_OFF_LOOP", 0)
    monkeypatch.setattr(ris, "ENCODE_ITEMS_OFF_LOOP", 0)
    repo = await aic.Repository.create(aic.in_memory_storage(), spec_version=2)
    await repo.create_branch("dev", await repo.lookup_branch("main"))
    reopened = await aic.Repository.open(repo.storage)
    assert await reopened.list_branches() == {"main", "dev"}
    assert threads and threading.main_thread().name not in threads


async def test_opening_reads_the_file_once_and_lists_branches_without_the_log(
    decodes: list[int],
) -> None:
    """``open_or_create`` of a repository that exists probes once (as ``open`` does:
    the repo info file, the v1 ``main`` branch file and ``config.yaml`` fetched together), and a
    branch list decodes the refs only: the snapshots and the log wait until used."""
    driver = CountingDriver(MemoryDriver())
    storage = aic.storage_from_driver(driver)
    repo = await aic.Repository.create(storage, spec_version=2)
    base = await repo.lookup_branch("main")
    for i in range(3):
        await repo.create_branch(f"b{i}", base)
    probe = [("get", REPO_INFO_KEY), ("get", "refs/branch.main/ref.json"), ("get", "config.yaml")]
    for opening in (aic.Repository.open, aic.Repository.open_or_create):
        driver.reset()
        reopened = await opening(storage)
        assert sorted(driver.calls) == sorted(probe)
        decodes.clear()
        assert await reopened.list_branches() == {"main", "b0", "b1", "b2"}
        info = await reopened._assets.refs.info(fresh=False)  # type: ignore[attr-defined]
        assert len(decodes) == 1
        assert all(item is None for item in info.latest_updates._items)
        assert all(item is None for item in info.snapshots._items)
        assert [type(u.kind) for u in info.latest_updates][:1] == [ru.BranchCreated]


class ReadsCounted(LocalDriver):
    """A local driver that counts the repo info file's reads of bytes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.byte_reads = 0

    def _read_small_object_sync(self, key: str) -> Any:
        self.byte_reads += key == REPO_INFO_KEY
        return super()._read_small_object_sync(key)


async def test_an_unchanged_local_file_is_checked_not_read(tmp_path: Path) -> None:
    """Reading the repo info file this store last read or wrote (a branch created, a
    session opened) costs a local driver the file's status, not its bytes; a file
    changed by another writer is read, bytes and all."""
    driver = ReadsCounted(tmp_path)
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=2)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(4,), chunks=(1,), dtype="i4")
    base = await session.commit("array")
    driver.byte_reads = 0
    for i in range(3):
        await repo.create_branch(f"b{i}", base)
        await _commit(repo, f"b{i}", i)
    assert await repo.list_branches() == {"main", "b0", "b1", "b2"}
    assert driver.byte_reads == 0
    other = await aic.Repository.open(aic.local_filesystem_storage(str(tmp_path)))
    await other.create_tag("theirs", base)
    await other.create_branch("theirs", base)
    assert await repo.list_tags() == {"theirs"}  # a read of the new file
    assert driver.byte_reads == 1
    tip = await _commit(repo, "theirs", 9)
    assert await other.lookup_branch("theirs") == tip
    assert driver.byte_reads == 1


class CheckedCounted(ReadsCounted):
    """A local driver that also counts the checks of the repo info file's version."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.checks = 0

    def _read_if_changed_sync(self, key: str, version: str) -> Any:
        self.checks += key == REPO_INFO_KEY
        return super()._read_if_changed_sync(key, version)


async def test_ref_changes_start_from_the_file_known_where_a_failed_condition_is_final(
    tmp_path: Path,
) -> None:
    """On local files (``resends_writes`` false) a branch, a tag or the metadata changes
    the file this store holds without reading it first: the conditional write is the
    check. A file changed elsewhere meanwhile fails it, and the change is decided on the
    file as stored: a branch or tag created there, even at the same snapshot, is
    refused as existing (never taken for ours); one deleted there can be created."""
    driver = CheckedCounted(tmp_path)
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=2)
    base = await repo.lookup_branch("main")
    driver.checks = driver.byte_reads = 0
    await repo.create_branch("b0", base)
    await repo.create_tag("t0", base)
    await repo.set_metadata({"k": 1})
    await repo.delete_branch("b0")
    assert (driver.checks, driver.byte_reads) == (1, 0)  # delete_branch looks it up first
    other = await aic.Repository.open(aic.local_filesystem_storage(str(tmp_path)))
    await other.create_branch("same", base)
    await other.create_tag("same", base)
    with pytest.raises(aic.RefExistsError):
        await repo.create_branch("same", base)
    with pytest.raises(aic.RefExistsError):
        await repo.create_tag("same", base)
    await other.delete_branch("same")
    await repo.create_branch("same", base)  # the file held here still lists it
    fresh = await aic.Repository.open(aic.local_filesystem_storage(str(tmp_path)))
    assert await fresh.list_branches() == {"main", "same"}
    assert await fresh.list_tags() == {"t0", "same"}
    assert await fresh.get_metadata() == {"k": 1}
    kinds = [type(u.kind).__name__ async for u in fresh.ops_log()]
    assert kinds.count("BranchCreated") == 3 and kinds.count("TagCreated") == 2


async def test_a_network_driver_reads_the_file_before_a_ref_change() -> None:
    """Where a failed condition may answer a retried request of ours (a network driver:
    ``resends_writes``), a ref change reads the file first, as before."""
    driver = CountingDriver(MemoryDriver())  # a wrapper: resends_writes, as any driver
    assert driver.resends_writes and not MemoryDriver.resends_writes
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=2)
    base = await repo.lookup_branch("main")
    driver.calls.clear()
    await repo.create_branch("b", base)
    repo_calls = [method for method, key in driver.calls if key == REPO_INFO_KEY]
    assert repo_calls == ["get", "put"]
