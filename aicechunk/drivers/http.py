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
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from aicechunk.drivers._loop import Client, LoopClients
from aicechunk.drivers._retry import RETRY_STATUS, request, status_error
from aicechunk.drivers.base import (
    ByteRange,
    ConfiguredDriver,
    ObjectInfo,
    http_range_header,
    range_bounds,
)
from aicechunk.drivers.settings import SECRET, DriverSettings
from aicechunk.drivers.urls import Location, parse_location, redact_url
from aicechunk.errors import InvalidLocation, ReadOnlyError, StorageError, TransientStatus

__all__ = ["MAX_REDIRECTS", "HTTPDriver", "HTTPSettings"]

_REDIRECT_STATUS = {301, 302, 303, 307, 308}

#: The most redirects one request follows.
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class HTTPSettings(DriverSettings):
    """The HTTP driver's options (see ``HTTPDriver``). A ``user:password@`` written in
    ``base_url`` becomes an ``Authorization: Basic`` header and leaves the URL; header
    values are secrets (tokens)."""

    type_name: ClassVar[str] = "http"

    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict, metadata=SECRET)
    max_concurrency: int = 32
    max_attempts: int = 5
    timeout: float = 60.0

    def __post_init__(self) -> None:
        url = self.base_url
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"HTTP storage needs an http(s):// URL, got {redact_url(url)!r}")
        object.__setattr__(self, "headers", _with_userinfo_auth(url, dict(self.headers)))
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        object.__setattr__(self, "base_url", urlunsplit(parts._replace(netloc=netloc)).rstrip("/"))
        parse_location(self.base_url)  # InvalidLocation is a ValueError
        super().__post_init__()


class HTTPDriver(ConfiguredDriver[HTTPSettings]):
    """Objects at ``base_url/<key>``, read-only.

    ``headers`` are sent with every request to the base URL's origin; a
    ``user:password@`` in ``base_url`` becomes an ``Authorization: Basic`` header (and
    leaves the URL, so it is never shown). ``follow_redirect`` decides which redirect
    targets may be followed (default: those under ``base_url``); it is a live policy,
    not part of the settings (a rebuilt driver follows the default).
    """

    type_name = "http"
    settings_type = HTTPSettings
    supports_writes = False
    supports_listing = False
    supports_conditional_writes = False
    follow_redirect: Callable[[Location], bool] | None

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_concurrency: int = HTTPSettings.max_concurrency,
        max_attempts: int = HTTPSettings.max_attempts,
        timeout: float = HTTPSettings.timeout,
        follow_redirect: Callable[[Location], bool] | None = None,
    ) -> None:
        self._start(
            HTTPSettings(
                base_url,
                headers or {},
                max_concurrency=max_concurrency,
                max_attempts=max_attempts,
                timeout=timeout,
            )
        )
        self.follow_redirect = follow_redirect

    def _start(self, settings: HTTPSettings) -> None:
        super()._start(settings)
        self.base_url = settings.base_url
        self._base = parse_location(settings.base_url)
        self.follow_redirect = None
        self._clients: LoopClients[Any] = LoopClients(self._open_session)

    @property
    def label(self) -> str:
        """The base URL (headers and credentials, which are tokens, are never shown)."""
        return self.base_url

    async def _open_session(self) -> Client[Any]:
        import aiohttp

        # no session-wide headers: they would follow any URL (see _send)
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            connector=aiohttp.TCPConnector(limit=self.settings.max_concurrency),
            auto_decompress=False,
        )
        return Client(session, asyncio.Semaphore(self.settings.max_concurrency), session.close)

    async def close(self) -> None:
        """Close the HTTP session made in the running loop."""
        await self._clients.close()

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
        client = await self._clients.get()

        async def send() -> tuple[int, Any, bytes]:
            status, response_headers, body = await self._send(
                client.value, client.limit, method, key, headers or {}
            )
            if status in RETRY_STATUS:
                raise TransientStatus(status)
            return status, response_headers, body

        return await request(
            send, attempts=self.settings.max_attempts, key=key, driver=self.label, action=method
        )

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
                send.update(self.settings.headers)
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
            raise status_error(status, key, self.label, method)

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
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
