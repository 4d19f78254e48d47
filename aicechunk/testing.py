"""Driver wrappers for tests and benchmarks: count requests (and, later, inject faults)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

from aicechunk.drivers.base import ByteRange, Driver, DriverConfig, ObjectInfo

__all__ = ["CountingDriver"]


class CountingDriver(Driver):
    """Wraps a driver and records every request: ``calls`` is a list of
    ``(method, key)`` in order, ``counts`` a ``Counter`` by method."""

    type_name = "counting"

    def __init__(self, inner: Driver) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []
        self.counts: Counter[str] = Counter()
        self.supports_writes = inner.supports_writes  # type: ignore[misc]
        self.supports_listing = inner.supports_listing  # type: ignore[misc]
        self.supports_conditional_writes = inner.supports_conditional_writes  # type: ignore[misc]

    def _record(self, method: str, key: str) -> None:
        self.calls.append((method, key))
        self.counts[method] += 1

    def reset(self) -> None:
        """Forget what was recorded."""
        self.calls.clear()
        self.counts.clear()

    def describe(self) -> DriverConfig:
        """The wrapped driver's description (counting does not travel)."""
        return self.inner.describe()

    @property
    def label(self) -> str:
        """The wrapped driver's label."""
        return self.inner.label

    async def close(self) -> None:
        """Close the wrapped driver."""
        await self.inner.close()

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        self._record("get", key)
        return await self.inner.get(key, byte_range)

    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        self._record("get", key)
        return await self.inner.get_object(key)

    async def _head(self, key: str) -> ObjectInfo:
        self._record("head", key)
        return await self.inner.head(key)

    async def _list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        self._record("list", prefix)
        async for info in self.inner.list(prefix):
            yield info

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        self._record("put", key)
        return await self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)

    async def _delete(self, key: str) -> None:
        self._record("delete", key)
        await self.inner.delete(key)

    async def _delete_many(self, keys: list[str]) -> None:
        self._record("delete_many", ",".join(keys))
        await self.inner.delete_many(keys)
