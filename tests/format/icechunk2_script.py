"""Run by tests/format/test_icechunk2_interop.py in a Python with icechunk 2.3.0 (not by
pytest): ``write DIR`` makes a spec v2 repository and prints what icechunk reports of it;
``read DIR`` prints what icechunk reads of a repository (after aicechunk changed it)."""

from __future__ import annotations

import json
import sys
from typing import Any

import icechunk
import numpy as np
import zarr


def describe(repo: icechunk.Repository) -> dict[str, Any]:
    snapshots: dict[str, Any] = {}
    for branch in repo.list_branches():
        for info in repo.ancestry(branch=branch):
            session = repo.readonly_session(snapshot_id=info.id)
            try:
                group = zarr.open_group(store=session.store, mode="r")
            except zarr.errors.GroupNotFoundError:  # the initial, empty snapshot
                paths: list[str] = []
            else:
                paths = ["/", *sorted("/" + n for n, _ in group.members(max_depth=None))]
            snapshots[info.id] = {
                "parent": info.parent_id,
                "message": info.message,
                "metadata": info.metadata,
                "paths": paths,
            }
    main = zarr.open_group(store=repo.readonly_session("main").store, mode="r")
    return {
        "branches": {b: repo.lookup_branch(b) for b in repo.list_branches()},
        "tags": {t: repo.lookup_tag(t) for t in repo.list_tags()},
        "snapshots": snapshots,
        "ops": [type(u.kind).__name__ for u in repo.ops_log()],
        "metadata": repo.get_metadata(),
        "values": np.asarray(main["b/x"][:]).tolist(),
        "spec_version": int(repo.spec_version),
    }


def write(root: str) -> None:
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(root), spec_version=2)
    s = repo.writable_session("main")
    g = zarr.group(store=s.store, attributes={"title": "t"})
    a = g.create_array("a/x", shape=(8,), chunks=(4,), dtype="i4", dimension_names=("t",))
    a[:] = np.arange(8)
    g.create_group("grp")
    meta = {"k": [1, -2, "two", {"b": 3.5, "a": 0.1, "é": True}], "n": None, "big": 2**63}
    first = s.commit("first", metadata=meta)
    repo.create_branch("dev", first)
    s = repo.writable_session("dev")
    zarr.open_group(store=s.store)["a/x"][0:4] = 7
    dev = s.commit("on dev")
    repo.create_tag("v1", first)
    repo.create_tag("gone", dev)
    repo.delete_tag("gone")
    s = repo.writable_session("main")
    zarr.open_group(store=s.store).attrs["amended"] = True
    s.amend("amended first")
    s = repo.rearrange_session("main")
    s.move("/a", "/b")
    s.commit("moved")
    repo.set_metadata({"owner": "me", "n": 3, "nested": {"z": [1, 2], "a": None}})
    print(json.dumps(describe(repo)))


def read(root: str) -> None:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(root))
    print(json.dumps(describe(repo)))


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](sys.argv[2])
