"""Repository status, feature flags, inspect_repo_info, lookup_snapshot,
list_manifest_files and fetch_spec_version (``repository/v2admin.py``): icechunk 2.3.0's
shapes and semantics, refused on spec v1 where icechunk refuses them, and both ways with
icechunk 2.3.0 (skipped without a Python that has it)."""

from __future__ import annotations

import json
import pickle
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.format import feature_flags as ff
from aicechunk.format import repo_updates as ru
from aicechunk.format.repo_info import (
    OVERWRITTEN_PREFIX,
    REPO_INFO_KEY,
    decode_repo_info,
    encode_repo_info,
)
from aicechunk.repo_info_store import RepoInfoStore
from aicechunk.repository import v2admin
from tests.format.test_icechunk2_interop import PYTHON

pytestmark = pytest.mark.filterwarnings("ignore:The LocalFileSystem storage is not safe")
needs_icechunk = pytest.mark.skipif(PYTHON is None, reason="no Python with icechunk 2.3.0")

# icechunk 2.3.0 on a local repository: runs the actions of argv[2] (JSON) in order and
# prints, for each, ["ok", result] or ["error", the class's name, the message's first line]
_SCRIPT = """
import datetime, json, sys
import numpy as np, zarr, icechunk as ic
storage = ic.local_filesystem_storage(sys.argv[1])
repo = ic.Repository.open(storage) if ic.Repository.exists(storage) else None
A = {"online": ic.RepoAvailability.online, "read_only": ic.RepoAvailability.read_only}

def status(s):
    return [str(s.availability).split(".")[-1], s.set_at.isoformat(), s.limited_availability_reason]

def flag(f):
    return [f.id, f.name, f.default_enabled, f.setting, f.enabled]

def commit(branch, n):
    session = repo.writable_session(branch)
    root = zarr.group(session.store)
    root.attrs["n"] = n
    array = root.require_array("a", shape=(8,), chunks=(2,), dtype="i4", fill_value=0)
    array[: 2 * n] = np.arange(2 * n) + n
    return session.commit(f"icechunk {n}", metadata={"n": n})

def run(action, *args):
    if action == "create":
        global repo
        repo = ic.Repository.create(storage, spec_version=args[0])
        return repo.spec_version
    if action == "status":
        return status(repo.get_status())
    if action == "status_property":
        return status(repo.status)
    if action == "set_status":
        at = None if args[1] is None else datetime.datetime.fromisoformat(args[1])
        return repo.set_status(ic.RepoStatus(A[args[0]], at, args[2]))
    if action == "flags":
        return [[flag(f) for f in sorted(fs(), key=lambda f: f.id)]
                for fs in (repo.feature_flags, repo.enabled_feature_flags,
                           repo.disabled_feature_flags)]
    if action == "set_flag":
        return repo.set_feature_flag(args[0], args[1])
    if action == "commit":
        return commit(*args)
    if action == "writable":
        return repo.writable_session(args[0]).branch
    if action == "read":
        return dict(zarr.open_group(repo.readonly_session(args[0]).store, mode="r").attrs)
    if action == "create_tag":
        return repo.create_tag(*args)
    if action == "delete_tag":
        return repo.delete_tag(*args)
    if action == "create_branch":
        return repo.create_branch(*args)
    if action == "inspect":
        return repo.inspect_repo_info()
    if action == "manifests":
        return [[m.id, m.size_bytes, m.num_chunk_refs] for m in repo.list_manifest_files(args[0])]
    if action == "lookup":
        i = repo.lookup_snapshot(args[0])
        return [i.id, i.parent_id, i.written_at.isoformat(), i.message, dict(i.metadata)]
    if action == "ancestry":
        return [i.id for i in repo.ancestry(branch=args[0])]
    if action == "spec":
        found = ic.Repository.fetch_spec_version(storage)
        return None if found is None else int(found)
    if action == "set_metadata":
        return repo.set_metadata(args[0])
    raise ValueError(action)

results = []
for action in json.loads(sys.argv[2]):
    try:
        results.append(["ok", run(*action)])
    except Exception as err:
        results.append(["error", type(err).__name__, str(err).splitlines()[0]])
print(json.dumps(results))
"""

FIRST = "1CECHNKREP0F1RSTCMT0"
T0 = datetime(2021, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)


