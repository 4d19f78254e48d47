"""One array's manifest written from columns in slices, straight into the compressor.

The file is the one ``manifest_encode.encode_array_manifest_columns`` writes, byte for
byte (the tests compare them), but laid out by ``segmented.Segmented``: the references
vector and each kind's block of records are holes filled a slice of rows at a time
while the compressor consumes them. Memory beyond the columns themselves stays about
one slice, however many references the array has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from aicechunk.format.header import ZSTD_LEVEL, FileType
from aicechunk.format.ids import ManifestId, NodeId
from aicechunk.format.manifest import VirtualRef
from aicechunk.format.manifest_encode import (
    KIND_INLINE,
    KIND_NATIVE,
    KIND_VIRTUAL,
    RefColumns,
    _first_use_order,
    _ref_record,
)
from aicechunk.format.manifest_small import INLINE_SLOTS, INLINE_TABLE, manifest_head
from aicechunk.format.segmented import Segmented, compress_parts

__all__ = ["encode_array_manifest_stream", "manifest_parts"]

#: rows laid out at a time
SLICE = 1 << 16
# large manifests are compressed on two threads, at zstd's default level: level 5 (what
# manifest_encode uses) makes them ~7% smaller but doubles the CPU a huge commit spends
_LARGE = 4 << 20

Positions = Callable[[np.ndarray], np.ndarray]  # a kind's ranks -> record positions
Parts = Iterator[bytes | bytearray | memoryview]


def _native_dtype(ndim: int) -> tuple[np.dtype, int]:
    rec = (40 + 4 * ndim + 7) // 8 * 8
    dtype = np.dtype(
        {
            "names": ["soff", "idx", "off", "len", "cid", "vlen", "coords"],
            "formats": ["<i4", "<u4", "<u8", "<u8", ("u1", 12), "<u4", ("<u4", (ndim,))],
            "offsets": [0, 4, 8, 16, 24, 36, 40],
            "itemsize": rec,
        }
    )
    return dtype, rec


def _virtual_dtype(ndim: int) -> tuple[np.dtype, int]:
    rec = (32 + 4 * ndim + 7) // 8 * 8
    dtype = np.dtype(
        {
            "names": ["soff", "idx", "off", "len", "loc", "vlen", "coords"],
            "formats": ["<i4", "<u4", "<u8", "<u8", "<u4", "<u4", ("<u4", (ndim,))],
            "offsets": [0, 4, 8, 16, 24, 28, 32],
            "itemsize": rec,
        }
    )
    return dtype, rec


class _Layout:
    """One array's columns laid into ``w``: a hole per kind's records, and each kind's
    record positions by rank (row order within the kind)."""

    def __init__(self, w: Segmented, cols: RefColumns, vt_native: int) -> None:
        self.w = w
        self.cols = cols
        self.ndim = cols.coords.shape[1]
        counts = np.bincount(cols.kinds, minlength=3)
        if len(counts) > 3:
            raise ValueError(f"unknown chunk reference kind {len(counts) - 1}")
        self.counts = counts.tolist()
        self.kinds = np.flatnonzero(counts).tolist()
        self.single = len(self.kinds) == 1
        self.positions: dict[int, Positions] = {}
        for kind in self.kinds:
            if kind == KIND_NATIVE:
                self._native(vt_native)
            elif kind == KIND_INLINE:
                self._inline()
            else:
                self._virtual()

    def rows(self, kind: int) -> np.ndarray | None:
        """The rows of one kind (``None``: every row is of that kind)."""
        return None if self.single else np.flatnonzero(self.cols.kinds == kind)

    def coords(self, rows: np.ndarray | None, a: int, b: int) -> np.ndarray:
        """Coordinates of a kind's rows ``a:b`` (by rank) as uint32."""
        sub = self.cols.coords[a:b] if rows is None else self.cols.coords[rows[a:b]]
        return sub.astype(np.uint32)

    # -- kinds ---------------------------------------------------------------------------

    def _native(self, vt: int) -> None:
        cols, k = self.cols, self.counts[KIND_NATIVE]
        rows = self.rows(KIND_NATIVE)
        dtype, rec = _native_dtype(self.ndim)
        base = 0

        def fill() -> Parts:
            for a in range(0, k, SLICE):
                b = min(k, a + SLICE)
                out = np.zeros(b - a, dtype=dtype)
                out["soff"] = base + np.arange(a, b, dtype=np.int64) * rec - vt
                out["idx"] = 32
                out["off"] = cols.native_offsets[a:b]
                out["len"] = cols.native_lengths[a:b]
                out["cid"] = cols.chunk_ids[a:b].reshape(b - a, 12)
                out["vlen"] = self.ndim
                if self.ndim:
                    out["coords"] = self.coords(rows, a, b)
                yield memoryview(out.view(np.uint8))

        base = self.w.hole(k * rec, fill, alignment=8)
        self.positions[KIND_NATIVE] = lambda ranks: base + ranks * rec

    def _inline(self) -> None:
        cols, k, ndim = self.cols, self.counts[KIND_INLINE], self.ndim
        rows = self.rows(KIND_INLINE)
        vt = self.w.vtable(INLINE_TABLE, INLINE_SLOTS)
        head = 5 + ndim  # u32 words: soffset, index offset, data offset, ndim, coords, length
        lengths = cols.inline_lengths.astype(np.int64)
        sizes = 4 * head + (lengths + 3) // 4 * 4
        starts = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        sources = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(lengths, out=sources[1:])
        base = 0

        def fill() -> Parts:
            for a in range(0, k, SLICE):
                b = min(k, a + SLICE)
                local = starts[a:b] - starts[a]
                out = np.zeros(int(starts[b] - starts[a]), dtype=np.uint8)
                header = np.empty((b - a, head), dtype="<u4")
                header[:, 0] = (base + starts[a:b] - vt).astype("<i4").view("<u4")
                header[:, 1] = 8  # the index vector follows the 12-byte table
                header[:, 2] = 4 * head - 12  # the byte vector follows the index vector
                header[:, 3] = ndim
                if ndim:
                    header[:, 4 : 4 + ndim] = self.coords(rows, a, b)
                header[:, head - 1] = lengths[a:b]
                out.view("<u4")[(local // 4)[:, None] + np.arange(head)] = header
                data = cols.inline_data[sources[a] : sources[b]]
                shift = np.repeat(local + 4 * head - (sources[a:b] - sources[a]), lengths[a:b])
                out[np.arange(len(data)) + shift] = data
                yield memoryview(out.view(np.uint8))

        base = self.w.hole(int(starts[k]), fill, alignment=4)
        self.positions[KIND_INLINE] = lambda ranks: base + starts[ranks]

    def _virtual(self) -> None:
        cols, k, w = self.cols, self.counts[KIND_VIRTUAL], self.w
        rows = self.rows(KIND_VIRTUAL)
        checked = np.zeros(k, dtype=bool)
        if cols.etags is not None:
            checked |= np.fromiter(map(bool, cols.etags), dtype=bool, count=k)
        if cols.modified is not None:
            checked |= np.fromiter(map(bool, cols.modified), dtype=bool, count=k)
        plain: np.ndarray | None = None if not checked.any() else np.flatnonzero(~checked)
        n_plain = k if plain is None else len(plain)
        dtype, rec = _virtual_dtype(self.ndim)
        base = 0
        which = cols.which if plain is None else cols.which[plain]
        string_pos = np.zeros(len(cols.locations), dtype=np.int64)

        def fill() -> Parts:
            offsets, lengths = cols.virtual_offsets, cols.virtual_lengths
            for a in range(0, n_plain, SLICE):
                b = min(n_plain, a + SLICE)
                picked = None if plain is None else plain[a:b]
                positions = base + np.arange(a, b, dtype=np.int64) * rec
                out = np.zeros(b - a, dtype=dtype)
                out["soff"] = positions - vt
                out["idx"] = 24
                out["off"] = offsets[a:b] if picked is None else offsets[picked]
                out["len"] = lengths[a:b] if picked is None else lengths[picked]
                out["loc"] = (string_pos[which[a:b]] - (positions + 24)).astype("<u4")
                out["vlen"] = self.ndim
                if self.ndim and picked is None:
                    out["coords"] = self.coords(rows, a, b)
                elif self.ndim:
                    at = picked if rows is None else rows[picked]
                    out["coords"] = self.cols.coords[at].astype(np.uint32)
                yield memoryview(out.view(np.uint8))

        vt = 0
        if n_plain:
            vt = w.vtable(28, (4, 0, 8, 16, 0, 24))
            base = w.hole(n_plain * rec, fill, alignment=8)
            for i in _first_use_order(which, len(cols.locations)).tolist():
                string_pos[i] = w.string(cols.locations[i])
        if plain is None:
            self.positions[KIND_VIRTUAL] = lambda ranks: base + ranks * rec
            return
        found = np.empty(k, dtype=np.int64)
        found[plain] = base + np.arange(n_plain, dtype=np.int64) * rec
        for j in np.flatnonzero(checked).tolist():  # with a checksum: one by one
            row = j if rows is None else int(rows[j])
            ref = VirtualRef(
                cols.locations[int(cols.which[j])],
                int(cols.virtual_offsets[j]),
                int(cols.virtual_lengths[j]),
                None if cols.etags is None else cols.etags[j],
                None if cols.modified is None else cols.modified[j],
            )
            found[j] = _ref_record(w, tuple(cols.coords[row].tolist()), ref)
        self.positions[KIND_VIRTUAL] = lambda ranks: found[ranks]

    # -- the references vector -------------------------------------------------------------

    def refs_fill(self, vec: int) -> Parts:
        """The offsets of the references vector at ``vec``, a slice of rows at a time."""
        n = len(self.cols)
        seen = [0, 0, 0]
        for a in range(0, n, SLICE):
            b = min(n, a + SLICE)
            positions = np.empty(b - a, dtype=np.int64)
            if self.single:
                positions[:] = self.positions[self.kinds[0]](np.arange(a, b, dtype=np.int64))
            else:
                kinds = self.cols.kinds[a:b]
                for kind in self.kinds:
                    mask = kinds == kind
                    count = int(np.count_nonzero(mask))
                    ranks = seen[kind] + np.arange(count, dtype=np.int64)
                    positions[mask] = self.positions[kind](ranks)
                    seen[kind] += count
            slots = vec + 4 + 4 * np.arange(a, b, dtype=np.int64)
            yield (positions - slots).astype("<u4").tobytes()


def manifest_parts(
    manifest_id: ManifestId, node_id: NodeId, cols: RefColumns, spec_version: int = 1
) -> tuple[int, Parts]:
    """The uncompressed manifest file of one array's columns (sorted by coordinates,
    without duplicates): its size, and its bytes in parts."""
    w = Segmented()
    root, vt_native, tables = manifest_head(w, manifest_id, [node_id], spec_version)
    table = next(tables)
    refs_vec = w.offset_vector(0)  # its length, then the offsets as a hole
    w.put(refs_vec, "<I", len(cols))
    w.uoffset(table + 12, refs_vec)
    layout: list[_Layout] = []
    w.hole(4 * len(cols), lambda: layout[0].refs_fill(refs_vec))
    layout.append(_Layout(w, cols, vt_native))
    return w.finish_parts(root)


def encode_array_manifest_stream(
    manifest_id: ManifestId, node_id: NodeId, cols: RefColumns, spec_version: int = 1
) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """``encode_array_manifest_columns``, streamed: the same file, compressed as it is
    laid out, and the chunk index range it covers along each dimension."""
    size, parts = manifest_parts(manifest_id, node_id, cols, spec_version)
    large = size > _LARGE
    data = compress_parts(
        FileType.MANIFEST,
        size,
        parts,
        spec_version,
        level=ZSTD_LEVEL,
        threads=2 if large else 0,
    )
    if not len(cols) or cols.coords.shape[1] == 0:
        return data, ()
    low, high = cols.coords.min(axis=0), cols.coords.max(axis=0) + 1
    return data, tuple(zip(low.tolist(), high.tolist(), strict=True))
