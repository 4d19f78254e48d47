"""Blocking file primitives of the local driver, run on its worker threads.

Objects are opened once and read from that descriptor, never opened again by name;
a confined driver checks the file it opened (``Confinement``), so swapping a directory
for a symbolic link between the check and the read leads nowhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

from aicechunk.drivers.base import ObjectInfo
from aicechunk.errors import InvalidKey, ObjectNotFound, StorageError

try:  # POSIX advisory locks; see KeyLock for the fallback
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Confinement",
    "KeyLock",
    "LargeRead",
    "fsync_dir",
    "object_info",
    "open_object",
    "os_error",
    "pread",
    "real_path",
    "unlink_if_there",
    "version_of",
]

# Non-blocking, so that a FIFO planted where an object should be cannot hang the reader.
_OPEN_FLAGS = os.O_RDONLY
for _flag in ("O_CLOEXEC", "O_NONBLOCK", "O_BINARY"):  # those this system has
    _OPEN_FLAGS |= getattr(os, _flag, 0)

# Reads leave access times alone where the kernel allows (Linux, files this process's
# user owns): the first read of a freshly written file would otherwise dirty its inode
# (relatime), and the disk writes that back later (a journal entry per chunk read).
# Any other user's file refuses the flag with EPERM: opened again without it, and from
# then on the process no longer asks.
_NOATIME = getattr(os, "O_NOATIME", 0)
_no_atime = [bool(_NOATIME)]

# where the kernel names the file behind a descriptor (Linux)
_FD_NAMES = "/proc/self/fd"
_HAS_FD_NAMES = os.path.isdir(_FD_NAMES)
_PROC_FD = hasattr(os, "O_PATH") and _HAS_FD_NAMES


def version_of(st: os.stat_result) -> str:
    """A file's version token: inode, mtime and size. Writes set a fresh, strictly
    increasing mtime, so a token never comes back for another content of the same key."""
    return f"{st.st_ino:x}.{st.st_mtime_ns:x}.{st.st_size:x}"


def fsync_dir(directory: str) -> None:
    """Flush a directory's entries to disk."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def unlink_if_there(path: str) -> None:
    """Remove a file, if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def object_info(key: str, st: os.stat_result) -> ObjectInfo:
    """The ``ObjectInfo`` of the file with status ``st``."""
    return ObjectInfo(
        key=key,
        size=st.st_size,
        version=version_of(st),
        last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC),
    )


def os_error(err: OSError, key: str, action: str, driver: str) -> StorageError:
    """An ``OSError`` as the ``StorageError`` a caller sees."""
    if isinstance(err, FileNotFoundError | NotADirectoryError):
        return ObjectNotFound("no such object", key=key, driver=driver)
    if isinstance(err, IsADirectoryError):
        return ObjectNotFound("key names a directory, not an object", key=key, driver=driver)
    return StorageError(f"{action} failed: {err.strerror or err}", key=key, driver=driver)


class KeyLock:
    """An exclusive, cross-process lock for one key (flock on a lock file);
    ``wait=False``: ``BlockingIOError`` at once when another holder has it.

    The kernel drops an flock when its holder dies, so a killed writer never leaves a
    key locked. Lock files are never deleted: deleting one while another process waits
    on it would let two holders in.
    """

    def __init__(self, path: str | Path, *, wait: bool = True) -> None:
        self._path = path
        self._wait = wait
        self._fd = -1

    def __enter__(self) -> KeyLock:
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the first lock under its directory
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                how = fcntl.LOCK_EX if self._wait else fcntl.LOCK_EX | fcntl.LOCK_NB
                fcntl.flock(self._fd, how)
            except BlockingIOError:
                os.close(self._fd)
                self._fd = -1
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        # closing the descriptor releases the flock
        os.close(self._fd)
        self._fd = -1


def real_path(path: str | Path) -> str:
    """``path`` with every symbolic link resolved. On Linux the kernel resolves it (an
    ``O_PATH`` descriptor read back through ``/proc``): a tenth of ``os.path.realpath``."""
    if _PROC_FD:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            pass  # missing: realpath resolves what exists, the read then reports it
        else:
            try:
                return os.readlink(f"{_FD_NAMES}/{fd}")
            finally:
                os.close(fd)
    return os.path.realpath(path)


def pread(fd: int, start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of the open file ``fd`` (fewer at its end)."""
    if not hasattr(os, "pread"):  # pragma: no cover - Windows
        os.lseek(fd, start, os.SEEK_SET)
        return os.read(fd, stop - start)
    data = os.pread(fd, stop - start, start)
    if len(data) == stop - start or not data:
        return data
    parts, pos = [data], start + len(data)  # a short read before the end: go on
    while pos < stop:
        more = os.pread(fd, stop - pos, pos)
        if not more:
            break
        parts.append(more)
        pos += len(more)
    return b"".join(parts)


