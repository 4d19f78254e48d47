"""Manifest files: chunk references of one or more arrays.

Three kinds of reference share one flatbuffer table: native (a chunk file in the
repository), inline (the bytes themselves) and virtual (a byte range of an object
elsewhere, with an optional ETag or last-modified checksum). Arrays are sorted by node
id and each array's references by chunk coordinates, so ``Manifest.lookup`` finds one
reference by two binary searches, decoding only what it touches.

Spec v2 manifests may store virtual locations compressed with a zstd dictionary that the
manifest carries (``compressed_location``); they read back as plain ``VirtualRef``.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import zstandard

from aicechunk.format import Coords
from aicechunk.format.flatbuf import Reader, guarded
from aicechunk.format.header import FileType, decode_versioned
from aicechunk.format.ids import ChunkId, ManifestId, NodeId

__all__ = [
    "MAX_CHUNK_INDEX",
    "MAX_U32",
    "MAX_U64",
    "ChunkRef",
    "InlineRef",
    "Manifest",
    "NativeRef",
    "VirtualRef",
    "decode_manifest",
]

MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1
# chunk indices are uint32, and a manifest's extents store one past the largest index
# (also a uint32), so the largest index a repository can hold is one less
MAX_CHUNK_INDEX = MAX_U32 - 1
# arrays with at most this many refs in one manifest get a coords -> ref index on first
# lookup; larger ones are binary-searched (building the index would cost more than it saves)
_INDEX_LIMIT = 65_536
# ... once this many lookups went to one array (opening a repository to read one chunk
# should not decode every coordinate of the manifest)
_INDEX_AFTER = 16
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
# ... larger ones sample the coordinates of every this many refs
_STRIDE = 256
#: decoded references kept per manifest: a read-ahead looks a chunk up before its read
#: does, and the read then finds it here instead of decoding it again
_RECENT = 256
# the longest compressed virtual location Icechunk writes or reads, decompressed
MAX_LOCATION = 1024


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


class _Positions(Sequence[int]):
    """Where each table of a vector of tables is, read from the vector when asked: a
    lookup in a manifest of ten million references touches a few dozen of them."""

    __slots__ = ("_buf", "_length", "_start")

    def __init__(self, reader: Reader, start: int, length: int) -> None:
        reader.raw(start, 4 * length)  # bounds-checked once
        self._buf = reader.buf
        self._start = start
        self._length = length

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[int]: ...
    def __getitem__(self, i: int | slice) -> int | Sequence[int]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._length))]
        if not 0 <= i < self._length:
            raise IndexError(i)
        at = self._start + 4 * i
        offset: int = _U32.unpack_from(self._buf, at)[0]
        return at + offset

    def __iter__(self) -> Iterator[int]:
        for first in range(0, self._length, 65_536):
            count = min(65_536, self._length - first)
            at = self._start + 4 * first
            offsets = np.frombuffer(self._buf, dtype="<u4", count=count, offset=at)
            yield from (offsets.astype(np.int64) + (at + 4 * np.arange(count))).tolist()


class Manifest:
    """A decoded-on-demand manifest."""

    def __init__(self, reader: Reader, spec_version: int = 1) -> None:
        self._r = reader
        self.spec_version = spec_version
        root = reader.root()
        self._root = root
        self._dictionary: zstandard.ZstdDecompressor | None = None
        id_pos = reader.struct_at(root, 0, 12, "id")
        assert id_pos is not None
        self.id = ManifestId(reader.raw(id_pos, 12))
        self._arrays = reader.table_vector(root, 1, "arrays")
        self._node_ids: list[bytes] = []
        for pos in self._arrays:
            nid = reader.struct_at(pos, 0, 8, "node_id")
            assert nid is not None
            self._node_ids.append(reader.raw(nid, 8))
        self._refs_cache: dict[int, _Positions] = {}
        self._index: dict[NodeId, dict[Coords, int]] = {}
        self._lookups: dict[NodeId, int] = {}
        self._samples: dict[NodeId, list[Coords]] = {}
        self._recent: dict[int, ChunkRef] = {}

    @property
    def name(self) -> str:
        """The file name used in errors."""
        return self._r.name

    def node_ids(self) -> list[NodeId]:
        """Ids of the arrays with references here."""
        return [NodeId(b) for b in self._node_ids]

    def _array_refs(self, node_id: NodeId) -> _Positions | None:
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
            start, length = self._r.vector(self._arrays[lo], 1, "refs")
            cached = _Positions(self._r, start, length)
            self._refs_cache[lo] = cached
        return cached

    def _coords(self, pos: int) -> Coords:
        # the index vector of the ref table at ``pos``, read with bounds checks inline (a
        # lookup reads a few dozen of these); anything odd goes the checked way, which
        # names the problem
        buf, size = self._r.buf, self._r.size
        if 0 <= pos <= size - 4:
            vtable = pos - _I32.unpack_from(buf, pos)[0]
            if 0 <= vtable <= size - 6 and _U16.unpack_from(buf, vtable)[0] >= 6:
                at = pos + _U16.unpack_from(buf, vtable + 4)[0]
                if at != pos and at <= size - 4:
                    vec = at + _U32.unpack_from(buf, at)[0]
                    if vec <= size - 4:
                        n = _U32.unpack_from(buf, vec)[0]
                        if vec + 4 + 4 * n <= size:
                            return struct.unpack_from(f"<{n}I", buf, vec + 4)
        return tuple(self._r.u32_vector(pos, 0, "index"))

    def lookup(self, node_id: NodeId, coords: Coords) -> ChunkRef | None:
        """The reference of one chunk, or ``None`` (binary search, no full decode)."""
        return guarded(self.name, lambda: self._lookup(node_id, tuple(coords)))

    def _lookup(self, node_id: NodeId, coords: Coords) -> ChunkRef | None:
        refs = self._array_refs(node_id)
        if not refs:
            return None
        index = self._index.get(node_id)
        if index is not None:
            pos = index.get(coords)
            return None if pos is None else self._recent_ref(pos)
        seen = self._lookups.get(node_id, 0) + 1
        self._lookups[node_id] = seen
        if len(refs) <= _INDEX_LIMIT and seen > _INDEX_AFTER:
            # moderate arrays read chunk after chunk: once a few lookups went by binary
            # search, index every ref and make each later lookup a dict hit
            index = {self._coords(pos): pos for pos in refs}
            self._index[node_id] = index
            pos = index.get(coords)
            return None if pos is None else self._ref(pos)
        lo, hi = 0, len(refs)
        samples = self._samples.get(node_id)
        if samples is None and seen > _INDEX_AFTER:
            # huge arrays: every _STRIDE-th ref's coordinates (1/_STRIDE of an index),
            # so a lookup bisects them in C and then searches _STRIDE refs
            samples = [self._coords(refs[i]) for i in range(0, len(refs), _STRIDE)]
            self._samples[node_id] = samples
        if samples is not None:
            lo = max(0, bisect.bisect_right(samples, coords) - 1) * _STRIDE
            hi = min(len(refs), lo + _STRIDE)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._coords(refs[mid]) < coords:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(refs) and self._coords(refs[lo]) == coords:
            return self._recent_ref(refs[lo])
        return None

    def _recent_ref(self, pos: int) -> ChunkRef:
        # the reference at ``pos``, decoded once while it is among the last _RECENT
        recent = self._recent
        found = recent.get(pos)
        if found is None:
            found = self._ref(pos)
            if len(recent) >= _RECENT:
                del recent[next(iter(recent))]
            recent[pos] = found
        return found

    def iter_node(self, node_id: NodeId) -> Iterator[tuple[Coords, ChunkRef]]:
        """Every (coords, reference) of one array, in coordinate order."""
        found = guarded(self.name, lambda: self._array_refs(node_id))
        refs: Sequence[int] = found if found is not None else ()
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

    def _decompress_location(self, compressed: bytes) -> str:
        r = self._r
        if self._dictionary is None:
            # the algorithm field defaults to 1, zstd with the manifest's dictionary
            algorithm = r.scalar(self._root, 3, r.u8, 1)
            dictionary = r.bytes_field(self._root, 2)
            if algorithm != 1 or dictionary is None:
                raise r.fail("a compressed virtual location but no zstd dictionary")
            try:
                zdict = zstandard.ZstdCompressionDict(dictionary)
                self._dictionary = zstandard.ZstdDecompressor(dict_data=zdict)
            except zstandard.ZstdError as err:
                raise r.fail(f"bad location dictionary: {err}") from None
        try:  # at most one byte past the limit is ever decompressed
            with self._dictionary.stream_reader(compressed) as stream:
                out = stream.read(MAX_LOCATION + 1)
        except zstandard.ZstdError as err:
            raise r.fail(f"bad compressed location: {err}") from None
        if len(out) > MAX_LOCATION:
            raise r.fail(f"a virtual location longer than {MAX_LOCATION} bytes")
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise r.fail("a virtual location is not valid UTF-8") from None

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
        compressed = r.bytes_field(pos, 8)
        if compressed is not None:
            location = self._decompress_location(compressed)
            etag = r.string(pos, 6)
            modified = r.scalar(pos, 7, r.u32, 0)
            return VirtualRef(location, offset, length, etag, modified or None)
        raise r.fail("a chunk reference is neither inline, native nor virtual")


def decode_manifest(data: bytes, name: str = "<manifest>", max_size: int | None = None) -> Manifest:
    """Open a manifest file (of any spec version) for lookups; ``FormatError`` names the
    file and the problem (also when it would decompress to more than ``max_size`` bytes)."""
    version, payload = decode_versioned(data, FileType.MANIFEST, name, max_size)
    return guarded(name, lambda: Manifest(Reader(payload, name), version))
