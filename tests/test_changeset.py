"""Change sets travel inside fork payloads: every kind of change survives the trip."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.changeset import ChangeSet, changeset_from_plain, changeset_to_plain
from aicechunk.format.ids import ChunkId, NodeId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef
from tests.format.strategies import chunk_refs, node_ids


def travel(cs: ChangeSet) -> ChangeSet:
    packed = msgpack.packb(changeset_to_plain(cs), use_bin_type=True)
    return changeset_from_plain(msgpack.unpackb(packed, raw=False, strict_map_key=False))


refs_or_deletes = st.one_of(st.none(), chunk_refs)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        node_ids,
        st.integers(0, 4).flatmap(
            lambda ndim: st.dictionaries(
                st.tuples(*[st.integers(0, 2**40)] * ndim), refs_or_deletes, max_size=60
            )
        ),
        max_size=4,
    )
)
def test_chunk_changes_roundtrip(
    chunks: dict[NodeId, dict[tuple[int, ...], ChunkRef | None]],
) -> None:
    cs = ChangeSet(chunks=chunks)
    back = travel(cs)
    assert back.chunks == {n: refs for n, refs in chunks.items() if refs}


def test_mixed_dimensionality_falls_back_to_entries() -> None:
    nid = NodeId(b"\x03" * 8)
    refs: dict[tuple[int, ...], ChunkRef | None] = {
        (1,): InlineRef(b"a"),
        (1, 2): None,
        (): InlineRef(b""),
    }
    assert travel(ChangeSet(chunks={nid: refs})).chunks == {nid: refs}


def test_inconsistent_columns_are_refused() -> None:
    nid = NodeId(b"\x04" * 8)
    cs = ChangeSet(chunks={nid: {(i,): InlineRef(b"xy") for i in range(3)}})
    plain = changeset_to_plain(cs)
    plain["c"][0][1]["I"][2] = b"xyxy"  # fewer inline bytes than the lengths say
    with pytest.raises(ValueError, match="inline chunk lengths"):
        changeset_from_plain(plain)
    plain = changeset_to_plain(
        ChangeSet(chunks={nid: {(0,): NativeRef(ChunkId(b"\x01" * 12), 0, 4)}})
    )
    plain["c"][0][1]["N"][0] += b"\x00" * 8  # one coordinate too many
    with pytest.raises(ValueError, match="coordinates"):
        changeset_from_plain(plain)
