"""A driver over a local directory: atomic writes, conditional writes safe across processes.

Icechunk's own local storage warns that concurrent commits are unsafe. Here every write
goes to a temporary file that is renamed into place (readers never see a torn file), and
conditional writes hold an ``fcntl`` lock per key while they check and rename, so two
processes racing on one ref cannot both win.

Layout inside ``root``: objects at ``root/<key>``; our own bookkeeping under
``root/.aicechunk/`` (``tmp/`` for files being written, ``locks/`` for per-key lock
files). Keys under ``.aicechunk/`` are refused, and listing never shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from aicechunk.drivers.base import (
    ByteRange,
    Driver,
    DriverConfig,
    LoopLocal,
    ObjectInfo,
    config_value,
    range_bounds,
)
from aicechunk.errors import InvalidKey, ObjectNotFound, PreconditionFailed, StorageError

try:  # POSIX advisory locks; see _KeyLock for the fallback
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LocalDriver"]

_T = TypeVar("_T")
_RESERVED = ".aicechunk"


def _version_of(st: os.stat_result) -> str:
    # inode + mtime + size. Writes set a fresh, strictly increasing mtime (see _stamp), so a
    # token never comes back for a different content of the same key.
    return f"{st.st_ino:x}.{st.st_mtime_ns:x}.{st.st_size:x}"


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=st.st_size,
        version=_version_of(st),
        last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC),
    )


class _KeyLock:
    """An exclusive, cross-process lock for one key (flock on a lock file).

    The kernel drops an flock when its holder dies, so a killed writer never leaves a
    key locked. Lock files are never deleted: deleting one while another process waits
    on it would let two holders in.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> _KeyLock:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        # closing the descriptor releases the flock
        os.close(self._fd)
        self._fd = -1


