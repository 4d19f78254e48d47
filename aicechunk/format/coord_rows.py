"""Many chunk coordinates as one integer array that reads as a sequence of tuples.

A commit of millions of chunks logs every coordinate; a tuple per chunk would cost
about a hundred bytes each. ``CoordRows`` keeps them as an ``(n, ndim)`` array (sorted
and unique when it says so, which lets the transaction log encoder skip its sort) and
makes tuples only for the callers that iterate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from aicechunk.format import Coords

__all__ = ["CoordRows"]

_BATCH = 65_536  # tuples made at a time while iterating


class CoordRows(Sequence[Coords]):
    """``rows`` (an ``(n, ndim)`` integer array) as a read-only sequence of tuples;
    ``sorted_unique``: the rows are in lexicographic order without repeats."""

    __slots__ = ("rows", "sorted_unique")

    def __init__(self, rows: np.ndarray, *, sorted_unique: bool = False) -> None:
        if rows.ndim != 2:
            raise ValueError(f"coordinate rows must be 2-d, got shape {rows.shape}")
        self.rows = rows
        self.sorted_unique = sorted_unique

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> Coords: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Coords]: ...
    def __getitem__(self, index: int | slice) -> Coords | Sequence[Coords]:
        if isinstance(index, slice):
            return CoordRows(self.rows[index])
        return tuple(self.rows[index].tolist())

    def __iter__(self) -> Iterator[Coords]:
        ndim = self.rows.shape[1]
        for start in range(0, len(self.rows), _BATCH):
            part = self.rows[start : start + _BATCH]
            if ndim == 0:
                yield from [()] * len(part)
            else:
                yield from zip(*part.T.tolist(), strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CoordRows):
            return bool(np.array_equal(self.rows, other.rows))
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(
                a == tuple(b) for a, b in zip(self, other, strict=True)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CoordRows({len(self)} x {self.rows.shape[1]})"
