"""Spec v2 repositories on their own: concurrent writers and faults through the repo info
file's compare-and-swap (icechunk 2.3.0 reading the results is ``test_interop_v2.py``)."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.errors import ChunkUploadError
from aicechunk.format import repo_updates as ru
from aicechunk.format.repo_info import REPO_INFO_KEY, decode_repo_info
from aicechunk.testing import FaultyDriver, InjectedFault

N = 8


async def _repo(driver: MemoryDriver) -> aic.Repository:
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=2)
    session = await repo.writable_session("main")
    arr = await zas.create_array(session.store, name="x", shape=(N,), chunks=(1,), dtype="i4")
    await arr.setitem(slice(None), np.full(N, -1, dtype="i4"))
    await session.commit("setup")
    return repo


async def _ops(driver: MemoryDriver) -> list[ru.UpdateKind]:
    info = decode_repo_info(await driver.get(REPO_INFO_KEY))
    return [u.kind for u in info.latest_updates]


async def _write(repo: aic.Repository, branch: str, index: int, **commit: object) -> str:
    session = await repo.writable_session(branch)
    arr = await zas.open_array(store=session.store, path="x")
    await arr.setitem(index, index)
    return await session.commit(f"write {index}", **commit)  # type: ignore[arg-type]


async def test_concurrent_writers_on_one_branch_and_on_many() -> None:
    """Writers on other branches never conflict (the change is reapplied to the newer
    repo info file); writers on one branch rebase; no commit is lost."""
    driver = MemoryDriver()
    repo = await _repo(driver)
    setup = await repo.lookup_branch("main")
    for i in range(N):
        await repo.create_branch(f"b{i}", setup)
    on_branches = await asyncio.gather(*(_write(repo, f"b{i}", i) for i in range(N)))
    solver = aic.BasicConflictSolver()
    on_main = await asyncio.gather(*(_write(repo, "main", i, rebase_with=solver) for i in range(N)))
    for i, sid in enumerate(on_branches):
        assert await repo.lookup_branch(f"b{i}") == sid
    history = [info async for info in repo.ancestry(branch="main")]
    for child, parent in itertools.pairwise(history):
        assert child.parent_id == parent.id
    assert {h.id for h in history[:N]} == set(on_main)
    ro = await repo.readonly_session("main")
    arr = await zas.open_array(store=ro.store, path="x", mode="r")
    assert np.asarray(await arr.getitem(slice(None))).tolist() == list(range(N))
    kinds = [type(k).__name__ for k in await _ops(driver)]
    assert kinds.count("NewCommit") == 2 * N + 1 and kinds.count("BranchCreated") == N
    assert kinds[-1] == "RepoInitialized"


@pytest.mark.parametrize(
    "step", ["chunks/", "manifests/", "transactions/", "snapshots/", "overwritten/", "repo"]
)
@pytest.mark.parametrize("after", [False, True], ids=["before-apply", "after-apply"])
async def test_fail_each_commit_step(step: str, after: bool) -> None:
    inner = MemoryDriver()
    repo = await _repo(inner)
    before = await repo.lookup_branch("main")
    faulty = FaultyDriver(inner, methods={"put"}, key_prefix=step, fail_calls={1}, after=after)
    flaky = aic.Repository(aic.storage_from_driver(faulty), repo.config, spec_version=2)
    session = await flaky.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x")
    if step == "chunks/":  # a chunk big enough for a chunk file
        big = await zas.create_array(
            session.store, name="big", shape=(1024,), chunks=(1024,), dtype="i8", compressors=None
        )
    try:
        if step == "chunks/":
            await big.setitem(slice(None), np.arange(1024))
        await arr.setitem(3, 33)
        sid: str | None = await session.commit("faulty")
    except InjectedFault:
        sid = None
    except ChunkUploadError as err:  # the chunk was written behind: its commit fails
        assert step == "chunks/" and isinstance(err.__cause__, InjectedFault)
        sid = None
    tip = await repo.lookup_branch("main")
    if step == "repo" and after:  # a lost answer: read back, and found to have landed
        assert sid is not None
    if sid is None:
        assert tip == before
        faulty.disarm()
        if step == "chunks/" and not after:
            big = await zas.open_array(store=session.store, path="big")
            await big.setitem(slice(None), np.arange(1024))
        await arr.setitem(3, 33)
        sid = await session.commit("retry")
    assert await repo.lookup_branch("main") == sid
    kinds = [type(k).__name__ for k in await _ops(inner)]
    assert kinds == ["NewCommit", "NewCommit", "RepoInitialized"]  # recorded once
    assert faulty.injected == 1


async def test_v1_repository_keeps_its_spec_version(tmp_path: object) -> None:
    driver = MemoryDriver()
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=1)
    assert repo.spec_version == 1
    await _write_setup(repo)
    reopened = await aic.Repository.open(aic.storage_from_driver(driver))
    assert reopened.spec_version == 1
    assert not await driver.exists(REPO_INFO_KEY)


async def _write_setup(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    await zas.open_group(store=session.store, mode="w")
    await session.commit("root")


async def test_unknown_spec_version_is_refused_on_create() -> None:
    with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 7"):
        await aic.Repository.create(aic.in_memory_storage(), spec_version=7)


async def test_forks_of_a_v2_session_travel_and_merge(tmp_path: object) -> None:
    import pickle

    storage = aic.local_filesystem_storage(str(tmp_path))
    repo = await aic.Repository.create(storage, spec_version=2)
    session = await repo.writable_session("main")
    arr = await zas.create_array(session.store, name="x", shape=(N,), chunks=(1,), dtype="i4")
    await session.commit("array")
    session = await repo.writable_session("main")
    fork = pickle.loads(pickle.dumps(session.fork()))
    written = await zas.open_array(store=fork.store, path="x")
    await written.setitem(slice(None), np.arange(N, dtype="i4"))
    await session.merge(fork)
    sid = await session.commit("merged")
    assert await repo.lookup_branch("main") == sid
    ro = await (await aic.Repository.open(storage)).readonly_session("main")
    arr = await zas.open_array(store=ro.store, path="x", mode="r")
    assert np.asarray(await arr.getitem(slice(None))).tolist() == list(range(N))
    assert pickle.loads(pickle.dumps(ro))._state.assets.format_version == 2
