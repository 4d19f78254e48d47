"""``Session.amend`` and ``commit(allow_empty=)``, as icechunk 2.3.0 has them (its
behaviour, observed, is quoted where ours follows it; interop with icechunk itself is in
``test_amend_move_interop.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.format import repo_updates as ru
from aicechunk.format.ids import NodeId, SnapshotId
from aicechunk.format.transaction_log import (
    MoveOperation,
    TransactionLog,
    merge_transaction_logs,
)


async def _repo(tmp_path: Path, spec_version: int = 2) -> tuple[aic.Repository, str]:
    """A repository with one commit after the initial one: a group and an array."""
    repo = await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path), spec_version=spec_version
    )
    s = await repo.writable_session("main")
    group = await zas.group(store=s.store, attributes={"v": 1})
    x = await group.create_array("x", shape=(4,), chunks=(2,), dtype="i4")
    await x.setitem(..., np.arange(4, dtype="i4"))
    return repo, await s.commit("first", metadata={"k": "first"})


async def _attrs(session: aic.Session) -> dict[str, object]:
    return dict((await zas.open_group(store=session.store, mode="r")).attrs)


@pytest.mark.parametrize("spec_version", [1, 2])
async def test_empty_commits_need_allow_empty(tmp_path: Path, spec_version: int) -> None:
    # icechunk 2.3.0: "cannot commit, no changes made to the session (use
    # `allow_empty=true` to commit anyway)", a SessionStateError, on spec v1 and v2
    repo, first = await _repo(tmp_path, spec_version)
    s = await repo.writable_session("main")
    with pytest.raises(aic.SessionStateError, match=r"no changes.*allow_empty=True"):
        await s.commit("empty")
    empty = await s.commit("empty", {"m": 1}, allow_empty=True)
    info = await repo.lookup_snapshot(empty)
    assert (info.parent_id, info.message, info.metadata) == (first, "empty", {"m": 1})
    assert await repo.lookup_branch("main") == empty
    diff = await repo.diff(from_snapshot_id=first, to_snapshot_id=empty)
    assert diff.is_empty()
    assert await _attrs(s) == {"v": 1}
    if spec_version == 2:
        assert [type(u.kind) async for u in repo.ops_log()][:2] == [ru.NewCommit, ru.NewCommit]


async def test_amend_replaces_the_tip(tmp_path: Path) -> None:
    repo, first = await _repo(tmp_path)
    repo.set_default_commit_metadata({"d": 1})
    s = await repo.writable_session("main")
    x = await zas.open_array(store=s.store, path="x")
    await x.setitem(slice(0, 2), np.array([10, 11], dtype="i4"))
    await (await zas.open_group(store=s.store)).update_attributes({"amended": True})
    amended = await s.amend("first, amended", metadata={"k": 2})
    assert s.snapshot_id == amended and not s.has_uncommitted_changes
    assert await repo.lookup_branch("main") == amended
    history = [i async for i in repo.ancestry(branch="main")]
    assert [i.message for i in history] == ["first, amended", "Repository initialized"]
    # the tip's metadata is not kept: the repository's defaults with the amend's, as icechunk
    assert history[0].metadata == {"d": 1, "k": 2}
    assert history[0].parent_id == history[1].id
    main = await repo.readonly_session("main")
    x = await zas.open_array(store=main.store, path="x", mode="r")
    assert np.asarray(await x.getitem(...)).tolist() == [10, 11, 2, 3]
    assert await _attrs(main) == {"v": 1, "amended": True}
    # the replaced snapshot stays listed, on no branch
    replaced = await repo.lookup_snapshot(first)
    assert replaced.message == "first"
    updates = [u.kind async for u in repo.ops_log()]
    assert updates[0] == ru.CommitAmended(
        "main", SnapshotId.from_str(first), SnapshotId.from_str(amended)
    )
    # its log holds the replaced commit's changes and the amend's
    logs = repo._assets
    log = await logs.fetch_transaction_log(SnapshotId.from_str(amended))
    before = await logs.fetch_transaction_log(SnapshotId.from_str(first))
    assert set(before.new_groups) <= set(log.new_groups)
    assert set(log.updated_groups) == set(before.new_groups) & set(log.updated_groups) != set()
    assert sorted(next(iter(log.updated_chunks.values()))) == [(0,), (1,)]
    # and a diff from the initial snapshot reads it as one commit
    diff = await repo.diff(from_snapshot_id=history[1].id, to_branch="main")
    assert diff.new_arrays == {"/x"} and diff.updated_chunks == {"/x": {(0,), (1,)}}


async def test_amend_with_allow_empty_changes_the_message_only(tmp_path: Path) -> None:
    repo, first = await _repo(tmp_path)
    s = await repo.writable_session("main")
    with pytest.raises(aic.SessionStateError, match="no changes"):
        await s.amend("nothing")
    again = await s.amend("reworded", allow_empty=True)
    info = await repo.lookup_snapshot(again)
    assert info.message == "reworded" and info.metadata == {}
    old = await repo.readonly_session(snapshot_id=first)
    new = await repo.readonly_session(snapshot_id=again)
    assert [n.path for n in await old.list_nodes()] == [n.path for n in await new.list_nodes()]
    # twice in a row: still one commit after the initial one
    s2 = await repo.writable_session("main")
    await s2.amend("reworded again", allow_empty=True)
    assert [i.message async for i in repo.ancestry(branch="main")] == [
        "reworded again",
        "Repository initialized",
    ]


async def test_amend_is_refused_where_icechunk_refuses_it(tmp_path: Path) -> None:
    # spec v1: icechunk raises "this operation requires a repository that is at least
    # version 2.0"; we name the version
    v1, _ = await _repo(tmp_path / "v1", spec_version=1)
    s = await v1.writable_session("main")
    with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 1"):
        await s.amend("no", allow_empty=True)
    # the first commit: "the first commit in the repository cannot be an amend"
    fresh = await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path / "fresh"), spec_version=2
    )
    s = await fresh.writable_session("main")
    await zas.group(store=s.store)
    with pytest.raises(aic.SessionStateError, match="first commit"):
        await s.amend("no")
    # a stale session: ConflictError, and nothing is written
    repo, _ = await _repo(tmp_path / "v2")
    stale = await repo.writable_session("main")
    await (await zas.open_group(store=stale.store)).update_attributes({"stale": 1})
    other = await repo.writable_session("main")
    x = await zas.open_array(store=other.store, path="x")
    await x.setitem(slice(2, 4), np.array([7, 7], dtype="i4"))
    tip = await other.commit("other")
    files = sorted((tmp_path / "v2" / "snapshots").iterdir())
    with pytest.raises(aic.ConflictError) as info:
        await stale.amend("stale")
    assert (info.value.expected_parent, info.value.actual_parent) == (stale.snapshot_id, tip)
    assert sorted((tmp_path / "v2" / "snapshots").iterdir()) == files
    # rebased, it amends the new tip
    await stale.rebase(aic.ConflictDetector())
    amended = await stale.amend("other, amended")
    history = [i.message async for i in repo.ancestry(branch="main")]
    assert history[:2] == ["other, amended", "first"]
    done = await repo.readonly_session(snapshot_id=amended)
    assert await _attrs(done) == {"v": 1, "stale": 1}
    x = await zas.open_array(store=done.store, path="x", mode="r")
    assert np.asarray(await x.getitem(...)).tolist() == [0, 1, 7, 7]
    # forks and read-only sessions do not amend
    with pytest.raises(aic.SessionStateError, match="ForkSession cannot amend"):
        await (await repo.writable_session("main")).fork().amend("no")
    with pytest.raises(aic.ReadOnlyError):
        await (await repo.readonly_session("main")).amend("no", allow_empty=True)


async def test_a_tip_that_moved_nodes_is_amended_in_a_rearrange_session_only(
    tmp_path: Path,
) -> None:
    repo, _ = await _repo(tmp_path)
    r = await repo.rearrange_session("main")
    await r.move("/x", "/y")
    moved = await r.commit("moved")
    s = await repo.writable_session("main")
    await (await zas.open_group(store=s.store)).update_attributes({"w": 1})
    # icechunk: "This session was created to rearrange the hierarchy ..." (its
    # RearrangeSessionOnly), even with allow_empty
    with pytest.raises(aic.SessionStateError, match="rearrange session"):
        await s.amend("no")
    r = await repo.rearrange_session("main")
    await r.move("/y", "/z")
    amended = await r.amend("moved twice")
    log = await repo._assets.fetch_transaction_log(SnapshotId.from_str(amended))
    assert [(m.from_path, m.to_path) for m in log.moved_nodes] == [("/x", "/z")]
    info = await repo.lookup_snapshot(amended)
    assert info.parent_id == (await repo.lookup_snapshot(moved)).parent_id
    # back where it was: the amended log records no move at all
    r = await repo.rearrange_session("main")
    await r.move("/z", "/x")
    back = await r.amend("moved back")
    log = await repo._assets.fetch_transaction_log(SnapshotId.from_str(back))
    assert log.moved_nodes == ()


def test_merged_logs_unite_changes_and_fold_moves() -> None:
    a, b, c = (NodeId(bytes([i]) * 8) for i in (1, 2, 3))
    first = TransactionLog(
        id=SnapshotId(b"\x01" * 12),
        new_arrays=(a,),
        updated_chunks={a: [(0,), (1,)], b: []},
        moved_nodes=(MoveOperation("/p", "/q", b, False), MoveOperation("/r", "/s", c, True)),
        spec_version=2,
    )
    second = TransactionLog(
        id=SnapshotId(b"\x02" * 12),
        updated_arrays=(a,),
        updated_chunks={a: [(1,), (2,)]},
        moved_nodes=(MoveOperation("/q", "/t", b, False), MoveOperation("/s", "/r", c, True)),
        spec_version=2,
    )
    merged = merge_transaction_logs(SnapshotId(b"\x03" * 12), [first, second])
    assert merged.id == SnapshotId(b"\x03" * 12)
    assert (merged.new_arrays, merged.updated_arrays) == ((a,), (a,))
    assert merged.updated_chunks == {a: ((0,), (1,), (2,)), b: ()}
    assert merged.moved_nodes == (MoveOperation("/p", "/t", b, False),)
    assert merged.spec_version == 2
