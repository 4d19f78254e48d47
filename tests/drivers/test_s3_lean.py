"""The S3 driver's lean request path (``drivers/s3_wire.py``) at real servers.

GET, HEAD and PUT go out over the driver's own HTTP/1.1 client (``http1``; every test
runs again with aiohttp's, ``AICECHUNK_S3_HTTP=aiohttp``), signed by the driver;
everything else, and every answer the lean path does not expect, goes through
aiobotocore. botocore's requests are
told apart at the server by the ``amz-sdk-invocation-id`` header botocore adds to each.
The servers: moto behind the recording proxy, and crafted aiohttp servers answering
what S3 would not (redirects, wrong ranges, cut bodies, no ETag).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aicechunk.drivers import _refresh
from aicechunk.drivers.base import RangeRequest
from aicechunk.drivers.s3 import S3Credentials, S3Driver
from aicechunk.errors import ObjectNotFound, StorageError
from tests.servers import FaultProxy, create_s3_bucket, next_bucket_name, serve_forwarding


@pytest.fixture(autouse=True, params=["http1", "aiohttp"])
def sender(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which client the lean path sends with (both must keep every promise here)."""
    monkeypatch.setenv("AICECHUNK_S3_HTTP", request.param)
    return str(request.param)


DATA = bytes(range(256)) * 40


def by_botocore(headers: dict[str, str]) -> bool:
    return any(name.lower() == "amz-sdk-invocation-id" for name in headers)


def access_key(headers: dict[str, str]) -> str:
    auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
    found = re.search(r"Credential=([^/]+)/", auth)
    return found.group(1) if found else ""


def driver(url: str, bucket: str, credentials: S3Credentials | None = None, **kw: Any) -> S3Driver:
    return S3Driver(
        bucket,
        "repo",
        endpoint_url=url,
        allow_http=True,
        force_path_style=True,
        region="us-east-1",
        credentials=credentials or S3Credentials("testing", "testing"),
        **kw,
    )


async def test_gets_heads_and_puts_take_the_lean_path(proxied: tuple[FaultProxy, str]) -> None:
    proxy, bucket = proxied
    async with driver(proxy.url, bucket) as s3:
        await s3.put("a", DATA)
        version = (await s3.head("a")).version
        await s3.put("a", DATA[:10], if_match=version)
        await s3.put("b", DATA, if_none_match=True)
        assert await s3.get("a") == DATA[:10]
        assert await s3.get("b", RangeRequest(5, 10)) == DATA[5:15]
        assert (await s3.get_object("b"))[0] == DATA
        assert [info.key async for info in s3.list()] == ["a", "b"]
        await s3.delete("a")
    lean = [(m, h) for m, h in proxy.seen if not by_botocore(h)]
    assert [m for m, _ in lean] == ["PUT", "HEAD", "PUT", "PUT", "GET", "GET", "GET"]
    assert [m for m, h in proxy.seen if by_botocore(h)] == ["GET", "POST"]  # list, delete
    for _, headers in lean:
        assert access_key(headers) == "testing"
        assert "x-amz-security-token" not in {k.lower() for k in headers}


