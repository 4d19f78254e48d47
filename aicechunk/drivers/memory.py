"""An in-memory driver: fully featured, for tests, examples and scratch repositories."""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from typing import ClassVar

from aicechunk.drivers.base import ByteRange, ConfiguredDriver, ObjectInfo, slice_bytes
from aicechunk.drivers.settings import DriverSettings
from aicechunk.errors import ObjectNotFound, PreconditionFailed, StorageError

__all__ = ["MemoryDriver", "MemorySettings"]

_LIVE: weakref.WeakValueDictionary[str, MemoryDriver] = weakref.WeakValueDictionary()


def _fresh_name() -> str:
    return f"memory-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class MemorySettings(DriverSettings):
    """Which in-memory driver: its name, and the process it lives in."""

    type_name: ClassVar[str] = "memory"

    name: str = field(default_factory=_fresh_name)
    pid: int = field(default_factory=os.getpid)


class MemoryDriver(ConfiguredDriver[MemorySettings]):
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
    settings_type = MemorySettings
    resends_writes = False  # a write is a call in this process, never resent

    def __init__(self, name: str | None = None, *, home_pid: int | None = None) -> None:
        fresh = MemorySettings()
        self._start(MemorySettings(name or fresh.name, fresh.pid if home_pid is None else home_pid))

    def _start(self, settings: MemorySettings) -> None:
        super()._start(settings)
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._lock = threading.Lock()
        self._counter = count(1)
        self._name = settings.name
        self._home_pid = settings.pid
        if self._home_pid == os.getpid():
            _LIVE[self._name] = self

    @classmethod
    def from_settings(cls, settings: MemorySettings) -> MemoryDriver:
        """The live driver ``settings`` name in its home process; elsewhere one that
        refuses every operation."""
        return cls.named(settings.name, settings.pid)

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

    @property
    def label(self) -> str:
        """A short name for messages, unique per instance."""
        return self._name

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
