"""Rearrange sessions and ``Session.move`` (spec v2), as icechunk 2.3.0 has them: what a
move does and refuses, what a rearrange session refuses, reads and status after moves,
the ``move_node`` feature flag, and rebasing moves over concurrent commits (and commits
over moves). icechunk's observed behaviour is quoted where ours follows it; interop with
icechunk itself is in ``test_amend_move_interop.py``."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
import aicechunk.sync as sync
from aicechunk.errors import NodeNotFoundError
from aicechunk.format import repo_updates as ru
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import RepoInfo
from aicechunk.repo_info_store import RepoInfoStore
from tests.format.test_icechunk2_interop import PYTHON

MOVE = aic.ConflictKind.MOVE_OPERATION_CANNOT_BE_REBASED


async def _repo(tmp_path: Path, spec_version: int = 2) -> aic.Repository:
    """/ (attrs), /a (group) with /a/x (array, 2 chunks) and /a/sub/y (array), /grp
    (group), /arr (array)."""
    repo = await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path), spec_version=spec_version
    )
    s = await repo.writable_session("main")
    root = await zas.group(store=s.store, attributes={"title": "t"})
    x = await root.create_array("a/x", shape=(8,), chunks=(4,), dtype="i4")
    await x.setitem(..., np.arange(8, dtype="i4"))
    y = await root.create_array("a/sub/y", shape=(2,), chunks=(1,), dtype="f8")
    await y.setitem(..., np.array([1.5, 2.5]))
    await root.create_group("grp", attributes={"g": 1})
    await root.create_array("arr", shape=(2,), chunks=(2,), dtype="i4")
    await s.commit("first")
    return repo


async def _values(session: aic.Session, path: str) -> list[float]:
    array = await zas.open_array(store=session.store, path=path, mode="r")
    return list(np.asarray(await array.getitem(...)).tolist())


async def _paths(session: aic.Session) -> list[str]:
    return [n.path for n in await session.list_nodes()]


async def test_a_move_renames_a_subtree_keeping_ids_and_chunks(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    r = await repo.rearrange_session("main")
    assert r.mode is aic.SessionMode.REARRANGE is aic.SessionMode.rearrange
    assert not r.read_only and r.branch == "main" and "rearrange" in repr(r)
    before = {n.path: n.id for n in await r.list_nodes()}
    await r.move("/a", "/grp/b")
    assert r.has_uncommitted_changes
    assert await _paths(r) == [
        "/",
        "/arr",
        "/grp",
        "/grp/b",
        "/grp/b/sub",
        "/grp/b/sub/y",
        "/grp/b/x",
    ]
    moved = await r.get_node("/grp/b/x")
    assert moved is not None and moved.id == before["/a/x"]
    assert await r.get_node("/a") is None and await r.get_node("/a/x") is None
    assert await _values(r, "grp/b/x") == list(range(8))
    assert await r.chunk_type("/grp/b/x", (1,)) is aic.ChunkType.INLINE
    # icechunk's status: every node moved, children too, by their new paths
    assert (await r.status()).moved_nodes == [
        ("/a", "/grp/b"),
        ("/a/sub", "/grp/b/sub"),
        ("/a/sub/y", "/grp/b/sub/y"),
        ("/a/x", "/grp/b/x"),
    ]
    # a node can come into the place another left, and be moved again
    await r.move("/arr", "/a")
    await r.move("/grp/b/sub/y", "/y")
    came = await r.get_node("/a")
    assert came is not None and came.is_array and came.id == before["/arr"]
    first = await repo.lookup_branch("main")
    sid = await r.commit("moved")
    # committed: read-only since, as in icechunk
    assert not r.has_uncommitted_changes and r.mode is aic.SessionMode.READONLY
    main = await repo.readonly_session("main")
    assert await _paths(main) == ["/", "/a", "/grp", "/grp/b", "/grp/b/sub", "/grp/b/x", "/y"]
    assert await _values(main, "y") == [1.5, 2.5]
    assert {n.path: n.id for n in await main.list_nodes()}["/a"] == before["/arr"]
    diff = await repo.diff(from_snapshot_id=first, to_snapshot_id=sid)
    assert diff.moved_nodes == [
        ("/arr", "/a"),
        ("/a", "/grp/b"),
        ("/a/sub", "/grp/b/sub"),
        ("/a/x", "/grp/b/x"),
        ("/a/sub/y", "/y"),
    ]
    assert not diff.new_arrays and not diff.deleted_arrays and not diff.is_empty()


async def test_moves_back_and_forth_record_nothing(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    r = await repo.rearrange_session("main")
    await r.move("/a/", "/b/")  # icechunk reads "/a/" as "/a"
    await r.move("/b", "/a")
    assert (await r.status()).moved_nodes == [] and r.has_uncommitted_changes
    sid = await r.commit("no net move")
    log = await repo._assets.fetch_transaction_log(SnapshotId.from_str(sid))
    assert log.moved_nodes == ()


async def test_what_a_move_refuses(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    r = await repo.rearrange_session("main")
    # icechunk: NodeNotFoundError, "cannot move `/a` into itself or its own descendant",
    # AlreadyExistsError "move cannot overwrite existing node", "the destination's parent
    # group `/nope` does not exist", "the destination's parent `/arr` is an array"
    with pytest.raises(NodeNotFoundError):
        await r.move("/zz", "/yy")
    for target in ("/a", "/a/b", "/a/sub/c"):
        with pytest.raises(aic.SessionStateError, match="into itself or its own descendant"):
            await r.move("/a", target)
    with pytest.raises(aic.SessionStateError, match="into itself"):
        await r.move("/", "/r")
    with pytest.raises(aic.NodeExistsError, match="'/grp'") as exists:
        await r.move("/a", "/grp")
    assert pickle.loads(pickle.dumps(exists.value)).path == "/grp"
    with pytest.raises(aic.NodeExistsError):
        await r.move("/grp", "/")
    with pytest.raises(aic.SessionStateError, match="parent group '/nope' does not exist"):
        await r.move("/a", "/nope/a")
    with pytest.raises(aic.SessionStateError, match="parent '/arr' is an array"):
        await r.move("/a", "/arr/a")
    with pytest.raises(aic.InvalidNodePathError):
        await r.move("a", "/b")
    assert not r.has_uncommitted_changes


async def test_a_rearrange_session_takes_moves_only(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    r = await repo.rearrange_session("main")
    # icechunk: "This session was created to rearrange the hierarchy, other write
    # operations cannot be executed", a SessionStateError, for every other write
    root = await zas.open_group(store=r.store)
    with pytest.raises(aic.SessionStateError, match="rearrange"):
        await root.update_attributes({"q": 1})
    with pytest.raises(aic.SessionStateError, match="rearrange"):
        await root.create_group("new")
    x = await zas.open_array(store=r.store, path="a/x")
    with pytest.raises(aic.SessionStateError, match="rearrange"):
        await x.setitem(0, 5)
    with pytest.raises(aic.SessionStateError, match="rearrange"):
        await r.store.delete("arr/zarr.json")
    with pytest.raises(aic.SessionStateError, match="rearrange"):
        await r.delete_node("/arr")
    assert not r.has_uncommitted_changes
    # ... and a writable session takes no move ("you need to create a rearrange session")
    w = await repo.writable_session("main")
    assert w.mode is aic.SessionMode.WRITABLE
    with pytest.raises(aic.SessionStateError, match="rearrange session"):
        await w.move("/a", "/b")
    assert (await repo.readonly_session("main")).mode is aic.SessionMode.READONLY
    # discarding keeps it a rearrange session
    await r.move("/a", "/b")
    r.discard_changes()
    assert not r.has_uncommitted_changes and await r.get_node("/a") is not None
    assert r.mode is aic.SessionMode.REARRANGE
    # icechunk forks a rearrange session into a writable fork (mode readonly, on no
    # branch) whose writes cannot be merged back: "This session was created to rearrange"
    fork = r.fork()
    assert fork.mode is aic.SessionMode.READONLY and not fork.read_only
    with pytest.raises(aic.SessionStateError, match="rearrange session"):
        await fork.move("/a", "/b")
    await (await zas.open_group(store=fork.store)).update_attributes({"z": 1})
    with pytest.raises(aic.SessionStateError, match="rearrange"):
        await r.merge(fork)
    await r.move("/a", "/b")
    with pytest.raises(aic.SessionStateError, match="uncommitted changes"):
        r.fork()
    with pytest.raises(aic.SessionStateError, match="pickled"):
        pickle.dumps(r)
    # an empty rearrange session commits only with allow_empty, as any session
    empty = await repo.rearrange_session("main")
    with pytest.raises(aic.SessionStateError, match="no changes"):
        await empty.commit("nothing")
    assert await empty.commit("nothing", allow_empty=True)


async def test_spec_v1_has_no_moves(tmp_path: Path) -> None:
    # icechunk: "this operation requires a repository that is at least version 2.0"
    repo = await _repo(tmp_path, spec_version=1)
    with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 1"):
        await repo.rearrange_session("main")
    w = await repo.writable_session("main")
    with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 1"):
        await w.move("/a", "/b")


async def _set_move_flag(repo: aic.Repository, value: bool | None) -> None:
    store = repo._assets.refs
    assert isinstance(store, RepoInfoStore)

    def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind]:
        others = [f for f in (info.disabled_feature_flags or ()) if f != 3]
        disabled = tuple(others) + ((3,) if value is False else ())
        new = replace(info, disabled_feature_flags=disabled, enabled_feature_flags=())
        return new, ru.FeatureFlagChanged(3, value)

    await store.update(change)


async def test_the_move_node_flag_refuses_rearranging(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    r = await repo.rearrange_session("main")
    await r.move("/a", "/b")
    await _set_move_flag(repo, False)
    # icechunk: "create rearrange session is disabled by a feature flag (move_node)", and
    # "commit rearrange session is disabled ..." for one made before, SessionStateErrors
    with pytest.raises(aic.SessionStateError, match="create rearrange session is disabled"):
        await repo.rearrange_session("main")
    with pytest.raises(aic.SessionStateError, match=r"commit rearrange session .*move_node"):
        await r.commit("moved")
    with pytest.raises(aic.SessionStateError, match="move_node"):
        await r.amend("moved")
    await _set_move_flag(repo, None)
    assert await r.commit("moved")


@pytest.mark.skipif(PYTHON is None, reason="no Python with icechunk 2.3.0")
async def test_icechunks_move_node_flag_is_ours(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)

    def flag(value: str) -> None:
        assert PYTHON is not None
        code = (
            "import sys, icechunk; r = icechunk.Repository.open("
            "icechunk.local_filesystem_storage(sys.argv[1])); "
            f"r.set_feature_flag('move_node', {value})"
        )
        subprocess.run([PYTHON, "-c", code, str(tmp_path)], check=True, capture_output=True)

    flag("False")
    with pytest.raises(aic.SessionStateError, match="move_node"):
        await repo.rearrange_session("main")
    flag("True")
    r = await repo.rearrange_session("main")
    await r.move("/a", "/b")
    assert await r.commit("moved")


# --- rebasing ------------------------------------------------------------------------


async def _concurrent(repo: aic.Repository, edit: str) -> None:
    """Commit on main, meanwhile, one of the edits the rebase tests need."""
    if edit == "move":
        other = await repo.rearrange_session("main")
        await other.move("/grp", "/grp2")
        await other.commit("their move")
        return
    w = await repo.writable_session("main")
    root = await zas.open_group(store=w.store)
    if edit == "attrs":
        await root.update_attributes({"theirs": 1})
    elif edit == "chunk":
        x = await zas.open_array(store=w.store, path="a/x")
        await x.setitem(0, 100)
    elif edit == "new child":
        await root.create_group("a/theirs")
    elif edit == "delete moved":
        await w.delete_node("/a")
    elif edit == "recreate moved":
        await w.delete_node("/a")
        await root.create_group("a")
    elif edit == "create at destination":
        await root.create_group("b")
    elif edit == "delete destination parent":
        await w.delete_node("/grp")
    elif edit == "destination parent an array":
        await w.delete_node("/grp")
        await root.create_array("grp", shape=(1,), chunks=(1,), dtype="u1")
    await w.commit(f"their {edit}")


@pytest.mark.parametrize("edit", ["attrs", "chunk", "new child"])
async def test_moves_rebase_over_edits_elsewhere_and_inside(tmp_path: Path, edit: str) -> None:
    # icechunk rebases these and commits the moves on top of the edit
    repo = await _repo(tmp_path)
    r = await repo.rearrange_session("main")
    await r.move("/a", "/b")
    await _concurrent(repo, edit)
    with pytest.raises(aic.ConflictError):
        await r.commit("moved")
    await r.rebase(aic.ConflictDetector())
    await r.commit("moved")
    main = await repo.readonly_session("main")
    x = await _values(main, "b/x")
    assert x[0] == (100 if edit == "chunk" else 0)
    paths = await _paths(main)
    assert "/a" not in paths and "/b/sub/y" in paths
    # a node they made inside the moved group moves with it (icechunk leaves it behind,
    # under a group that is no longer there)
    assert ("/b/theirs" in paths) == (edit == "new child")


async def test_moves_rebase_by_commit_with_a_solver(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    r = await repo.rearrange_session("main")
    await r.move("/a/x", "/x")
    await _concurrent(repo, "chunk")
    await r.commit("moved", rebase_with=aic.BasicConflictSolver())
    assert (await _values(await repo.readonly_session("main"), "x"))[0] == 100


@pytest.mark.parametrize(
    ("edit", "kind", "path"),
    [
        ("delete moved", MOVE, "/a"),
        ("recreate moved", MOVE, "/a"),
        ("create at destination", aic.ConflictKind.NEW_NODE_CONFLICTS_WITH_EXISTING_NODE, "/b"),
        ("delete destination parent", MOVE, "/grp"),
        ("destination parent an array", aic.ConflictKind.NEW_NODE_IN_INVALID_GROUP, "/grp"),
    ],
)
async def test_moves_that_no_longer_apply_conflict(
    tmp_path: Path, edit: str, kind: aic.ConflictKind, path: str
) -> None:
    # icechunk 2.3.0 finds no conflict here and then fails the commit (its node is gone)
    # or writes two nodes at one path; we report the conflict, whatever the solver
    repo = await _repo(tmp_path)
    r = await repo.rearrange_session("main")
    target = "/grp/b" if "parent" in edit else "/b"
    await r.move("/a", target)
    await _concurrent(repo, edit)
    base = r.snapshot_id
    for solver in (aic.ConflictDetector(), aic.BasicConflictSolver()):
        with pytest.raises(aic.RebaseFailedError) as info:
            await r.rebase(solver)
        assert [(c.kind, c.path) for c in info.value.conflicts] == [(kind, path)]
        assert r.snapshot_id == base and r.has_uncommitted_changes
    with pytest.raises(aic.RebaseFailedError):
        await r.commit("moved", rebase_with=aic.BasicConflictSolver())


@pytest.mark.parametrize("ours", ["edit", "move"])
async def test_a_commit_that_moved_nodes_cannot_be_rebased_over(tmp_path: Path, ours: str) -> None:
    # icechunk: one MoveOperationCannotBeRebased conflict, with no path, for any session
    repo = await _repo(tmp_path)
    if ours == "move":
        session = await repo.rearrange_session("main")
        await session.move("/a", "/b")
    else:
        session = await repo.writable_session("main")
        x = await zas.open_array(store=session.store, path="arr")
        await x.setitem(0, 1)
    await _concurrent(repo, "move")
    for solver in (aic.ConflictDetector(), aic.BasicConflictSolver()):
        with pytest.raises(aic.RebaseFailedError) as info:
            await session.rebase(solver)
        conflicts = info.value.conflicts
        assert [(c.kind, c.path, c.conflicted_chunks) for c in conflicts] == [(MOVE, "", None)]
        assert conflicts[0].conflict_type is aic.ConflictType.MoveOperationCannotBeRebased
        assert str(conflicts[0]) == "move operation cannot be rebased"


def test_the_sync_facade_rearranges_and_amends(tmp_path: Path) -> None:
    repo = sync.Repository.create(sync.local_filesystem_storage(tmp_path), spec_version=2)
    s = repo.writable_session("main")
    zarr.group(store=s.store).create_group("a", attributes={"k": 1})
    s.commit("first")
    r = repo.rearrange_session("main")
    assert isinstance(r, sync.Session) and r.mode is sync.SessionMode.rearrange
    r.move("/a", "/b")
    r.commit("moved")
    r = asyncio.run(repo.rearrange_session_async("main"))
    asyncio.run(r.move_async("/b", "/c"))
    r.amend("moved, amended", metadata={"m": 1})
    w = repo.writable_session("main")
    zarr.open_group(store=w.store, path="c").attrs["x"] = 1
    w.commit("edited")
    w = repo.writable_session("main")
    w.amend("edited, amended", allow_empty=True)
    history = [(i.message, i.metadata) for i in repo.ancestry(branch="main")]
    assert history[:3] == [("edited, amended", {}), ("moved, amended", {"m": 1}), ("first", {})]
    main = repo.readonly_session("main").store
    assert dict(zarr.open_group(store=main, path="c", mode="r").attrs) == {"k": 1, "x": 1}