class LargeRead:
    """An open file whose requested range is too large for the small-op thread: read
    (and closed) on the pool, or closed unread if the reader gave up first."""

    def __init__(self, fd: int, start: int, stop: int) -> None:
        self.fd, self.start, self.stop = fd, start, stop
        self._lock = threading.Lock()

    def read(self) -> bytes:
        with self._lock:
            if self.fd < 0:
                raise OSError(errno.EBADF, "the read was abandoned")
            try:
                return pread(self.fd, self.start, self.stop)
            finally:
                os.close(self.fd)
                self.fd = -1

    def close(self) -> None:
        """Close the file unless a read holds it (that read closes it)."""
        if self._lock.acquire(blocking=False):
            try:
                if self.fd >= 0:
                    os.close(self.fd)
                    self.fd = -1
            finally:
                self._lock.release()


class Confinement:
    """Where a confined driver may read: under the root's real path (symbolic links
    followed), outside every ``excluded`` directory (paths relative to the root, or
    absolute; found afresh on every check and compared by identity, so another
    spelling of one is excluded too; one at or above the root excludes nothing)."""

    def __init__(self, root: Path, excluded: tuple[str, ...], driver: str) -> None:
        self.root = root
        self.driver = driver
        # where each excluded directory is named (what is there is looked up per check)
        self._excluded_at = tuple((os.path.join(root, sub), sub) for sub in excluded)
        self._real_root: str | None = None

    def opened_path(self, key: str, fd: int, path: str | Path, st: os.stat_result) -> str:
        """The real path of the file open as ``fd``: named by the kernel on Linux;
        elsewhere resolved by name, and refused unless that name leads to the same file."""
        if _HAS_FD_NAMES:
            return os.readlink(f"{_FD_NAMES}/{fd}")
        real = os.path.realpath(path)
        now = os.stat(real)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise InvalidKey(
                "the path changed while it was opened (a link replaced?)",
                key=key,
                driver=self.driver,
            )
        return real

    def check_real(self, key: str, real: str, *, opened: bool) -> None:
        """Refuse ``real`` (a real path, no symbolic link in it) outside the root's real
        path, or inside an excluded directory. Excluded directories are found afresh by
        every check and compared by device and inode with each directory between the
        file and the root: neither another spelling, a case-insensitive file system, nor
        a directory replaced since the last read leads into one. ``opened``: ``real`` is
        an open file, so each directory above it must be there (else it is moving)."""
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        root = self._real_root
        inside = root.rstrip("/") + "/"
        if not real.startswith(inside):
            raise InvalidKey("a symbolic link leads outside the root", key=key, driver=self.driver)
        if not self._excluded_at:
            return
        barred: dict[tuple[int, int], str] = {}
        for at, sub in self._excluded_at:
            try:
                st = os.stat(at)
            except (FileNotFoundError, NotADirectoryError):
                continue  # not there now: nothing to keep out
            barred[st.st_dev, st.st_ino] = sub
        directory = os.path.dirname(real)
        while barred and len(directory) > len(root):
            try:
                here = os.lstat(directory)
            except (FileNotFoundError, NotADirectoryError):
                if opened:
                    raise
                directory = os.path.dirname(directory)
                continue  # a directory a write is yet to make
            if not stat.S_ISDIR(here.st_mode):
                raise InvalidKey(
                    "the path changed while it was checked (a link replaced?)",
                    key=key,
                    driver=self.driver,
                )
            sub = barred.get((here.st_dev, here.st_ino), "")
            if sub:
                raise InvalidKey(
                    f"the path leads into the excluded directory {sub!r}",
                    key=key,
                    driver=self.driver,
                )
            directory = os.path.dirname(directory)


def _open_for_reading(path: str | Path) -> int:
    if _no_atime[0]:
        try:
            return os.open(path, _OPEN_FLAGS | _NOATIME)
        except PermissionError as err:
            if err.errno != errno.EPERM:
                raise
            _no_atime[0] = False  # not our file: access times are the owner's business
    return os.open(path, _OPEN_FLAGS)


def open_object(
    key: str, path: str | Path, confinement: Confinement | None, driver: str
) -> tuple[int, os.stat_result]:
    """A descriptor open on ``key``'s regular file at ``path``, and its status; the
    caller closes it.

    Confined, it is the file opened that is checked (where the kernel says it lies),
    never the name again: replacing a directory on the way with a symbolic link
    between the check and the read cannot lead the read elsewhere.
    """
    try:
        fd = _open_for_reading(path)
    except OSError as err:
        raise os_error(err, key, "read", driver) from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "no regular file"
            raise ObjectNotFound(f"key names {what}, not an object", key=key, driver=driver)
        if confinement is not None:
            real = confinement.opened_path(key, fd, path, st)
            confinement.check_real(key, real, opened=True)
    except BaseException as err:
        os.close(fd)
        if isinstance(err, OSError):
            raise os_error(err, key, "read", driver) from err
        raise
    return fd, st
