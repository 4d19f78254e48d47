"""Values the on-disk format cannot hold are refused when written, never at commit: the
session stays committable. Also node paths and metadata the format would choke on."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas
from zarr.core.buffer import default_buffer_prototype

import aicechunk as aic
from aicechunk.errors import (
    ChunkIndexError,
    FormatError,
    InvalidMetadataError,
    InvalidNodePathError,
    UnrepresentableValueError,
)
from aicechunk.format.header import FileType, decode_file, encode_file
from aicechunk.format.ids import ChunkId, ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import (
    MAX_CHUNK_INDEX,
    InlineRef,
    NativeRef,
    VirtualRef,
    decode_manifest,
)
from aicechunk.format.manifest_encode import encode_array_manifest
from aicechunk.format.snapshot import (
    ArrayNodeData,
    DimensionShape,
    NodeSnapshot,
    Snapshot,
    encode_snapshot,
)
from tests.test_store import array_meta

U64 = 2**64 - 1


def buf(data: bytes) -> Any:
    return default_buffer_prototype().buffer.from_bytes(data)


async def session_with(shape: list[int], chunks: list[int]) -> tuple[aic.Repository, Any]:
    # spec v1's limits (an array may have 2**64 - 1 chunks in a dimension); spec v2 stores
    # chunk counts as uint32: test_a_v2_chunk_grid_beyond_uint32_is_refused_when_written
    repo = await aic.Repository.create(aic.in_memory_storage(), spec_version=1)
    session = await repo.writable_session("main")
    await session.set_metadata("/a", array_meta(shape, chunks))
    return repo, session


Attempt = Callable[[Any], Awaitable[None]]


def store_set(key: str, value: bytes = b"x" * 600) -> Attempt:
    async def attempt(session: Any) -> None:
        await session.store.set(key, buf(value))

    return attempt


def chunk_ref(coords: tuple[int, ...], ref: Any) -> Attempt:
    async def attempt(session: Any) -> None:
        await session.set_chunk_ref("/a", coords, ref)

    return attempt


def set_meta(path: str, data: bytes) -> Attempt:
    async def attempt(session: Any) -> None:
        await session.set_metadata(path, data)

    return attempt


def virtual(offset: int, length: int, checksum: Any = None) -> Attempt:
    async def attempt(session: Any) -> None:
        await session.store.set_virtual_ref(
            "a/c/0",
            "s3://bucket/key",
            offset=offset,
            length=length,
            checksum=checksum,
            validate_container=False,
        )

    return attempt


BIG = [2**34]  # an array of 2**34 one-element chunks
CASES: dict[str, tuple[list[int], type[Exception], Attempt]] = {
    "chunk index 2**33 of a 2**34-long array": (
        BIG,
        UnrepresentableValueError,
        store_set(f"a/c/{2**33}"),
    ),
    "chunk index 2**32-1 (extents overflow)": (
        BIG,
        UnrepresentableValueError,
        store_set(f"a/c/{2**32 - 1}"),
    ),
    "virtual chunk at index 2**32": (
        BIG,
        UnrepresentableValueError,
        chunk_ref((2**32,), VirtualRef("s3://b/k", 0, 1)),
    ),
    "negative chunk index": (BIG, ChunkIndexError, chunk_ref((-1,), InlineRef(b"x"))),
    "chunk index of wrong rank": (BIG, ChunkIndexError, chunk_ref((0, 0), InlineRef(b"x"))),
    "chunk index not an integer": (BIG, ChunkIndexError, chunk_ref(("0",), InlineRef(b"x"))),
    "shape 2**64": ([1], UnrepresentableValueError, set_meta("/b", array_meta([2**64], [1]))),
    "chunk shape 2**64": ([1], UnrepresentableValueError, set_meta("/b", array_meta([1], [2**64]))),
    "shape 2**64 through the store": (
        [1],
        UnrepresentableValueError,
        store_set("b/zarr.json", array_meta([2**70, 1], [1, 1])),
    ),
    "negative shape": ([1], InvalidMetadataError, set_meta("/b", array_meta([-1], [1]))),
    "boolean shape": ([1], InvalidMetadataError, set_meta("/b", array_meta([True], [1]))),
    "dimension name with a lone surrogate": (
        [1],
        InvalidMetadataError,
        set_meta("/b", array_meta([1], [1], dimension_names=["\ud800"])),
    ),
    "chunk_key_encoding v2": (
        [1],
        UnrepresentableValueError,
        set_meta("/b", array_meta([4], [1], chunk_key_encoding={"name": "v2"})),
    ),
    "chunk_key_encoding v2 with '/' through the store": (
        [1],
        UnrepresentableValueError,
        store_set(
            "b/zarr.json",
            array_meta(
                [4], [1], chunk_key_encoding={"name": "v2", "configuration": {"separator": "/"}}
            ),
        ),
    ),
    "chunk_key_encoding default with '.'": (
        [1],
        UnrepresentableValueError,
        set_meta(
            "/b",
            array_meta(
                [4],
                [1],
                chunk_key_encoding={"name": "default", "configuration": {"separator": "."}},
            ),
        ),
    ),
    "virtual offset 2**64": ([4], UnrepresentableValueError, virtual(2**64, 1)),
    "virtual length 2**64": ([4], UnrepresentableValueError, virtual(0, 2**64)),
    "virtual negative offset": ([4], UnrepresentableValueError, virtual(-1, 1)),
    # dates are wrapped to 32 bits as icechunk stores them (tests/test_interop.py); a raw
    # reference holding more than 32 bits is refused
    "virtual last-modified beyond uint32": (
        [4],
        UnrepresentableValueError,
        chunk_ref((0,), VirtualRef("s3://b/x", 0, 1, None, 2**32)),
    ),
    "virtual empty location": (
        [4],
        UnrepresentableValueError,
        chunk_ref((0,), VirtualRef("", 0, 1)),
    ),
    "native offset 2**64": (
        [4],
        UnrepresentableValueError,
        chunk_ref((0,), NativeRef(ChunkId.random(), 2**64, 1)),
    ),
    "native negative length": (
        [4],
        UnrepresentableValueError,
        chunk_ref((0,), NativeRef(ChunkId.random(), 0, -5)),
    ),
    "node path with NUL": ([1], InvalidNodePathError, set_meta("/b\x00", array_meta([1], [1]))),
    "node path with a lone surrogate": (
        [1],
        InvalidNodePathError,
        set_meta("/\ud800", array_meta([1], [1])),
    ),
    "relative node path": ([1], InvalidNodePathError, set_meta("b", array_meta([1], [1]))),
    "node path with ..": ([1], InvalidNodePathError, set_meta("/x/../b", array_meta([1], [1]))),
    "store key with a control character": (
        [1],
        InvalidNodePathError,
        store_set("b\n/zarr.json", array_meta([1], [1])),
    ),
}


@pytest.mark.attack("unrepresentable values")
@pytest.mark.parametrize("case", sorted(CASES))
async def test_refused_when_written_and_the_session_commits(case: str) -> None:
    shape, error, attempt = CASES[case]
    repo, session = await session_with(shape, [1])
    before = await session.status()
    with pytest.raises(error) as info:
        await attempt(session)
    assert isinstance(info.value, aic.AicechunkError)
    assert isinstance(info.value, ValueError | IndexError)  # what zarr reports sensibly
    assert await session.status() == before
    await session.store.set("a/c/0", buf(b"\x07"))
    await session.commit("still committable")
    ro = await repo.readonly_session(branch="main")
    assert await ro.get_chunk("/a", (0,)) == b"\x07"


async def test_the_largest_values_the_format_holds_commit() -> None:
    repo, session = await session_with([U64], [1])
    await session.store.set(f"a/c/{MAX_CHUNK_INDEX}", buf(b"\x01"))
    await session.set_metadata("/b", array_meta([U64, 3], [U64, 1]))
    await session.store.set_virtual_ref(
        "a/c/5",
        "s3://bucket/key",
        offset=U64 - 1,
        length=1,
        checksum=datetime(2106, 2, 7, tzinfo=UTC),
        validate_container=False,
    )
    await session.commit("limits")
    ro = await repo.readonly_session(branch="main")
    assert await ro.get_chunk("/a", (MAX_CHUNK_INDEX,)) == b"\x01"
    ref = await ro.get_chunk_ref("/a", (5,))
    assert isinstance(ref, VirtualRef) and ref.offset == U64 - 1
    node = await ro.get_node("/b")
    assert node is not None and node.array is not None
    assert node.array.shape[0].array_length == U64


async def test_a_v2_chunk_grid_beyond_uint32_is_refused_when_written() -> None:
    # spec v2 stores a dimension's chunk count as uint32 (DimensionShapeV2.num_chunks);
    # icechunk 2.3.0 truncates it (2**32 chunks are recorded as 0) and we refuse instead
    repo = await aic.Repository.create(aic.in_memory_storage(), spec_version=2)
    session = await repo.writable_session("main")
    with pytest.raises(UnrepresentableValueError) as info:
        await session.set_metadata("/a", array_meta([4, 2**32], [1, 1]))
    message = str(info.value)
    assert "'/a'" in message and "dimension 1" in message and str(2**32 - 1) in message
    with pytest.raises(UnrepresentableValueError, match="'/b'"):
        await session.store.set("b/zarr.json", buf(array_meta([2**33], [2])))
    assert not session.has_uncommitted_changes  # nothing half-written
    # the largest grid the format holds is fine, and an update beyond it is refused too
    await session.set_metadata("/a", array_meta([2**32 - 1], [1]))
    await session.set_chunk("/a", (2**32 - 2,), b"\x01")
    with pytest.raises(UnrepresentableValueError, match="dimension 0"):
        await session.set_metadata("/a", array_meta([2**32 + 1], [1]))
    await session.commit("the largest v2 grid")
    ro = await repo.readonly_session(branch="main")
    node = await ro.get_node("/a")
    assert node is not None and node.array is not None
    assert node.array.shape[0].chunk_count() == 2**32 - 1
    assert await ro.get_chunk("/a", (2**32 - 2,)) == b"\x01"


async def test_a_v1_chunk_grid_beyond_uint32_is_kept() -> None:
    # spec v1 stores chunk lengths (uint64), not counts: the same grid commits and reads
    # (manifests still hold chunk indices as uint32, so only the first chunks are writable)
    repo, session = await session_with([2**32 + 4], [1])
    await session.set_chunk("/a", (MAX_CHUNK_INDEX,), b"\x02")
    await session.commit("a v1 grid beyond uint32")
    ro = await repo.readonly_session(branch="main")
    assert await ro.get_chunk("/a", (MAX_CHUNK_INDEX,)) == b"\x02"
    node = await ro.get_node("/a")
    assert node is not None and node.array is not None
    assert node.array.shape[0].chunk_count() == 2**32 + 4


def test_the_v2_snapshot_encoder_refuses_a_count_beyond_uint32() -> None:
    # a base snapshot written in spec v1 (before an upgrade) may hold such an array
    node = NodeSnapshot(
        NodeId.random(), "/big", b"{}", ArrayNodeData((DimensionShape(2**32, 1),), None)
    )
    snap = Snapshot(
        SnapshotId.random(), None, datetime.now(UTC), "m", {}, (node,), (), spec_version=2
    )
    with pytest.raises(UnrepresentableValueError, match="'/big'"):
        encode_snapshot(snap)


async def test_deleting_a_chunk_off_the_grid_is_nothing() -> None:
    repo, session = await session_with([4], [1])
    await session.delete_chunk("/a", (2**40,))
    await session.delete_chunk("/a", (-1,))
    await session.delete_chunk("/a", (0, 0))
    await session.store.set("a/c/1", buf(b"\x01"))
    await session.commit("deletes off the grid change nothing")
    ro = await repo.readonly_session(branch="main")
    assert [c async for c in ro.chunk_coords("/a")] == [(1,)]


async def test_fill_values_and_many_dimensions_commit() -> None:
    """Siblings that are fine: the format stores metadata as bytes (any fill value), and
    the rank is a vector length (32 dimensions, what zarr's indexing handles, round-trip)."""
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    for name, fill in (("big", 2**70), ("nan", "NaN"), ("neg", -(2**70))):
        await session.set_metadata(f"/{name}", array_meta([2], [1], fill_value=fill))
    arr = await zas.create_array(session.store, name="r32", shape=(1,) * 32, dtype="i1")
    await arr.setitem((0,) * 32, 5)
    await session.commit("fills and rank 32")
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="r32", mode="r")
    assert await arr.getitem((0,) * 32) == 5
    assert json.loads(await ro.get_metadata("/big") or b"")["fill_value"] == 2**70


