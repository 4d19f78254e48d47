"""Run by tests/test_interop_icechunk1.py in a Python with icechunk 1.1.21 (not by pytest):
``read DIR`` prints what icechunk reads of a spec v1 repository; ``commit DIR`` commits on
its ``main``, adds a branch and a tag, and prints what icechunk reads afterwards."""

from __future__ import annotations

import json
import sys
from typing import Any

import icechunk
import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync


def tree(session: icechunk.Session) -> dict[str, Any]:
    """Every node's stored zarr.json, and every array's values."""
    store = session.store

    async def documents() -> dict[str, Any]:
        found = {}
        async for key in store.list():
            if key == "zarr.json" or key.endswith("/zarr.json"):
                buf = await store.get(key, prototype=default_buffer_prototype())
                found[key[: -len("zarr.json")].rstrip("/")] = json.loads(buf.to_bytes())
        return found

    nodes = sync(documents())
    values = {
        path: np.asarray(zarr.open_array(store=store, path=path, mode="r")[...]).tolist()
        for path, doc in nodes.items()
        if doc["node_type"] == "array"
    }
    return {"nodes": nodes, "values": values}


def plain_diff(diff: Any) -> dict[str, Any]:
    """A diff as JSON: sorted paths, and sorted chunk indices per array."""
    out: dict[str, Any] = {
        field: sorted(getattr(diff, field))
        for field in ("new_groups", "new_arrays", "deleted_groups", "deleted_arrays")
    }
    out["updated_groups"] = sorted(diff.updated_groups)
    out["updated_arrays"] = sorted(diff.updated_arrays)
    out["updated_chunks"] = {
        path: sorted(list(c) for c in coords) for path, coords in diff.updated_chunks.items()
    }
    return out


def describe(repo: icechunk.Repository) -> dict[str, Any]:
    snapshots: dict[str, Any] = {}
    for branch in repo.list_branches():
        for info in repo.ancestry(branch=branch):
            parent = info.parent_id
            diff = repo.diff(from_snapshot_id=parent, to_snapshot_id=info.id) if parent else None
            snapshots[info.id] = {
                "parent": parent,
                "message": info.message,
                "metadata": info.metadata,
                "diff": plain_diff(diff) if diff else None,
                **tree(repo.readonly_session(snapshot_id=info.id)),
            }
    return {
        "version": icechunk.__version__,
        "branches": {b: repo.lookup_branch(b) for b in repo.list_branches()},
        "tags": {t: repo.lookup_tag(t) for t in repo.list_tags()},
        "snapshots": snapshots,
    }


def _open(root: str) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(root))


def read(root: str) -> None:
    print(json.dumps(describe(_open(root))))


def commit(root: str) -> None:
    repo = _open(root)
    session = repo.writable_session("main")
    group = zarr.open_group(store=session.store, mode="r+")
    group.attrs["by"] = "icechunk 1.1.21"
    group["grid"][0, :] = -5
    made = group.create_group("from_ic1", attributes={"n": 1})
    made.create_array("z", shape=(3,), chunks=(2,), dtype="i2")[:] = [7, 8, 9]
    del group["text"]
    sid = session.commit("icechunk 1.1.21 on top", metadata={"by": "icechunk", "k": [1, None]})
    repo.create_branch("ic1", sid)
    repo.create_tag("ic1-tag", sid)
    print(json.dumps(describe(repo)))


if __name__ == "__main__":
    icechunk.set_logs_filter("error")  # not the warning that local storage is not for concurrency
    {"read": read, "commit": commit}[sys.argv[1]](sys.argv[2])
