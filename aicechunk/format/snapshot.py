"""Snapshot files: the whole hierarchy of one commit, its message and metadata.

Nodes are sorted by path (``/`` is the root, ``/a/b`` a child), so a node is found by
binary search; metadata items are sorted by name; manifest files by id.

Spec v2 snapshots (``Snapshot.spec_version == 2``) store metadata values as FlexBuffers
instead of MessagePack, each dimension's number of chunks instead of its chunk length,
manifest files as tables, and no parent (the repo info file holds it). They are written
as Icechunk writes them, so they re-encode to the same bytes.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aicechunk.errors import UnrepresentableValueError
from aicechunk.format.flatbuf import (
    FILE_IDENTIFIER,
    Reader,
    guarded,
    inline_struct,
    new_builder,
    offset_vector,
    struct_vector,
    table,
)
from aicechunk.format.flexbuf import decode_flex, encode_flex
from aicechunk.format.header import FileType, decode_versioned, encode_file
from aicechunk.format.ids import ManifestId, NodeId, SnapshotId
from aicechunk.format.metadata import check_commit_properties, decode_value, encode_value

__all__ = [
    "ArrayNodeData",
    "DimensionShape",
    "GroupNodeData",
    "ManifestFileInfo",
    "ManifestRef",
    "NodeSnapshot",
    "Snapshot",
    "decode_snapshot",
    "encode_snapshot",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MFI = struct.Struct("<12s4xQI4x")  # ManifestFileInfo: 32 bytes, 8-aligned
_RANGE = struct.Struct("<II")  # ChunkIndexRange
_DIM = struct.Struct("<QQ")  # DimensionShape


@dataclass(frozen=True, slots=True)
class DimensionShape:
    """Length of the array and of its chunks along one dimension.

    Spec v2 files store the number of chunks instead of their length: read from one,
    ``num_chunks`` is set and ``chunk_length`` is only ``array_length`` divided by it,
    rounded up (as Icechunk computes it), which can differ from the true chunk length
    that the node's zarr metadata holds.
    """

    array_length: int
    chunk_length: int
    num_chunks: int | None = None

    def chunk_count(self) -> int:
        """How many chunks the dimension has."""
        if self.num_chunks is not None:
            return self.num_chunks
        if not self.chunk_length:
            return 0
        return -(-self.array_length // self.chunk_length)


@dataclass(frozen=True, slots=True)
class ManifestRef:
    """A manifest holding some of an array's chunks, with the chunk index range per
    dimension (``from`` inclusive, ``to`` exclusive) that it covers."""

    object_id: ManifestId
    extents: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ManifestFileInfo:
    """A manifest file the snapshot points to."""

    id: ManifestId
    size_bytes: int
    num_chunk_refs: int


@dataclass(frozen=True, slots=True)
class GroupNodeData:
    """Marks a node as a group."""


@dataclass(frozen=True, slots=True)
class ArrayNodeData:
    """What an array node records: shape, dimension names, manifests."""

    shape: tuple[DimensionShape, ...]
    dimension_names: tuple[str | None, ...] | None
    manifests: tuple[ManifestRef, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """A group or array: id, absolute path, zarr metadata bytes, and its data."""

    id: NodeId
    path: str
    user_data: bytes
    node_data: ArrayNodeData | GroupNodeData

    @property
    def is_array(self) -> bool:
        """Whether the node is an array."""
        return isinstance(self.node_data, ArrayNodeData)


@dataclass(frozen=True)
class Snapshot:
    """One commit: the hierarchy, where its chunks are, and the commit's message."""

    id: SnapshotId
    parent_id: SnapshotId | None
    flushed_at: datetime
    message: str
    metadata: dict[str, Any]
    nodes: tuple[NodeSnapshot, ...]
    manifest_files: tuple[ManifestFileInfo, ...]
    spec_version: int = 1
    _paths: list[str] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        nodes = tuple(sorted(self.nodes, key=lambda n: n.path))
        object.__setattr__(self, "nodes", nodes)
        files = tuple(sorted(self.manifest_files, key=lambda f: f.id))
        object.__setattr__(self, "manifest_files", files)
        object.__setattr__(self, "_paths", [n.path for n in nodes])

    def get_node(self, path: str) -> NodeSnapshot | None:
        """The node at ``path`` (binary search), or ``None``."""
        i = bisect.bisect_left(self._paths, path)
        if i < len(self._paths) and self._paths[i] == path:
            return self.nodes[i]
        return None


