"""Interop both ways with icechunk 2.3.0 on moto S3 (and local storage), spec 1, 2 and 2.1.

One side creates a repository and runs the writer steps (commits, branches, tags, and
more on spec v2); the other reads everything (every stored key of every snapshot, array
values, attributes, ancestry, the operations log, repository metadata) and must see what
the writer sees, then extends it (the steps on top); the writer reads that back. Both
sides run the same interpreter, ``tests/interop_steps.py``: icechunk 2.3.0 in a Python
>= 3.12 (``AICECHUNK_PY312``, else ``/work/venv312/bin/python``; skipped without one),
aicechunk through ``aicechunk.sync``, icechunk's API. S3 is the tests' moto server on
127.0.0.1, reached by both.

Spec 2.1 is spec 2 with ``pruned_ancestor_tx_logs`` in the repo info file's snapshot
entries, written by icechunk's ``expire_snapshots``: we read such a repository, commit on
top, and icechunk must still find every pruned list.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import aicechunk.sync as ours
from aicechunk.format.repo_info import REPO_INFO_KEY, decode_repo_info
from tests import interop_steps
from tests.format.test_icechunk2_interop import PYTHON
from tests.servers import create_s3_bucket, next_bucket_name

pytestmark = pytest.mark.skipif(PYTHON is None, reason="no Python with icechunk 2.3.0")

ICECHUNK, AICECHUNK = "icechunk", "aicechunk"
BOTH = frozenset({ICECHUNK, AICECHUNK})

X = {"array": "a/x", "shape": [8], "chunks": [4], "dtype": "i4", "fill_value": 0}
Y = {"array": "a/y", "shape": [6], "chunks": [2], "dtype": "f8", "fill_value": 0.5}

#: (step, the lowest spec version it runs on, the writers that can run it), in order
WRITER_STEPS: list[tuple[dict[str, Any], int, frozenset[str]]] = [
    (
        {
            "op": "commit",
            "branch": "main",
            "message": "first",
            "metadata": {"k": [1, -2, "two", {"b": 3.5, "é": True}], "n": None},
            "writes": [
                {"group": "", "attrs": {"title": "t"}},
                {**X, "attrs": {"units": "m"}, "dimension_names": ["t"]},
                {"set": "a/x", "start": 0, "values": list(range(8))},
                Y,
                {"set": "a/y", "start": 1, "values": [1.25, -2.0]},
                {"group": "grp", "attrs": {"nested": {"z": [1, 2], "a": None}}},
            ],
        },
        1,
        BOTH,
    ),
    ({"op": "branch", "name": "dev", "at": "branch:main"}, 1, BOTH),
    (
        {
            "op": "commit",
            "branch": "dev",
            "message": "on dev",
            "writes": [
                {"set": "a/x", "start": 0, "values": [7, 7, 7, 7]},
                {"attrs": "a/x", "update": {"note": "dev"}},
            ],
        },
        1,
        BOTH,
    ),
    ({"op": "tag", "name": "v1", "at": "branch:main"}, 1, BOTH),
    ({"op": "tag", "name": "gone", "at": "branch:dev"}, 1, BOTH),
    ({"op": "delete_tag", "name": "gone"}, 1, BOTH),
    (
        {
            "op": "commit",
            "branch": "main",
            "message": "second",
            "writes": [
                {"set": "a/x", "start": 4, "values": [40, 41]},
                {"delete": "grp"},
                {"group": "h", "attrs": {"k": [1, 2]}},
            ],
        },
        1,
        BOTH,
    ),
    (
        {
            "op": "amend",
            "branch": "main",
            "message": "second, amended",
            "writes": [{"attrs": "", "update": {"amended": True}}],
        },
        2,
        BOTH,
    ),
    (
        {"op": "move", "branch": "main", "from": "/a", "to": "/b", "message": "moved"},
        2,
        BOTH,
    ),
    (
        {
            "op": "flush",
            "branch": "main",
            "message": "detached",
            "tag": "detached",
            "writes": [{"attrs": "h", "update": {"detached": True}}],
        },
        2,
        BOTH,
    ),
    ({"op": "branch", "name": "tmp", "at": "branch:main"}, 1, BOTH),
    ({"op": "delete_branch", "name": "tmp"}, 1, BOTH),
    ({"op": "reset_branch", "name": "dev", "at": "ancestor:main:1"}, 1, BOTH),
    ({"op": "set_metadata", "metadata": {"owner": "me", "n": 3, "big": 2**62}}, 2, BOTH),
    ({"op": "update_metadata", "metadata": {"n": 4, "new": [True]}}, 2, BOTH),
]

#: what the reader does on top of what the writer made: (step, lowest spec version, the
#: readers that can run it)
ON_TOP: list[tuple[dict[str, Any], int, frozenset[str]]] = [
    (
        {
            "op": "commit",
            "branch": "main",
            "message": "on top",
            "metadata": {"by": "the reader"},
            "writes": [
                {"array": "top/z", "shape": [5], "chunks": [2], "dtype": "i8", "fill_value": -1},
                {"set": "top/z", "start": 1, "values": [10, 20, 30]},
                {"attrs": "", "update": {"on_top": True}},
                {"attrs": "h", "update": {"k": "changed"}},
            ],
        },
        1,
        BOTH,
    ),
    (
        {
            "op": "amend",
            "branch": "main",
            "message": "on top, amended",
            "writes": [{"set": "top/z", "start": 0, "values": [5]}],
        },
        2,
        BOTH,
    ),
    (
        {"op": "move", "branch": "main", "from": "/top", "to": "/moved", "message": "moved"},
        2,
        BOTH,
    ),
    ({"op": "tag", "name": "top-tag", "at": "branch:main"}, 1, BOTH),
    ({"op": "branch", "name": "top", "at": "branch:main"}, 1, BOTH),
    (
        {
            "op": "commit",
            "branch": "top",
            "message": "on the top branch",
            "writes": [{"group": "g2", "attrs": {"x": 1}}, {"delete": "h"}],
        },
        1,
        BOTH,
    ),
    ({"op": "delete_tag", "name": "v1"}, 1, BOTH),
    ({"op": "reset_branch", "name": "dev", "at": "branch:main"}, 1, BOTH),
    ({"op": "update_metadata", "metadata": {"reader": "was here"}}, 2, BOTH),
]

#: spec 2.1: icechunk expires what came before the mark; two commits come after it
EXPIRE = [
    {"op": "mark"},
    {
        "op": "commit",
        "branch": "main",
        "message": "after the mark",
        "writes": [{"attrs": "", "update": {"after": 1}}],
    },
    {
        "op": "commit",
        "branch": "main",
        "message": "after the mark, 2",
        "writes": [{"attrs": "", "update": {"after": 2}}],
    },
    {"op": "expire"},
]


def writer_steps(spec: int, writer: str) -> list[dict[str, Any]]:
    return [step for step, lowest, who in WRITER_STEPS if spec >= lowest and writer in who]


def on_top(spec: int, reader: str) -> list[dict[str, Any]]:
    return [step for step, lowest, who in ON_TOP if spec >= lowest and reader in who]


def messages(found: dict[str, Any], ref: str) -> list[str]:
    return [found["snapshots"][sid]["message"] for sid in found["ancestry"][ref]]


# --- the two sides ---------------------------------------------------------------------


def icechunk(where: dict[str, Any], spec: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """icechunk 2.3.0 creates (``spec``; 0: opens) the repository at ``where``, runs
    ``steps``; what it saw before and after (see ``interop_steps.main``)."""
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, interop_steps.__file__, json.dumps(where), str(spec), json.dumps(steps)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def our_pruned(storage: Any) -> Any:
    """The pruned transaction logs of each snapshot, from the repo info file as we decode
    it (aicechunk has no ``inspect_transaction_log`` yet)."""

    async def read() -> bytes:
        driver = storage.driver()
        try:
            return await driver.get(REPO_INFO_KEY)
        finally:
            await driver.close()

    info = decode_repo_info(asyncio.run(read()))
    carried = {str(s.id): [str(i) for i in s.pruned_ancestor_tx_logs] for s in info.snapshots}
    return lambda snapshot_id: carried.get(snapshot_id, [])


def describe_ours(where: dict[str, Any]) -> dict[str, Any]:
    storage = interop_steps.make_storage(ours, where)
    repo = ours.Repository.open(storage)
    pruned = our_pruned(storage) if repo.spec_version >= 2 else None
    return interop_steps.describe(repo, pruned)


def where_of(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if kind == "local":
        return {"kind": "local", "path": str(tmp_path / "repo")}
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = next_bucket_name()
    create_s3_bucket(endpoint, bucket)
    return {"kind": "s3", "bucket": bucket, "prefix": "repo", "endpoint": endpoint}


def kinds(found: dict[str, Any]) -> list[str]:
    return [op["kind"] for op in found.get("ops", [])]


# --- the tests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "spec"),
    [("s3", "1"), ("s3", "2"), ("s3", "2.1"), ("local", "2.1")],
)
def test_icechunk_writes_we_read_and_extend(
    kind: str, spec: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = where_of(kind, tmp_path, request)
    version = int(float(spec))
    steps = writer_steps(version, ICECHUNK) + (EXPIRE if spec == "2.1" else [])
    written = icechunk(where, version, steps)["after"]
    assert written["spec_version"] == version
    if version >= 2:
        assert {"CommitAmended", "NewDetachedSnapshot", "MetadataChanged"} <= set(kinds(written))
    pruned = {sid: s["pruned"] for sid, s in written["snapshots"].items() if "pruned" in s}
    assert bool(pruned) == (spec == "2.1")  # what makes it 2.1: ancestors' logs carried

    # we read all of it as icechunk does
    assert describe_ours(where) == written
    # and extend it
    storage = interop_steps.make_storage(ours, where)
    interop_steps.run_steps(ours, ours.Repository.open(storage), on_top(version, AICECHUNK))
    extended = describe_ours(where)
    assert extended["spec_version"] == version
    on_main = messages(extended, "branch:main")
    assert on_main[:2] == (["moved", "on top, amended"] if version >= 2 else ["on top", "second"])
    for sid, carried in pruned.items():  # kept through our commits
        assert extended["snapshots"][sid]["pruned"] == carried

    # icechunk reads what we made, as we do
    assert icechunk(where, 0, [])["before"] == extended


@pytest.mark.parametrize("kind", ["s3"])
@pytest.mark.parametrize("spec", [1, 2])
def test_we_write_icechunk_reads_and_extends(
    kind: str, spec: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = where_of(kind, tmp_path, request)
    storage = interop_steps.make_storage(ours, where)
    repo = ours.Repository.create(storage, spec_version=spec)
    interop_steps.run_steps(ours, repo, writer_steps(spec, AICECHUNK))
    written = describe_ours(where)
    assert written["spec_version"] == spec
    if spec >= 2:
        assert {"NewDetachedSnapshot", "MetadataChanged", "BranchReset"} <= set(kinds(written))

    # icechunk reads all of it as we do, and extends it
    seen = icechunk(where, 0, on_top(spec, ICECHUNK))
    assert seen["before"] == written
    extended = seen["after"]
    on_main = messages(extended, "branch:main")
    assert on_main[:2] == (["moved", "on top, amended"] if spec >= 2 else ["on top", "second"])

    # we read what icechunk made, as it does
    assert describe_ours(where) == extended
