"""Fan-out writes with processes: forks pickle to workers and back.

Run: python examples/fanout_processes.py [DIRECTORY]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic

WORKERS, CHUNK = 8, 1000


def write(fork: aic.ForkSession, i: int) -> aic.ForkSession:
    """In a worker process: plain synchronous zarr through the fork's store."""
    arr = zarr.open_array(store=fork.store, path="data")
    arr[i * CHUNK : (i + 1) * CHUNK] = np.full(CHUNK, i, dtype="i4")
    return fork


async def main(directory: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(directory))
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("data", shape=(WORKERS * CHUNK,), chunks=(CHUNK,), dtype="i4")
    await session.commit("create the array")
    session = await repo.writable_session("main")  # a committed session is read-only

    fork = session.fork()
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")  # no fork() of a process with threads
    with ProcessPoolExecutor(2, mp_context=spawn) as pool:
        forks = await asyncio.gather(
            *(loop.run_in_executor(pool, write, fork, i) for i in range(WORKERS))
        )
    await session.merge(*forks)
    sid = await session.commit("written by worker processes")
    print(f"{WORKERS} process writes merged into commit {sid}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp) / "repo"))
