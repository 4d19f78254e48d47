"""The start of every manifest file, and the manifest of an array with few references
written without numpy (``manifest_encode`` lays large ones out column by column).

A commit that changes one chunk rewrites its array's manifest; with a few dozen
references, numpy's per-call costs were most of the encoding. ``small_array_manifest``
writes the same bytes as ``manifest_encode.encode_array_manifest``, record by record with
one ``struct.pack`` each: references grouped by kind (native, then inline), each group
laid out as that encoder's blocks are (tested against it).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterator, Mapping, Sequence

from aicechunk.format import Coords
from aicechunk.format.flatbuf import Forward
from aicechunk.format.header import FileType, encode_file
from aicechunk.format.ids import ManifestId, NodeId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef

__all__ = ["SMALL_MANIFEST", "compress_manifest", "manifest_head", "small_array_manifest"]

#: arrays with at most this many references are encoded here (numpy pays beyond it)
SMALL_MANIFEST = 64

# the tables of a native and an inline reference: size and field offsets
NATIVE_TABLE, NATIVE_SLOTS = 36, (4, 0, 8, 16, 24)  # index, -, offset, length, chunk_id
INLINE_TABLE, INLINE_SLOTS = 12, (4, 8)  # index, inline

_FIRST = operator.itemgetter(0)


def compress_manifest(payload: bytes | bytearray, spec_version: int) -> bytes:
    """The manifest file of ``payload``: large manifests are read far more often than
    written, so they are compressed harder, on two threads (zstd level 5 comes within
    1% of level 6 in half the time)."""
    if len(payload) > 4 << 20:
        return encode_file(
            FileType.MANIFEST, payload, level=5, threads=2, spec_version=spec_version
        )
    return encode_file(FileType.MANIFEST, payload, spec_version=spec_version)


def manifest_head(
    w: Forward, manifest_id: ManifestId, node_ids: Sequence[NodeId], spec_version: int
) -> tuple[int, int, Iterator[int]]:
    """The start of a manifest file, written into ``w``: its root table (returned first),
    the native ref vtable (second) and, lazily, one array table per node id in order (each
    made when asked for, so the caller writes that array's refs right after it)."""
    # in v2, compression_algorithm (its default is 1, zstd) says 0: locations are plain
    v2 = spec_version == 2
    vt_manifest = w.vtable(24, (4, 16, 0, 20)) if v2 else w.vtable(20, (4, 16))
    vt_array = w.vtable(16, (4, 12))
    vt_native = w.vtable(NATIVE_TABLE, NATIVE_SLOTS)
    root = w.table(vt_manifest, 24 if v2 else 20)
    w.put(root + 4, "12s", manifest_id.bytes)
    arrays_vec = w.offset_vector(len(node_ids))
    w.uoffset(root + 16, arrays_vec)

    def tables() -> Iterator[int]:
        for i, node_id in enumerate(node_ids):
            table = w.table(vt_array, 16)
            w.put(table + 4, "8s", node_id.bytes)
            w.uoffset(arrays_vec + 4 + 4 * i, table)
            yield table

    return root, vt_native, tables()


def small_array_manifest(
    manifest_id: ManifestId,
    node_id: NodeId,
    refs: Mapping[Coords, ChunkRef],
    spec_version: int,
) -> tuple[bytes, tuple[tuple[int, int], ...]] | None:
    """``encode_array_manifest`` of a few native and inline references whose coordinates
    all have one dimensionality (at least one); ``None`` for anything else (more than
    ``SMALL_MANIFEST``, virtual ones, values out of the format's range), which the
    general encoder writes."""
    n = len(refs)
    if not 0 < n <= SMALL_MANIFEST:
        return None
    items = sorted(refs.items(), key=_FIRST)
    ndim = len(items[0][0])
    if not ndim:
        return None
    natives: list[tuple[int, Coords, NativeRef]] = []
    inlines: list[tuple[int, Coords, InlineRef]] = []
    for row, (coords, ref) in enumerate(items):
        if len(coords) != ndim:
            return None
        kind = type(ref)
        if kind is NativeRef:
            natives.append((row, coords, ref))  # type: ignore[arg-type]
        elif kind is InlineRef:
            inlines.append((row, coords, ref))  # type: ignore[arg-type]
        else:
            return None
    w = Forward()
    root, vt_native, tables = manifest_head(w, manifest_id, [node_id], spec_version)
    table = next(tables)
    refs_vec = w.offset_vector(n)
    w.uoffset(table + 12, refs_vec)
    positions = [0] * n
    buf = w.buf
    try:
        if natives:
            # fixed-size records, 8-aligned: table, index vector, padding
            record = struct.Struct(f"<iIQQ12sI{ndim}I")
            pad = b"\x00" * ((40 + 4 * ndim + 7) // 8 * 8 - record.size)
            w.align(8)
            for row, coords, nref in natives:
                pos = positions[row] = len(buf)
                cid = nref.chunk_id.bytes
                off, length = nref.offset, nref.length
                buf += record.pack(pos - vt_native, 32, off, length, cid, ndim, *coords)
                buf += pad
        if inlines:
            vt_inline = w.vtable(INLINE_TABLE, INLINE_SLOTS)
            head = 5 + ndim  # u32 words: soffset, index offset, data offset, ndim, coords, length
            record = struct.Struct(f"<iIII{ndim}II")
            w.align(4)
            for row, coords, iref in inlines:
                pos = positions[row] = len(buf)
                data = iref.data
                buf += record.pack(pos - vt_inline, 8, 4 * head - 12, ndim, *coords, len(data))
                buf += data
                buf += b"\x00" * (-len(data) % 4)
        first = refs_vec + 4
        w.put(first, f"<{n}I", *(p - first - 4 * i for i, p in enumerate(positions)))
    except struct.error:  # a value the format cannot hold: the general encoder says so
        return None
    data = compress_manifest(w.finish_buffer(root), spec_version)
    extents = tuple(
        (int(min(c[d] for c, _ in items)), int(max(c[d] for c, _ in items)) + 1)
        for d in range(ndim)
    )
    return data, extents
