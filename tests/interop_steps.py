"""Steps on a repository, and what a repository holds, in either library.

One interpreter for both sides of the interop tests (``tests/test_interop_steps.py``):
``ic`` is ``icechunk`` (2.3.0, run as a script by a Python >= 3.12, which has no
aicechunk) or ``aicechunk.sync`` (icechunk's API over aicechunk, imported by the test).
Each side runs the same steps through its own library and describes the repository the
same way, so the two descriptions compare with ``==``.

A step is a JSON object, ``{"op": ..., ...}``:

- ``commit`` / ``amend`` / ``flush`` on ``branch`` with ``message`` (``metadata``), after
  ``writes``; ``flush`` tags the detached snapshot ``tag`` so that it stays reachable
- ``move`` ``from`` -> ``to`` on ``branch``, committed with ``message``
- ``branch`` / ``tag`` ``name`` at ``at``; ``reset_branch`` ``name`` to ``at``;
  ``delete_branch`` / ``delete_tag`` ``name``; ``at`` is ``branch:B``, ``tag:T`` or
  ``ancestor:B:N`` (the N-th ancestor of branch B's tip)
- ``set_metadata`` / ``update_metadata`` ``metadata`` (repository metadata, spec v2)
- ``mark`` (remember now) and ``expire`` (expire snapshots older than the last mark)

A write is ``{"group": P, "attrs": {...}}``, ``{"array": P, "shape", "chunks", "dtype",
"fill_value", "attrs", "dimension_names"}``, ``{"set": P, "start": I, "values": [...]}``,
``{"attrs": P, "update": {...}}`` or ``{"delete": P}``.

As a script: ``python interop_steps.py STORAGE SPEC STEPS`` with STORAGE a JSON object
(``{"kind": "local", "path": ...}`` or ``{"kind": "s3", "bucket", "prefix",
"endpoint"}``), SPEC the spec version to create (0: open the existing repository) and
STEPS a JSON list; prints ``{"before": description, "after": description}`` (before: of
the repository as opened, ``null`` when created).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

#: the fields an operations log entry's kind may have, in both libraries
KIND_FIELDS = ("branch", "name", "new_snap_id", "previous_snap_id")


def make_storage(ic: Any, where: dict[str, Any]) -> Any:
    """The storage ``where`` describes, in library ``ic``."""
    if where["kind"] == "local":
        return ic.local_filesystem_storage(where["path"])
    return ic.s3_storage(
        bucket=where["bucket"],
        prefix=where["prefix"],
        region="us-east-1",
        endpoint_url=where["endpoint"],
        allow_http=True,
        force_path_style=True,
        access_key_id="testing",
        secret_access_key="testing",
    )


# --- steps ---------------------------------------------------------------------------


def resolve(repo: Any, at: str) -> str:
    """The snapshot id ``at`` names (see the module's docstring)."""
    kind, _, rest = at.partition(":")
    if kind == "branch":
        return str(repo.lookup_branch(rest))
    if kind == "tag":
        return str(repo.lookup_tag(rest))
    branch, _, n = rest.partition(":")
    return str(list(repo.ancestry(branch=branch))[int(n)].id)


def write(store: Any, w: dict[str, Any]) -> None:
    """One write, through zarr, to a session's store."""
    if "group" in w:
        zarr.create_group(store, path=w["group"] or None, attributes=w.get("attrs", {}))
    elif "array" in w:
        zarr.create_array(
            store,
            name=w["array"],
            shape=tuple(w["shape"]),
            chunks=tuple(w["chunks"]),
            dtype=w["dtype"],
            fill_value=w.get("fill_value"),
            attributes=w.get("attrs", {}),
            dimension_names=w.get("dimension_names"),
        )
    elif "set" in w:
        arr = zarr.open_array(store, path=w["set"], mode="r+")
        values = np.asarray(w["values"], dtype=arr.dtype)
        arr[w["start"] : w["start"] + len(values)] = values
    elif "attrs" in w:
        zarr.open(store, path=w["attrs"], mode="r+").attrs.update(w["update"])
    else:
        del zarr.open_group(store, mode="r+")[w["delete"]]


def run_steps(ic: Any, repo: Any, steps: list[dict[str, Any]]) -> None:
    """Run ``steps`` on ``repo`` through library ``ic``."""
    mark: datetime | None = None
    for step in steps:
        op = step["op"]
        if op in ("commit", "amend", "flush"):
            session = repo.writable_session(step["branch"])
            for w in step.get("writes", []):
                write(session.store, w)
            if op == "commit":
                session.commit(step["message"], metadata=step.get("metadata"))
            elif op == "amend":
                session.amend(step["message"], metadata=step.get("metadata"))
            else:
                repo.create_tag(step["tag"], session.flush(step["message"]))
        elif op == "move":
            session = repo.rearrange_session(step["branch"])
            session.move(step["from"], step["to"])
            session.commit(step["message"])
        elif op == "branch":
            repo.create_branch(step["name"], resolve(repo, step["at"]))
        elif op == "tag":
            repo.create_tag(step["name"], resolve(repo, step["at"]))
        elif op == "reset_branch":
            repo.reset_branch(step["name"], resolve(repo, step["at"]))
        elif op == "delete_branch":
            repo.delete_branch(step["name"])
        elif op == "delete_tag":
            repo.delete_tag(step["name"])
        elif op == "set_metadata":
            repo.set_metadata(step["metadata"])
        elif op == "update_metadata":
            repo.update_metadata(step["metadata"])
        elif op == "mark":  # strictly between the snapshots before and after it
            time.sleep(0.01)
            mark = datetime.now(UTC)
            time.sleep(0.01)
        else:
            assert op == "expire" and mark is not None, step
            repo.expire_snapshots(mark)


# --- what a repository holds ---------------------------------------------------------


async def _contents(store: Any) -> dict[str, str]:
    keys = sorted([key async for key in store.list()])
    found: dict[str, str] = {}
    for key in keys:
        buffer = await store.get(key, prototype=default_buffer_prototype())
        found[key] = hashlib.sha256(buffer.to_bytes()).hexdigest()[:24]
    return found


def _arrays(store: Any) -> dict[str, Any]:
    try:
        root = zarr.open_group(store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):  # the initial snapshot
        return {}
    out: dict[str, Any] = {}
    for path, node in root.members(max_depth=None):
        if isinstance(node, zarr.Array):
            values = np.asarray(node[...])
            out[path] = {"dtype": str(values.dtype), "values": values.tolist()}
    return out


def _op(update: Any) -> dict[str, Any]:
    kind = update.kind
    entry = {
        "kind": type(kind).__name__,
        "updated_at": update.updated_at.isoformat(),
        "backup_path": update.backup_path,
    }
    entry.update({f: str(getattr(kind, f)) for f in KIND_FIELDS if hasattr(kind, f)})
    return entry


DIFF_FIELDS = (
    "new_groups",
    "new_arrays",
    "deleted_groups",
    "deleted_arrays",
    "updated_groups",
    "updated_arrays",
)


def _diff(repo: Any, start: str, ref: str) -> dict[str, Any]:
    """What changed from ``start`` to the tip of ``ref``, moves included (as pairs of
    paths, in the order the library reports them: newest commit first)."""
    kind, _, name = ref.partition(":")
    found = repo.diff(from_snapshot_id=start, **{f"to_{kind}": name})
    out: dict[str, Any] = {f: sorted(getattr(found, f)) for f in DIFF_FIELDS}
    out["moved_nodes"] = [[str(p) for p in move] for move in found.moved_nodes]
    out["updated_chunks"] = {
        path: sorted(list(c) for c in coords) for path, coords in found.updated_chunks.items()
    }
    return out


def describe(repo: Any, pruned: Any = None) -> dict[str, Any]:
    """Everything a reader can see of ``repo``: refs, the ancestry of each, every
    snapshot's parent, message, metadata, time, stored keys (with a hash of their bytes)
    and array values, the diff from the first snapshot to each ref, and on spec v2 the
    operations log and repository metadata.
    ``pruned(snapshot_id)`` gives the transaction logs a snapshot carries for expired
    ancestors (spec 2.1), where the library has a way to tell."""
    spec = int(repo.spec_version)
    refs = [f"branch:{b}" for b in sorted(repo.list_branches())]
    refs += [f"tag:{t}" for t in sorted(repo.list_tags())]
    ancestry: dict[str, list[str]] = {}
    snapshots: dict[str, Any] = {}
    for ref in refs:
        kind, _, name = ref.partition(":")
        infos = list(repo.ancestry(**{kind: name}))
        ancestry[ref] = [str(info.id) for info in infos]
        for info in infos:
            if str(info.id) in snapshots:
                continue
            store = repo.readonly_session(snapshot_id=str(info.id)).store
            entry = {
                "parent": None if info.parent_id is None else str(info.parent_id),
                "message": info.message,
                "metadata": info.metadata,
                "written_at": info.written_at.isoformat(),
                "contents": sync(_contents(store)),
                "arrays": _arrays(store),
            }
            carried = pruned(str(info.id)) if pruned is not None and spec >= 2 else []
            if carried:
                entry["pruned"] = carried
            snapshots[str(info.id)] = entry
    found: dict[str, Any] = {
        "spec_version": spec,
        "refs": {ref: ids[0] for ref, ids in ancestry.items()},
        "ancestry": ancestry,
        "snapshots": snapshots,
        # on spec 2.1 a diff over expired ancestors needs the logs a snapshot carries
        "diffs": {ref: _diff(repo, ids[-1], ref) for ref, ids in ancestry.items()},
    }
    if spec >= 2:
        found["ops"] = [_op(update) for update in repo.ops_log()]
        found["metadata"] = repo.get_metadata()
    return found


def icechunk_pruned(repo: Any) -> Any:
    """icechunk's account of the expired ancestors' transaction logs of a snapshot."""

    def pruned(snapshot_id: str) -> list[str]:
        log = repo.inspect_transaction_log(snapshot_id)
        return list(log.get("synthetic_composite", {}).get("merged_pruned_ancestor_tx_logs", []))

    return pruned


def main(where: dict[str, Any], spec: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The script: icechunk creates (or opens) the repository and runs ``steps``."""
    import icechunk

    storage = make_storage(icechunk, where)
    before = None
    if spec:
        repo = icechunk.Repository.create(storage, spec_version=spec)
    else:
        repo = icechunk.Repository.open(storage)
        before = describe(repo, icechunk_pruned(repo))
    run_steps(icechunk, repo, steps)
    repo = icechunk.Repository.open(storage)  # read it afresh
    return {"before": before, "after": describe(repo, icechunk_pruned(repo))}


if __name__ == "__main__":
    where, spec, steps = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    print(json.dumps(main(where, spec, steps)))
