"""A small, fast, in-memory S3 server for the benchmarks, with the latency proxy built in
(moto stays the tests' S3, behind ``tests.latency_proxy``).

moto answers 350-450 requests/s here, so the S3 rows at 20 ms measured moto's CPU rather
than the clients and the latency. This server speaks just the S3 both clients use, on
raw asyncio with a minimal HTTP/1.1 parser, and answers every request synchronously in
the event loop: no coroutine, no thread, no framework per request.

Served (path-style addressing only: ``/bucket/key``; see ``tests.bench_s3_ops``):

- CreateBucket (``PUT /bucket``), HeadBucket, DeleteBucket;
- PutObject, with ``If-None-Match: *`` and ``If-Match: <etag>`` (412
  ``PreconditionFailed``; ``If-Match`` on a missing key is 404 ``NoSuchKey``, as on
  S3). The check and the write are one step: the loop answers one request at a time,
  so of concurrent conditional PUTs on one key exactly one wins;
- CopyObject (``x-amz-copy-source``, conditional on the destination as PutObject);
- GetObject and HeadObject, with ``Range`` (``a-b``, ``a-``, ``-n``; 416
  ``InvalidRange`` when no byte of the object is in it), ``If-Match`` (412) and
  ``If-None-Match`` (304);
- ListObjectsV2 (``prefix``, ``delimiter``, ``max-keys``, ``continuation-token``,
  ``start-after``, ``encoding-type=url``), keys in UTF-8 byte order;
- DeleteObject and DeleteObjects (``POST /bucket?delete``).

Anything else is 501 ``NotImplemented``. Requests are not authenticated: signatures are
not checked (a benchmark server on 127.0.0.1). ETags are MD5s of the body, as S3's are
for single-part uploads.

The server listens on two ports sharing one store. The direct one answers at once. The
other behaves as ``tests.latency_proxy`` in front of the direct one, without a second
hop: each answer is held ``delay`` seconds (requests delayed side by side), bodies move
at no more than ``bandwidth`` bytes/s per request and direction (0: no cap), and every
request is counted with its start, end and connection. Its settings and records are
read over HTTP under ``/__proxy__/``, so ``tests.latency_proxy.LatencyProxy`` is its
handle. ``bench_s3_server()`` runs both in a process of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tests.bench_s3_ops import S3Error, S3State, error_body, handle, now
from tests.latency_proxy import CONTROL, SLICE, LatencyProxy

__all__ = ["Latency", "S3Protocol", "bench_s3_server", "serve_bench_s3"]

REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    412: "Precondition Failed",
    416: "Requested Range Not Satisfiable",
    501: "Not Implemented",
}
#: a request head larger than this is refused (a broken client, not S3)
MAX_HEAD = 64 * 1024


@dataclass
class Latency:
    """The latency port's settings and what it has seen (as ``LatencyProxy.stats``)."""

    delay: float = 0.0
    bandwidth: float = 0.0
    requests: int = 0
    connections: set[Any] = field(default_factory=set)
    records: list[list[Any]] = field(default_factory=list)

    def control(self, what: str, body: bytes) -> bytes:
        """Answer a ``/__proxy__/`` call: ``settings`` (POST), ``reset``, ``stats``."""
        if what == "settings":
            for name, value in json.loads(body or b"{}").items():
                setattr(self, name, float(value))
        elif what == "reset":
            self.requests, self.connections, self.records = 0, set(), []
        answer = {
            "requests": self.requests,
            "connections": len(self.connections),
            "records": self.records if what == "stats" else [],
            "delay": self.delay,
            "bandwidth": self.bandwidth,
            # the server's own CPU time (this proxy only): what its answers cost
            "cpu_seconds": time.process_time(),
        }
        return json.dumps(answer).encode()


