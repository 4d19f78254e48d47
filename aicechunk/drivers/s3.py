"""A driver for S3 and S3-compatible object stores, on aiobotocore.

Conditional writes use ``If-None-Match: *`` and ``If-Match: <etag>``; listing is
paginated (S3 lists in UTF-8 byte order, which is our key order); deletes go in batches
of 1000. Retries with exponential backoff and jitter on throttling, 5xx and connection
errors are botocore's "standard" mode, bounded by ``max_attempts``; a body cut or stalled
while it is read (which botocore does not retry) is requested again here, with the same
bound. Every failure is a ``StorageError``. Clients are made
lazily in the loop that uses them, one per loop and per set of settings, shared by the
drivers with those settings (a repository opened again reuses warm connections).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar

from aicechunk.drivers._loop import Client, LoopClients
from aicechunk.drivers._retry import retrying
from aicechunk.drivers.base import (
    ByteRange,
    ConfiguredDriver,
    ObjectInfo,
    http_range_header,
)
from aicechunk.drivers.s3_client import client_config, shared_session, tuned
from aicechunk.drivers.s3_credentials import S3Credentials, refreshable
from aicechunk.drivers.settings import URL, DriverSettings, check_endpoint
from aicechunk.errors import (
    InvalidLocation,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    redact_credentials,
)

__all__ = ["S3Credentials", "S3Driver", "S3Settings"]

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


@dataclass(frozen=True)
class S3Settings(DriverSettings):
    """The S3 driver's options (see ``S3Driver``); static credentials appear only as
    the user configured them, and never in a ``repr``."""

    type_name: ClassVar[str] = "s3"

    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = field(default=None, metadata=URL)
    allow_http: bool = False
    force_path_style: bool = False
    credentials: S3Credentials = field(default_factory=S3Credentials)
    max_concurrency: int = 64
    max_attempts: int = 10
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise InvalidLocation(
                f"s3://{self.bucket}", f"S3 bucket must be a bare bucket name, got {self.bucket!r}"
            )
        endpoint = self.endpoint_url
        check_endpoint(endpoint, "S3")
        if endpoint and endpoint.lower().startswith("http://") and not self.allow_http:
            raise ValueError(
                f"endpoint {redact_credentials(endpoint)} is plain HTTP: pass allow_http=True"
            )
        object.__setattr__(self, "prefix", self.prefix.strip("/"))
        super().__post_init__()

    def client_key(self) -> tuple[object, ...]:
        """Everything the client is made from (credentials included: a client is never
        shared across them)."""
        return (
            self.region,
            self.endpoint_url,
            self.force_path_style,
            self.credentials,
            self.max_attempts,
            self.connect_timeout,
            self.read_timeout,
            self.max_concurrency,
        )


def _error_code(err: BaseException) -> str:
    """The S3 error code of a failed call, or its HTTP status, or ``""``: connection
    errors (timeouts, dropped connections, cut bodies) carry no response at all."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return ""
    error = response.get("Error")
    code = str(error.get("Code", "")) if isinstance(error, dict) else ""
    if not code:
        meta = response.get("ResponseMetadata")
        status = meta.get("HTTPStatusCode") if isinstance(meta, dict) else None
        code = str(status) if status else ""
    return code


def _body_cut(err: BaseException) -> bool:
    """Whether reading a response body failed in a way worth a new request: the
    connection dropped or stalled mid-body. (botocore retries the requests themselves,
    but not the reading of a streamed body.)"""
    import aiohttp
    from aiobotocore.response import AioReadTimeoutError
    from botocore.exceptions import ResponseStreamingError

    # botocore wraps what goes wrong during the request; a body read lets aiohttp's through
    cut = aiohttp.ClientPayloadError | aiohttp.ClientConnectionError
    return isinstance(err, ResponseStreamingError | AioReadTimeoutError | cut)


@dataclass
class _Shared:
    """One client (and its connection pool) shared by the drivers of one loop that
    have the same settings: opening a repository again reuses warm connections."""

    ready: asyncio.Future[tuple[Any, Any]]
    limit: asyncio.Semaphore
    users: int = 0


# loop -> client settings -> shared client
_CLIENTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[object, ...], _Shared]
] = weakref.WeakKeyDictionary()


