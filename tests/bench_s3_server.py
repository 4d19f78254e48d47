"""A small, fast, in-memory S3 server for the benchmarks (moto stays the tests' S3).

moto answers 350-450 requests/s here: the S3 rows at 20 ms measured moto's CPU rather
than the clients and the latency. This server speaks just the S3 both clients use, on
raw asyncio with a minimal HTTP/1.1 parser, and answers every request synchronously in
the event loop: no coroutine, no thread, no framework per request.

Served (path-style addressing only: ``/bucket/key``):

- CreateBucket (``PUT /bucket``), HeadBucket;
- PutObject, with ``If-None-Match: *`` and ``If-Match: <etag>`` (412
  ``PreconditionFailed``; ``If-Match`` on a missing key is 404 ``NoSuchKey``, as on
  S3). The check and the write are one step: the loop runs one request at a time, so
  of concurrent conditional PUTs on one key exactly one wins;
- CopyObject (``x-amz-copy-source``, ``If-None-Match: *`` on the destination);
- GetObject and HeadObject, with ``Range`` (``a-b``, ``a-``, ``-n``; 416
  ``InvalidRange`` when nothing of the object is in it), ``If-Match`` (412) and
  ``If-None-Match`` (304);
- ListObjectsV2 (``prefix``, ``delimiter``, ``max-keys``, ``continuation-token``,
  ``start-after``, ``encoding-type=url``), keys in UTF-8 byte order (which is Python's
  code point order);
- DeleteObject and DeleteObjects (``POST /bucket?delete``).

Anything else is 501 ``NotImplemented``. Requests are not authenticated: the signature
is not checked (a benchmark server on 127.0.0.1). ETags are MD5s of the body, as S3's
for single-part uploads. ``bench_s3_server()`` runs it in a process of its own.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import hashlib
import itertools
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qsl, quote, unquote
from xml.sax.saxutils import escape

__all__ = ["S3Protocol", "S3State", "bench_s3_server", "serve_bench_s3"]

XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    416: "Requested Range Not Satisfiable",
    501: "Not Implemented",
}
#: a request head larger than this is refused (a broken client, not S3)
MAX_HEAD = 64 * 1024

Headers = list[tuple[str, str]]


@dataclass(slots=True)
class Obj:
    """One stored object: its bytes and what S3 says about them."""

    data: bytes
    etag: str
    http_date: str
    iso_date: str


@dataclass
class Bucket:
    """A bucket's objects, and their keys in order once a listing asked for them."""

    objects: dict[str, Obj] = field(default_factory=dict)
    ordered: list[str] | None = None

    def put(self, key: str, obj: Obj) -> None:
        if key not in self.objects and self.ordered is not None:
            bisect.insort(self.ordered, key)
        self.objects[key] = obj

    def delete(self, key: str) -> None:
        if self.objects.pop(key, None) is not None and self.ordered is not None:
            self.ordered.pop(bisect.bisect_left(self.ordered, key))

    def keys(self) -> list[str]:
        if self.ordered is None:
            self.ordered = sorted(self.objects)
        return self.ordered


class S3Error(Exception):
    """An S3 error answer: HTTP status, S3 code, message."""

    def __init__(self, status: int, code: str, message: str, extra: Headers | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.extra = extra or []


@dataclass
class S3State:
    """Every bucket, and a request counter for the request ids."""

    buckets: dict[str, Bucket] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def bucket(self, name: str) -> Bucket:
        found = self.buckets.get(name)
        if found is None:
            raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
        return found


_dates: dict[int, tuple[str, str]] = {}


def _now() -> tuple[str, str]:
    """(HTTP date, ISO 8601 date) of this second, made once per second."""
    second = int(time.time())
    found = _dates.get(second)
    if found is None:
        _dates.clear()
        iso = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(second))
        found = _dates[second] = (formatdate(second, usegmt=True), iso)
    return found


def _etag_matches(condition: str, etag: str) -> bool:
    return condition.strip() == "*" or etag.strip('"') in (
        c.strip().strip('"') for c in condition.split(",")
    )