async def test_the_lean_path_can_be_turned_off(
    proxied: tuple[FaultProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICECHUNK_S3_LEAN", "0")
    proxy, bucket = proxied
    async with driver(proxy.url, bucket) as s3:
        await s3.put("a", DATA)
        assert await s3.get("a") == DATA
    assert all(by_botocore(headers) for _, headers in proxy.seen)


async def test_session_tokens_are_sent_and_anonymous_requests_are_not_signed(
    proxied: tuple[FaultProxy, str],
) -> None:
    proxy, bucket = proxied
    async with driver(proxy.url, bucket, S3Credentials("testing", "s", "the/token+")) as s3:
        await s3.put("a", DATA)
        assert await s3.get("a") == DATA
    async with driver(proxy.url, bucket, S3Credentials(anonymous=True)) as s3:
        with pytest.raises(StorageError, match="access denied"):  # moto's bucket is private
            await s3.get("a")
    put, get, anonymous = ({k.lower(): v for k, v in h.items()} for _, h in proxy.seen)
    assert put["x-amz-security-token"] == get["x-amz-security-token"] == "the/token+"
    assert "authorization" not in anonymous and not by_botocore(anonymous)


_ROTATION = itertools.count(1)


def rotating_keys() -> tuple[str, str, None, datetime]:
    """Fresh keys with a new id on every call, valid for one second (a refresh window
    of two seconds makes every request fetch new ones)."""
    return f"key-{next(_ROTATION)}", "secret", None, datetime.now(UTC) + timedelta(seconds=1)


async def test_refreshable_credentials_rotate_on_the_lean_path(
    proxied: tuple[FaultProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_refresh, "REFRESH_BEFORE", timedelta(seconds=2))
    proxy, bucket = proxied
    async with driver(proxy.url, bucket, S3Credentials(get_credentials=rotating_keys)) as s3:
        await s3.put("a", DATA)
        for _ in range(3):
            assert await s3.get("a") == DATA
    keys = [access_key(h) for _, h in proxy.seen]
    assert not any(by_botocore(h) for _, h in proxy.seen)
    assert len(set(keys)) == len(keys) == 4 and all(k.startswith("key-") for k in keys)


# --- answers the lean path does not take: botocore's turn -----------------------------


Handler = Callable[[Any], Awaitable[Any]]


@contextlib.contextmanager
def crafted(moto: str, lean_answer: Callable[[Any], Any | None]) -> Iterator[tuple[str, list[str]]]:
    """A server answering the lean path's requests with ``lean_answer(request)`` (``None``:
    forwarded to moto) and forwarding botocore's to moto; yields (its URL, a log of
    ``"lean GET"`` / ``"botocore GET"`` entries)."""
    import aiohttp
    from aiohttp import web

    log: list[str] = []
    sessions: list[aiohttp.ClientSession] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        who = "botocore" if by_botocore(dict(request.headers)) else "lean"
        log.append(f"{who} {request.method}")
        if who == "lean":
            answer = lean_answer(request)
            if answer is not None:
                return await answer if hasattr(answer, "__await__") else answer
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with sessions[0].request(
            request.method, f"{moto}{request.rel_url}", headers=headers, data=body
        ) as upstream:
            payload = await upstream.read()
            keep = {"etag", "last-modified", "content-range", "x-amz-request-id"}
            out = {k: v for k, v in upstream.headers.items() if k.lower() in keep}
            if request.method == "HEAD":  # its Content-Length is the object's size
                head = web.StreamResponse(status=upstream.status, headers=out)
                head.content_length = upstream.content_length
                await head.prepare(request)
                return head
            return web.Response(status=upstream.status, body=payload, headers=out)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)

    with serve_forwarding(app, sessions) as url:
        yield url, log


def _error(status: int, code: str, **headers: str) -> Any:
    from aiohttp import web

    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>"
    return web.Response(status=status, text=body, content_type="application/xml", headers=headers)


@pytest.mark.parametrize(
    "status, code, sticky",
    [
        (301, "PermanentRedirect", True),
        (400, "AuthorizationHeaderMalformed", True),
        (307, "TemporaryRedirect", True),
        (400, "InvalidArgument", False),
        (501, "NotImplemented", False),
    ],
)
async def test_unexpected_answers_are_sent_again_through_botocore(
    s3_endpoint: str, status: int, code: str, sticky: bool
) -> None:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    async with driver(s3_endpoint, bucket) as seed:
        await seed.put("a", DATA)
    with crafted(s3_endpoint, lambda request: _error(status, code)) as (url, log):
        async with driver(url, bucket) as s3:
            assert await s3.get("a") == DATA
            assert await s3.get("a") == DATA
            await s3.put("b", DATA, if_none_match=True)
            assert (await s3.head("b")).size == len(DATA)
    if sticky:  # the bucket lives elsewhere: botocore takes every request after the first
        assert log == ["lean GET", "botocore GET", "botocore GET", "botocore PUT", "botocore HEAD"]
    else:
        assert log == [
            "lean GET",
            "botocore GET",
            "lean GET",
            "botocore GET",
            "lean PUT",
            "botocore PUT",
            "lean HEAD",
            "botocore HEAD",
        ]


async def test_a_region_header_that_is_not_ours_goes_to_botocore(s3_endpoint: str) -> None:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    answer = _error(403, "AccessDenied", **{"x-amz-bucket-region": "eu-west-1"})
    with crafted(s3_endpoint, lambda request: answer) as (url, log):
        async with driver(url, bucket) as s3:
            with pytest.raises(ObjectNotFound):
                await s3.head("nothing")
    assert log[:2] == ["lean HEAD", "botocore HEAD"]


# --- answers checked where they enter ---------------------------------------------------


async def test_a_partial_answer_for_other_bytes_is_a_storage_error(s3_endpoint: str) -> None:
    from aiohttp import web

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)

    def wrong_range(request: Any) -> Any:
        if request.method != "GET":
            return None
        return web.Response(
            status=206, body=DATA[5:15], headers={"Content-Range": "bytes 5-14/10240"}
        )

    with crafted(s3_endpoint, wrong_range) as (url, log):
        async with driver(url, bucket) as s3:
            with pytest.raises(StorageError, match="not the range asked for") as caught:
                await s3.get("a", RangeRequest(0, 10))
            assert "key='a'" in str(caught.value) and "s3://" in str(caught.value)
            with pytest.raises(StorageError, match="Content-Range"):
                await s3.get("a")  # a partial answer to a request for everything
    assert log == ["lean GET", "lean GET"]


async def test_a_whole_answer_to_a_ranged_get_is_cut_to_the_range(s3_endpoint: str) -> None:
    from aiohttp import web

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)

    def whole(request: Any) -> Any:
        return web.Response(body=DATA, headers={"ETag": '"e"'}) if request.method == "GET" else None

    with crafted(s3_endpoint, whole) as (url, _):
        async with driver(url, bucket) as s3:
            assert await s3.get("a", RangeRequest(100, 7)) == DATA[100:107]


