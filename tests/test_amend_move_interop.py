"""Amends and moves, both ways, with icechunk 2.3.0 on local storage (spec v2).

icechunk 2.x runs in another interpreter (see ``tests/format/test_icechunk2_interop.py``);
``tests/format/icechunk2_moves.py`` prints everything icechunk reads of a repository:
every snapshot of every branch with each node's id, attributes and values and its
transaction log, each commit's diff, and the ops log with every field. ``describe`` here
reads the same with aicechunk: the two must be equal, for a repository either side wrote
and after the other committed on top.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas
from zarr.core.array import AsyncArray

import aicechunk as aic
from aicechunk.format.ids import SnapshotId
from tests.format.test_icechunk2_interop import PYTHON

pytestmark = pytest.mark.skipif(PYTHON is None, reason="no Python with icechunk 2.3.0")

SCRIPT = Path(__file__).parent / "format" / "icechunk2_moves.py"
_FIELDS = ("name", "branch", "previous_snap_id", "new_snap_id")


def icechunk(command: str, root: Path) -> dict[str, Any]:
    """What ``icechunk2_moves.py command root`` prints."""
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, str(SCRIPT), command, str(root)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    return found


async def _nodes(session: aic.Session) -> dict[str, Any]:
    try:
        root = await zas.open_group(store=session.store, mode="r")
    except Exception:  # the initial, empty snapshot has no root group
        return {}
    found: dict[str, Any] = {}
    for name, node in [("", root), *[m async for m in root.members(max_depth=None)]]:
        path = "/" + name
        view = await session.get_node(path)
        assert view is not None
        entry: dict[str, Any] = {"id": str(view.id), "attrs": dict(node.attrs)}
        if isinstance(node, AsyncArray):
            entry["shape"] = list(node.shape)
            entry["values"] = np.asarray(await node.getitem(...)).tolist()
        found[path] = entry
    return found


async def _log(repo: aic.Repository, snapshot_id: str) -> dict[str, Any]:
    log = await repo._assets.fetch_transaction_log(SnapshotId.from_str(snapshot_id))

    def ids(values: tuple[Any, ...]) -> list[str]:
        return [str(v) for v in values]

    return {
        "new_groups": ids(log.new_groups),
        "new_arrays": ids(log.new_arrays),
        "deleted_groups": ids(log.deleted_groups),
        "deleted_arrays": ids(log.deleted_arrays),
        "updated_groups": ids(log.updated_groups),
        "updated_arrays": ids(log.updated_arrays),
        "updated_chunks": [
            {"node_id": str(n), "chunks": [list(c) for c in coords]}
            for n, coords in log.updated_chunks.items()
        ],
        "moved_nodes": [{"from": m.from_path, "to": m.to_path} for m in log.moved_nodes],
    }


async def _diff(repo: aic.Repository, start: str, end: str) -> dict[str, Any]:
    diff = await repo.diff(from_snapshot_id=start, to_snapshot_id=end)
    return {
        "new_groups": sorted(diff.new_groups),
        "new_arrays": sorted(diff.new_arrays),
        "deleted_groups": sorted(diff.deleted_groups),
        "deleted_arrays": sorted(diff.deleted_arrays),
        "updated_groups": sorted(diff.updated_groups),
        "updated_arrays": sorted(diff.updated_arrays),
        "updated_chunks": {p: sorted(map(list, c)) for p, c in diff.updated_chunks.items()},
        "moved_nodes": [list(m) for m in diff.moved_nodes],
    }


async def describe(repo: aic.Repository) -> dict[str, Any]:
    """What ``icechunk2_moves.describe`` reports, read by aicechunk."""
    snapshots: dict[str, Any] = {}
    diffs: dict[str, Any] = {}
    for branch in sorted(await repo.list_branches()):
        async for info in repo.ancestry(branch=branch):
            if info.id in snapshots:
                continue
            snapshots[info.id] = {
                "parent": info.parent_id,
                "message": info.message,
                "metadata": info.metadata,
                "nodes": await _nodes(await repo.readonly_session(snapshot_id=info.id)),
                "log": await _log(repo, info.id),
            }
            if info.parent_id is not None:
                diffs[info.id] = await _diff(repo, info.parent_id, info.id)
    main = [info.id async for info in repo.ancestry(branch="main")]
    diffs["main"] = await _diff(repo, main[-2], main[0])
    ops = []
    async for update in repo.ops_log():
        fields = {f: str(getattr(update.kind, f)) for f in _FIELDS if hasattr(update.kind, f)}
        ops.append({"kind": type(update.kind).__name__, **fields})
    return {
        "branches": {b: await repo.lookup_branch(b) for b in await repo.list_branches()},
        "tags": {t: await repo.lookup_tag(t) for t in await repo.list_tags()},
        "snapshots": snapshots,
        "diffs": diffs,
        "ops": ops,
    }


def _kinds(found: dict[str, Any]) -> list[str]:
    return [op["kind"] for op in found["ops"]]


def _messages(found: dict[str, Any], tip: str) -> list[str]:
    messages = []
    cursor: str | None = tip
    while cursor is not None:
        messages.append(found["snapshots"][cursor]["message"])
        cursor = found["snapshots"][cursor]["parent"]
    return messages


async def _write_ours(root: Path) -> aic.Repository:
    """A spec v2 repository of ours: groups with children, arrays with inline and native
    chunks, an amended edit, moves of a group with children and of arrays, an amended
    move, and a commit on top of the moves."""
    repo = await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=2)
    s = await repo.writable_session("main")
    g = await zas.group(store=s.store, attributes={"title": "ours"})
    sub = await g.create_group("g/sub", attributes={"level": 2})
    arr = await sub.create_array("arr", shape=(4, 4), chunks=(2, 2), dtype="i4")
    await arr.setitem(..., np.arange(16, dtype="i4").reshape(4, 4))
    big = await g.create_array("big", shape=(256,), chunks=(128,), dtype="f8")  # native
    await big.setitem(..., np.linspace(0, 1, 256))
    lone = await g.create_array("lone", shape=(5,), chunks=(5,), dtype="u1")
    await lone.setitem(..., np.arange(1, 6, dtype="u1"))
    await g.create_group("dest", attributes={"d": True})
    first = await s.commit("first", metadata={"n": 1})
    await repo.create_branch("keep", first)
    s = await repo.writable_session("main")
    lone = await zas.open_array(store=s.store, path="lone")
    await lone.setitem(0, 100)
    await (await zas.open_group(store=s.store, path="g")).update_attributes({"amended": 1})
    await s.amend("first, amended", metadata={"n": 2})
    r = await repo.rearrange_session("main")
    await r.move("/g", "/dest/g")
    await r.move("/lone", "/dest/g/sub/lone")
    await r.move("/big", "/big2")
    await r.commit("moves")
    r = await repo.rearrange_session("main")
    await r.move("/dest/g/sub", "/sub")
    await r.amend("moves, amended")
    s = await repo.writable_session("main")
    arr = await zas.open_array(store=s.store, path="sub/arr")
    await arr.setitem((0, 0), -7)
    big = await zas.open_array(store=s.store, path="big2")
    await big.setitem(slice(0, 2), np.array([5.0, 6.0]))
    await s.commit("after moves")
    return repo


async def test_icechunk_reads_our_amends_and_moves_then_extends_them(tmp_path: Path) -> None:
    repo = await _write_ours(tmp_path / "repo")
    ours = await describe(repo)
    tip = ours["branches"]["main"]
    assert _messages(ours, tip) == [
        "after moves",
        "moves, amended",
        "first, amended",
        "Repository initialized",
    ]
    nodes = ours["snapshots"][tip]["nodes"]
    assert sorted(nodes) == [
        "/",
        "/big2",
        "/dest",
        "/dest/g",
        "/sub",
        "/sub/arr",
        "/sub/lone",
    ]
    assert nodes["/sub/lone"]["values"] == [100, 2, 3, 4, 5]
    assert nodes["/sub/arr"]["values"][0][:2] == [-7, 1]
    assert nodes["/dest/g"]["attrs"] == {"amended": 1}
    moved = ours["snapshots"][ours["snapshots"][tip]["parent"]]
    assert moved["log"]["moved_nodes"] == [
        {"from": "/big", "to": "/big2"},
        {"from": "/g", "to": "/dest/g"},
        {"from": "/g/sub", "to": "/sub"},
        {"from": "/g/sub/arr", "to": "/sub/arr"},
        {"from": "/lone", "to": "/sub/lone"},
    ]
    assert _kinds(ours) == [
        "NewCommit",
        "CommitAmended",
        "NewCommit",
        "CommitAmended",
        "BranchCreated",
        "NewCommit",
        "RepoInitialized",
    ]
    # icechunk reads every node, value, attribute, id, log, diff and op as we do
    assert icechunk("read", tmp_path / "repo") == ours
    # and commits on top: an amended edit, an amended move, a commit; we read all of it
    theirs = icechunk("extend", tmp_path / "repo")
    assert await describe(repo) == theirs
    top = theirs["branches"]["main"]
    assert _messages(theirs, top)[:4] == [
        "icechunk on top",
        "icechunk move, amended",
        "icechunk edit, amended",
        "after moves",
    ]
    main = await repo.readonly_session("main")
    t = await zas.open_array(store=main.store, path="t_by_icechunk", mode="r")
    assert np.asarray(await t.getitem(...)).tolist() == [-1.0, 1.5, 9.5]
    assert _kinds(theirs)[:5] == [
        "NewCommit",
        "CommitAmended",
        "NewCommit",
        "CommitAmended",
        "NewCommit",
    ]


async def test_we_read_icechunks_amends_and_moves_then_extend_them(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    theirs = icechunk("write", root)
    repo = await aic.Repository.open(aic.local_filesystem_storage(root))
    assert await describe(repo) == theirs
    tip = theirs["branches"]["main"]
    assert _messages(theirs, tip) == [
        "after moves",
        "moves, amended",
        "first, amended",
        "Repository initialized",
    ]
    nodes = theirs["snapshots"][tip]["nodes"]
    assert nodes["/sub/lone"]["values"] == [100, 2, 3, 4, 5]  # moved, amended, moved
    assert nodes["/sub"]["attrs"] == {"level": 2}
    # our session sees the moved nodes as icechunk does: ids kept, chunks read
    main = await repo.readonly_session("main")
    keep = theirs["snapshots"][theirs["branches"]["keep"]]["nodes"]
    view = await main.get_node("/sub/arr")
    assert view is not None and str(view.id) == keep["/g/sub/arr"]["id"]
    assert await main.chunk_type("/sub/arr", (1, 1)) is aic.ChunkType.INLINE

    # we amend, move and commit on top; icechunk reads it all as we do
    s = await repo.writable_session("main")
    await (await zas.open_group(store=s.store, path="sub")).update_attributes({"by": "us"})
    await s.amend("after moves, amended by us")
    r = await repo.rearrange_session("main")
    await r.move("/sub", "/dest/sub_again")
    await r.move("/dest/g", "/g_back")
    await r.commit("our moves")
    s = await repo.writable_session("main")
    arr = await zas.open_array(store=s.store, path="dest/sub_again/arr")
    await arr.setitem((3, 3), 1234)
    await s.commit("ours on top")
    ours = await describe(repo)
    assert icechunk("read", root) == ours
    top = ours["branches"]["main"]
    assert _messages(ours, top)[:3] == ["ours on top", "our moves", "after moves, amended by us"]
    final = ours["snapshots"][top]["nodes"]
    assert final["/dest/sub_again/arr"]["values"][3][3] == 1234
    assert final["/dest/sub_again"]["attrs"] == {"level": 2, "by": "us"}
    assert "/g_back" in final and "/dest/g" not in final
    ours_moves = [
        ["/sub", "/dest/sub_again"],
        ["/sub/arr", "/dest/sub_again/arr"],
        ["/sub/lone", "/dest/sub_again/lone"],
        ["/dest/g", "/g_back"],
    ]
    assert ours["diffs"][ours["snapshots"][top]["parent"]]["moved_nodes"] == ours_moves
    # across commits, the newest commit's moves first (icechunk's merged ones after ours)
    assert ours["diffs"]["main"]["moved_nodes"] == [
        *ours_moves,
        ["/g", "/dest/g"],
        ["/g/sub", "/sub"],
        ["/g/sub/arr", "/sub/arr"],
        ["/lone", "/sub/lone"],
    ]


async def test_icechunk2_scripts_moved_repository_reads_with_its_log(tmp_path: Path) -> None:
    """The repository ``icechunk2_script.py write`` makes (an amended commit, then a move
    of a group with an array): the moved array's values, and its commit's log and diff."""
    from tests.format.test_icechunk2_interop import icechunk as icechunk2

    root = tmp_path / "ic2"
    written = icechunk2("write", root)
    shutil.copytree(root, tmp_path / "copy")
    repo = await aic.Repository.open(aic.local_filesystem_storage(tmp_path / "copy"))
    tip = written["branches"]["main"]
    info = await repo.lookup_snapshot(tip)
    diff = await repo.diff(from_snapshot_id=info.parent_id or "", to_snapshot_id=tip)
    assert diff.moved_nodes == [("/a", "/b"), ("/a/x", "/b/x")]
    assert not diff.new_arrays and not diff.updated_chunks
    main = await repo.readonly_session("main")
    x = await zas.open_array(store=main.store, path="b/x", mode="r")
    assert np.asarray(await x.getitem(...)).tolist() == written["values"]
    parent = await repo.readonly_session(snapshot_id=info.parent_id)
    before = await parent.get_node("/a/x")
    after = await main.get_node("/b/x")
    assert before is not None and after is not None and before.id == after.id
    assert await parent.get_node("/b") is None and await main.get_node("/a") is None