def _icechunk(root: Path, *actions: list[Any]) -> list[Any]:
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, "-c", _SCRIPT, str(root), json.dumps(actions)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: list[Any] = json.loads(done.stdout)
    return found


def _ok(result: list[Any]) -> Any:
    assert result[0] == "ok", result
    return result[1]


def _status(status: aic.RepoStatus) -> list[Any]:
    """A status as the script prints icechunk's."""
    return [
        status.availability.name,
        status.set_at.isoformat(),
        status.limited_availability_reason,
    ]


def _flag(flag: aic.FeatureFlag) -> list[Any]:
    return [flag.id, flag.name, flag.default_enabled, flag.setting, flag.enabled]


async def _flags(repo: aic.Repository) -> list[list[list[Any]]]:
    return [
        [_flag(f) for f in await repo.feature_flags()],
        [_flag(f) for f in await repo.enabled_feature_flags()],
        [_flag(f) for f in await repo.disabled_feature_flags()],
    ]


async def _commit(repo: aic.Repository, n: int, branch: str = "main") -> str:
    session = await repo.writable_session(branch)
    root = await zas.group(store=session.store)
    await root.update_attributes({"n": n})
    array = await root.require_array("a", shape=(8,), chunks=(2,), dtype="i4", fill_value=0)
    await array.setitem(slice(0, 2 * n), np.arange(2 * n) + n)
    return await session.commit(f"aicechunk {n}", {"n": n})


async def _v2(root: Path) -> aic.Repository:
    return await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=2)


# --- spec v1 -------------------------------------------------------------------------


async def test_spec_v1_refuses_the_v2_calls_naming_the_version(tmp_path: Path) -> None:
    storage = aic.local_filesystem_storage(tmp_path)
    repo = await aic.Repository.create(storage, spec_version=1)
    calls = [
        repo.get_status(),
        repo.set_status(aic.RepoStatus(aic.RepoAvailability.read_only)),
        repo.feature_flags(),
        repo.enabled_feature_flags(),
        repo.disabled_feature_flags(),
        repo.set_feature_flag("create_tag", False),
        repo.set_feature_flag("no such flag", False),  # the version first, as icechunk
        repo.inspect_repo_info(),
    ]
    for call in calls:
        with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 1"):
            await call
    assert not (tmp_path / REPO_INFO_KEY).exists() and not (tmp_path / "overwritten").exists()
    # these work on every spec version, as in icechunk; writes need no status
    sid = await _commit(repo, 1)
    assert (await repo.lookup_snapshot(sid)).message == "aicechunk 1"
    files = await repo.list_manifest_files(sid)
    assert [(len(f.id), f.num_chunk_refs) for f in files] == [(20, 1)]
    assert files[0].size_bytes == (tmp_path / "manifests" / files[0].id).stat().st_size
    assert await repo.list_manifest_files("1CECHNKREP0F1RSTCMT0") == []
    assert await aic.Repository.fetch_spec_version(storage) == 1
    nowhere = aic.local_filesystem_storage(tmp_path / "none")
    assert await aic.Repository.fetch_spec_version(nowhere) is None


# --- status --------------------------------------------------------------------------


