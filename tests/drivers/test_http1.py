"""The lean S3 path's HTTP/1.1 client (``drivers/http1.py``) against servers that lie.

Each server is raw asyncio on 127.0.0.1, written to send exactly the bytes a test needs:
cut bodies, oversized or malformed heads, wrong lengths, chunked bodies good and bad,
connections closed mid-answer or between requests, answers that never come. Every
failure must be a ``WireError`` (a ``StorageError`` naming the key at the driver), never
a hang, and a connection is reused only after a whole answer.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aicechunk.drivers.http1 import MAX_HEAD, Origin, Pool
from aicechunk.drivers.s3 import S3Credentials, S3Driver
from aicechunk.errors import StorageError, WireError

pytestmark = pytest.mark.attack("lying HTTP servers")

#: answers a request (the request's head, its connection's count of requests so far)
Handler = Callable[[bytes, int, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Seen:
    """What a server saw: connections opened, request heads in order."""

    connections: int = 0
    closed: int = 0  # connections that ended (the client closed them, or the handler)
    requests: list[bytes] = field(default_factory=list)


def answer(body: bytes = b"hello", status: str = "200 OK", extra: str = "") -> bytes:
    """A well-formed answer with a Content-Length."""
    head = f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


@asynccontextmanager
async def server(handler: Handler, ssl: object = None) -> AsyncIterator[tuple[int, Seen]]:
    """A raw server calling ``handler`` per request; it keeps a connection open while the
    handler returns True. Yields its port and what it saw."""
    seen = Seen()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        count = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                seen.requests.append(head)
                count += 1
                if not await handler(head, count, writer):
                    return
                await writer.drain()
        finally:
            seen.closed += 1
            writer.close()

    running = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl)  # type: ignore[arg-type]
    port = running.sockets[0].getsockname()[1]
    try:
        yield port, seen
    finally:
        running.close()


def pool(read_timeout: float = 5.0) -> Pool:
    return Pool(limit=4, connect_timeout=5.0, read_timeout=read_timeout)


async def get(p: Pool, port: int, method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    origin = Origin("http", "127.0.0.1", port)
    got = await p.request(origin, method, "/b/key", {"host": f"127.0.0.1:{port}"}, body)
    return got.status, got.body


def replying(data: bytes, keep: bool = True) -> Handler:
    async def handler(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        return keep

    return handler


# -- whole answers and reuse --------------------------------------------------------------


async def test_a_connection_is_reused_after_whole_answers() -> None:
    async with server(replying(answer(b"x" * 100_000))) as (port, seen):
        p = pool()
        for _ in range(5):
            assert await get(p, port) == (200, b"x" * 100_000)
        await p.aclose()
    assert seen.connections == 1
    assert len(seen.requests) == 5
    head = seen.requests[0].decode()
    assert head.startswith("GET /b/key HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n" in head


async def test_head_answers_have_no_body_whatever_their_length_says() -> None:
    async with server(replying(b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n")) as (port, seen):
        p = pool()
        assert await get(p, port, "HEAD") == (200, b"")
        assert await get(p, port, "HEAD") == (200, b"")
        await p.aclose()
    assert seen.connections == 1


async def test_put_sends_its_body_with_its_length() -> None:
    async with server(replying(answer(b""))) as (port, seen):
        p = pool()
        assert await get(p, port, "PUT", b"abc" * 1000) == (200, b"")
        assert await get(p, port, "PUT", b"") == (200, b"")
        await p.aclose()
    assert b"content-length: 3000\r\n" in seen.requests[0]
    assert b"content-length: 0\r\n" in seen.requests[1]


async def test_interim_answers_are_skipped_and_101_refused() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n"
    async with server(replying(interim + answer(b"ok"))) as (port, _):
        assert await get(pool(), port) == (200, b"ok")
    async with server(replying(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")) as (port, _):
        with pytest.raises(WireError, match="101"):
            await get(pool(), port)


async def test_a_body_to_the_close_is_read_and_the_connection_not_kept() -> None:
    async with server(replying(b"HTTP/1.1 200 OK\r\n\r\nall of it", keep=False)) as (port, seen):
        p = pool()
        assert await get(p, port) == (200, b"all of it")
        assert await get(p, port) == (200, b"all of it")
    assert seen.connections == 2


async def test_connection_close_and_http_1_0_answers_are_not_kept() -> None:
    for data in (
        answer(extra="connection: close\r\n"),
        b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    ):
        async with server(replying(data)) as (port, seen):
            p = pool()
            assert await get(p, port) == (200, b"hello")
            assert await get(p, port) == (200, b"hello")
        assert seen.connections == 2, data


async def test_repeated_header_fields_are_all_kept() -> None:
    async with server(
        replying(answer(extra='etag: "a"\r\nETag: "b"\r\nServer: x\r\nserver: y\r\n'))
    ) as (port, _):
        origin = Origin("http", "127.0.0.1", port)
        got = await pool().request(origin, "GET", "/", {"host": "h"}, b"")
    assert got.headers.getall("ETag") == ['"a"', '"b"']
    assert got.headers.get("SERVER") == "x"
    assert got.headers.get("missing", "none") == "none"


# -- answers that lie -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 50,
            "answer cut: 50 of the 100",
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n", "closed in the middle"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel", "closed in the middle"),
        (b"", "closed before an answer"),
        (b"HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 O\x00K\r\ncontent-length: 0\r\n\r\n", "not an HTTP/1.x status line"),
        (b"<html>hello</html>\r\n\r\n", "not an HTTP/1.x status line"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nx: a\x00b\r\ncontent-length: 0\r\n\r\n", "control character"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            "several different Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello!",
            "several different Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 0x10\r\n\r\n", "malformed Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "malformed Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx", "unsupported Transfer-Encoding"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "unsupported Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n",
            "both",
        ),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-1\r\n", "malformed chunk size"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
            "not ended by CRLF",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"1" * 5000,
            "chunk size line too long",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
            "malformed header line",
        ),
    ],
)
async def test_a_broken_answer_is_a_wire_error(data: bytes, message: str) -> None:
    async with server(replying(data, keep=False)) as (port, _):
        start = time.monotonic()
        with pytest.raises(WireError, match=message):
            await get(pool(), port)
    assert time.monotonic() - start < 4  # found at once, not by the read timeout


async def test_an_oversized_head_is_refused_before_it_ends() -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * (MAX_HEAD + 10) + b"\r\n"

    async def endless(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(big)  # and never the end of the head
        await writer.drain()
        await asyncio.sleep(30)
        return False

    async with server(endless) as (port, _):
        start = time.monotonic()
        with pytest.raises(WireError, match="header section over"):
            await get(pool(read_timeout=20), port)
    assert time.monotonic() - start < 10


async def test_a_head_just_under_the_cap_is_read() -> None:
    filler = b"a" * (MAX_HEAD - 200)
    data = b"HTTP/1.1 200 OK\r\nx-filler: " + filler + b"\r\ncontent-length: 2\r\n\r\nok"
    async with server(replying(data)) as (port, _):
        assert await get(pool(), port) == (200, b"ok")


async def test_chunked_answers_are_decoded() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n6 \r\nworld!\r\n"
        b"0\r\nx-trailer: t\r\n\r\n"
    )
    async with server(replying(data)) as (port, seen):
        p = pool()
        assert await get(p, port) == (200, b"hello world!")
        assert await get(p, port) == (200, b"hello world!")
    assert seen.connections == 1  # a whole chunked answer keeps the connection


async def test_chunked_answers_arriving_byte_by_byte_are_decoded() -> None:
    data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def dribble(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        return True

    async with server(dribble) as (port, _):
        assert await get(pool(), port) == (200, b"abcde")


async def test_bytes_after_the_answer_close_the_connection() -> None:
    """More bytes than Content-Length says: the answer is what it says, and the rest is
    never read as the next answer (the connection is closed)."""
    async with server(
        replying(answer(b"hello") + b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil")
    ) as (port, seen):
        p = pool()
        assert await get(p, port) == (200, b"hello")
        assert await get(p, port) == (200, b"hello")
    assert seen.connections == 2


async def test_bytes_sent_to_an_idle_connection_close_it() -> None:
    async def then_garbage(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer())
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil")
        return True

    async with server(then_garbage) as (port, seen):
        p = pool()
        assert await get(p, port) == (200, b"hello")
        await asyncio.sleep(0.3)
        assert await get(p, port) == (200, b"hello")
    assert seen.connections == 2


async def test_a_server_that_never_answers_times_out() -> None:
    async def silent(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(30)
        return False

    async with server(silent) as (port, _):
        start = time.monotonic()
        with pytest.raises(WireError, match=r"no answer for 0\.3 s"):
            await get(pool(read_timeout=0.3), port)
        elapsed = time.monotonic() - start
    assert 0.25 < elapsed < 5


async def test_a_slow_answer_that_keeps_coming_does_not_time_out() -> None:
    async def slow(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
        for byte in b"abcdef":
            await asyncio.sleep(0.15)
            writer.write(bytes([byte]))
            await writer.drain()
        return True

    async with server(slow) as (port, _):
        assert await get(pool(read_timeout=0.5), port) == (200, b"abcdef")


async def test_nothing_listening_is_a_wire_error() -> None:
    async with server(replying(b"")) as (port, _):
        pass  # closed: the port is free again
    with pytest.raises(WireError, match="cannot connect"):
        await get(pool(), port)


async def test_a_line_break_in_a_header_is_never_sent() -> None:
    async with server(replying(answer())) as (port, seen):
        origin = Origin("http", "127.0.0.1", port)
        for headers in ({"x": "a\r\nevil: 1"}, {"x\r\nevil": "1"}, {"x": "a\nb"}, {"x": "a\0"}):
            with pytest.raises(ValueError, match="line break or NUL"):
                await pool().request(origin, "GET", "/", headers, b"")
        with pytest.raises(ValueError, match="line break or NUL"):
            await pool().request(origin, "GET", "/a\r\nb", {}, b"")
    assert seen.requests == []


async def test_a_cancelled_request_does_not_leave_its_connection_for_the_next() -> None:
    async def slow_then_fast(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        if len(seen.requests) == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.write(b"-rest")
        else:
            writer.write(answer(b"second"))
        return True

    async with server(slow_then_fast) as (port, seen):
        p = pool()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await get(p, port)
        assert await get(p, port) == (200, b"second")
        await asyncio.sleep(0.6)
        assert seen.closed == 1  # the cancelled one was closed, not left open
    assert seen.connections == 2


# -- kept-alive connections the server closed -----------------------------------------


async def test_a_request_on_a_connection_the_server_dropped_is_sent_again() -> None:
    """The server reads a second request on a kept connection and closes it without a
    word (its idle timeout raced the request): the pool sends it again on a new one."""

    async def once_per_connection(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        if count > 1:
            return False
        writer.write(answer(b"" if head.startswith(b"HEAD") else b"hello"))
        return True

    async with server(once_per_connection) as (port, seen):
        p = pool()
        for method, body in (("GET", b""), ("HEAD", b""), ("PUT", b"data"), ("GET", b"")):
            assert (await get(p, port, method, body))[0] == 200
        await p.aclose()
    assert seen.connections == 4
    assert len(seen.requests) == 7  # each after the first: once dropped, once answered


async def test_a_new_connection_closed_before_an_answer_is_not_sent_again_here() -> None:
    """Only a kept-alive connection earns the immediate second try; a new one's failure
    goes to the caller (the S3 wire retries it with backoff, bounded by max_attempts)."""
    async with server(replying(b"", keep=False)) as (port, seen):
        with pytest.raises(WireError, match="closed before an answer"):
            await get(pool(), port)
    assert len(seen.requests) == 1


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def close_after(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer())
        return False

    async with server(close_after) as (port, seen):
        p = pool()
        assert await get(p, port) == (200, b"hello")
        await asyncio.sleep(0.2)  # the close has arrived
        assert await get(p, port) == (200, b"hello")
    assert seen.connections == 2
    assert len(seen.requests) == 2  # no request was wasted on the closed one


async def test_the_pool_keeps_no_more_connections_than_its_limit() -> None:
    async def slow(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(answer())
        return True

    async with server(slow) as (port, seen):
        p = Pool(limit=3, connect_timeout=5, read_timeout=5)
        await asyncio.gather(*(get(p, port) for _ in range(10)))
        assert p._open <= 3
        await asyncio.gather(*(get(p, port) for _ in range(3)))
        await p.aclose()
        assert p._open == 0
    assert seen.connections <= 10


# -- TLS ---------------------------------------------------------------------------------


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _tls_server_context(tmp_path: Path) -> tuple[Path, object]:
    """A self-signed certificate for 127.0.0.1 and a server context presenting it."""
    import ssl

    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


async def test_https_verifies_the_server_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, context = _tls_server_context(tmp_path)
    async with server(replying(answer(b"secret")), ssl=context) as (port, _):
        origin = Origin("https", "127.0.0.1", port)
        with pytest.raises(WireError, match="CERTIFICATE_VERIFY_FAILED"):
            await pool().request(origin, "GET", "/", {"host": "h"}, b"")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now trusted
        got = await pool().request(origin, "GET", "/", {"host": "h"}, b"")
    assert got.body == b"secret"


# -- through the S3 driver ------------------------------------------------------------------


def s3_driver(port: int, attempts: int = 3) -> S3Driver:
    return S3Driver(
        "bucket",
        region="us-east-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        allow_http=True,
        force_path_style=True,
        credentials=S3Credentials(access_key_id="a", secret_access_key="s"),
        max_attempts=attempts,
        read_timeout=0.5,
    )


async def test_the_driver_retries_a_cut_body_and_names_the_key() -> None:
    async with (
        server(replying(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhalf", keep=False)) as (
            port,
            seen,
        ),
        s3_driver(port) as driver,
    ):
        with pytest.raises(StorageError) as caught:
            await driver.get("some/key")
    assert type(caught.value) is StorageError
    assert caught.value.key == "some/key"
    assert "answer cut: 4 of the 9 bytes" in str(caught.value)
    assert len(seen.requests) == 3  # max_attempts
    assert seen.requests[0].startswith(b"GET /bucket/some/key HTTP/1.1\r\n")


async def test_the_driver_gives_up_on_a_silent_server_in_its_read_timeout() -> None:
    async def silent(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(30)
        return False

    async with server(silent) as (port, seen), s3_driver(port, attempts=2) as driver:
        start = time.monotonic()
        with pytest.raises(StorageError, match=r"no answer for 0\.5 s") as caught:
            await driver.get("k")
        elapsed = time.monotonic() - start
    assert caught.value.key == "k"
    assert len(seen.requests) == 2
    assert elapsed < 5


async def test_the_driver_reads_through_a_server_that_drops_kept_connections() -> None:
    body = b"chunk bytes"

    async def once_per_connection(head: bytes, count: int, writer: asyncio.StreamWriter) -> bool:
        if count > 1:
            return False
        writer.write(answer(body, extra='etag: "e"\r\n'))
        return True

    # attempts=1: no retries of the wire's own
    async with server(once_per_connection) as (port, seen), s3_driver(port, 1) as driver:
        for _ in range(3):
            assert await driver.get("k") == body
    assert seen.connections == 3


async def test_the_driver_trusts_aws_ca_bundle_as_botocore_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, context = _tls_server_context(tmp_path)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    async with server(replying(answer(b"secret", extra='etag: "e"\r\n')), ssl=context) as (
        port,
        seen,
    ):
        driver = S3Driver(
            "bucket",
            region="us-east-1",
            endpoint_url=f"https://127.0.0.1:{port}",
            force_path_style=True,
            credentials=S3Credentials(access_key_id="a", secret_access_key="s"),
            max_attempts=1,
        )
        async with driver:
            assert await driver.get("k") == b"secret"
    assert seen.requests[0].startswith(b"GET /bucket/k HTTP/1.1\r\n")
