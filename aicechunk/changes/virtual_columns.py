"""Many virtual references of one array given as columns, checked and held as one
``ChunkTable`` (no object per reference).

This is the engine of the store's bulk calls (``set_virtual_refs`` and
``set_virtual_refs_columns``): every input is checked with numpy, and each problem is a
typed error naming the array and the first bad row, so a bad batch changes nothing.
Locations are deduplicated into a short table plus one integer index per reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from aicechunk.changes.chunktable import VIRTUAL, ChunkTable
from aicechunk.changes.validate import _virtual_problem
from aicechunk.errors import ChunkIndexError, InvalidInputError, UnrepresentableValueError
from aicechunk.format.manifest import MAX_CHUNK_INDEX

__all__ = [
    "Checksum",
    "Spec",
    "integer_column",
    "last_modified_seconds",
    "spec_table",
    "virtual_table",
]

#: A virtual reference's optional checksum: an ETag, or the object's last-modified time.
Checksum = str | datetime | None

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def last_modified_seconds(when: datetime) -> int:
    """A last-modified checksum as the format stores it: whole seconds since the epoch in
    32 bits, wrapped as Icechunk wraps them (so far-future and pre-1970 dates compare
    exactly as icechunk compares them)."""
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    return int((aware - _EPOCH).total_seconds() // 1) % 2**32


def integer_column(path: str, name: str, value: Any, n: int) -> np.ndarray:
    """``value`` as ``n`` non-negative integers that fit uint64 (a scalar is repeated);
    ``InvalidInputError`` for another dtype or shape, ``UnrepresentableValueError``
    naming the first negative row."""
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "iu":
        raise InvalidInputError(
            f"virtual refs of array {path!r}: {name} must be integers, got dtype {arr.dtype}"
        )
    if arr.ndim == 0:
        arr = np.full(n, arr, dtype=arr.dtype)
    if arr.shape != (n,):
        raise InvalidInputError(
            f"virtual refs of array {path!r}: {name} has shape {arr.shape}, expected ({n},)"
        )
    if arr.dtype.kind == "i" and n:
        bad = np.flatnonzero(arr < 0)
        if len(bad):
            row = int(bad[0])
            raise UnrepresentableValueError(
                f"virtual ref row {row} of array {path!r}",
                f"{name} must be in 0..2**64-1, got {int(arr[row])}",
            )
    return arr.astype(np.uint64, copy=False)


def _coords(path: str, coords: Any, grid: tuple[int, ...]) -> np.ndarray:
    """Chunk coordinates as an ``(n, ndim)`` int64 array on the array's grid."""
    arr = np.asarray(coords)
    ndim = len(grid)
    if arr.dtype == object or (arr.dtype.kind not in "iu" and arr.size):
        raise InvalidInputError(
            f"virtual refs of array {path!r}: coords must be integers, got dtype {arr.dtype}"
        )
    if arr.ndim == 1 and ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != ndim:
        raise InvalidInputError(
            f"virtual refs of array {path!r}: coords has shape {arr.shape}, expected (n, {ndim})"
        )
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > MAX_CHUNK_INDEX:
        row = int(np.flatnonzero((arr > MAX_CHUNK_INDEX).any(axis=1))[0])
        raise ChunkIndexError(path, tuple(arr[row].tolist()), grid, row=row)
    out = arr.astype(np.int64, copy=False)
    if out.size:
        outside = (out < 0) | (out >= np.asarray(grid, dtype=np.int64))
        if outside.any():
            row = int(np.flatnonzero(outside.any(axis=1))[0])
            raise ChunkIndexError(path, tuple(out[row].tolist()), grid, row=row)
    return out


def _locations(
    path: str, locations: str | Sequence[str], index: Any, n: int
) -> tuple[list[str], np.ndarray]:
    """A table of distinct locations and each row's index into it."""
    if isinstance(locations, str):
        if index is not None:
            raise InvalidInputError(
                f"virtual refs of array {path!r}: location_index needs a sequence of locations"
            )
        table, which = [locations], np.zeros(n, dtype=np.int64)
    elif index is None:
        listed = list(locations)
        if len(listed) != n:
            raise InvalidInputError(
                f"virtual refs of array {path!r}: {len(listed)} locations for {n} refs"
            )
        ids: dict[str, int] = {}
        which = np.fromiter(
            (ids.setdefault(loc, len(ids)) for loc in listed), dtype=np.int64, count=n
        )
        table = list(ids)
    else:
        table = list(locations)
        given = integer_column(path, "location_index", index, n)
        if n and int(np.max(given)) >= len(table):
            row = int(np.flatnonzero(given >= len(table))[0])
            raise InvalidInputError(
                f"virtual ref row {row} of array {path!r}: location_index {int(given[row])} "
                f"is past the {len(table)} locations given"
            )
        which = given.astype(np.int64)
    for i, loc in enumerate(table):
        problem = _virtual_problem(loc, None, None)
        if problem is not None:
            rows = np.flatnonzero(which == i)
            if not len(rows):
                continue  # a table entry no row uses is never written
            raise UnrepresentableValueError(
                f"virtual ref row {int(rows[0])} of array {path!r}", problem
            )
    return table, which


