"""A reverse proxy on 127.0.0.1 that makes a local S3 server behave like a remote one.

``latency_proxy(target, delay=0.02)`` runs it in a process of its own (a remote object
store shares no CPU time or GIL with its client; in the benchmark's process it would
slow one side only) and yields a ``LatencyProxy`` handle. Every request:

- is forwarded at once, and upstream's answer is held ``delay`` seconds before its first
  byte is sent (a round trip to a remote store, added to the local server's time): each
  request is delayed on its own, concurrent requests overlap;
- moves its bodies at no more than ``bandwidth`` bytes per second, per request in each
  direction (a connection carries one request at a time, so this is also per connection);
  0 means no cap;
- is counted, with when it started and ended, and from which TCP connection (the client's
  address and port): clients that keep connections alive show few connections.

Connections stay alive (aiohttp's server keeps them; the proxy keeps its own to upstream).
Settings change and records are read over HTTP on the proxy itself, under ``/__proxy__/``
(no S3 bucket name can start with ``_``): ``LatencyProxy.configure`` and ``.stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["LatencyProxy", "latency_proxy", "serve_latency_proxy"]

CONTROL = "/__proxy__/"
#: how much of a body is sent between two checks of the bandwidth cap
SLICE = 64 * 1024
#: headers about one hop, not the message: moto's server answers ``Connection: close``,
#: which passed on would make every client open a new connection per request
#: (bodies pass as bytes, with their Content-Encoding; the length is set again)
HOP_BY_HOP = frozenset(
    [
        "host",
        "connection",
        "keep-alive",
        "content-length",
        "transfer-encoding",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
)


@dataclass
class LatencyProxy:
    """A handle on a running proxy: its URL, and calls to its control endpoint."""

    url: str

    def _call(self, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}{CONTROL}{what}",
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def configure(self, *, delay: float | None = None, bandwidth: float | None = None) -> None:
        """Change the delay (seconds) or the bandwidth cap (bytes/s, 0 for none)."""
        settings = {"delay": delay, "bandwidth": bandwidth}
        self._call("settings", {k: v for k, v in settings.items() if v is not None})

    def stats(self) -> dict[str, Any]:
        """``requests`` (count), ``connections`` (distinct client connections seen),
        ``records`` (``[start, end, method, path, bytes_in, bytes_out]`` per finished
        request, times on the proxy's monotonic clock) and the settings."""
        return self._call("stats")

    def requests(self) -> int:
        """How many requests the proxy has seen (the control calls not included)."""
        return int(self.stats()["requests"])

    def reset(self) -> None:
        """Forget the counts and records."""
        self._call("reset", {})


async def _serve(port: int, target: str, delay: float, bandwidth: float) -> None:
    import aiohttp
    from aiohttp import web

    settings = {"delay": delay, "bandwidth": bandwidth}
    state: dict[str, Any] = {"requests": 0, "connections": set(), "records": []}
    upstream = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
    )

    async def paced_read(request: web.Request) -> bytes:
        cap = settings["bandwidth"]
        if not cap:
            return await request.read()
        start = time.monotonic()
        parts = []
        async for part in request.content.iter_chunked(SLICE):
            parts.append(part)
            sent = sum(map(len, parts))
            await asyncio.sleep(max(0.0, start + sent / cap - time.monotonic()))
        return b"".join(parts)

    async def control(request: web.Request) -> web.Response:
        what = request.path[len(CONTROL) :]
        if what == "settings":
            settings.update({k: float(v) for k, v in (await request.json()).items()})
        elif what == "reset":
            state.update(requests=0, connections=set(), records=[])
        answer = {
            "requests": state["requests"],
            "connections": len(state["connections"]),
            "records": state["records"] if what == "stats" else [],
            **settings,
        }
        return web.json_response(answer)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL):
            return await control(request)
        start = time.monotonic()
        state["requests"] += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state["connections"].add(tuple(peer) if peer else None)
        body = await paced_read(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with upstream.request(
            request.method,
            f"{target}{request.rel_url}",
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as answer:
            payload = await answer.read()
            out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            status = answer.status
            # a HEAD answer's Content-Length is the object's size, not this hop's framing
            size = answer.content_length if request.method == "HEAD" else None
        if settings["delay"]:
            await asyncio.sleep(settings["delay"])
        response = web.StreamResponse(status=status, headers=out_headers)
        response.content_length = len(payload) if size is None else size
        await response.prepare(request)
        cap = settings["bandwidth"]
        if payload and not cap:
            await response.write(payload)
        elif payload:
            began = time.monotonic()
            for at in range(0, len(payload), SLICE):
                await response.write(payload[at : at + SLICE])
                sent = min(len(payload), at + SLICE)
                await asyncio.sleep(max(0.0, began + sent / cap - time.monotonic()))
        await response.write_eof()
        state["records"].append(
            [start, time.monotonic(), request.method, request.path, len(body), len(payload)]
        )
        return response

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=75)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    try:
        await asyncio.Event().wait()
    finally:
        await upstream.close()
        await runner.cleanup()


def serve_latency_proxy(port: int, target: str, delay: float, bandwidth: float) -> None:
    """The entry point of ``latency_proxy``'s process."""
    asyncio.run(_serve(port, target, delay, bandwidth))


@contextlib.contextmanager
def latency_proxy(
    target: str, *, delay: float = 0.0, bandwidth: float = 0.0
) -> Iterator[LatencyProxy]:
    """A latency proxy in front of ``target`` (an ``http://host:port`` URL), in a process
    of its own; yields its handle. ``delay`` in seconds per request, ``bandwidth`` in
    bytes per second per request and direction (0: no cap); both can change later."""
    from tests.servers import free_port, serving_in_process

    port = free_port()
    code = (
        "from tests.latency_proxy import serve_latency_proxy as s; "
        f"s({port}, {target!r}, {float(delay)!r}, {float(bandwidth)!r})"
    )
    with serving_in_process(port, code):
        yield LatencyProxy(f"http://127.0.0.1:{port}")
