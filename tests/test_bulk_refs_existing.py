"""Bulk virtual references on an array that already has a manifest: the commit combines
the stored references with the new ones column by column (the last write of a chunk
wins), without a reference object per new chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr.api.asynchronous as zas

from aicechunk.changes.chunktable import ChunkTable
from tests.test_bulk_refs import array_session, read_all


async def test_new_columns_over_a_stored_manifest_stay_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, session, location = await array_session(tmp_path)
    arr = await zas.open_array(store=session.store, path="v")
    await arr.setitem((0, slice(None)), np.full(8, -1, dtype="<i4"))  # native chunks
    flat = np.arange(8, 16)
    coords = np.stack([flat // 8, flat % 8], axis=1)
    await session.store.set_virtual_refs_columns("v", coords, location, 4 * flat, 4)
    await session.commit("a manifest")

    session = await repo.writable_session("main")
    flat = np.arange(4, 64)  # over half of the native row, the virtual row, and new chunks
    coords = np.stack([flat // 8, flat % 8], axis=1)
    await session.store.set_virtual_refs_columns("v", coords, location, 4 * (100 + flat), 4)
    await session.store.delete("v/c/7/7")  # one chunk deleted after the columns

    made: list[int] = []
    to_refs = ChunkTable.to_refs

    def counted(self: ChunkTable) -> dict[object, object]:
        made.append(len(self))
        return to_refs(self)  # type: ignore[return-value]

    monkeypatch.setattr(ChunkTable, "to_refs", counted)
    await session.commit("bulk over a manifest")
    assert made == []  # no reference object per new chunk

    ro = await repo.readonly_session(branch="main")
    want = np.arange(100, 164, dtype="<i4").reshape(8, 8)
    want[0, :4] = -1
    want[7, 7] = 0  # deleted: the fill value
    np.testing.assert_array_equal(await read_all(ro), want)
    assert len([c async for c in ro.chunk_coords("/v")]) == 63
