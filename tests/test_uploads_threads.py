"""Write-behind used from two threads at once: zarr's synchronous API runs the store on
a loop thread of its own while the caller's loop writes or drains on another. The byte
budget and the count of bytes held must stay exact however the threads interleave."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator

import pytest

from aicechunk.format.ids import ChunkId
from aicechunk.session.uploads import Uploads

CHUNK = 100
LIMIT = 1_000


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Switch threads every microsecond, so that unlocked read-modify-writes interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_two_loops_putting_and_draining_keep_the_budget_and_the_count(
    switch_often: None,
) -> None:
    uploads: Uploads
    held_max = 0
    errors: list[BaseException] = []

    async def write(chunk_id: ChunkId, data: bytes) -> None:
        nonlocal held_max
        # one snapshot of what is held (taking a list of a dict is one step under the GIL)
        held = sum(len(e.data) for e in list(uploads._pending.values()))
        held_max = max(held_max, held)
        await asyncio.sleep(0)

    uploads = Uploads(write, max_bytes=LIMIT, concurrency=4)

    async def writer(n: int) -> None:
        for _ in range(n):
            await uploads.put(ChunkId.random(), b"x" * CHUNK)
        await uploads.drain()

    def thread(n: int) -> None:
        try:
            asyncio.run(writer(n))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    for _ in range(10):
        threads = [threading.Thread(target=thread, args=(3_000,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(uploads) == 0
        assert uploads.pending_bytes == 0
    # a single chunk may go over an empty buffer; two threads may not each take the room
    assert held_max <= LIMIT
