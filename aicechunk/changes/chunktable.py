"""Chunk changes held column by column: how forks carry them, merge them and commit them.

A fork that wrote a thousand chunks sends back a few flat buffers instead of a thousand
objects. The session it merges into keeps those tables as they are; a commit combines
them with numpy (the last write of a chunk wins) and hands the columns straight to the
manifest encoder. Reference objects are made only when something asks for one chunk.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aicechunk.format import Coords
from aicechunk.format.coord_rows import CoordRows
from aicechunk.format.ids import ChunkId
from aicechunk.format.manifest import MAX_CHUNK_INDEX, ChunkRef, InlineRef, NativeRef, VirtualRef
from aicechunk.format.manifest_encode import KIND_INLINE, KIND_NATIVE, KIND_VIRTUAL, RefColumns
from aicechunk.format.manifest_encode import ref_columns as columns_of_refs

__all__ = ["ChunkTable"]


# row kinds: the manifest's reference kinds, and deletions
NATIVE, INLINE, VIRTUAL, DELETED = KIND_NATIVE, KIND_INLINE, KIND_VIRTUAL, 3
_U8 = np.dtype(np.uint8)
_I64 = np.dtype("<i8")
_U64 = np.dtype("<u8")


@dataclass(frozen=True)
class ChunkTable(RefColumns):
    """Chunk changes of one array: row ``i`` sets chunk ``coords[i]`` to a reference of
    kind ``kinds[i]`` (native, inline, virtual) or deletes it (``DELETED``, a row with no
    columns); each kind's columns hold its rows in row order. Rows later in the table win
    over earlier ones. ``resolved``: sorted by coordinates, one row per chunk."""

    resolved: bool = False

    def __post_init__(self) -> None:
        self._check()

    @property
    def ndim(self) -> int:
        """Dimensions of the coordinates."""
        return int(self.coords.shape[1])

    def __len__(self) -> int:
        return len(self.kinds)

    def _check(self) -> None:
        counts = np.bincount(self.kinds, minlength=4)
        if len(counts) > 4:
            raise ValueError(f"unknown chunk change kind {len(counts) - 1}")
        n_native, n_inline, n_virtual = (int(c) for c in counts[:3])
        problems = []
        if self.coords.ndim != 2 or len(self.coords) != len(self.kinds):
            problems.append(f"{self.coords.shape} coordinates for {len(self.kinds)} changes")
        elif self.coords.size and (self.coords.min() < 0 or self.coords.max() > MAX_CHUNK_INDEX):
            problems.append(f"chunk coordinates outside the format's 0..{MAX_CHUNK_INDEX}")
        if not (len(self.chunk_ids) == len(self.native_offsets) == len(self.native_lengths)):
            problems.append("native columns of different lengths")
        if len(self.native_offsets) != n_native:
            problems.append(f"{len(self.native_offsets)} native refs for {n_native} rows")
        if len(self.inline_lengths) != n_inline:
            problems.append(f"{len(self.inline_lengths)} inline refs for {n_inline} rows")
        if int(self.inline_lengths.sum()) != len(self.inline_data):
            problems.append("inline chunk lengths do not add up to the inline bytes")
        virtual = (self.which, self.virtual_offsets, self.virtual_lengths)
        if any(len(col) != n_virtual for col in virtual):
            problems.append(f"virtual columns do not hold {n_virtual} refs")
        elif n_virtual and not 0 <= int(self.which.min()) <= int(self.which.max()) < len(
            self.locations
        ):
            problems.append("virtual ref points past the location table")
        for extra in (self.etags, self.modified):
            if extra is not None and len(extra) != n_virtual:
                problems.append(f"virtual checksums do not hold {n_virtual} refs")
        if problems:
            raise ValueError("inconsistent chunk table: " + "; ".join(problems))

    def first_off_grid(self, grid: tuple[int, ...]) -> int | None:
        """The first row whose coordinates are not on a chunk grid of ``grid`` chunks per
        dimension (or of another rank), ``None`` if every row is on it."""
        if not len(self):
            return None
        if self.ndim != len(grid):
            return 0
        outside = (self.coords < 0) | (self.coords >= np.asarray(grid, dtype=np.int64))
        rows = np.flatnonzero(outside.any(axis=1))
        return int(rows[0]) if len(rows) else None

    # -- from and to references -------------------------------------------------------

    @classmethod
    def from_refs(cls, refs: Mapping[Coords, ChunkRef | None]) -> ChunkTable | None:
        """A table of reference objects; ``None`` if the coordinates mix dimensions."""
        ndims = set(map(len, refs))
        if len(ndims) > 1:
            return None
        ndim = ndims.pop() if ndims else 0
        n = len(refs)
        flat = itertools.chain.from_iterable(refs)
        coords = np.fromiter(flat, dtype=_I64, count=n * ndim).reshape(n, ndim)
        values = list(refs.values())
        live = np.fromiter(map(operator.is_not, values, itertools.repeat(None)), bool, count=n)
        rows = np.flatnonzero(live)
        present: list[ChunkRef] = [v for v in values if v is not None]
        table = columns_of_refs(coords if len(rows) == n else coords[rows], present, cls)
        kinds = np.full(n, DELETED, dtype=_U8)
        kinds[rows] = table.kinds
        return dataclasses.replace(table, coords=coords, kinds=kinds)

    def to_refs(self) -> dict[Coords, ChunkRef | None]:
        """The changes as reference objects (rows later in the table win)."""
        n = len(self)
        values = np.empty(n, dtype=object)
        kinds = self.kinds
        if len(self.native_offsets):
            ids = self.chunk_ids.tobytes()
            chunk_ids = map(
                ChunkId,
                map(
                    ids.__getitem__,
                    map(slice, range(0, len(ids), 12), range(12, len(ids) + 12, 12)),
                ),
            )
            values[kinds == NATIVE] = list(
                map(
                    NativeRef,
                    chunk_ids,
                    self.native_offsets.tolist(),
                    self.native_lengths.tolist(),
                )
            )
        if len(self.inline_lengths):
            blob = self.inline_data.tobytes()
            ends = np.cumsum(self.inline_lengths).tolist()
            cuts = map(slice, [0, *ends[:-1]], ends)
            values[kinds == INLINE] = list(map(InlineRef, map(blob.__getitem__, cuts)))
        if len(self.which):
            k = len(self.which)
            values[kinds == VIRTUAL] = list(
                map(
                    VirtualRef,
                    map(self.locations.__getitem__, self.which.tolist()),
                    self.virtual_offsets.tolist(),
                    self.virtual_lengths.tolist(),
                    self.etags if self.etags is not None else itertools.repeat(None, k),
                    self.modified if self.modified is not None else itertools.repeat(None, k),
                )
            )
        return dict(zip(self.coord_tuples(), values.tolist(), strict=True))

    def coord_rows(self) -> CoordRows:
        """The coordinates as a sequence of tuples made on demand (sorted and unique when
        the table is resolved): how a commit logs millions of chunks."""
        return CoordRows(self.coords, sorted_unique=self.resolved and self.ndim > 0)

    def coord_tuples(self) -> list[Coords]:
        """The coordinates as tuples, in row order."""
        if self.ndim == 0:
            return [()] * len(self)
        return list(zip(*self.coords.T.tolist(), strict=True))

    # -- combining ----------------------------------------------------------------------

    @classmethod
    def combine(cls, tables: Sequence[ChunkTable]) -> ChunkTable:
        """One resolved table: sorted by coordinates, the last row of each chunk kept."""
        if len(tables) == 1 and tables[0].resolved:
            return tables[0]
        nonempty = [t for t in tables if len(t)]
        if not nonempty:
            ndim = tables[0].ndim if tables else 0
            return cls(np.zeros((0, ndim), _I64), np.zeros(0, _U8), resolved=True)
        tables = nonempty
        ndims = {t.ndim for t in tables}
        if len(ndims) != 1:
            raise ValueError(f"chunk tables of different dimensions {sorted(ndims)}")
        ndim = ndims.pop()
        coords = np.concatenate([t.coords for t in tables])
        kinds = np.concatenate([t.kinds for t in tables])
        columns = _concatenated(tables)
        if ndim and _increasing(coords):
            # already in order without repeats (batches set one after another): as is
            return cls(coords, kinds, resolved=True, **columns)
        # each row's index into its kind's (concatenated) columns
        index = np.empty(len(kinds), dtype=np.int64)
        for kind in (NATIVE, INLINE, VIRTUAL):
            rows = np.flatnonzero(kinds == kind)
            index[rows] = np.arange(len(rows))
        if ndim == 0:
            keep = np.arange(len(kinds))[-1:]
        else:
            # sort by coordinates, ties by row (stable), and keep each run's last row
            order = np.lexsort(coords.T[::-1])
            ordered = coords[order]
            last = np.ones(len(order), dtype=bool)
            last[:-1] = (ordered[1:] != ordered[:-1]).any(axis=1)
            keep = order[last]
        kept_kinds = kinds[keep]

        def pick(kind: int) -> np.ndarray:
            rows: np.ndarray = index[keep[kept_kinds == kind]]
            return rows

        native = pick(NATIVE)
        for name in ("chunk_ids", "native_offsets", "native_lengths"):
            if name in columns:
                columns[name] = columns[name][native]
        inline = pick(INLINE)
        if "inline_lengths" in columns:
            lengths, data = columns["inline_lengths"], columns["inline_data"]
            starts = np.zeros(len(lengths), dtype=np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
            chosen = lengths[inline]
            out_starts = np.zeros(len(chosen), dtype=np.int64)
            np.cumsum(chosen[:-1], out=out_starts[1:])
            gather = np.repeat(starts[inline] - out_starts, chosen) + np.arange(int(chosen.sum()))
            columns["inline_lengths"] = chosen
            columns["inline_data"] = data[gather]
        virtual = pick(VIRTUAL)
        for name in ("which", "virtual_offsets", "virtual_lengths"):
            if name in columns:
                columns[name] = columns[name][virtual]
        for name in ("etags", "modified"):
            if columns.get(name) is not None:
                columns[name] = list(map(columns[name].__getitem__, virtual.tolist()))
        return cls(coords[keep], kept_kinds, resolved=True, **columns)

    # -- lookups (a resolved table) -----------------------------------------------------

    def row_of(self, coords: Coords) -> int | None:
        """The row of chunk ``coords`` in this resolved table (a binary search of each
        dimension's column in turn), ``None`` if no row changes it."""
        assert self.resolved
        n = len(self)
        if len(coords) != self.ndim or not n:
            return None
        if self.ndim == 0:
            return n - 1
        columns = self._lookup_cache()[0]
        lo, hi = 0, n
        for column, c in zip(columns, coords, strict=True):
            part = column[lo:hi]
            lo, hi = lo + int(part.searchsorted(c, "left")), lo + int(part.searchsorted(c, "right"))
            if lo >= hi:
                return None
        return lo

    def ref_at(self, row: int) -> ChunkRef | None:
        """Row ``row``'s reference (``None``: the row deletes the chunk)."""
        _, rank, inline_starts = self._lookup_cache()
        kind, k = int(self.kinds[row]), int(rank[row])
        if kind == NATIVE:
            return NativeRef(
                ChunkId(self.chunk_ids[k].tobytes()),
                int(self.native_offsets[k]),
                int(self.native_lengths[k]),
            )
        if kind == INLINE:
            start = int(inline_starts[k])
            return InlineRef(
                self.inline_data[start : start + int(self.inline_lengths[k])].tobytes()
            )
        if kind == VIRTUAL:
            return VirtualRef(
                self.locations[int(self.which[k])],
                int(self.virtual_offsets[k]),
                int(self.virtual_lengths[k]),
                None if self.etags is None else self.etags[k],
                None if self.modified is None else self.modified[k],
            )
        return None

    def _lookup_cache(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Each dimension's coordinates as a contiguous column, each row's index into
        its kind's columns, and where each inline chunk starts (made on first lookup)."""
        cache: tuple[list[np.ndarray], np.ndarray, np.ndarray] | None
        cache = self.__dict__.get("_lookups")
        if cache is None:
            columns = [np.ascontiguousarray(self.coords[:, d]) for d in range(self.ndim)]
            rank = np.zeros(len(self), dtype=_I64)
            for kind in (NATIVE, INLINE, VIRTUAL):
                rows = np.flatnonzero(self.kinds == kind)
                rank[rows] = np.arange(len(rows))
            starts = np.zeros(len(self.inline_lengths), dtype=_I64)
            np.cumsum(self.inline_lengths[:-1], out=starts[1:])
            cache = (columns, rank, starts)
            object.__setattr__(self, "_lookups", cache)  # frozen: a cache, not a field
        return cache

    def ref_columns(self) -> RefColumns:
        """The references (deletions dropped) for the manifest encoder; needs a resolved
        table."""
        assert self.resolved
        live = self.kinds != DELETED
        if live.all():
            return self
        return dataclasses.replace(self, coords=self.coords[live], kinds=self.kinds[live])

    # -- plain data ---------------------------------------------------------------------

    def to_plain(self) -> dict[str, Any]:
        """Plain data for msgpack: flat little-endian buffers and short lists."""
        out: dict[str, Any] = {
            "d": self.ndim,
            "c": self.coords.astype(_I64).tobytes(),
            "k": self.kinds.astype(_U8).tobytes(),
        }
        if len(self.native_offsets):
            out["N"] = [
                self.chunk_ids.tobytes(),
                self.native_offsets.astype(_U64).tobytes(),
                self.native_lengths.astype(_U64).tobytes(),
            ]
        if len(self.inline_lengths):
            out["I"] = [self.inline_lengths.astype(_U64).tobytes(), self.inline_data.tobytes()]
        if len(self.which):
            out["V"] = [
                self.locations,
                self.which.astype("<u4").tobytes(),
                self.virtual_offsets.astype(_U64).tobytes(),
                self.virtual_lengths.astype(_U64).tobytes(),
                self.etags,
                self.modified,
            ]
        return out

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> ChunkTable:
        """Rebuild from ``to_plain``; ``ValueError`` if the columns disagree."""
        ndim = int(data["d"])
        kinds = np.frombuffer(data["k"], dtype=_U8)
        flat = np.frombuffer(data["c"], dtype=_I64)
        if ndim < 0 or len(flat) != len(kinds) * ndim:
            raise ValueError(f"{len(flat)} coordinates for {len(kinds)} changes of {ndim} dims")
        columns: dict[str, Any] = {}
        if "N" in data:
            ids, offsets, lengths = data["N"]
            if len(ids) % 12:
                raise ValueError("chunk ids column is not a multiple of 12 bytes")
            columns["chunk_ids"] = np.frombuffer(ids, dtype=_U8).reshape(-1, 12)
            columns["native_offsets"] = np.frombuffer(offsets, dtype=_U64)
            columns["native_lengths"] = np.frombuffer(lengths, dtype=_U64)
        if "I" in data:
            lengths, blob = data["I"]
            columns["inline_lengths"] = np.frombuffer(lengths, dtype=_U64).astype(_I64)
            columns["inline_data"] = np.frombuffer(blob, dtype=_U8)
        if "V" in data:
            locations, which, offsets, lengths, etags, modified = data["V"]
            if not all(isinstance(loc, str) for loc in locations):
                raise ValueError("virtual locations must be strings")
            columns["locations"] = list(locations)
            columns["which"] = np.frombuffer(which, dtype="<u4").astype(_I64)
            columns["virtual_offsets"] = np.frombuffer(offsets, dtype=_U64)
            columns["virtual_lengths"] = np.frombuffer(lengths, dtype=_U64)
            columns["etags"] = None if etags is None else list(etags)
            columns["modified"] = None if modified is None else list(modified)
        return cls(flat.reshape(len(kinds), ndim), kinds, **columns)


def _increasing(coords: np.ndarray) -> bool:
    """Whether the rows are in strictly increasing lexicographic order."""
    if len(coords) < 2:
        return True
    before, after = coords[:-1], coords[1:]
    less = np.zeros(len(before), dtype=bool)
    equal = np.ones(len(before), dtype=bool)
    for d in range(coords.shape[1]):
        less |= equal & (before[:, d] < after[:, d])
        equal &= before[:, d] == after[:, d]
    return bool(less.all())


def _concatenated(tables: Sequence[ChunkTable]) -> dict[str, Any]:
    """Every kind's columns of ``tables`` one after another (locations merged into one
    table, checksums padded with ``None``), for the kinds some table has."""
    columns: dict[str, Any] = {}
    if any(len(t.native_offsets) for t in tables):
        for name in ("chunk_ids", "native_offsets", "native_lengths"):
            columns[name] = np.concatenate([getattr(t, name) for t in tables])
    if any(len(t.inline_lengths) for t in tables):
        columns["inline_lengths"] = np.concatenate([t.inline_lengths for t in tables])
        columns["inline_data"] = np.concatenate([t.inline_data for t in tables])
    if any(len(t.which) for t in tables):
        table: dict[str, int] = {}
        remapped = []
        for t in tables:
            ids = np.array([table.setdefault(loc, len(table)) for loc in t.locations], np.int64)
            remapped.append(ids[t.which] if len(t.which) else t.which.astype(np.int64))
        columns["locations"] = list(table)
        columns["which"] = np.concatenate(remapped)
        for name in ("virtual_offsets", "virtual_lengths"):
            columns[name] = np.concatenate([getattr(t, name) for t in tables])
        for name in ("etags", "modified"):
            if any(getattr(t, name) is not None for t in tables):
                full: list[Any] = []
                for t in tables:
                    got = getattr(t, name)
                    full.extend([None] * len(t.which) if got is None else got)
                columns[name] = full
    return columns
