"""Bulk references read back before the commit: a lookup finds its chunk in the columns
(a binary search of the resolved table) instead of turning every reference into an
object, which for 10^6 references took seconds per first lookup and made the commit that
followed take the slow, one-object-per-reference path."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from aicechunk.changes.changeset import ChangeSet
from aicechunk.changes.chunktable import ChunkTable
from aicechunk.format.ids import ChunkId, NodeId
from aicechunk.format.manifest import InlineRef, NativeRef, VirtualRef
from tests.test_bulk_refs import array_session, read_all


async def test_lookups_before_commit_keep_the_columns(tmp_path: Path) -> None:
    repo, session, location = await array_session(tmp_path, (64, 64))
    flat = np.arange(64 * 64)
    coords = np.stack([flat // 64, flat % 64], axis=1)
    # two batches, the second overwriting some chunks of the first: tables win in order
    await session.store.set_virtual_refs_columns("v", coords, location, 0, 4)
    await session.store.set_virtual_refs_columns("v", coords[::7], location, 4, 4)
    node = await session.get_node("/v")
    assert node is not None
    for r in (0, 7, 8, 4095, 4094 - 4094 % 7):
        ref = await session.get_chunk_ref("/v", (r // 64, r % 64))
        assert isinstance(ref, VirtualRef)
        assert (ref.location, ref.offset, ref.length) == (location, 4 if r % 7 == 0 else 0, 4)
    singles, tables = session._state.changes.chunk_parts(node.id)
    assert not singles and len(tables) == 1  # still columns: no object per reference
    # a reference set one by one later wins over the tables
    await session.store.set_virtual_ref("v/c/0/1", location, offset=8, length=4)
    ref = await session.get_chunk_ref("/v", (0, 1))
    assert isinstance(ref, VirtualRef) and ref.offset == 8
    values = await read_all(session)
    expected = np.where(flat % 7 == 0, 1, 0).reshape(64, 64)
    expected[0, 1] = 2
    np.testing.assert_array_equal(values, expected)
    await session.commit("bulk")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_all(ro), expected)


@pytest.mark.parametrize("seed", range(5))
def test_row_lookup_equals_the_objects(seed: int) -> None:
    rnd = random.Random(seed)
    refs: dict[tuple[int, ...], object] = {}
    tables = []
    for _ in range(3):
        batch: dict[tuple[int, ...], object] = {}
        for _ in range(rnd.randrange(1, 60)):
            coords = (rnd.randrange(6), rnd.randrange(5), rnd.randrange(4))
            kind = rnd.randrange(4)
            if kind == 0:
                batch[coords] = NativeRef(ChunkId.random(), rnd.randrange(9), rnd.randrange(9))
            elif kind == 1:
                batch[coords] = InlineRef(bytes(rnd.randrange(256) for _ in range(3)))
            elif kind == 2:
                etag = rnd.choice([None, "e1"])
                batch[coords] = VirtualRef(f"s3://b/{rnd.randrange(3)}", 1, 2, etag, None)
            else:
                batch[coords] = None
        table = ChunkTable.from_refs(batch)
        assert table is not None
        tables.append(table)
        refs.update(batch)
    combined = ChunkTable.combine(tables)
    for c in [(i, j, k) for i in range(7) for j in range(6) for k in range(5)]:
        row = combined.row_of(c)
        if c in refs:
            assert row is not None and combined.ref_at(row) == refs[c]
        else:
            assert row is None


async def test_listing_chunks_of_a_new_array_keeps_the_columns(tmp_path: Path) -> None:
    repo, session, location = await array_session(tmp_path, (32, 32))
    flat = np.arange(32 * 32)
    coords = np.stack([flat // 32, flat % 32], axis=1)
    await session.store.set_virtual_refs_columns("v", coords[1::-1], location, 0, 4)
    await session.store.set_virtual_refs_columns("v", coords[::-3], location, 4, 4)
    expected = sorted({*map(tuple, coords[1::-1].tolist()), *map(tuple, coords[::-3].tolist())})
    listed = [c async for c in session.chunk_coordinates("/v")]
    assert listed == expected
    node = await session.get_node("/v")
    assert node is not None
    singles, tables = session._state.changes.chunk_parts(node.id)
    assert not singles and tables  # still columns: no object per reference
    await session.commit("listed")
    ro = await repo.readonly_session(branch="main")
    assert [c async for c in ro.chunk_coordinates("/v")] == listed


async def test_single_changes_after_bulk_ones_keep_the_columns(tmp_path: Path) -> None:
    # one delete after 10^6 bulk references turned all of them into objects (2.6 s, and
    # the commit then took the slow path: 3.2 s and 680 MiB instead of 0.2 s, 180 MiB)
    repo, session, location = await array_session(tmp_path, (64, 64))
    flat = np.arange(64 * 64)
    coords = np.stack([flat // 64, flat % 64], axis=1)
    await session.store.set_virtual_refs_columns("v", coords, location, 0, 4)
    await session.store.delete("v/c/0/5")
    await session.store.set_virtual_ref("v/c/0/6", location, offset=8, length=4)
    await session.store.set_virtual_refs_columns("v", coords[:2], location, 4, 4)
    await session.store.delete("v/c/0/0")  # after the second batch: wins over it
    node = await session.get_node("/v")
    assert node is not None
    singles, tables = session._state.changes.chunk_parts(node.id)
    assert len(singles) <= 3 and sum(map(len, tables)) >= 4096
    expected = np.zeros((64, 64), dtype="<i4")
    expected[0, 0], expected[0, 1], expected[0, 5], expected[0, 6] = 0, 1, 0, 2
    assert await session.get_chunk_ref("/v", (0, 0)) is None
    assert await session.get_chunk_ref("/v", (0, 5)) is None
    listed = [c async for c in session.chunk_coordinates("/v")]
    assert (0, 0) not in listed and (0, 5) not in listed and len(listed) == 4094
    fork = session.fork_with_changes()
    back = type(fork).from_bytes(fork.to_bytes())
    assert back._state.changes == session._state.changes
    values = await read_all(session)
    np.testing.assert_array_equal(values, expected)
    await session.commit("mixed")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_all(ro), expected)
    assert [c async for c in ro.chunk_coordinates("/v")] == listed


@pytest.mark.parametrize("seed", range(8))
def test_changes_in_any_order_read_as_a_dict_would(seed: int) -> None:
    # bulk tables, single sets and deletions in any order, merges and payload round
    # trips: every lookup, listing and the resolved view agree with a plain dict
    rnd = random.Random(seed)
    node = NodeId.random()
    changes = ChangeSet()
    model: dict[tuple[int, ...], object] = {}
    for _ in range(40):
        step = rnd.randrange(4)
        if step == 0:
            batch = {
                (rnd.randrange(8), rnd.randrange(8)): VirtualRef("s3://b/k", rnd.randrange(99), 1)
                for _ in range(rnd.randrange(1, 30))
            }
            table = ChunkTable.from_refs(batch)
            assert table is not None
            changes.add_chunk_table(node, table)
            model.update(batch)
        elif step == 1:
            c = (rnd.randrange(8), rnd.randrange(8))
            ref = rnd.choice([None, NativeRef(ChunkId.random(), 0, 4), InlineRef(b"ab")])
            changes.set_chunk(node, c, ref)
            model[c] = ref
        elif step == 2:
            other = ChangeSet()
            c = (rnd.randrange(8), rnd.randrange(8))
            other.set_chunk(node, c, VirtualRef("s3://b/m", 1, 2))
            changes.merge(other)
            model[c] = VirtualRef("s3://b/m", 1, 2)
        else:
            changes = ChangeSet.from_plain(changes.to_plain())
        for c in [(i, j) for i in range(8) for j in range(8)]:
            assert changes.chunk_change(node, c) == ((c in model), model.get(c))
    assert changes.chunk_changes(node) == model
