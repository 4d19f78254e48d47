"""Decompression bombs: a small file that expands to gigabytes is refused while it is being
decompressed, within a bound derived from its stored size and a configurable maximum."""

from __future__ import annotations

import functools
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas
import zstandard

import aicechunk as aic
from aicechunk.config import DecompressionLimits, RepositoryConfig
from aicechunk.errors import FormatError
from aicechunk.format.header import (
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    FileType,
    decode_file,
    decompress_bounded,
    encode_file,
)
from aicechunk.format.ids import SnapshotId
from aicechunk.format.manifest import decode_manifest
from aicechunk.format.snapshot import decode_snapshot
from aicechunk.format.transaction_log import decode_transaction_log

GIB = 1 << 30
# what decoding a bomb may cost: the default bound for a small file (64 MiB) plus slack
PEAK_LIMIT = 100 << 20


@functools.cache
def zeros_frame(size: int = GIB, *, content_size: bool = True) -> bytes:
    """A zstd frame of ``size`` zero bytes (1 GiB compresses to 32 KB), built in pieces."""
    piece = bytes(1 << 24)
    comp = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    obj = comp.compressobj(size=size if content_size else -1)
    parts = [obj.compress(piece) for _ in range(size // len(piece))]
    parts.append(obj.flush())
    return b"".join(parts)


def lying_frame() -> bytes:
    """The 1 GiB frame, declaring a content size of 100 bytes."""
    frame = bytearray(zeros_frame())
    assert frame[4] >> 6 == 2  # a 4-byte content size, after the window byte if any
    at = 5 if frame[4] & 0b100000 else 6
    frame[at : at + 4] = (100).to_bytes(4, "little")
    assert zstandard.get_frame_parameters(bytes(frame)).content_size == 100
    return bytes(frame)


def as_file(file_type: FileType, frame: bytes) -> bytes:
    header = encode_file(file_type, b"")[:HEADER_SIZE]
    return header + frame


def peak_while(call: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        call()
    except (FormatError, aic.ForkPayloadError):
        pass
    else:
        raise AssertionError("the bomb was decoded")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


DECODERS = {
    FileType.SNAPSHOT: decode_snapshot,
    FileType.MANIFEST: decode_manifest,
    FileType.TRANSACTION_LOG: decode_transaction_log,
}
FRAMES = {
    "declared size": lambda: zeros_frame(),
    "no declared size": lambda: zeros_frame(content_size=False),
    "lying declared size": lying_frame,
}


@pytest.mark.attack("bombs")
@pytest.mark.parametrize("frame", sorted(FRAMES))
@pytest.mark.parametrize("file_type", list(DECODERS), ids=lambda t: t.name.lower())
def test_bomb_file_is_refused_within_bounded_memory(file_type: FileType, frame: str) -> None:
    data = as_file(file_type, FRAMES[frame]())
    assert len(data) < 40_000
    bound = DecompressionLimits().bound(len(data))
    assert bound == 64 << 20
    peak = peak_while(lambda: DECODERS[file_type](data, "some/file", bound))
    assert peak < PEAK_LIMIT, peak
    with pytest.raises(FormatError, match="some/file: "):
        DECODERS[file_type](data, "some/file", bound)


@pytest.mark.attack("bombs")
def test_bound_counts_output_not_the_declared_size() -> None:
    frame = zstandard.ZstdCompressor().compress(b"x" * 10_000)
    assert decompress_bounded(frame, 10_000) == b"x" * 10_000
    with pytest.raises(FormatError, match="more than the 9999 bytes"):
        decompress_bounded(frame, 9_999, "f")
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 10_000)
    assert decompress_bounded(unsized, 10_000) == b"x" * 10_000
    with pytest.raises(FormatError, match="more than the 9999 bytes"):
        decompress_bounded(unsized, 9_999, "f")
    with pytest.raises(FormatError, match="truncated"):
        decompress_bounded(unsized[:-4], 10_000, "f")


@pytest.mark.attack("bombs")
def test_uncompressed_payload_is_bounded_too() -> None:
    data = MAGIC + b" " * 24 + bytes((1, FileType.SNAPSHOT, 0)) + b"p" * 1000
    assert decode_file(data, FileType.SNAPSHOT, "f", 1000) == b"p" * 1000
    with pytest.raises(FormatError, match="f: payload of 1000 bytes exceeds the 999 allowed"):
        decode_file(data, FileType.SNAPSHOT, "f", 999)


def test_limits_are_checked() -> None:
    assert DecompressionLimits().bound(1) == 64 << 20
    assert DecompressionLimits().bound(10 << 20) == GIB
    assert DecompressionLimits().bound(200_000) == 200_000 * 1024
    with pytest.raises(ValueError, match="cannot exceed"):
        DecompressionLimits(max_bytes=MAX_PAYLOAD + 1)
    with pytest.raises(ValueError, match="positive integer"):
        DecompressionLimits(max_ratio=0)
    config = RepositoryConfig()
    with pytest.raises(ValueError, match="cannot exceed"):
        config.max_decompressed_bytes = 4 * GIB


async def repo_with_chunks() -> tuple[aic.Repository, aic.Storage]:
    storage = aic.in_memory_storage()
    repo = await aic.Repository.create(storage)
    session = await repo.writable_session("main")
    arr = await zas.create_array(session.store, name="a", shape=(64,), chunks=(8,), dtype="i8")
    await arr.setitem(slice(None), np.arange(64))
    await session.commit("data")
    return repo, storage


async def first_key(driver: Any, prefix: str) -> str:
    keys = [info.key async for info in driver.list(prefix)]
    return keys[0]


@pytest.mark.attack("bombs")
async def test_bomb_in_a_repository_is_a_format_error() -> None:
    """A manifest, snapshot and transaction log replaced by 32 KB bombs: reading each
    is a FormatError naming the file, without a gigabyte of memory."""
    _, storage = await repo_with_chunks()
    driver = storage.driver()
    manifest_key = await first_key(driver, "manifests/")
    await driver.put(manifest_key, as_file(FileType.MANIFEST, zeros_frame()))
    fresh = await aic.Repository.open(storage)
    session = await fresh.readonly_session(branch="main")
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=manifest_key):
            await session.get_chunk("/a", (0,))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, peak

    log_key = f"transactions/{await fresh.lookup_branch('main')}"  # the one main reads
    await driver.put(log_key, as_file(FileType.TRANSACTION_LOG, zeros_frame()))
    fresh = await aic.Repository.open(storage)
    with pytest.raises(FormatError, match=log_key):
        await fresh._assets.fetch_transaction_log(SnapshotId.from_str(log_key.split("/")[1]))

    snapshot_key = f"snapshots/{log_key.split('/')[1]}"
    await driver.put(snapshot_key, as_file(FileType.SNAPSHOT, zeros_frame()))
    fresh = await aic.Repository.open(storage)
    with pytest.raises(FormatError, match=snapshot_key):
        await (await fresh.readonly_session(branch="main")).list_nodes()


async def test_max_decompressed_bytes_is_configurable() -> None:
    """A legitimate 2 MB manifest reads by default and is refused under a 1 MiB maximum."""
    storage = aic.in_memory_storage()
    config = RepositoryConfig()
    config.inline_chunk_threshold_bytes = 20_000
    repo = await aic.Repository.create(storage, config)
    session = await repo.writable_session("main")
    await zas.create_array(session.store, name="a", shape=(200,), chunks=(1,), dtype="u1")
    rng = np.random.default_rng(0)
    for i in range(200):  # 200 inline chunks of 10 KB: a 2 MB manifest
        await session.set_chunk("/a", (i,), rng.bytes(10_000))
    await session.commit("inline chunks")
    default = await (await aic.Repository.open(storage)).readonly_session(branch="main")
    assert await default.get_chunk("/a", (7,)) is not None
    small = RepositoryConfig()
    small.max_decompressed_bytes = 1 << 20
    session = await (await aic.Repository.open(storage, small)).readonly_session(branch="main")
    with pytest.raises(FormatError, match="more than the 1048576 bytes"):
        await session.get_chunk("/a", (7,))


def fork_payload(packed: bytes) -> bytes:
    """A fork payload (header, checksum) around any compressed body."""
    return struct.pack("<8sHHI", b"AICFORK\x00", 2, 0, zlib.crc32(packed)) + packed


@pytest.mark.attack("bombs")
@pytest.mark.parametrize("frame", sorted(FRAMES))
def test_fork_payload_bomb(frame: str) -> None:
    payload = fork_payload(FRAMES[frame]())
    peak = peak_while(lambda: aic.ForkSession.from_bytes(payload))
    assert peak < PEAK_LIMIT, peak
    with pytest.raises(aic.ForkPayloadError, match="fork payload"):
        aic.ForkSession.from_bytes(payload)


@pytest.mark.attack("bombs")
async def test_a_bad_persisted_maximum_is_a_format_error() -> None:
    storage = aic.in_memory_storage()
    await aic.Repository.create(storage, spec_version=1)  # its config.yaml (v2: test_config_v2)
    for bad in ("'lots'", "-1", str(4 * GIB), "true"):
        await storage.driver().put(
            "config.yaml", f"aicechunk_max_decompressed_bytes: {bad}\n".encode()
        )
        with pytest.raises(FormatError, match=r"config\.yaml: "):
            await aic.Repository.open(storage)
