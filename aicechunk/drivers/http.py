"""A read-only driver for repositories published over HTTP(S), on aiohttp.

``GET`` with ``Range`` and ``HEAD``; no writes (``ReadOnlyError``) and no listing (the
protocol has none). The object version is the ``ETag``, or ``Last-Modified`` if the
server sends no ETag. Transient failures (timeouts, dropped connections, truncated
bodies, 408/429/5xx) are retried with backoff and jitter; every failure is a
``StorageError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from aicechunk.drivers._retry import RETRY_STATUS, TransientStatus, retrying
from aicechunk.drivers.base import (
    ByteRange,
    Driver,
    DriverConfig,
    LoopLocal,
    ObjectInfo,
    close_at_loop_end,
    forget_at_loop_end,
    http_range_header,
    is_empty_range,
    range_bounds,
)
from aicechunk.errors import ObjectNotFound, ReadOnlyError, StorageError

__all__ = ["HTTPDriver"]


@dataclass
class _LoopState:
    session: Any = None
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(32))


class HTTPDriver(Driver):
    """Objects at ``base_url/<key>``, read-only."""

    type_name = "http"
    supports_writes = False
    supports_listing = False
    supports_conditional_writes = False

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        max_concurrency: int = 32,
        max_attempts: int = 5,
        timeout: float = 60.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"HTTP storage needs an http(s):// URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.timeout = timeout
        self._state: LoopLocal[_LoopState] = LoopLocal(
            lambda: _LoopState(limit=asyncio.Semaphore(self.max_concurrency))
        )

    def describe(self) -> DriverConfig:
        """``{"type": "http", "base_url": ...}``."""
        return {
            "type": "http",
            "base_url": self.base_url,
            "headers": self.headers,
            "max_concurrency": self.max_concurrency,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
        }

    @classmethod
    def from_config(cls, config: DriverConfig) -> HTTPDriver:
        """Rebuild from ``describe()``."""
        return cls(
            config["base_url"],
            headers=config.get("headers"),
            max_concurrency=int(config.get("max_concurrency", 32)),
            max_attempts=int(config.get("max_attempts", 5)),
            timeout=float(config.get("timeout", 60.0)),
        )

    @property
    def label(self) -> str:
        """The base URL (headers, which may carry tokens, are never shown)."""
        return self.base_url

    def __getstate__(self) -> dict[str, Any]:
        return self.describe()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(HTTPDriver.from_config(state).__dict__)

    async def _session(self) -> tuple[Any, asyncio.Semaphore]:
        state = self._state.get()
        if state.session is None:
            import aiohttp

            state.session = aiohttp.ClientSession(
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=self.max_concurrency),
                auto_decompress=False,
            )
            await close_at_loop_end(state.session, state.session.close)
        return state.session, state.limit

    async def close(self) -> None:
        """Close the HTTP session made in the running loop."""
        state = self._state.pop_current()
        if state is not None and state.session is not None:
            forget_at_loop_end(state.session)
            await state.session.close()

    def _url(self, key: str) -> str:
        return f"{self.base_url}/{quote(key)}"

    def _info(self, key: str, headers: Any, size: int) -> ObjectInfo:
        modified: datetime | None = None
        raw = headers.get("Last-Modified")
        if raw:
            try:
                modified = parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                modified = None
        version = headers.get("ETag") or raw or ""
        return ObjectInfo(key, size, str(version), modified)

    async def _request(
        self, method: str, key: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, bytes]:
        import aiohttp

        session, limit = await self._session()

        async def send() -> tuple[int, Any, bytes]:
            async with limit, session.request(method, self._url(key), headers=headers) as r:
                body = await r.read() if method == "GET" else b""
                if r.status in RETRY_STATUS:
                    raise TransientStatus(r.status)
                return r.status, r.headers, body

        try:
            status, response_headers, body = await retrying(send, attempts=self.max_attempts)
        except TransientStatus as err:
            raise StorageError(f"{method} failed: {err}", key=key, driver=self.label) from err
        except (TimeoutError, aiohttp.ClientError) as err:
            raise StorageError(
                f"{method} failed: {type(err).__name__}", key=key, driver=self.label
            ) from err
        if status == 404 or status == 410:
            raise ObjectNotFound("no such object", key=key, driver=self.label)
        return status, response_headers, body

    def _check(self, status: int, key: str, method: str) -> None:
        if status >= 400:
            raise StorageError(f"{method} failed: HTTP {status}", key=key, driver=self.label)

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        if is_empty_range(byte_range):
            await self._head(key)  # still report a missing object
            return b""
        header = http_range_header(byte_range)
        status, _headers, body = await self._request(
            "GET", key, {"Range": header} if header else None
        )
        if status == 416:  # the range starts at or past the end
            return b""
        self._check(status, key, "GET")
        if header and status == 200:
            # the server ignored Range and sent everything: cut it here
            start, stop = range_bounds(byte_range, len(body))
            return body[start:stop]
        return body

    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        status, headers, body = await self._request("GET", key)
        self._check(status, key, "GET")
        return body, self._info(key, headers, len(body))

    async def _head(self, key: str) -> ObjectInfo:
        status, headers, _ = await self._request("HEAD", key)
        self._check(status, key, "HEAD")
        return self._info(key, headers, int(headers.get("Content-Length", 0)))

    def _list(self, prefix: str) -> AsyncIterator[ObjectInfo]:  # pragma: no cover - guarded
        raise StorageError("HTTP storage cannot list objects", key=prefix, driver=self.label)

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:  # pragma: no cover - guarded by supports_writes
        raise ReadOnlyError("HTTP storage is read-only", key=key, driver=self.label)

    async def _delete(self, key: str) -> None:  # pragma: no cover - guarded
        raise ReadOnlyError("HTTP storage is read-only", key=key, driver=self.label)
