"""A read-only driver for repositories published over HTTP(S), on aiohttp.

``GET`` with ``Range`` and ``HEAD``; no writes (``ReadOnlyError``) and no listing (the
protocol has none). The object version is the ``ETag``, or ``Last-Modified`` if the
server sends no ETag. Transient failures (timeouts, dropped connections, truncated
bodies, 408/429/5xx) are retried with backoff and jitter; every failure is a
``StorageError``.

Redirects are followed here, not by aiohttp, at most ``MAX_REDIRECTS`` hops, and only
to URLs the driver may read: by default those under ``base_url`` (same scheme, host and
port, path under the base path); any other target is refused with a ``StorageError``.
Configured headers, and credentials written in the URL (sent as basic auth), go to the
base URL's origin only: aiohttp itself would carry every header but ``Authorization``
to another host.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

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
    secret,
)
from aicechunk.drivers.urls import Location, parse_location, redact_url
from aicechunk.errors import InvalidLocation, ObjectNotFound, ReadOnlyError, StorageError

__all__ = ["MAX_REDIRECTS", "HTTPDriver"]

_REDIRECT_STATUS = {301, 302, 303, 307, 308}

#: The most redirects one request follows.
MAX_REDIRECTS = 5


@dataclass
class _LoopState:
    session: Any = None
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(32))


class HTTPDriver(Driver):
    """Objects at ``base_url/<key>``, read-only.

    ``headers`` are sent with every request to the base URL's origin; a
    ``user:password@`` in ``base_url`` becomes an ``Authorization: Basic`` header (and
    leaves the URL, so it is never shown). ``follow_redirect`` decides which redirect
    targets may be followed (default: those under ``base_url``); it is a live policy,
    not part of ``describe()``.
    """

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
        follow_redirect: Callable[[Location], bool] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.lower().startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"HTTP storage needs an http(s):// URL, got {redact_url(base_url)!r}")
        self.headers = _with_userinfo_auth(base_url, dict(headers or {}))
        parts = urlsplit(base_url)
        netloc = parts.netloc.rpartition("@")[2]
        self.base_url = urlunsplit(parts._replace(netloc=netloc)).rstrip("/")
        self._base = parse_location(self.base_url)  # InvalidLocation is a ValueError
        self.follow_redirect = follow_redirect
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
            "headers": {name: secret(value) for name, value in self.headers.items()},
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
        """The base URL (headers and credentials, which are tokens, are never shown)."""
        return self.base_url

    def __getstate__(self) -> dict[str, Any]:
        return self.describe()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(HTTPDriver.from_config(state).__dict__)

    async def _session(self) -> tuple[Any, asyncio.Semaphore]:
        state = self._state.get()
        if state.session is None:
            import aiohttp

            # no session-wide headers: they would follow any URL (see _send)
            state.session = aiohttp.ClientSession(
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
            status, response_headers, body = await self._send(
                session, limit, method, key, headers or {}
            )
            if status in RETRY_STATUS:
                raise TransientStatus(status)
            return status, response_headers, body

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

    async def _send(
        self,
        session: Any,
        limit: asyncio.Semaphore,
        method: str,
        key: str,
        headers: Mapping[str, str],
    ) -> tuple[int, Any, bytes]:
        """One request, following the redirects the policy allows."""
        from yarl import URL

        url, where = self._url(key), self._base
        for _ in range(MAX_REDIRECTS + 1):
            send = dict(headers)
            if where.origin == self._base.origin:
                send.update(self.headers)
            async with (
                limit,
                session.request(
                    method, URL(url, encoded=True), headers=send, allow_redirects=False
                ) as r,
            ):
                target = r.headers.get("Location") if r.status in _REDIRECT_STATUS else None
                if target is None:
                    body = await r.read() if method == "GET" else b""
                    return r.status, r.headers, body
            url = urljoin(url, target)
            where = self._redirect_target(method, key, url)
        raise StorageError(
            f"{method} failed: more than {MAX_REDIRECTS} redirects", key=key, driver=self.label
        )

    def _redirect_target(self, method: str, key: str, url: str) -> Location:
        try:
            where = parse_location(url, allow_query=True)
        except InvalidLocation as err:
            raise StorageError(
                f"{method} redirected to {redact_url(url)}: {err.problem}; not followed",
                key=key,
                driver=self.label,
            ) from None
        allowed = self.follow_redirect or (lambda target: target.within(self._base))
        if where.scheme not in ("http", "https") or not allowed(where):
            raise StorageError(
                f"{method} redirected to {redact_url(url)}, outside what this driver may "
                "read; not followed",
                key=key,
                driver=self.label,
            )
        return where

    def _check(self, status: int, key: str, method: str) -> None:
        # a 3xx here is one not followed (no Location): its body is no object's bytes
        if status >= 300:
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


def _with_userinfo_auth(base_url: str, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus basic auth for a ``user:password@`` written in ``base_url``."""
    parts = urlsplit(base_url)
    if parts.username is None:
        return headers
    if any(name.lower() == "authorization" for name in headers):
        raise ValueError("credentials are both in the URL and in an Authorization header: pass one")
    user, password = unquote(parts.username), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {**headers, "Authorization": f"Basic {token}"}
