"""Manifest files: chunk references of one or more arrays.

Three kinds of reference share one flatbuffer table: native (a chunk file in the
repository), inline (the bytes themselves) and virtual (a byte range of an object
elsewhere, with an optional ETag or last-modified checksum). Arrays are sorted by node
id and each array's references by chunk coordinates, so ``Manifest.lookup`` finds one
reference by two binary searches, decoding only what it touches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from aicechunk.format.flatbuf import (
    FILE_IDENTIFIER,
    Reader,
    guarded,
    inline_struct,
    new_builder,
)
from aicechunk.format.header import FileType, decode_file, encode_file
from aicechunk.format.ids import ChunkId, ManifestId, NodeId

__all__ = [
    "ChunkRef",
    "InlineRef",
    "Manifest",
    "NativeRef",
    "VirtualRef",
    "decode_manifest",
    "encode_manifest",
]

Coords = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NativeRef:
    """``length`` bytes at ``offset`` of the chunk file ``chunks/<chunk_id>``."""

    chunk_id: ChunkId
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class InlineRef:
    """The chunk's bytes, stored in the manifest."""

    data: bytes


@dataclass(frozen=True, slots=True)
class VirtualRef:
    """``length`` bytes at ``offset`` of the object at ``location`` (a URL).

    At most one checksum: the object's ``etag``, or ``last_modified`` in seconds since
    the epoch; a reader refuses the chunk if the object no longer matches.
    """

    location: str
    offset: int
    length: int
    etag: str | None = None
    last_modified: int | None = None


ChunkRef = NativeRef | InlineRef | VirtualRef


# --- decoding --------------------------------------------------------------------------


