"""A driver for Google Cloud Storage, on gcloud-aio-storage.

Versions are object generations; conditional writes use ``ifGenerationMatch`` (``0``
means "create only"). Conditional uploads always go as multipart uploads: GCS honours
preconditions on every upload type, but fake-gcs-server ignores them on
``uploadType=media``, and multipart is correct on both. Transient failures (timeouts,
dropped connections, truncated bodies, 408/429/5xx) are retried with exponential backoff
and full jitter, bounded by ``max_attempts``; every failure is a ``StorageError``.
One HTTP session per event loop, made lazily. Refreshable credentials (a bearer token from
a callable): ``drivers.gcs_credentials``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from aicechunk.drivers._loop import Client, LoopClients
from aicechunk.drivers._retry import request
from aicechunk.drivers.base import (
    ByteRange,
    ConfiguredDriver,
    ObjectInfo,
    RangeRequest,
    http_range_header,
)
from aicechunk.drivers.gcs_credentials import GCSRefreshableCredentials
from aicechunk.drivers.settings import URL, DriverSettings, check_endpoint
from aicechunk.errors import InvalidLocation, ObjectNotFound, PreconditionFailed, StorageError

__all__ = ["GCSDriver", "GCSSettings"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class GCSSettings(DriverSettings):
    """The GCS driver's options (see ``GCSDriver``): the service account file's path,
    never its contents; or ``credentials``, refreshable ones (a bearer token from a
    callable that travels with the settings)."""

    type_name: ClassVar[str] = "gcs"

    bucket: str
    prefix: str = ""
    service_account_file: str | None = None
    anonymous: bool = False
    endpoint_url: str | None = field(default=None, metadata=URL)
    credentials: GCSRefreshableCredentials | None = None
    max_concurrency: int = 64
    max_attempts: int = 6
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise InvalidLocation(
                f"gs://{self.bucket}", f"GCS bucket must be a bare bucket name, got {self.bucket!r}"
            )
        check_endpoint(self.endpoint_url, "GCS")
        object.__setattr__(self, "prefix", self.prefix.strip("/"))
        super().__post_init__()


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class GCSDriver(ConfiguredDriver[GCSSettings]):
    """Objects under ``gs://bucket/prefix/``.

    ``endpoint_url`` (or the ``STORAGE_EMULATOR_HOST`` environment variable) points the
    driver at an emulator; ``anonymous`` reads public buckets without credentials;
    ``credentials`` (refreshable) send the bearer token their callable returns, to an
    emulator too. Given several, ``anonymous`` wins, then ``credentials``, then the
    service account file (``gcs_storage`` refuses such a mix).
    """

    type_name = "gcs"
    settings_type = GCSSettings

    def __init__(
        self,
        bucket: str,
        prefix: str = GCSSettings.prefix,
        *,
        service_account_file: str | None = GCSSettings.service_account_file,
        anonymous: bool = GCSSettings.anonymous,
        endpoint_url: str | None = GCSSettings.endpoint_url,
        credentials: GCSRefreshableCredentials | None = GCSSettings.credentials,
        max_concurrency: int = GCSSettings.max_concurrency,
        max_attempts: int = GCSSettings.max_attempts,
        timeout: float = GCSSettings.timeout,
    ) -> None:
        self._start(
            GCSSettings(
                bucket,
                prefix,
                service_account_file=service_account_file,
                anonymous=anonymous,
                endpoint_url=endpoint_url,
                credentials=credentials,
                max_concurrency=max_concurrency,
                max_attempts=max_attempts,
                timeout=timeout,
            )
        )

    def _start(self, settings: GCSSettings) -> None:
        super()._start(settings)
        self.bucket, self.prefix, self.timeout = settings.bucket, settings.prefix, settings.timeout
        self._clients: LoopClients[Any] = LoopClients(self._open_client)

    @property
    def label(self) -> str:
        """``gs://bucket/prefix``."""
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    # -- client -----------------------------------------------------------------------

    async def _open_client(self) -> Client[Any]:
        import aiohttp
        from gcloud.aio.storage import Storage

        settings = self.settings
        endpoint = settings.endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST")
        if endpoint and not endpoint.startswith("http"):
            endpoint = f"http://{endpoint}"
        session: Any = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_concurrency),
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
        )
        token: Any = None  # gcloud-aio's Token, or our BearerToken (what it uses of one)
        is_dev = bool(endpoint) or settings.anonymous
        if settings.credentials is not None and not settings.anonymous:
            # gcloud-aio sends no token in its "dev" (emulator) mode: ours is always sent
            token, is_dev = settings.credentials.token(self.label), False
        try:
            storage = Storage(
                service_file=settings.service_account_file,
                token=token,
                session=session,
                api_root=endpoint or ("https://storage.googleapis.com" if is_dev else None),
                api_is_dev=is_dev,
            )
        except Exception as err:  # an unreadable service account file, a bad endpoint
            await session.close()
            raise StorageError(
                f"cannot create the GCS client: {type(err).__name__}: {err}",
                driver=self.label,
            ) from err
        return Client(storage, asyncio.Semaphore(settings.max_concurrency), session.close)

    async def close(self) -> None:
        """Close the HTTP session made in the running loop."""
        await self._clients.close()

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _call(self, key: str | None, action: str, fn: Callable[[Any], Awaitable[_T]]) -> _T:
        client = await self._clients.get()

        async def send() -> _T:
            async with client.limit:
                return await fn(client.value)

        return await request(
            send, attempts=self.settings.max_attempts, key=key, driver=self.label, action=action
        )

    def _info(self, key: str, meta: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            key,
            int(meta.get("size", 0)),
            str(meta.get("generation", "")),
            _parse_time(meta.get("updated")),
        )

    # -- reads ------------------------------------------------------------------------

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        header = http_range_header(byte_range)
        headers = {"Range": header} if header else None
        name = self._name(key)
        try:
            data: bytes = await self._call(
                key,
                "get",
                lambda s: s.download(self.bucket, name, headers=headers, timeout=self.timeout),
            )
        except StorageError as err:
            cause = err.__cause__
            if getattr(cause, "status", None) == 416:  # range starts at or past the end
                await self._head(key)
                return b""
            raise
        if isinstance(byte_range, RangeRequest) and len(data) > byte_range.length:
            data = data[: byte_range.length]  # never more than asked, whatever the server did
        return data

    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        name = self._name(key)
        meta = await self._call(
            key, "head", lambda s: s.download_metadata(self.bucket, name, timeout=self.timeout)
        )
        generation = str(meta.get("generation", ""))

        async def download(s: Any) -> bytes:
            result: bytes = await s._download(
                self.bucket,
                name,
                params={"alt": "media", "ifGenerationMatch": generation},
                timeout=self.timeout,
            )
            return result

        try:
            data = await self._call(key, "get", download)
        except PreconditionFailed:
            # replaced between the two requests: read again, consistently
            return await self._get_object(key)
        return data, self._info(key, meta)

    async def _head(self, key: str) -> ObjectInfo:
        name = self._name(key)
        meta = await self._call(
            key, "head", lambda s: s.download_metadata(self.bucket, name, timeout=self.timeout)
        )
        return self._info(key, meta)

    async def _list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        full = self._name(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            params = {"prefix": full, "maxResults": "1000"}
            if token:
                params["pageToken"] = token
            page: dict[str, Any] = await self._call(
                prefix or None,
                "list",
                lambda s, p=params: s.list_objects(self.bucket, params=p, timeout=self.timeout),  # type: ignore[misc]
            )
            for item in page.get("items", []):
                yield self._info(item["name"][strip:], item)
            token = page.get("nextPageToken")
            if not token:
                return

    # -- writes -----------------------------------------------------------------------

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        name = self._name(key)
        params: dict[str, str] = {}
        if if_none_match:
            params["ifGenerationMatch"] = "0"
        elif if_match is not None:
            if not if_match.isdigit():
                raise PreconditionFailed(
                    f"version {if_match!r} is not a generation", key=key, driver=self.label
                )
            params["ifGenerationMatch"] = if_match
        metadata = {"metadata": {"writer": "aicechunk"}} if params else None

        async def upload(s: Any) -> dict[str, Any]:
            result: dict[str, Any] = await s.upload(
                self.bucket,
                name,
                data,
                content_type="application/octet-stream",
                parameters=dict(params),
                metadata=metadata,
                force_resumable_upload=False,
                timeout=self.timeout,
            )
            return result

        meta = await self._call(key, "put", upload)
        return self._info(key, meta)

    async def _delete(self, key: str) -> None:
        name = self._name(key)
        try:
            await self._call(
                key, "delete", lambda s: s.delete(self.bucket, name, timeout=self.timeout)
            )
        except ObjectNotFound:
            return

    async def _delete_many(self, keys: list[str]) -> None:
        await asyncio.gather(*(self._delete(k) for k in keys))
