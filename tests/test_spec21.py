"""Spec 2.1: snapshots that carry the transaction logs of expired ancestors.

Expiring snapshots (icechunk's ``expire_snapshots``) re-parents the oldest snapshot kept
on a branch to the branch's root and records, in its repo info entry, the transaction logs
of the ancestors it lost (``pruned_ancestor_tx_logs``, oldest first). A reader must count
them as part of that snapshot's changes (a diff over it), and a writer must keep them.
Here the expiration is made by hand, so that this runs without icechunk; the interop with
icechunk 2.3.0's own expiration is in ``tests/test_interop_steps.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.format.ids import FIRST_SNAPSHOT_ID, SnapshotId
from aicechunk.format.repo_info import decode_repo_info, encode_repo_info
from tests.test_reliability import make_array, write_x, x_values


def expire(root: Path, kept: str) -> tuple[SnapshotId, ...]:
    """Expire every ancestor of ``kept`` but the first snapshot, as icechunk does; the
    transaction logs ``kept`` carries from then on."""
    info = decode_repo_info((root / "repo").read_bytes())
    by_id = {str(s.id): s for s in info.snapshots}
    lost: list[SnapshotId] = []
    cursor = by_id[kept].parent_id
    while cursor is not None and cursor != FIRST_SNAPSHOT_ID:
        lost.append(cursor)
        cursor = by_id[str(cursor)].parent_id
    carried = tuple(reversed(lost))
    rewritten = replace(by_id[kept], parent_id=FIRST_SNAPSHOT_ID, pruned_ancestor_tx_logs=carried)
    snapshots = tuple(
        rewritten if str(s.id) == kept else s for s in info.snapshots if s.id not in lost
    )
    (root / "repo").write_bytes(encode_repo_info(replace(info, snapshots=snapshots)))
    return carried


async def test_a_diff_counts_the_carried_logs_and_commits_keep_them(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(root)
    repo = await make_array(storage, 8, 2)  # the array "x" is made by the first commit
    await write_x(repo, 1, "one")
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="r+")
    await group.create_group("g", attributes={"new": True})
    await session.commit("two")
    kept = await write_x(repo, 2, "three")
    carried = expire(root, kept)
    assert len(carried) == 3  # setup, one, two

    fresh = await aic.Repository.open(storage)
    assert [i.message async for i in fresh.ancestry(branch="main")] == [
        "three",
        "Repository initialized",
    ]
    found = await fresh.diff(from_snapshot_id=str(FIRST_SNAPSHOT_ID), to_branch="main")
    # before: only "three"'s own log counted, so the diff said just chunk 2 changed
    assert found.new_arrays == {"/x"} and found.new_groups == {"/", "/g"}
    assert found.updated_chunks == {"/x": {(1,), (2,)}}

    # our commits, branches and tags keep what the snapshot carries
    top = await write_x(fresh, 3, "on top")
    await fresh.create_branch("dev", top)
    await fresh.create_tag("t", kept)
    info = decode_repo_info((root / "repo").read_bytes())
    entry = info.snapshot(SnapshotId.from_str(kept))
    assert entry is not None and entry.pruned_ancestor_tx_logs == carried
    assert (await x_values(fresh)).tolist()[:4] == [-1, 1, 2, 3]
    after = await fresh.diff(from_snapshot_id=str(FIRST_SNAPSHOT_ID), to_branch="dev")
    assert after.updated_chunks == {"/x": {(1,), (2,), (3,)}}


async def test_a_carried_log_that_is_gone_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older garbage collection may have deleted a carried log: the diff is then
    incomplete, with a warning, as icechunk's is, rather than failing."""
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(root)
    repo = await make_array(storage, 8, 2)
    await write_x(repo, 1, "one")
    kept = await write_x(repo, 2, "two")
    carried = expire(root, kept)
    (root / "transactions" / str(carried[-1])).unlink()  # "one"'s
    fresh = await aic.Repository.open(storage)
    found = await fresh.diff(from_snapshot_id=str(FIRST_SNAPSHOT_ID), to_branch="main")
    assert found.new_arrays == {"/x"} and found.updated_chunks == {"/x": {(2,)}}
    assert "skipping a log carried by snapshot" in caplog.text