class S3Protocol(asyncio.Protocol):
    """One client connection: parses requests as their bytes arrive and answers them one
    after another, in order; kept until the client closes it or says ``Connection:
    close``. With ``latency`` set, answers are held and paced as that says."""

    def __init__(self, state: S3State, latency: Latency | None) -> None:
        self.state = state
        self.latency = latency
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        # the parsed head of the request whose body is still arriving, and when it came
        self.pending: tuple[str, str, dict[str, str], int] | None = None
        self.started = 0.0
        # an answer is being held: later requests wait in the buffer
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = tuple(peer) if peer else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._drain()

    def _drain(self) -> None:
        while self.transport is not None and not self.transport.is_closing() and not self.busy:
            if not self._next():
                return

    def _next(self) -> bool:
        """Take the next complete request off the buffer; False when there is none."""
        assert self.transport is not None
        if self.pending is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.close()
                return False
            self.started = time.monotonic()
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            try:
                method, target, version = lines[0].split(" ", 2)
                if not version.startswith("HTTP/1."):
                    raise ValueError(version)
                chunked = "chunked" in headers.get("transfer-encoding", "")
                length = -1 if chunked else int(headers.get("content-length") or 0)
            except ValueError:  # not HTTP: say so and hang up
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()
                return False
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
        self._request(method, target, headers, body)
        return True

    def _request(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        path, _, query = target.partition("?")
        close = headers.get("connection", "").lower() == "close"
        latency = self.latency
        if latency is None or path.startswith(CONTROL):
            if latency is not None:
                payload = latency.control(path[len(CONTROL) :], body)
                out = [("Content-Type", "application/json")]
                head = self._head(200, out, len(payload))
            else:
                head, payload = self._answer(method, path, query, headers, body)
            self._write(head, payload, close)
            return
        latency.requests += 1
        latency.connections.add(self.peer)
        started, cap = self.started, latency.bandwidth

        def answer() -> None:
            head, payload = self._answer(method, path, query, headers, body)
            record = [started, 0.0, method, unquote(path), len(body), len(payload)]
            self._later(latency.delay, lambda: self._paced(head, payload, close, record))

        # the body arrives at the capped rate before the server sees it (as at the proxy)
        self._later(len(body) / cap if cap else 0.0, answer)

    def _later(self, seconds: float, then: Callable[[], None]) -> None:
        if seconds <= 0:
            then()
            return
        self.busy = True
        asyncio.get_running_loop().call_later(seconds, then)

    def _paced(self, head: bytes, payload: bytes, close: bool, record: list[Any]) -> None:
        """Send an answer held back by the latency port, its body at the capped rate."""
        assert self.latency is not None
        cap = self.latency.bandwidth
        if self.transport is None:
            return
        if not cap or not payload:
            self._send(head, payload)
            return self._done(record, close)
        self.transport.write(head)
        began = time.monotonic()
        loop = asyncio.get_running_loop()

        def send(at: int) -> None:
            # each slice goes once the cap would have let all bytes up to its end through
            if self.transport is None:
                return
            self.transport.write(payload[at : at + SLICE])
            if at + SLICE < len(payload):
                due = began + min(len(payload), at + 2 * SLICE) / cap
                loop.call_later(max(0.0, due - time.monotonic()), send, at + SLICE)
            else:
                self._done(record, close)

        self.busy = True
        loop.call_later(
            max(0.0, began + min(len(payload), SLICE) / cap - time.monotonic()), send, 0
        )

    def _done(self, record: list[Any], close: bool) -> None:
        assert self.latency is not None
        record[1] = time.monotonic()
        self.latency.records.append(record)
        held, self.busy = self.busy, False
        if close and self.transport is not None:
            self.transport.close()
        if held:  # called back later: requests that came meanwhile are waiting
            self._drain()

    def _send(self, head: bytes, payload: bytes) -> None:
        assert self.transport is not None
        # never an empty buffer: Python 3.12.1's sendmsg path keeps one queued forever
        # and spins on it (every later write of the connection waits behind it)
        if payload:
            self.transport.writelines([head, payload])
        else:
            self.transport.write(head)

    def _write(self, head: bytes, payload: bytes, close: bool) -> None:
        assert self.transport is not None
        self._send(head, payload)
        if close:
            self.transport.close()

    def _answer(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[bytes, bytes]:
        """A request's answer: the head's bytes and the body's."""
        request_id = f"{next(self.state.ids):016X}"
        try:
            status, out, payload = handle(self.state, method, path, query, headers, body)
        except Exception as exc:
            # a bug here answers 500 InternalError rather than breaking the connection
            err = exc if isinstance(exc, S3Error) else S3Error(500, "InternalError", repr(exc))
            status, out = err.status, [("Content-Type", "application/xml"), *err.extra]
            payload = error_body(err, unquote(path), request_id)
        length = len(payload)
        if method == "HEAD":
            # a HEAD answer carries its object's length but no body
            length = next((int(v) for k, v in out if k == "Content-Length"), 0)
            payload = b""
        out.append(("x-amz-request-id", request_id))
        return self._head(status, out, None if status in (204, 304) else length), payload

    @staticmethod
    def _head(status: int, out: list[tuple[str, str]], length: int | None) -> bytes:
        return "".join(
            [
                f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n",
                f"Date: {now()[0]}\r\nServer: bench-s3\r\n",
                *(f"{k}: {v}\r\n" for k, v in out if k != "Content-Length"),
                "" if length is None else f"Content-Length: {length}\r\n",
                "\r\n",
            ]
        ).encode("latin-1")


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


async def _serve(port: int, latency_port: int, delay: float, bandwidth: float) -> None:
    state = S3State()
    latency = Latency(delay, bandwidth)
    loop = asyncio.get_running_loop()
    direct = await loop.create_server(
        lambda: S3Protocol(state, None), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    delayed = await loop.create_server(
        lambda: S3Protocol(state, latency), "127.0.0.1", latency_port, backlog=1024
    )
    async with direct, delayed:
        await asyncio.gather(direct.serve_forever(), delayed.serve_forever())


def serve_bench_s3(port: int, latency_port: int, delay: float, bandwidth: float) -> None:
    """The entry point of ``bench_s3_server``'s process."""
    asyncio.run(_serve(port, latency_port, delay, bandwidth))


@contextlib.contextmanager
def bench_s3_server(
    *, delay: float = 0.0, bandwidth: float = 0.0
) -> Iterator[tuple[str, LatencyProxy]]:
    """This server in a process of its own (as a remote S3 is: it shares no CPU time or
    GIL with a Python client); yields its direct endpoint URL and the handle of its
    latency port (``.url`` is that port's endpoint URL; ``delay`` in seconds per
    request, ``bandwidth`` in bytes/s per request and direction, 0 for no cap)."""
    from tests.servers import free_port, serving_in_process, wait_for_port

    port = latency_port = free_port()
    while latency_port == port:
        latency_port = free_port()
    code = (
        "from tests.bench_s3_server import serve_bench_s3 as s; "
        f"s({port}, {latency_port}, {float(delay)!r}, {float(bandwidth)!r})"
    )
    with serving_in_process(latency_port, code):
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}", LatencyProxy(f"http://127.0.0.1:{latency_port}")
