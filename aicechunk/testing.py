"""Driver wrappers for tests and benchmarks: count requests, inject faults."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aicechunk.drivers.base import ByteRange, Driver, DriverConfig, ObjectInfo
from aicechunk.errors import InjectedFault

__all__ = ["CountingDriver", "FaultyDriver", "InjectedFault"]


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

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        self._record("put", key)
        return await self.inner.put(key, data, write_once=True)

    async def _delete(self, key: str) -> None:
        self._record("delete", key)
        await self.inner.delete(key)

    async def _delete_many(self, keys: list[str]) -> None:
        self._record("delete_many", ",".join(keys))
        await self.inner.delete_many(keys)


class FaultyDriver(CountingDriver):
    """Wraps a driver and fails, delays or hangs chosen requests.

    Choose requests by call number (``fail_calls``: 1-based numbers of matching calls),
    by key prefix and method (``match``), or by probability with a seed. ``after=True``
    performs the request and then fails it, as when a response is lost after the server
    applied a write. ``delay`` sleeps before matching requests; ``hang`` never answers
    them (callers' timeouts must cope). ``on_fault(method, key)`` is awaited where a
    fault is injected, just before it is raised (after the request was applied if
    ``after``): a test can make another writer commit, or cancel the caller, right there.
    ``interleave=n`` yields to the event loop 0 to n times (seeded) before and after every
    request, matching or not, so that concurrent tasks interleave differently per seed.
    """

    type_name = "faulty"

    def __init__(
        self,
        inner: Driver,
        *,
        methods: frozenset[str] | set[str] | None = None,
        key_prefix: str = "",
        fail_calls: set[int] | None = None,
        probability: float = 0.0,
        seed: int = 0,
        after: bool = False,
        delay: float = 0.0,
        hang: bool = False,
        on_fault: Callable[[str, str], Awaitable[None]] | None = None,
        interleave: int = 0,
    ) -> None:
        super().__init__(inner)
        self.methods = frozenset(methods) if methods else None
        self.key_prefix = key_prefix
        self.fail_calls = set(fail_calls or ())
        self.probability = probability
        self.after = after
        self.delay = delay
        self.hang = hang
        self.on_fault = on_fault
        self.interleave = interleave
        self.matching = 0
        self.injected = 0
        self._random = random.Random(seed)

    def disarm(self) -> None:
        """Stop injecting faults."""
        self.fail_calls = set()
        self.probability = 0.0
        self.delay = 0.0
        self.hang = False

    def _matches(self, method: str, key: str) -> bool:
        return (self.methods is None or method in self.methods) and key.startswith(self.key_prefix)

    async def _yield(self) -> None:
        for _ in range(self._random.randint(0, self.interleave)):
            await asyncio.sleep(0)

    async def _around(self, method: str, key: str, call: Any) -> Any:
        if self.interleave:
            await self._yield()
            try:
                return await self._faulty(method, key, call)
            finally:
                await self._yield()
        return await self._faulty(method, key, call)

    async def _faulty(self, method: str, key: str, call: Any) -> Any:
        if not self._matches(method, key):
            return await call()
        self.matching += 1
        fail = self.matching in self.fail_calls or (
            self.probability > 0 and self._random.random() < self.probability
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hang and fail:
            await asyncio.Event().wait()
        if fail and not self.after:
            self.injected += 1
            if self.on_fault is not None:
                await self.on_fault(method, key)
            raise InjectedFault(f"injected failure of {method}", key=key, driver=self.label)
        result = await call()
        if fail:
            self.injected += 1
            if self.on_fault is not None:
                await self.on_fault(method, key)
            raise InjectedFault(
                f"injected failure of {method} after it was applied", key=key, driver=self.label
            )
        return result

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        result: bytes = await self._around(
            "get", key, lambda: super(FaultyDriver, self)._get(key, byte_range)
        )
        return result

    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        result: tuple[bytes, ObjectInfo] = await self._around(
            "get", key, lambda: super(FaultyDriver, self)._get_object(key)
        )
        return result

    async def _head(self, key: str) -> ObjectInfo:
        result: ObjectInfo = await self._around(
            "head", key, lambda: super(FaultyDriver, self)._head(key)
        )
        return result

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        result: ObjectInfo = await self._around(
            "put",
            key,
            lambda: super(FaultyDriver, self)._put(
                key, data, if_none_match=if_none_match, if_match=if_match
            ),
        )
        return result

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        result: ObjectInfo = await self._around(
            "put", key, lambda: super(FaultyDriver, self)._put_once(key, data)
        )
        return result

    async def _delete(self, key: str) -> None:
        await self._around("delete", key, lambda: super(FaultyDriver, self)._delete(key))
