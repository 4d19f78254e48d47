"""A session after its commit, as in icechunk 2.3.0: it reads the new snapshot and is
read-only (writes and discards raise ``ReadOnlyError``; another commit, an amend, a
rebase or a fork ``SessionStateError``, saying which commit ended it)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
import aicechunk.sync as aics


@pytest.mark.parametrize("spec", [1, 2])
async def test_a_committed_session_reads_and_refuses_changes(spec: int) -> None:
    repo = await aic.Repository.create(aic.in_memory_storage(), spec_version=spec)
    session = await repo.writable_session("main")
    store = session.store
    arr = await zas.create_array(store, name="a", shape=(4,), chunks=(2,), dtype="i4")
    await arr.setitem(slice(None), np.arange(4))
    snap = await session.commit("one")
    assert session.read_only and store.read_only and session.store.read_only
    assert session.mode == aic.SessionMode.READONLY
    assert session.snapshot_id == snap and not session.has_uncommitted_changes
    np.testing.assert_array_equal(await arr.getitem(slice(None)), np.arange(4))
    with pytest.raises(aic.ReadOnlyError, match="read-only"):
        await arr.setitem(slice(None), np.zeros(4, dtype="i4"))
    with pytest.raises(aic.ReadOnlyError, match=str(snap)):
        await session.set_chunk("/a", (0,), b"x")
    with pytest.raises(aic.ReadOnlyError, match=str(snap)):
        session.discard_changes()
    for call in (
        lambda: session.commit("two", allow_empty=True),
        lambda: session.rebase(aic.ConflictDetector()),
    ):
        with pytest.raises(aic.SessionStateError, match=f"committed snapshot {snap}"):
            await call()
    if spec == 2:
        with pytest.raises(aic.SessionStateError, match="committed snapshot"):
            await session.amend("x", allow_empty=True)
    with pytest.raises(aic.SessionStateError, match="committed snapshot"):
        session.fork()
    # what icechunk users do next: a new writable session
    again = await repo.writable_session("main")
    arr2 = await zas.open_array(store=again.store, path="a")
    await arr2.setitem(slice(0, 2), np.array([9, 9], dtype="i4"))
    await again.commit("two")
    assert [c.message async for c in repo.ancestry(branch="main")][:2] == ["two", "one"]


def test_the_sync_facade_refuses_as_icechunk_does() -> None:
    repo = aics.Repository.create(aics.in_memory_storage())
    session = repo.writable_session("main")
    arr = zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="i4")
    arr[:] = 1
    session.commit("one")
    assert session.read_only
    with pytest.raises(ValueError):  # icechunk's ReadOnlyError is not one, ours is
        arr[:] = 2
    with pytest.raises(aics.SessionStateError):
        session.commit("two")
    np.testing.assert_array_equal(arr[:], np.ones(4))


async def test_a_committed_session_pickles_as_a_read_only_one(tmp_path: Path) -> None:
    # read-only sessions pickle (to workers, dask's processes scheduler); one that
    # committed is read-only too, and its drained write-behind buffer stays behind
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "repo"))
    session = await repo.writable_session("main")
    arr = await zas.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="i4")
    await arr.setitem(slice(None), np.arange(4))
    snap = await session.commit("one")
    copy = pickle.loads(pickle.dumps(session))
    assert copy.read_only and copy.snapshot_id == snap
    back = await zas.open_array(store=copy.store, path="a", mode="r")
    np.testing.assert_array_equal(await back.getitem(slice(None)), np.arange(4))
    with pytest.raises(aic.SessionStateError, match="committed snapshot"):
        await copy.commit("again", allow_empty=True)
