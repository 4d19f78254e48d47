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

import contextlib
import errno
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from aicechunk.drivers._files import (
    Confinement,
    KeyLock,
    LargeRead,
    fsync_dir,
    object_info,
    open_object,
    os_error,
    pread,
    real_path,
    unlink_if_there,
    version_of,
)
from aicechunk.drivers._names import NAME_MAX, decode_name, encode_name
from aicechunk.drivers._threads import Workers
from aicechunk.drivers.base import ByteRange, ConfiguredDriver, ObjectInfo, range_bounds
from aicechunk.drivers.settings import DriverSettings
from aicechunk.errors import InvalidKey, ObjectNotFound, PreconditionFailed, StorageError

__all__ = ["LocalDriver", "LocalSettings", "decode_name", "encode_name"]

_RESERVED = ".aicechunk"

# reads and writes up to this size run on the driver's small-op thread
_SMALL = 1 << 20


@dataclass(frozen=True)
class LocalSettings(DriverSettings):
    """The local driver's options (see ``LocalDriver``); ``root`` is kept absolute."""

    type_name: ClassVar[str] = "local"

    root: str
    max_workers: int = 16
    fsync: bool = False
    confine: bool = False
    excluded: tuple[str, ...] = ()
    encode_names: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "root", str(Path(self.root).expanduser().absolute()))
        object.__setattr__(self, "excluded", tuple(self.excluded))