def _byte_range(spec: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte span ``spec`` (a ``Range`` header) asks of an object of
    ``size`` bytes; None for no range (absent, malformed or multiple ranges: the whole
    object, as S3 does); ``S3Error`` 416 when no byte of the object is in it."""
    if not spec or not spec.startswith("bytes=") or "," in spec:
        return None
    first, dash, last = spec[6:].strip().partition("-")
    if not dash or not (first + last).isdigit():
        return None
    if not first:  # the last ``last`` bytes
        if int(last) == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if end < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size - 1)


def _unsatisfiable(size: int) -> S3Error:
    return S3Error(
        416,
        "InvalidRange",
        "The requested range is not satisfiable",
        [("Content-Range", f"bytes */{size}")],
    )


def _error_body(err: S3Error, resource: str, request_id: str) -> bytes:
    return (
        f"{XML_HEAD}<Error><Code>{err.code}</Code><Message>{escape(err.message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


class S3Protocol(asyncio.Protocol):
    """One client connection: parses requests as their bytes arrive and answers each at
    once, in order (pipelined requests too); the connection is kept until the client
    closes it or says ``Connection: close``."""

    def __init__(self, state: S3State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        # the parsed head of the request whose body is still arriving
        self.pending: tuple[str, str, dict[str, str], int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            if not self._next():
                return

    def _next(self) -> bool:
        """Answer the next complete request in the buffer; False when there is none."""
        assert self.transport is not None
        if self.pending is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.close()
                return False
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", ""):
                length = -1
            else:
                length = int(headers.get("content-length") or 0)
            self.pending = (method, target, headers, length)
            if headers.get("expect", "").lower() == "100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        method, target, headers, length = self.pending
        if length < 0:
            decoded = _dechunk(self.buffer)
            if decoded is None:
                return False
            body, used = decoded
        else:
            if len(self.buffer) < length:
                return False
            body, used = bytes(self.buffer[:length]), length
        del self.buffer[:used]
        self.pending = None
        self._answer(method, target, headers, body)
        if headers.get("connection", "").lower() == "close":
            self.transport.close()
        return True

    def _answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        assert self.transport is not None
        request_id = f"{next(self.state.ids):016X}"
        path, _, query = target.partition("?")
        try:
            status, out, payload = handle(self.state, method, path, query, headers, body)
        except S3Error as err:
            status, out = err.status, [("Content-Type", "application/xml"), *err.extra]
            payload = _error_body(err, unquote(path), request_id)
        length = len(payload)
        if method == "HEAD":
            # a HEAD answer carries its object's length but no body
            length = next((int(v) for k, v in out if k == "Content-Length"), 0)
            out = [(k, v) for k, v in out if k != "Content-Length"]
            payload = b""
        head = "".join(
            [
                f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n",
                f"Date: {_now()[0]}\r\nServer: bench-s3\r\nx-amz-request-id: {request_id}\r\n",
                *(f"{k}: {v}\r\n" for k, v in out if k != "Content-Length"),
                "" if status == 304 else f"Content-Length: {length}\r\n",
                "\r\n",
            ]
        ).encode("latin-1")
        if payload:
            self.transport.writelines([head, payload])
        else:
            self.transport.write(head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _dechunk(buffer: bytearray) -> tuple[bytes, int] | None:
    """A chunked body at the start of ``buffer`` and the bytes it took; None until all
    of it (through the last chunk's trailers) has arrived."""
    at, parts = 0, list[bytes]()
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        at = line_end + 2
        if size == 0:
            end = buffer.find(b"\r\n", at)
            while end > at:  # trailer lines, up to the empty one
                at = end + 2
                end = buffer.find(b"\r\n", at)
            if end < 0:
                return None
            return b"".join(parts), end + 2
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2


def handle(
    state: S3State, method: str, path: str, query: str, headers: dict[str, str], body: bytes
) -> tuple[int, Headers, bytes]:
    """One request's answer: (status, headers, body); raises ``S3Error``."""
    bucket_name, _, raw_key = path.lstrip("/").partition("/")
    key = unquote(raw_key)
    params = dict(parse_qsl(query, keep_blank_values=True))
    params.pop("x-id", None)  # the AWS SDKs name the operation; the method and path say it
    if not bucket_name:
        raise S3Error(501, "NotImplemented", "ListBuckets is not served")
    if not key:
        return _bucket_call(state, method, bucket_name, params, body)
    bucket = state.bucket(bucket_name)
    if method in ("GET", "HEAD") and not params.keys() - {"versionId", "partNumber"}:
        return _get(bucket, key, headers)
    if method == "PUT" and not params:
        if "x-amz-copy-source" in headers:
            return _copy(state, bucket, key, headers)
        return _put(bucket, key, headers, body)
    if method == "DELETE" and not params:
        bucket.delete(key)
        return 204, [], b""
    raise S3Error(501, "NotImplemented", f"{method} {path}?{query} is not served")


def _bucket_call(
    state: S3State, method: str, name: str, params: dict[str, str], body: bytes
) -> tuple[int, Headers, bytes]:
    if method == "PUT" and not params:
        state.buckets.setdefault(name, Bucket())
        return 200, [("Location", f"/{name}")], b""
    bucket = state.bucket(name)
    if method == "HEAD":
        return 200, [], b""
    if method == "GET" and params.get("list-type") == "2":
        return 200, [("Content-Type", "application/xml")], _list(name, bucket, params)
    if method == "POST" and "delete" in params:
        return 200, [("Content-Type", "application/xml")], _delete_many(bucket, body)
    if method == "DELETE" and not params:
        if bucket.objects:
            raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty")
        del state.buckets[name]
        return 204, [], b""
    raise S3Error(501, "NotImplemented", f"{method} /{name} with {sorted(params)} is not served")


def _object_headers(obj: Obj) -> Headers:
    return [
        ("ETag", obj.etag),
        ("Last-Modified", obj.http_date),
        ("Accept-Ranges", "bytes"),
        ("Content-Type", "binary/octet-stream"),
    ]


def _get(bucket: Bucket, key: str, headers: dict[str, str]) -> tuple[int, Headers, bytes]:
    obj = bucket.objects.get(key)
    if obj is None:
        raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
    if_match, if_none_match = headers.get("if-match"), headers.get("if-none-match")
    if if_match is not None and not _etag_matches(if_match, obj.etag):
        raise S3Error(412, "PreconditionFailed", "At least one of the preconditions failed")
    if if_none_match is not None and _etag_matches(if_none_match, obj.etag):
        return 304, [("ETag", obj.etag), ("Last-Modified", obj.http_date)], b""
    out = _object_headers(obj)
    span = _byte_range(headers.get("range"), len(obj.data))
    if span is None:
        return 200, [*out, ("Content-Length", str(len(obj.data)))], obj.data
    start, end = span
    out.append(("Content-Range", f"bytes {start}-{end}/{len(obj.data)}"))
    out.append(("Content-Length", str(end - start + 1)))
    return 206, out, obj.data[start : end + 1]


def _check_write(bucket: Bucket, key: str, headers: dict[str, str]) -> None:
    """S3's conditional write checks, against the object stored now."""
    current = bucket.objects.get(key)
    if_match = headers.get("if-match")
    if if_match is not None:
        if current is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
        if not _etag_matches(if_match, current.etag):
            raise S3Error(412, "PreconditionFailed", "At least one of the preconditions failed")
    if headers.get("if-none-match", "").strip() == "*" and current is not None:
        raise S3Error(412, "PreconditionFailed", "At least one of the preconditions failed")


def _store(bucket: Bucket, key: str, data: bytes) -> Obj:
    http_date, iso_date = _now()
    obj = Obj(data, f'"{hashlib.md5(data).hexdigest()}"', http_date, iso_date)
    bucket.put(key, obj)
    return obj


def _put(
    bucket: Bucket, key: str, headers: dict[str, str], body: bytes
) -> tuple[int, Headers, bytes]:
    if headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
        raise S3Error(501, "NotImplemented", "aws-chunked uploads are not served")
    _check_write(bucket, key, headers)
    obj = _store(bucket, key, body)
    return 200, [("ETag", obj.etag)], b""


def _copy(
    state: S3State, bucket: Bucket, key: str, headers: dict[str, str]
) -> tuple[int, Headers, bytes]:
    source = unquote(headers["x-amz-copy-source"].partition("?")[0]).lstrip("/")
    source_bucket, _, source_key = source.partition("/")
    found = state.bucket(source_bucket).objects.get(source_key)
    if found is None:
        raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
    _check_write(bucket, key, headers)
    obj = _store(bucket, key, found.data)
    result = (
        f"{XML_HEAD}<CopyObjectResult><LastModified>{obj.iso_date}</LastModified>"
        f"<ETag>{escape(obj.etag)}</ETag></CopyObjectResult>"
    )
    return 200, [("Content-Type", "application/xml")], result.encode()


def _list(name: str, bucket: Bucket, params: dict[str, str]) -> bytes:
    """A ListObjectsV2 page."""
    prefix = params.get("prefix", "")
    delimiter = params.get("delimiter", "")
    max_keys = min(1000, int(params.get("max-keys", "1000")))
    token = params.get("continuation-token")
    after = params.get("start-after", "")
    if token:
        after = max(after, base64.urlsafe_b64decode(token.encode()).decode())
    encode = params.get("encoding-type") == "url"

    def text(value: str) -> str:
        return quote(value, safe="/") if encode else escape(value)

    keys = bucket.keys()
    at = max(bisect.bisect_left(keys, prefix), bisect.bisect_right(keys, after))
    parts: list[str] = []
    count, last, truncated = 0, "", False
    seen_prefix = ""
    while at < len(keys) and keys[at].startswith(prefix):
        key = keys[at]
        at += 1
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if common == seen_prefix:
                    continue
                if count == max_keys:
                    truncated = True
                    break
                seen_prefix = common
                parts.append(f"<CommonPrefixes><Prefix>{text(common)}</Prefix></CommonPrefixes>")
                # continue after every key under this common prefix
                count, last = count + 1, common + "\U0010ffff"
                continue
        if count == max_keys:
            truncated = True
            break
        obj = bucket.objects[key]
        parts.append(
            f"<Contents><Key>{text(key)}</Key><LastModified>{obj.iso_date}</LastModified>"
            f"<ETag>{escape(obj.etag)}</ETag><Size>{len(obj.data)}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
        )
        count, last = count + 1, key
    head = [
        f'{XML_HEAD}<ListBucketResult xmlns="{XMLNS}"><Name>{escape(name)}</Name>',
        f"<Prefix>{text(prefix)}</Prefix><KeyCount>{count}</KeyCount>",
        f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{str(truncated).lower()}</IsTruncated>",
    ]
    if delimiter:
        head.append(f"<Delimiter>{text(delimiter)}</Delimiter>")
    if encode:
        head.append("<EncodingType>url</EncodingType>")
    if token:
        head.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
    if params.get("start-after"):
        head.append(f"<StartAfter>{text(params['start-after'])}</StartAfter>")
    if truncated:
        next_token = base64.urlsafe_b64encode(last.encode()).decode()
        head.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
    return "".join([*head, *parts, "</ListBucketResult>"]).encode()


def _delete_many(bucket: Bucket, body: bytes) -> bytes:
    """DeleteObjects: every key of the request's XML is deleted (missing keys too, as
    S3 does); the answer lists them unless the request asked to be quiet."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as err:
        raise S3Error(400, "MalformedXML", "The XML you provided was not well-formed") from err
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    quiet = (root.findtext(f"{ns}Quiet") or "").strip().lower() == "true"
    parts = []
    for item in root.iter(f"{ns}Object"):
        key = item.findtext(f"{ns}Key") or ""
        bucket.delete(key)
        if not quiet:
            parts.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
    return f'{XML_HEAD}<DeleteResult xmlns="{XMLNS}">{"".join(parts)}</DeleteResult>'.encode()


async def _serve(port: int) -> None:
    state = S3State()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: S3Protocol(state), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def serve_bench_s3(port: int) -> None:
    """The entry point of ``bench_s3_server``'s process."""
    asyncio.run(_serve(port))


@contextlib.contextmanager
def bench_s3_server() -> Iterator[str]:
    """This server in a process of its own (as a remote S3 is: it shares no CPU time
    or GIL with a Python client); yields its endpoint URL."""
    from tests.servers import free_port, serving_in_process

    port = free_port()
    code = f"from tests.bench_s3_server import serve_bench_s3 as s; s({port})"
    with serving_in_process(port, code):
        yield f"http://127.0.0.1:{port}"
