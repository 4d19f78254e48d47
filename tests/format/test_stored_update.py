"""Log entries read lazily (``format/stored_update.py``): before and after their fields
are read, they compare, hash, print, pickle and copy as the ``Update`` the eager decoder
makes of the same bytes."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime

from hypothesis import given, settings

from aicechunk.format import repo_updates as ru
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import (
    RepoInfo,
    SnapshotInfo,
    decode_repo_info,
    encode_repo_info,
)
from aicechunk.format.repo_info_segments import encode_repo_info_segmented
from aicechunk.format.stored_update import StoredUpdate
from tests.format.strategies_v2 import repo_infos


@settings(max_examples=40, deadline=None)
@given(repo_infos())
def test_stored_entries_are_the_eager_ones(info: RepoInfo) -> None:
    data = encode_repo_info(info)
    eager = decode_repo_info(data).latest_updates
    stored = list(decode_repo_info(data, lazy=True).latest_updates)
    assert all(isinstance(u, StoredUpdate) for u in stored)
    assert stored[0] == eager[0] and eager[-1] == stored[-1]  # either side first
    assert [hash(u) for u in stored] == [hash(u) for u in eager]
    assert [repr(u) for u in stored] == [repr(u) for u in eager]
    assert pickle.loads(pickle.dumps(stored)) == list(eager)
    copied = [dataclasses.replace(u, backup_path="elsewhere") for u in stored]
    assert copied == [dataclasses.replace(u, backup_path="elsewhere") for u in eager]
    assert stored[0]._segment is None
    if len(eager) > 1:  # and unequal where the eager ones are
        assert (stored[0] == eager[1]) == (eager[0] == eager[1])


def test_an_entry_is_decoded_once_when_first_read() -> None:
    first = SnapshotId(b"\x01" * 12)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    info = RepoInfo(
        branches={"main": first},
        tags={},
        snapshots=(SnapshotInfo(first, None, at, "first"),),
        status=ru.RepoStatus(ru.Availability.ONLINE, at),
        latest_updates=(ru.Update(ru.NewCommit("main", first), at, "copy"),),
    )
    entry = decode_repo_info(encode_repo_info_segmented(info), lazy=True).latest_updates[0]
    assert isinstance(entry, StoredUpdate)
    kind = entry.kind
    assert entry.kind is kind and kind == ru.NewCommit("main", first)
    assert entry.backup_path == "copy" and entry.updated_at == at