async def test_a_read_only_status_refuses_every_write_and_no_read(tmp_path: Path) -> None:
    repo = await _v2(tmp_path)
    first = await _commit(repo, 1)
    pending = await repo.writable_session("main")
    await (await zas.open_group(store=pending.store)).update_attributes({"pending": True})
    flushing = await repo.writable_session("main")
    await (await zas.open_group(store=flushing.store)).update_attributes({"flush": True})
    assert (await repo.get_status()).availability is aic.RepoAvailability.online
    status = aic.RepoStatus(aic.RepoAvailability.read_only, T0, "maintenance")
    assert await repo.set_status(status) is None
    assert await repo.get_status() == status
    before = (tmp_path / REPO_INFO_KEY).read_bytes()
    refused = [
        repo.writable_session("main"),
        pending.commit("refused"),
        flushing.flush("refused"),
        repo.create_branch("dev", first),
        repo.create_tag("t", first),
        repo.reset_branch("main", "1CECHNKREP0F1RSTCMT0"),
        repo.set_metadata({"a": 1}),
        repo.update_metadata({"a": 1}),
        repo.set_feature_flag("create_tag", False),
    ]
    for call in refused:
        with pytest.raises(aic.ReadOnlyRepositoryError, match="maintenance") as info:
            await call
        assert info.value.status == status
    assert (tmp_path / REPO_INFO_KEY).read_bytes() == before  # nothing changed
    # reads go on
    session = await repo.readonly_session("main")
    assert dict((await zas.open_group(store=session.store, mode="r")).attrs) == {"n": 1}
    assert [i.id async for i in repo.ancestry(branch="main")] == [first, FIRST]
    assert await repo.get_metadata() == {}
    # the error says what was refused, and pickles
    with pytest.raises(aic.ReadOnlyRepositoryError, match="Cannot create writable session"):
        await repo.writable_session("main")
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == str(info.value) and isinstance(clone, aic.RepositoryError)
    # a status change goes through whatever the status is; online again takes writes
    await repo.set_status(replace(status, limited_availability_reason="longer"))
    await repo.set_status(aic.RepoStatus(aic.RepoAvailability.online))
    second = await pending.commit("after")
    assert await repo.lookup_branch("main") == second
    log = [u.kind async for u in repo.ops_log()]
    assert log[1:3] == [
        ru.RepoStatusChanged(await repo.get_status()),
        ru.RepoStatusChanged(replace(status, limited_availability_reason="longer")),
    ]
    assert isinstance(log[0], ru.NewCommit) and log[3] == ru.RepoStatusChanged(status)
    reopened = await aic.Repository.open(aic.local_filesystem_storage(tmp_path))
    assert (await reopened.get_status()).is_online


async def test_an_offline_status_is_read_and_refuses_writes_but_is_never_set(
    tmp_path: Path,
) -> None:
    repo = await _v2(tmp_path)
    offline = aic.RepoStatus(aic.RepoAvailability.offline, T0, "gone")
    with pytest.raises(aic.InvalidInputError, match="offline"):
        await repo.set_status(offline)
    store = repo._assets.refs
    assert isinstance(store, RepoInfoStore)  # as another implementation might write it
    await store.update(
        lambda info, retry: (replace(info, status=offline), ru.RepoStatusChanged(offline)),
        check_status=False,
    )
    assert await repo.get_status() == offline
    with pytest.raises(aic.ReadOnlyRepositoryError, match="offline"):
        await repo.writable_session("main")
    await repo.readonly_session("main")


