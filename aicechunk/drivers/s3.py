"""A driver for S3 and S3-compatible object stores: a lean path for the hot requests,
aiobotocore for the rest.

GET, HEAD and PUT of one object go out over a minimal HTTP/1.1 client (``http1``),
signed here (``s3_wire``, ``s3_sign``), with botocore's addressing, credentials and
retry policy; listing, batch deletes and whatever the lean path does not expect
(redirects, a wrong region, unknown answers) go through aiobotocore (``s3_conn``).
``AICECHUNK_S3_LEAN=0`` sends everything through aiobotocore.

Conditional writes use ``If-None-Match: *`` and ``If-Match: <etag>``; listing is
paginated (S3 lists in UTF-8 byte order, which is our key order); deletes go in batches
of 1000. Retries with exponential backoff and jitter on throttling, 5xx and connection
errors are botocore's "standard" mode, bounded by ``max_attempts``; a body cut or stalled
while it is read (which botocore does not retry) is requested again here, with the same
bound. Every failure is a ``StorageError``. Connections are made lazily in the loop that
uses them, one per loop and per set of settings, shared by the drivers with those
settings (a repository opened again reuses warm connections).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from aicechunk.drivers._loop import Client, LoopClients
from aicechunk.drivers._retry import retrying
from aicechunk.drivers.base import (
    ByteRange,
    ConfiguredDriver,
    ObjectInfo,
    http_range_header,
)
from aicechunk.drivers.s3_client import parse_timestamp
from aicechunk.drivers.s3_conn import S3Connection
from aicechunk.drivers.s3_credentials import S3Credentials
from aicechunk.drivers.s3_settings import S3Settings
from aicechunk.drivers.s3_wire import Answer, S3Wire, etag, ranged_body
from aicechunk.errors import ObjectNotFound, PreconditionFailed, StorageError, WireError

__all__ = ["S3Credentials", "S3Driver", "S3Settings"]

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_NOT_MODIFIED = {"304", "NotModified"}


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

    ready: asyncio.Future[S3Connection]
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
        await shared.ready.result().aclose()


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
        self._clients: LoopClients[S3Connection] = LoopClients(self._open_client)

    @property
    def label(self) -> str:
        """``s3://bucket/prefix`` (never credentials)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # -- client -----------------------------------------------------------------------

    async def _open_client(self) -> Client[S3Connection]:
        # a share of the loop's client for these settings, made by the first driver
        loop = asyncio.get_running_loop()
        key = self.settings.client_key()
        pool = _CLIENTS.setdefault(loop, {})
        shared = pool.get(key)
        if shared is None:
            shared = _Shared(
                asyncio.ensure_future(S3Connection.open(self.settings, self.label)),
                asyncio.Semaphore(self.settings.max_concurrency),
            )
            pool[key] = shared
        try:
            connection = await asyncio.shield(shared.ready)
        except BaseException:
            if shared.ready.done() and pool.get(key) is shared:
                del pool[key]  # a failed creation is not cached
            raise
        shared.users += 1
        return Client(connection, shared.limit, partial(_release, pool, key, shared))

    async def _client(self) -> tuple[Any, asyncio.Semaphore]:
        # the aiobotocore client
        client = await self._clients.get()
        return await client.value.botocore(), client.limit

    async def _wire(self) -> tuple[S3Wire | None, asyncio.Semaphore]:
        # the lean path, if it serves these settings
        client = await self._clients.get()
        return await client.value.wire(self.bucket), client.limit

    async def _lean(
        self,
        wire: S3Wire,
        limit: asyncio.Semaphore,
        method: str,
        key: str,
        headers: dict[str, str],
        body: bytes = b"",
    ) -> Answer | None:
        # one request on the lean path: its answer, or None (send it through botocore)
        try:
            async with limit:
                return await wire.send(method, wire.address.path(self._key(key)), headers, body)
        except WireError as err:  # a broken or missing answer, still so after the last try
            raise StorageError(
                f"{method.lower()} failed: {err.reason}", key=key, driver=self.label
            ) from err
        except Exception as err:  # connection errors after the last try, bad header values
            raise self._error(err, key, method.lower()) from err

    def _bad_answer(self, key: str, what: str) -> StorageError:
        return StorageError(f"malformed answer: {what}", key=key, driver=self.label)

    async def close(self) -> None:
        """Release this driver's share of the running loop's client; the client closes
        when no driver of the loop uses it any more."""
        await self._clients.close()

    # -- helpers ----------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, err: Exception, key: str | None, action: str) -> StorageError:
        if type(err).__name__ == "NoCredentialsError":
            return StorageError(
                f"{action} failed: no AWS credentials found: pass access_key_id and "
                "secret_access_key to s3_storage(), set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or a profile), or use anonymous=True for a public "
                "bucket",
                key=key,
                driver=self.label,
            )
        return self._error_for(_error_code(err) or type(err).__name__, key, action)

    def _error_for(self, code: str, key: str | None, action: str) -> StorageError:
        """The error of an S3 error code (or HTTP status, or exception type name)."""
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
        return StorageError(f"{action} failed: {code}", key=key, driver=self.label)

    def _info(self, key: str, headers: dict[str, Any], size: int) -> ObjectInfo:
        return ObjectInfo(key, size, str(headers.get("ETag", "")), headers.get("LastModified"))

    # -- reads ------------------------------------------------------------------------

    def _lean_info(self, key: str, answer: Answer, size: int) -> ObjectInfo:
        modified = answer.headers.get("Last-Modified")
        try:
            when = parse_timestamp(modified) if modified else None
        except (TypeError, ValueError):
            when = None
        version = etag(answer)
        if version is None:
            raise self._bad_answer(key, "several different ETags")
        return ObjectInfo(key, size, version, when)

    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        header = http_range_header(byte_range)
        wire, limit = await self._wire()
        if wire is not None:
            answer = await self._lean(wire, limit, "GET", key, {"range": header} if header else {})
            if answer is not None:
                if answer.status < 300:
                    data = ranged_body(answer, byte_range)
                    if isinstance(data, str):
                        raise self._bad_answer(key, data)
                    return data
                if answer.code == "InvalidRange":  # a range starting at or past the end
                    await self._head(key)
                    return b""
                raise self._error_for(answer.code, key, "get")
        client, limit = await self._client()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
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
        found = await self._get_whole(key, "")
        assert found is not None  # no version to match
        return found

    async def _get_object_if_changed(
        self, key: str, version: str
    ) -> tuple[bytes, ObjectInfo] | None:
        return await self._get_whole(key, version)

    async def _get_whole(self, key: str, version: str) -> tuple[bytes, ObjectInfo] | None:
        """The whole object, or ``None`` if it is at ``version`` (a GET with
        ``If-None-Match``: "304 Not Modified", no body; ``""``: any version)."""
        extra = {"if-none-match": version} if version else {}
        wire, limit = await self._wire()
        if wire is not None:
            answer = await self._lean(wire, limit, "GET", key, extra)
            if answer is not None:
                if answer.status == 304 and version:
                    said = etag(answer)
                    if said not in ("", version):  # a 304 must be about that version
                        raise self._bad_answer(key, "304 Not Modified for another ETag")
                    return None
                if answer.status != 200:
                    if answer.status < 300:
                        raise self._bad_answer(key, f"HTTP {answer.status} to a whole GET")
                    raise self._error_for(answer.code, key, "get")
                info = self._lean_info(key, answer, len(answer.body))
                return None if version and info.version == version else (answer.body, info)
        client, limit = await self._client()
        condition = {"IfNoneMatch": version} if version else {}

        async def read() -> tuple[bytes, dict[str, Any]]:
            async with limit:
                response: dict[str, Any] = await client.get_object(
                    Bucket=self.bucket, Key=self._key(key), **condition
                )
                async with response["Body"] as body:
                    return await body.read(), response

        try:
            data, response = await retrying(
                read, attempts=self.settings.max_attempts, transient=_body_cut
            )
        except Exception as err:
            if version and _error_code(err) in _NOT_MODIFIED:
                return None
            raise self._error(err, key, "get") from err
        info = self._info(key, response, len(data))
        return None if version and info.version == version else (data, info)

    async def _head(self, key: str) -> ObjectInfo:
        wire, limit = await self._wire()
        if wire is not None:
            answer = await self._lean(wire, limit, "HEAD", key, {})
            if answer is not None:
                if answer.status >= 300:
                    raise self._error_for(answer.code, key, "head")
                length = answer.headers.get("Content-Length", "")
                if not length.isdigit():
                    raise self._bad_answer(key, f"HEAD without a size ({length[:30]!r})")
                return self._lean_info(key, answer, int(length))
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
        wire, limit = await self._wire()
        if wire is not None:
            headers = {"if-none-match": "*"} if if_none_match else {}
            if if_match is not None:
                headers["if-match"] = if_match
            answer = await self._lean(wire, limit, "PUT", key, headers, data)
            if answer is not None:
                if answer.status >= 300:
                    if if_match is not None and answer.code in _NOT_FOUND:
                        raise PreconditionFailed(
                            "object to replace does not exist", key=key, driver=self.label
                        )
                    raise self._error_for(answer.code, key, "put")
                version = etag(answer)
                if not version:
                    raise self._bad_answer(key, "PUT answered without an ETag (or several)")
                return ObjectInfo(key, len(data), version, datetime.now(UTC))
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