class _Batches:
    """Small file operations of one event loop, handed to the small-op thread in
    batches: one wake-up and one call back into the loop for every operation queued
    meanwhile, instead of one each (the hand-offs cost more than the system calls)."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.loop = asyncio.get_running_loop()
        self.executor = executor
        self._queue: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        with self._lock:
            self._queue.append((fn, args, future))
            if self._scheduled:
                return future
            self._scheduled = True
        self.executor.submit(self._drain)
        return future

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._scheduled = False
                    return
            done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            for fn, args, future in batch:
                try:
                    done.append((future, fn(*args), None))
                except BaseException as err:  # handed to the waiting task
                    done.append((future, None, err))
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                self.loop.call_soon_threadsafe(_deliver, done)


_PROC_FD = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")


def _real_path(path: Path) -> str:
    """``path`` with every symbolic link resolved. On Linux the kernel resolves it (an
    ``O_PATH`` descriptor read back through ``/proc``): a tenth of ``os.path.realpath``."""
    if _PROC_FD:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            pass  # missing: realpath resolves what exists, the read then reports it
        else:
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
    return os.path.realpath(path)


def _deliver(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, err in done:
        if future.cancelled():
            continue
        if err is not None:
            future.set_exception(err)
        else:
            future.set_result(value)


# reads and writes up to this size run on the driver's small-op thread
_SMALL = 1 << 20

# Objects are opened once and read from that descriptor (never opened again by name):
# non-blocking, so that a FIFO planted where an object should be cannot hang the reader.
_OPEN_FLAGS = os.O_RDONLY
for _flag in ("O_CLOEXEC", "O_NONBLOCK", "O_BINARY"):  # those this system has
    _OPEN_FLAGS |= getattr(os, _flag, 0)

# where the kernel names the file behind a descriptor (Linux)
_FD_NAMES = "/proc/self/fd"
_HAS_FD_NAMES = os.path.isdir(_FD_NAMES)


def _pread(fd: int, start: int, stop: int) -> bytes:
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


class _LargeRead:
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
                return _pread(self.fd, self.start, self.stop)
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


# Characters a file name never holds raw, as Icechunk's local storage (Rust's
# ``object_store``) writes them: ASCII controls, and what S3 and GCS advise against in keys.
_ESCAPED = frozenset('\\{}^%`]"><[~#|*?') | frozenset(map(chr, [*range(0x20), 0x7F]))


_NAME_MAX = 255  # bytes in one file name on the file systems we meet


def encode_name(segment: str) -> str:
    """A key segment as a file name, percent-encoded as Icechunk's local storage writes it:
    ``branch.ü`` is ``branch.%C3%BC``; ASCII letters, digits and ``.-_ &@:,$=!()+';``
    stay as they are."""
    if segment.isascii() and not _ESCAPED.intersection(segment):
        return segment
    return "".join(
        "".join(f"%{b:02X}" for b in ch.encode()) if ch in _ESCAPED or not ch.isascii() else ch
        for ch in segment
    )


def decode_name(name: str) -> str:
    """The key segment a file name stands for (the inverse of ``encode_name``)."""
    return unquote(name, errors="strict") if "%" in name else name


class LocalDriver(Driver):
    """Objects as files under ``root`` (created on first write).

    ``max_workers`` bounds the threads doing file I/O (and so the requests in flight);
    each operation is one hop to a worker thread, never blocking the event loop. Small
    operations (reads and writes up to 1 MiB, stats, deletes) share one thread of their
    own: many threads each taking the GIL back after every system call cost more than
    the calls (a third less throughput on 4 KiB chunks); large ones use the pool.
    ``fsync=True`` flushes files and directories to disk before a write returns, for
    durability across power loss (a killed process loses nothing either way).
    ``confine=True`` refuses any object whose real path (symbolic links followed) lies
    outside the root's real path, or inside one of the ``excluded`` directories (paths
    relative to the root, or absolute; each found afresh on every read and compared by
    identity, so another spelling of one is excluded too; one at or above the root
    excludes nothing): for directories whose contents others control. A read checks the
    file it opened and reads that same descriptor, so swapping a directory for a
    symbolic link meanwhile leads nowhere (on Linux, where ``/proc`` names an open file;
    elsewhere the name must still lead to the opened file after the check).

    Key segments become file names as Icechunk's local storage names them (non-ASCII and
    a few special characters percent-encoded, see ``encode_name``), so both libraries
    find each other's refs; ``encode_names=False`` (for virtual chunk files, which are
    named by their URLs' decoded paths) uses keys as they are.
    """

    type_name = "local"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_workers: int = 16,
        fsync: bool = False,
        confine: bool = False,
        excluded: tuple[str, ...] = (),
        encode_names: bool = True,
    ):
        self.root = Path(root).expanduser().absolute()
        self.encode_names = encode_names
        self.max_workers = max_workers
        self.fsync = fsync
        self.confine = confine
        self.excluded = tuple(excluded)
        # where each excluded directory is named (what is there is looked up per read)
        self._excluded_at = tuple((os.path.join(self.root, sub), sub) for sub in self.excluded)
        self._real_root: str | None = None
        # The worker threads serve every loop that uses the driver; each loop owns only
        # its batches (which also mark it as a user). ``_threads`` guards both.
        self._threads = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._lane: ThreadPoolExecutor | None = None
        self._batches: LoopLocal[_Batches] = LoopLocal(lambda: _Batches(self._small_thread()))

    # -- description ------------------------------------------------------------------

    def describe(self) -> DriverConfig:
        """``{"type": "local", "root": ..., "max_workers": ..., "fsync": ..., "confine": ...}``."""
        return {
            "type": "local",
            "root": str(self.root),
            "max_workers": self.max_workers,
            "fsync": self.fsync,
            "confine": self.confine,
            "excluded": list(self.excluded),
            "encode_names": self.encode_names,
        }

    @classmethod
    def from_config(cls, config: DriverConfig) -> LocalDriver:
        """Rebuild from ``describe()``."""
        return cls(
            config_value(config, "root", "local"),
            max_workers=int(config.get("max_workers", 16)),
            fsync=bool(config.get("fsync", False)),
            confine=bool(config.get("confine", False)),
            excluded=tuple(config.get("excluded") or ()),
            encode_names=bool(config.get("encode_names", True)),
        )

    @property
    def label(self) -> str:
        """``local:<root>``."""
        return f"local:{self.root}"

    def __getstate__(self) -> dict[str, Any]:
        return self.describe()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["root"],
            max_workers=state["max_workers"],
            fsync=state["fsync"],
            confine=state.get("confine", False),
            excluded=tuple(state.get("excluded") or ()),
            encode_names=state.get("encode_names", True),
        )

    # -- plumbing ---------------------------------------------------------------------

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        with self._threads:
            self._batches.get()  # the running loop is a user of the threads
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="aicechunk-local"
                )
            future = loop.run_in_executor(self._pool, partial(fn, *args))
        return await future

    def _small_thread(self) -> ThreadPoolExecutor:
        if self._lane is None:
            self._lane = ThreadPoolExecutor(1, thread_name_prefix="aicechunk-local-small")
        return self._lane

    async def _run_small(self, fn: Callable[..., _T], *args: Any) -> _T:
        with self._threads:
            future = self._batches.get().submit(fn, args)
        result: _T = await future
        return result

    async def close(self) -> None:
        """Release what the running loop holds. The worker threads, shared by every loop
        using the driver, stop when no other open loop uses them (they restart on the
        next call): closing in one loop never breaks operations running in another."""
        with self._threads:
            self._batches.pop_current()
            if any(not loop.is_closed() for loop, _ in self._batches.items()):
                return
            pool, self._pool = self._pool, None
            lane, self._lane = self._lane, None
        for executor in (pool, lane):
            if executor is not None:
                executor.shutdown(wait=False)

    def _path(self, key: str) -> Path:
        """The file of ``key`` for writing or deleting, resolved and checked by name when
        confined. Reads never use it: they check the file they opened (``_open``)."""
        path = self._named(key)
        if not self.confine:  # runs on a worker thread, like the I/O that follows
            return path
        try:
            real = _real_path(path)
            self._check_real(key, real, opened=False)
        except OSError as err:
            raise self._wrap_os_error(err, key, "check") from err
        return Path(real)

    def _named(self, key: str) -> Path:
        if key == _RESERVED or key.startswith(_RESERVED + "/"):
            raise InvalidKey(f"keys under {_RESERVED}/ are reserved", key=key, driver=self.label)
        return self.root / self._file_key(key)

    def _file_key(self, key: str) -> str:
        if not self.encode_names:
            return key
        names = [encode_name(segment) for segment in key.split("/")]
        if any(len(name) > _NAME_MAX for name in names):
            raise InvalidKey(
                f"a key segment is longer than a file name may be ({_NAME_MAX} bytes, "
                "non-ASCII characters counting 6 to 12 once percent-encoded)",
                key=key,
                driver=self.label,
            )
        return "/".join(names)

    def _open(self, key: str) -> tuple[int, os.stat_result]:
        """A descriptor open on ``key``'s regular file, and its status; the caller closes it.

        Confined, it is the file opened that is checked (where the kernel says it lies),
        never the name again: replacing a directory on the way with a symbolic link
        between the check and the read cannot lead the read elsewhere.
        """
        path = self._named(key)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as err:
            raise self._wrap_os_error(err, key, "read") from err
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                what = "a directory" if stat.S_ISDIR(st.st_mode) else "no regular file"
                raise ObjectNotFound(f"key names {what}, not an object", key=key, driver=self.label)
            if self.confine:
                self._check_real(key, self._opened_path(key, fd, path, st), opened=True)
        except BaseException as err:
            os.close(fd)
            if isinstance(err, OSError):
                raise self._wrap_os_error(err, key, "read") from err
            raise
        return fd, st

    def _opened_path(self, key: str, fd: int, path: Path, st: os.stat_result) -> str:
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
                driver=self.label,
            )
        return real

    def _check_real(self, key: str, real: str, *, opened: bool) -> None:
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
            raise InvalidKey("a symbolic link leads outside the root", key=key, driver=self.label)
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
                    driver=self.label,
                )
            sub = barred.get((here.st_dev, here.st_ino), "")
            if sub:
                raise InvalidKey(
                    f"the path leads into the excluded directory {sub!r}",
                    key=key,
                    driver=self.label,
                )
            directory = os.path.dirname(directory)

    def _lock_path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / _RESERVED / "locks" / digest[:2] / digest

    def _wrap_os_error(self, err: OSError, key: str, action: str) -> StorageError:
        if isinstance(err, FileNotFoundError | NotADirectoryError):
            return ObjectNotFound("no such object", key=key, driver=self.label)
        if isinstance(err, IsADirectoryError):
            return ObjectNotFound(
                "key names a directory, not an object", key=key, driver=self.label
            )
        return StorageError(f"{action} failed: {err.strerror or err}", key=key, driver=self.label)

    # -- reads ------------------------------------------------------------------------

    def _read_sync(self, key: str, byte_range: ByteRange | None) -> tuple[bytes, ObjectInfo]:
        fd, st = self._open(key)
        try:
            start, stop = range_bounds(byte_range, st.st_size)
            data = _pread(fd, start, stop)
        except OSError as err:
            raise self._wrap_os_error(err, key, "read") from err
        finally:
            os.close(fd)
        return data, _info(key, st)

    def _read_small_sync(self, key: str, byte_range: ByteRange | None) -> bytes | _LargeRead:
        fd, st = self._open(key)
        try:
            start, stop = range_bounds(byte_range, st.st_size)
            if stop - start > _SMALL:
                large, fd = _LargeRead(fd, start, stop), -1  # the pool reads and closes it
                return large
            return _pread(fd, start, stop)
        except OSError as err:
            raise self._wrap_os_error(err, key, "read") from err
        finally:
            if fd >= 0:
                os.close(fd)

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        # the hot path of chunk reads: no ObjectInfo; small reads on the small-op thread
        found = await self._run_small(self._read_small_sync, key, byte_range)
        if isinstance(found, bytes):
            return found
        try:
            return await self._run(found.read)
        except OSError as err:
            raise self._wrap_os_error(err, key, "read") from err
        finally:
            found.close()  # a cancelled read leaves no descriptor open

    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        return await self._run(self._read_sync, key, None)

    def _head_sync(self, key: str) -> ObjectInfo:
        if self.confine:  # what a read would open, checked the same way
            fd, st = self._open(key)
            os.close(fd)
            return _info(key, st)
        path = self._named(key)
        try:
            st = path.stat()
        except OSError as err:
            raise self._wrap_os_error(err, key, "stat") from err
        if not path.is_file():
            raise ObjectNotFound("key names a directory, not an object", key=key, driver=self.label)
        return _info(key, st)

    async def _head(self, key: str) -> ObjectInfo:
        return await self._run_small(self._head_sync, key)

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        base_rel = prefix if prefix.endswith("/") or not prefix else prefix.rpartition("/")[0]
        base_rel = base_rel.rstrip("/")
        start = self.root / self._file_key(base_rel) if base_rel else self.root
        name_of = decode_name if self.encode_names else str
        found: list[ObjectInfo] = []
        stack = [(start, base_rel)]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as err:
                raise self._wrap_os_error(err, rel or prefix, "list") from err
            for entry in entries:
                try:
                    name = name_of(entry.name)
                except UnicodeDecodeError:  # no key of ours: not listed
                    continue
                key = f"{rel}/{name}" if rel else name
                if not rel and entry.name == _RESERVED:
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if prefix.startswith(key + "/") or (key + "/").startswith(prefix):
                            stack.append((Path(entry.path), key))
                    elif key.startswith(prefix):
                        found.append(_info(key, entry.stat()))
                except FileNotFoundError:  # removed while we listed
                    continue
        found.sort(key=lambda info: info.key)
        return found

    async def _list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for info in await self._run(self._list_sync, prefix):
            yield info

    # -- writes -----------------------------------------------------------------------

    def _write_temp(self, data: bytes) -> Path:
        tmp_dir = self.root / _RESERVED / "tmp"
        tmp = tmp_dir / uuid.uuid4().hex
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    @staticmethod
    def _stamp(tmp: Path, previous: os.stat_result | None) -> None:
        # A fresh high-resolution mtime, strictly after the replaced file's: the version
        # token of a new content never equals an older token of the same key.
        now = time.time_ns()
        if previous is not None and now <= previous.st_mtime_ns:
            now = previous.st_mtime_ns + 1
        os.utime(tmp, ns=(now, now))

    def _install(self, tmp: Path, path: Path) -> os.stat_result:
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        if self.fsync:
            self._fsync_dir(path.parent)
        return path.stat()

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _put_sync(
        self, key: str, data: bytes, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        path = self._path(key)
        lock_path = self._lock_path(key)
        conditional = if_none_match or if_match is not None
        try:
            tmp = self._write_temp(data)
            try:
                if not conditional and not lock_path.exists():
                    # a key never written conditionally (chunks, snapshots, manifests):
                    # no lock, and the file's own mtime is a fine version token
                    return _info(key, self._install(tmp, path))
                with _KeyLock(lock_path):
                    try:
                        current: os.stat_result | None = path.stat()
                    except (FileNotFoundError, NotADirectoryError):
                        current = None
                    if if_none_match and current is not None:
                        raise PreconditionFailed(
                            "object already exists", key=key, driver=self.label
                        )
                    if if_match is not None:
                        actual = None if current is None else _version_of(current)
                        if actual != if_match:
                            raise PreconditionFailed(
                                f"version is {actual}, not {if_match}", key=key, driver=self.label
                            )
                    self._stamp(tmp, current)
                    return _info(key, self._install(tmp, path))
            finally:
                if tmp.exists():
                    tmp.unlink()
        except OSError as err:
            raise self._write_error(err, key) from err

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        # conditional writes may wait on a key lock: never on the small-op thread
        small = len(data) <= _SMALL and not if_none_match and if_match is None
        run = self._run_small if small else self._run
        return await run(self._put_sync, key, data, if_none_match, if_match)

    def _write_error(self, err: OSError, key: str) -> StorageError:
        if err.errno == errno.ENOTDIR or isinstance(err, IsADirectoryError):
            return StorageError(
                "cannot write: a path segment is an object, or the key is a directory",
                key=key,
                driver=self.label,
            )
        return self._wrap_os_error(err, key, "write")

    def _put_once_sync(self, key: str, data: bytes) -> ObjectInfo:
        # Created in place (O_EXCL): no staging file and no rename, which cost most of a
        # small write on ext4. The caller promised nobody reads the key meanwhile; a
        # crash leaves at worst a partial file that nothing references.
        path = self._path(key)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, flags, 0o644)
        except FileExistsError:  # a retried write: replace it the careful way
            return self._put_sync(key, data, False, None)
        except OSError as err:
            raise self._write_error(err, key) from err
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
                self._fsync_dir(path.parent)
            st = os.fstat(fd)
        except BaseException as err:
            os.close(fd)
            path.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise self._wrap_os_error(err, key, "write") from err
            raise
        os.close(fd)
        return _info(key, st)

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        run = self._run_small if len(data) <= _SMALL else self._run
        return await run(self._put_once_sync, key, data)

    def _delete_sync(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            lock_path = self._lock_path(key)
            try:
                if lock_path.exists():
                    with _KeyLock(lock_path):
                        path.unlink(missing_ok=True)
                else:
                    path.unlink(missing_ok=True)
            except (NotADirectoryError, IsADirectoryError):
                continue
            except OSError as err:
                raise self._wrap_os_error(err, key, "delete") from err

    async def _delete(self, key: str) -> None:
        await self._run_small(self._delete_sync, [key])

    async def _delete_many(self, keys: list[str]) -> None:
        await self._run(self._delete_sync, keys)
