"""The local driver's reads leave access times alone where the kernel allows (O_NOATIME
on the process's own files), and still read files another user owns."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from aicechunk.drivers import LocalDriver

NOATIME = getattr(os, "O_NOATIME", 0)
needs_noatime = pytest.mark.skipif(not NOATIME, reason="no O_NOATIME on this system")


def _set_atime_before_mtime(path: Path) -> os.stat_result:
    # what a freshly written file looks like to relatime: a read would update its atime
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
    return path.stat()


def _atime_updates_here(tmp_path: Path) -> bool:
    """Whether a plain read updates an access time on this file system (not with
    noatime mounts, nor some tmpfs and overlay set-ups)."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    before = _set_atime_before_mtime(probe)
    probe.read_bytes()
    return probe.stat().st_atime_ns != before.st_atime_ns


@needs_noatime
async def test_reads_leave_a_fresh_files_access_time_alone(tmp_path: Path) -> None:
    if not _atime_updates_here(tmp_path):
        pytest.skip("reads update no access time on this file system anyway")
    driver = LocalDriver(tmp_path / "repo")
    try:
        await driver.put("chunks/a", b"abc", write_once=True)
        await driver.put("refs/x", b"ref")
        for key in ("chunks/a", "refs/x"):
            path = tmp_path / "repo" / key
            before = _set_atime_before_mtime(path)
            assert await driver.get(key) == (b"abc" if key == "chunks/a" else b"ref")
            assert (await driver.get_object(key))[0]
            assert path.stat().st_atime_ns == before.st_atime_ns, key
    finally:
        await driver.close()


async def _read_twice(root: str) -> list[bytes]:
    driver = LocalDriver(root)
    try:
        return [await driver.get("chunks/a"), await driver.get("chunks/a")]
    finally:
        await driver.close()


@needs_noatime
@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not hasattr(os, "fork"),
    reason="needs root to become another user",
)
@pytest.mark.filterwarnings("ignore:This process.*is multi-threaded:DeprecationWarning")
def test_a_file_of_another_user_is_read_all_the_same() -> None:
    # the kernel refuses O_NOATIME on a file the caller does not own (EPERM): a child
    # that became another user reads a file of root's, twice
    top = Path(tempfile.mkdtemp(prefix="aicechunk-atime-"))
    try:
        top.chmod(0o755)
        asyncio.run(_one_put(str(top / "repo")))
        for directory in (top / "repo", top / "repo" / "chunks"):
            directory.chmod(0o755)
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                os.close(reader)
                os.setgid(65534)
                os.setuid(65534)
                got = asyncio.run(_read_twice(str(top / "repo")))
                os.write(writer, b",".join(got))
                code = 0
            except BaseException as err:
                os.write(writer, f"error: {err!r}".encode())
            finally:
                os._exit(code)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            said = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, said
        assert said == b"theirs,theirs"
    finally:
        shutil.rmtree(top)


async def _one_put(root: str) -> None:
    driver = LocalDriver(root)
    try:
        await driver.put("chunks/a", b"theirs", write_once=True)
    finally:
        await driver.close()
