"""Run by tests/test_amend_move_interop.py in a Python with icechunk 2.3.0 (not by pytest).

``read DIR`` prints all icechunk reads of a spec v2 repository: every snapshot of every
branch (parent, message, metadata, each node's id, kind, attributes, shape and values, its
transaction log), the ops log with every field, and the diff of each commit. ``extend
DIR`` amends, moves and commits on top of ``main``, then prints the same. ``write DIR``
makes a repository with amends and moves of its own, then prints the same.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import icechunk
import numpy as np
import zarr

_FIELDS = ("name", "branch", "previous_snap_id", "new_snap_id")


def _nodes(session: icechunk.Session) -> dict[str, Any]:
    try:
        root = zarr.open_group(store=session.store, mode="r")
    except zarr.errors.GroupNotFoundError:  # the initial, empty snapshot
        return {}
    found: dict[str, Any] = {}
    for name, node in [("", root), *root.members(max_depth=None)]:
        path = "/" + name
        entry: dict[str, Any] = {"id": session.get_node_id(path), "attrs": dict(node.attrs)}
        if isinstance(node, zarr.Array):
            entry["shape"] = list(node.shape)
            entry["values"] = np.asarray(node[...]).tolist()
        found[path] = entry
    return found


def _log(repo: icechunk.Repository, snapshot_id: str) -> dict[str, Any]:
    log = repo.inspect_transaction_log(snapshot_id)
    log.pop("header")
    return log


def _op(update: Any) -> dict[str, Any]:
    kind = update.kind
    fields = {f: getattr(kind, f) for f in _FIELDS if hasattr(kind, f)}
    return {"kind": type(kind).__name__, **fields}


def describe(repo: icechunk.Repository) -> dict[str, Any]:
    snapshots: dict[str, Any] = {}
    diffs: dict[str, Any] = {}
    for branch in sorted(repo.list_branches()):
        for info in repo.ancestry(branch=branch):
            if info.id in snapshots:
                continue
            snapshots[info.id] = {
                "parent": info.parent_id,
                "message": info.message,
                "metadata": info.metadata,
                "nodes": _nodes(repo.readonly_session(snapshot_id=info.id)),
                "log": _log(repo, info.id),
            }
            if info.parent_id is not None:
                diffs[info.id] = _diff(repo, info.parent_id, info.id)
    # and across every commit of main after the first: moves of all, newest first
    main = [info.id for info in repo.ancestry(branch="main")]
    diffs["main"] = _diff(repo, main[-2], main[0])
    return {
        "branches": {b: repo.lookup_branch(b) for b in repo.list_branches()},
        "tags": {t: repo.lookup_tag(t) for t in repo.list_tags()},
        "snapshots": snapshots,
        "diffs": diffs,
        "ops": [_op(u) for u in repo.ops_log()],
    }


def _diff(repo: icechunk.Repository, start: str, end: str) -> dict[str, Any]:
    diff = repo.diff(from_snapshot_id=start, to_snapshot_id=end)
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


def _open(root: str) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(root))


def read(root: str) -> None:
    print(json.dumps(describe(_open(root))))


def extend(root: str) -> None:
    """On top of main: an edit, amended; a move (a group with children), amended with
    another (an array); a commit; every step checked by icechunk's own reads."""
    repo = _open(root)
    s = repo.writable_session("main")
    group = zarr.open_group(store=s.store)
    group.attrs["by"] = "icechunk"
    theirs = group.create_group("theirs", attributes={"k": 1})
    theirs.create_array("t", shape=(3,), chunks=(2,), dtype="f8")[:] = [0.5, 1.5, 2.5]
    s.commit("icechunk edit")
    s = repo.writable_session("main")
    zarr.open_array(store=s.store, path="theirs/t")[2] = 9.5
    s.amend("icechunk edit, amended")
    r = repo.rearrange_session("main")
    r.move("/theirs", "/moved_by_icechunk")
    r.commit("icechunk move")
    r = repo.rearrange_session("main")
    r.move("/moved_by_icechunk/t", "/t_by_icechunk")
    r.amend("icechunk move, amended")
    s = repo.writable_session("main")
    zarr.open_array(store=s.store, path="t_by_icechunk")[0] = -1.0
    s.commit("icechunk on top")
    print(json.dumps(describe(repo)))


def write(root: str) -> None:
    """A repository of icechunk's with moves of groups with children and arrays with
    chunks, amended edits and amended moves, and a branch."""
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(root), spec_version=2)
    s = repo.writable_session("main")
    g = zarr.group(store=s.store, attributes={"title": "ic"})
    deep = g.create_group("g/sub", attributes={"level": 2})
    deep.create_array("arr", shape=(4, 4), chunks=(2, 2), dtype="i4")[:] = np.arange(16).reshape(
        4, 4
    )
    g.create_array("lone", shape=(5,), chunks=(5,), dtype="u1")[:] = [1, 2, 3, 4, 5]
    g.create_group("dest")
    first = s.commit("first", metadata={"n": 1})
    repo.create_branch("keep", first)
    s = repo.writable_session("main")
    zarr.open_array(store=s.store, path="lone")[0] = 100
    s.amend("first, amended")
    r = repo.rearrange_session("main")
    r.move("/g", "/dest/g")
    r.move("/lone", "/dest/g/sub/lone")
    r.commit("moves")
    r = repo.rearrange_session("main")
    r.move("/dest/g/sub", "/sub")
    r.amend("moves, amended")
    s = repo.writable_session("main")
    zarr.open_array(store=s.store, path="sub/arr")[0, 0] = -7
    s.commit("after moves")
    print(json.dumps(describe(repo)))


if __name__ == "__main__":
    {"read": read, "extend": extend, "write": write}[sys.argv[1]](sys.argv[2])
