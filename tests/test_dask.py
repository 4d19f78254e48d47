"""Dask writes through forks on a LocalCluster with worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


async def test_store_dask_on_worker_processes(tmp_path: Path, client: object) -> None:
    from aicechunk.dask import store_dask_async

    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "repo"))
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("data", shape=(40, 30), chunks=(10, 10), dtype="f8")
    await session.commit("empty")
    session = await repo.writable_session("main")  # a committed session is read-only

    values = np.arange(1200, dtype="f8").reshape(40, 30)
    source = da.from_array(values, chunks=(10, 15))  # blocks span several zarr chunks
    fork = session.fork()
    target = zarr.open_array(store=fork.store, path="data")
    merged = await store_dask_async(sources=[source], targets=[target], split_every=3)
    await session.merge(merged)
    sid = await session.commit("written by dask")

    ro = await repo.readonly_session(snapshot_id=sid)
    arr = await zas.open_array(store=ro.store, path="data", mode="r")
    np.testing.assert_array_equal(await arr.getitem(slice(None)), values)

    # a second run into a branch that moved meanwhile: the commit raises ConflictError
    stale = await repo.writable_session("main")
    mover = await repo.writable_session("main")
    a = await zas.open_array(store=mover.store, path="data")
    await a.setitem((0, 0), -1.0)
    await mover.commit("moved the branch")
    fork2 = stale.fork()
    target2 = zarr.open_array(store=fork2.store, path="data")
    merged2 = await store_dask_async(sources=[source * 2], targets=[target2])
    await stale.merge(merged2)
    with pytest.raises(aic.ConflictError):
        await stale.commit("second run")


def test_store_dask_refuses_non_fork_targets(tmp_path: Path) -> None:
    from zarr.core.sync import sync

    from aicechunk.dask import store_dask

    repo = sync(aic.Repository.create(aic.in_memory_storage()))
    session = sync(repo.writable_session("main"))
    target = zarr.create_array(store=session.store, name="x", shape=(4,), chunks=(2,), dtype="i4")
    with pytest.raises(aic.SessionStateError, match="ForkSession"):
        store_dask(sources=[da.zeros(4, chunks=2)], targets=[target])


async def test_xarray_dataset_with_dask_chunks(tmp_path: Path, client: object) -> None:
    xr = pytest.importorskip("xarray")
    from aicechunk.xarray import to_icechunk_async

    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "repo"))
    session = await repo.writable_session("main")
    temperature = np.random.default_rng(1).random((20, 12))
    ds = xr.Dataset(
        {"temperature": (("time", "x"), temperature), "flag": (("x",), np.arange(12))},
        coords={"time": np.arange(20), "x": np.linspace(0, 1, 12)},
        attrs={"title": "test"},
    ).chunk({"time": 5, "x": 6})
    ds["flag"] = ds["flag"].compute()  # one eager variable too
    await to_icechunk_async(ds, session, encoding={"temperature": {"chunks": (5, 6)}})
    await session.commit("dataset")

    ro = await repo.readonly_session(branch="main")
    back = xr.open_zarr(ro.store, consolidated=False, zarr_format=3).load()
    xr.testing.assert_equal(back, ds.compute())
    assert back.attrs == {"title": "test"}


def test_aligned_blocks() -> None:
    from aicechunk.integrations.dask import _aligned, _is_aligned

    assert _aligned(25, 0, 10) == (10, 10, 5)
    assert _aligned(25, 3, 10) == (7, 10, 8)
    assert _is_aligned((10, 10, 5), 0, 10, 25)
    assert not _is_aligned((15, 10), 0, 10, 25)
    assert _is_aligned((7, 10, 8), 3, 10, 25)
