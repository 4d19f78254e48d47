"""The range planner (``aicechunk.virtual.ranges``): which byte ranges of one object are
read together, on its own, without I/O."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.virtual.ranges import DEFAULT_MAX_GAP, DEFAULT_MAX_SPAN, plan_reads

KiB, MiB = 1 << 10, 1 << 20


def spans(requests: list[tuple[int, int]], **limits: int) -> list[tuple[int, int]]:
    return [(r.offset, r.length) for r in plan_reads(requests, **limits)]


def test_nothing_to_read() -> None:
    assert plan_reads([]) == []


def test_packed_chunks_are_one_read_in_offset_order() -> None:
    requests = [(32, 16), (0, 16), (16, 16)]  # out of order, as tasks arrive
    (read,) = plan_reads(requests)
    assert (read.offset, read.length, read.end) == (0, 48, 48)
    assert read.parts == ((1, 0, 16), (2, 16, 32), (0, 32, 48))


def test_the_gap_limit() -> None:
    near, far = [(0, 10), (10 + DEFAULT_MAX_GAP, 10)], [(0, 10), (11 + DEFAULT_MAX_GAP, 10)]
    assert spans(near) == [(0, 20 + DEFAULT_MAX_GAP)]
    assert spans(far) == [(0, 10), (11 + DEFAULT_MAX_GAP, 10)]
    assert spans([(0, 10), (10, 10), (21, 10)], max_gap=0) == [(0, 20), (21, 10)]


def test_the_span_limit() -> None:
    requests = [(i * MiB, MiB) for i in range(40)]  # 40 touching MiB
    assert spans(requests) == [(0, 16 * MiB), (16 * MiB, 16 * MiB), (32 * MiB, 8 * MiB)]
    assert 16 * MiB == DEFAULT_MAX_SPAN
    assert spans([(0, 10), (10, 10)], max_span=19) == [(0, 10), (10, 10)]
    assert spans([(0, 10), (10, 10)], max_span=20) == [(0, 20)]


def test_overlapping_requests_share_one_read_even_past_the_span() -> None:
    # splitting them would read the shared bytes twice (or overlap reads)
    assert spans([(0, 10 * MiB), (5 * MiB, 16 * MiB)]) == [(0, 21 * MiB)]
    # a request longer than the span is one read of its own
    assert spans([(0, 1), (10, 20 * MiB)]) == [(0, 1), (10, 20 * MiB)]


def test_repeated_and_empty_requests() -> None:
    (read,) = plan_reads([(100, 8), (100, 8), (104, 0)])
    assert (read.offset, read.length) == (100, 8)
    assert sorted(read.parts) == [
        (0, 0, 8),
        (1, 0, 8),
        (2, 4, 4),
    ]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="offset >= 0"):
        plan_reads([(-1, 4)])
    with pytest.raises(ValueError, match="length >= 0"):
        plan_reads([(0, -4)])
    with pytest.raises(ValueError, match="max_gap"):
        plan_reads([(0, 4)], max_gap=-1)


requests_st = st.lists(
    st.tuples(st.integers(0, 4000), st.integers(0, 600)), min_size=0, max_size=60
)


@settings(max_examples=400, deadline=None)
@given(requests_st, st.integers(0, 300), st.integers(0, 2000))
def test_every_request_is_served_exactly_once_by_its_slice(
    requests: list[tuple[int, int]], max_gap: int, max_span: int
) -> None:
    blob = bytes(i % 251 for i in range(5000))
    reads = plan_reads(requests, max_gap=max_gap, max_span=max_span)
    served: list[int] = []
    for read in reads:
        data = blob[read.offset : read.end]
        for index, start, stop in read.parts:
            offset, length = requests[index]
            assert data[start:stop] == blob[offset : offset + length]
            assert 0 <= start <= stop <= read.length
            served.append(index)
    assert sorted(served) == list(range(len(requests)))


@settings(max_examples=400, deadline=None)
@given(requests_st, st.integers(0, 300), st.integers(0, 2000))
def test_reads_are_ordered_disjoint_tight_and_within_the_limits(
    requests: list[tuple[int, int]], max_gap: int, max_span: int
) -> None:
    reads = plan_reads(requests, max_gap=max_gap, max_span=max_span)
    for before, after in itertools.pairwise(reads):
        assert before.end <= after.offset  # no overlap, offset order
        # kept apart only for a reason: too far, or joined they would be too long
        assert after.offset - before.end > max_gap or after.end - before.offset > max_span
    for read in reads:
        members = [requests[index] for index, _, _ in read.parts]
        # tight: the read starts at its first request and ends at its last byte
        assert read.offset == min(o for o, _ in members)
        assert read.end == max(o + n for o, n in members)
        if read.length > max_span:
            # only overlapping requests (one cluster) may exceed the span
            covered = read.offset
            for offset, length in sorted(members):
                assert offset < covered or covered == read.offset, (read, members)
                covered = max(covered, offset + length)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 600)), max_size=60))
def test_no_join_limits_read_every_cluster_alone(requests: list[tuple[int, int]]) -> None:
    reads = plan_reads(requests, max_gap=0, max_span=0)
    # with nothing joined across a gap, reads are the unions of overlapping requests
    union: list[list[int]] = []
    for offset, length in sorted(requests):
        if union and offset < union[-1][1]:
            union[-1][1] = max(union[-1][1], offset + length)
        else:
            union.append([offset, offset + length])
    assert [(r.offset, r.end) for r in reads] == [(a, b) for a, b in union]
