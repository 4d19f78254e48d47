"""Attacks on spec v2 files: crafted repo info files (parents, refs and names, lengths,
scalars out of range), hostile FlexBuffers (depth, shared containers) and crafted moves in
transaction logs. Each is a FormatError naming the file, within a deadline.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aicechunk.errors import FormatError
from aicechunk.format import repo_updates as ru
from aicechunk.format.flatbuf import Reader
from aicechunk.format.flexbuf import MAX_DEPTH, decode_flex, encode_flex
from aicechunk.format.header import HEADER_SIZE, FileType, decode_versioned, encode_file
from aicechunk.format.ids import NodeId, SnapshotId
from aicechunk.format.repo_info import (
    RepoInfo,
    SnapshotInfo,
    decode_config,
    decode_repo_info,
    encode_repo_info,
)
from aicechunk.format.timestamps import MAX_MICROS
from aicechunk.format.transaction_log import (
    MoveOperation,
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)
from tests.deadline import deadline

NOW = datetime(2025, 5, 5, tzinfo=UTC)


# --- crafting repo info files ---------------------------------------------------------

A, B, C = (SnapshotId(bytes([n]) * 12) for n in (0x0A, 0x0B, 0x0C))


def sample_info(**changes: Any) -> RepoInfo:
    """Three snapshots A <- B <- C (C with pruned logs), refs, deleted tags, metadata;
    every field that crafting patches is present (not left at its default)."""
    info = RepoInfo(
        branches={"aa": B, "ab": C, "main": C, "zz": C},
        tags={"t1": C, "t2": B},
        snapshots=(
            SnapshotInfo(A, None, NOW, "root"),
            SnapshotInfo(B, A, NOW + timedelta(seconds=1), "b", {"k": 1}),
            SnapshotInfo(C, B, NOW + timedelta(seconds=2), "c", {"k": 2}, (A,)),
        ),
        status=ru.RepoStatus(ru.Availability.READ_ONLY, NOW, "why"),
        latest_updates=(
            ru.Update(ru.NewCommit("main", C), NOW + timedelta(seconds=3), None),
            ru.Update(ru.RepoInitialized(), NOW, "repo.1.X"),
        ),
        deleted_tags=("d1", "d2"),
        metadata={"k1": "one", "k2": 2},
        repo_before_updates="repo.0.Y",
    )
    return replace(info, **changes)


def payload(data: bytes) -> bytearray:
    return bytearray(decode_versioned(data, FileType.REPO_INFO)[1])


def wrap(body: bytes | bytearray, file_type: FileType = FileType.REPO_INFO) -> bytes:
    return encode_file(file_type, bytes(body), spec_version=2)


def ref_names(body: bytearray, index: int) -> list[tuple[int, int]]:
    """(start, length) of each name in the refs vector at root field ``index``."""
    r = Reader(bytes(body), "x")
    return [r.vector(pos, 0) for pos in r.table_vector(r.root(), index)]


def rename(body: bytearray, index: int, old: str, new: str) -> None:
    assert len(old) == len(new)
    for start, length in ref_names(body, index):
        if bytes(body[start : start + length]) == old.encode():
            body[start : start + length] = new.encode()
            return
    raise AssertionError(f"no name {old!r}")


def field_pos(body: bytearray, *path: tuple[int, int | None]) -> int:
    """Position of a field reached from the root by steps (field, item of the vector
    there, or ``None`` for a table field); the last step names the field."""
    r = Reader(bytes(body), "x")
    table = r.root()
    *steps, (last, _) = path
    for index, item in steps:
        found = r.table_field(table, index) if item is None else r.table_vector(table, index)[item]
        assert found is not None
        table = found
    pos = r.field(table, last)
    assert pos is not None, f"field {last} is absent"
    return pos


def vector_length_pos(body: bytearray, index: int) -> int:
    r = Reader(bytes(body), "x")
    pos = r.table_field(r.root(), index)
    assert pos is not None
    return pos


def decode_fails(body: bytes | bytearray, *words: str) -> FormatError:
    with deadline(), pytest.raises(FormatError) as info:
        decode_repo_info(wrap(body), "repo")
    message = str(info.value)
    assert message.startswith("repo: "), message
    for word in words:
        assert word in message, message
    return info.value


# --- the format: crafted repo info files ------------------------------------------------


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize("parent", [3, 99, -2, -(2**31)])
def test_a_parent_outside_the_snapshot_list(parent: int) -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into("<i", body, field_pos(body, (4, 2), (1, None)), parent)  # C's parent
    decode_fails(body, "parent offset", "outside")


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize("index", [1, 2], ids=["tag", "branch"])
@pytest.mark.parametrize("position", [3, 2**32 - 1])
def test_a_ref_outside_the_snapshot_list(index: int, position: int) -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into("<I", body, field_pos(body, (index, 1), (1, None)), position)
    decode_fails(body, "points at snapshot")


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize(
    ("index", "old", "new", "problem"),
    [
        (2, "ab", "aa", "twice"),  # branches aa, aa, main, zz
        (2, "zz", "ab", "sorted"),  # aa, ab, main, ab: a binary search misses the last
        (1, "t2", "t1", "twice"),
        (1, "t1", "t3", "sorted"),
        (3, "d2", "d1", "twice"),
        (3, "d1", "d3", "sorted"),
        (6, "k2", "k1", "twice"),  # repository metadata names
    ],
)
def test_duplicate_or_unsorted_names(index: int, old: str, new: str, problem: str) -> None:
    body = payload(encode_repo_info(sample_info()))
    if index in (1, 2):
        rename(body, index, old, new)
    else:  # deleted tags are strings; metadata items hold a name at field 0
        start = bytes(body).index(old.encode())
        assert bytes(body).count(old.encode()) == 1
        body[start : start + len(old)] = new.encode()
    decode_fails(body, problem)


@pytest.mark.attack("crafted v2 files")
def test_an_empty_operations_log() -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into("<I", body, vector_length_pos(body, 7), 0)
    decode_fails(body, "operations log")


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize(
    "index", [3, 4, 7, 1, 2], ids=["deleted_tags", "snapshots", "updates", "tags", "branches"]
)
def test_vectors_claiming_huge_lengths(index: int) -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into("<I", body, vector_length_pos(body, index), 2**31 - 1)
    decode_fails(body, "outside")


@pytest.mark.attack("crafted v2 files")
def test_pruned_logs_claiming_a_huge_length() -> None:
    body = payload(encode_repo_info(sample_info()))
    r = Reader(bytes(body), "x")
    c = r.table_vector(r.root(), 4)[2]
    pruned = r.table_field(c, 5)
    assert pruned is not None
    struct.pack_into("<I", body, pruned, 2**30)
    decode_fails(body, "outside")


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize(
    ("path", "fmt", "value", "problem"),
    [
        (((4, 2), (2, None)), "<Q", MAX_MICROS + 1, "past year 9999"),  # flushed_at
        (((4, 2), (2, None)), "<Q", 2**64 - 1, "past year 9999"),
        (((7, 0), (2, None)), "<Q", 2**64 - 1, "past year 9999"),  # updated_at
        (((5, None), (1, None)), "<Q", 2**64 - 1, "past year 9999"),  # status set_at
        (((5, None), (0, None)), "<B", 9, "availability 9"),
        (((7, 0), (0, None)), "<B", 77, "update type 77"),
        (((7, 0), (0, None)), "<B", 0, "update type 0"),
    ],
)
def test_out_of_range_scalars(
    path: tuple[tuple[int, int | None], ...], fmt: str, value: int, problem: str
) -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into(fmt, body, field_pos(body, *path), value)
    decode_fails(body, problem)


@pytest.mark.attack("crafted v2 files")
def test_a_repo_info_file_of_spec_version_1_or_of_another_type() -> None:
    good = encode_repo_info(sample_info())
    v1 = good[: HEADER_SIZE - 3] + b"\x01" + good[HEADER_SIZE - 2 :]
    with pytest.raises(FormatError, match="repo: spec version 1 has no repo info file"):
        decode_repo_info(v1, "repo")
    snapshot = good[: HEADER_SIZE - 2] + bytes([FileType.SNAPSHOT]) + good[HEADER_SIZE - 1 :]
    with pytest.raises(FormatError, match="repo: expected a repo_info file, got snapshot"):
        decode_repo_info(snapshot, "repo")


# --- hostile FlexBuffers: depth and shared containers -----------------------------------


def nested_lists(depth: int) -> bytes:
    """A FlexBuffer of lists nested ``depth`` deep, each holding the next."""
    buf = bytearray(b"\x00")  # the innermost: an empty vector at offset 1
    inner = 1
    for _ in range(depth):
        buf.append(1)  # length
        at = len(buf)
        buf += bytes([at - inner, 0x28])  # one item: the inner vector (1-byte width)
        inner = at
    slot = len(buf)
    return bytes(buf + bytes([slot - inner, 0x28, 1]))


def laughs(levels: int) -> bytes:
    """A FlexBuffer of ``levels`` vectors each holding the one below twice: 2**levels
    leaves in a buffer of a few bytes per level (a billion laughs)."""
    buf = bytearray(bytes([1, 0, 0x08]))  # [0]: one unsigned 0
    below = 1
    for _ in range(levels):
        buf.append(2)
        at = len(buf)
        buf += bytes([at - below, at + 1 - below, 0x28, 0x28])
        below = at
    slot = len(buf)
    return bytes(buf + bytes([slot - below, 0x28, 1]))


def test_the_crafted_flexbuffers_are_well_formed() -> None:
    assert decode_flex(nested_lists(3)) == [[[[]]]]
    assert decode_flex(laughs(2)) == [[[0], [0]], [[0], [0]]]


@pytest.mark.attack("bombs")
@pytest.mark.parametrize("levels", [24, 64, 190])
def test_a_billion_laughs_flexbuffer(levels: int) -> None:
    data = laughs(levels)
    with deadline(10), pytest.raises(FormatError, match="meta: malformed FlexBuffer"):
        decode_flex(data, "meta")


@pytest.mark.attack("bombs")
def test_one_string_referred_to_from_many_slots_costs_its_size_once() -> None:
    """A big string that every item of a long vector refers to: the decoded value must
    share it, not copy it per item (a memory bomb otherwise)."""
    text = b"x" * 100_000
    buf = bytearray(struct.pack("<I", len(text)) + text + b"\x00")
    string_at = 4
    count = 20_000
    buf += b"\x00" * (-len(buf) % 4)
    buf += struct.pack("<I", count)
    items = len(buf)
    for i in range(count):
        buf += struct.pack("<I", items + 4 * i - string_at)
    buf += bytes([0x16]) * count  # strings of 4-byte width
    slot = len(buf)
    buf += struct.pack("<I", slot - items) + bytes([0x2A, 4])  # root: vector, width 4
    with deadline(10):
        value = decode_flex(bytes(buf), "meta")
    assert len(value) == count and all(v is value[0] for v in value)


@pytest.mark.attack("bombs")
def test_nesting_past_the_limit_is_refused_without_a_recursion_error() -> None:
    assert len(decode_flex(nested_lists(MAX_DEPTH - 1))) == 1
    for depth in (MAX_DEPTH + 1, 5000):
        with pytest.raises(FormatError, match="nested deeper"):
            decode_flex(nested_lists(depth), "meta")


def _with_flex_metadata(crafted: bytes) -> bytes:
    """A repo info file whose metadata value ``k1`` is ``crafted``, padded in front to the
    length of the string it replaces (a FlexBuffer's root is at its end)."""
    filler = "p" * (len(crafted) + 16)
    body = payload(encode_repo_info(sample_info(metadata={"k1": filler, "k2": 2})))
    old = encode_flex(filler)
    assert bytes(body).count(old) == 1
    start = bytes(body).index(old)
    body[start : start + len(old)] = crafted.rjust(len(old), b"\x00")
    return wrap(body)


@pytest.mark.attack("bombs")
@pytest.mark.parametrize("make", [lambda: laughs(60), lambda: nested_lists(3000)])
def test_hostile_flexbuffers_in_the_repo_info_file(make: Callable[[], bytes]) -> None:
    crafted = make()
    with deadline(10), pytest.raises(FormatError, match="repo: malformed FlexBuffer"):
        decode_repo_info(_with_flex_metadata(crafted), "repo")
    info = sample_info(config=crafted)
    decoded = decode_repo_info(encode_repo_info(info), "repo")  # the config decodes lazily
    with deadline(10), pytest.raises(FormatError, match="repo config: malformed FlexBuffer"):
        decode_config(decoded)


# --- crafted moves ------------------------------------------------------------------------


def log_with_moves(moves: tuple[MoveOperation, ...], version: int = 2) -> bytes:
    log = TransactionLog(SnapshotId.random(), moved_nodes=moves, spec_version=2)
    data = encode_transaction_log(log)
    return data[: HEADER_SIZE - 3] + bytes([version]) + data[HEADER_SIZE - 2 :]


NID = NodeId(b"\x01" * 8)


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("relative", "/b"),
        ("/a", "b"),
        ("/a/../../etc", "/b"),
        ("/a", "/b/.."),
        ("/a//b", "/c"),
        ("/a", "/c/"),
        ("/a", "/./c"),
        ("", "/c"),
        ("/a", ""),
        ("/", "/c"),
        ("/a", "/"),
    ],
)
def test_moves_with_paths_that_are_no_node_paths(source: str, target: str) -> None:
    data = log_with_moves((MoveOperation(source, target, NID, True),))
    with pytest.raises(FormatError, match=r"transactions/X: .*move"):
        decode_transaction_log(data, "transactions/X")


@pytest.mark.attack("crafted v2 files")
def test_moves_in_a_spec_v1_transaction_log() -> None:
    data = log_with_moves((MoveOperation("/a", "/b", NID, False),), version=1)
    with pytest.raises(FormatError, match=r"transactions/X: .*spec version 1"):
        decode_transaction_log(data, "transactions/X")
    fine = log_with_moves((MoveOperation("/a", "/b", NID, False),))
    assert decode_transaction_log(fine).moved_nodes[0].to_path == "/b"
