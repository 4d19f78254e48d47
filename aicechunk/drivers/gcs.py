"""A driver for Google Cloud Storage, on gcloud-aio-storage.

Versions are object generations; conditional writes use ``ifGenerationMatch`` (``0``
means "create only"). Conditional uploads always go as multipart uploads: GCS honours
preconditions on every upload type, but fake-gcs-server ignores them on
``uploadType=media``, and multipart is correct on both. Transient failures (timeouts,
dropped connections, truncated bodies, 408/429/5xx) are retried with exponential backoff
and full jitter, bounded by ``max_attempts``; every failure is a ``StorageError``.
One HTTP session per event loop, made lazily.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from aicechunk.drivers._retry import retrying
from aicechunk.drivers.base import (
    ByteRange,
    Driver,
    DriverConfig,
    LoopLocal,
    ObjectInfo,
    RangeRequest,
    check_endpoint,
    close_at_loop_end,
    forget_at_loop_end,
    http_range_header,
    is_empty_range,
    redacted_url,
)
from aicechunk.errors import (
    AicechunkError,
    InvalidLocation,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
)

__all__ = ["GCSDriver"]

_T = TypeVar("_T")


@dataclass
class _LoopState:
    storage: Any = None
    session: Any = None
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class GCSDriver(Driver):
    """Objects under ``gs://bucket/prefix/``.

    ``endpoint_url`` (or the ``STORAGE_EMULATOR_HOST`` environment variable) points the
    driver at an emulator; ``anonymous`` reads public buckets without credentials.
    """

    type_name = "gcs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        service_account_file: str | None = None,
        anonymous: bool = False,
        endpoint_url: str | None = None,
        max_concurrency: int = 64,
        max_attempts: int = 6,
        timeout: float = 60.0,
    ) -> None:
        if not bucket or "/" in bucket:
            raise InvalidLocation(
                f"gs://{bucket}", f"GCS bucket must be a bare bucket name, got {bucket!r}"
            )
        check_endpoint(endpoint_url, "GCS")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.service_account_file = service_account_file
        self.anonymous = anonymous
        self.endpoint_url = endpoint_url
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.timeout = timeout
        self._state: LoopLocal[_LoopState] = LoopLocal(
            lambda: _LoopState(limit=asyncio.Semaphore(self.max_concurrency))
        )

    def describe(self) -> DriverConfig:
        """Plain data: the service account file's path, never its contents."""
        return {
            "type": "gcs",
            "bucket": self.bucket,
            "prefix": self.prefix,
            "service_account_file": self.service_account_file,
            "anonymous": self.anonymous,
            "endpoint_url": redacted_url(self.endpoint_url),
            "max_concurrency": self.max_concurrency,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
        }

    @classmethod
    def from_config(cls, config: DriverConfig) -> GCSDriver:
        """Rebuild from ``describe()``."""
        return cls(
            config["bucket"],
            config.get("prefix") or "",
            service_account_file=config.get("service_account_file"),
            anonymous=bool(config.get("anonymous", False)),
            endpoint_url=config.get("endpoint_url"),
            max_concurrency=int(config.get("max_concurrency", 64)),
            max_attempts=int(config.get("max_attempts", 6)),
            timeout=float(config.get("timeout", 60.0)),
        )

    @property
    def label(self) -> str:
        """``gs://bucket/prefix``."""
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    def __getstate__(self) -> dict[str, Any]:
        return self.describe()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(GCSDriver.from_config(state).__dict__)

    # -- client -----------------------------------------------------------------------

    async def _client(self) -> tuple[Any, asyncio.Semaphore]:
        state = self._state.get()
        if state.storage is None:
            import aiohttp
            from gcloud.aio.storage import Storage

            endpoint = self.endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST")
            if endpoint and not endpoint.startswith("http"):
                endpoint = f"http://{endpoint}"
            session: Any = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
            is_dev = bool(endpoint) or self.anonymous
            try:
                storage = Storage(
                    service_file=self.service_account_file,
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
            state.session, state.storage = session, storage
            await close_at_loop_end(state.session, state.session.close)
        return state.storage, state.limit

    async def close(self) -> None:
        """Close the HTTP session made in the running loop."""
        state = self._state.pop_current()
        if state is not None and state.session is not None:
            forget_at_loop_end(state.session)
            await state.session.close()

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, err: BaseException, key: str | None, action: str) -> StorageError:
        status = getattr(err, "status", None)
        if status == 404:
            return ObjectNotFound("no such object", key=key, driver=self.label)
        if status == 412:
            return PreconditionFailed(
                "conditional write lost (generation changed)", key=key, driver=self.label
            )
        if status in (401, 403):
            return StorageError(
                f"access denied (HTTP {status}): check the credentials", key=key, driver=self.label
            )
        detail = f"HTTP {status}" if status else type(err).__name__
        return StorageError(f"{action} failed: {detail}", key=key, driver=self.label)

    async def _call(self, key: str | None, action: str, fn: Callable[[Any], Awaitable[_T]]) -> _T:
        storage, limit = await self._client()

        async def send() -> _T:
            async with limit:
                return await fn(storage)

        try:
            return await retrying(send, attempts=self.max_attempts)
        except AicechunkError:
            raise
        except Exception as err:  # the client's errors, whatever their type
            raise self._error(err, key, action) from err

    def _info(self, key: str, meta: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            key,
            int(meta.get("size", 0)),
            str(meta.get("generation", "")),
            _parse_time(meta.get("updated")),
        )

    # -- reads ------------------------------------------------------------------------

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        if is_empty_range(byte_range):
            await self._head(key)  # still report a missing object
            return b""
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
