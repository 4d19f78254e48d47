"""The local driver's worker threads: shared by the drivers of a process (opening a
repository again starts none), working again in a child process after ``fork``, and
large objects still read whole off the small-op thread."""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

import aicechunk as aic
from aicechunk.drivers import LocalDriver
from aicechunk.drivers._threads import _Lane


def local_threads() -> int:
    return sum(t.name.startswith("aicechunk-local") for t in threading.enumerate())


async def test_drivers_of_one_process_share_their_threads(tmp_path: Path) -> None:
    await LocalDriver(tmp_path).put("big", os.urandom(3 << 20))
    before = local_threads()
    # all kept open; a pool size no other test uses
    drivers = [LocalDriver(tmp_path, max_workers=3) for _ in range(20)]
    await drivers[0].put("a", b"x" * 100)
    for again in drivers:
        assert await again.get("a") == b"x" * 100
        assert (await again.get_object("big"))[1].size == 3 << 20  # on the pool
    # one small-op thread and at most three pool threads, not two threads per driver
    assert local_threads() - before <= 1 + 3


async def test_objects_read_whole_are_the_same_small_or_large(tmp_path: Path) -> None:
    driver = LocalDriver(tmp_path)
    for size in (0, 1, 1 << 20, (1 << 20) + 1, 5 << 20):
        data = os.urandom(size)
        written = await driver.put(f"obj/{size}", data)
        got, info = await driver.get_object(f"obj/{size}")
        assert got == data
        assert (info.size, info.version) == (size, written.version)


def _child_reads(root: str, out: multiprocessing.Queue[bytes]) -> None:
    async def read() -> bytes:
        # the parent's driver and a new one: neither may wait on the parent's threads
        repo = await aic.Repository.open(aic.local_filesystem_storage(root))
        session = await repo.readonly_session(branch="main")
        assert session.snapshot_id
        return await LocalDriver(root).get("probe")

    out.put(asyncio.run(read()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
async def test_a_forked_child_reads_with_threads_of_its_own(tmp_path: Path) -> None:
    await aic.Repository.create(aic.local_filesystem_storage(str(tmp_path)))
    parent = LocalDriver(tmp_path)
    await parent.put("probe", b"from the parent")
    assert await parent.get("probe") == b"from the parent"  # the parent's threads run
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[bytes] = context.Queue()
    child = context.Process(target=_child_reads, args=(str(tmp_path), out))
    child.start()
    try:
        assert await asyncio.to_thread(out.get, True, 60) == b"from the parent"
    finally:
        child.join(30)
        if child.is_alive():  # pragma: no cover - the failure this test catches
            child.kill()
    assert child.exitcode == 0


@pytest.mark.skipif(importlib.util.find_spec("fcntl") is None, reason="POSIX flock")
async def test_a_conditional_write_waits_for_a_held_key_lock_off_the_small_op_thread(
    tmp_path: Path,
) -> None:
    fcntl = importlib.import_module("fcntl")
    driver = LocalDriver(tmp_path)
    first = await driver.put("ref", b"a", if_none_match=True)
    await driver.put("other", b"o")
    # another holder of the key's lock (flock is per open file: as another process)
    fd = os.open(driver._lock_path("ref"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        write = asyncio.ensure_future(driver.put("ref", b"b", if_match=first.version))
        await asyncio.sleep(0.2)
        assert not write.done()  # it waits for the lock...
        # ...and the loop's small operations do not queue behind it
        assert await asyncio.wait_for(driver.get("other"), 5) == b"o"
        assert await asyncio.wait_for(driver.put("more", b"m"), 5)
    finally:
        os.close(fd)  # releases the lock
    written = await asyncio.wait_for(write, 5)
    assert await driver.get("ref") == b"b"
    assert written.version != first.version
    assert os.listdir(tmp_path / ".aicechunk" / "tmp") == []  # the first try's file is gone


def test_the_small_op_thread_outlives_a_failing_job(caplog: pytest.LogCaptureFixture) -> None:
    """A job that raises (a bug: the batches catch every operation's error) is logged,
    and the jobs after it still run; ``shutdown(wait=True)`` returns once those queued
    before it are done."""
    lane = _Lane()
    ran: list[int] = []

    def fails() -> None:
        raise RuntimeError("a bug")

    lane.submit(fails)
    lane.submit(lambda: ran.append(1))
    lane.shutdown(wait=True)
    assert ran == [1]
    assert "small-op thread failed" in caplog.text
    assert not lane._thread.is_alive()
