"""Spec v1 with icechunk 1.1.21, the last icechunk that reads only spec v1, by subprocess.

The development baseline is Python 3.12 with icechunk 2.3.0 in-process; icechunk 1.1.21
needs its own interpreter: this one when it has icechunk 1.1.21 (the test extra installs it
on Python 3.11), else ``AICECHUNK_IC1_PY``, a Python with ``aicechunk`` and
``icechunk==1.1.21`` (``.ci/run`` makes ``.venv-ic1`` on Python 3.11). It drives
``tests/icechunk1_script.py``: icechunk 1.1.21 reads a repository aicechunk wrote (every
node's zarr.json, every array's values, attributes, refs and ancestry), commits on it, and
aicechunk reads that, then the other way once more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas
from zarr.core.buffer import default_buffer_prototype

import aicechunk as aic

SCRIPT = Path(__file__).with_name("icechunk1_script.py")
HOW = (
    "set AICECHUNK_IC1_PY to a Python 3.11 with icechunk 1.1.21, e.g. python3.11 -m venv "
    ".venv-ic1 && .venv-ic1/bin/pip install -e . icechunk==1.1.21 (.ci/run does)"
)


def _python() -> str | None:
    """A Python with icechunk 1.1.21: this one if it has it, else ``AICECHUNK_IC1_PY``."""
    for candidate in (sys.executable, os.environ.get("AICECHUNK_IC1_PY")):
        if not candidate or not Path(candidate).exists():
            continue
        done = subprocess.run(
            [candidate, "-c", "import icechunk; print(icechunk.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0 and done.stdout.strip() == "1.1.21":
            return candidate
    return None


PYTHON = _python()
pytestmark = pytest.mark.skipif(PYTHON is None, reason=f"no icechunk 1.1.21: {HOW}")


def icechunk1(command: str, root: Path) -> dict[str, Any]:
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, str(SCRIPT), command, str(root)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    assert found.pop("version") == "1.1.21"
    return found


def plain_diff(diff: Any) -> dict[str, Any]:
    """What ``icechunk1_script.plain_diff`` reports."""
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


async def _tree(session: aic.Session) -> dict[str, Any]:
    """What ``icechunk1_script.tree`` reports, read by aicechunk."""
    store = session.store
    nodes = {}
    async for key in store.list():
        if key == "zarr.json" or key.endswith("/zarr.json"):
            buf = await store.get(key, prototype=default_buffer_prototype())
            assert buf is not None
            nodes[key[: -len("zarr.json")].rstrip("/")] = json.loads(buf.to_bytes())
    values = {}
    for path, doc in nodes.items():
        if doc["node_type"] == "array":
            array = await zas.open_array(store=store, path=path, mode="r")
            values[path] = np.asarray(await array.getitem(...)).tolist()
    return {"nodes": nodes, "values": values}


async def describe(repo: aic.Repository) -> dict[str, Any]:
    """What ``icechunk1_script.describe`` reports, read by aicechunk."""
    snapshots: dict[str, Any] = {}
    for branch in await repo.list_branches():
        async for info in repo.ancestry(branch=branch):
            parent = info.parent_id
            diff = None
            if parent:
                diff = plain_diff(await repo.diff(from_snapshot_id=parent, to_snapshot_id=info.id))
            snapshots[info.id] = {
                "parent": parent,
                "message": info.message,
                "metadata": info.metadata,
                "diff": diff,
                **await _tree(await repo.readonly_session(snapshot_id=info.id)),
            }
    return {
        "branches": {b: await repo.lookup_branch(b) for b in await repo.list_branches()},
        "tags": {t: await repo.lookup_tag(t) for t in await repo.list_tags()},
        "snapshots": snapshots,
    }


async def aicechunk_writes(root: Path) -> aic.Repository:
    """A spec v1 repository: groups, arrays of several dtypes (inline chunks too),
    attributes, dimension names, a resize, three commits on two branches, a tag, a
    deleted tag."""
    repo = await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=1)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w", attributes={"title": "v1"})
    grid = await group.create_array(
        "grid", shape=(4, 6), chunks=(2, 4), dtype="i4", dimension_names=("y", "x")
    )
    await grid.setitem(..., np.arange(24, dtype="i4").reshape(4, 6))
    deeper = await group.create_group("sub/deeper", attributes={"level": 2, "k": [1, "a"]})
    f8 = await deeper.create_array("f8", shape=(5,), chunks=(5,), dtype="f8", fill_value=0.5)
    await f8.setitem(slice(0, 3), np.array([1.5, -2.0, 1e300]))
    small = await group.create_array("small", shape=(4,), chunks=(2,), dtype="u1")
    await small.setitem(..., np.array([1, 2, 3, 4], dtype="u1"))  # inline chunks
    text = await group.create_array("text", shape=(3,), chunks=(2,), dtype="str")
    await text.setitem(..., np.array(["a", "bé", ""]))
    flags = await group.create_array("flags", shape=(3,), chunks=(3,), dtype="bool")
    await flags.setitem(..., np.array([True, False, True]))
    first = await session.commit("first", {"author": "aicechunk", "n": [1, None]})
    await repo.create_branch("dev", first)
    await repo.create_tag("v1", first)
    await repo.create_tag("gone", first)
    await repo.delete_tag("gone")
    session = await repo.writable_session("main")
    grid = await zas.open_array(store=session.store, path="grid", mode="r+")
    await grid.setitem((slice(2, 4), slice(None)), -1)
    small = await zas.open_array(store=session.store, path="small", mode="r+")
    await small.resize((1,))  # logs the chunk it deletes, past the new end, as icechunk 2.x
    (await zas.open_group(store=session.store, path="sub", mode="r+")).attrs.update({"x": 1})
    await session.commit("second")
    session = await repo.writable_session("dev")
    small = await zas.open_array(store=session.store, path="small", mode="r+")
    await small.setitem(0, 9)
    await session.commit("on dev")
    return repo


async def test_icechunk1_reads_our_v1_repository_and_we_read_its_commit(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    repo = await aicechunk_writes(root)
    assert repo.spec_version == 1
    assert icechunk1("read", root) == await describe(repo)

    theirs = icechunk1("commit", root)
    repo = await aic.Repository.open(aic.local_filesystem_storage(root))
    assert repo.spec_version == 1
    assert await describe(repo) == theirs
    tip = theirs["snapshots"][theirs["branches"]["main"]]
    assert tip["message"] == "icechunk 1.1.21 on top"
    assert "text" not in tip["nodes"] and tip["values"]["from_ic1/z"] == [7, 8, 9]

    # and once more the other way: our commit on theirs, read by icechunk 1.1.21
    session = await repo.writable_session("ic1")
    z = await zas.open_array(store=session.store, path="from_ic1/z", mode="r+")
    await z.setitem(slice(1, 3), 0)
    await session.commit("aicechunk on icechunk's")
    assert repo.spec_version == 1
    assert icechunk1("read", root) == await describe(repo)
