"""Spec v2's one compare-and-swap under attack.

A spec v2 repository keeps every branch, tag and snapshot entry in one file, ``repo``.
Each change reads it, copies it to ``overwritten/`` and then replaces it only if it is
still the version read. These tests aim at what spec v1 does not have: the window between
the copy and the replacement, a lost answer to the replacement while others change the
file, writes that keep failing, and racing writers on S3 and GCS. (The suite of
``tests/test_reliability.py`` runs on spec v2 as well.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.drivers.base import Driver, ObjectInfo
from aicechunk.format.repo_info import OVERWRITTEN_PREFIX, REPO_INFO_KEY, decode_repo_info
from aicechunk.testing import CountingDriver, FaultyDriver, InjectedFault
from tests.conftest import s3_test_storage
from tests.servers import create_gcs_bucket, next_bucket_name
from tests.test_reliability import (
    assert_backed_up,
    collect,
    make_array,
    messages,
    on,
    through,
    write_x,
    x_values,
)


class InTheWindow(CountingDriver):
    """Awaits ``hook`` once, after the copy of the repo info file was written to
    ``overwritten/`` (with a commit's files, written beside it) and right before ``repo``
    is replaced: another writer, a cancellation or a crash lands between the two writes."""

    def __init__(self, inner: Driver, hook: Callable[[], Awaitable[None]]) -> None:
        super().__init__(inner)
        self.hook: Callable[[], Awaitable[None]] | None = hook
        self.copied = False

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        if key == REPO_INFO_KEY and self.copied and self.hook is not None:
            hook, self.hook = self.hook, None
            await hook()
        return await super()._put(key, data, if_none_match=if_none_match, if_match=if_match)

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        info = await super()._put_once(key, data)
        self.copied = self.copied or key.startswith(OVERWRITTEN_PREFIX)
        return info


def copies(driver: MemoryDriver) -> int:
    """How many copies of the repo info file are stored under ``overwritten/``."""
    return sum(1 for key in driver._objects if key.startswith(OVERWRITTEN_PREFIX))


async def kinds(repo: aic.Repository) -> list[str]:
    return [type(update.kind).__name__ async for update in repo.ops_log()]


# --- a write that keeps failing -----------------------------------------------------------


@pytest.mark.attack("lost answers")
async def test_a_repo_info_write_that_keeps_failing_fails_at_once() -> None:
    # before: the write (and a copy before each try) was tried 100 times, ~50 s per change
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, 2)
    tip = await repo.lookup_branch("main")
    faulty = FaultyDriver(inner, methods={"put"}, key_prefix="repo", probability=1.0)
    flaky = through(faulty, repo)
    before = copies(inner)
    started = time.monotonic()
    with pytest.raises(InjectedFault):
        await flaky.create_tag("t", tip)
    session = await on(faulty, repo)
    with pytest.raises(InjectedFault):
        await session.commit("mine")
    assert time.monotonic() - started < 5
    assert faulty.injected == 2 and copies(inner) == before + 2  # one try, one copy each
    assert session.has_uncommitted_changes
    assert await repo.list_tags() == set() and await repo.lookup_branch("main") == tip
    faulty.disarm()
    await session.commit("mine")
    assert (await messages(repo))[0] == "mine"


# --- between the copy and the replacement -------------------------------------------------


async def _ours(repo: aic.Repository, what: str, tip: str) -> Any:
    """Our change, of kind ``what``, through ``repo``; what it returns."""
    if what == "commit":
        return await write_x(repo, 3, "ours")
    if what == "tag":
        return await repo.create_tag("ours", tip)
    if what == "branch":
        return await repo.create_branch("ours", tip)
    if what == "flush":
        session = await repo.writable_session("main")
        await (await zas.open_array(store=session.store, path="x")).setitem(3, 3)
        return await session.flush("ours, detached")
    assert what == "delete-tag"
    return await repo.delete_tag("old")


async def _theirs(repo: aic.Repository, what: str, tip: str) -> None:
    if what == "tag":
        await repo.create_tag("theirs", tip)
    elif what == "branch":
        await repo.create_branch("theirs", tip)
    else:
        assert what == "commit-on-dev"
        session = await repo.writable_session("dev")
        await (await zas.open_array(store=session.store, path="x")).setitem(5, 5)
        await session.commit("theirs, on dev")


@pytest.mark.attack("lost answers")
@pytest.mark.parametrize("theirs", ["tag", "branch", "commit-on-dev"])
@pytest.mark.parametrize("ours", ["commit", "tag", "branch", "flush", "delete-tag"])
async def test_a_change_made_in_the_window_is_kept(ours: str, theirs: str) -> None:
    """Another writer changes ``repo`` after we copied it and before we replace it: our
    conditional write fails, we read again and apply our change on top of theirs."""
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, 2)
    tip = await repo.lookup_branch("main")
    await repo.create_branch("dev", tip)
    await repo.create_tag("old", tip)
    before = await kinds(repo)
    driver = InTheWindow(inner, lambda: _theirs(repo, theirs, tip))
    result = await _ours(through(driver, repo), ours, tip)
    assert driver.hook is None  # it ran
    fresh = await aic.Repository.open(aic.storage_from_driver(inner))
    # theirs is there
    if theirs == "tag":
        assert await fresh.lookup_tag("theirs") == tip
    elif theirs == "branch":
        assert await fresh.lookup_branch("theirs") == tip
    else:
        assert (await messages(fresh, "dev"))[0] == "theirs, on dev"
    # and ours, once
    if ours == "commit":
        assert await fresh.lookup_branch("main") == result
        assert (await x_values(fresh))[3] == 3
    elif ours == "tag":
        assert await fresh.lookup_tag("ours") == tip
    elif ours == "branch":
        assert await fresh.lookup_branch("ours") == tip
    elif ours == "flush":
        assert (await fresh.lookup_snapshot(result)).parent_id == tip
    else:
        assert "old" not in await fresh.list_tags()
    ops = await kinds(fresh)
    assert len(ops) == len(before) + 2 and ops[2:] == before
    await assert_backed_up(inner, fresh)


@pytest.mark.attack("lost answers")
@pytest.mark.parametrize("rebase", [False, True], ids=["plain", "rebase_with"])
async def test_a_commit_on_the_branch_in_the_window(rebase: bool) -> None:
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, 2)

    async def theirs() -> None:
        await write_x(repo, 7, "theirs")

    session = await on(InTheWindow(inner, theirs), repo)
    solver = aic.BasicConflictSolver() if rebase else None
    if rebase:
        sid = str(await session.commit("mine", rebase_with=solver))
        assert (await messages(repo))[:2] == ["mine", "theirs"]
        assert await repo.lookup_branch("main") == sid
    else:
        with pytest.raises(aic.ConflictError):
            await session.commit("mine")
        assert (await messages(repo))[0] == "theirs" and session.has_uncommitted_changes
    values = await x_values(repo)
    assert values[7] == 7 and values[3] == (3 if rebase else -1)
    await assert_backed_up(inner, repo)


@pytest.mark.attack("cancelled commits")
async def test_a_commit_cancelled_in_the_window_finishes_its_move() -> None:
    """The move of the branch had begun (its copy written): it goes on to its end, as a
    commit cancelled after its ref write went out does on spec v1, and says so."""
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, 2)
    task: asyncio.Future[Any] | None = None

    async def cancel() -> None:
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    session = await on(InTheWindow(inner, cancel), repo)
    task = asyncio.ensure_future(session.commit("mine"))
    with pytest.raises(asyncio.CancelledError):
        await task
    history = await collect(repo.ancestry(branch="main"))
    assert [info.message for info in history].count("mine") == 1
    assert str(session.snapshot_id) == history[0].id and not session.has_uncommitted_changes
    await assert_backed_up(inner, repo)


# --- a lost answer to the replacement, with others changing the file on top ----------------


@pytest.mark.attack("lost answers")
@pytest.mark.parametrize("answer", ["lost-after-apply", "retried-after-apply", "lost-before"])
@pytest.mark.parametrize(
    "ours", ["tag", "branch", "delete-tag", "delete-branch", "reset-branch", "flush"]
)
async def test_lost_answer_to_a_ref_change_is_settled_by_reading_back(
    ours: str, answer: str
) -> None:
    """Our write of ``repo`` lands (or not), its answer is lost, and another writer changes
    the file before we read it back: what we read decides, as for a commit."""
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, 2)
    first = await repo.lookup_branch("main")
    second = await write_x(repo, 1, "second")
    await repo.create_tag("old", first)
    await repo.create_branch("old", first)
    before = await kinds(repo)

    async def another_writer(method: str, key: str) -> None:
        await repo.create_tag("theirs", first)
        if answer == "retried-after-apply":
            raise aic.PreconditionFailed("the repo info file changed", key=key)

    faulty = FaultyDriver(
        inner,
        methods={"put"},
        key_prefix="repo",
        fail_calls={1},
        after=answer != "lost-before",
        on_fault=another_writer,
    )
    flaky = through(faulty, repo)
    call: dict[str, Callable[[], Awaitable[Any]]] = {
        "tag": lambda: flaky.create_tag("ours", second),
        "branch": lambda: flaky.create_branch("ours", second),
        "delete-tag": lambda: flaky.delete_tag("old"),
        "delete-branch": lambda: flaky.delete_branch("old"),
        "reset-branch": lambda: flaky.reset_branch("main", first),
        "flush": lambda: _flush(flaky),
    }
    done = True
    try:
        await call[ours]()
    except InjectedFault:
        done = False
    assert done == (answer != "lost-before")
    fresh = await aic.Repository.open(aic.storage_from_driver(inner))
    assert await fresh.lookup_tag("theirs") == first
    state = {
        "tag": lambda: "ours" in fresh_tags,
        "branch": lambda: "ours" in fresh_branches,
        "delete-tag": lambda: "old" not in fresh_tags,
        "delete-branch": lambda: "old" not in fresh_branches,
        "reset-branch": lambda: fresh_main == first,
        "flush": lambda: len(ops) == len(before) + 2,
    }
    fresh_tags, fresh_branches = await fresh.list_tags(), await fresh.list_branches()
    fresh_main = await fresh.lookup_branch("main")
    ops = await kinds(fresh)
    assert state[ours]() == done
    assert len(ops) == len(before) + 1 + done and ops[-len(before) :] == before  # ours once
    await assert_backed_up(inner, fresh)


async def _flush(repo: aic.Repository) -> str:
    session = await repo.writable_session("main")
    await (await zas.open_array(store=session.store, path="x")).setitem(3, 3)
    return await session.flush("detached")


# --- SIGKILL between the copy and the replacement ----------------------------------------

KILLED_IN_THE_WINDOW = r"""
import asyncio, os, signal, sys
import zarr.api.asynchronous as zas
import aicechunk as aic
from aicechunk.drivers import driver_from_config
from aicechunk.testing import CountingDriver

class KillAfterCopy(CountingDriver):
    async def _put_once(self, key, data):
        info = await super()._put_once(key, data)
        if key.startswith("overwritten/"):
            os.kill(os.getpid(), signal.SIGKILL)
        return info

async def main(root, what):
    driver = KillAfterCopy(aic.local_filesystem_storage(root).driver())
    repo = await aic.Repository.open(aic.storage_from_driver(driver))
    if what == "commit":
        session = await repo.writable_session("main")
        await (await zas.open_array(store=session.store, path="x")).setitem(3, 3)
        await session.commit("killed")
    else:
        await repo.create_tag("killed", await repo.lookup_branch("main"))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.attack("crashes")
@pytest.mark.parametrize("what", ["commit", "tag"])
async def test_sigkill_between_the_copy_and_the_replacement(tmp_path: Path, what: str) -> None:
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(root)
    repo = await make_array(storage, 8, 2)
    tip = await repo.lookup_branch("main")
    before = await kinds(repo)
    script = tmp_path / "child.py"
    script.write_text(KILLED_IN_THE_WINDOW)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script), str(root), what],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    fresh = await aic.Repository.open(storage)
    assert await fresh.lookup_branch("main") == tip and await fresh.list_tags() == set()
    assert await kinds(fresh) == before
    named = {u.backup_path async for u in fresh.ops_log()}
    orphans = [p.name for p in (root / "overwritten").iterdir() if p.name not in named]
    assert len(orphans) == 1  # the copy of the killed writer, harmless
    assert decode_repo_info((root / "overwritten" / orphans[0]).read_bytes()) == decode_repo_info(
        (root / "repo").read_bytes()
    )
    sid = await write_x(fresh, 3, "after the crash")
    await fresh.create_tag("after", sid)
    assert (await x_values(fresh))[3] == 3
    await assert_backed_up(storage.driver(), fresh)


