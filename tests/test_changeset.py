"""Change sets: chunk changes held as objects or as column tables merge, travel inside
fork payloads and encode into manifests exactly as the same changes applied one by one."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.changes.changeset import ChangeSet
from aicechunk.changes.chunktable import ChunkTable
from aicechunk.format.ids import ChunkId, ManifestId, NodeId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef, decode_manifest
from aicechunk.format.manifest_encode import encode_array_manifest_columns
from tests.format.strategies import chunk_refs, node_ids


def travel(cs: ChangeSet) -> ChangeSet:
    packed = msgpack.packb(cs.to_plain(), use_bin_type=True)
    return ChangeSet.from_plain(msgpack.unpackb(packed, raw=False, strict_map_key=False))


refs_or_deletes = st.one_of(st.none(), chunk_refs)
NID = NodeId(b"\x05" * 8)


def changes_of(ndim: int, max_size: int = 40) -> st.SearchStrategy[dict[Any, ChunkRef | None]]:
    return st.dictionaries(
        st.tuples(*[st.integers(0, 6)] * ndim), refs_or_deletes, max_size=max_size
    )


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        node_ids,
        st.integers(0, 4).flatmap(
            lambda ndim: st.dictionaries(
                st.tuples(*[st.integers(0, 2**32 - 2)] * ndim), refs_or_deletes, max_size=60
            )
        ),
        max_size=4,
    )
)
def test_chunk_changes_roundtrip(
    chunks: dict[NodeId, dict[tuple[int, ...], ChunkRef | None]],
) -> None:
    back = travel(ChangeSet(chunks=chunks))
    assert back.chunks == {n: refs for n, refs in chunks.items() if refs}


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 3).flatmap(
        lambda ndim: st.lists(
            st.tuples(
                st.sampled_from(["set", "table", "merge-dict", "merge-table"]), changes_of(ndim)
            ),
            max_size=8,
        )
    )
)
def test_tables_and_objects_apply_in_order(ops: list[tuple[str, dict[Any, Any]]]) -> None:
    """Whatever mix of single writes, tables and merged change sets, the effective
    changes are the writes applied in order, and survive a trip as a fork payload."""
    cs = ChangeSet()
    model: dict[Any, Any] = {}
    for op, refs in ops:
        if op == "set":
            for coords, ref in refs.items():
                cs.set_chunk(NID, coords, ref)
        elif op == "table":
            table = ChunkTable.from_refs(refs)
            assert table is not None
            cs.add_chunk_table(NID, table)
        else:
            other = ChangeSet()
            if op == "merge-dict":
                other = ChangeSet(chunks={NID: dict(refs)})
            else:
                table = ChunkTable.from_refs(refs)
                assert table is not None
                other.add_chunk_table(NID, table)
            cs.merge(other)
        model.update(refs)
    assert travel(cs).chunk_changes(NID) == model
    assert sorted(cs.chunk_changes_coords(NID)) == sorted(model)
    assert cs.chunk_changes(NID) == model


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 3).flatmap(lambda ndim: st.lists(changes_of(ndim), min_size=1, max_size=6)))
def test_combined_tables_encode_the_last_write_of_each_chunk(
    batches: list[dict[Any, ChunkRef | None]],
) -> None:
    tables = [ChunkTable.from_refs(b) for b in batches]
    combined = ChunkTable.combine([t for t in tables if t is not None])
    model: dict[Any, ChunkRef | None] = {}
    for b in batches:
        model.update(b)
    assert combined.to_refs() == model
    assert combined.coord_tuples() == sorted(model)
    cols = combined.ref_columns()
    live = {c: r for c, r in sorted(model.items()) if r is not None}
    data, extents = encode_array_manifest_columns(ManifestId(b"\x01" * 12), NID, cols)
    manifest = decode_manifest(data)
    assert list(manifest.iter_node(NID)) == list(live.items())
    if live and combined.ndim:
        assert extents == tuple(
            (min(c[d] for c in live), max(c[d] for c in live) + 1) for d in range(combined.ndim)
        )


def test_mixed_dimensionality_falls_back_to_entries() -> None:
    nid = NodeId(b"\x03" * 8)
    refs: dict[tuple[int, ...], ChunkRef | None] = {
        (1,): InlineRef(b"a"),
        (1, 2): None,
        (): InlineRef(b""),
    }
    assert ChunkTable.from_refs(refs) is None
    assert travel(ChangeSet(chunks={nid: refs})).chunks == {nid: refs}


def test_inconsistent_columns_are_refused() -> None:
    cs = ChangeSet(chunks={NID: {(i,): InlineRef(b"xy") for i in range(3)}})
    plain = cs.to_plain()
    plain["c"][0][1][0]["I"][1] = b"xyxy"  # fewer inline bytes than the lengths say
    with pytest.raises(ValueError, match="inline chunk lengths"):
        ChangeSet.from_plain(plain)
    plain = ChangeSet(chunks={NID: {(0,): NativeRef(ChunkId(b"\x01" * 12), 0, 4)}}).to_plain()
    plain["c"][0][1][0]["c"] += b"\x00" * 8  # one coordinate too many
    with pytest.raises(ValueError, match="coordinates"):
        ChangeSet.from_plain(plain)
    plain = ChangeSet(chunks={NID: {(0,): NativeRef(ChunkId(b"\x01" * 12), 0, 4)}}).to_plain()
    plain["c"][0][1][0]["k"] = b"\x07"
    with pytest.raises(ValueError, match="kind"):
        ChangeSet.from_plain(plain)


def test_tables_stay_tables_until_one_chunk_is_asked_for() -> None:
    refs = {(i, 0): InlineRef(bytes([i])) for i in range(100)}
    table = ChunkTable.from_refs(refs)
    assert table is not None
    cs = ChangeSet()
    cs.add_chunk_table(NID, table)
    cs.add_chunk_table(NID, table)
    assert cs.chunk_table(NID) is not None  # no objects were made
    assert len(np.asarray(cs.chunk_table(NID).coords)) == 100  # type: ignore[union-attr]
    assert cs.chunk_changes(NID) == refs  # asking for objects turns the tables into objects
    assert cs.chunk_table(NID) is None


def test_coordinates_outside_the_format_are_refused() -> None:
    plain = ChangeSet(chunks={NID: {(0,): InlineRef(b"a")}}).to_plain()
    plain["c"][0][1][0]["c"] = np.array([1 << 32], dtype="<i8").tobytes()
    with pytest.raises(ValueError, match="outside the format"):
        ChangeSet.from_plain(plain)
    plain["c"][0][1][0]["c"] = np.array([-1], dtype="<i8").tobytes()
    with pytest.raises(ValueError, match="outside the format"):
        ChangeSet.from_plain(plain)
