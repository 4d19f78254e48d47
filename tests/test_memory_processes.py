"""In-memory storage and worker processes: a fork of an in-memory repository sent to
another process is refused there, clearly, and nothing broken is ever committed."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from tests.test_forks import CHUNK, process_worker, setup_array


def open_in_worker(payload: bytes) -> str:
    """Runs in another process: open the pickled storage's repository."""
    storage = pickle.loads(payload)
    try:
        asyncio.run(aic.Repository.open(storage))
    except aic.AicechunkError as err:
        return f"{type(err).__name__}: {err}"
    return "opened"


@pytest.mark.parametrize("method", ["fork", "spawn"])
async def test_forks_of_in_memory_repositories_are_refused_in_workers(method: str) -> None:
    repo, session = await setup_array(aic.in_memory_storage(), 2)
    fork = session.fork()
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method)) as pool:
        with pytest.raises(aic.AicechunkError, match="not shared with process"):
            await loop.run_in_executor(pool, process_worker, fork, 0)
        # the storage itself says the same
        said = await loop.run_in_executor(pool, open_in_worker, pickle.dumps(repo.storage))
    assert said.startswith("StorageError: in-memory storage lives in process")
    assert "worker processes" in said

    # nothing half-done: the session commits what it has, and every chunk reads
    arr = await zas.open_array(store=session.store, path="data")
    await arr.setitem(slice(0, CHUNK), np.ones(CHUNK, dtype="i8"))
    sid = await session.commit("in this process")
    ro = await repo.readonly_session(snapshot_id=sid)
    data = zarr.open_array(store=ro.store, path="data", mode="r")[:]
    assert data[:CHUNK].tolist() == [1] * CHUNK


async def test_forks_of_in_memory_repositories_work_across_threads() -> None:
    repo, session = await setup_array(aic.in_memory_storage(), 2)
    fork = pickle.loads(pickle.dumps(session.fork()))  # same process: the live repository
    await asyncio.to_thread(process_worker, fork, 1)
    await session.merge(fork)
    sid = await session.commit("from a thread")
    ro = await repo.readonly_session(snapshot_id=sid)
    data = zarr.open_array(store=ro.store, path="data", mode="r")[:]
    assert data[CHUNK:].tolist() == [101] * CHUNK