async def _release(
    pool: dict[tuple[object, ...], _Shared], key: tuple[object, ...], shared: _Shared
) -> None:
    # one driver lets the shared client go; the last one closes it
    shared.users -= 1
    if shared.users > 0:
        return
    if pool.get(key) is shared:
        del pool[key]
    if shared.ready.done() and not shared.ready.cancelled() and not shared.ready.exception():
        _, context = shared.ready.result()
        await context.__aexit__(None, None, None)


class S3Driver(ConfiguredDriver[S3Settings]):
    """Objects under ``s3://bucket/prefix/``."""

    type_name = "s3"
    settings_type = S3Settings

    def __init__(
        self,
        bucket: str,
        prefix: str = S3Settings.prefix,
        *,
        region: str | None = S3Settings.region,
        endpoint_url: str | None = S3Settings.endpoint_url,
        allow_http: bool = S3Settings.allow_http,
        force_path_style: bool = S3Settings.force_path_style,
        credentials: S3Credentials | None = None,
        max_concurrency: int = S3Settings.max_concurrency,
        max_attempts: int = S3Settings.max_attempts,
        connect_timeout: float = S3Settings.connect_timeout,
        read_timeout: float = S3Settings.read_timeout,
    ) -> None:
        self._start(
            S3Settings(
                bucket,
                prefix,
                region=region,
                endpoint_url=endpoint_url,
                allow_http=allow_http,
                force_path_style=force_path_style,
                credentials=credentials or S3Credentials(),
                max_concurrency=max_concurrency,
                max_attempts=max_attempts,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        )

    def _start(self, settings: S3Settings) -> None:
        super()._start(settings)
        self.bucket, self.prefix = settings.bucket, settings.prefix
        self._clients: LoopClients[Any] = LoopClients(self._open_client)

    @property
    def label(self) -> str:
        """``s3://bucket/prefix`` (never credentials)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # -- client -----------------------------------------------------------------------

    async def _make_client(self) -> tuple[Any, Any]:
        from aiobotocore.session import get_session

        settings = self.settings
        creds = settings.credentials
        config = client_config(
            max_attempts=settings.max_attempts,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_pool_connections=settings.max_concurrency,
            path_style=settings.force_path_style,
            anonymous=creds.anonymous,
        )
        kwargs: dict[str, Any] = {"config": config}
        if settings.region:
            kwargs["region_name"] = settings.region
        if settings.endpoint_url:
            kwargs["endpoint_url"] = str(settings.endpoint_url)
        if creds.kind == "static":
            # plain str for the client: the Secret wrappers only guard what is shown
            kwargs["aws_access_key_id"] = str(creds.access_key_id)
            kwargs["aws_secret_access_key"] = str(creds.secret_access_key)
            token = creds.session_token
            kwargs["aws_session_token"] = None if token is None else str(token)
        session = shared_session(get_session)
        if creds.kind == "refreshable":
            # a session of its own holds the refreshing credentials (botocore has no other
            # way to give a client some); it shares the loaded service models
            shared = session
            session = tuned(get_session())
            session.register_component("data_loader", shared.get_component("data_loader"))
            session._credentials = await refreshable(creds)
        try:
            context = session.create_client("s3", **kwargs)
            client = await context.__aenter__()
        except Exception as err:  # botocore's checks of region, endpoint, configuration
            raise StorageError(
                f"cannot create the S3 client: {type(err).__name__}: {err}", driver=self.label
            ) from err
        return client, context

    async def _open_client(self) -> Client[Any]:
        # a share of the loop's client for these settings, made by the first driver
        loop = asyncio.get_running_loop()
        key = self.settings.client_key()
        pool = _CLIENTS.setdefault(loop, {})
        shared = pool.get(key)
        if shared is None:
            shared = _Shared(
                asyncio.ensure_future(self._make_client()),
                asyncio.Semaphore(self.settings.max_concurrency),
            )
            pool[key] = shared
        try:
            client, _ = await asyncio.shield(shared.ready)
        except BaseException:
            if shared.ready.done() and pool.get(key) is shared:
                del pool[key]  # a failed creation is not cached
            raise
        shared.users += 1
        return Client(client, shared.limit, partial(_release, pool, key, shared))

    async def _client(self) -> tuple[Any, asyncio.Semaphore]:
        client = await self._clients.get()
        return client.value, client.limit

    async def close(self) -> None:
        """Release this driver's share of the running loop's client; the client closes
        when no driver of the loop uses it any more."""
        await self._clients.close()

    # -- helpers ----------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, err: Exception, key: str | None, action: str) -> StorageError:
        code = _error_code(err)
        if code in _NOT_FOUND:
            return ObjectNotFound("no such object", key=key, driver=self.label)
        if code in _PRECONDITION:
            return PreconditionFailed(
                "conditional write lost (object exists or changed)", key=key, driver=self.label
            )
        if code in _AUTH:
            return StorageError(
                f"access denied ({code}): check the credentials", key=key, driver=self.label
            )
        if code == "NoSuchBucket":
            return StorageError(
                f"bucket {self.bucket!r} does not exist", key=key, driver=self.label
            )
        if type(err).__name__ == "NoCredentialsError":
            return StorageError(
                f"{action} failed: no AWS credentials found: pass access_key_id and "
                "secret_access_key to s3_storage(), set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or a profile), or use anonymous=True for a public "
                "bucket",
                key=key,
                driver=self.label,
            )
        detail = code or type(err).__name__
        return StorageError(f"{action} failed: {detail}", key=key, driver=self.label)

    def _info(self, key: str, headers: dict[str, Any], size: int) -> ObjectInfo:
        return ObjectInfo(key, size, str(headers.get("ETag", "")), headers.get("LastModified"))

    # -- reads ------------------------------------------------------------------------

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        client, limit = await self._client()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        header = http_range_header(byte_range)
        if header:
            kwargs["Range"] = header

        async def read() -> bytes:
            async with limit:
                response = await client.get_object(**kwargs)
                async with response["Body"] as body:
                    data: bytes = await body.read()
                    return data

        try:
            return await retrying(read, attempts=self.settings.max_attempts, transient=_body_cut)
        except Exception as err:
            if _error_code(err) == "InvalidRange":  # a range starting at or past the end
                await self._head(key)
                return b""
            raise self._error(err, key, "get") from err

    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        client, limit = await self._client()

        async def read() -> tuple[bytes, dict[str, Any]]:
            async with limit:
                response: dict[str, Any] = await client.get_object(
                    Bucket=self.bucket, Key=self._key(key)
                )
                async with response["Body"] as body:
                    return await body.read(), response

        try:
            data, response = await retrying(
                read, attempts=self.settings.max_attempts, transient=_body_cut
            )
        except Exception as err:
            raise self._error(err, key, "get") from err
        return data, self._info(key, response, len(data))

    async def _head(self, key: str) -> ObjectInfo:
        client, limit = await self._client()
        async with limit:
            try:
                response = await client.head_object(Bucket=self.bucket, Key=self._key(key))
            except Exception as err:
                raise self._error(err, key, "head") from err
        return self._info(key, response, int(response.get("ContentLength", 0)))

    async def _list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        client, limit = await self._client()
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            async with limit:
                try:
                    page = await client.list_objects_v2(**kwargs)
                except Exception as err:
                    raise self._error(err, prefix or None, "list") from err
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    item["Key"][strip:],
                    int(item["Size"]),
                    str(item.get("ETag", "")),
                    item.get("LastModified"),
                )
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    # -- writes -----------------------------------------------------------------------

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        client, limit = await self._client()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        async with limit:
            try:
                response = await client.put_object(**kwargs)
            except Exception as err:
                if if_match is not None and isinstance(
                    self._error(err, key, "put"), ObjectNotFound
                ):
                    raise PreconditionFailed(
                        "object to replace does not exist", key=key, driver=self.label
                    ) from err
                raise self._error(err, key, "put") from err
        return ObjectInfo(key, len(data), str(response.get("ETag", "")), datetime.now(UTC))

    async def _delete(self, key: str) -> None:
        await self._delete_many([key])

    async def _delete_many(self, keys: list[str]) -> None:
        client, limit = await self._client()
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            async with limit:
                try:
                    response = await client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True},
                    )
                except Exception as err:
                    raise self._error(err, batch[0], "delete") from err
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"delete failed: {first.get('Code')} {first.get('Message', '')}".strip(),
                    key=str(first.get("Key", "")),
                    driver=self.label,
                )
