"""The S3 driver's lean request path: GET, HEAD and PUT of one object over a minimal
HTTP/1.1 client (``http1``; aiohttp's when ``AICECHUNK_S3_HTTP=aiohttp``).

A request through botocore costs 1.3-1.9 ms of CPU (an ``AWSRequest``, endpoint rules
evaluated again, the signature, some sixty output fields parsed); the same request sent
here costs a third of that. botocore still decides everything that needs its knowledge,
once per client (``probe_address``): the URL an object's requests go to (endpoint,
virtual-hosted or path style, region) and the region and service that sign them, read
from a real request it prepared and signed. Credentials are botocore's too (the
environment's chain, assume-role, IMDS, the driver's refreshable ones), asked for
their current keys on every request, so refreshing keeps working.

``S3Wire.send`` retries as botocore's "standard" mode does (5xx, 429, throttling and
timeout codes, dropped connections and cut bodies; at most ``max_attempts`` tries,
backoff with full jitter) and returns the answer. It returns ``None`` where botocore
knows more than this path: a redirect, a 400 (a wrong region among them), any status it
does not expect; the driver then sends that request through botocore, and a client whose
bucket turned out to live elsewhere sends all further requests through botocore.

Set ``AICECHUNK_S3_LEAN=0`` in the environment to send every request through botocore.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import time
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from aicechunk.drivers.base import ByteRange, OffsetRange, RangeRequest, slice_bytes
from aicechunk.drivers.http1 import Origin, Pool
from aicechunk.drivers.s3_sign import EMPTY_SHA256, Signer, amz_date
from aicechunk.errors import WireError

__all__ = [
    "Address",
    "Answer",
    "S3Wire",
    "aiohttp_wanted",
    "etag",
    "lean_enabled",
    "probe_address",
    "ranged_body",
]

#: the object key botocore is asked to address (nothing is sent for it)
PROBE_KEY = "aicechunk-probe"

#: answers botocore's standard mode retries, by status and by error code
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_RETRY_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "EC2ThrottledException",
        "InternalError",
    }
)
#: statuses whose meaning the driver maps itself (others go to botocore)
_KNOWN_STATUS = frozenset({200, 204, 206, 304, 403, 404, 409, 412, 416}) | _RETRY_STATUS
#: error codes saying the bucket lives elsewhere: botocore follows them
_ELSEWHERE = frozenset(
    {
        "PermanentRedirect",
        "TemporaryRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
    }
)
_CODE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def lean_enabled() -> bool:
    """Whether the lean path may be used (``AICECHUNK_S3_LEAN=0`` turns it off)."""
    return os.environ.get("AICECHUNK_S3_LEAN", "1").strip().lower() not in ("0", "false", "no")


def aiohttp_wanted() -> bool:
    """Whether the lean path sends its requests with aiohttp instead of ``http1``
    (``AICECHUNK_S3_HTTP=aiohttp``: a way back should a server need aiohttp's leniency)."""
    return os.environ.get("AICECHUNK_S3_HTTP", "").strip().lower() == "aiohttp"


@dataclass(frozen=True, slots=True)
class Address:
    """Where one bucket's objects are, as botocore addresses them: ``{scheme}://{host}
    {prefix}/{key, percent-encoded}``; ``region`` signs them (``None``: unsigned)."""

    scheme: str
    host: str
    prefix: str
    region: str | None

    def path(self, key: str) -> str:
        """The encoded request path of ``key`` (full key, the driver's prefix included);
        as botocore encodes it: everything but letters, digits, ``-_.~/`` escaped."""
        return f"{self.prefix}/{quote(key, safe='/~')}"

    def origin(self) -> Origin:
        """Where the requests connect to."""
        parts = urlsplit(f"{self.scheme}://{self.host}")
        return Origin(self.scheme, parts.hostname or "", parts.port or _DEFAULT_PORTS[self.scheme])


def _host(url: str) -> str:
    # the Host header botocore signs: lower case, no userinfo, no default port
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def address_of(url: str, authorization: str | None, headers: dict[str, str]) -> Address | None:
    """The ``Address`` of a request botocore prepared for ``PROBE_KEY`` (its URL, its
    ``Authorization`` header, ``None`` if unsigned), or ``None`` if the lean path cannot
    make the same requests (another signature scheme, a query, S3 Express sessions)."""
    parts = urlsplit(url)
    tail = f"/{PROBE_KEY}"
    if parts.query or parts.fragment or not parts.path.endswith(tail):
        return None
    if parts.scheme not in _DEFAULT_PORTS or any(
        name.lower() == "x-amz-s3session-token" for name in headers
    ):
        return None
    region: str | None = None
    if authorization is not None:
        found = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=[^/,]*/\d{8}/([^/,]+)/s3/aws4_request, .*",
            authorization,
        )
        if found is None:
            return None
        region = found.group(1)
    return Address(parts.scheme, _host(url), parts.path[: -len(tail)], region)


