"""Forks made with changes carry the chunks their parent still uploads (``carried.py``).

The parent writes a partial chunk behind (its upload held back by a gate), forks with
its changes and sends the fork away pickled: to a spawned process, or back into this one.
There the fork reads that chunk from the bytes its payload carried (the chunk is not in
storage yet), writes the rest of the chunk (a region write: read, modify, write), and
goes back to be merged; the commit, once the gate opens, holds both writes. Payloads
whose carried chunks were tampered with are refused with ``ForkPayloadError``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zarr.api.asynchronous as zas
import zstandard

import aicechunk as aic
from aicechunk.drivers import LocalDriver
from aicechunk.drivers.base import ObjectInfo
from aicechunk.errors import ForkPayloadError
from aicechunk.testing import CountingDriver

CHUNK = 128  # i8 values: 1 KiB chunk files (over the inline threshold)
N = 4 * CHUNK


class GatedDriver(CountingDriver):
    """Holds every chunk file write until ``gate`` is set (uploads stay pending)."""

    def __init__(self, inner: LocalDriver) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        if key.startswith("chunks/"):
            await self.gate.wait()
        return await super()._put(key, data, if_none_match=if_none_match, if_match=if_match)

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        if key.startswith("chunks/"):
            await self.gate.wait()
        return await super()._put_once(key, data)


async def setup(
    path: Path,
) -> tuple[aic.Repository, GatedDriver, aic.Session, np.ndarray]:
    """A committed array /x of zeros (4 chunks, in storage); a session that then wrote
    x[0:10] behind the gate: chunk 0 is pending, not stored."""
    gated = GatedDriver(LocalDriver(path))
    repo = await aic.Repository.create(aic.storage_from_driver(gated))
    session = await repo.writable_session("main")
    await zas.create_array(
        session.store, name="x", shape=(N,), chunks=(CHUNK,), dtype="i8", compressors=None
    )
    await session.commit("empty array")  # no chunk written: no upload to hold
    session = await repo.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x")
    await arr.setitem(slice(0, 10), np.arange(1, 11, dtype="i8"))  # a partial chunk
    assert len(session._state.uploads) == 1
    expected = np.zeros(N, dtype="i8")
    expected[0:10] = np.arange(1, 11)
    return repo, gated, session, expected


async def read_x(session: aic.Session) -> np.ndarray:
    arr = await zas.open_array(store=session.store, path="x", mode="r")
    return np.asarray(await arr.getitem(slice(None)))


async def worker_steps(fork: aic.ForkSession, expected: np.ndarray) -> aic.ForkSession:
    """What a worker does: read the pending chunk, then write the rest of it."""
    np.testing.assert_array_equal(await read_x(fork), expected)
    arr = await zas.open_array(store=fork.store, path="x")
    await arr.setitem(slice(10, 20), np.arange(11, 21, dtype="i8"))  # same chunk 0
    return fork


def spawned_worker(pickled: bytes, expected: np.ndarray) -> bytes:
    """Run in a spawned process: the fork there has only its payload to go on."""
    fork = pickle.loads(pickled)
    assert fork._state.parent_uploads is None and fork._state.carried
    return pickle.dumps(asyncio.run(worker_steps(fork, expected)))


async def finish(
    repo: aic.Repository, gated: GatedDriver, session: aic.Session, fork: aic.ForkSession
) -> None:
    """Merge ``fork`` back, open the gate, commit: both writes are in the snapshot."""
    await session.merge(fork)
    gated.gate.set()
    await session.commit("parent and fork")
    expected = np.zeros(N, dtype="i8")
    expected[0:20] = np.arange(1, 21)
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_x(ro), expected)


async def test_fork_in_a_spawned_process_reads_pending_chunk(tmp_path: Path) -> None:
    repo, gated, session, expected = await setup(tmp_path / "repo")
    fork = session.fork_with_changes()
    pickled = pickle.dumps(fork)
    assert struct.unpack_from("<H", pickled, pickled.find(b"AICFORK\x00") + 8)[0] == 3
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        back = await asyncio.to_thread(pool.apply, spawned_worker, (pickled, expected))
    assert len(session._state.uploads) == 1  # still held: the worker read carried bytes
    (pending,) = session._state.uploads._pending
    assert not (tmp_path / "repo" / "chunks" / str(pending)).exists()
    await finish(repo, gated, session, pickle.loads(back))


async def test_fork_after_a_pickle_round_trip_reads_pending_chunk(tmp_path: Path) -> None:
    repo, gated, session, expected = await setup(tmp_path / "repo")
    fork = pickle.loads(pickle.dumps(session.fork_with_changes()))
    assert fork._state.parent_uploads is None  # only the payload's bytes to read from
    fork = await worker_steps(fork, expected)
    # the worker's fork goes back pickled too: its chunk 0 replaced the parent's pending
    # one (and was stored before set returned), so nothing is carried back
    fork = pickle.loads(pickle.dumps(fork))
    assert fork._state.carried is None
    await finish(repo, gated, session, fork)


async def test_only_pending_chunks_named_by_changes_travel(tmp_path: Path) -> None:
    _, gated, session, _ = await setup(tmp_path / "repo")
    fork = session.fork_with_changes()
    session.discard_changes()  # the upload stays queued, but no change names it now
    assert len(session._state.uploads) == 1
    assert aic.ForkSession.from_bytes(fork.to_bytes())._state.carried  # named by the fork
    assert session.fork().to_bytes()[8:10] == struct.pack("<H", 2)  # fork(): nothing
    gated.gate.set()
    await session._state.uploads.drain()
    # stored now: a new fork with the same changes carries nothing
    assert fork.to_bytes()[8:10] == struct.pack("<H", 2)


# --- tampered payloads -----------------------------------------------------------------


def unpack(payload: bytes) -> dict[str, Any]:
    body: dict[str, Any] = msgpack.unpackb(
        zstandard.ZstdDecompressor().decompress(payload[16:]), raw=False, strict_map_key=False
    )
    return body


def pack(body: dict[str, Any], version: int) -> bytes:
    packed = zstandard.ZstdCompressor().compress(msgpack.packb(body, use_bin_type=True))
    return struct.pack("<8sHHI", b"AICFORK\x00", version, 0, zlib.crc32(packed)) + packed


def _short(body: dict[str, Any]) -> None:
    body["carried"][0][1] = body["carried"][0][1][:-1]


def _unnamed(body: dict[str, Any]) -> None:
    body["carried"][0][0] = bytes(12)


def _twice(body: dict[str, Any]) -> None:
    body["carried"].append(list(body["carried"][0]))


def _bad_id(body: dict[str, Any]) -> None:
    body["carried"][0][0] = b"x"


def _not_bytes(body: dict[str, Any]) -> None:
    body["carried"][0][1] = "text"


def _not_a_list(body: dict[str, Any]) -> None:
    body["carried"] = {"a": 1}


def _empty(body: dict[str, Any]) -> None:
    body["carried"] = []


@pytest.mark.attack("crafted payloads")
@pytest.mark.parametrize(
    "tamper", [_short, _unnamed, _twice, _bad_id, _not_bytes, _not_a_list, _empty]
)
async def test_tampered_carried_chunks_are_refused(tmp_path: Path, tamper: Any) -> None:
    _, gated, session, _ = await setup(tmp_path / "repo")
    payload = session.fork_with_changes().to_bytes()
    body = unpack(payload)
    assert len(body["carried"]) == 1
    tamper(body)
    with pytest.raises(ForkPayloadError, match="carried"):
        aic.ForkSession.from_bytes(pack(body, 3))
    gated.gate.set()
    await session.commit("unharmed")


@pytest.mark.attack("crafted payloads")
async def test_carried_chunks_only_in_version_3(tmp_path: Path) -> None:
    _, gated, session, _ = await setup(tmp_path / "repo")
    payload = session.fork_with_changes().to_bytes()
    body = unpack(payload)
    with pytest.raises(ForkPayloadError, match="version 3"):
        aic.ForkSession.from_bytes(pack(body, 2))  # a reader of 2 would ignore them
    del body["carried"]
    with pytest.raises(ForkPayloadError, match="version 3"):
        aic.ForkSession.from_bytes(pack(body, 3))
    flipped = bytearray(payload)
    flipped[-1] ^= 1
    with pytest.raises(ForkPayloadError, match="checksum"):
        aic.ForkSession.from_bytes(bytes(flipped))
    gated.gate.set()
    await session.commit("unharmed")