# --- racing writers on S3 and GCS -----------------------------------------------------------


def _race_tags(storage: aic.Storage, racers: int) -> None:
    """``racers`` threads, each with its own event loop and client, create a tag each at
    once: every one goes through the conditional write of ``repo``."""
    barrier = threading.Barrier(racers)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        async def main() -> None:
            repo = await aic.Repository.open(storage)
            tip = await repo.lookup_branch("main")
            barrier.wait()
            await repo.create_tag(f"t{i}", tip)
            await repo.create_branch(f"b{i}", tip)

        try:
            asyncio.run(main())
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


@pytest.mark.attack("conditional-write races (test servers)")
@pytest.mark.parametrize("kind", ["s3", "gcs"])
async def test_racing_ref_changes_on_object_stores_lose_nothing(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Racing writers of ``repo`` on S3 (moto behind the tests' atomic layer, which covers
    its If-Match) and GCS: every tag and branch is kept, each logged once."""
    if kind == "s3":
        storage = s3_test_storage(request.getfixturevalue("s3_endpoint"))
    else:
        endpoint = request.getfixturevalue("gcs_endpoint")
        bucket = next_bucket_name()
        create_gcs_bucket(endpoint, bucket)
        storage = aic.gcs_storage(bucket=bucket, prefix="repo", endpoint_url=endpoint)
    repo = await aic.Repository.create(storage, spec_version=2)
    racers = 6
    await asyncio.to_thread(_race_tags, storage, racers)
    fresh = await aic.Repository.open(storage)
    assert await fresh.list_tags() == {f"t{i}" for i in range(racers)}
    assert await fresh.list_branches() == {"main"} | {f"b{i}" for i in range(racers)}
    ops = await kinds(fresh)
    assert sorted(ops) == sorted(
        ["RepoInitialized"] + ["TagCreated"] * racers + ["BranchCreated"] * racers
    )
    await assert_backed_up(storage.driver(), repo)


async def test_spec_v2_on_gcs_opens_commits_branches_and_tags(gcs_endpoint: str) -> None:
    bucket = next_bucket_name()
    create_gcs_bucket(gcs_endpoint, bucket)
    storage = aic.gcs_storage(bucket=bucket, prefix="repo", endpoint_url=gcs_endpoint)
    repo = await make_array(storage, 8, 2)
    first = await write_x(repo, 1, "first")
    await repo.create_branch("dev", first)
    await repo.create_tag("v1", first)
    dev = await repo.writable_session("dev")
    await (await zas.open_array(store=dev.store, path="x")).setitem(2, 2)
    on_dev = str(await dev.commit("on dev"))
    stale = await repo.writable_session("main")
    await write_x(repo, 4, "second")
    await (await zas.open_array(store=stale.store, path="x")).setitem(5, 5)
    with pytest.raises(aic.ConflictError):
        await stale.commit("stale")
    await stale.commit("rebased", rebase_with=aic.BasicConflictSolver())
    await repo.create_tag("gone", on_dev)
    await repo.delete_tag("gone")
    with pytest.raises(aic.RefExistsError):
        await repo.create_tag("gone", on_dev)
    await repo.reset_branch("dev", first)
    fresh = await aic.Repository.open(storage)
    assert fresh.spec_version == 2 and await aic.Repository.exists(storage)
    assert await fresh.list_branches() == {"main", "dev"}
    assert await fresh.list_tags() == {"v1"}
    assert await fresh.lookup_branch("dev") == first and await fresh.lookup_tag("v1") == first
    assert await messages(fresh) == [
        "rebased",
        "second",
        "first",
        "setup",
        "Repository initialized",
    ]
    values = await x_values(fresh)
    assert values[1] == 1 and values[4] == 4 and values[5] == 5 and values[2] == -1
    assert (await kinds(fresh))[:4] == ["BranchReset", "TagDeleted", "TagCreated", "NewCommit"]
    await assert_backed_up(storage.driver(), fresh)