async def probe_address(client: Any, bucket: str) -> Address | None:
    """Ask ``client`` (aiobotocore) how it would address and sign a HEAD of an object of
    ``bucket``: it prepares and signs the request, which is stopped before it is sent."""
    from botocore.awsrequest import AWSPreparedRequest

    seen: list[AWSPreparedRequest] = []

    def stop(request: AWSPreparedRequest, **_: Any) -> None:
        seen.append(request)
        raise asyncio.CancelledError  # not retried; nothing was sent

    events = client.meta.events
    events.register_first("before-send.s3.HeadObject", stop, unique_id="aicechunk-probe")
    try:
        await client.head_object(Bucket=bucket, Key=PROBE_KEY)
    except asyncio.CancelledError:
        if not seen:
            raise
    except Exception:
        return None  # botocore could not prepare it (no credentials, ...): it decides
    finally:
        events.unregister("before-send.s3.HeadObject", unique_id="aicechunk-probe")
    if not seen:
        return None
    request = seen[0]
    headers = {
        str(k): v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        for k, v in request.headers.items()
    }
    auth = headers.get("Authorization")
    if _proxied(request.url):
        return None  # botocore honours proxy settings of the environment; this path not
    return address_of(request.url, auth, headers)


def _proxied(url: str) -> bool:
    proxies = urllib.request.getproxies()
    scheme = urlsplit(url).scheme
    if scheme not in proxies and "all" not in proxies:
        return False
    return not urllib.request.proxy_bypass(urlsplit(url).hostname or "")


@dataclass(frozen=True, slots=True)
class Answer:
    """A server's answer: status, headers, body, and S3's error code (``""`` for a
    success; the status as text when an error has no code, as botocore reports it)."""

    status: int
    headers: Any
    body: bytes
    code: str


class CredentialSource:
    """The current keys, from static ones or a botocore credentials object (whose
    ``get_frozen_credentials`` may refresh them; aiobotocore's is a coroutine)."""

    def __init__(self, static: tuple[str, str, str | None] | None, live: Any = None) -> None:
        self._static = static
        self._live = live
        self._async = live is not None and asyncio.iscoroutinefunction(live.get_frozen_credentials)

    async def keys(self) -> tuple[str, str, str | None]:
        """(access key id, secret, session token or ``None``)."""
        if self._static is not None:
            return self._static
        frozen = self._live.get_frozen_credentials()
        if self._async:
            frozen = await frozen
        return frozen.access_key, frozen.secret_key, frozen.token


