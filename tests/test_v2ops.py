"""Spec v2's operations log and repository metadata: refused on spec v1, round trips in
aicechunk, and both ways with icechunk 2.3.0 (skipped without a Python that has it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import aicechunk as aic
from aicechunk.format import repo_updates as ru
from aicechunk.format.repo_info import OVERWRITTEN_PREFIX
from tests.format.test_icechunk2_interop import PYTHON

# icechunk 2.3.0 on a local repository: optionally set or update metadata from argv[3],
# then print its metadata and its whole ops log (kind, fields, time, backup path)
_SCRIPT = """
import json, sys, icechunk
repo = icechunk.Repository.open(icechunk.local_filesystem_storage(sys.argv[1]))
result = None
if sys.argv[2] == "set":
    result = repo.set_metadata(json.loads(sys.argv[3]))
elif sys.argv[2] == "update":
    result = repo.update_metadata(json.loads(sys.argv[3]))
ops = [
    [type(u.kind).__name__,
     {f: str(getattr(u.kind, f)) for f in getattr(type(u.kind), "__match_args__", ())},
     u.updated_at.isoformat(), u.backup_path]
    for u in repo.ops_log()
]
print(json.dumps({"result": result, "metadata": repo.get_metadata(), "ops": ops}))
"""


def _icechunk(root: Path, *args: str) -> dict[str, Any]:
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, "-c", _SCRIPT, str(root), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def _shape(update: ru.Update) -> list[Any]:
    """An update as the script prints icechunk's."""
    fields = getattr(type(update.kind), "__dataclass_fields__", {})
    return [
        type(update.kind).__name__,
        {f: str(getattr(update.kind, f)) for f in fields},
        update.updated_at.isoformat(),
        update.backup_path,
    ]


needs_icechunk = pytest.mark.skipif(PYTHON is None, reason="no Python with icechunk 2.3.0")


async def test_spec_v1_refuses_each_naming_the_version(tmp_path: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path), spec_version=1)
    with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 1"):
        _ = [u async for u in repo.ops_log()]
    with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 1"):
        await repo.get_metadata()
    with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 1"):
        await repo.set_metadata({"a": 1})
    with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 1"):
        await repo.update_metadata({"a": 1})
    assert not (tmp_path / "repo").exists() and not (tmp_path / "overwritten").exists()


async def test_metadata_round_trip_and_its_ops_log(tmp_path: Path) -> None:
    storage = aic.local_filesystem_storage(tmp_path)
    repo = await aic.Repository.create(storage, spec_version=2)
    assert await repo.get_metadata() == {}
    await repo.set_metadata({"a": 1, "b": {"c": [1, 2]}})  # returns None, as icechunk
    merged = await repo.update_metadata({"b": 2, "z": None})
    assert merged == {"a": 1, "b": 2, "z": None}  # a None value is kept, not a deletion
    reopened = await aic.Repository.open(storage)
    assert await reopened.get_metadata() == merged
    await reopened.set_metadata({"only": "this"})
    assert await repo.get_metadata() == {"only": "this"}
    log = [u async for u in reopened.ops_log()]
    assert [type(u.kind) for u in log] == [ru.MetadataChanged] * 3 + [ru.RepoInitialized]
    assert [u.updated_at for u in log] == sorted((u.updated_at for u in log), reverse=True)
    assert log[0].backup_path is None
    for update in log[1:]:
        assert update.backup_path is not None
        assert (tmp_path / OVERWRITTEN_PREFIX / update.backup_path).exists()
    # a value the format cannot hold is refused before anything is written
    before = sorted((tmp_path / OVERWRITTEN_PREFIX).iterdir())
    with pytest.raises(aic.UnrepresentableValueError):
        await repo.update_metadata({"bad": object()})
    with pytest.raises(TypeError):
        await repo.set_metadata({1: "x"})  # type: ignore[dict-item]
    assert sorted((tmp_path / OVERWRITTEN_PREFIX).iterdir()) == before
    assert await repo.get_metadata() == {"only": "this"}


async def test_ops_log_follows_the_overwritten_copies_when_cut(tmp_path: Path) -> None:
    storage = aic.local_filesystem_storage(tmp_path)
    repo = await aic.Repository.create(storage, spec_version=2)
    await repo.create_tag("t", await repo.lookup_branch("main"))
    await repo.delete_tag("t")  # an entry with a snapshot id in it
    for i in range(1003):  # past the 1000 entries one file keeps
        await repo.update_metadata({"i": i})
    log = [u async for u in repo.ops_log()]
    assert len(log) == 1006
    assert isinstance(log[-1].kind, ru.RepoInitialized)
    assert [u.updated_at for u in log] == sorted((u.updated_at for u in log), reverse=True)
    assert all(u.backup_path is not None for u in log[1:])
    if PYTHON is not None:  # icechunk follows the same copies to the same entries
        assert _icechunk(tmp_path, "read")["ops"] == [_shape(u) for u in log]


@needs_icechunk
async def test_icechunk_sets_we_read_metadata_and_its_entry(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=2)
    meta = {"owner": "them", "n": 3, "nested": {"z": [1, 2.5], "a": None}}
    seen = _icechunk(root, "set", json.dumps(meta))
    assert seen["result"] is None
    seen = _icechunk(root, "update", json.dumps({"n": 4}))
    assert seen["result"] == {**meta, "n": 4}
    repo = await aic.Repository.open(aic.local_filesystem_storage(root))
    assert await repo.get_metadata() == {**meta, "n": 4}
    ours = [_shape(u) async for u in repo.ops_log()]
    assert ours == seen["ops"]
    assert [o[0] for o in ours] == ["MetadataChanged", "MetadataChanged", "RepoInitialized"]


@needs_icechunk
async def test_we_set_icechunk_reads_metadata_and_our_entry(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    repo = await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=2)
    await repo.create_branch("dev", await repo.lookup_branch("main"))
    await repo.set_metadata({"owner": "us", "list": [1, "two", None], "deep": {"x": True}})
    merged = await repo.update_metadata({"owner": "still us"})
    seen = _icechunk(root, "read")
    assert seen["metadata"] == merged
    assert seen["ops"] == [_shape(u) async for u in repo.ops_log()]
    assert [o[0] for o in seen["ops"]] == [
        "MetadataChanged",
        "MetadataChanged",
        "BranchCreated",
        "RepoInitialized",
    ]
    # and icechunk's update on top of ours, read back by us
    seen = _icechunk(root, "update", json.dumps({"by": "icechunk"}))
    assert await repo.get_metadata() == {**merged, "by": "icechunk"}
    assert [_shape(u) async for u in repo.ops_log()] == seen["ops"]