@pytest.mark.attack("unrepresentable values")
def test_crafted_manifest_lengths_beyond_their_data() -> None:
    """A manifest whose inline-data length, or reference vector length, points past the
    end of the file: FormatError when the reference is read, never a raw error."""
    node = NodeId.random()
    marker = b"MARKER-" * 3
    data, _ = encode_array_manifest(ManifestId.random(), node, {(0,): InlineRef(marker)})
    payload = bytearray(decode_file(data, FileType.MANIFEST))
    at = payload.index(marker) - 4
    assert int.from_bytes(payload[at : at + 4], "little") == len(marker)
    for length in (len(payload), 2**31, 2**32 - 1):
        crafted = bytearray(payload)
        crafted[at : at + 4] = length.to_bytes(4, "little")
        with pytest.raises(FormatError, match="crafted: "):
            manifest = decode_manifest(encode_file(FileType.MANIFEST, bytes(crafted)), "crafted")
            list(manifest.iter_node(node))
    # the refs vector: its length field follows the array table's offset to it
    refs = np.frombuffer(bytes(payload[: len(payload) // 4 * 4]), dtype="<u4")
    for where in np.flatnonzero(refs == 1).tolist():  # candidate "1 reference" counts
        crafted = bytearray(payload)
        crafted[4 * where : 4 * where + 4] = (2**30).to_bytes(4, "little")
        try:
            manifest = decode_manifest(encode_file(FileType.MANIFEST, bytes(crafted)), "crafted")
            for nid in manifest.node_ids():
                list(manifest.iter_node(nid))
                manifest.lookup(nid, (0,))
        except FormatError as err:
            assert str(err).startswith("crafted: ")
