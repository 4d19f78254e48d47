"""Writing manifest files (``format/manifest.py`` reads them).

Written front to back (see flatbuf.Forward): manifest table, arrays vector, then per
array its table, its refs vector and the ref records. Runs of native references of one
dimensionality, the bulk of large manifests, are laid out with numpy in one go. The bulk
form of many references is ``RefColumns``, one column per field.

``spec_version=2`` writes a spec v2 manifest: the same tables, with the location
compression field saying "none" (virtual locations are written as plain strings).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from aicechunk.format import Coords
from aicechunk.format.flatbuf import Forward
from aicechunk.format.ids import ManifestId, NodeId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef, VirtualRef
from aicechunk.format.manifest_small import (
    INLINE_SLOTS,
    INLINE_TABLE,
    NATIVE_SLOTS,
    NATIVE_TABLE,
    compress_manifest,
    manifest_head,
    small_array_manifest,
)

__all__ = [
    "KIND_INLINE",
    "KIND_NATIVE",
    "KIND_VIRTUAL",
    "RefColumns",
    "encode_array_manifest",
    "encode_array_manifest_columns",
    "encode_manifest",
    "ref_columns",
]

_OFFSET = operator.attrgetter("offset")
_LENGTH = operator.attrgetter("length")
_LOCATION = operator.attrgetter("location")


_ETAG = operator.attrgetter("etag")
_MODIFIED = operator.attrgetter("last_modified")


def _native_block(
    w: Forward,
    vt: int,
    coords: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    chunk_ids: np.ndarray,
) -> np.ndarray:
    """Native refs of one dimensionality: fixed-size records (table, then index vector)."""
    n, ndim = coords.shape
    rec = (40 + 4 * ndim + 7) // 8 * 8
    base = w.reserve(n * rec, 8)
    dtype = np.dtype(
        {
            "names": ["soff", "idx", "off", "len", "cid", "vlen", "coords"],
            "formats": ["<i4", "<u4", "<u8", "<u8", ("u1", 12), "<u4", ("<u4", (ndim,))],
            "offsets": [0, 4, 8, 16, 24, 36, 40],
            "itemsize": rec,
        }
    )
    view = np.frombuffer(memoryview(w.buf)[base : base + n * rec], dtype=dtype)
    positions: np.ndarray = base + np.arange(n, dtype=np.int64) * rec
    view["soff"] = positions - vt
    view["idx"] = 32
    view["off"] = offsets
    view["len"] = lengths
    view["cid"] = chunk_ids.reshape(n, 12)
    view["vlen"] = ndim
    if ndim:
        view["coords"] = coords
    del view  # release the buffer export: the buffer grows later
    return positions


def _virtual_block(
    w: Forward,
    coords: np.ndarray,
    locations: list[str],
    which: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
) -> np.ndarray:
    """Checksum-less virtual refs of one dimensionality; ref ``i`` points into
    ``locations[which[i]]``, each location string written once, after the records."""
    n, ndim = coords.shape
    rec = (32 + 4 * ndim + 7) // 8 * 8
    vt = w.vtable(28, (4, 0, 8, 16, 0, 24))
    base = w.reserve(n * rec, 8)
    dtype = np.dtype(
        {
            "names": ["soff", "idx", "off", "len", "loc", "vlen", "coords"],
            "formats": ["<i4", "<u4", "<u8", "<u8", "<u4", "<u4", ("<u4", (ndim,))],
            "offsets": [0, 4, 8, 16, 24, 28, 32],
            "itemsize": rec,
        }
    )
    view = np.frombuffer(memoryview(w.buf)[base : base + n * rec], dtype=dtype)
    positions: np.ndarray = base + np.arange(n, dtype=np.int64) * rec
    view["soff"] = positions - vt
    view["idx"] = 24
    view["off"] = offsets
    view["len"] = lengths
    view["vlen"] = ndim
    if ndim:
        view["coords"] = coords
    del view  # the buffer grows below
    # each location used once, in order of first use: the same bytes however the
    # location table came about
    string_pos = np.zeros(len(locations), dtype=np.int64)
    for i in _first_use_order(which, len(locations)).tolist():
        string_pos[i] = w.string(locations[i])
    loc_offsets = (string_pos[which] - (positions + 24)).astype("<u4")
    # scatter the location offsets into the records (strided writes through numpy)
    records = np.frombuffer(memoryview(w.buf)[base : base + n * rec], dtype=np.uint8).reshape(
        n, rec
    )
    records[:, 24:28] = loc_offsets.view(np.uint8).reshape(n, 4)
    del records
    return positions


def _first_use_order(which: np.ndarray, m: int) -> np.ndarray:
    """The locations ``which`` points into (``m`` of them), in order of first use."""
    if m == 1:
        return np.zeros(1 if len(which) else 0, dtype=np.int64)
    first = np.full(m, len(which), dtype=np.int64)
    np.minimum.at(first, which, np.arange(len(which), dtype=np.int64))
    used = np.flatnonzero(first < len(which))
    order: np.ndarray = used[np.argsort(first[used], kind="stable")]
    return order


def _inline_block(
    w: Forward, vt: int, coords: np.ndarray, lengths: np.ndarray, data: np.ndarray
) -> np.ndarray:
    """Inline refs of one dimensionality, laid out with numpy: each record is its table,
    its index vector and its byte vector, back to back (the per-ref layout a builder
    writes, so the file compresses as well). ``data`` holds the chunks back to back."""
    n, ndim = coords.shape
    head = 5 + ndim  # u32 words: soffset, index offset, data offset, ndim, coords, data length
    lengths = lengths.astype(np.int64)
    sizes = 4 * head + (lengths + 3) // 4 * 4
    total = int(sizes.sum())
    base = w.reserve(total, 4)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    positions: np.ndarray = base + starts
    header = np.empty((n, head), dtype="<u4")
    header[:, 0] = (positions - vt).astype("<i4").view("<u4")
    header[:, 1] = 8  # the index vector follows the 12-byte table
    header[:, 2] = 4 * head - 12  # the byte vector follows the index vector
    header[:, 3] = ndim
    if ndim:
        header[:, 4 : 4 + ndim] = coords
    header[:, head - 1] = lengths
    out = np.frombuffer(memoryview(w.buf)[base : base + total], dtype=np.uint8)
    if n and (sizes == sizes[0]).all() and (lengths == lengths[0]).all():
        # one chunk size (the usual case): fixed-stride records
        rows = out.reshape(n, int(sizes[0]))
        rows[:, : 4 * head] = header.view(np.uint8).reshape(n, 4 * head)
        if lengths[0]:
            rows[:, 4 * head : 4 * head + int(lengths[0])] = data.reshape(n, int(lengths[0]))
        del rows
    elif n:
        words = out.view("<u4")
        words[(starts // 4)[:, None] + np.arange(head)] = header
        del words
        src_starts = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=src_starts[1:])
        shift = np.repeat(starts + 4 * head - src_starts, lengths)
        out[np.arange(len(data)) + shift] = data
    del out  # release the buffer export: the buffer grows later
    return positions


def _ref_record(w: Forward, coords: Coords, ref: ChunkRef) -> int:
    ndim = len(coords)
    if isinstance(ref, NativeRef):
        table = w.table(w.vtable(NATIVE_TABLE, NATIVE_SLOTS), NATIVE_TABLE, 8)
        w.put(table + 8, "<QQ12s", ref.offset, ref.length, ref.chunk_id.bytes)
        index = w.reserve(4 + 4 * ndim)
        w.put(index, f"<I{ndim}I", ndim, *coords)
        w.uoffset(table + 4, index)
        return table
    if isinstance(ref, InlineRef):
        table = w.table(w.vtable(INLINE_TABLE, INLINE_SLOTS), INLINE_TABLE)
        index = w.reserve(4 + 4 * ndim)
        w.put(index, f"<I{ndim}I", ndim, *coords)
        w.uoffset(table + 4, index)
        w.uoffset(table + 8, w.byte_vector(ref.data))
        return table
    slots = [4, 0, 8, 16, 0, 24]
    size = 28
    if ref.etag is not None:
        slots.append(size)
        size += 4
    if ref.last_modified:
        slots.extend([0] * (7 - len(slots)) + [size])
        size += 4
    table = w.table(w.vtable(size, tuple(slots)), size, 8)
    w.put(table + 8, "<QQ", ref.offset, ref.length)
    if ref.last_modified:
        w.put(table + slots[7], "<I", ref.last_modified)
    index = w.reserve(4 + 4 * ndim)
    w.put(index, f"<I{ndim}I", ndim, *coords)
    w.uoffset(table + 4, index)
    w.uoffset(table + 24, w.string(ref.location))
    if ref.etag is not None:
        w.uoffset(table + 28, w.string(ref.etag))
    return table


def _sorted_refs(
    items: Mapping[Coords, ChunkRef] | Iterable[tuple[Coords, ChunkRef]],
) -> tuple[np.ndarray, list[ChunkRef]]:
    if isinstance(items, Mapping):
        keys: Sequence[Coords] = list(items.keys())
        values: Sequence[ChunkRef] = list(items.values())
        pairs = None
    else:
        pairs = list(items)
        keys = list(map(operator.itemgetter(0), pairs))
        values = list(map(operator.itemgetter(1), pairs))
    if not keys:
        return np.zeros((0, 0), dtype=np.uint32), []
    ndims = set(map(len, keys))
    if len(ndims) == 1:
        ndim = ndims.pop()
        n = len(keys)
        flat = np.fromiter(itertools.chain.from_iterable(keys), dtype=np.uint32, count=n * ndim)
        coords = flat.reshape(n, ndim)
        if ndim:
            order = np.lexsort(coords.T[::-1])
            return coords[order], list(map(values.__getitem__, order.tolist()))
        return coords, list(values)
    if pairs is None:
        pairs = list(zip(keys, values, strict=True))
    pairs.sort(key=lambda p: p[0])
    # mixed dimensionality (never in a valid array): keep Python tuples in an object array
    obj = np.empty(len(pairs), dtype=object)
    obj[:] = [c for c, _ in pairs]
    return obj, [r for _, r in pairs]


def encode_manifest(
    manifest_id: ManifestId,
    arrays: Mapping[NodeId, Iterable[tuple[Coords, ChunkRef]]],
    spec_version: int = 1,
) -> bytes:
    """The manifest file's bytes: arrays sorted by node id, references by coordinates."""
    return compress_manifest(_manifest_payload(manifest_id, arrays, spec_version), spec_version)


