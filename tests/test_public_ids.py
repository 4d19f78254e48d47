"""Every snapshot id the public API returns is a ``str``: equal to icechunk's ids,
JSON-serializable, and accepted back by both libraries."""

from __future__ import annotations

import asyncio
import json
import pickle
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.format.ids import SnapshotId


async def test_every_returned_id_is_a_string(tmp_path: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "r"))
    session = await repo.writable_session("main")
    assert isinstance(session.snapshot_id, str)
    group = await zas.open_group(store=session.store, mode="w")
    arr = await group.create_array("a", shape=(4,), chunks=(2,), dtype="i4")
    await arr.setitem(slice(None), np.arange(4, dtype="i4"))
    committed = await session.commit("first")

    ids = [committed, session.snapshot_id, await repo.lookup_branch("main")]
    await repo.create_tag("v1", committed)
    ids.append(await repo.lookup_tag("v1"))
    ids += [info.id async for info in repo.ancestry(branch="main")]
    for value in ids:
        assert isinstance(value, str)
        assert str(value) == value and len(value) == 20
    assert json.loads(json.dumps({"id": committed})) == {"id": str(committed)}
    assert pickle.loads(pickle.dumps(committed)) == committed
    assert {committed: 1}[str(committed)] == 1  # hashes as the plain string

    # plain strings (any case, as Crockford base32 reads) are accepted back
    ro = await repo.readonly_session(snapshot_id=str(committed).lower())
    assert ro.snapshot_id == committed
    await repo.create_branch("dev", str(committed))
    assert await repo.lookup_branch("dev") == committed


async def test_ids_are_icechunks_ids(tmp_path: Path) -> None:
    path = tmp_path / "r"
    repo = await aic.Repository.create(aic.local_filesystem_storage(path), spec_version=1)
    session = await repo.writable_session("main")
    root = await zas.open_group(store=session.store, mode="w")
    await root.create_array("a", shape=(2,), dtype="i4")
    ours = await session.commit("ours")

    def icechunk_side() -> tuple[str, str, list[str]]:
        ic = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
        ro = ic.readonly_session(snapshot_id=ours)  # our id, as icechunk takes it
        assert "a" in zarr.open_group(ro.store, mode="r").array_keys()
        s = ic.writable_session("main")
        zarr.open_group(s.store).attrs["by"] = "icechunk"
        theirs = s.commit("theirs")
        return theirs, ic.lookup_branch("main"), [a.id for a in ic.ancestry(branch="main")]

    theirs, tip, history = await asyncio.to_thread(icechunk_side)
    assert await repo.lookup_branch("main") == tip == theirs
    assert [info.id async for info in repo.ancestry(branch="main")] == history
    assert SnapshotId(theirs) == theirs


@pytest.mark.parametrize("bad", [123, b"ABC", ["x"], 1.5])
async def test_a_snapshot_id_that_is_no_string_is_a_type_error(bad: object) -> None:
    # as icechunk: the type is named, never a len() failure or a "not found" of bytes
    repo = await aic.Repository.create(aic.in_memory_storage())
    for call in (
        lambda: repo.lookup_snapshot(bad),  # type: ignore[arg-type]
        lambda: repo.readonly_session(snapshot_id=bad),  # type: ignore[arg-type]
        lambda: repo.create_branch("x", bad),  # type: ignore[arg-type]
        lambda: repo.reset_branch("main", bad),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match="a snapshot id is a str"):
            await call()
