"""The synchronous facade's overhead against the async core, on a write/read workload.

1,000 chunks written then read through zarr's API on a session's store, and committed:
through ``aicechunk.sync`` (zarr's synchronous API on the facade's store, blocking
``commit``) and through the async core (zarr's async API, ``await commit``). Reported: the
median of several runs each, their ratio (target <= 1.05), the cost of one blocking call
against one awaited call, and the machine load (``uptime``).

    PYTHONPATH=. python benchmarks/bench_sync.py [runs]
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import zarr
import zarr.api.asynchronous as za
from zarr.core.sync import sync

import aicechunk as aic
import aicechunk.sync as icechunk

CHUNKS = 1000
DATA = np.arange(CHUNKS * 16, dtype="i8")  # 128-byte chunks: the per-call cost dominates


def facade_run() -> float:
    start = time.perf_counter()
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(tempfile.mkdtemp()))
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="a", shape=DATA.shape, chunks=(16,), dtype="i8")
    array[:] = DATA
    session.commit("written")
    read = zarr.open_array(repo.readonly_session("main").store, path="a")[:]
    assert (read == DATA).all()
    return time.perf_counter() - start


def core_zarr_sync_run() -> float:
    """The async core driven by the same zarr synchronous calls as ``facade_run``: what
    separates the two is the facade alone."""
    start = time.perf_counter()
    repo = sync(aic.Repository.create(aic.local_filesystem_storage(tempfile.mkdtemp())))
    session = sync(repo.writable_session("main"))
    array = zarr.create_array(session.store, name="a", shape=DATA.shape, chunks=(16,), dtype="i8")
    array[:] = DATA
    sync(session.commit("written"))
    read = zarr.open_array(sync(repo.readonly_session("main")).store, path="a")[:]
    assert (read == DATA).all()
    return time.perf_counter() - start


async def core_run() -> float:
    start = time.perf_counter()
    repo = await aic.Repository.create(aic.local_filesystem_storage(tempfile.mkdtemp()))
    session = await repo.writable_session("main")
    array = await za.create_array(
        session.store, name="a", shape=DATA.shape, chunks=(16,), dtype="i8"
    )
    await array.setitem(slice(None), DATA)
    await session.commit("written")
    ro = await repo.readonly_session("main")
    read = await (await za.open_array(store=ro.store, path="a")).getitem(slice(None))
    assert (read == DATA).all()
    return time.perf_counter() - start


def per_call(n: int = 2000) -> tuple[float, float]:
    repo = icechunk.Repository.create(icechunk.in_memory_storage())
    start = time.perf_counter()
    for _ in range(n):
        repo.list_branches()
    blocking = (time.perf_counter() - start) / n

    async def awaited() -> float:
        core = repo.core
        start = time.perf_counter()
        for _ in range(n):
            await core.list_branches()
        return (time.perf_counter() - start) / n

    return blocking, asyncio.run(awaited())


def main(runs: int = 7) -> None:
    facade_run(), core_zarr_sync_run(), asyncio.run(core_run())  # warm-up
    sync_times, same_times, async_times = [], [], []
    for _ in range(runs):  # interleaved, so load changes hit all alike
        sync_times.append(facade_run())
        same_times.append(core_zarr_sync_run())
        async_times.append(asyncio.run(core_run()))
    s, c = statistics.median(sync_times), statistics.median(same_times)
    a = statistics.median(async_times)
    blocking, awaited = per_call()
    print(f"write+commit+read of {CHUNKS} chunks, median of {runs} runs:")
    print(f"  aicechunk.sync (zarr sync API): {s * 1000:8.1f} ms")
    print(f"  async core, zarr sync API:      {c * 1000:8.1f} ms")
    print(f"  async core (zarr async API):    {a * 1000:8.1f} ms")
    print(f"  ratio facade/async API:         {s / a:8.3f}  (target <= 1.05)")
    print(f"  ratio facade/core, same zarr:   {s / c:8.3f}  (the facade's own cost)")
    calls = f"blocking {blocking * 1e6:.0f} us, awaited {awaited * 1e6:.0f} us"
    print(f"one call (list_branches): {calls}")
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