def encode_array_manifest(
    manifest_id: ManifestId,
    node_id: NodeId,
    refs: Mapping[Coords, ChunkRef] | Iterable[tuple[Coords, ChunkRef]],
    spec_version: int = 1,
) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """A manifest holding one array's references, and the chunk index range it covers
    along each dimension (for the snapshot's ``ManifestRef``)."""
    if isinstance(refs, Mapping):  # a few refs: without numpy, same bytes
        small = small_array_manifest(manifest_id, node_id, refs, spec_version)
        if small is not None:
            return small
    coords, ordered = _sorted_refs(refs)
    arrays = {node_id: _Presorted(coords, ordered)}
    data = encode_manifest(manifest_id, arrays, spec_version)  # type: ignore[arg-type]
    if coords.dtype == object or coords.size == 0:
        ndim = len(coords[0]) if len(coords) else 0
        extents = tuple(
            (min(c[d] for c in coords), max(c[d] for c in coords) + 1) for d in range(ndim)
        )
        return data, extents
    low, high = coords.min(axis=0), coords.max(axis=0) + 1
    return data, tuple(zip(low.tolist(), high.tolist(), strict=True))


class _Presorted:
    """References already sorted by ``_sorted_refs`` (so encoding does not sort again)."""

    def __init__(self, coords: np.ndarray, refs: list[ChunkRef]) -> None:
        self.coords = coords
        self.refs = refs


