"""upgrade_icechunk_repository: spec v1 -> v2 keeps the whole history, the refs and the
configuration; a dry run writes nothing; an upgrade interrupted at any request loses
nothing and a second run finishes it; both ways with icechunk 2.3.0 (subprocess, skipped
without it); icechunk 1.1.21 (in process) refuses the upgraded repository clearly."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
import aicechunk.sync as icechunk
from aicechunk.drivers import MemoryDriver
from aicechunk.drivers.base import Driver
from aicechunk.format import repo_updates as ru
from aicechunk.format.repo_info import REPO_INFO_KEY, decode_repo_info
from aicechunk.testing import CountingDriver, FaultyDriver
from tests.format.test_icechunk2_interop import PYTHON

SCRIPT = Path(__file__).with_name("icechunk2_upgrade_script.py")
needs_icechunk = pytest.mark.skipif(PYTHON is None, reason="no Python with icechunk 2.3.0")


def _config() -> aic.RepositoryConfig:
    config = aic.RepositoryConfig()
    config.inline_chunk_threshold_bytes = 3
    config.caching = aic.CachingConfig(num_chunk_refs=5000)
    return config


async def _commit(repo: aic.Repository, branch: str, index: int, value: int, message: str) -> str:
    session = await repo.writable_session(branch)
    x = await zas.open_array(store=session.store, path="x")
    await x.setitem(index, value)
    return await session.commit(message, metadata={"index": index, "tags": ["a", 1.5, None]})


async def make_v1(storage: aic.Storage) -> aic.Repository:
    """A spec v1 repository with two branches, tags (one on a snapshot only it reaches,
    one deleted), a dangling snapshot and a persisted configuration."""
    repo = await aic.Repository.create(storage, _config(), spec_version=1)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w", attributes={"title": "t"})
    x = await group.create_array("x", shape=(8,), chunks=(4,), dtype="i4")
    await x.setitem(slice(None), np.arange(8, dtype="i4"))
    one = await session.commit("one", metadata={"author": "me", "n": None})
    two = await _commit(repo, "main", 0, 10, "two")
    await repo.create_branch("dev", one)
    on_dev = await _commit(repo, "dev", 4, 40, "on dev")
    await repo.create_tag("t1", two)
    await repo.create_tag("gone", on_dev)
    await repo.delete_tag("gone")
    await repo.create_branch("tmp", one)
    await repo.create_tag("orphan-tag", await _commit(repo, "tmp", 5, 50, "orphan"))
    await repo.delete_branch("tmp")
    await repo.create_branch("dang", two)
    await _commit(repo, "dang", 6, 60, "dangling")
    await repo.delete_branch("dang")
    return repo


async def describe(repo: aic.Repository) -> dict[str, Any]:
    """What ``icechunk2_upgrade_script.describe`` reports, read by aicechunk."""
    snapshots: dict[str, Any] = {}
    values: dict[str, Any] = {}
    refs = [("branch", b) for b in await repo.list_branches()]
    refs += [("tag", t) for t in await repo.list_tags()]
    for kind, name in refs:
        async for info in repo.ancestry(**{kind: name}):  # type: ignore[arg-type]
            snapshots[info.id] = {
                "parent": info.parent_id,
                "written_at": info.written_at.isoformat(),
                "message": info.message,
                "metadata": info.metadata,
            }
        session = await (
            repo.readonly_session(branch=name)
            if kind == "branch"
            else repo.readonly_session(tag=name)
        )
        x = await zas.open_array(store=session.store, path="x", mode="r")
        values[f"{kind}:{name}"] = np.asarray(await x.getitem(slice(None))).tolist()
    config = await aic.Repository.fetch_config(repo.storage)
    return {
        "spec_version": repo.spec_version,
        "branches": {b: await repo.lookup_branch(b) for b in await repo.list_branches()},
        "tags": {t: await repo.lookup_tag(t) for t in await repo.list_tags()},
        "snapshots": snapshots,
        "values": values,
        "ops": [type(u.kind).__name__ async for u in repo.ops_log()]
        if repo.spec_version > 1
        else [],
        "inline": None if config is None else config.inline_chunk_threshold_bytes,
    }


def _history(found: dict[str, Any]) -> dict[str, Any]:
    """What an upgrade keeps: all but the spec version and the ops log."""
    return {k: v for k, v in found.items() if k not in ("spec_version", "ops")}


async def _keys(driver: Driver) -> dict[str, bytes]:
    return {info.key: await driver.get(info.key) async for info in driver.list("")}


# --- aicechunk on its own ------------------------------------------------------------------


async def test_upgrade_keeps_history_refs_and_config() -> None:
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    repo = await make_v1(storage)
    before = await describe(repo)
    # settings given to open are not made permanent: the persisted ones are kept
    opened = await aic.Repository.open(
        storage, aic.RepositoryConfig({"caching": {"num_chunk_refs": 7}})
    )
    upgraded = await aic.upgrade_icechunk_repository(opened, dry_run=False)
    assert upgraded.spec_version == 2
    after = await describe(upgraded)
    assert _history(after) == _history(before)
    assert upgraded.config == _config()
    assert len(before["snapshots"]) == 5  # the dangling one is not kept, as in icechunk
    # deleted tags stay deleted, and their names used
    with pytest.raises(aic.RefNotFoundError, match="deleted"):
        await upgraded.lookup_tag("gone")
    with pytest.raises(aic.RefExistsError):
        await upgraded.create_tag("gone", before["branches"]["main"])
    # spec v1 files are gone; the repository is extended as any spec v2 one
    keys = await _keys(driver)
    assert not [k for k in keys if k.startswith("refs/") or k == "config.yaml"]
    sid = await _commit(upgraded, "main", 1, 11, "after the upgrade")
    assert (await aic.Repository.open(storage)).spec_version == 2
    history = [i.id async for i in upgraded.ancestry(branch="main")]
    assert history[0] == sid and history[1] == before["branches"]["main"]


async def test_the_ops_log_rebuilds_the_history_as_icechunk_does() -> None:
    driver = MemoryDriver()
    repo = await make_v1(aic.storage_from_driver(driver))
    upgraded = await aic.upgrade_icechunk_repository(repo, dry_run=False)
    log = [u async for u in upgraded.ops_log()]
    kinds = [u.kind for u in log]
    assert kinds[0] == ru.RepoMigrated(1, 2) and kinds[-1] == ru.RepoInitialized()
    assert all(a.updated_at > b.updated_at for a, b in itertools.pairwise(log))
    commits = [k for k in kinds if isinstance(k, ru.NewCommit)]
    # one per snapshot on a branch but the root (the initialization); the snapshot only a
    # tag reaches is listed but has no commit entry, as in icechunk's log
    assert len(commits) == 3
    assert [k.branch for k in commits].count("main") == 2
    assert ru.BranchCreated("dev") in kinds
    tags = {k.name for k in kinds if isinstance(k, ru.TagCreated)}
    assert tags == {"t1", "gone", "orphan-tag"}
    deleted = [k for k in kinds if isinstance(k, ru.TagDeleted)]
    assert [k.name for k in deleted] == ["gone"]
    assert kinds.index(deleted[0]) < kinds.index(ru.TagCreated("gone"))
    info = decode_repo_info(await driver.get(REPO_INFO_KEY))
    assert info.deleted_tags == ("gone",) and all(u.backup_path is None for u in log)
    assert info.status.availability == ru.Availability.ONLINE


async def test_a_dry_run_writes_nothing_and_says_what_it_would_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = MemoryDriver()
    await make_v1(aic.storage_from_driver(driver))
    before = await _keys(driver)
    counting = CountingDriver(driver)
    with caplog.at_level(logging.INFO, logger="aicechunk.repository.upgrade"):
        same = await aic.upgrade_icechunk_repository(
            await aic.Repository.open(aic.storage_from_driver(counting)), dry_run=True
        )
    assert same.spec_version == 1 and await _keys(driver) == before
    assert not counting.counts["put"] and not counting.counts["delete"]
    said = caplog.text
    assert "dry run, nothing written" in said and "2 branches, 2 tags, 1 deleted tags" in said
    assert "5 snapshots" in said and "its configuration" in said
    assert "1 snapshots no branch or tag reaches left out" in said  # the dangling one


async def test_without_deleting_the_v1_files_it_is_spec_v2_all_the_same() -> None:
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    repo = await make_v1(storage)
    before = await describe(repo)
    upgraded = await aic.upgrade_icechunk_repository(
        repo, dry_run=False, delete_unused_v1_files=False
    )
    assert await driver.exists("refs/branch.main/ref.json") and await driver.exists("config.yaml")
    assert _history(await describe(upgraded)) == _history(before)
    # nothing is left to do but delete them: a run that does not is refused
    with pytest.raises(aic.UnsupportedSpecVersionError, match=r"spec version 2.*upgraded from"):
        await aic.upgrade_icechunk_repository(upgraded, dry_run=False, delete_unused_v1_files=False)
    await aic.upgrade_icechunk_repository(upgraded, dry_run=False)
    assert not [k for k in await _keys(driver) if k.startswith("refs/") or k == "config.yaml"]


async def test_a_spec_v2_repository_is_refused() -> None:
    repo = await aic.Repository.create(aic.in_memory_storage(), spec_version=2)
    for dry_run in (True, False):
        with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 2 repository"):
            await aic.upgrade_icechunk_repository(repo, dry_run=dry_run)
    with pytest.raises(aic.RepositoryNotFoundError):
        await aic.upgrade_icechunk_repository(
            aic.Repository(aic.in_memory_storage(), aic.RepositoryConfig()), dry_run=True
        )


async def test_a_ref_a_stale_v1_writer_moved_is_never_deleted() -> None:
    """A spec v1 writer that opened the repository before the upgrade commits after it
    (only possible while refs/ is still there): the upgrade's cleanup refuses to delete
    the ref, whose snapshot the repo info file does not list."""
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    repo = await make_v1(storage)
    stale = await aic.Repository.open(storage)
    await aic.upgrade_icechunk_repository(repo, dry_run=False, delete_unused_v1_files=False)
    lost = await _commit(stale, "main", 2, 22, "written by a spec v1 writer")
    with pytest.raises(aic.RepositoryError, match=r"refs/branch\.main/ref\.json"):
        await aic.upgrade_icechunk_repository(repo, dry_run=False)
    assert await driver.exists("refs/branch.main/ref.json")
    assert await driver.exists(f"snapshots/{lost}")


async def test_a_v1_object_opened_before_the_upgrade_is_told_to_reopen() -> None:
    storage = aic.in_memory_storage()
    stale = await make_v1(storage)
    await aic.upgrade_icechunk_repository(await aic.Repository.open(storage), dry_run=False)
    with pytest.raises(aic.UnsupportedSpecVersionError, match=r"spec version 2 now.*open it again"):
        await stale.writable_session("main")


async def test_the_sync_facade_upgrades_too() -> None:
    storage = aic.in_memory_storage()
    await make_v1(storage)

    def upgrade() -> int:
        repo = icechunk.Repository.open(storage)
        upgraded = icechunk.upgrade_icechunk_repository(repo, dry_run=False)
        assert isinstance(upgraded, icechunk.Repository)
        return int(upgraded.spec_version)

    assert await asyncio.to_thread(upgrade) == 2


# --- crash safety ----------------------------------------------------------------------------


async def _finish(inner: MemoryDriver) -> None:
    """A second run: it finishes the upgrade, or there is nothing left to do."""
    try:
        await aic.upgrade_icechunk_repository(
            await aic.Repository.open(aic.storage_from_driver(inner)), dry_run=False
        )
    except aic.UnsupportedSpecVersionError as err:
        assert "upgraded from spec version 1" in str(err)


async def test_an_upgrade_interrupted_at_any_request_loses_nothing() -> None:
    """A fault at each request the upgrade makes (before and after it is applied): the
    repository opens, as spec v1 or v2, with its whole history; a second run finishes."""
    source = MemoryDriver()
    expected = _history(await describe(await make_v1(aic.storage_from_driver(source))))
    state = await _keys(source)
    counting = CountingDriver(MemoryDriver())
    for key, data in state.items():
        await counting.inner.put(key, data)
    await aic.upgrade_icechunk_repository(
        await aic.Repository.open(aic.storage_from_driver(counting)), dry_run=False
    )
    total = len(counting.calls)
    assert total > 20
    outcomes = {1: 0, 2: 0}
    for after in (False, True):
        for n in range(1, total + 1):
            inner = MemoryDriver()
            for key, data in state.items():
                await inner.put(key, data)
            faulty = FaultyDriver(inner, fail_calls={n}, after=after)
            with contextlib.suppress(aic.StorageError):
                await aic.upgrade_icechunk_repository(
                    await aic.Repository.open(aic.storage_from_driver(faulty)), dry_run=False
                )
            interrupted = await aic.Repository.open(aic.storage_from_driver(inner))
            outcomes[interrupted.spec_version] += 1
            assert _history(await describe(interrupted)) == expected, (n, after)
            await _finish(inner)
            done = await aic.Repository.open(aic.storage_from_driver(inner))
            assert done.spec_version == 2
            assert _history(await describe(done)) == expected, (n, after)
            left = [k for k in await _keys(inner) if k.startswith("refs/") or k == "config.yaml"]
            assert left == [], (n, after)
    assert outcomes[1] and outcomes[2]  # faults hit both sides of the repo info write


# --- icechunk 2.3.0 and 1.1.21 ----------------------------------------------------------------


def _icechunk(command: str, root: Path) -> dict[str, Any]:
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, str(SCRIPT), command, str(root)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    return found


@needs_icechunk
async def test_icechunk_reads_what_we_upgraded_and_commits_on_top(tmp_path: Path) -> None:
    root = tmp_path / "r"
    storage = aic.local_filesystem_storage(root)
    before = await describe(await make_v1(storage))
    upgraded = await aic.upgrade_icechunk_repository(
        await aic.Repository.open(storage), dry_run=False
    )
    ours = await describe(upgraded)
    theirs = _icechunk("describe", root)
    assert theirs == ours and _history(theirs) == _history(before)
    assert theirs["ops"][0] == "RepoMigrated" and theirs["ops"][-1] == "RepoInitialized"
    extended = _icechunk("extend", root)
    reread = await describe(await aic.Repository.open(storage))
    assert reread == extended
    assert reread["values"]["branch:main"][:2] == [10, 100]
    assert reread["values"]["tag:ic-tag"] == reread["values"]["branch:main"]
    assert reread["values"]["branch:dev"][2] == 200


@needs_icechunk
async def test_we_read_and_extend_what_icechunk_upgraded(tmp_path: Path) -> None:
    root = tmp_path / "r"
    storage = aic.local_filesystem_storage(root)
    before = await describe(await make_v1(storage))
    theirs = _icechunk("upgrade", root)
    repo = await aic.Repository.open(storage)
    ours = await describe(repo)
    assert ours == theirs and _history(ours) == _history(before)
    assert repo.config == _config()
    sid = await _commit(repo, "main", 3, 33, "aicechunk after icechunk's upgrade")
    await repo.create_tag("ours", sid)
    await repo.create_branch("feature", sid)
    assert _icechunk("describe", root) == await describe(await aic.Repository.open(storage))


@needs_icechunk
async def test_both_upgrades_write_the_same_repo_info(tmp_path: Path) -> None:
    """The same spec v1 repository upgraded by icechunk and by aicechunk: the same refs,
    snapshots, configuration and operations log (but for the upgrade's own time)."""
    first = tmp_path / "first"
    await make_v1(aic.local_filesystem_storage(first))
    second = tmp_path / "second"
    shutil.copytree(first, second)
    _icechunk("upgrade", first)
    await aic.upgrade_icechunk_repository(
        await aic.Repository.open(aic.local_filesystem_storage(second)), dry_run=False
    )
    theirs = decode_repo_info((first / "repo").read_bytes())
    ours = decode_repo_info((second / "repo").read_bytes())
    assert ours.latest_updates[1:] == theirs.latest_updates[1:]
    assert ours.latest_updates[0].kind == theirs.latest_updates[0].kind
    for field in ("branches", "tags", "deleted_tags", "snapshots", "status", "metadata"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert theirs.config is not None and ours.config is not None
    assert aic.RepositoryConfig.from_flex(ours.config) == aic.RepositoryConfig.from_flex(
        theirs.config
    )
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in second.iterdir())


async def test_icechunk_1_is_told_it_cannot_read_the_upgraded_repository(tmp_path: Path) -> None:
    ic = pytest.importorskip("icechunk")
    if not ic.__version__.startswith("1."):
        pytest.skip(f"icechunk {ic.__version__} in process, not 1.x")
    for delete in (True, False):
        root = tmp_path / f"delete-{delete}"
        storage = aic.local_filesystem_storage(root)
        await make_v1(storage)
        ic.Repository.open(ic.local_filesystem_storage(str(root)))  # spec v1: it reads
        await aic.upgrade_icechunk_repository(
            await aic.Repository.open(storage), dry_run=False, delete_unused_v1_files=delete
        )
        with pytest.raises(ic.IcechunkError, match="uses Icechunk v2 format, please upgrade"):
            ic.Repository.open(ic.local_filesystem_storage(str(root)))


async def test_a_grid_spec_v2_cannot_hold_is_refused_before_anything_is_written() -> None:
    # spec v1 records chunk lengths; spec v2 a dimension's chunk count as uint32: an array
    # of 2**32 chunks in a dimension, anywhere in the history, could never be committed on
    # after the upgrade, so the upgrade (and its dry run) refuses it up front
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    repo = await aic.Repository.create(storage, spec_version=1)
    session = await repo.writable_session("main")
    await zas.create_array(session.store, name="wide", shape=(2**32,), chunks=(1,), dtype="u1")
    await session.commit("a grid of 2**32 chunks")
    session = await repo.writable_session("main")
    await zas.create_array(session.store, name="small", shape=(4,), chunks=(2,), dtype="u1")
    await session.commit("later")
    before = await _keys(driver)
    counting = CountingDriver(driver)
    for dry_run in (True, False):
        with pytest.raises(aic.UnrepresentableValueError, match=r"'/wide'.*dimension 0") as info:
            await aic.upgrade_icechunk_repository(
                await aic.Repository.open(aic.storage_from_driver(counting)), dry_run=dry_run
            )
        assert str(2**32 - 1) in str(info.value)
    assert not counting.counts["put"] and not counting.counts["delete"]
    assert await _keys(driver) == before
    assert (await aic.Repository.open(storage)).spec_version == 1
