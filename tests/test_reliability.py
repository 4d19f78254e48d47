"""Reliability: concurrent committers, injected faults, crashes, hostile input.

The tests about commits and refs run on spec version 1 (a ref file per branch and tag,
each moved by its own conditional write) and on spec version 2 (every branch and tag in
the repo info file ``repo``, changed by one conditional write after the old file was
copied to ``overwritten/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
import aicechunk.assets
from aicechunk import repo_info_store
from aicechunk.drivers import MemoryDriver, driver_from_config
from aicechunk.drivers.base import Driver, ObjectInfo
from aicechunk.errors import ChunkUploadError
from aicechunk.format.repo_info import OVERWRITTEN_PREFIX, decode_repo_info
from aicechunk.testing import CountingDriver, FaultyDriver, InjectedFault
from tests.conftest import s3_test_storage
from tests.servers import create_gcs_bucket, next_bucket_name

WORKERS, COMMITS = 8, 25
# spec v2 runs the same committers, fewer commits each: its compare-and-swap is the one
# file every branch and tag change goes through, contended as much with fewer commits
WORKERS_V2, COMMITS_V2 = 4, 6
SEEDS = int(os.environ.get("AICECHUNK_FAULT_SEEDS", "40"))

#: the spec versions the commit and ref tests run on
SPECS = pytest.mark.parametrize("spec", [1, 2], ids=["v1", "v2"])


def branch_key(spec: int) -> str:
    """What a commit on ``main`` ends by writing: the ref file (spec v1) or the repo info
    file (spec v2)."""
    return "refs/branch.main" if spec == 1 else "repo"


def through(driver: Driver, repo: aic.Repository) -> aic.Repository:
    """``repo`` (its configuration and spec version) reached through ``driver``."""
    return aic.Repository(
        aic.storage_from_driver(driver), repo.config, spec_version=repo.spec_version
    )


async def make_array(storage: aic.Storage, size: int, spec: int = 1) -> aic.Repository:
    repo = await aic.Repository.create(storage, spec_version=spec)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(size,), chunks=(1,), dtype="i8", fill_value=-1)
    await session.commit("setup")
    return repo


# --- concurrent committers -----------------------------------------------------------------


def committer(config: dict[str, Any], worker: int, commits: int, rebase: bool) -> list[Any]:
    """In a worker process: commit ``commits`` times, each writing its own chunk; then tag
    and branch the last commit that landed (on spec v2 those race the other workers'
    commits through the same file)."""

    async def main() -> list[Any]:
        storage = aic.storage_from_driver(driver_from_config(config))
        repo = await aic.Repository.open(storage)
        outcomes: list[Any] = []
        for j in range(commits):
            session = await repo.writable_session("main")
            arr = await zas.open_array(store=session.store, path="x")
            index = worker * commits + j
            await arr.setitem(index, index)
            try:
                sid = await session.commit(
                    f"w{worker} c{j}",
                    rebase_with=aic.BasicConflictSolver() if rebase else None,
                )
                outcomes.append(["ok", str(sid), index])
            except aic.ConflictError:
                outcomes.append(["conflict", None, index])
        landed = [sid for status, sid, _ in outcomes if status == "ok"]
        if landed:
            await repo.create_tag(f"w{worker}", landed[-1])
            await repo.create_branch(f"w{worker}", landed[-1])
        return outcomes

    return asyncio.run(main())


def storage_of(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> aic.Storage:
    if kind == "local":
        return aic.local_filesystem_storage(tmp_path / "repo")
    if kind == "s3":
        return s3_test_storage(request.getfixturevalue("s3_endpoint"))
    endpoint = request.getfixturevalue("gcs_endpoint")
    bucket = next_bucket_name()
    create_gcs_bucket(endpoint, bucket)
    return aic.gcs_storage(bucket=bucket, prefix="repo", endpoint_url=endpoint)


@pytest.fixture(scope="module")
def committer_pool() -> Iterator[ProcessPoolExecutor]:
    """Worker processes shared by every concurrent-committers case: each process imports
    the library once (most of a case's time, when each case spawned its own)."""
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@SPECS
@pytest.mark.parametrize("rebase", [False, True], ids=["no-rebase", "rebase"])
@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
async def test_concurrent_committers(
    kind: str,
    rebase: bool,
    spec: int,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    committer_pool: ProcessPoolExecutor,
) -> None:
    workers, commits = (WORKERS, COMMITS) if spec == 1 else (WORKERS_V2, COMMITS_V2)
    storage = storage_of(kind, tmp_path, request)
    repo = await make_array(storage, workers * commits, spec)
    config = storage.driver().describe()
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(
        *(
            loop.run_in_executor(committer_pool, committer, config, w, commits, rebase)
            for w in range(workers)
        )
    )
    outcomes = [o for worker in results for o in worker]
    won = {sid: index for status, sid, index in outcomes if status == "ok"}
    history = [info async for info in repo.ancestry(branch="main")]
    # one linear chain: each entry's parent is the next entry
    for child, parent in itertools.pairwise(history):
        assert child.parent_id == parent.id
    in_history = {info.id for info in history[:-2]}  # minus setup and the initial commit
    assert in_history == set(won), "every successful commit, and only those, is on the branch"
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="x", mode="r")
    values = np.asarray(await arr.getitem(slice(None)))
    expected = np.full(workers * commits, -1)
    for index in won.values():
        expected[index] = index
    np.testing.assert_array_equal(values, expected)
    if rebase:
        assert len(won) == workers * commits
    # each worker's tag and branch, made while the others committed, is there
    reopened = await aic.Repository.open(storage)
    assert reopened.spec_version == spec
    for w, worker in enumerate(results):
        landed = [sid for status, sid, _ in worker if status == "ok"]
        if landed:
            assert await reopened.lookup_tag(f"w{w}") == landed[-1]
            assert await reopened.lookup_branch(f"w{w}") == landed[-1]
    report(
        f"concurrent committers [{kind}, {'rebase' if rebase else 'no rebase'}, v{spec}]",
        runs=1,
        faults=0,
        attempted=len(outcomes),
        succeeded=len(won),
        lost=0,
        corrupted=0,
    )