async def test_a_server_free_to_compress_is_asked_for_the_bytes_as_stored(
    s3_endpoint: str,
) -> None:
    """Bodies are not decoded (a chunk is read as stored), so the lean path asks for no
    content coding: a request without ``Accept-Encoding`` accepts any (RFC 9110), and a
    server or proxy that then compresses would hand back gzip bytes as the object."""
    import gzip

    from aiohttp import web

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    async with driver(s3_endpoint, bucket) as seed:
        await seed.put("a", DATA)

    def compressing(request: Any) -> Any:
        accepted = request.headers.get("Accept-Encoding")
        if request.method != "GET" or (accepted is not None and "gzip" not in accepted):
            return None  # the object as stored, from moto
        headers = {"ETag": '"e"', "Content-Encoding": "gzip"}
        return web.Response(body=gzip.compress(DATA), headers=headers)

    with crafted(s3_endpoint, compressing) as (url, log):
        async with driver(url, bucket) as s3:
            assert await s3.get("a") == DATA
            assert await s3.get("a", RangeRequest(100, 7)) == DATA[100:107]
    assert log == ["lean GET", "lean GET"]


async def test_a_put_answered_without_an_etag_is_a_storage_error(s3_endpoint: str) -> None:
    from aiohttp import web

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    with crafted(s3_endpoint, lambda request: web.Response(status=200)) as (url, _):
        async with driver(url, bucket) as s3:
            with pytest.raises(StorageError, match="without an ETag") as caught:
                await s3.put("refs/x", DATA, if_none_match=True)
    assert "key='refs/x'" in str(caught.value)


