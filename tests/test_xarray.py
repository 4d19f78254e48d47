"""xarray through a repository as users write it: ``to_icechunk`` with Dask variables, CF
encoding, appends and regions, and ``xr.open_zarr`` on what earlier commits left."""

from __future__ import annotations

import asyncio
import json
import warnings

import numpy as np
import pytest
import zarr

import aicechunk as aic
from aicechunk.xarray import to_icechunk, to_icechunk_async

xr = pytest.importorskip("xarray")
da = pytest.importorskip("dask.array")

ENCODING = {"tair": {"dtype": "int16", "scale_factor": 0.25, "_FillValue": -9999}}
VALUES = np.array([4.25, 5.25, np.nan, 7.25])


def dataset(values: np.ndarray, *, dask: bool, start: int = 0) -> xr.Dataset:
    data = da.from_array(values, chunks=2) if dask else values
    return xr.Dataset(
        {"tair": (("t",), data)},
        coords={"t": np.arange(start, start + len(values))},
    )


async def read_back(repo: aic.Repository) -> xr.Dataset:
    ro = await repo.readonly_session(branch="main")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no consolidated-metadata warning either
        return xr.open_zarr(ro.store).load()


@pytest.mark.parametrize("dask", [True, False], ids=["dask", "numpy"])
async def test_cf_encoding_is_applied(dask: bool) -> None:
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    await to_icechunk_async(dataset(VALUES, dask=dask), session, encoding=ENCODING)
    await session.commit("encoded")

    back = await read_back(repo)
    np.testing.assert_array_equal(back.tair.values, VALUES)
    ro = await repo.readonly_session(branch="main")
    raw = zarr.open_array(ro.store, path="tair", mode="r")
    assert raw.dtype == np.int16
    np.testing.assert_array_equal(raw[:], [17, 21, -9999, 29])


async def test_append_and_region_with_dask() -> None:
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    await to_icechunk_async(dataset(VALUES, dask=True), session, encoding=ENCODING)
    await session.commit("first")

    session = await repo.writable_session("main")
    more = np.array([1.0, 2.0, 3.0, 4.0])
    await to_icechunk_async(dataset(more, dask=True, start=4), session, append_dim="t")
    await session.commit("append")
    back = await read_back(repo)
    np.testing.assert_array_equal(back.tair.values, np.concatenate([VALUES, more]))
    np.testing.assert_array_equal(back.t.values, np.arange(8))

    # a region by index, then one found from the coordinates ("auto")
    session = await repo.writable_session("main")
    patch = dataset(np.array([9.0, 9.5]), dask=True, start=2)
    await to_icechunk_async(patch.drop_vars("t"), session, region={"t": slice(2, 4)})
    await to_icechunk_async(
        dataset(np.array([-1.0, -2.0]), dask=True, start=6), session, region="auto"
    )
    await session.commit("regions")
    back = await read_back(repo)
    np.testing.assert_array_equal(back.tair.values, [4.25, 5.25, 9.0, 9.5, 1.0, 2.0, -1.0, -2.0])


async def test_a_failure_leaves_the_session_as_it_was() -> None:
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    await to_icechunk_async(dataset(VALUES, dask=True), session)
    await session.commit("first")

    session = await repo.writable_session("main")
    group = zarr.open_group(session.store)
    group.attrs["kept"] = 1  # a change of the user's own, made before the failing call
    before = await session.status()

    def explode(block: np.ndarray) -> np.ndarray:
        raise RuntimeError("a source block failed")

    bad = dataset(np.ones(4), dask=True, start=4)
    bad["tair"] = bad.tair.copy(data=bad.tair.data.map_blocks(explode, dtype="f8"))
    with pytest.raises(RuntimeError, match="a source block failed"):
        await to_icechunk_async(bad, session, append_dim="t")
    # the arrays were resized on the fork only: the session is exactly as it was
    assert await session.status() == before
    meta = json.loads(await session.get_metadata("/tair") or b"{}")
    assert meta["shape"] == [4]
    await session.commit("only the attribute")
    back = await read_back(repo)
    assert back.attrs == {"kept": 1}
    np.testing.assert_array_equal(back.tair.values, VALUES)


