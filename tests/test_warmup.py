"""The first session on main after an open fetches the tip snapshot the open saw while it
resolves the branch (``repository/warmup.py``): an open alone fetches nothing more, open +
first read asks for the snapshot once, and a session still sees commits made after the
open."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.testing import CountingDriver


async def committed(driver: MemoryDriver, spec: int, value: int) -> aic.Repository:
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=spec)
    session = await repo.writable_session("main")
    arr = await zas.create_array(session.store, name="x", shape=(4,), chunks=(2,), dtype="i8")
    await arr.setitem(slice(None), np.full(4, value))
    await session.commit("first")
    return repo


@pytest.mark.parametrize("spec", [1, 2])
async def test_the_first_session_fetches_the_tip_snapshot_once(spec: int) -> None:
    inner = MemoryDriver()
    await committed(inner, spec, 7)
    counting = CountingDriver(inner)
    repo = await aic.Repository.open(aic.storage_from_driver(counting))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not any(key.startswith("snapshots/") for _, key in counting.calls)
    session = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=session.store, path="x", mode="r")
    assert (await arr.getitem(slice(0, 1)))[0] == 7
    snapshot_gets = [k for m, k in counting.calls if m == "get" and k.startswith("snapshots/")]
    assert len(snapshot_gets) == 1
    assert counting.counts["head"] == 0


@pytest.mark.parametrize("spec", [1, 2])
async def test_a_session_after_open_sees_later_commits(spec: int) -> None:
    inner = MemoryDriver()
    writer = await committed(inner, spec, 7)
    reader = await aic.Repository.open(aic.storage_from_driver(inner))
    session = await writer.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x")
    await arr.setitem(slice(None), np.full(4, 8))
    await session.commit("second")
    ro = await reader.readonly_session(branch="main")
    got = await (await zas.open_array(store=ro.store, path="x", mode="r")).getitem(slice(None))
    np.testing.assert_array_equal(got, np.full(4, 8))