class LocalDriver(ConfiguredDriver[LocalSettings]):
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
    settings_type = LocalSettings
    resends_writes = False  # a write is one system call sequence, never resent

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_workers: int = LocalSettings.max_workers,
        fsync: bool = LocalSettings.fsync,
        confine: bool = LocalSettings.confine,
        excluded: tuple[str, ...] = LocalSettings.excluded,
        encode_names: bool = LocalSettings.encode_names,
    ) -> None:
        self._start(
            LocalSettings(
                os.fspath(root),
                max_workers=max_workers,
                fsync=fsync,
                confine=confine,
                excluded=excluded,
                encode_names=encode_names,
            )
        )

    def _start(self, settings: LocalSettings) -> None:
        super()._start(settings)
        self.root = Path(settings.root)
        self._root = str(self.root).rstrip("/")  # "/" as the root: "" + "/" + key
        # the bookkeeping directories, as strings: built for every write otherwise
        self._tmp_dir = os.path.join(settings.root, _RESERVED, "tmp")
        self._locks_dir = os.path.join(settings.root, _RESERVED, "locks")
        self._confinement = (
            Confinement(self.root, settings.excluded, self.label) if settings.confine else None
        )
        self._workers = Workers.shared(settings.max_workers)

    @property
    def label(self) -> str:
        """``local:<root>``."""
        return f"local:{self.root}"

    async def close(self) -> None:
        """Release what the running loop holds. The worker threads, shared by every loop
        using the driver, stop when no other open loop uses them (they restart on the
        next call): closing in one loop never breaks operations running in another."""
        await self._workers.close()

    def _path(self, key: str) -> str:
        """The file of ``key`` for writing or deleting, resolved and checked by name when
        confined. Reads never use it: they check the file they opened (``_open``)."""
        path = self._named(key)
        if self._confinement is None:  # runs on a worker thread, like the I/O that follows
            return path
        try:
            real = real_path(path)
            self._confinement.check_real(key, real, opened=False)
        except OSError as err:
            raise self._wrap_os_error(err, key, "check") from err
        return real

    def _named(self, key: str) -> str:
        # a string, not a Path: built for every read and write, on the thread that does it
        if key == _RESERVED or key.startswith(_RESERVED + "/"):
            raise InvalidKey(f"keys under {_RESERVED}/ are reserved", key=key, driver=self.label)
        return f"{self._root}/{self._file_key(key)}"

    def _file_key(self, key: str) -> str:
        if not self.settings.encode_names:
            return key
        names = [encode_name(segment) for segment in key.split("/")]
        if any(len(name) > NAME_MAX for name in names):
            raise InvalidKey(
                f"a key segment is longer than a file name may be ({NAME_MAX} bytes, "
                "non-ASCII characters counting 6 to 12 once percent-encoded)",
                key=key,
                driver=self.label,
            )
        return "/".join(names)

    def _open(self, key: str) -> tuple[int, os.stat_result]:
        """A descriptor open on ``key``'s regular file (checked if confined), and its
        status; the caller closes it."""
        return open_object(key, self._named(key), self._confinement, self.label)

    def _lock_path(self, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self._locks_dir}/{digest[:2]}/{digest}"

    def _wrap_os_error(self, err: OSError, key: str, action: str) -> StorageError:
        return os_error(err, key, action, self.label)

    # -- reads ------------------------------------------------------------------------

    def _read_small_sync(self, key: str, byte_range: ByteRange | None) -> bytes | LargeRead:
        fd, st = self._open(key)
        try:
            start, stop = range_bounds(byte_range, st.st_size)
            if stop - start > _SMALL:
                large, fd = LargeRead(fd, start, stop), -1  # the pool reads and closes it
                return large
            return pread(fd, start, stop)
        except OSError as err:
            raise self._wrap_os_error(err, key, "read") from err
        finally:
            if fd >= 0:
                os.close(fd)

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        # the hot path of chunk reads: no ObjectInfo; small reads on the small-op thread
        found = await self._workers.run_small(self._read_small_sync, key, byte_range)
        if isinstance(found, bytes):
            return found
        try:
            return await self._workers.run(found.read)
        except OSError as err:
            raise self._wrap_os_error(err, key, "read") from err
        finally:
            found.close()  # a cancelled read leaves no descriptor open

    def _read_small_object_sync(self, key: str) -> tuple[bytes | LargeRead, ObjectInfo]:
        fd, st = self._open(key)
        info = object_info(key, st)
        try:
            if st.st_size > _SMALL:
                large, fd = LargeRead(fd, 0, st.st_size), -1  # the pool reads and closes it
                return large, info
            return pread(fd, 0, st.st_size), info
        except OSError as err:
            raise self._wrap_os_error(err, key, "read") from err
        finally:
            if fd >= 0:
                os.close(fd)

    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        # refs, snapshots, manifests: mostly small, so on the small-op thread like chunks
        found, info = await self._workers.run_small(self._read_small_object_sync, key)
        return await self._read_rest(key, found), info

    async def _read_rest(self, key: str, found: bytes | LargeRead) -> bytes:
        """The bytes of a read begun on the small-op thread: a large one on the pool."""
        if isinstance(found, bytes):
            return found
        try:
            return await self._workers.run(found.read)
        except OSError as err:
            raise self._wrap_os_error(err, key, "read") from err
        finally:
            found.close()

    def _read_if_changed_sync(
        self, key: str, version: str
    ) -> tuple[bytes | LargeRead, ObjectInfo] | None:
        if self._confinement is None:  # a confined read checks the file it opens
            try:
                st = os.stat(self._named(key))
            except OSError as err:
                raise self._wrap_os_error(err, key, "read") from err
            if stat.S_ISREG(st.st_mode) and version and version_of(st) == version:
                return None
        return self._read_small_object_sync(key)

    async def _get_object_if_changed(
        self, key: str, version: str
    ) -> tuple[bytes, ObjectInfo] | None:
        # one status on the small-op thread, and the read only if the version changed
        found = await self._workers.run_small(self._read_if_changed_sync, key, version)
        if found is None:
            return None
        return await self._read_rest(key, found[0]), found[1]

    def _head_sync(self, key: str) -> ObjectInfo:
        if self._confinement is not None:  # what a read would open, checked the same way
            fd, st = self._open(key)
            os.close(fd)
            return object_info(key, st)
        path = self._named(key)
        try:
            st = os.stat(path)
        except OSError as err:
            raise self._wrap_os_error(err, key, "stat") from err
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound("key names a directory, not an object", key=key, driver=self.label)
        return object_info(key, st)

    async def _head(self, key: str) -> ObjectInfo:
        return await self._workers.run_small(self._head_sync, key)

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        base_rel = prefix if prefix.endswith("/") or not prefix else prefix.rpartition("/")[0]
        base_rel = base_rel.rstrip("/")
        start = self.root / self._file_key(base_rel) if base_rel else self.root
        name_of = decode_name if self.settings.encode_names else str
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
                        found.append(object_info(key, entry.stat()))
                except FileNotFoundError:  # removed while we listed
                    continue
        found.sort(key=lambda info: info.key)
        return found

    async def _list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for info in await self._workers.run(self._list_sync, prefix):
            yield info

    # -- writes -----------------------------------------------------------------------

    def _write_temp(self, data: bytes) -> str:
        """A new file under ``.aicechunk/tmp`` holding ``data``: its path."""
        tmp_dir = self._tmp_dir
        tmp = f"{tmp_dir}/{os.urandom(16).hex()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(tmp_dir, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.settings.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    @staticmethod
    def _stamp(tmp: str, previous: os.stat_result | None) -> None:
        # A fresh high-resolution mtime, strictly after the replaced file's: the version
        # token of a new content never equals an older token of the same key.
        now = time.time_ns()
        if previous is not None and now <= previous.st_mtime_ns:
            now = previous.st_mtime_ns + 1
        os.utime(tmp, ns=(now, now))

    def _install(self, tmp: str, path: str) -> os.stat_result:
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(tmp, path)
        if self.settings.fsync:
            fsync_dir(os.path.dirname(path))
        return os.stat(path)

    def _put_sync(
        self, key: str, data: bytes, if_none_match: bool, if_match: str | None, wait: bool = True
    ) -> ObjectInfo | None:
        """Write ``key``; ``None`` (nothing written) if ``wait`` is false and another
        holder has the key's lock."""
        path = self._path(key)
        lock_path = self._lock_path(key)
        conditional = if_none_match or if_match is not None
        try:
            tmp = self._write_temp(data)
            installed = False
            try:
                if not conditional and not os.path.exists(lock_path):
                    # a key never written conditionally (chunks, snapshots, manifests):
                    # no lock, and the file's own mtime is a fine version token
                    st = self._install(tmp, path)
                    installed = True
                    return object_info(key, st)
                with KeyLock(lock_path, wait=wait):
                    try:
                        current: os.stat_result | None = os.stat(path)
                    except (FileNotFoundError, NotADirectoryError):
                        current = None
                    if if_none_match and current is not None:
                        raise PreconditionFailed(
                            "object already exists", key=key, driver=self.label
                        )
                    if if_match is not None:
                        actual = None if current is None else version_of(current)
                        if actual != if_match:
                            raise PreconditionFailed(
                                f"version is {actual}, not {if_match}", key=key, driver=self.label
                            )
                    self._stamp(tmp, current)
                    st = self._install(tmp, path)
                    installed = True
                    return object_info(key, st)
            finally:
                if not installed:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
        except BlockingIOError as err:
            if wait:  # not the lock's: it waits
                raise self._write_error(err, key) from err
            return None  # the key's lock is held elsewhere, and this call was not to wait
        except OSError as err:
            raise self._write_error(err, key) from err

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        args = (key, data, if_none_match, if_match)
        # small writes on the small-op thread (a third of the pool's round trip); a
        # conditional one there only if its key lock is free at once: a thread that other
        # operations queue behind never waits on another process's lock
        written = None
        if len(data) <= _SMALL:
            written = await self._workers.run_small(self._put_sync, *args, False)
        if written is None:
            written = await self._workers.run(self._put_sync, *args)
        assert written is not None  # it waited for the lock
        return written

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
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, flags, 0o644)
        except FileExistsError:  # a retried write: replace it the careful way
            written = self._put_sync(key, data, False, None)
            assert written is not None  # it waits for a lock
            return written
        except OSError as err:
            raise self._write_error(err, key) from err
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.settings.fsync:
                os.fsync(fd)
                fsync_dir(os.path.dirname(path))
            st = os.fstat(fd)
        except BaseException as err:
            os.close(fd)
            unlink_if_there(path)
            if isinstance(err, OSError):
                raise self._wrap_os_error(err, key, "write") from err
            raise
        os.close(fd)
        return object_info(key, st)

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        run = self._workers.run_small if len(data) <= _SMALL else self._workers.run
        return await run(self._put_once_sync, key, data)

    def _put_copy_sync(self, key: str, data: bytes, source: str, version: str) -> ObjectInfo:
        # A hard link: no bytes written, and replacing the source later frees nothing.
        # Files are never changed in place (replaced by a rename), so a link whose
        # version (inode, mtime, size) is ``version`` holds that version's bytes.
        try:
            path, origin = self._path(key), self._path(source)
            try:
                os.link(origin, path)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.link(origin, path)
            st = os.stat(path)
        except (OSError, StorageError):  # gone, or no links here: the bytes, then
            return self._put_once_sync(key, data)
        if version_of(st) != version:  # replaced since it was read
            unlink_if_there(path)
            return self._put_once_sync(key, data)
        if self.settings.fsync:
            fsync_dir(os.path.dirname(path))
        return object_info(key, st)

    async def _put_copy(self, key: str, data: bytes, source: str, version: str) -> ObjectInfo:
        run = self._workers.run_small if len(data) <= _SMALL else self._workers.run
        return await run(self._put_copy_sync, key, data, source, version)

    def _delete_sync(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            lock_path = self._lock_path(key)
            try:
                if os.path.exists(lock_path):
                    with KeyLock(lock_path):
                        unlink_if_there(path)
                else:
                    unlink_if_there(path)
            except (NotADirectoryError, IsADirectoryError):
                continue
            except OSError as err:
                raise self._wrap_os_error(err, key, "delete") from err

    async def _delete(self, key: str) -> None:
        await self._workers.run_small(self._delete_sync, [key])

    async def _delete_many(self, keys: list[str]) -> None:
        await self._workers.run(self._delete_sync, keys)