# --- fault injection -----------------------------------------------------------------------

#: the files a commit writes, in order, on each spec version: spec v2 copies the repo info
#: file to ``overwritten/`` and then replaces it conditionally
STEPS = {
    1: ["chunks/", "manifests/", "transactions/", "snapshots/", "refs/branch.main"],
    2: ["chunks/", "manifests/", "transactions/", "snapshots/", "overwritten/", "repo"],
}


@pytest.mark.parametrize(
    ("spec", "step"),
    [(spec, step) for spec, steps in STEPS.items() for step in steps],
    ids=[f"v{spec}-{step.rstrip('/')}" for spec, steps in STEPS.items() for step in steps],
)
@pytest.mark.parametrize("after", [False, True], ids=["before-apply", "after-apply"])
async def test_fail_each_commit_step(spec: int, step: str, after: bool) -> None:
    inner = MemoryDriver()
    faulty = FaultyDriver(inner, methods={"put"}, key_prefix=step, fail_calls={1}, after=after)
    repo = await make_array(aic.storage_from_driver(inner), 8, spec)
    before = await repo.lookup_branch("main")
    faulty_repo = through(faulty, repo)
    session = await faulty_repo.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x")
    big = step == "chunks/"
    if big:  # a chunk big enough to go to a chunk file, so the chunk step is exercised
        await zas.create_array(
            session.store, name="big", shape=(1024,), chunks=(1024,), dtype="i8", compressors=None
        )
    try:
        if big:
            b = await zas.open_array(store=session.store, path="big")
            await b.setitem(slice(None), np.arange(1024))
        await arr.setitem(3, 33)
        sid = await session.commit("faulty")
        committed = True
    except InjectedFault:
        committed = False
    except ChunkUploadError as err:  # the chunk was written behind: its commit fails
        assert big and isinstance(err.__cause__, InjectedFault)
        committed = False
    tip = await repo.lookup_branch("main")
    # the branch is at the old snapshot or the new one, and it reads
    ro = await repo.readonly_session(branch="main")
    value = await (await zas.open_array(store=ro.store, path="x", mode="r")).getitem(3)
    if step == branch_key(spec) and after:
        assert committed and tip == str(sid) and value == 33  # the lost answer is recovered
    elif not committed:
        assert tip == before and value == -1
        faulty.disarm()
        if big and not after:
            b = await zas.open_array(store=session.store, path="big")
            await b.setitem(slice(None), np.arange(1024))
        sid = await session.commit("retry")  # a retry succeeds
        assert await repo.lookup_branch("main") == str(sid)
    assert faulty.injected == 1
    if spec == 2:  # every repo info file replaced was copied first, and icechunk's log says so
        await assert_backed_up(inner, repo)
    report(
        f"fail {step.rstrip('/')} ({'after' if after else 'before'} apply, v{spec})",
        runs=1,
        faults=1,
        attempted=2 if not committed else 1,
        succeeded=1,
        lost=0,
        corrupted=0,
    )


async def assert_backed_up(driver: Driver, repo: aic.Repository) -> None:
    """Each update of the repo info file but the newest names the copy, under
    ``overwritten/``, of the file it made, which the next update replaced."""
    info = decode_repo_info(await driver.get("repo"))
    updates = list(info.latest_updates)
    assert updates[0].backup_path is None
    for update in updates[1:]:
        assert update.backup_path is not None
        replaced = decode_repo_info(await driver.get(OVERWRITTEN_PREFIX + update.backup_path))
        assert replaced.latest_updates[0].updated_at == update.updated_at
    assert [u.kind for u in updates] == [u.kind async for u in repo.ops_log()][: len(updates)]


@SPECS
async def test_random_faults_never_corrupt(spec: int) -> None:
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), SEEDS, spec)
    attempted = succeeded = 0
    landed: set[int] = set()
    for seed in range(SEEDS):
        faulty = FaultyDriver(
            inner, methods={"put", "get"}, probability=0.15, seed=seed, after=seed % 2 == 1
        )
        flaky = through(faulty, await aic.Repository.open(aic.storage_from_driver(inner)))
        try:
            session = await flaky.writable_session("main")
            arr = await zas.open_array(store=session.store, path="x")
            await arr.setitem(seed, seed)
            attempted += 1
            await session.commit(f"seed {seed}")
            succeeded += 1
            landed.add(seed)
        except InjectedFault:
            pass
    # whatever happened, the branch is a readable snapshot and history is consistent
    history = [info async for info in repo.ancestry(branch="main")]
    ro = await repo.readonly_session(branch="main")
    values = np.asarray(
        await (await zas.open_array(store=ro.store, path="x", mode="r")).getitem(slice(None))
    )
    assert len(history) == 2 + succeeded  # setup + initial + one per successful commit
    for seed in range(SEEDS):
        assert values[seed] == (seed if seed in landed else -1)
    if spec == 2:
        await assert_backed_up(inner, repo)
    report(
        f"random faults (15% of gets/puts, v{spec})",
        runs=SEEDS,
        faults=-1,
        attempted=attempted,
        succeeded=succeeded,
        lost=0,
        corrupted=0,
    )