def _checksums(
    path: str, checksums: Sequence[Checksum] | None, n: int
) -> tuple[list[str | None] | None, list[int | None] | None]:
    """ETags and last-modified seconds columns (``None`` when no row has one)."""
    if checksums is None:
        return None, None
    listed = list(checksums)
    if len(listed) != n:
        raise InvalidInputError(
            f"virtual refs of array {path!r}: {len(listed)} checksums for {n} refs"
        )
    etags: list[str | None] = [None] * n
    modified: list[int | None] = [None] * n
    for row, value in enumerate(listed):
        if isinstance(value, datetime):
            modified[row] = last_modified_seconds(value)
        elif value is not None:
            problem = _virtual_problem("x", value, None)
            if problem is not None:
                raise UnrepresentableValueError(f"virtual ref row {row} of array {path!r}", problem)
            etags[row] = value
    return (etags if any(e is not None for e in etags) else None), (
        modified if any(m is not None for m in modified) else None
    )


def virtual_table(
    path: str,
    grid: tuple[int, ...],
    coords: Any,
    locations: str | Sequence[str],
    offsets: Any,
    lengths: Any,
    *,
    location_index: Any = None,
    checksums: Sequence[Checksum] | None = None,
) -> ChunkTable:
    """A table setting chunk ``coords[i]`` of the array at ``path`` (``grid`` chunks per
    dimension) to ``lengths[i]`` bytes at ``offsets[i]`` of its location.

    Locations: one string for every row; or one string per row; or, with
    ``location_index``, a table of strings and each row's index into it. Checksums: one
    per row (an ETag string, a last-modified ``datetime``, or ``None``). Rows later in
    the table win over earlier ones for the same chunk.
    """
    coord_array = _coords(path, coords, grid)
    n = len(coord_array)
    offsets_u = integer_column(path, "offsets", offsets, n)
    lengths_u = integer_column(path, "lengths", lengths, n)
    table, which = _locations(path, locations, location_index, n)
    etags, modified = _checksums(path, checksums, n)
    used = np.unique(which) if n else which
    if len(used) < len(table):  # keep only the locations some row points into
        remap = np.full(len(table), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        table = [table[i] for i in used.tolist()]
        which = remap[which]
    return ChunkTable(
        coord_array,
        np.full(n, VIRTUAL, dtype=np.uint8),
        locations=table,
        which=which,
        virtual_offsets=offsets_u,
        virtual_lengths=lengths_u,
        etags=etags,
        modified=modified,
    )


class Spec(Protocol):
    """One virtual reference as ``VirtualChunkSpec`` gives it."""

    @property
    def index(self) -> Sequence[int]: ...
    @property
    def location(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def etag_checksum(self) -> str | None: ...
    @property
    def last_updated_at_checksum(self) -> datetime | None: ...


def _column(path: str, name: str, values: list[Any]) -> np.ndarray:
    """Python integers as a column (int64, else uint64); a value neither holds is refused
    with its row."""
    for dtype in (np.int64, np.uint64):
        try:
            return np.array(values, dtype=dtype)
        except (OverflowError, TypeError, ValueError):
            continue
    for row, value in enumerate(values):
        if not (isinstance(value, int | np.integer) and 0 <= value < 2**64):
            raise UnrepresentableValueError(
                f"virtual ref row {row} of array {path!r}",
                f"{name} must be an integer in 0..2**64-1, got {value!r}",
            )
    raise AssertionError("unreachable")  # pragma: no cover


def spec_table(path: str, grid: tuple[int, ...], specs: Sequence[Spec]) -> ChunkTable:
    """``virtual_table`` of chunk specs (``VirtualChunkSpec``), checked alike."""
    ndim = len(grid)
    indices = [tuple(s.index) for s in specs]
    for row, index in enumerate(indices):
        if len(index) != ndim or not all(
            isinstance(i, int | np.integer) and 0 <= i <= MAX_CHUNK_INDEX for i in index
        ):
            raise ChunkIndexError(path, index, grid, row=row)
    coords = _column(path, "a chunk index", indices).reshape(len(specs), ndim)
    checksums: list[Checksum] = [s.etag_checksum or s.last_updated_at_checksum for s in specs]
    return virtual_table(
        path,
        grid,
        coords,
        [s.location for s in specs],
        _column(path, "offset", [s.offset for s in specs]),
        _column(path, "length", [s.length for s in specs]),
        checksums=checksums if any(c is not None for c in checksums) else None,
    )
