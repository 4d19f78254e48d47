"""Range coalescing: which byte ranges of one object to read together.

Virtual datasets are often many small chunks packed in one file (a NetCDF or HDF5 file
referenced chunk by chunk). Reading each chunk with its own request costs one round trip
per chunk; reading nearby chunks with one request costs a few wasted bytes instead. This
module decides which requests to join; it does no I/O, so it is tested on its own.

The rules, for requests ``(offset, length)`` against one object:

- requests that overlap share bytes, so they are always read together (a *cluster*);
- clusters at most ``max_gap`` bytes apart are joined as long as the joined read spans
  at most ``max_span`` bytes;
- hence reads never overlap, and a read longer than ``max_span`` is a single cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_GAP", "DEFAULT_MAX_SPAN", "Part", "PlannedRead", "plan_reads"]

#: Join ranges at most this many bytes apart (64 KiB: less than a round trip costs).
DEFAULT_MAX_GAP = 1 << 16
#: Never join ranges into a read longer than this (16 MiB: bounds memory per request).
DEFAULT_MAX_SPAN = 16 << 20


@dataclass(frozen=True, slots=True)
class Part:
    """Request ``index`` (its position in the planner's input) is
    ``read_bytes[start:stop]`` of the read that holds it."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class PlannedRead:
    """One request to the object: ``length`` bytes at ``offset``, serving ``parts``."""

    offset: int
    length: int
    parts: tuple[Part, ...]

    @property
    def end(self) -> int:
        """The first byte after the read."""
        return self.offset + self.length


class _Group:
    """Requests gathered into one interval ``[start, end)``."""

    __slots__ = ("end", "members", "start")

    def __init__(self, start: int, end: int, index: int) -> None:
        self.start, self.end, self.members = start, end, [index]

    def absorb(self, other: _Group) -> None:
        self.end = max(self.end, other.end)
        self.members.extend(other.members)


def plan_reads(
    requests: Sequence[tuple[int, int]],
    *,
    max_gap: int = DEFAULT_MAX_GAP,
    max_span: int = DEFAULT_MAX_SPAN,
) -> list[PlannedRead]:
    """The reads that serve ``requests`` (``(offset, length)`` pairs of one object), in
    offset order, each saying where every request it serves lies in its bytes.

    Every request is in exactly one read. ``max_gap=0`` joins only touching or
    overlapping requests; ``max_span=0`` joins only overlapping ones.
    """
    if max_gap < 0 or max_span < 0:
        raise ValueError(f"max_gap and max_span must be >= 0, got {max_gap}, {max_span}")
    for offset, length in requests:
        if offset < 0 or length < 0:
            raise ValueError(
                f"a byte request needs offset >= 0 and length >= 0, got {offset, length}"
            )
    order = sorted(range(len(requests)), key=lambda i: requests[i])
    reads: list[_Group] = []
    cluster: _Group | None = None
    for i in order:
        offset, length = requests[i]
        if cluster is not None and offset < cluster.end:  # shares bytes: one cluster
            cluster.absorb(_Group(offset, offset + length, i))
            continue
        if cluster is not None:
            _place(reads, cluster, max_gap, max_span)
        cluster = _Group(offset, offset + length, i)
    if cluster is not None:
        _place(reads, cluster, max_gap, max_span)
    return [_planned(group, requests) for group in reads]


def _place(reads: list[_Group], cluster: _Group, max_gap: int, max_span: int) -> None:
    """Join ``cluster`` to the last read if it is near enough and the result short
    enough, else start a new read with it."""
    if reads:
        last = reads[-1]
        if cluster.start - last.end <= max_gap and cluster.end - last.start <= max_span:
            last.absorb(cluster)
            return
    reads.append(cluster)


def _planned(group: _Group, requests: Sequence[tuple[int, int]]) -> PlannedRead:
    parts = []
    for i in group.members:
        offset, length = requests[i]
        start = offset - group.start
        parts.append(Part(i, start, start + length))
    return PlannedRead(group.start, group.end - group.start, tuple(parts))