# --- crashes -------------------------------------------------------------------------------

# A parent that imports once and forks a writer per crash (an import costs more than a
# dozen commits): "fork" starts a writer, answers its pid, and the writer says "open" when
# it has opened the repository; "reap" waits for the writer to end. The forker and its
# writer share one stdout pipe: each line goes in one write (atomic on a pipe), since
# print() makes two ("open", then "\n") when PYTHONUNBUFFERED is set, and a writer's
# "open" and the forker's pid written at once then came out as "4242open" and "".
CRASH_FORKER = r"""
import asyncio, json, os, sys
import numpy as np
import zarr.api.asynchronous as zas
import aicechunk as aic

def say(*words):
    os.write(1, (" ".join(map(str, words))[:2000] + "\n").encode())

async def write(root, log):
    repo = await aic.Repository.open(aic.local_filesystem_storage(root))
    say("open")
    i = sum(1 for _ in open(log)) if os.path.exists(log) else 0
    while True:
        session = await repo.writable_session("main")
        arr = await zas.open_array(store=session.store, path="x")
        await arr.setitem(slice(None), np.full(256, i))
        sid = await session.commit(f"c{i}")
        with open(log, "a") as f:
            f.write(json.dumps([str(sid), i]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        i += 1

for line in sys.stdin:
    if line == "fork\n":
        pid = os.fork()
        if pid == 0:
            try:
                asyncio.run(write(sys.argv[1], sys.argv[2]))
            except BaseException as err:  # the test reads this instead of what it expects
                say("failed:", repr(err))
            os._exit(1)
        say(pid)
    elif line == "reap\n":
        say(os.waitpid(pid, 0)[1])
"""

#: crashes per spec version (``AICECHUNK_CRASH_RUNS`` sets both)
CRASH_RUNS = {1: 50, 2: 50}


@SPECS
def test_sigkill_during_writes_and_commits(tmp_path: Path, spec: int) -> None:
    runs = int(os.environ.get("AICECHUNK_CRASH_RUNS", CRASH_RUNS[spec]))
    root = tmp_path / "repo"
    log = tmp_path / "committed.jsonl"

    async def setup() -> None:
        repo = await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=spec)
        session = await repo.writable_session("main")
        group = await zas.open_group(store=session.store, mode="w")
        await group.create_array("x", shape=(256,), chunks=(16,), dtype="i8", compressors=None)
        await session.commit("setup")

    asyncio.run(setup())
    rng = random.Random(7)
    script = tmp_path / "forker.py"
    script.write_text(CRASH_FORKER)
    stderr = (tmp_path / "forker.err").open("w+")  # what it (or a writer) said, on failure
    forker = subprocess.Popen(
        [sys.executable, str(script), str(root), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )

    def said() -> str:
        stderr.flush()
        stderr.seek(0)
        return f"forker exit code {forker.poll()}, stderr:\n{stderr.read()}"

    def ask(command: str, lines: int = 1) -> list[str]:
        assert forker.stdin is not None and forker.stdout is not None
        try:
            forker.stdin.write(command + "\n")
            forker.stdin.flush()
        except BrokenPipeError:
            pytest.fail(f"the forker ended before {command!r}; {said()}")
        answers = []
        for _ in range(lines):
            answer = forker.stdout.readline()
            if not answer.endswith("\n"):  # "" is the end of its output
                time.sleep(0.5)  # let it finish writing stderr and exit
                pytest.fail(
                    f"{command!r}: the forker's output ended ({answers}, {answer!r}); {said()}"
                )
            answers.append(answer.strip())
        return sorted(answers)

    committed_total = checked = 0
    writer: int | None = None
    with stderr, forker:  # closes its pipes and waits for it (its stdin closed ends it)
        try:
            for _ in range(runs):
                pid, opened = ask("fork", lines=2)  # a pid sorts before "open"
                assert pid.isdigit() and opened == "open", f"{[pid, opened]}; {said()}"
                writer = int(pid)
                time.sleep(rng.uniform(0.0, 0.15))  # a commit takes a few to a hundred ms
                os.kill(writer, signal.SIGKILL)
                reaped = ask("reap")  # killed, not ended by an error:
                assert reaped == [str(signal.SIGKILL)], f"{reaped}; {said()}"
                writer = None
                committed_total = verify_after_crash(root, log, checked)
                checked = committed_total
        finally:
            if writer is not None:  # a failed check left it running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(writer, signal.SIGKILL)
    assert committed_total > 0
    if spec == 2:  # copies of the repo info file left by writers killed before replacing it
        print("orphaned copies:", asyncio.run(orphaned_copies(root)))
    report(
        f"SIGKILL during writes and commits (v{spec})",
        runs=runs,
        faults=runs,
        attempted=committed_total,
        succeeded=committed_total,
        lost=0,
        corrupted=0,
    )


async def orphaned_copies(root: Path) -> int:
    """Copies under ``overwritten/`` that no update of the repo info file names."""
    repo = await aic.Repository.open(aic.local_filesystem_storage(root))
    named = {u.backup_path async for u in repo.ops_log()}
    return sum(1 for p in (root / "overwritten").iterdir() if p.name not in named)


def read_log(log: Path) -> list[Any]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def files_outside(tmp_path: Path, root: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if not p.is_relative_to(root)]


def verify_after_crash(root: Path, log: Path, already_checked: int) -> int:
    """Open the repository; every commit logged since the last check must be in history
    and read back exactly (older ones were checked after earlier crashes)."""

    async def check() -> int:
        repo = await aic.Repository.open(aic.local_filesystem_storage(root))
        entries = await asyncio.to_thread(read_log, log)
        history = {info.id async for info in repo.ancestry(branch="main")}
        for sid, value in entries[already_checked:]:
            assert sid in history, f"committed snapshot {sid} lost"
            ro = await repo.readonly_session(snapshot_id=sid)
            arr = await zas.open_array(store=ro.store, path="x", mode="r")
            np.testing.assert_array_equal(await arr.getitem(slice(None)), np.full(256, value))
        tip = await repo.readonly_session(branch="main")
        await (await zas.open_array(store=tip.store, path="x", mode="r")).getitem(slice(None))
        return len(entries)

    return asyncio.run(check())


# --- hostile input -------------------------------------------------------------------------


@pytest.mark.attack("hostile names and keys")
@pytest.mark.parametrize(
    "name",
    ["../escape", "a/b", "..", "x\x00y", "ctl\x07", "\\evil", "x" * 300, "", "new\nline"],
)
@SPECS
async def test_hostile_ref_names(tmp_path: Path, name: str, spec: int) -> None:
    if spec == 2 and name == "a/b":
        pytest.skip("a legal name on spec v2, as in Icechunk 2.x (tests/test_ref_names_v2.py)")
    root = tmp_path / "repo"
    repo = await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=spec)
    sid = await repo.lookup_branch("main")
    for call in (lambda: repo.create_branch(name, sid), lambda: repo.create_tag(name, sid)):
        with pytest.raises(aic.InvalidRefNameError):
            await call()
    # spec v2 names are no keys: a lookup finds any ref by its exact name, and these none
    refused = aic.InvalidRefNameError if spec == 1 else aic.RefNotFoundError
    for call in (
        lambda: repo.lookup_branch(name),
        lambda: repo.writable_session(name),
        lambda: repo.readonly_session(tag=name),
    ):
        with pytest.raises(refused):
            await call()
    assert await asyncio.to_thread(files_outside, tmp_path, root) == []
    if spec == 2:  # nothing was written into the repo info file either
        assert [type(u.kind).__name__ async for u in repo.ops_log()] == ["RepoInitialized"]