# --- encoding --------------------------------------------------------------------------


def _micros(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The snapshot file's bytes (header + compressed flatbuffer) in the snapshot's spec
    version; a message or metadata the format cannot hold is ``UnrepresentableValueError``."""
    check_commit_properties(snapshot.message, snapshot.metadata)
    if snapshot.spec_version == 2:
        return _encode_v2(snapshot)
    b = new_builder(4096 + 256 * len(snapshot.nodes))

    files = sorted(snapshot.manifest_files, key=lambda f: f.id)
    files_vec = struct_vector(
        b, [_MFI.pack(f.id.bytes, f.size_bytes, f.num_chunk_refs) for f in files], 32, 8
    )

    items = []
    for name in sorted(snapshot.metadata):
        name_off = b.CreateString(name)
        value_off = b.CreateByteVector(encode_value(snapshot.metadata[name], f"metadata[{name!r}]"))
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, name_off, 0)
        b.PrependUOffsetTRelativeSlot(1, value_off, 0)
        items.append(b.EndObject())
    metadata_vec = _offset_vector(b, items)

    message_off = b.CreateString(snapshot.message)
    node_offs = [_encode_node(b, n) for n in snapshot.nodes]
    nodes_vec = _offset_vector(b, node_offs)

    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(6, files_vec, 0)
    b.PrependUOffsetTRelativeSlot(5, metadata_vec, 0)
    b.PrependUOffsetTRelativeSlot(4, message_off, 0)
    b.PrependUint64Slot(3, _micros(snapshot.flushed_at), 0)
    b.PrependUOffsetTRelativeSlot(2, nodes_vec, 0)
    if snapshot.parent_id is not None:
        b.PrependStructSlot(1, inline_struct(b, snapshot.parent_id.bytes, 1), 0)
    b.PrependStructSlot(0, inline_struct(b, snapshot.id.bytes, 1), 0)
    root = b.EndObject()
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return encode_file(FileType.SNAPSHOT, bytes(b.Output()))


def _offset_vector(b: Any, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _encode_node(b: Any, node: NodeSnapshot) -> int:
    path_off = b.CreateString(node.path)
    user_off = b.CreateByteVector(node.user_data)
    data = node.node_data
    if isinstance(data, ArrayNodeData):
        mrefs = []
        for m in data.manifests:
            ext = struct_vector(b, [_RANGE.pack(lo, hi) for lo, hi in m.extents], 8, 4)
            b.StartObject(2)
            b.PrependUOffsetTRelativeSlot(1, ext, 0)
            b.PrependStructSlot(0, inline_struct(b, m.object_id.bytes, 1), 0)
            mrefs.append(b.EndObject())
        manifests_vec = _offset_vector(b, mrefs)
        names_vec = None
        if data.dimension_names is not None:
            names = []
            for n in data.dimension_names:
                n_off = b.CreateString(n) if n is not None else None
                b.StartObject(1)
                if n_off is not None:
                    b.PrependUOffsetTRelativeSlot(0, n_off, 0)
                names.append(b.EndObject())
            names_vec = _offset_vector(b, names)
        shape_vec = struct_vector(
            b, [_DIM.pack(d.array_length, d.chunk_length) for d in data.shape], 16, 8
        )
        b.StartObject(3)
        b.PrependUOffsetTRelativeSlot(2, manifests_vec, 0)
        if names_vec is not None:
            b.PrependUOffsetTRelativeSlot(1, names_vec, 0)
        b.PrependUOffsetTRelativeSlot(0, shape_vec, 0)
        data_off, data_type = b.EndObject(), 1
    else:
        b.StartObject(0)
        data_off, data_type = b.EndObject(), 2
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(4, data_off, 0)
    b.PrependUint8Slot(3, data_type, 0)
    b.PrependUOffsetTRelativeSlot(2, user_off, 0)
    b.PrependUOffsetTRelativeSlot(1, path_off, 0)
    b.PrependStructSlot(0, inline_struct(b, node.id.bytes, 1), 0)
    return int(b.EndObject())


# --- decoding --------------------------------------------------------------------------


def decode_snapshot(data: bytes, name: str = "<snapshot>", max_size: int | None = None) -> Snapshot:
    """Decode a snapshot file; ``FormatError`` names the file and the problem (also when it
    would decompress to more than ``max_size`` bytes)."""
    version, payload = decode_versioned(data, FileType.SNAPSHOT, name, max_size)
    return guarded(name, lambda: _decode(Reader(payload, name), version))


def _decode(r: Reader, version: int) -> Snapshot:
    root = r.root()
    id_pos = r.struct_at(root, 0, 12, "id")
    assert id_pos is not None
    parent_pos = r.struct_at(root, 1, 12)
    nodes = tuple(_decode_node(r, pos, version) for pos in r.table_vector(root, 2, "nodes"))
    flushed = r.scalar(root, 3, r.u64, 0)
    message = r.string(root, 4, "message") or ""
    metadata: dict[str, Any] = {}
    for pos in r.table_vector(root, 5, "metadata"):
        key = r.string(pos, 0, "metadata name")
        assert key is not None
        value = r.bytes_field(pos, 1, "metadata value") or b""
        metadata[key] = decode_value(value, r.name) if version == 1 else decode_flex(value, r.name)
    if r.field(root, 7) is not None:  # spec v2: manifest files as tables
        files = tuple(_decode_file_info(r, pos) for pos in r.table_vector(root, 7))
    else:
        start, length = r.vector(root, 6, "manifest_files")
        r.raw(start, 32 * length)
        files = tuple(
            ManifestFileInfo(ManifestId(fid), size, count)
            for fid, size, count in (_MFI.unpack_from(r.buf, start + 32 * i) for i in range(length))
        )
    return Snapshot(
        id=SnapshotId(r.raw(id_pos, 12)),
        parent_id=None if parent_pos is None else SnapshotId(r.raw(parent_pos, 12)),
        flushed_at=_EPOCH + timedelta(microseconds=flushed),
        message=message,
        metadata=metadata,
        nodes=nodes,
        manifest_files=files,
        spec_version=version,
    )


def _decode_file_info(r: Reader, pos: int) -> ManifestFileInfo:
    id_pos = r.struct_at(pos, 0, 12, "manifest file id")
    assert id_pos is not None
    return ManifestFileInfo(
        ManifestId(r.raw(id_pos, 12)), r.scalar(pos, 1, r.u64, 0), r.scalar(pos, 2, r.u32, 0)
    )


def _decode_node(r: Reader, pos: int, version: int) -> NodeSnapshot:
    id_pos = r.struct_at(pos, 0, 8, "node id")
    assert id_pos is not None
    path = r.string(pos, 1, "node path")
    assert path is not None
    user_data = r.bytes_field(pos, 2, "user_data")
    kind = r.scalar(pos, 3, r.u8, 0)
    data_pos = r.table_field(pos, 4, "node_data")
    assert data_pos is not None
    node_data: ArrayNodeData | GroupNodeData
    if kind == 2:
        node_data = GroupNodeData()
    elif kind == 1:
        start, length = r.vector(data_pos, 0, "shape")
        r.raw(start, 16 * length)
        shape = tuple(
            DimensionShape(*_DIM.unpack_from(r.buf, start + 16 * i)) for i in range(length)
        )
        if version == 2 or r.field(data_pos, 3) is not None:
            shape = tuple(_decode_dim_v2(r, p) for p in r.table_vector(data_pos, 3, "shape_v2"))
        names: tuple[str | None, ...] | None = None
        if r.field(data_pos, 1) is not None:
            names = tuple(r.string(p, 0) for p in r.table_vector(data_pos, 1))
        manifests = []
        for mpos in r.table_vector(data_pos, 2, "manifests"):
            oid = r.struct_at(mpos, 0, 12, "manifest object_id")
            assert oid is not None
            es, el = r.vector(mpos, 1, "extents")
            r.raw(es, 8 * el)
            extents = tuple(_RANGE.unpack_from(r.buf, es + 8 * i) for i in range(el))
            manifests.append(ManifestRef(ManifestId(r.raw(oid, 12)), extents))
        node_data = ArrayNodeData(shape, names, tuple(manifests))
    else:
        raise r.fail(f"node {path!r} has unknown node data type {kind}")
    return NodeSnapshot(NodeId(r.raw(id_pos, 8)), path, user_data or b"", node_data)


def _decode_dim_v2(r: Reader, pos: int) -> DimensionShape:
    length, count = r.scalar(pos, 0, r.u64, 0), r.scalar(pos, 1, r.u32, 0)
    return DimensionShape(length, -(-length // count) if count else 0, count)


# --- spec v2 encoding, in the order Icechunk's writer builds the buffer ----------------


def _encode_v2(snapshot: Snapshot) -> bytes:
    # the tables of fixed shape are written by direct builder calls, in the order
    # ``flatbuf.table`` (flatc's ``create``) adds their fields: 8-byte scalars, then
    # 4-byte values, then 1-byte ones, each group from the last field to the first
    b = new_builder(4096 + 256 * len(snapshot.nodes))
    infos = []
    for f in snapshot.manifest_files:
        b.StartObject(4)
        b.PrependUint64Slot(1, f.size_bytes, 0)
        b.PrependUint32Slot(2, f.num_chunk_refs, 0)
        b.PrependStructSlot(0, inline_struct(b, f.id.bytes, 1), 0)
        infos.append(b.EndObject())
    files_v2 = offset_vector(b, infos)
    files_v1 = struct_vector(b, [], 32, 8)
    items = []
    for key in sorted(snapshot.metadata):
        name = b.CreateSharedString(key)
        value = b.CreateByteVector(encode_flex(snapshot.metadata[key], f"metadata[{key!r}]"))
        items.append(table(b, 2, [(0, "off", name), (1, "off", value)]))
    metadata = offset_vector(b, items)
    message = b.CreateString(snapshot.message)
    nodes = offset_vector(b, [_encode_node_v2(b, n) for n in snapshot.nodes])
    b.StartObject(9)
    b.PrependUint64Slot(3, _micros(snapshot.flushed_at), 0)
    b.PrependUOffsetTRelativeSlot(7, files_v2, 0)
    b.PrependUOffsetTRelativeSlot(6, files_v1, 0)
    b.PrependUOffsetTRelativeSlot(5, metadata, 0)
    b.PrependUOffsetTRelativeSlot(4, message, 0)
    b.PrependUOffsetTRelativeSlot(2, nodes, 0)
    if snapshot.parent_id is not None:
        b.PrependStructSlot(1, inline_struct(b, snapshot.parent_id.bytes, 1), 0)
    b.PrependStructSlot(0, inline_struct(b, snapshot.id.bytes, 1), 0)
    root = b.EndObject()
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return encode_file(FileType.SNAPSHOT, bytes(b.Output()), spec_version=2)


_MAX_U32 = 2**32 - 1


def _encode_node_v2(b: Any, node: NodeSnapshot) -> int:
    path = b.CreateString(node.path)
    data = node.node_data
    if isinstance(data, ArrayNodeData):
        refs = []
        for m in data.manifests:
            extents = struct_vector(b, [_RANGE.pack(lo, hi) for lo, hi in m.extents], 8, 4)
            b.StartObject(2)
            b.PrependUOffsetTRelativeSlot(1, extents, 0)
            b.PrependStructSlot(0, inline_struct(b, m.object_id.bytes, 1), 0)
            refs.append(b.EndObject())
        manifests = offset_vector(b, refs)
        names = None
        if data.dimension_names is not None:
            dims = []
            for n in data.dimension_names:
                n_off = None if n is None else b.CreateSharedString(n)
                dims.append(table(b, 1, [(0, "off", n_off)]))
            names = offset_vector(b, dims)
        counts = [d.chunk_count() for d in data.shape]
        if any(c > _MAX_U32 for c in counts):  # sessions refuse these when set; a v1 base may not
            raise UnrepresentableValueError(
                f"array {node.path!r}",
                f"chunk counts {counts}: spec version 2 stores them as uint32",
            )
        shapes = []
        for d, c in zip(data.shape, counts, strict=True):
            b.StartObject(2)
            b.PrependUint64Slot(0, d.array_length, 0)
            b.PrependUint32Slot(1, c, 0)
            shapes.append(b.EndObject())
        shape_v1 = struct_vector(b, [], 16, 8)
        shape_v2 = offset_vector(b, shapes)
        b.StartObject(4)
        b.PrependUOffsetTRelativeSlot(3, shape_v2, 0)
        b.PrependUOffsetTRelativeSlot(2, manifests, 0)
        if names is not None:
            b.PrependUOffsetTRelativeSlot(1, names, 0)
        b.PrependUOffsetTRelativeSlot(0, shape_v1, 0)
        data_off = b.EndObject()
        kind = 1
    else:
        b.StartObject(0)
        data_off, kind = b.EndObject(), 2
    user_data = b.CreateByteVector(node.user_data)
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(4, data_off, 0)
    b.PrependUOffsetTRelativeSlot(2, user_data, 0)
    b.PrependUOffsetTRelativeSlot(1, path, 0)
    b.PrependStructSlot(0, inline_struct(b, node.id.bytes, 1), 0)
    b.PrependUint8Slot(3, kind, 0)
    return int(b.EndObject())