class Manifest:
    """A decoded-on-demand manifest."""

    def __init__(self, reader: Reader) -> None:
        self._r = reader
        root = reader.root()
        id_pos = reader.struct_at(root, 0, 12, "id")
        assert id_pos is not None
        self.id = ManifestId(reader.raw(id_pos, 12))
        self._arrays = reader.table_vector(root, 1, "arrays")
        self._node_ids: list[bytes] = []
        for pos in self._arrays:
            nid = reader.struct_at(pos, 0, 8, "node_id")
            assert nid is not None
            self._node_ids.append(reader.raw(nid, 8))
        self._refs_cache: dict[int, list[int]] = {}

    @property
    def name(self) -> str:
        """The file name used in errors."""
        return self._r.name

    def node_ids(self) -> list[NodeId]:
        """Ids of the arrays with references here."""
        return [NodeId(b) for b in self._node_ids]

    def _array_refs(self, node_id: NodeId) -> list[int] | None:
        ids = self._node_ids
        key = node_id.bytes
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if ids[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(ids) or ids[lo] != key:
            return None
        cached = self._refs_cache.get(lo)
        if cached is None:
            cached = self._r.table_vector(self._arrays[lo], 1, "refs")
            self._refs_cache[lo] = cached
        return cached

    def _coords(self, pos: int) -> Coords:
        return tuple(self._r.u32_vector(pos, 0, "index"))

    def lookup(self, node_id: NodeId, coords: Coords) -> ChunkRef | None:
        """The reference of one chunk, or ``None`` (binary search, no full decode)."""
        return guarded(self.name, lambda: self._lookup(node_id, tuple(coords)))

    def _lookup(self, node_id: NodeId, coords: Coords) -> ChunkRef | None:
        refs = self._array_refs(node_id)
        if not refs:
            return None
        lo, hi = 0, len(refs)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._coords(refs[mid]) < coords:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(refs) and self._coords(refs[lo]) == coords:
            return self._ref(refs[lo])
        return None

    def iter_node(self, node_id: NodeId) -> Iterator[tuple[Coords, ChunkRef]]:
        """Every (coords, reference) of one array, in coordinate order."""
        refs = guarded(self.name, lambda: self._array_refs(node_id)) or []
        for pos in refs:
            yield guarded(self.name, lambda p=pos: (self._coords(p), self._ref(p)))  # type: ignore[misc]

    def __iter__(self) -> Iterator[tuple[NodeId, Coords, ChunkRef]]:
        for nid in self.node_ids():
            for coords, ref in self.iter_node(nid):
                yield nid, coords, ref

    @property
    def num_chunk_refs(self) -> int:
        """How many references the manifest holds."""
        return sum(self._r.vector(pos, 1, "refs")[1] for pos in self._arrays)

    def _ref(self, pos: int) -> ChunkRef:
        r = self._r
        inline = r.bytes_field(pos, 1)
        if inline is not None:
            return InlineRef(inline)
        offset = r.scalar(pos, 2, r.u64, 0)
        length = r.scalar(pos, 3, r.u64, 0)
        cid = r.struct_at(pos, 4, 12)
        if cid is not None:
            return NativeRef(ChunkId(r.raw(cid, 12)), offset, length)
        location = r.string(pos, 5)
        if location is not None:
            etag = r.string(pos, 6)
            modified = r.scalar(pos, 7, r.u32, 0)
            return VirtualRef(location, offset, length, etag, modified or None)
        raise r.fail("a chunk reference is neither inline, native nor virtual")


def decode_manifest(data: bytes, name: str = "<manifest>") -> Manifest:
    """Open a manifest file for lookups; ``FormatError`` names the file and the problem."""
    payload = decode_file(data, FileType.MANIFEST, name)
    return guarded(name, lambda: Manifest(Reader(payload, name)))


# --- encoding --------------------------------------------------------------------------


def _ref_table(b: object, coords: Coords, ref: ChunkRef) -> int:
    bld = b  # flatbuffers.Builder
    inline_off = location_off = etag_off = None
    if isinstance(ref, InlineRef):
        inline_off = bld.CreateByteVector(ref.data)  # type: ignore[attr-defined]
    elif isinstance(ref, VirtualRef):
        location_off = bld.CreateString(ref.location)  # type: ignore[attr-defined]
        if ref.etag is not None:
            etag_off = bld.CreateString(ref.etag)  # type: ignore[attr-defined]
    bld.StartVector(4, len(coords), 4)  # type: ignore[attr-defined]
    for c in reversed(coords):
        bld.PrependUint32(c)  # type: ignore[attr-defined]
    index_off = bld.EndVector()  # type: ignore[attr-defined]
    bld.StartObject(8)  # type: ignore[attr-defined]
    if isinstance(ref, VirtualRef) and ref.last_modified:
        bld.PrependUint32Slot(7, ref.last_modified, 0)  # type: ignore[attr-defined]
    if etag_off is not None:
        bld.PrependUOffsetTRelativeSlot(6, etag_off, 0)  # type: ignore[attr-defined]
    if location_off is not None:
        bld.PrependUOffsetTRelativeSlot(5, location_off, 0)  # type: ignore[attr-defined]
    if not isinstance(ref, InlineRef):
        bld.PrependUint64Slot(3, ref.length, 0)  # type: ignore[attr-defined]
        bld.PrependUint64Slot(2, ref.offset, 0)  # type: ignore[attr-defined]
    if inline_off is not None:
        bld.PrependUOffsetTRelativeSlot(1, inline_off, 0)  # type: ignore[attr-defined]
    bld.PrependUOffsetTRelativeSlot(0, index_off, 0)  # type: ignore[attr-defined]
    if isinstance(ref, NativeRef):
        bld.PrependStructSlot(4, inline_struct(bld, ref.chunk_id.bytes, 1), 0)  # type: ignore[attr-defined]
    return int(bld.EndObject())  # type: ignore[attr-defined]


def encode_manifest(
    manifest_id: ManifestId,
    arrays: Mapping[NodeId, Iterable[tuple[Coords, ChunkRef]]],
) -> bytes:
    """The manifest file's bytes: arrays sorted by node id, references by coordinates."""
    b = new_builder(1 << 16)
    array_offs = []
    for node_id in sorted(arrays):
        refs = sorted(arrays[node_id], key=lambda item: item[0])
        ref_offs = [_ref_table(b, tuple(c), r) for c, r in refs]
        b.StartVector(4, len(ref_offs), 4)
        for off in reversed(ref_offs):
            b.PrependUOffsetTRelative(off)
        refs_vec = b.EndVector()
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(1, refs_vec, 0)
        b.PrependStructSlot(0, inline_struct(b, node_id.bytes, 1), 0)
        array_offs.append(b.EndObject())
    b.StartVector(4, len(array_offs), 4)
    for off in reversed(array_offs):
        b.PrependUOffsetTRelative(off)
    arrays_vec = b.EndVector()
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(1, arrays_vec, 0)
    b.PrependStructSlot(0, inline_struct(b, manifest_id.bytes, 1), 0)
    root = b.EndObject()
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return encode_file(FileType.MANIFEST, bytes(b.Output()))