@pytest.mark.attack("hostile names and keys")
async def test_hostile_store_keys_write_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    repo = await aic.Repository.create(aic.local_filesystem_storage(root))
    session = await repo.writable_session("main")
    from zarr.core.buffer import cpu

    for key in (
        "../zarr.json",
        "a/../../zarr.json",
        "/abs/zarr.json",
        "a//zarr.json",
        "x/c/../../1",
        "x/c/-1",
        "x/c/1e3",
    ):
        with pytest.raises(aic.AicechunkError):
            await session.store.set(key, cpu.Buffer.from_bytes(b"{}"))
    assert not session.has_uncommitted_changes
    assert await asyncio.to_thread(files_outside, tmp_path, root) == []


@pytest.mark.attack("crafted payloads")
async def test_bad_fork_payload_leaves_parent_unchanged() -> None:
    repo = await make_array(aic.in_memory_storage(), 4)
    other = await make_array(aic.in_memory_storage(), 4)
    session = await repo.writable_session("main")
    foreign = (await other.writable_session("main")).fork()
    arr = await zas.open_array(store=foreign.store, path="x")
    await arr.setitem(0, 5)
    with pytest.raises(aic.SessionStateError, match="repository"):
        await session.merge(foreign)
    assert not session.has_uncommitted_changes
    payload = foreign.to_bytes()
    for bad in (payload[:20], payload[:-1] + b"\x00", b"junk"):
        with pytest.raises(aic.ForkPayloadError):
            aic.ForkSession.from_bytes(bad)
    assert not session.has_uncommitted_changes


# --- lost answers and cancelled commits -----------------------------------------------------


class AfterWrite(CountingDriver):
    """Calls ``hook`` once, right after a put under ``prefix`` was applied, then lets the
    loop run a few times before the answer returns: a cancellation or a timeout set off by
    the hook arrives while the answer is on its way."""

    def __init__(self, inner: Driver, prefix: str, hook: Callable[[], None]) -> None:
        super().__init__(inner)
        self.prefix = prefix
        self.hook: Callable[[], None] | None = hook

    async def _answer(self, key: str) -> None:
        if key.startswith(self.prefix) and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
            for _ in range(3):
                await asyncio.sleep(0)

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        info = await super()._put(key, data, if_none_match=if_none_match, if_match=if_match)
        await self._answer(key)
        return info

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        info = await super()._put_once(key, data)
        await self._answer(key)
        return info


async def on(driver: Driver, repo: aic.Repository) -> aic.Session:
    """A writable session on main through ``driver`` (over the storage of ``repo``) with
    one change, chunk 3."""
    session = await through(driver, repo).writable_session("main")
    await (await zas.open_array(store=session.store, path="x")).setitem(3, 3)
    return session


async def messages(repo: aic.Repository, branch: str = "main") -> list[str]:
    return [info.message async for info in repo.ancestry(branch=branch)]


