"""The S3 semantics of ``tests.bench_s3_server``: buckets and objects in memory, and one
request's answer computed at once (see that module's docstring for what is served).

Every call here runs to completion without yielding, so a conditional write's check and
its store are one step in the server's event loop.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qsl, quote, unquote
from xml.sax.saxutils import escape

__all__ = ["S3Error", "S3State", "error_body", "handle", "now"]

XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'

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


def now() -> tuple[str, str]:
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
    if last and int(last) < start:  # not a valid range: ignored
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(int(last) if last else size - 1, size - 1)


def _unsatisfiable(size: int) -> S3Error:
    return S3Error(
        416,
        "InvalidRange",
        "The requested range is not satisfiable",
        [("Content-Range", f"bytes */{size}")],
    )


def error_body(err: S3Error, resource: str, request_id: str) -> bytes:
    return (
        f"{XML_HEAD}<Error><Code>{err.code}</Code><Message>{escape(err.message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


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
    if method in ("GET", "HEAD") and not params.keys() - {"versionId"}:
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
    http_date, iso_date = now()
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
    try:
        max_keys = min(1000, int(params.get("max-keys", "1000")))
    except ValueError as err:
        raise S3Error(400, "InvalidArgument", "max-keys is not a number") from err
    token = params.get("continuation-token")
    after = params.get("start-after", "")
    if token:
        try:
            after = max(after, base64.b64decode(token, b"-_", validate=True).decode())
        except ValueError as err:
            raise S3Error(400, "InvalidArgument", "The continuation token is not valid") from err
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
