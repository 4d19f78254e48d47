"""The repo info file written from kept segments (``format/repo_info_segments.py``) and
read lazily (``decode_repo_info(..., lazy=True)``): both say exactly what the Icechunk
layout and the eager decoder say, segments kept from one write serve the next (indices
shifted by an insertion set again), and a lazily read entry that is malformed is refused
when used, never copied forward."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.errors import FormatError
from aicechunk.format import repo_updates as ru
from aicechunk.format.flatbuf import Reader
from aicechunk.format.header import FileType, decode_versioned
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import (
    Lazy,
    RepoInfo,
    SnapshotInfo,
    decode_repo_info,
    encode_repo_info,
    push_update,
)
from aicechunk.format.repo_info_direct import direct_update_segment
from aicechunk.format.repo_info_segments import encode_repo_info_segmented
from tests.format.strategies_v2 import names, ref_update_kinds, repo_infos, times
from tests.format.test_attacks_v2 import wrap


def _fresh(info: RepoInfo) -> RepoInfo:
    """``info`` with new snapshot and update objects (no segments kept)."""
    snapshots = tuple(dataclasses.replace(s) for s in info.snapshots)
    updates = tuple(dataclasses.replace(u) for u in info.latest_updates)
    return dataclasses.replace(info, snapshots=snapshots, latest_updates=updates)


@settings(max_examples=60, deadline=None)
@given(repo_infos())
def test_segmented_files_read_as_the_icechunk_layout(info: RepoInfo) -> None:
    data = encode_repo_info_segmented(info)
    decoded = decode_repo_info(data)
    assert decoded == info
    assert decode_repo_info(data, lazy=True) == info
    # the segments kept on the objects write the same bytes as new ones
    assert encode_repo_info_segmented(info) == data
    assert encode_repo_info_segmented(_fresh(info)) == data
    # and the decoded file re-encodes to Icechunk's layout of the same content
    assert encode_repo_info(decoded) == encode_repo_info(info)


@settings(max_examples=60, deadline=None)
@given(repo_infos())
def test_lazy_decoding_says_what_eager_decoding_says(info: RepoInfo) -> None:
    data = encode_repo_info(info)
    lazy = decode_repo_info(data, lazy=True)
    assert isinstance(lazy.snapshots, Lazy) and isinstance(lazy.latest_updates, Lazy)
    assert lazy.branches == info.branches and lazy.tags == info.tags
    assert lazy.latest_updates[0] == info.latest_updates[0]
    assert lazy.latest_updates[-1] == info.latest_updates[-1]
    assert list(lazy.latest_updates) == list(info.latest_updates)
    for snap in info.snapshots:
        assert lazy.snapshot(snap.id) == snap
    assert lazy == info
    assert encode_repo_info(lazy) == data


@settings(max_examples=30, deadline=None)
@given(repo_infos(), st.binary(min_size=12, max_size=12), st.data())
def test_kept_segments_follow_an_inserted_snapshot(
    info: RepoInfo, raw: bytes, data: st.DataObject
) -> None:
    """A snapshot inserted anywhere in the list shifts the indices of those after it:
    refs and parents written from kept segments still name the right snapshots."""
    new_id = SnapshotId(raw)
    if info.snapshot(new_id) is not None:
        return
    decode_repo_info(encode_repo_info_segmented(info))  # segments kept on the objects
    parent = data.draw(st.sampled_from(list(info.snapshots)))
    added = SnapshotInfo(new_id, parent.id, parent.flushed_at, "new")
    try:
        at = max(u.updated_at for u in info.latest_updates) + timedelta(seconds=1)
    except OverflowError:  # the log ends at the end of time: nothing can follow
        return
    log, before = push_update(info, ru.NewCommit("main", new_id), at, "backup")
    changed = dataclasses.replace(
        info,
        branches={**info.branches, "main": new_id},
        snapshots=(*info.snapshots, added),
        latest_updates=log,
        repo_before_updates=before,
    )
    decoded = decode_repo_info(encode_repo_info_segmented(changed))
    assert decoded == changed
    assert [s.id for s in decoded.ancestry(new_id)][:2] == [new_id, parent.id]


def _updates_of(info_data: bytes) -> tuple[bytes, list[int]]:
    """The payload of a repo info file and the positions of its log entries."""
    payload = decode_versioned(info_data, FileType.REPO_INFO)[1]
    r = Reader(payload, "repo")
    return payload, r.table_vector(r.root(), 7)


def _sample(entries: int) -> RepoInfo:
    first = SnapshotId(b"\x01" * 12)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    updates = tuple(
        ru.Update(ru.BranchCreated(f"b{i}"), at - timedelta(seconds=i), None)
        for i in range(entries)
    )
    return RepoInfo(
        branches={"main": first},
        tags={},
        snapshots=(SnapshotInfo(first, None, at, "first"),),
        status=ru.RepoStatus(ru.Availability.ONLINE, at),
        latest_updates=updates,
    )


@pytest.mark.parametrize("encoder", [encode_repo_info, encode_repo_info_segmented])
def test_a_malformed_entry_read_lazily_is_refused_when_used_never_copied(
    encoder: Callable[[RepoInfo], bytes],
) -> None:
    """An old log entry with an unknown update type: the lazy decoder lists branches,
    the entry is a FormatError when its fields are first read, and a change (which
    re-encodes the log) is refused instead of carrying it forward."""
    info = _sample(4)
    payload, positions = _updates_of(encoder(info))
    r = Reader(payload, "repo")
    code_at = r.field(positions[2], 0)
    assert code_at is not None
    broken = bytearray(payload)
    broken[code_at] = 200
    data = wrap(bytes(broken))
    with pytest.raises(FormatError, match="unknown update type 200"):
        decode_repo_info(data)
    lazy = decode_repo_info(data, lazy=True)
    assert lazy.branches == info.branches
    assert lazy.latest_updates[0] == info.latest_updates[0]
    entries = list(lazy.latest_updates)  # the entries are there; their fields are read lazily
    with pytest.raises(FormatError, match=r"repo: .*unknown update type 200"):
        _ = entries[2].kind
    with pytest.raises(FormatError, match=r"repo: .*unknown update type 200"):
        _ = entries[2].updated_at  # as often as it is read
    at = info.latest_updates[0].updated_at + timedelta(seconds=1)
    with pytest.raises(FormatError, match="unknown update type 200"):
        log, before = push_update(lazy, ru.GCRan(), at, "backup")
        encode_repo_info_segmented(
            dataclasses.replace(lazy, latest_updates=log, repo_before_updates=before)
        )


def test_lazy_sequences_decode_each_item_once() -> None:
    calls: list[int] = []
    checked: list[tuple[int, ...]] = []

    def item(i: int) -> int:
        calls.append(i)
        return i * 10

    lazy = Lazy(5, item, checked.append)
    assert len(lazy) == 5 and lazy[3] == 30 and lazy[-1] == 40 and calls == [3, 4]
    assert lazy.decoded() == (0, 10, 20, 30, 40) and calls == [3, 4, 0, 1, 2]
    assert checked == [(0, 10, 20, 30, 40)]
    assert list(lazy) == [0, 10, 20, 30, 40] and lazy == (0, 10, 20, 30, 40)
    assert lazy[1:3] == (10, 20) and len(calls) == 5 and len(checked) == 1
    with pytest.raises(IndexError):
        Lazy(2, item)[2]


def test_a_log_entry_without_its_required_name_is_refused() -> None:
    """A NewCommit entry whose branch name field is absent (its vtable slot zeroed; each
    entry has its own vtable in a segmented file) is a FormatError, not a None name."""
    info = _sample(2)
    new_id = info.snapshots[0].id
    at = info.latest_updates[0].updated_at + timedelta(seconds=1)
    log, before = push_update(info, ru.NewCommit("main", new_id), at, "backup")
    data = encode_repo_info_segmented(
        dataclasses.replace(info, latest_updates=log, repo_before_updates=before)
    )
    payload, positions = _updates_of(data)
    r = Reader(payload, "repo")
    kind_slot = r.field(positions[0], 1)
    assert kind_slot is not None
    kind = r.deref(kind_slot)
    vtable = kind - int.from_bytes(payload[kind : kind + 4], "little", signed=True)
    broken = bytearray(payload)
    broken[vtable + 4 : vtable + 6] = b"\x00\x00"
    lazy = decode_repo_info(wrap(bytes(broken)), lazy=True)
    with pytest.raises(FormatError, match="required field 'branch' is missing"):
        _ = lazy.latest_updates[0].kind
    with pytest.raises(FormatError, match="required field 'branch' is missing"):
        decode_repo_info(wrap(bytes(broken)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.builds(ru.Update, ref_update_kinds, times, st.none() | names), min_size=1))
def test_log_entries_written_directly_read_back(updates: list[ru.Update]) -> None:
    """The entries a commit, a ref change or a tag makes are written without the
    builder: each segment a multiple of 8 bytes with its time 8-byte aligned, and a file
    of them reads back as written, in the Icechunk layout's terms too."""
    for update in updates:
        direct = direct_update_segment(update)
        assert direct is not None
        data, root, patch = direct
        assert len(data) % 8 == 0 and root % 8 == 0 and patch == -1
        assert Reader(data, "repo").fields(root, 4)[2] % 8 == 0  # the u64 time
    sid = SnapshotId(bytes(12))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    info = RepoInfo(
        branches={"main": sid},
        tags={},
        snapshots=(SnapshotInfo(sid, None, at, "first", {}),),
        status=ru.RepoStatus(ru.Availability.ONLINE, at),
        latest_updates=tuple(updates),
    )
    decoded = decode_repo_info(encode_repo_info_segmented(info))
    assert decoded.latest_updates == tuple(updates)
    assert encode_repo_info(decoded) == encode_repo_info(info)
