"""Write a dask array through forks on Dask workers (a local cluster of 2 processes).

Run: python examples/dask_write.py [DIRECTORY]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
import zarr.api.asynchronous as zas
from distributed import Client, LocalCluster

import aicechunk as aic
from aicechunk.dask import store_dask_async


async def main(directory: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(directory))
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("field", shape=(400, 300), chunks=(100, 100), dtype="f8")
    await session.commit("create the array")
    session = await repo.writable_session("main")  # a committed session is read-only

    source = da.random.default_rng(0).random((400, 300), chunks=(100, 150))
    fork = session.fork()
    target = zarr.open_array(store=fork.store, path="field")
    merged = await store_dask_async(sources=[source], targets=[target])
    await session.merge(merged)
    sid = await session.commit("written by dask")

    ro = await repo.readonly_session(snapshot_id=sid)
    back = await (await zas.open_array(store=ro.store, path="field", mode="r")).getitem(slice(None))
    assert np.array_equal(back, source.compute())
    print(f"dask wrote {source.numblocks} blocks; committed {sid}")


if __name__ == "__main__":
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        if len(sys.argv) > 1:
            asyncio.run(main(Path(sys.argv[1])))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(main(Path(tmp) / "repo"))