async def x_values(repo: aic.Repository) -> Any:
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="x", mode="r")
    return np.asarray(await arr.getitem(slice(None)))


@pytest.mark.attack("lost answers")
@SPECS
@pytest.mark.parametrize("rebase", [False, True], ids=["plain", "rebase_with"])
@pytest.mark.parametrize("answer", ["lost-after-apply", "lost-before-apply", "retried-after-apply"])
async def test_lost_answer_while_another_writer_commits_on_top(
    answer: str, rebase: bool, spec: int
) -> None:
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, spec)

    async def another_writer_commits(method: str, key: str) -> None:
        await write_x(repo, 7, "theirs")
        if answer == "retried-after-apply":  # what a driver that retried the request sees
            raise aic.PreconditionFailed("the ref changed", key=key)

    faulty = FaultyDriver(
        inner,
        methods={"put"},
        key_prefix=branch_key(spec),
        fail_calls={1},
        after=answer != "lost-before-apply",
        on_fault=another_writer_commits,
    )
    session = await on(faulty, repo)
    sid: str | None = None
    with contextlib.suppress(aic.ConflictError, InjectedFault):
        sid = str(
            await session.commit("mine", rebase_with=aic.BasicConflictSolver() if rebase else None)
        )
    history = await collect(repo.ancestry(branch="main"))
    mine = [info.id for info in history if info.message == "mine"]
    if answer == "lost-before-apply":
        assert sid is None and mine == [] and session.has_uncommitted_changes
    else:  # before: ConflictError (plain), or the change committed twice (rebase_with)
        assert sid is not None and mine == [sid], "committed once, and reported so"
        assert [info.message for info in history[:2]] == ["theirs", "mine"]
        assert str(session.snapshot_id) == sid and not session.has_uncommitted_changes
    values = await x_values(repo)
    assert values[3] == (3 if sid else -1) and values[7] == 7
    if spec == 2:
        await assert_backed_up(inner, repo)
    report(
        f"lost ref answer, writer on top [{answer}, {'rebase' if rebase else 'plain'}, v{spec}]",
        runs=1,
        faults=1,
        attempted=1,
        succeeded=1 if sid else 0,
        lost=0,
        corrupted=0,
    )


@pytest.mark.attack("lost answers")
@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
@SPECS
async def test_unknown_commit_outcome_is_settled_by_the_next_commit(
    applied: bool, spec: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aic.assets, "SETTLE_BACKOFF_SECONDS", 0.0)
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, spec)

    async def another_writer_commits(method: str, key: str) -> None:
        if method == "put":
            await write_x(repo, 7, "theirs")

    faulty = FailingFromPut(
        inner,
        methods={"put", "get"},
        key_prefix=branch_key(spec),
        after=applied,
        on_fault=another_writer_commits,
    )
    # the branch reads before the update work; the update and every read back fail
    session = await on(faulty, repo)
    faulty.armed = True
    with pytest.raises(aic.CommitOutcomeUnknownError, match="commit outcome unknown"):
        await session.commit("mine")
    assert session.has_uncommitted_changes
    with pytest.raises(aic.SessionStateError, match="unknown"):  # no changes on top of it
        await session.delete_node("/x")
    faulty.disarm()
    sid = str(await session.commit("mine, again", rebase_with=aic.BasicConflictSolver()))
    history = await collect(repo.ancestry(branch="main"))
    found = {info.message: info.id for info in history}
    if applied:  # the first commit had landed: it is returned, not committed again
        assert [info.message for info in history[:3]] == ["theirs", "mine", "setup"]
        assert sid == found["mine"] and "mine, again" not in found
    else:
        assert [info.message for info in history[:3]] == ["mine, again", "theirs", "setup"]
        assert sid == found["mine, again"] and "mine" not in found
    assert str(session.snapshot_id) == sid and not session.has_uncommitted_changes
    assert (await x_values(repo))[3] == 3


class FailingFromPut(FaultyDriver):
    """Once ``armed``, fails the next matching put and every matching call after it."""

    armed = False

    async def _faulty(self, method: str, key: str, call: Any) -> Any:
        if self.armed and method == "put" and self._matches(method, key):
            self.armed = False
            self.fail_calls = set(range(self.matching + 1, self.matching + 10_000))
        return await super()._faulty(method, key, call)


@pytest.mark.attack("cancelled commits")
@pytest.mark.parametrize("retry", ["plain", "rebase_with"])
@pytest.mark.parametrize("answer", ["answered", "lost"])
@SPECS
async def test_commit_cancelled_after_its_ref_write_went_out(
    answer: str, retry: str, spec: int
) -> None:
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, spec)
    task: asyncio.Future[Any] | None = None

    def cancel() -> None:
        assert task is not None
        task.cancel()

    async def cancel_and_lose_the_answer(method: str, key: str) -> None:
        cancel()
        await asyncio.sleep(0)

    driver: Driver
    if answer == "answered":
        driver = AfterWrite(inner, branch_key(spec), cancel)
    else:
        driver = FaultyDriver(
            inner,
            methods={"put"},
            key_prefix=branch_key(spec),
            fail_calls={1},
            after=True,
            on_fault=cancel_and_lose_the_answer,
        )
    session = await on(driver, repo)
    task = asyncio.ensure_future(session.commit("mine"))
    with pytest.raises(asyncio.CancelledError):
        await task
    history = await collect(repo.ancestry(branch="main"))
    assert [info.message for info in history].count("mine") == 1
    # the session knows its change was committed: before, it kept it and committed it again
    assert str(session.snapshot_id) == history[0].id and not session.has_uncommitted_changes
    solver = aic.BasicConflictSolver() if retry == "rebase_with" else None
    # and, committed, is read-only since (as in icechunk)
    with pytest.raises(aic.SessionStateError, match="committed snapshot"):
        await session.commit("mine, again", rebase_with=solver)
    session = await on(driver, repo)
    await (await zas.open_array(store=session.store, path="x")).setitem(4, 4)
    await session.commit("next", rebase_with=solver)
    assert (await messages(repo))[:3] == ["next", "mine", "setup"]
    report(
        f"commit cancelled after its ref write [{answer}, retry {retry}, v{spec}]",
        runs=1,
        faults=1,
        attempted=1,
        succeeded=1,
        lost=0,
        corrupted=0,
    )