class S3Wire:
    """Signed requests to one bucket over an ``http1.Pool`` or an aiohttp session (see
    the module)."""

    def __init__(
        self,
        session: Pool | Any,
        address: Address,
        credentials: CredentialSource | None,
        *,
        attempts: int,
        user_agent: str,
    ) -> None:
        from yarl import URL

        self._url = URL
        self.session = session
        self._pool = session if isinstance(session, Pool) else None
        self._origin = address.origin()
        self.address = address
        self.enabled = True
        self._credentials = credentials if address.region is not None else None
        self._signer = Signer(address.region or "us-east-1")
        self._attempts = max(attempts, 1)
        self._base = f"{address.scheme}://{address.host}"
        self._user_agent = user_agent
        self._date = (-1, "")

    def _now(self) -> str:
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, amz_date(now))
        return self._date[1]

    async def _headers(
        self, method: str, path: str, extra: dict[str, str], body: bytes
    ) -> dict[str, str]:
        headers = {"host": self.address.host, **extra}
        if self._credentials is not None:
            access, secret, token = await self._credentials.keys()
            payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
            self._signer.sign(method, path, headers, payload, access, secret, token, self._now())
        headers["user-agent"] = self._user_agent
        # what aiohttp would add otherwise, given here: no body encoding (bodies are not
        # decoded, so a compressed answer would be read as the object), and S3's own
        # default type; asking aiohttp to skip its defaults costs more than the request's
        # signature (a sorted multidict per request)
        headers["accept"] = "*/*"
        headers["accept-encoding"] = "identity"
        if method == "PUT":
            headers["content-type"] = "binary/octet-stream"
        return headers

    async def _once(self, method: str, path: str, extra: dict[str, str], body: bytes) -> Answer:
        headers = await self._headers(method, path, extra, body)
        if self._pool is not None:
            got = await self._pool.request(
                self._origin, method, path, headers, body if method == "PUT" else b""
            )
            code = ""
            if got.status >= 300:
                found = _CODE.search(got.body)
                code = found.group(1).decode("utf-8", "replace") if found else str(got.status)
            return Answer(got.status, got.headers, got.body, code)
        url = self._url(self._base + path, encoded=True)
        session: Any = self.session
        async with session.request(
            method,
            url,
            headers=headers,
            data=body if method == "PUT" else None,
            allow_redirects=False,
        ) as response:
            status: int = response.status
            data: bytes = b"" if method == "HEAD" else await response.read()
            length = response.content_length
            if method != "HEAD" and length is not None and length != len(data):
                import aiohttp

                # a body cut short: sent again, as botocore does a dropped connection
                raise aiohttp.ClientPayloadError(
                    f"answer of {len(data)} bytes where Content-Length says {length}"
                )
            code = ""
            if status >= 300:
                found = _CODE.search(data)
                code = found.group(1).decode("utf-8", "replace") if found else str(status)
            return Answer(status, response.headers, data, code)

    def _elsewhere(self, answer: Answer) -> bool:
        # a redirect, or a region that is not the one signed for
        if answer.status in (301, 302, 307) or answer.code in _ELSEWHERE:
            return True
        region = answer.headers.get("x-amz-bucket-region")
        return bool(region) and self.address.region is not None and region != self.address.region

    async def send(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> Answer | None:
        """Send a request (``path`` from ``Address.path``), retrying what botocore's
        standard mode retries; the final answer, or ``None``: send it through botocore.
        A connection error, cut body or answer that is not HTTP still failing after the
        last try is raised (botocore retries those too)."""
        import aiohttp

        delay = 0.05
        for attempt in range(1, self._attempts + 1):
            try:
                answer = await self._once(method, path, headers, body)
            except (
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
                aiohttp.ClientResponseError,  # not HTTP (no status is ever raised here)
                TimeoutError,
                WireError,  # http1's: cut, malformed or missing answers, no connection
            ):
                if attempt >= self._attempts:
                    raise
            else:
                status, code = answer.status, answer.code
                if status < 300:
                    return answer
                if self._elsewhere(answer):
                    self.enabled = False  # the bucket lives elsewhere: botocore follows
                    return None
                if status in _RETRY_STATUS or code in _RETRY_CODES:
                    if attempt >= self._attempts:
                        return answer
                else:
                    return answer if status in _KNOWN_STATUS else None
            await asyncio.sleep(random.uniform(0, delay))  # full jitter
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")  # pragma: no cover


def etag(answer: Answer) -> str | None:
    """The answer's ETag (``""``: none); ``None`` if it has several that differ, which
    no version can be trusted from."""
    found = set(answer.headers.getall("ETag", ()))
    if len(found) > 1:
        return None
    return found.pop() if found else ""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def ranged_body(answer: Answer, byte_range: ByteRange | None) -> bytes | str:
    """The bytes a successful GET with ``byte_range`` (``None``: the whole object)
    asked for, or what is wrong with the answer (a ``str``, for the error message).

    A 200 answer to a ranged request is the whole object (HTTP lets a server ignore
    ``Range``) and is cut here; a 206 must say in ``Content-Range`` which bytes it holds,
    and they must be the ones asked for.
    """
    body = answer.body
    if answer.status != 206:
        return slice_bytes(body, byte_range)
    header = answer.headers.get("Content-Range", "")
    found = _CONTENT_RANGE.fullmatch(header.strip())
    if byte_range is None or found is None:
        return f"partial answer with Content-Range {header[:100]!r}"
    first, last, total = int(found.group(1)), int(found.group(2)), found.group(3)
    if last - first + 1 != len(body) or (total != "*" and last >= int(total)):
        return f"Content-Range {header[:100]!r} does not match the {len(body)} bytes sent"
    if isinstance(byte_range, RangeRequest):
        good = first == byte_range.offset and last < byte_range.offset + byte_range.length
    elif isinstance(byte_range, OffsetRange):
        good = first == byte_range.offset and (total == "*" or last == int(total) - 1)
    else:  # the last n bytes
        good = total == "*" or (
            first == max(0, int(total) - byte_range.length) and last == int(total) - 1
        )
    if not good:
        return f"Content-Range {header[:100]!r} is not the range asked for"
    return body
