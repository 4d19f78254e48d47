"""An in-memory driver: fully featured, for tests, examples and scratch repositories."""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from itertools import count

from aicechunk.drivers.base import ByteRange, Driver, DriverConfig, ObjectInfo, slice_bytes
from aicechunk.errors import ObjectNotFound, PreconditionFailed, StorageError

__all__ = ["MemoryDriver"]

_LIVE: weakref.WeakValueDictionary[str, MemoryDriver] = weakref.WeakValueDictionary()


class MemoryDriver(Driver):
    """Objects held in a dict, safe under concurrent tasks and threads.

    Every operation runs under one short lock and never awaits while holding it, so
    conditional writes are atomic even when several event loops (zarr's sync API runs
    its own) share the driver. Versions are a per-driver counter.

    The contents live in this process only: ``describe()`` and pickling give back the
    same live driver within the process (so forks travelling between tasks and threads
    see the repository). Rebuilt in another process, it refuses every operation with a
    ``StorageError`` that says so: a worker process (forked or spawned) would otherwise
    write into a copy nobody reads, and the snapshot committed from its fork would
    reference chunks that do not exist. (Refusing on use rather than on unpickling lets
    the error travel back through a process pool instead of breaking it.)
    """

    type_name = "memory"

    def __init__(self, name: str | None = None, *, home_pid: int | None = None) -> None:
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._lock = threading.Lock()
        self._counter = count(1)
        self._name = name or f"memory-{uuid.uuid4().hex[:12]}"
        self._home_pid = os.getpid() if home_pid is None else home_pid
        if self._home_pid == os.getpid():
            _LIVE[self._name] = self

    @classmethod
    def named(cls, name: str, pid: int | None = None) -> MemoryDriver:
        """The live driver called ``name`` in this process, or a new empty one.

        ``pid`` is the process the driver was described in: in any other process the
        driver refuses every operation.
        """
        if pid is not None and pid != os.getpid():
            return cls(name, home_pid=pid)
        return _LIVE.get(name) or cls(name)

    def _check_home(self) -> None:
        if self._home_pid != os.getpid():
            raise StorageError(
                f"in-memory storage lives in process {self._home_pid} and is not shared with "
                f"process {os.getpid()}: use local_filesystem_storage() or object storage "
                "for work in worker processes",
                driver=self._name,
            )

    def describe(self) -> DriverConfig:
        """``{"type": "memory", "name": ..., "pid": ...}``: rebuilds this very driver, in
        this process only."""
        return {"type": "memory", "name": self._name, "pid": self._home_pid}

    @property
    def label(self) -> str:
        """A short name for messages, unique per instance."""
        return self._name

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling shares the live driver within a process; another process is refused
        # (memory is not shared between processes).
        return (MemoryDriver.named, (self._name, self._home_pid))

    def _lookup(self, key: str) -> tuple[bytes, ObjectInfo]:
        self._check_home()
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFound("no such object", key=key, driver=self.label) from None

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        data, _ = self._lookup(key)
        return slice_bytes(data, byte_range)

    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        return self._lookup(key)

    async def _head(self, key: str) -> ObjectInfo:
        return self._lookup(key)[1]

    async def _list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        self._check_home()
        with self._lock:
            found = [info for key, (_, info) in self._objects.items() if key.startswith(prefix)]
        found.sort(key=lambda info: info.key)
        for info in found:
            yield info

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        self._check_home()
        with self._lock:
            current = self._objects.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailed("object already exists", key=key, driver=self.label)
            if if_match is not None and (current is None or current[1].version != if_match):
                actual = None if current is None else current[1].version
                raise PreconditionFailed(
                    f"version is {actual}, not {if_match}", key=key, driver=self.label
                )
            info = ObjectInfo(key, len(data), str(next(self._counter)), datetime.now(UTC))
            self._objects[key] = (data, info)
            return info

    async def _delete(self, key: str) -> None:
        self._check_home()
        with self._lock:
            self._objects.pop(key, None)

    async def _delete_many(self, keys: list[str]) -> None:
        self._check_home()
        with self._lock:
            for key in keys:
                self._objects.pop(key, None)


def _memory_from_config(config: DriverConfig) -> MemoryDriver:
    name = config.get("name")
    pid = config.get("pid")
    if pid is not None and not isinstance(pid, int):
        raise StorageError(f"memory driver config: pid must be an integer, got {pid!r}")
    return MemoryDriver.named(str(name), pid) if name else MemoryDriver()