# the kind codes of RefColumns.kinds
KIND_NATIVE, KIND_INLINE, KIND_VIRTUAL = 0, 1, 2
_KIND_OF = {NativeRef: KIND_NATIVE, InlineRef: KIND_INLINE, VirtualRef: KIND_VIRTUAL}


def _records(w: Forward, vt_native: int, coords: np.ndarray, refs: list[ChunkRef]) -> np.ndarray:
    """Write one array's ref records; their positions, in the order of ``refs``.
    Coordinates of mixed dimensionality (never valid in an array) go one by one."""
    if coords.dtype == object:
        return np.array(
            [
                _ref_record(w, tuple(int(x) for x in c), r)
                for c, r in zip(coords, refs, strict=True)
            ],
            dtype=np.int64,
        )
    return _column_records(w, vt_native, ref_columns(coords, refs))


@dataclass(frozen=True)
class RefColumns:
    """One array's chunk references column by column, sorted by coordinates: the bulk
    form a commit of merged forks encodes without making one object per reference.

    ``kinds[i]`` says which columns row ``i`` draws from (0 native, 1 inline, 2 virtual);
    each kind's columns hold its rows in row order. Virtual ref ``j`` points into
    ``locations[which[j]]`` and may carry ``etags[j]`` or ``modified[j]``.
    """

    coords: np.ndarray  # (n, ndim) non-negative integers
    kinds: np.ndarray  # (n,) uint8
    chunk_ids: np.ndarray = field(default_factory=lambda: _none(np.uint8, 12))  # (native, 12)
    native_offsets: np.ndarray = field(default_factory=lambda: _none("<u8"))
    native_lengths: np.ndarray = field(default_factory=lambda: _none("<u8"))
    inline_lengths: np.ndarray = field(default_factory=lambda: _none("<i8"))
    inline_data: np.ndarray = field(default_factory=lambda: _none(np.uint8))  # back to back
    locations: list[str] = field(default_factory=list)
    which: np.ndarray = field(default_factory=lambda: _none("<i8"))
    virtual_offsets: np.ndarray = field(default_factory=lambda: _none("<u8"))
    virtual_lengths: np.ndarray = field(default_factory=lambda: _none("<u8"))
    etags: list[str | None] | None = None
    modified: list[int | None] | None = None

    def __len__(self) -> int:
        return len(self.kinds)