def test_sync_form_inside_a_running_loop() -> None:
    async def notebook_cell() -> aic.Repository:
        repo = await aic.Repository.create(aic.in_memory_storage())
        session = await repo.writable_session("main")
        to_icechunk(dataset(VALUES, dask=True), session, encoding=ENCODING)  # no await
        await session.commit("from a notebook")
        return repo

    repo = asyncio.run(notebook_cell())
    back = asyncio.run(read_back(repo))
    np.testing.assert_array_equal(back.tair.values, VALUES)


async def test_arrays_added_later_are_listed() -> None:
    """xarray and zarr used to write consolidated metadata that later commits left stale."""
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    assert session.store.supports_consolidated_metadata is False
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(session.store, zarr_format=3)
    await session.commit("a")
    session = await repo.writable_session("main")
    root = zarr.open_group(session.store)
    root.create_array("b", shape=(2,), dtype="i4", dimension_names=["y"])
    await session.commit("b")

    ro = await repo.readonly_session(branch="main")
    assert sorted(zarr.open_group(ro.store, mode="r").array_keys()) == ["a", "b"]
    assert set((await read_back(repo)).data_vars) == {"a", "b"}


async def test_stale_consolidated_metadata_already_stored_is_ignored() -> None:
    """A repository written before the store stopped offering consolidation."""
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w")
    root.create_array("a", shape=(2,), dtype="i4")
    root.create_array("b", shape=(2,), dtype="i4")
    stale = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {},
        "consolidated_metadata": {
            "kind": "inline",
            "must_understand": False,
            "metadata": {"a": json.loads(await session.get_metadata("/a") or b"")},
        },
    }
    # straight into the session, as an older store stored it
    await session.set_metadata("/", json.dumps(stale).encode())
    await session.commit("stale index")

    ro = await repo.readonly_session(branch="main")
    assert sorted(zarr.open_group(ro.store, mode="r").array_keys()) == ["a", "b"]
    stored = await ro.store.get("zarr.json", zarr.core.buffer.default_buffer_prototype())
    assert stored is not None
    doc = json.loads(stored.to_bytes())
    assert "consolidated_metadata" not in doc


def test_dask_synchronous_scheduler_inside_a_running_loop() -> None:
    """Dask's synchronous scheduler runs the merges in the caller's thread, which in a
    notebook already runs an event loop: merging must not re-enter it."""
    import dask

    async def notebook_cell() -> aic.Repository:
        repo = await aic.Repository.create(aic.in_memory_storage())
        session = await repo.writable_session("main")
        with dask.config.set(scheduler="synchronous"):
            to_icechunk(dataset(VALUES, dask=True), session, encoding=ENCODING, split_every=2)
        await session.commit("synchronous scheduler")
        return repo

    repo = asyncio.run(notebook_cell())
    back = asyncio.run(read_back(repo))
    np.testing.assert_array_equal(back.tair.values, VALUES)


@pytest.mark.parametrize("dask", [True, False], ids=["dask", "numpy"])
async def test_mode_w_replaces_what_a_commit_holds(dask: bool) -> None:
    # mode="w" deletes the stored variables and writes them again at the same paths, in a
    # fork: the merge must keep the new nodes (it used to drop them, committing nothing)
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    await to_icechunk_async(dataset(VALUES, dask=False), session)
    await session.commit("first")
    session = await repo.writable_session("main")
    await to_icechunk_async(dataset(np.array([1.0, 2.0]), dask=dask, start=7), session, mode="w")
    await session.commit("replaced")
    back = await read_back(repo)
    np.testing.assert_array_equal(back.tair.values, [1.0, 2.0])
    np.testing.assert_array_equal(back.t.values, [7, 8])
