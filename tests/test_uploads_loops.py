"""Write-behind across event loops, as notebooks mix them: chunks written with zarr's
async API on the notebook's running loop, then a commit through the synchronous facade
(icechunk's API), which runs on zarr's loop thread while it blocks the notebook's.

The commit must not wait for the notebook loop to finish the uploads (that loop is
blocked until the commit returns: it waited for ever); it takes them over.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

NOTEBOOK = textwrap.dedent(
    """
    import asyncio
    import numpy as np
    import zarr
    import zarr.api.asynchronous as zas
    import aicechunk as aic
    import aicechunk.sync as aics
    from aicechunk.drivers import MemoryDriver
    from aicechunk.testing import FaultyDriver

    slow = FaultyDriver(MemoryDriver(), methods={"put"}, key_prefix="chunks/", delay=0.2)

    async def cell() -> None:  # a notebook cell: its loop is running
        repo = aics.Repository.create(aic.storage_from_driver(slow))
        session = repo.writable_session("main")
        arr = await zas.create_array(
            session.store, name="x", shape=(1000,), chunks=(100,), dtype="i8",
            compressors=None,
        )
        await arr.setitem(slice(None), np.arange(1000))
        assert len(aics._unwrap(session)._state.uploads) > 0  # still uploading here
        session.commit("from a notebook")  # blocks this loop until it returns
        ro = repo.readonly_session(branch="main")
        got = zarr.open_array(ro.store, path="x", mode="r")[:]
        assert (got == np.arange(1000)).all()
        print("committed")

    asyncio.run(cell())
    """
)


def test_sync_commit_from_a_running_loop_that_holds_the_uploads() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", NOTEBOOK], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "committed"