def _none(dtype: Any, *shape: int) -> np.ndarray:
    """An empty column."""
    return np.zeros((0, *shape), dtype=dtype)


C = TypeVar("C", bound=RefColumns)


def ref_columns(
    coords: np.ndarray,
    refs: Sequence[ChunkRef],
    kind: type[C] = RefColumns,  # type: ignore[assignment]
) -> C:
    """Reference objects (rows of ``coords``) as columns (of class ``kind``), through
    C-level maps."""
    n = len(refs)
    kinds = np.fromiter(map(_KIND_OF.__getitem__, map(type, refs)), dtype=np.uint8, count=n)
    present = np.bincount(kinds, minlength=3)

    def of_kind(kind: int, cls: type) -> list[Any]:
        if present[kind] == n:
            return list(refs)
        return [r for r in refs if type(r) is cls]

    natives: list[NativeRef] = of_kind(KIND_NATIVE, NativeRef) if present[KIND_NATIVE] else []
    datas = [r.data for r in of_kind(KIND_INLINE, InlineRef)] if present[KIND_INLINE] else []
    virtuals: list[VirtualRef] = of_kind(KIND_VIRTUAL, VirtualRef) if present[KIND_VIRTUAL] else []
    locs = list(map(_LOCATION, virtuals))
    table = {loc: i for i, loc in enumerate(dict.fromkeys(locs))}
    etags = list(map(_ETAG, virtuals))
    modified = list(map(_MODIFIED, virtuals))
    return kind(
        coords=coords,
        kinds=kinds,
        chunk_ids=np.frombuffer(
            b"".join(r.chunk_id.bytes for r in natives), dtype=np.uint8
        ).reshape(-1, 12),
        native_offsets=np.fromiter(map(_OFFSET, natives), np.uint64, count=len(natives)),
        native_lengths=np.fromiter(map(_LENGTH, natives), np.uint64, count=len(natives)),
        inline_lengths=np.fromiter(map(len, datas), np.int64, count=len(datas)),
        inline_data=np.frombuffer(b"".join(datas), dtype=np.uint8),
        locations=list(table),
        which=np.fromiter(map(table.__getitem__, locs), np.int64, count=len(locs)),
        virtual_offsets=np.fromiter(map(_OFFSET, virtuals), np.uint64, count=len(virtuals)),
        virtual_lengths=np.fromiter(map(_LENGTH, virtuals), np.uint64, count=len(virtuals)),
        etags=etags if any(etags) else None,
        modified=modified if any(modified) else None,
    )