def test_repo_status_values_as_icechunk_takes_them() -> None:
    now = datetime.now(UTC)
    status = aic.RepoStatus(aic.RepoAvailability.read_only)
    assert status.set_at.tzinfo is not None and status.set_at - now < timedelta(seconds=5)
    assert status.limited_availability_reason is None
    assert aic.RepoStatus(aic.RepoAvailability.online, None, "x").set_at >= now
    assert aic.RepoAvailability.read_only is ru.Availability.READ_ONLY  # one enum
    assert [a.name for a in aic.RepoAvailability] == ["online", "read_only", "offline"]
    with pytest.raises(TypeError, match="time zone"):
        aic.RepoStatus(aic.RepoAvailability.online, datetime(2020, 1, 1))
    with pytest.raises(TypeError, match="RepoAvailability"):
        aic.RepoStatus(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str"):
        aic.RepoStatus(aic.RepoAvailability.online, now, 3)  # type: ignore[arg-type]
    shifted = datetime(2021, 3, 4, 7, 6, 7, 891000, tzinfo=timezone(timedelta(hours=2)))
    assert aic.RepoStatus(aic.RepoAvailability.online, shifted).set_at == T0


async def test_set_status_takes_a_repo_status_only(tmp_path: Path) -> None:
    repo = await _v2(tmp_path)
    with pytest.raises(TypeError, match="RepoStatus"):
        await repo.set_status("read_only")  # type: ignore[arg-type]
    assert (await repo.get_status()).is_online


# --- feature flags ---------------------------------------------------------------------


async def test_feature_flags_and_the_operations_they_guard(tmp_path: Path) -> None:
    repo = await _v2(tmp_path)
    tip = await repo.lookup_branch("main")
    await repo.create_tag("kept", tip)
    everything = await repo.feature_flags()
    assert [(f.id, f.name, f.default_enabled, f.setting, f.enabled) for f in everything] == [
        (3, "move_node", True, None, True),
        (4, "create_tag", True, None, True),
        (5, "delete_tag", True, None, True),
    ]
    assert await repo.enabled_feature_flags() == everything
    assert await repo.disabled_feature_flags() == []
    await repo.set_feature_flag("create_tag", False)
    await repo.set_feature_flag("delete_tag", False)
    with pytest.raises(aic.FeatureFlagDisabledError) as info:
        await repo.create_tag("new", tip)
    assert str(info.value) == "tag creation is disabled by a feature flag (create_tag)"
    assert isinstance(info.value, aic.SessionStateError)  # as icechunk's
    assert (info.value.feature_flag, info.value.feature_description) == (
        "create_tag",
        "tag creation",
    )
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
    with pytest.raises(aic.FeatureFlagDisabledError, match=r"tag delete .* \(delete_tag\)"):
        await repo.delete_tag("kept")
    assert await repo.list_tags() == {"kept"}
    assert [f.name for f in await repo.disabled_feature_flags()] == ["create_tag", "delete_tag"]
    await repo.set_feature_flag("create_tag", None)  # back to the default
    await repo.set_feature_flag("move_node", True)  # set on: the same as the default
    await repo.create_tag("new", tip)
    flags = {f.name: (f.setting, f.enabled) for f in await repo.feature_flags()}
    assert flags == {
        "move_node": (True, True),
        "create_tag": (None, True),
        "delete_tag": (False, False),
    }
    info_file = decode_repo_info((tmp_path / REPO_INFO_KEY).read_bytes())
    # as icechunk: a list, once written, stays (empty) when its last flag leaves it
    assert (info_file.enabled_feature_flags, info_file.disabled_feature_flags) == ((3,), (5,))
    kinds = [u.kind async for u in repo.ops_log()][1:6]
    assert kinds == [
        ru.FeatureFlagChanged(3, True),
        ru.FeatureFlagChanged(4, None),
        ru.FeatureFlagChanged(5, False),
        ru.FeatureFlagChanged(4, False),
        ru.TagCreated("kept"),
    ]
    with pytest.raises(aic.InvalidInputError, match="invalid feature flag name: 'nope'"):
        await repo.set_feature_flag("nope", True)
    with pytest.raises(TypeError, match="bool"):
        await repo.set_feature_flag("move_node", 1)  # type: ignore[arg-type]


async def test_require_feature_is_the_check_other_operations_call(tmp_path: Path) -> None:
    repo = await _v2(tmp_path)
    store = repo._assets.refs
    assert isinstance(store, RepoInfoStore)
    ff.require_feature(await store.info(), "move_node", "create rearrange session")
    await repo.set_feature_flag("move_node", False)
    with pytest.raises(aic.FeatureFlagDisabledError, match="create rearrange session"):
        ff.require_feature(await store.info(), "move_node", "create rearrange session")
    with pytest.raises(aic.InvalidInputError):
        ff.require_feature(await store.info(), "no_such_flag", "anything")
    # ids this library does not know are kept as found
    info = replace(await store.info(), disabled_feature_flags=(3, 77))
    assert ff.with_feature_flag(info, 3, None).disabled_feature_flags == (77,)
    assert [f.id for f in ff.feature_flags(info)] == [3, 4, 5]


# --- snapshots, manifests, spec versions -----------------------------------------------


async def test_lookup_snapshot_on_v2_reads_the_snapshot_list(tmp_path: Path) -> None:
    repo = await _v2(tmp_path)
    sid = await _commit(repo, 1)
    info = await repo.lookup_snapshot(sid)
    assert (info.id, info.parent_id, info.message, info.metadata) == (
        sid,
        "1CECHNKREP0F1RSTCMT0",
        "aicechunk 1",
        {"n": 1},
    )
    other = await aic.Repository.open(aic.local_filesystem_storage(tmp_path))
    (tmp_path / "snapshots" / sid).unlink()  # the list answers, not the file
    assert await other.lookup_snapshot(sid) == info
    with pytest.raises(aic.RefNotFoundError, match="does not exist"):
        await other.lookup_snapshot("AAAAAAAAAAAAAAAAAAA0")
    with pytest.raises(aic.RefNotFoundError):
        await other.lookup_snapshot("not an id")
    with pytest.raises(TypeError):
        await other.lookup_snapshot(7)  # type: ignore[arg-type]


async def test_list_manifest_files_and_fetch_spec_version_on_v2(tmp_path: Path) -> None:
    storage = aic.local_filesystem_storage(tmp_path)
    repo = await _v2(tmp_path)
    sid = await _commit(repo, 3)
    [found] = await repo.list_manifest_files(sid)
    assert isinstance(found, aic.ManifestFileInfo) and found.num_chunk_refs == 3
    assert found.size_bytes == (tmp_path / "manifests" / found.id).stat().st_size
    assert await aic.Repository.fetch_spec_version(storage) == 2
    with pytest.raises(aic.RefNotFoundError):
        await repo.list_manifest_files("AAAAAAAAAAAAAAAAAAA0")


async def test_inspect_repo_info_shape(tmp_path: Path) -> None:
    repo = await _v2(tmp_path)
    sid = await _commit(repo, 1)
    await repo.create_tag("gone", sid)
    await repo.delete_tag("gone")
    await repo.create_branch("dev", sid)
    await repo.set_metadata({"k": [1, "two"]})
    await repo.set_status(aic.RepoStatus(aic.RepoAvailability.read_only, T0, None))
    await repo.set_status(aic.RepoStatus(aic.RepoAvailability.online, T0.replace(microsecond=0)))
    await repo.set_feature_flag("create_tag", False)
    found = await repo.inspect_repo_info()
    assert list(found) == [
        "header",
        "spec_version",
        "branches",
        "tags",
        "deleted_tags",
        "snapshots",
        "metadata",
        "latest_updates",
    ]
    assert found["header"] == {
        "written_by": f"aicechunk-{aic.__version__}",
        "app_name": "aicechunk",
        "app_version": aic.__version__,
        "spec_version": "2.0",
        "file_type": "repo-info",
        "compression": "zstd",
    }
    assert found["spec_version"] == "2.0"
    assert found["branches"] == {"dev": sid, "main": sid}
    assert (found["tags"], found["deleted_tags"], found["metadata"]) == (
        {},
        ["gone"],
        {"k": [1, "two"]},
    )
    # listed by id: the initial snapshot's comes first unless the new id sorts before it
    first, ours = sorted(found["snapshots"], key=lambda s: s["id"] != "1CECHNKREP0F1RSTCMT0")
    assert "parent_id" not in first and first["metadata"] == {"__icechunk": {"is_root": True}}
    assert ours == {
        "id": sid,
        "parent_id": "1CECHNKREP0F1RSTCMT0",
        "flushed_at": ours["flushed_at"],
        "message": "aicechunk 1",
        "metadata": {"n": 1},
    }
    assert ours["flushed_at"].endswith("Z")
    types = [u["update_type"] for u in found["latest_updates"]]
    assert types[:3] == [
        {"type": "FeatureFlagChanged", "id": 4, "new_value": False},
        {
            "type": "RepoStatusChangedUpdate",
            "status": {
                "availability": "Online",
                "limited_availability_reason": None,
                "set_at": "2021-03-04T05:06:07Z",
            },
        },
        {
            "type": "RepoStatusChangedUpdate",
            "status": {
                "availability": "ReadOnly",
                "limited_availability_reason": None,
                "set_at": "2021-03-04T05:06:07.891Z",
            },
        },
    ]
    assert types[3:] == [
        {"type": "MetadataChangedUpdate"},
        {"type": "BranchCreatedUpdate", "name": "dev"},
        {"type": "TagDeletedUpdate", "name": "gone", "previous_snap_id": sid},
        {"type": "TagCreatedUpdate", "name": "gone"},
        {"type": "NewCommitUpdate", "branch": "main", "new_snap_id": sid},
        {"type": "RepoInitializedUpdate"},
    ]
    assert "backup_path" not in found["latest_updates"][0]
    assert all(u["backup_path"].startswith("repo.") for u in found["latest_updates"][1:])


def test_inspected_times_and_the_rest_of_the_log() -> None:
    assert v2admin._time(T0.replace(microsecond=123456)) == "2021-03-04T05:06:07.123456Z"
    assert v2admin._time(T0.replace(microsecond=120000)) == "2021-03-04T05:06:07.120Z"
    assert v2admin._time(T0.replace(microsecond=0)) == "2021-03-04T05:06:07Z"
    kinds = {
        ru.RepoMigrated(1, 2): {
            "type": "RepoMigratedUpdate",
            "from_version": "1.0",
            "to_version": "2.0",
        },
        ru.ConfigChanged(): {"type": "ConfigChangedUpdate"},
        ru.GCRan(): {"type": "GCRanUpdate"},
        ru.ExpirationRan(): {"type": "ExpirationRanUpdate"},
        ru.FeatureFlagChanged(3, None): {"type": "FeatureFlagChanged", "id": 3, "new_value": None},
    }
    for kind, shown in kinds.items():
        assert v2admin._update_kind(kind) == shown


# --- with icechunk 2.3.0 ---------------------------------------------------------------


@needs_icechunk
async def test_icechunk_sets_status_and_flags_we_read_and_honour(tmp_path: Path) -> None:
    repo = await _v2(tmp_path)
    first = await _commit(repo, 1)
    at = "2022-05-06T07:08:09.123456+00:00"
    seen = _icechunk(
        tmp_path,
        ["set_status", "read_only", at, "their maintenance"],
        ["set_flag", "create_tag", False],
        ["set_flag", "move_node", True],
        ["status"],
        ["status_property"],
        ["flags"],
        ["writable", "main"],
        ["create_branch", "dev", first],
        ["read", "main"],
    )
    assert [r[0] for r in seen[:3]] == ["ok", "error", "error"]  # flags: not while read-only
    assert seen[1][1] == seen[2][1] == "ReadOnlyError"
    assert _ok(seen[3]) == _ok(seen[4]) == _status(await repo.get_status())
    assert _ok(seen[3]) == ["read_only", at, "their maintenance"]
    assert _ok(seen[5]) == await _flags(repo)
    assert seen[6][:2] == seen[7][:2] == ["error", "ReadOnlyError"]
    assert _ok(seen[8]) == {"n": 1}
    for call in (repo.writable_session("main"), repo.create_branch("dev", first)):
        with pytest.raises(aic.ReadOnlyRepositoryError, match="their maintenance"):
            await call
    # online again, with flags set by icechunk: honoured here
    seen = _icechunk(
        tmp_path,
        ["set_status", "online", None, None],
        ["set_flag", "create_tag", False],
        ["set_flag", "move_node", True],
        ["flags"],
    )
    assert [r[0] for r in seen] == ["ok"] * 4
    assert _ok(seen[3]) == await _flags(repo)
    assert [f.name for f in await repo.disabled_feature_flags()] == ["create_tag"]
    with pytest.raises(aic.FeatureFlagDisabledError):
        await repo.create_tag("t", first)
    second = await _commit(repo, 2)
    assert _ok(_icechunk(tmp_path, ["ancestry", "main"])[0])[0] == second


@needs_icechunk
async def test_we_set_status_and_flags_icechunk_reads_and_honours(tmp_path: Path) -> None:
    repo = await _v2(tmp_path)
    first = await _commit(repo, 1)
    status = aic.RepoStatus(aic.RepoAvailability.read_only, T0, "our maintenance")
    await repo.set_feature_flag("delete_tag", False)
    await repo.set_feature_flag("create_tag", True)
    await repo.set_status(status)
    seen = _icechunk(
        tmp_path,
        ["status"],
        ["flags"],
        ["writable", "main"],
        ["commit", "main", 2],
        ["create_tag", "t", first],
        ["set_metadata", {"a": 1}],
        ["read", "main"],
    )
    assert _ok(seen[0]) == _status(status)
    assert _ok(seen[1]) == await _flags(repo)
    assert all(r[:2] == ["error", "ReadOnlyError"] for r in seen[2:6]), seen
    assert "our maintenance" in seen[2][2]
    assert _ok(seen[6]) == {"n": 1}
    await repo.set_status(aic.RepoStatus(aic.RepoAvailability.online))
    await repo.create_tag("t", first)
    seen = _icechunk(
        tmp_path, ["status"], ["delete_tag", "t"], ["create_tag", "u", first], ["commit", "main", 2]
    )
    assert _ok(seen[0]) == _status(await repo.get_status())
    assert seen[1] == [
        "error",
        "SessionStateError",
        "tag delete is disabled by a feature flag (delete_tag)",
    ]
    assert seen[2] == ["ok", None]
    assert await repo.list_tags() == {"t", "u"}
    assert (await repo.lookup_snapshot(_ok(seen[3]))).message == "icechunk 2"


async def _history_by_both(root: Path) -> tuple[aic.Repository, list[str]]:
    """A spec v2 repository both libraries wrote: commits, branches, tags, a deleted tag,
    metadata, status changes and feature flags; the snapshot ids."""
    repo = await _v2(root)
    ids = [await _commit(repo, 1)]
    await repo.create_branch("dev", ids[0])
    await repo.create_tag("v1", ids[0])
    seen = _icechunk(
        root,
        ["commit", "dev", 2],
        ["create_tag", "gone", ids[0]],
        ["delete_tag", "gone"],
        ["set_metadata", {"owner": "them", "n": [1, 2.5, None]}],
        ["set_status", "read_only", "2022-01-02T03:04:05+00:00", "x"],
        ["set_status", "online", None, None],
        ["set_flag", "move_node", False],
    )
    ids.append(_ok(seen[0]))
    await repo.update_metadata({"by": "us"})
    await repo.set_feature_flag("move_node", None)
    ids.append(await _commit(repo, 3, "dev"))
    return repo, ids


@needs_icechunk
async def test_inspect_repo_info_equals_icechunks(tmp_path: Path) -> None:
    repo, ids = await _history_by_both(tmp_path)
    # we wrote the file last
    [theirs] = _icechunk(tmp_path, ["inspect"])
    assert await repo.inspect_repo_info() == _ok(theirs)
    assert _ok(theirs)["header"]["app_name"] == "aicechunk"
    # icechunk wrote it last
    seen = _icechunk(tmp_path, ["commit", "main", 4], ["inspect"])
    ours = await repo.inspect_repo_info()
    assert ours == _ok(seen[1]) and ours["header"]["written_by"] == "ic-2.3.0"
    for sid in [*ids, _ok(seen[0])]:
        expected = _ok(_icechunk(tmp_path, ["lookup", sid])[0])
        info = await repo.lookup_snapshot(sid)
        assert [info.id, info.parent_id, info.written_at.isoformat(), info.message] == expected[:4]
        assert info.metadata == expected[4]


@needs_icechunk
async def test_inspect_repo_info_with_the_log_cut_equals_icechunks(tmp_path: Path) -> None:
    repo = await _v2(tmp_path)
    for i in range(4):
        await repo.update_metadata({"i": i})
    # the log cut after two entries, as one past 1000 entries is cut (``push_update``):
    # the third entry's copy holds the rest (1000 real updates would take a minute)
    info = decode_repo_info((tmp_path / REPO_INFO_KEY).read_bytes())
    third = info.latest_updates[2].backup_path
    cut = replace(info, latest_updates=info.latest_updates[:2], repo_before_updates=third)
    (tmp_path / REPO_INFO_KEY).write_bytes(encode_repo_info(cut))
    found = await repo.inspect_repo_info()
    assert len(found["latest_updates"]) == 2 and found["repo_before_updates"] == third
    assert list(found)[-1] == "repo_before_updates"
    assert (tmp_path / OVERWRITTEN_PREFIX / third).exists()
    assert found == _ok(_icechunk(tmp_path, ["inspect"])[0])


@needs_icechunk
@pytest.mark.parametrize("spec_version", [1, 2])
async def test_list_manifest_files_and_spec_version_equal_icechunks(
    tmp_path: Path, spec_version: int
) -> None:
    storage = aic.local_filesystem_storage(tmp_path)
    repo = await aic.Repository.create(storage, spec_version=spec_version)
    ids = ["1CECHNKREP0F1RSTCMT0", await _commit(repo, 1)]
    seen = _icechunk(tmp_path, ["commit", "main", 3])
    ids.append(_ok(seen[0]))
    ids.append(await _commit(repo, 4))
    seen = _icechunk(
        tmp_path,
        ["spec"],
        *[["manifests", sid] for sid in ids],
        ["manifests", "AAAAAAAAAAAAAAAAAAA0"],
    )
    assert _ok(seen[0]) == await aic.Repository.fetch_spec_version(storage) == spec_version
    for sid, theirs in zip(ids, seen[1:], strict=False):
        ours = [[f.id, f.size_bytes, f.num_chunk_refs] for f in await repo.list_manifest_files(sid)]
        assert ours == _ok(theirs)
    assert seen[-1][0] == "error"
    with pytest.raises(aic.RefNotFoundError):
        await repo.list_manifest_files("AAAAAAAAAAAAAAAAAAA0")
    assert [len(_ok(s)) for s in seen[1:-1]] == [0, 1, 1, 1]


@needs_icechunk
async def test_fetch_spec_version_where_there_is_no_repository(tmp_path: Path) -> None:
    assert _ok(_icechunk(tmp_path / "none", ["spec"])[0]) is None
    assert await aic.Repository.fetch_spec_version(aic.local_filesystem_storage(tmp_path)) is None
