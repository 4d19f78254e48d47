"""A minimal HTTP/1.1 client with kept-alive connections, for the S3 driver's lean path.

aiohttp's request machinery costs more CPU than a small S3 GET is worth (about a third
of a 1,000-chunk read at 0 ms latency went to it). This client does only what the lean
path needs: one request at a time per connection, whole bodies in memory, answers
framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the connection's close;
no redirects, no content codings (ask for ``identity``), no proxies, no ``100-continue``.
It knows nothing of S3.

Every answer is checked where it enters: the status line, the size of the header
section (``MAX_HEAD``), the header fields, the framing (``Content-Length`` against the
bytes that came, chunk sizes and their line ends), a close before the answer ended, and
bytes the server sent unasked. Each failure is a ``WireError`` (so is a connection that
cannot be made, and an answer that stops coming for ``read_timeout`` seconds). A
connection goes back to the pool only after a whole answer that lets it stay open; every
other one is closed. As aiohttp does, a request that finds its kept-alive connection
closed by the server before any byte of the answer is sent again at once, once, on a
new connection.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from aicechunk.errors import WireError

__all__ = ["MAX_HEAD", "Headers", "Origin", "Pool", "Response"]

#: the largest header section (status line and fields) read from a server
MAX_HEAD = 64 * 1024
#: the longest chunk-size line of a chunked body
_MAX_CHUNK_LINE = 4096
#: seconds an idle connection is kept (aiohttp's default keep-alive time)
IDLE_SECONDS = 15.0

_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_FIELDS = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*"
    rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*)*"
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")


class Headers:
    """An answer's header fields in the order they came; names compare case-insensitively."""

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields  # names in lower case

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        name = name.lower()
        for key, value in self._fields:
            if key == name:
                return value
        return default

    def getall(self, name: str, default: tuple[str, ...] = ()) -> list[str] | tuple[str, ...]:
        """Every value of ``name``, in order, or ``default`` if it has none."""
        name = name.lower()
        found = [value for key, value in self._fields if key == name]
        return found or default

    def items(self) -> Iterator[tuple[str, str]]:
        """(lower-case name, value) of every field."""
        return iter(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass(frozen=True, slots=True)
class Response:
    """A whole answer: status, header fields, body (empty for a HEAD)."""

    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: ``scheme`` (``http`` or ``https``), host name and port."""

    scheme: str
    host: str
    port: int


# parser phases of a connection
_IDLE, _HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _TRAILERS, _TO_CLOSE, _BROKEN = range(8)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: a request at a time; parses the answer as it comes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reusable = False  # the last answer was whole and lets the connection stay
        self.idle_since = 0.0
        self._buf = bytearray()
        self._phase = _IDLE
        self._waiter: asyncio.Future[Response] | None = None
        self._head_only = False
        self._keep = False
        self._status = 0
        self._headers = Headers([])
        self._need = 0  # bytes of body (or of the chunk) still to come
        self._body = bytearray()
        self._got = False  # any byte of this answer arrived
        self._timeout = 0.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._phase == _IDLE or self._phase == _BROKEN:
            self._close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self._got = True
        self._last = self._loop.time()
        self._buf += data
        self._advance(eof=False)

    def eof_received(self) -> bool:
        self.lost = True
        if self._waiter is not None:
            self._advance(eof=True)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._waiter is not None and not self._waiter.done():
            self._advance(eof=True, error=exc)

    # -- a request -----------------------------------------------------------------

    async def exchange(self, data: list[bytes], head_only: bool, idle: float) -> Response:
        """Send ``data`` (a request), return the whole answer (``head_only``: it has no
        body, as for a HEAD); a ``WireError`` if it is broken or stops coming for
        ``idle`` seconds."""
        assert self.transport is not None
        waiter: asyncio.Future[Response] = self._loop.create_future()
        self._waiter, self._head_only, self._phase = waiter, head_only, _HEAD
        self._got, self.reusable, self._timeout = False, False, idle
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + idle, self._check_timeout)
        try:
            if self.lost:  # closed by the server before the request could be sent
                self._fail("connection closed before an answer", stale=True)
            else:
                self.transport.writelines(data)
            return await waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self.reusable:
                self._close()

    def _check_timeout(self) -> None:
        self._timer = None
        waiter, transport = self._waiter, self.transport
        if waiter is None or waiter.done() or transport is None:
            return
        now = self._loop.time()
        if transport.get_write_buffer_size() > 0:
            self._last = now  # still sending the body: the server may not answer yet
        if now - self._last < self._timeout:
            self._timer = self._loop.call_at(self._last + self._timeout, self._check_timeout)
            return
        self._fail(f"no answer for {self._timeout:g} s")

    def _close(self) -> None:
        self.reusable = False
        self._phase = _BROKEN
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _fail(self, message: str, *, stale: bool = False) -> None:
        waiter = self._waiter
        self._close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(WireError(message, stale=stale))

    def _done(self, body: bytes) -> None:
        waiter = self._waiter
        self._body = bytearray()
        self.reusable = self._keep and not self._buf and not self.lost
        self._phase = _IDLE if self.reusable else _BROKEN
        if self._buf:
            self._buf.clear()  # bytes after the answer: not to be read as the next one
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._headers, body))

    # -- parsing -------------------------------------------------------------------

    def _advance(self, *, eof: bool, error: Exception | None = None) -> None:
        try:
            while self._step(eof):
                pass
        except WireError as err:
            self._fail(err.reason)
            return
        if eof and self._waiter is not None and not self._waiter.done():
            why = f" ({error})" if error is not None else ""
            if not self._got:
                self._fail(f"connection closed before an answer{why}", stale=True)
            else:
                self._fail(f"connection closed in the middle of the answer{why}")

    def _step(self, eof: bool) -> bool:
        # one parsing step on the buffered bytes; False: wait for more (or finished)
        phase, buf = self._phase, self._buf
        if phase == _HEAD:
            end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buf) > MAX_HEAD + 3:
                    raise WireError(f"header section over {MAX_HEAD} bytes")
                return False
            self._head(bytes(buf[:end]))
            del buf[: end + 4]
            return True
        if phase == _LENGTH:
            need = self._need
            if need <= len(buf):
                if need == len(buf):
                    body = bytes(buf)
                    buf.clear()
                else:
                    with memoryview(buf) as view:
                        body = bytes(view[:need])
                    del buf[:need]
                self._done(body)
            elif eof:
                raise WireError(
                    f"answer cut: {len(buf)} of the {need} bytes its Content-Length says"
                )
            return False
        if phase == _CHUNK_LINE:
            end = buf.find(b"\r\n", 0, _MAX_CHUNK_LINE)
            if end < 0:
                if len(buf) >= _MAX_CHUNK_LINE:
                    raise WireError("chunk size line too long")
                return False
            found = _CHUNK_SIZE.fullmatch(buf, 0, end)
            if found is None:
                raise WireError(f"malformed chunk size line {bytes(buf[: min(end, 40)])!r}")
            size = int(found.group(1), 16)
            del buf[: end + 2]
            self._need = size
            self._phase = _CHUNK_DATA if size else _TRAILERS
            return True
        if phase == _CHUNK_DATA:
            if len(buf) < self._need + 2:
                return False
            if buf[self._need : self._need + 2] != b"\r\n":
                raise WireError("chunk not ended by CRLF where its size says")
            self._body += buf[: self._need]
            del buf[: self._need + 2]
            self._phase = _CHUNK_LINE
            return True
        if phase == _TRAILERS:
            if buf[:2] == b"\r\n":
                del buf[:2]
                self._done(bytes(self._body))
                return False
            end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buf) > MAX_HEAD + 3:
                    raise WireError(f"trailer section over {MAX_HEAD} bytes")
                return False
            self._fields(bytes(buf[:end]))  # checked, not kept
            del buf[: end + 4]
            self._done(bytes(self._body))
            return False
        if phase == _TO_CLOSE:
            if eof:
                body = bytes(buf)
                buf.clear()
                self._done(body)
            return False
        return False

    def _head(self, head: bytes) -> None:
        # the status line and fields of an answer; sets how its body is framed
        first, _, block = head.partition(b"\r\n")
        found = _STATUS.fullmatch(first)
        if found is None:
            raise WireError(f"not an HTTP/1.x status line: {first[:60]!r}")
        status = int(found.group(2))
        fields = self._fields(block)
        if status < 200:
            if status == 101:
                raise WireError("answer switches protocols (101), which was not asked for")
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        headers = Headers(fields)
        connection = {t.strip().lower() for t in (headers.get("connection") or "").split(",")}
        self._keep = found.group(1) == b"1" and "close" not in connection
        self._status, self._headers, self._body = status, headers, bytearray()
        codings = headers.getall("transfer-encoding")
        lengths = headers.getall("content-length")
        if self._head_only or status in (204, 304):
            self._phase = _LENGTH
            self._need = 0
        elif codings:
            chain = [c.strip().lower() for c in ",".join(codings).split(",")]
            if chain != ["chunked"]:
                raise WireError(f"unsupported Transfer-Encoding {', '.join(codings)[:60]!r}")
            if lengths:
                raise WireError("both Transfer-Encoding and Content-Length")
            self._phase = _CHUNK_LINE
        elif lengths:
            values = {v.strip() for v in ",".join(lengths).split(",")}
            if len(values) != 1:
                raise WireError(f"several different Content-Length values {sorted(values)[:4]}")
            (value,) = values
            if not value.isascii() or not value.isdigit() or len(value) > 18:
                raise WireError(f"malformed Content-Length {value[:30]!r}")
            self._phase = _LENGTH
            self._need = int(value)
        else:
            self._phase = _TO_CLOSE  # the body ends with the connection
            self._keep = False

    @staticmethod
    def _fields(block: bytes) -> list[tuple[str, str]]:
        # the header fields of a head (or trailers) after its first line, checked by one
        # match over the block; the line at fault is looked for only when it fails
        if not block:
            return []
        if _FIELDS.fullmatch(block) is None:
            for line in block.split(b"\r\n"):
                name, colon, value = line.partition(b":")
                if not colon or _NAME.fullmatch(name) is None:
                    raise WireError(f"malformed header line {line[:60]!r}")
                if _BAD_VALUE.search(value) is not None:
                    raise WireError(f"control character in header {name[:60]!r}")
            raise AssertionError("unreachable")  # pragma: no cover
        return [
            (name.lower(), value.strip(" \t"))
            for name, _, value in (
                line.partition(":") for line in block.decode("latin-1").split("\r\n")
            )
        ]


class Pool:
    """Kept-alive connections per origin, for requests made one at a time on each.

    The caller bounds how many requests run at once (the S3 driver's ``max_concurrency``);
    the pool keeps at most ``limit`` connections open, idle ones for ``IDLE_SECONDS``.
    HTTPS trusts the system's authorities, or only those of ``cafile`` when given.
    """

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        cafile: str | None = None,
    ) -> None:
        self._limit = max(limit, 1)
        self._cafile = cafile
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self, origin: Origin, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """Send ``method target`` with ``headers`` (``Host`` among them) and ``body`` (a
        ``Content-Length`` is added for a PUT or any body); the whole answer."""
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n")
        if body or method in ("PUT", "POST"):
            lines.append(f"content-length: {len(body)}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        ends = len(lines)
        if text.count("\n") != ends or text.count("\r") != ends or "\0" in text:
            raise ValueError(f"{method} {target[:60]!r}: line break or NUL in a header")
        data = [text.encode("utf-8"), body] if body else [text.encode("utf-8")]
        head_only = method == "HEAD"
        for attempt in (1, 2):
            conn, reused = await self._acquire(origin)
            try:
                answer = await conn.exchange(data, head_only, self._read_timeout)
            except WireError as err:
                self._open -= 1
                if err.stale and reused and attempt == 1:
                    continue  # the server closed the idle connection: once more, anew
                raise
            except BaseException:
                self._open -= 1
                raise
            self._release(origin, conn)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acquire(self, origin: Origin) -> tuple[_Connection, bool]:
        if self._closed:
            raise WireError("the HTTP connection pool is closed")
        idle = self._idle.get(origin)
        if idle:
            oldest = asyncio.get_running_loop().time() - IDLE_SECONDS
            while idle:
                conn = idle.pop()
                if not conn.lost and conn.reusable and conn.idle_since > oldest:
                    return conn, True
                self._open -= 1
                conn._close()
        return await self._connect(origin), False

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            if self._ssl is None:
                # cafile: only those authorities (as botocore trusts only AWS_CA_BUNDLE)
                self._ssl = ssl.create_default_context(cafile=self._cafile)
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise WireError(
                f"cannot connect to {origin.host}:{origin.port} in {self._connect_timeout:g} s"
            ) from None
        except OSError as err:
            raise WireError(f"cannot connect to {origin.host}:{origin.port}: {err}") from err
        self._open += 1
        return conn

    def _release(self, origin: Origin, conn: _Connection) -> None:
        if not conn.reusable or conn.lost or self._closed or self._open > self._limit:
            self._open -= 1
            conn._close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(origin, []).append(conn)

    async def aclose(self) -> None:
        """Close every idle connection; requests still running close theirs when done."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                self._open -= 1
                conn._close()
        self._idle.clear()
