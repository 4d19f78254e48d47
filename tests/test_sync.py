"""The synchronous facade's machinery: pickling, processes, threads, loops, refusals."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.core.sync

import aicechunk as aic
import aicechunk.sync as icechunk
from aicechunk.sync._loop import facade_loop, run


def _repo(path: Path) -> icechunk.Repository:
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(path))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="x", shape=(8,), chunks=(2,), dtype="i4")
    session.commit("array")
    return repo


def _write(fork: icechunk.ForkSession, start: int) -> icechunk.ForkSession:
    zarr.open_array(fork.store, path="x", mode="r+")[start : start + 2] = start + 1
    return fork


def test_sessions_pickle_as_the_core_ones(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")
    session = repo.writable_session("main")
    fork = session.fork()
    # a fork pickles to exactly its core payload, and comes back as the facade
    assert pickle.dumps(fork).count(fork.core.to_bytes()) == 1
    back = pickle.loads(pickle.dumps(fork))
    assert isinstance(back, icechunk.ForkSession) and isinstance(back.core, aic.ForkSession)
    readonly = pickle.loads(pickle.dumps(repo.readonly_session("main")))
    assert isinstance(readonly, icechunk.Session) and readonly.read_only
    with pytest.raises(aic.SessionStateError, match="fork"):
        pickle.dumps(session)
    with pytest.raises(aic.SessionStateError, match="fork"):
        pickle.dumps(session.core)
    store = pickle.loads(pickle.dumps(fork.store))
    assert isinstance(store, icechunk.IcechunkStore) and isinstance(
        store.session, icechunk.ForkSession
    )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_forks_write_in_worker_processes(tmp_path: Path, method: str) -> None:
    repo = _repo(tmp_path / "r")
    run(asyncio.sleep(0))  # the facade's loop thread is running when the workers fork
    session = repo.writable_session("main")
    fork = session.fork()
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        forks = list(pool.map(_write, [fork] * 4, [0, 2, 4, 6]))
    session.merge(*forks)
    session.commit("from workers")
    data = zarr.open_array(repo.readonly_session("main").store, path="x")[:]
    assert data.tolist() == [1, 1, 3, 3, 5, 5, 7, 7]


def test_many_threads_share_one_loop(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")
    session = repo.writable_session("main")
    forks = [session.fork() for _ in range(4)]
    with ThreadPoolExecutor(8) as pool:
        written = list(pool.map(_write, forks, [0, 2, 4, 6]))
        branches = list(pool.map(lambda _: repo.list_branches(), range(32)))
    assert all(b == {"main"} for b in branches)
    session.merge(*written)
    session.commit("threads")
    assert zarr.open_array(repo.readonly_session("main").store, path="x")[:].sum() == 32


def test_the_loop_is_zarrs() -> None:
    assert facade_loop() is zarr.core.sync._get_loop()


async def test_blocking_calls_work_inside_a_running_loop(tmp_path: Path) -> None:
    # as a notebook cell: the caller's loop is blocked while the facade's loop works
    repo = _repo(tmp_path / "r")
    assert repo.list_branches() == {"main"}
    assert await repo.list_branches_async() == {"main"}
    messages = [i.message async for i in repo.async_ancestry(branch="main")]
    assert messages[0] == "array"


def test_a_blocking_call_on_the_facades_own_loop_is_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")

    async def on_the_loop() -> object:
        return repo.list_branches()

    with pytest.raises(aic.EventLoopError, match="_async"):
        run(on_the_loop())
    assert repo.list_branches() == {"main"}  # and the loop still works


def test_iterators_are_lazy_and_closed(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")
    history = repo.ancestry(branch="main")
    assert next(history).message == "array"
    history.close()
    assert [i.message for i in repo.ancestry(branch="main")] == ["array", "Repository initialized"]


def test_allow_pickling_says_how_to_fork_and_merge(tmp_path: Path) -> None:
    session = _repo(tmp_path / "r").writable_session("main")
    with pytest.raises(aic.SessionStateError, match=r"session\.fork\(\).*session\.merge"):
        session.allow_pickling()


def test_merge_sessions_is_blocking_in_distributed(tmp_path: Path) -> None:
    from aicechunk.sync.distributed import extract_session, merge_sessions

    session = _repo(tmp_path / "r").writable_session("main")
    a, b = _write(session.fork(), 0), _write(session.fork(), 2)
    with pytest.warns(DeprecationWarning):
        merged = merge_sessions(a, [b])
    assert isinstance(merged, icechunk.ForkSession)
    session.merge(merged)
    assert session.status().updated_chunks == {"/x": {(0,), (1,)}}
    array = zarr.open_array(a.store, path="x")
    assert isinstance(extract_session(array), icechunk.ForkSession)


def test_icechunk_names_missing_say_why(tmp_path: Path) -> None:
    with pytest.raises(AttributeError, match=r"no aicechunk counterpart yet: .*Azure"):
        _ = icechunk.azure_storage
    assert icechunk.IcechunkError is aic.AicechunkError
    repo = _repo(tmp_path / "r")  # members too, on the facade classes
    with pytest.raises(AttributeError, match=r"Repository.ancestry_graph has no aicechunk"):
        _ = repo.ancestry_graph
    with pytest.raises(AttributeError, match=r"Session.shift_array has no .*: no reindexing"):
        _ = repo.readonly_session("main").shift_array
    with pytest.raises(AttributeError, match=r"'Repository' object has no attribute 'nope'"):
        _ = repo.nope


def test_xarray_and_dask_take_sync_sessions(tmp_path: Path) -> None:
    import dask.array as da
    import xarray as xr

    from aicechunk.sync.dask import store_dask
    from aicechunk.sync.xarray import to_icechunk

    repo = _repo(tmp_path / "r")
    session = repo.writable_session("main")
    ds = xr.Dataset({"v": ("t", np.arange(6.0))})
    to_icechunk(ds, session, group="g")
    session.commit("xarray")
    session = repo.writable_session("main")
    fork = session.fork()
    target = zarr.open_array(fork.store, path="x", mode="r+")
    merged = store_dask(sources=[da.arange(8, chunks=2, dtype="i4")], targets=[target])
    session.merge(merged)
    session.commit("dask")
    store = repo.readonly_session("main").store
    assert zarr.open_array(store, path="x")[:].tolist() == list(range(8))
    assert xr.open_zarr(store, group="g", consolidated=False).v.values.tolist() == list(range(6))


async def test_a_forgotten_await_on_commit_is_not_silent(tmp_path: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "r"))
    session = await repo.writable_session("main")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.commit("never awaited")  # type: ignore[unused-coroutine]
        gc.collect()
    assert any("was never awaited" in str(w.message) for w in caught), caught
    assert [i.message async for i in repo.ancestry(branch="main")] == ["Repository initialized"]