def _column_records(w: Forward, vt_native: int, cols: RefColumns) -> np.ndarray:
    coords = cols.coords.astype(np.uint32)
    n = len(cols)
    positions = np.empty(n, dtype=np.int64)
    for kind in np.flatnonzero(np.bincount(cols.kinds, minlength=3)).tolist():
        rows = np.flatnonzero(cols.kinds == kind)
        sub = coords if len(rows) == n else coords[rows]
        if kind == KIND_NATIVE:
            found = _native_block(
                w, vt_native, sub, cols.native_offsets, cols.native_lengths, cols.chunk_ids
            )
        elif kind == KIND_INLINE:
            vt_inline = w.vtable(INLINE_TABLE, INLINE_SLOTS)
            found = _inline_block(w, vt_inline, sub, cols.inline_lengths, cols.inline_data)
        elif kind == KIND_VIRTUAL:
            checked = np.zeros(len(rows), dtype=bool)
            if cols.etags is not None:
                checked |= np.fromiter(map(bool, cols.etags), dtype=bool, count=len(rows))
            if cols.modified is not None:
                checked |= np.fromiter(map(bool, cols.modified), dtype=bool, count=len(rows))
            plain = np.flatnonzero(~checked)
            found = np.empty(len(rows), dtype=np.int64)
            if len(plain):
                found[plain] = _virtual_block(
                    w,
                    sub[plain],
                    cols.locations,
                    cols.which[plain],
                    cols.virtual_offsets[plain],
                    cols.virtual_lengths[plain],
                )
            for j in np.flatnonzero(checked).tolist():  # with a checksum: one by one
                ref = VirtualRef(
                    cols.locations[int(cols.which[j])],
                    int(cols.virtual_offsets[j]),
                    int(cols.virtual_lengths[j]),
                    None if cols.etags is None else cols.etags[j],
                    None if cols.modified is None else cols.modified[j],
                )
                found[j] = _ref_record(w, tuple(sub[j].tolist()), ref)
        else:
            raise ValueError(f"unknown chunk reference kind {kind}")
        positions[rows] = found
    return positions


def encode_array_manifest_columns(
    manifest_id: ManifestId, node_id: NodeId, cols: RefColumns, spec_version: int = 1
) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """``encode_array_manifest`` for references held column by column (sorted by
    coordinates, without duplicates)."""
    payload = _manifest_payload(manifest_id, {node_id: cols}, spec_version)  # type: ignore[dict-item]
    data = compress_manifest(payload, spec_version)
    if not len(cols) or cols.coords.shape[1] == 0:
        return data, ()
    low, high = cols.coords.min(axis=0), cols.coords.max(axis=0) + 1
    return data, tuple(zip(low.tolist(), high.tolist(), strict=True))


def _manifest_payload(
    manifest_id: ManifestId,
    arrays: Mapping[NodeId, Iterable[tuple[Coords, ChunkRef]]],
    spec_version: int = 1,
) -> bytes:
    w = Forward()
    node_ids = sorted(arrays)
    root, vt_native, tables = manifest_head(w, manifest_id, node_ids, spec_version)
    for node_id, table in zip(node_ids, tables, strict=True):
        items = arrays[node_id]
        if isinstance(items, RefColumns):
            refs_vec = w.offset_vector(len(items))
            w.uoffset(table + 12, refs_vec)
            positions = _column_records(w, vt_native, items)
        else:
            if isinstance(items, _Presorted):
                coords, refs = items.coords, items.refs
            else:
                coords, refs = _sorted_refs(items)
            refs_vec = w.offset_vector(len(refs))
            w.uoffset(table + 12, refs_vec)
            positions = _records(w, vt_native, coords, refs)
        if len(positions):
            slots = refs_vec + 4 + 4 * np.arange(len(positions), dtype=np.int64)
            offsets = (positions - slots).astype("<u4")
            start = refs_vec + 4
            w.buf[start : start + 4 * len(positions)] = offsets.tobytes()
    return w.finish(root)