@pytest.mark.attack("cancelled commits")
@SPECS
async def test_commit_timing_out_during_its_ref_write(spec: int) -> None:
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, spec)
    deadline = asyncio.timeout(None)
    driver = AfterWrite(
        inner,
        branch_key(spec),
        lambda: deadline.reschedule(asyncio.get_running_loop().time()),
    )
    session = await on(driver, repo)
    with pytest.raises(TimeoutError):
        async with deadline:
            await session.commit("mine")
    assert (await messages(repo)).count("mine") == 1
    assert not session.has_uncommitted_changes


@pytest.mark.attack("cancelled commits")
@SPECS
async def test_commit_cancelled_before_its_ref_write(spec: int) -> None:
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8, spec)
    before = await repo.lookup_branch("main")
    task: asyncio.Future[Any] | None = None
    driver = AfterWrite(inner, "snapshots/", lambda: task.cancel())  # type: ignore[union-attr]
    session = await on(driver, repo)
    task = asyncio.ensure_future(session.commit("mine"))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await repo.lookup_branch("main") == before and session.has_uncommitted_changes
    await session.commit("mine, again")
    history = await messages(repo)
    assert history[0] == "mine, again" and "mine" not in history


#: the file each spec version moves a branch by writing, and the prefixes of the files the
#: interleavings test fails (spec v2: also the copy of the repo info file made first)
BRANCH_KEY = {1: "refs/branch.main/ref.json", 2: "repo"}
REF_PREFIXES = {1: ("refs/",), 2: ("repo", "overwritten/")}


class FaultyUnder(FaultyDriver):
    """A ``FaultyDriver`` whose faults fall on keys under any of ``prefixes``."""

    def __init__(self, inner: Driver, prefixes: tuple[str, ...], **settings: Any) -> None:
        super().__init__(inner, **settings)
        self.prefixes = prefixes

    def _matches(self, method: str, key: str) -> bool:
        return (self.methods is None or method in self.methods) and key.startswith(self.prefixes)


async def commit_change(
    repo: aic.Repository,
    faulty: FaultyDriver,
    index: int,
    rng: random.Random,
    seen: Counter[str],
    branch_file: str,
) -> str | None:
    """Commit one change (chunk ``index``) through faults and cancellations, retrying on
    the same session; the snapshot id it was committed as, or ``None`` if reported failed."""
    while True:
        try:
            session = await repo.writable_session("main")
            break
        except InjectedFault:
            seen["faults outside commit"] += 1
    await (await zas.open_array(store=session.store, path="x")).setitem(index, index)
    solver = aic.BasicConflictSolver() if rng.random() < 0.5 else None
    probability = faulty.probability
    for attempt in range(20):
        last = attempt == 19
        if last:  # no more faults: the session must come to a definite answer
            faulty.probability = 0.0
        calls = len(faulty.calls)
        task = asyncio.ensure_future(session.commit(f"change {index}", rebase_with=solver))
        if not last and rng.random() < 0.4:
            if rng.random() < 0.5:  # once the branch update went out
                # step the loop one turn at a time, to cancel at that point of the commit
                while not task.done() and ("put", branch_file) not in faulty.calls[calls:]:  # noqa: ASYNC110
                    await asyncio.sleep(0)
            for _ in range(rng.randrange(6)):
                await asyncio.sleep(0)
            task.cancel()
        try:
            sid = str(await task)
            seen["committed"] += 1
            return sid
        except asyncio.CancelledError:
            seen["cancelled"] += 1
            if not session.has_uncommitted_changes:  # it landed before the cancellation
                seen["committed though cancelled"] += 1
                return str(session.snapshot_id)
        except aic.ConflictError:
            seen["conflict"] += 1
            return None
        except aic.CommitOutcomeUnknownError:
            seen["outcome unknown"] += 1
        except InjectedFault:
            seen["failed, retried"] += 1
        finally:
            faulty.probability = probability
    raise AssertionError("unreachable: the last attempt runs without faults")


