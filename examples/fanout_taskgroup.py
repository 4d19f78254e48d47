"""Fan-out writes with asyncio: 64 tasks, each with its own fork (sent as bytes).

Run: python examples/fanout_taskgroup.py [DIRECTORY]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr.api.asynchronous as zas

import aicechunk as aic

TASKS, CHUNK = 64, 1000


async def worker(payload: bytes, i: int) -> bytes:
    fork = aic.ForkSession.from_bytes(payload)  # as a remote worker would receive it
    arr = await zas.open_array(store=fork.store, path="data")
    await arr.setitem(slice(i * CHUNK, (i + 1) * CHUNK), np.full(CHUNK, i, dtype="i4"))
    return fork.to_bytes()


async def main(directory: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(directory))
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("data", shape=(TASKS * CHUNK,), chunks=(CHUNK,), dtype="i4")
    await session.commit("create the array")
    session = await repo.writable_session("main")  # a committed session is read-only

    payload = session.fork().to_bytes()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(worker(payload, i)) for i in range(TASKS)]
    await session.merge(*(aic.ForkSession.from_bytes(t.result()) for t in tasks))
    sid = await session.commit(f"{TASKS} tasks wrote in parallel")

    ro = await repo.readonly_session(snapshot_id=sid)
    values = await (await zas.open_array(store=ro.store, path="data", mode="r")).getitem(
        slice(None)
    )
    assert (values == np.repeat(np.arange(TASKS), CHUNK)).all()
    print(f"{TASKS} forks merged into one commit {sid}; payload {len(payload)} bytes")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp) / "repo"))
