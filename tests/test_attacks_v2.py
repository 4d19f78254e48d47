"""Attacks on spec v2 repositories: crafted ``repo`` files and ``overwritten/`` copies
(parent loops, backup chains that loop or leave ``overwritten/``, the end of time, hostile
ref names), swapped files of the wrong spec version, and mutated repo info files of ours
and icechunk 2.3.0's used every way the library uses them.

Every attack must end in a typed ``AicechunkError`` that names the file, or succeed
without harm, within a deadline (``tests.deadline``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.errors import AicechunkError, FormatError
from aicechunk.format import repo_updates as ru
from aicechunk.format.header import HEADER_SIZE, FileType, decode_versioned
from aicechunk.format.repo_info import (
    OVERWRITTEN_PREFIX,
    REPO_INFO_KEY,
    RepoInfo,
    decode_repo_info,
    encode_repo_info,
)
from aicechunk.format.snapshot import decode_snapshot, encode_snapshot
from aicechunk.format.timestamps import EPOCH, MAX_MICROS
from aicechunk.format.transaction_log import (
    decode_transaction_log,
    encode_transaction_log,
)
from aicechunk.testing import CountingDriver
from tests.deadline import bounded, collect, deadline
from tests.format.corruption import mutate
from tests.format.test_attacks_v2 import NOW, wrap

# --- repositories with crafted repo info files ------------------------------------------


async def v2_repo(driver: MemoryDriver | None = None) -> tuple[MemoryDriver, aic.Repository]:
    """A spec v2 repository: two commits on main, branch dev, tag t."""
    driver = driver or MemoryDriver()
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=2)
    for n in range(2):
        session = await repo.writable_session("main")
        if n == 0:
            arr = await zas.create_array(
                session.store, name="x", shape=(4,), chunks=(1,), dtype="i4"
            )
        else:
            arr = await zas.open_array(store=session.store, path="x")
        await arr.setitem(slice(None), np.full(4, n, dtype="i4"))
        await session.commit(f"commit {n}")
    tip = await repo.lookup_branch("main")
    await repo.create_branch("dev", tip)
    await repo.create_tag("t", tip)
    return driver, repo


async def stored_info(driver: MemoryDriver) -> RepoInfo:
    return decode_repo_info(await driver.get(REPO_INFO_KEY), REPO_INFO_KEY)


async def reopen(driver: MemoryDriver) -> aic.Repository:
    return await aic.Repository.open(aic.storage_from_driver(driver))


async def keys(driver: MemoryDriver) -> dict[str, bytes]:
    return {info.key: await driver.get(info.key) async for info in driver.list("")}


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize("shape", ["two-cycle", "self"])
async def test_parents_forming_a_cycle(shape: str) -> None:
    driver, _ = await v2_repo()
    info = await stored_info(driver)
    tip = info.branches["main"]
    chain = list(info.ancestry(tip))
    assert len(chain) == 3
    root = chain[-1].id
    looped = tip if shape == "two-cycle" else root
    snapshots = tuple(replace(s, parent_id=looped) if s.id == root else s for s in info.snapshots)
    await driver.put(REPO_INFO_KEY, encode_repo_info(replace(info, snapshots=snapshots)))
    repo = await reopen(driver)
    with pytest.raises(FormatError, match="loops"):
        await bounded(collect(repo.ancestry(branch="main")))
    with deadline(), pytest.raises(FormatError, match="loops"):
        list((await stored_info(driver)).ancestry(tip))


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize("shape", ["self", "two-cycle", "three-cycle"])
async def test_a_backup_chain_that_loops(shape: str) -> None:
    """``repo_before_updates`` links copies that link back: the ops log must end."""
    driver, repo = await v2_repo()
    info = await stored_info(driver)
    names = {"self": ["a"], "two-cycle": ["a", "b"], "three-cycle": ["a", "b", "c"]}[shape]
    for i, name in enumerate(names):
        nxt = names[(i + 1) % len(names)]
        at = info.latest_updates[-1].updated_at - timedelta(days=i + 1)
        old = replace(
            info, latest_updates=(ru.Update(ru.MetadataChanged(), at),), repo_before_updates=nxt
        )
        await driver.put(OVERWRITTEN_PREFIX + name, encode_repo_info(old))
    await driver.put(REPO_INFO_KEY, encode_repo_info(replace(info, repo_before_updates="a")))
    with pytest.raises(FormatError, match="loops") as err:
        await bounded(collect(repo.ops_log()))
    assert OVERWRITTEN_PREFIX in str(err.value)


@pytest.mark.attack("hostile names and keys")
@pytest.mark.parametrize(
    "name", ["../../outside", "../repo", "a/b", "..", ".", "", "x\x00y", "x\ny", "x\\y", "é" * 600]
)
async def test_a_backup_name_that_is_no_single_name(tmp_path: Path, name: str) -> None:
    """The ops log reads copies under ``overwritten/`` only: a crafted name is a
    FormatError naming the file it came from, and nothing outside is read."""
    root = tmp_path / "repo"
    await v2_repo_on(root)
    local = aic.local_filesystem_storage(root).driver()
    info = decode_repo_info(await local.get(REPO_INFO_KEY))
    planted = replace(info, latest_updates=(ru.Update(ru.GCRan(), NOW),))
    (tmp_path / "outside").write_bytes(encode_repo_info(planted))
    await local.put(REPO_INFO_KEY, encode_repo_info(replace(info, repo_before_updates=name)))
    counting = CountingDriver(local)
    repo = await aic.Repository.open(aic.storage_from_driver(counting))
    counting.reset()
    with pytest.raises(FormatError, match="repo: ") as err:
        await bounded(collect(repo.ops_log()))
    assert "backup" in str(err.value)
    assert {key for _, key in counting.calls} <= {REPO_INFO_KEY}
    await local.close()


async def v2_repo_on(root: Path) -> aic.Repository:
    repo = await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=2)
    await repo.create_branch("dev", await repo.lookup_branch("main"))
    return repo


@pytest.mark.attack("crafted v2 files")
async def test_the_latest_update_at_the_end_of_time() -> None:
    """An update dated 9999-12-31T23:59:59.999999: nothing later can be logged; a change
    is refused as a FormatError, and nothing is written."""
    driver, repo = await v2_repo()
    info = await stored_info(driver)
    last = EPOCH + timedelta(microseconds=MAX_MICROS)
    late = (ru.Update(ru.MetadataChanged(), last), *info.latest_updates)
    await driver.put(REPO_INFO_KEY, encode_repo_info(replace(info, latest_updates=late)))
    before = await keys(driver)
    tip = await repo.lookup_branch("main")
    changes: list[Callable[[], Awaitable[Any]]] = [
        lambda: repo.create_branch("new", tip),
        lambda: repo.set_metadata({"a": 1}),
        lambda: repo.delete_tag("t"),
    ]
    for change in changes:
        with pytest.raises(FormatError, match="repo: "):
            await bounded(change())
    session = await repo.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x")
    await arr.setitem(0, 5)
    with pytest.raises(FormatError, match="repo: "):
        await bounded(session.commit("after the end of time"))
    after = await keys(driver)
    assert {k: v for k, v in after.items() if k.startswith(("repo", "overwritten/"))} == {
        k: v for k, v in before.items() if k.startswith(("repo", "overwritten/"))
    }


def _outside(tmp_path: Path, root: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.rglob("*") if not p.is_relative_to(root))


@pytest.mark.attack("hostile names and keys")
async def test_hostile_ref_names_in_the_repo_info_file(tmp_path: Path) -> None:
    """Names that icechunk 2.x writes as given (in spec v2 a name is no key): listed,
    kept across changes, never turned into a path."""
    root = tmp_path / "repo"
    repo = await v2_repo_on(root)
    local = aic.local_filesystem_storage(root).driver()
    info = decode_repo_info(await local.get(REPO_INFO_KEY))
    tip = info.branches["main"]
    hostile = ["../../escape", "a/b", "", "..", "x\x00y", "\x1b[31m", "n" * 100_000]
    branches = {**info.branches, **{name: tip for name in hostile}}
    tags = {**info.tags, **{name: tip for name in hostile}}
    await local.put(REPO_INFO_KEY, encode_repo_info(replace(info, branches=branches, tags=tags)))
    repo = await aic.Repository.open(aic.local_filesystem_storage(root))
    assert await bounded(repo.list_branches()) == set(branches)
    assert await bounded(repo.list_tags()) == set(tags)
    await bounded(repo.create_branch("fine", tip))
    session = await repo.writable_session("main")
    await zas.create_group(store=session.store, path="g")
    await bounded(session.commit("beside hostile names"))
    assert await repo.list_branches() == {*branches, "fine"}
    assert await asyncio.to_thread(_outside, tmp_path, root) == []
    await local.close()


# --- swapped files ------------------------------------------------------------------------


@pytest.mark.attack("swapped files")
async def test_a_snapshot_file_swapped_for_another_in_a_v2_repository() -> None:
    driver, _ = await v2_repo()
    info = await stored_info(driver)
    chain = list(info.ancestry(info.branches["main"]))
    tip, parent = chain[0].id, chain[1].id
    await driver.put(f"snapshots/{tip}", await driver.get(f"snapshots/{parent}"))
    repo = await reopen(driver)
    with pytest.raises(FormatError, match=f"snapshots/{tip}: the file holds snapshot {parent}"):
        await bounded(collect(repo.ancestry(branch="main")))


@pytest.mark.attack("swapped files")
@pytest.mark.parametrize("what", ["repo", "snapshot"])
async def test_a_v1_file_where_a_v2_one_is_expected(what: str) -> None:
    """A ``repo`` object that is a v1 file of another type, or says spec version 1."""
    driver, _ = await v2_repo()
    good = await driver.get(REPO_INFO_KEY)
    if what == "repo":
        bad = good[: HEADER_SIZE - 3] + b"\x01" + good[HEADER_SIZE - 2 :]
    else:
        info = await stored_info(driver)
        bad = await driver.get(f"snapshots/{info.branches['main']}")
    await driver.put(REPO_INFO_KEY, bad)
    with pytest.raises(FormatError, match="repo: "):
        await bounded((await reopen(driver)).list_branches())


async def v1_repo() -> tuple[MemoryDriver, aic.Repository, str]:
    driver = MemoryDriver()
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=1)
    session = await repo.writable_session("main")
    arr = await zas.create_array(session.store, name="x", shape=(4,), chunks=(1,), dtype="i4")
    await arr.setitem(slice(None), np.arange(4, dtype="i4"))
    first = await repo.lookup_branch("main")
    sid = await session.commit("one")
    del first
    return driver, repo, sid


@pytest.mark.attack("swapped files")
@pytest.mark.parametrize("what", ["snapshot", "transaction log", "manifest"])
async def test_a_v2_file_in_a_v1_repository(what: str) -> None:
    """Icechunk 1.x cannot read spec v2 files and no spec v1 writer makes them: one in a
    v1 repository was put there, and reading it is a FormatError naming it."""
    driver, _, sid = await v1_repo()
    if what == "snapshot":
        key = f"snapshots/{sid}"
        snap = decode_snapshot(await driver.get(key))
        await driver.put(key, encode_snapshot(replace(snap, spec_version=2)))
    elif what == "transaction log":
        key = f"transactions/{sid}"
        log = decode_transaction_log(await driver.get(key))
        await driver.put(key, encode_transaction_log(replace(log, spec_version=2)))
    else:
        key = next(k for k in await keys(driver) if k.startswith("manifests/"))
        data = await driver.get(key)
        await driver.put(key, data[: HEADER_SIZE - 3] + b"\x02" + data[HEADER_SIZE - 2 :])
    repo = await reopen(driver)

    async def read() -> None:
        if what == "transaction log":
            first = [i async for i in repo.ancestry(branch="main")][-1].id
            await repo.diff(from_snapshot_id=first, to_snapshot_id=sid)
            return
        session = await repo.readonly_session("main")
        arr = await zas.open_array(store=session.store, path="x", mode="r")
        await arr.getitem(slice(None))

    with pytest.raises(FormatError, match=f"{key}: .*spec version 2"):
        await bounded(read())


# --- property tests: mutated repo info files of ours and icechunk 2.3.0's -----------------


async def commit_a_group(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    await zas.create_group(store=session.store, path="fuzz")
    await session.commit("fuzz")


async def exercise(objects: dict[str, bytes], key: str, data: bytes) -> None:
    """Open a repository whose ``key`` holds ``data`` and use it every way that reads or
    rewrites the repo info file; only AicechunkErrors may come out."""
    driver = MemoryDriver()
    for k, v in objects.items():
        await driver.put(k, v)
    await driver.put(key, data)
    try:
        repo = await reopen(driver)
    except AicechunkError:
        return
    calls: list[Callable[[], Awaitable[Any]]] = [
        repo.list_branches,
        repo.list_tags,
        repo.get_metadata,
        lambda: collect(repo.ops_log()),
        lambda: collect(repo.ancestry(branch="main")),
        lambda: repo.create_branch("fuzz", "1CECHNKREP0F1RSTCMT0"),
        lambda: repo.set_metadata({"fuzz": 1}),
        lambda: commit_a_group(repo),
    ]
    for call in calls:
        with contextlib.suppress(AicechunkError):
            await call()


@pytest.fixture(scope="module")
def ours() -> dict[str, bytes]:
    async def make() -> dict[str, bytes]:
        driver, repo = await v2_repo()
        await repo.set_metadata({"owner": "me", "nested": {"a": [1, 2.5, None]}})
        await repo.delete_tag("t")
        return await keys(driver)

    return asyncio.run(make())


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from tests.format.test_icechunk2_interop import PYTHON, icechunk

    if PYTHON is None:
        pytest.skip("no Python with icechunk 2.3.0")
    root = tmp_path_factory.mktemp("ic2-attack") / "repo"
    icechunk("write", root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def poke(data: st.DataObject, original: bytes) -> bytes:
    """``original`` with 1 to 3 bytes set: its structure mostly kept, so that a quarter of
    the files still decode and reach the code that uses them (``mutate`` cuts and
    inserts too, after which few do)."""
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    return bytes(blob)


def _fuzz(objects: dict[str, bytes], data: st.DataObject, target: str) -> None:
    keys_ = sorted(k for k in objects if k == REPO_INFO_KEY or k.startswith(OVERWRITTEN_PREFIX))
    key = REPO_INFO_KEY if target == "repo" else data.draw(st.sampled_from(keys_[:-1] or keys_))
    body = decode_versioned(objects[key], FileType.REPO_INFO)[1]
    mutated = wrap((mutate if data.draw(st.booleans()) else poke)(data, body))
    with deadline(30):
        asyncio.run(asyncio.wait_for(exercise(objects, key, mutated), 25))


@pytest.mark.attack("fuzzed decoders and payloads")
@pytest.mark.parametrize("target", ["repo", "backup"])
@settings(
    max_examples=int(os.environ.get("ATTACK_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_repo_info_files_of_ours(
    ours: dict[str, bytes], target: str, data: st.DataObject
) -> None:
    _fuzz(ours, data, target)


@pytest.mark.attack("fuzzed decoders and payloads")
@pytest.mark.parametrize("target", ["repo", "backup"])
@settings(
    max_examples=int(os.environ.get("ATTACK_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_repo_info_files_of_icechunk(
    theirs: dict[str, bytes], target: str, data: st.DataObject
) -> None:
    _fuzz(theirs, data, target)
