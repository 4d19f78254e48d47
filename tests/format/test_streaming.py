"""The streamed encoders write the same bytes as the one-buffer encoders."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.changes.chunktable import ChunkTable
from aicechunk.format import manifest_stream, segmented, transaction_log
from aicechunk.format.coord_rows import CoordRows
from aicechunk.format.header import FileType, decode_versioned
from aicechunk.format.ids import ChunkId, ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef, VirtualRef, decode_manifest
from aicechunk.format.manifest_encode import _manifest_payload, encode_array_manifest
from aicechunk.format.transaction_log import (
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
    transaction_log_payload,
)

refs: st.SearchStrategy[ChunkRef | None] = st.one_of(
    st.none(),  # a deletion
    st.builds(
        NativeRef,
        st.binary(min_size=12, max_size=12).map(ChunkId),
        st.integers(0, 99),
        st.integers(0, 99),
    ),
    st.builds(InlineRef, st.binary(max_size=9)),
    st.builds(
        VirtualRef,
        st.sampled_from(["s3://b/x", "s3://b/y", "gs://c/z"]),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
    ),
    st.builds(
        VirtualRef,
        st.just("s3://b/x"),
        st.integers(0, 9),
        st.integers(0, 9),
        st.text(min_size=1, max_size=4),
    ),
    st.builds(
        VirtualRef,
        st.just("s3://b/y"),
        st.integers(0, 9),
        st.integers(0, 9),
        st.none(),
        st.integers(1, 2**32 - 1),
    ),
)


@st.composite
def tables(draw: Any) -> list[dict[tuple[int, ...], ChunkRef | None]]:
    """Chunk changes of one array as one or more tables (forks merged)."""
    ndim = draw(st.integers(0, 3))
    coords = st.tuples(*[st.integers(0, 5)] * ndim)
    return draw(st.lists(st.dictionaries(coords, refs, max_size=30), min_size=1, max_size=3))


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of a few rows, so that every table spans several."""
    monkeypatch.setattr(manifest_stream, "SLICE", 3)
    monkeypatch.setattr(transaction_log, "_SLICE", 3)


@settings(max_examples=150, deadline=None)
@given(tables(), st.sampled_from([1, 2]))
def test_streamed_manifest_is_the_one_buffer_manifest(
    parts: list[dict[tuple[int, ...], ChunkRef | None]], spec: int
) -> None:
    combined = ChunkTable.combine([t for t in map(ChunkTable.from_refs, parts) if t is not None])
    expected: dict[tuple[int, ...], ChunkRef | None] = {}
    for part in parts:
        expected.update(part)
    live = {c: r for c, r in expected.items() if r is not None}
    cols = combined.ref_columns()
    mid, nid = ManifestId.random(), NodeId.random()
    size, pieces = manifest_stream.manifest_parts(mid, nid, cols, spec)
    streamed = b"".join(pieces)
    assert len(streamed) == size
    assert streamed == _manifest_payload(mid, {nid: cols}, spec)  # type: ignore[dict-item]
    if live:  # the same bytes as reference objects make, too
        assert streamed == _manifest_payload(mid, {nid: live}, spec)  # type: ignore[dict-item]
        data, extents = manifest_stream.encode_array_manifest_stream(mid, nid, cols, spec)
        assert decode_versioned(data, FileType.MANIFEST)[1] == streamed
        assert extents == encode_array_manifest(mid, nid, live, spec)[1]
        assert dict(decode_manifest(data).iter_node(nid)) == live


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.lists(st.integers(0, 6), max_size=25), st.booleans()),
        max_size=4,
    ),
    st.sampled_from([1, 2]),
)
def test_streamed_transaction_log_is_the_one_buffer_log(
    arrays: list[tuple[int, list[int], bool]], spec: int
) -> None:
    chunks: dict[NodeId, Any] = {}
    for ndim, values, as_rows in arrays:
        flat = np.array(values, dtype=np.int64)
        rows = np.stack([flat] * ndim, axis=1) if ndim else np.zeros((len(flat), 0), np.int64)
        rows = rows + np.arange(ndim, dtype=np.int64)  # distinct coordinates per dimension
        chunks[NodeId.random()] = CoordRows(rows) if as_rows else [tuple(r) for r in rows.tolist()]
    log = TransactionLog(SnapshotId.random(), updated_chunks=chunks, spec_version=spec)
    streamed = transaction_log_payload(log, streamed=True)
    assert streamed == transaction_log_payload(log, streamed=False)
    decoded = decode_transaction_log(encode_transaction_log(log))
    want = {n: sorted(set(map(tuple, c))) for n, c in chunks.items() if len(c)}
    assert {n: sorted(set(c)) for n, c in decoded.updated_chunks.items() if c} == want


def test_sorted_coord_rows_are_logged_as_they_are() -> None:
    rows = CoordRows(np.array([[0, 1], [0, 2], [3, 0]]), sorted_unique=True)
    log = TransactionLog(SnapshotId.random(), updated_chunks={NodeId.random(): rows})
    (got,) = decode_transaction_log(encode_transaction_log(log)).updated_chunks.values()
    assert list(got) == [(0, 1), (0, 2), (3, 0)]


def test_writes_into_a_hole_are_refused() -> None:
    w = segmented.Segmented()
    start = w.hole(8, lambda: [bytes(8)])
    with pytest.raises(ValueError, match="hole"):
        w.put(start + 2, "<I", 1)
    w.put(0, "<I", 5)  # before the hole: fine
    w.reserve(4)
    w.put(start + 8, "<I", 7)  # after it: fine
    assert w.finish(0)[start + 8 : start + 12] == (7).to_bytes(4, "little")


def test_a_hole_filled_short_is_an_error() -> None:
    w = segmented.Segmented()
    w.hole(8, lambda: [bytes(4)])
    with pytest.raises(AssertionError, match="filled with 4"):
        w.finish(0)
