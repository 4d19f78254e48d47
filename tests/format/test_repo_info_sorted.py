"""``RepoInfo`` keeps its snapshots sorted by id through ``replace`` without sorting them
again, and finds them by binary search on the id text, which sorts as the id bytes do."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import (
    RepoInfo,
    SnapshotInfo,
    decode_repo_info,
    encode_repo_info,
)
from aicechunk.format.repo_info_segments import encode_repo_info_segmented
from tests.format.strategies_v2 import repo_infos


def _by_bytes(info: RepoInfo) -> list[bytes]:
    return [s.id.bytes for s in info.snapshots]


@given(st.lists(st.binary(min_size=12, max_size=12), min_size=1, max_size=200))
def test_id_text_sorts_as_id_bytes(raw: list[bytes]) -> None:
    ids = [SnapshotId(r) for r in raw]
    assert [i.bytes for i in sorted(ids)] == sorted(raw)


@settings(max_examples=60, deadline=None)
@given(repo_infos(), st.lists(st.binary(min_size=12, max_size=12), max_size=5))
def test_lookups_and_changes_keep_the_order(info: RepoInfo, absent: list[bytes]) -> None:
    assert _by_bytes(info) == sorted(_by_bytes(info))
    decoded = decode_repo_info(encode_repo_info(info), lazy=True)
    for found in (info, decoded):  # sorted here, and decoded lazily
        for s in info.snapshots:
            assert found.snapshot(s.id) == s
        for raw in absent:
            if raw not in _by_bytes(info):
                assert found.snapshot(SnapshotId(raw)) is None
    # a change adds a snapshot at the end; the next replace keeps the same sorted tuple
    new = SnapshotInfo(SnapshotId(os.urandom(12)), None, datetime.now(UTC), "m")
    changed = replace(info, snapshots=(*info.snapshots, new))
    assert _by_bytes(changed) == sorted(_by_bytes(changed))
    assert changed.snapshot(new.id) == new
    again = replace(changed, repo_before_updates="x")
    assert again.snapshots is changed.snapshots
    # what is written reads back the same, from the segments or Icechunk's layout
    for data in (encode_repo_info_segmented(again), encode_repo_info(again)):
        assert decode_repo_info(data).snapshots == again.snapshots