@pytest.mark.attack("lost answers")
@SPECS
async def test_random_interleavings_commit_each_change_once(
    spec: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers commit through lost answers, failed reads and cancellations, interleaved
    differently per seed: every commit reported as failed is absent from history, every
    change reported as committed is there exactly once, under the id reported."""
    monkeypatch.setattr(aic.assets, "SETTLE_BACKOFF_SECONDS", 0.0)
    # racing writers retry without a pause
    monkeypatch.setattr(repo_info_store, "retry_delays", lambda u: iter([0.0] * u.max_tries))
    rounds, writers, commits = max(SEEDS // 2, 1), 4, 3
    seen: Counter[str] = Counter()
    faults = 0
    for seed in range(rounds):
        inner = MemoryDriver()
        repo = await make_array(aic.storage_from_driver(inner), writers * commits, spec)
        outcomes: dict[int, str | None] = {}

        async def writer(
            w: int,
            seed: int = seed,
            inner: MemoryDriver = inner,
            repo: aic.Repository = repo,
            outcomes: dict[int, str | None] = outcomes,
        ) -> int:
            rng = random.Random(seed * 1000 + w)
            faulty = FaultyUnder(
                inner,
                REF_PREFIXES[spec],
                methods={"put", "get"},
                probability=0.25,
                seed=rng.randrange(2**32),
                after=rng.random() < 0.7,
                interleave=3,
            )
            flaky = through(faulty, repo)
            for j in range(commits):
                index = w * commits + j
                outcomes[index] = await commit_change(
                    flaky, faulty, index, rng, seen, BRANCH_KEY[spec]
                )
            return faulty.injected

        faults += sum(await asyncio.gather(*(writer(w) for w in range(writers))))
        history = await collect(repo.ancestry(branch="main"))
        for child, parent in itertools.pairwise(history):
            assert child.parent_id == parent.id
        count = Counter(info.message for info in history)
        ids = {info.message: info.id for info in history}
        values = await x_values(repo)
        for index, sid in outcomes.items():
            message = f"change {index}"
            if sid is None:
                assert count[message] == 0, f"seed {seed}: failed commit {index} is in history"
                assert values[index] == -1
            else:
                assert count[message] == 1, f"seed {seed}: change {index} x{count[message]}"
                assert ids[message] == sid and values[index] == index
        if spec == 2:
            await assert_backed_up(inner, repo)
    assert seen["cancelled"] and seen["failed, retried"] and seen["committed"]
    report(
        f"random interleavings (lost answers, failed reads, cancellations, v{spec})",
        runs=rounds,
        faults=faults,
        attempted=rounds * writers * commits,
        succeeded=seen["committed"] + seen["committed though cancelled"],
        lost=0,
        corrupted=0,
    )
    print(dict(seen), "faults", faults)


# --- swapped and crafted files ------------------------------------------------------------

# a regression that loops forever fails the test after this long instead of hanging the run
HANG_GUARD = float(os.environ.get("AICECHUNK_HANG_GUARD", "20"))


async def guarded(aw: Any) -> Any:
    """Await ``aw``, interrupted by SIGALRM after HANG_GUARD seconds: an endless loop over
    cached snapshots never yields to the event loop, so an asyncio timeout would not fire."""

    def fire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {HANG_GUARD} s: an endless loop?")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, HANG_GUARD)
    try:
        return await aw
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def collect(history: Any) -> list[Any]:
    return [info async for info in history]


async def write_x(repo: aic.Repository, index: int, message: str) -> str:
    session = await repo.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x")
    await arr.setitem(index, index)
    return str(await session.commit(message))


def copy_file(root: Path, source: str, target: str) -> None:
    (root / target).write_bytes((root / source).read_bytes())


async def expect_format_error(aw: Any, file: str, problem: str) -> None:
    with pytest.raises(aic.FormatError) as caught:
        await guarded(aw)
    assert caught.value.file == file and problem in caught.value.problem


@pytest.mark.attack("swapped files")
@pytest.mark.parametrize("damage", ["snapshot-copied-over-parent", "crafted-cycle"])
async def test_history_cycle_is_a_format_error_not_a_hang(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(root)
    repo = await make_array(storage, 8)
    setup = await repo.lookup_branch("main")
    await write_x(repo, 0, "c0")
    # a session on c0 with a change of its own, to rebase later
    late = await repo.writable_session("main")
    await (await zas.open_array(store=late.store, path="x")).setitem(5, 5)
    writer = await aic.Repository.open(storage)  # its own caches
    c1 = await write_x(writer, 1, "c1")
    c2 = await write_x(writer, 2, "c2")
    if damage == "snapshot-copied-over-parent":
        copy_file(root, f"snapshots/{c2}", f"snapshots/{c1}")
        problem = f"holds snapshot {c2}, not {c1}"
    else:  # ids all consistent, but c1's parent is its own child
        from dataclasses import replace

        from aicechunk.format.ids import SnapshotId
        from aicechunk.format.snapshot import decode_snapshot, encode_snapshot

        snap = decode_snapshot((root / "snapshots" / c1).read_bytes())
        crafted = replace(snap, parent_id=SnapshotId.from_str(c2))
        (root / "snapshots" / c1).write_bytes(encode_snapshot(crafted))
        problem = "history loops"
    fresh = await aic.Repository.open(storage)
    key = f"snapshots/{c1}"
    await expect_format_error(collect(fresh.ancestry(branch="main")), key, problem)
    fresh = await aic.Repository.open(storage)
    await expect_format_error(fresh.diff(from_snapshot_id=setup, to_branch="main"), key, problem)
    await expect_format_error(late.rebase(aic.BasicConflictSolver()), key, problem)
    await expect_format_error(
        late.commit("late", rebase_with=aic.BasicConflictSolver()), key, problem
    )
    assert late.has_uncommitted_changes  # a failed rebase leaves the session as it was
    # the command line says which file, and exits
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aicechunk", "log", str(root)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert done.returncode == 1 and key in done.stderr and problem in done.stderr


@pytest.mark.attack("swapped files")
async def test_parent_missing_names_the_child(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(root)
    repo = await make_array(storage, 8)
    c0 = await write_x(repo, 0, "c0")
    c1 = await write_x(repo, 1, "c1")
    (root / "snapshots" / c0).unlink()
    fresh = await aic.Repository.open(storage)
    problem = f"the parent snapshot {c0} does not exist"
    await expect_format_error(collect(fresh.ancestry(branch="main")), f"snapshots/{c1}", problem)


@pytest.mark.attack("swapped files")
@pytest.mark.parametrize("reached_by", ["branch", "tag", "snapshot_id"])
async def test_snapshot_copied_over_another(tmp_path: Path, reached_by: str) -> None:
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(root)
    repo = await make_array(storage, 8)
    c0 = await write_x(repo, 0, "c0")
    await repo.create_branch("dev", c0)
    dev = await repo.writable_session("dev")
    await (await zas.open_array(store=dev.store, path="x")).setitem(3, 3)
    d1 = str(await dev.commit("d1"))
    await repo.create_tag("t", d1)
    c1 = await write_x(repo, 1, "c1")
    copy_file(root, f"snapshots/{c1}", f"snapshots/{d1}")  # not d1's parent: c1 is on main
    fresh = await aic.Repository.open(storage)
    refs = {"branch": {"branch": "dev"}, "tag": {"tag": "t"}, "snapshot_id": {"snapshot_id": d1}}

    async def read() -> Any:
        session = await fresh.readonly_session(**refs[reached_by])
        return await (await zas.open_array(store=session.store, path="x", mode="r")).getitem(3)

    await expect_format_error(read(), f"snapshots/{d1}", f"holds snapshot {c1}, not {d1}")


@pytest.mark.attack("swapped files")
async def test_manifest_copied_over_another(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(root)
    repo = await aic.Repository.create(storage)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    for name, value in (("a", 1), ("b", 2)):
        arr = await group.create_array(name, shape=(4,), chunks=(2,), dtype="i8", fill_value=0)
        await arr.setitem(slice(None), np.full(4, value))
    await session.commit("two arrays")
    ro = await repo.readonly_session(branch="main")
    a, b = [(await ro.get_node(f"/{n}")).manifests[0].object_id for n in "ab"]  # type: ignore[union-attr]
    copy_file(root, f"manifests/{b}", f"manifests/{a}")
    fresh = await aic.Repository.open(storage)
    ro = await fresh.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="a", mode="r")
    # before: the chunks of "a" were silently read as missing (the fill value)
    await expect_format_error(arr.getitem(slice(None)), f"manifests/{a}", f"holds manifest {b}")


@pytest.mark.attack("swapped files")
async def test_transaction_log_copied_over_another(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(root)
    repo = await make_array(storage, 8)
    c0 = await write_x(repo, 0, "c0")
    late = await repo.writable_session("main")
    await (await zas.open_array(store=late.store, path="x")).setitem(5, 5)
    c1 = await write_x(await aic.Repository.open(storage), 1, "c1")
    copy_file(root, f"transactions/{c0}", f"transactions/{c1}")
    key, problem = f"transactions/{c1}", f"holds transaction log of snapshot {c0}, not {c1}"
    fresh = await aic.Repository.open(storage)
    # before: the diff said chunk 0 changed, not chunk 1
    await expect_format_error(fresh.diff(from_snapshot_id=c0, to_snapshot_id=c1), key, problem)
    await expect_format_error(late.rebase(aic.BasicConflictSolver()), key, problem)
    assert late.snapshot_id != c1 and late.has_uncommitted_changes


# --- the report ----------------------------------------------------------------------------

REPORT = (
    Path(os.environ.get("AICECHUNK_RELIABILITY_REPORT", ""))
    if os.environ.get("AICECHUNK_RELIABILITY_REPORT")
    else None
)


def report(scenario: str, **numbers: int) -> None:
    """Append a row to the reliability report when AICECHUNK_RELIABILITY_REPORT is set."""
    if REPORT is None:
        return
    with REPORT.open("a") as f:
        f.write(json.dumps({"scenario": scenario, **numbers}) + "\n")


@pytest.mark.attack("lost answers")
@pytest.mark.parametrize("answer", ["lost-before-apply", "lost-after-apply", "retried-after-apply"])
async def test_reset_branch_with_a_lost_answer_goes_through_the_one_compare_and_swap(
    answer: str,
) -> None:
    # reset_branch moves the branch with the commit's compare-and-swap, so a lost answer
    # is settled the same way: applied -> success; not applied -> the error, branch kept
    inner = MemoryDriver()
    repo = await make_array(aic.storage_from_driver(inner), 8)
    first = await repo.lookup_branch("main")
    second = await write_x(repo, 1, "second")

    async def retried(method: str, key: str) -> None:
        if answer == "retried-after-apply":  # a driver that retried a request that landed
            raise aic.PreconditionFailed("the ref changed", key=key)

    faulty = FaultyDriver(
        inner,
        methods={"put"},
        key_prefix="refs/branch.main",
        fail_calls={1},
        after=answer != "lost-before-apply",
        on_fault=retried,
    )
    faulty_repo = aic.Repository(aic.storage_from_driver(faulty), repo.config)
    if answer == "lost-before-apply":
        with pytest.raises(InjectedFault):
            await faulty_repo.reset_branch("main", first)
        assert await repo.lookup_branch("main") == second
    else:
        await faulty_repo.reset_branch("main", first)  # applied: reported as done
        assert await repo.lookup_branch("main") == first
