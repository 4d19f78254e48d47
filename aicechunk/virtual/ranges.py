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
from typing import NamedTuple

__all__ = ["DEFAULT_MAX_GAP", "DEFAULT_MAX_SPAN", "Part", "PlannedRead", "plan_reads"]

#: Join ranges at most this many bytes apart (64 KiB: less than a round trip costs).
DEFAULT_MAX_GAP = 1 << 16
#: Never join ranges into a read longer than this (16 MiB: bounds memory per request).
DEFAULT_MAX_SPAN = 16 << 20


#: ``(index, start, stop)``: request ``index`` (its position in the planner's input) is
#: ``read_bytes[start:stop]`` of the read that holds it. (A plain tuple: a plan makes one
#: per chunk read, and a named tuple costs five times as much to make.)
Part = tuple[int, int, int]


class PlannedRead(NamedTuple):
    """One request to the object: ``length`` bytes at ``offset``, serving ``parts``."""

    offset: int
    length: int
    parts: tuple[Part, ...]

    @property
    def end(self) -> int:
        """The first byte after the read."""
        return self.offset + self.length


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
    # One pass in offset order, on local variables (this runs for every batch of chunk
    # reads): a cluster grows while requests overlap it; a closed cluster joins the read
    # before it when near and short enough, else it starts the next read.
    reads: list[tuple[int, int, list[int]]] = []
    read: list[int] = []
    read_start = read_end = 0
    cluster: list[int] = []
    cluster_start = cluster_end = -1
    for i in [*sorted(range(len(requests)), key=requests.__getitem__), -1]:
        if i >= 0:
            offset, length = requests[i]
            if offset < 0 or length < 0:
                raise ValueError(
                    f"a byte request needs offset >= 0 and length >= 0, got {(offset, length)}"
                )
            if offset < cluster_end:  # shares bytes with the cluster: read together
                cluster.append(i)
                cluster_end = max(cluster_end, offset + length)
                continue
        if cluster:  # close the cluster (always, at the end: i == -1)
            if (
                read
                and cluster_start - read_end <= max_gap
                and cluster_end - read_start <= max_span
            ):
                read += cluster
                read_end = cluster_end
            else:
                if read:
                    reads.append((read_start, read_end, read))
                read, read_start, read_end = cluster, cluster_start, cluster_end
        if i >= 0:
            cluster, cluster_start, cluster_end = [i], offset, offset + length
    if read:
        reads.append((read_start, read_end, read))
    return [
        PlannedRead(start, end - start, _parts(requests, start, members))
        for start, end, members in reads
    ]


def _parts(requests: Sequence[tuple[int, int]], start: int, members: list[int]) -> tuple[Part, ...]:
    if len(members) == 1:  # the common case when nothing is joined
        i = members[0]
        return ((i, requests[i][0] - start, requests[i][0] - start + requests[i][1]),)
    return tuple(
        [(i, requests[i][0] - start, requests[i][0] - start + requests[i][1]) for i in members]
    )