async def test_a_body_shorter_than_its_length_is_retried_then_a_storage_error(
    s3_endpoint: str,
) -> None:
    from aiohttp import web

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 400)
        assert request.transport is not None
        request.transport.close()
        return response

    with crafted(s3_endpoint, lambda request: cut(request)) as (url, log):
        async with driver(url, bucket, max_attempts=3) as s3:
            with pytest.raises(StorageError) as caught:
                await s3.get("a")
    assert type(caught.value) is StorageError and "key='a'" in str(caught.value)
    assert log == ["lean GET"] * 3


async def test_drivers_of_two_buckets_in_one_loop_each_reach_their_own(s3_endpoint: str) -> None:
    # the lean path addresses one bucket: drivers that differ only in the bucket must not
    # share it (a benchmark creating a repository in a second bucket found the first's)
    first, second = next_bucket_name(), next_bucket_name()
    create_s3_bucket(s3_endpoint, first)
    create_s3_bucket(s3_endpoint, second)
    async with driver(s3_endpoint, first) as one, driver(s3_endpoint, second) as two:
        await one.put("k", b"first")
        assert not await two.exists("k")
        await two.put("k", b"second")
        assert (await one.get("k"), await two.get("k")) == (b"first", b"second")


async def test_an_answer_with_two_different_etags_is_a_storage_error(s3_endpoint: str) -> None:
    from aiohttp import web
    from multidict import CIMultiDict

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)

    def two(request: Any) -> Any:
        headers = CIMultiDict([("ETag", '"one"'), ("etag", '"two"')])
        return web.Response(body=DATA, headers=headers) if request.method == "GET" else None

    with crafted(s3_endpoint, two) as (url, _):
        async with driver(url, bucket) as s3:
            with pytest.raises(StorageError, match="several different ETags"):
                await s3.get_object("a")


@pytest.mark.parametrize("lean", ["1", "0"])
async def test_an_unchanged_object_asked_for_if_changed_is_not_transferred(
    proxied: tuple[FaultProxy, str], monkeypatch: pytest.MonkeyPatch, lean: str
) -> None:
    """``get_object_if_changed`` sends ``If-None-Match`` with the version held: S3
    answers 304 without the bytes while the object is at it, on the lean path and
    through botocore alike; a changed object comes whole, with its new version."""
    monkeypatch.setenv("AICECHUNK_S3_LEAN", lean)
    proxy, bucket = proxied
    async with driver(proxy.url, bucket) as s3:
        first = await s3.put("repo", DATA)
        assert await s3.get_object_if_changed("repo", first.version) is None
        second = await s3.put("repo", DATA[:100])
        found = await s3.get_object_if_changed("repo", first.version)
        assert found is not None and found[0] == DATA[:100]
        assert found[1].version == second.version != first.version
    gets = [h for m, h in proxy.seen if m == "GET"]
    assert len(gets) == 2 and all(by_botocore(h) == (lean == "0") for h in gets)
    sent = [{k.lower(): v for k, v in h.items()}.get("if-none-match") for h in gets]
    assert sent == [first.version, first.version]


async def test_a_304_for_another_etag_is_a_storage_error(s3_endpoint: str) -> None:
    """A 304 answers for the version asked about; one naming another ETag is not
    trusted (the file held would pass for what is stored)."""
    from aiohttp import web

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)

    def not_modified(request: Any) -> Any:
        if request.method == "GET" and request.headers.get("If-None-Match"):
            return web.Response(status=304, headers={"ETag": '"another"'})
        return None

    with crafted(s3_endpoint, not_modified) as (url, log):
        async with driver(url, bucket) as s3:
            version = (await s3.put("repo", DATA)).version
            with pytest.raises(StorageError, match="304 Not Modified for another ETag"):
                await s3.get_object_if_changed("repo", version)
    assert log == ["lean PUT", "lean GET"]
