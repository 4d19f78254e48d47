"""Run by tests/test_upgrade.py in a Python with icechunk 2.3.0 (not by pytest).

``describe DIR`` prints what icechunk reads of a repository: its spec version, branches,
tags, every snapshot reachable from them (parent, time, message, metadata), the values of
``x`` on every branch and tag, the ops log and the persisted configuration's inline
threshold. ``upgrade DIR`` upgrades a spec v1 repository first, ``extend DIR`` commits on
``main`` and ``dev`` and tags the new ``main`` first; both then describe.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import icechunk
import numpy as np
import zarr


def _values(session: icechunk.Session) -> list[int]:
    return np.asarray(zarr.open_array(store=session.store, path="x", mode="r")[:]).tolist()


def describe(repo: icechunk.Repository) -> dict[str, Any]:
    snapshots: dict[str, Any] = {}
    refs = [("branch", b) for b in repo.list_branches()] + [("tag", t) for t in repo.list_tags()]
    values = {}
    for kind, name in refs:
        for info in repo.ancestry(**{kind: name}):
            snapshots[info.id] = {
                "parent": info.parent_id,
                "written_at": info.written_at.isoformat(),
                "message": info.message,
                "metadata": info.metadata,
            }
        session = repo.readonly_session(**{kind: name})
        values[f"{kind}:{name}"] = _values(session)
    return {
        "spec_version": int(repo.spec_version),
        "branches": {b: repo.lookup_branch(b) for b in repo.list_branches()},
        "tags": {t: repo.lookup_tag(t) for t in repo.list_tags()},
        "snapshots": snapshots,
        "values": values,
        "ops": [type(u.kind).__name__ for u in repo.ops_log()],
    }


def main(command: str, root: str) -> None:
    storage = icechunk.local_filesystem_storage(root)
    repo = icechunk.Repository.open(storage)
    if command == "upgrade":
        repo = icechunk.upgrade_icechunk_repository(repo, dry_run=False)
    elif command == "extend":
        session = repo.writable_session("main")
        zarr.open_array(store=session.store, path="x")[1] = 100
        first = session.commit("icechunk on main", metadata={"by": "icechunk"})
        repo.create_tag("ic-tag", first)
        session = repo.writable_session("dev")
        zarr.open_array(store=session.store, path="x")[2] = 200
        session.commit("icechunk on dev")
    found = describe(repo)
    config = icechunk.Repository.fetch_config(storage)
    found["inline"] = None if config is None else config.inline_chunk_threshold_bytes
    print(json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
