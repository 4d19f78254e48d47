"""What a merged fork's carried chunks may change in the session it is merged into.

A fork sent to a worker carries the bytes of chunks its parent still uploads
(``carried.py``); it comes back carrying them again. The parent uploads those chunks
itself and reads them from its uploads, then from storage: a returned fork's copies must
never be what it reads, or a fork that comes back with other bytes (a bug in a worker, a
tampered payload) would make the parent read data it does not commit, and a fork that
names a chunk nobody uploads would read fine until the commit made it a missing chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.errors import AicechunkError
from aicechunk.format.ids import ChunkId
from aicechunk.format.manifest import NativeRef
from tests.test_fork_carried import CHUNK, read_x, setup


async def test_returned_fork_cannot_replace_what_the_parent_reads(tmp_path: Path) -> None:
    repo, gated, session, expected = await setup(tmp_path)
    fork = session.fork_with_changes()
    returned = aic.ForkSession.from_bytes(fork.to_bytes())
    (chunk_id,) = returned._state.carried  # the pending chunk 0, carried
    forged = np.full(CHUNK, 666, dtype="i8").tobytes()
    returned._state.carried[chunk_id] = forged  # what a faulty worker could send back
    back = aic.ForkSession.from_bytes(returned.to_bytes())  # the checks let it through
    await session.merge(back)
    gated.gate.set()
    await session._state.uploads.drain()  # the parent's own upload landed
    np.testing.assert_array_equal(await read_x(session), expected)
    await session.commit("merged")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_x(ro), expected)


async def test_a_chunk_only_a_payload_holds_is_not_read_as_stored(tmp_path: Path) -> None:
    _, gated, session, _ = await setup(tmp_path)
    gated.gate.set()
    fork = session.fork_with_changes()
    node = await fork.get_node("/x")
    assert node is not None
    ghost = ChunkId.random()  # a chunk file no one ever uploads
    data = np.full(CHUNK, 7, dtype="i8").tobytes()
    fork._state.changes.set_chunk(node.id, (1,), NativeRef(ghost, 0, len(data)))
    fork._state.carried = {ghost: data}
    back = aic.ForkSession.from_bytes(fork.to_bytes())
    await session.merge(back)
    # the parent must not see chunk 1 as written: committing it would reference nothing
    arr = await zas.open_array(store=session.store, path="x", mode="r")
    with pytest.raises(AicechunkError):
        await arr.getitem(slice(CHUNK, 2 * CHUNK))
