"""The benchmark's remote rows: S3 behind a latency proxy, optionally on a busy machine.

Every S3 row goes through a latency proxy, for both libraries, so requests are counted the
same way and the delay is the only thing that changes between ``[s3 0ms]`` and
``[s3 20ms]``. ``s3_chain`` makes the server and proxy: ``fast`` (default) is
``tests.bench_s3_server``, an in-memory S3 on raw asyncio with the proxy built in (one
process, 0.1-0.15 ms of CPU per request); ``moto`` is moto's server behind
``tests.latency_proxy`` (a process each, about 2.7 + 0.8 ms per request, which capped
the rows at 350-450 requests/s).
Rows: write and read of each size of chunks, open + read one chunk (time, requests, and
round trips: the longest chain of requests each started after the previous one ended, on
the proxy's records), and virtual reads (spec version 1; the chunks' bucket through the
proxy too, the repository on local disk).

``busy_cores(n)`` is the contention: ``n`` processes spinning on the CPU, started before
and stopped after the rows they label ``contended``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from systems import Ours, System, Theirs
from workloads import Result, open_one_chunk, read_workload, virtual_reads, write_workload

from tests.bench_s3_server import bench_s3_server
from tests.latency_proxy import LatencyProxy, latency_proxy
from tests.servers import moto_server

__all__ = ["S3_SERVERS", "RemoteRows", "busy_cores", "capacity", "cores", "round_trips", "s3_chain"]

#: ``s3_chain``'s servers
S3_SERVERS = ("fast", "moto")

Record = Callable[[str, str, Result], None]


def round_trips(records: list[list[Any]]) -> int:
    """The length of the longest chain of requests where each starts after the previous
    one ended: the round trips a client made one after another (the rest overlapped)."""
    spans = sorted((r[0], r[1]) for r in records)
    # O(n^2): an open makes a few requests
    best: list[int] = []
    for i, (start, _) in enumerate(spans):
        before = [best[j] for j in range(i) if spans[j][1] <= start]
        best.append(1 + max(before, default=0))
    return max(best, default=0)


@contextlib.contextmanager
def busy_cores(n: int) -> Iterator[list[int]]:
    """``n`` processes that spin on the CPU until the block ends; yields their ids."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


class RemoteRows:
    """The S3 rows of one spec version, through ``proxy``."""

    def __init__(self, spec: int, s3: dict[str, str], proxy: LatencyProxy) -> None:
        self.spec = spec
        # the systems reach S3 through the proxy
        self.s3 = {**s3, "endpoint": proxy.url}
        self.proxy = proxy
        self.systems: list[System] = [Ours(self.s3, spec), Theirs(self.s3, spec)]

    def label(self, what: str, tag: str) -> str:
        return f"{what} [{tag}]" if self.spec == 1 else f"{what} [{tag}, v2]"

    async def run(
        self,
        order: list[System],
        sizes: tuple[int, ...],
        tag: str,
        on: Callable[[str], bool],
        record: Record,
        base: Path,
    ) -> None:
        """Each row once per system of ``order``, labelled with ``tag`` (e.g. ``s3 20ms``)."""
        slug = tag.replace(" ", "").replace(",", "-")
        for count in sizes:
            for system in order:
                where = f"s3:{self.s3['bucket']}:{system.name}-{slug}-{count}-v{self.spec}"
                gc.collect()
                self.proxy.reset()
                repo, row = await write_workload(system, where, count)
                row["requests"] = self.proxy.requests()
                record(self.label(f"write {count} chunks", tag), system.name, row)
                if on("read"):
                    self.proxy.reset()
                    row = await read_workload(system, repo)
                    row["requests"] = self.proxy.requests()
                    record(self.label(f"read {count} chunks", tag), system.name, row)
                if on("open") and count == sizes[0]:
                    self.proxy.reset()
                    row = await open_one_chunk(
                        system, lambda s=system, w=where: s.open(w), self.proxy.requests
                    )
                    row["round_trips"] = round_trips(self.proxy.stats()["records"])
                    record(self.label("open + read 1 chunk", tag), system.name, row)
        if on("virtual") and self.spec == 1:
            n = sizes[0]
            for system in order:
                where = f"local:{base / f'{system.name}-virtual-{slug}'}"
                row = await virtual_reads(system, where, self.s3, n)
                record(f"virtual reads {n} [{tag}]", system.name, row)


async def capacity(url: str, key: str, concurrency: int = 64, n: int = 1000) -> float:
    """Requests per second the proxy and server answer for a GET of ``key`` (``bucket/key``)
    from a bare aiohttp client, ``concurrency`` at once: what the S3 rows can reach at
    most. A row far below its delay's bound (``concurrency / delay``) and near this
    figure measures the local servers' CPU, not latency. The client's connections are
    opened by a first round of ``concurrency`` requests, not timed."""
    import aiohttp

    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            async with limit, http.get(f"{url}/{key}") as response:
                await response.read()

        await asyncio.gather(*(one() for _ in range(concurrency)))
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - start)


@contextlib.contextmanager
def s3_chain(server: str) -> Iterator[tuple[str, LatencyProxy]]:
    """An S3 server (``fast`` or ``moto``, see the module's docstring) and a latency proxy
    in front of it, each out of this process; yields the server's direct endpoint URL
    (for setting up, neither delayed nor counted) and the proxy's handle."""
    if server == "fast":
        with bench_s3_server() as (endpoint, proxy):
            yield endpoint, proxy
    elif server == "moto":
        with moto_server(own_process=True) as endpoint, latency_proxy(endpoint) as proxy:
            yield endpoint, proxy
    else:
        raise ValueError(f"unknown S3 server {server!r}: one of {S3_SERVERS}")


def cores() -> int:
    """How many busy processes ``--contention`` starts: one per core."""
    return os.cpu_count() or 1
