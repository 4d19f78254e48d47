"""Coverage-guided fuzzing of every file decoder, and of fork payloads, with atheris.

    python tests/fuzz/fuzz_decoders.py -runs=200000 [corpus_dir]

Seeds are real files (ours, written here). Any exception other than FormatError is a bug.
Fork payloads (first byte 5) are fuzzed as their msgpack body behind a valid header and
checksum, pointed at a real repository made here: ``ForkSession.from_bytes`` and merging
into a session of that repository may raise only ``ForkPayloadError``, and a payload that
merged must leave every listing readable. Given a corpus directory, the script writes a
real fork body into it as a seed.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import atheris
import msgpack
import zstandard

with atheris.instrument_imports():
    import aicechunk as aic
    from aicechunk.errors import FormatError
    from aicechunk.format.header import FileType, encode_file
    from aicechunk.format.manifest import decode_manifest
    from aicechunk.format.refs import decode_ref
    from aicechunk.format.snapshot import decode_snapshot
    from aicechunk.format.transaction_log import decode_transaction_log

with atheris.instrument_imports():
    from aicechunk.config import RepositoryConfig
    from aicechunk.errors import AicechunkError


def fuzz_config_yaml(body: bytes) -> None:
    """``config.yaml`` as a repository reads it: parsed, then every setting the library
    uses taken out (caches, inline threshold, virtual chunk containers) and written back.
    Any error but a library error (``FormatError`` naming the file) is a bug."""
    try:
        config = RepositoryConfig.from_yaml(body, "config.yaml")
        caching = config.caching
        if caching is not None:
            for name in caching.DEFAULTS:
                caching.resolved(name)
        config.inline_chunk_threshold_bytes  # noqa: B018
        config.virtual_chunk_containers  # noqa: B018
        RepositoryConfig.from_yaml(config.to_yaml(), "config.yaml")
    except AicechunkError as err:
        assert str(err).startswith("config.yaml: "), err


DECODERS = [decode_snapshot, decode_manifest, decode_transaction_log]
TYPES = [FileType.SNAPSHOT, FileType.MANIFEST, FileType.TRANSACTION_LOG]
FORK = 5
LOOP = asyncio.new_event_loop()


def _array_meta(shape: list[int], chunks: list[int]) -> bytes:
    return json.dumps(
        {
            "zarr_format": 3,
            "node_type": "array",
            "shape": shape,
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [{"name": "bytes"}],
        }
    ).encode()


async def _parent() -> tuple[aic.Session, dict[str, Any]]:
    """A session of a repository with /data (grid [2]), /grp and /old, and the body of a
    real fork that writes a chunk, adds an array with a chunk and deletes /old."""
    storage = aic.local_filesystem_storage(tempfile.mkdtemp(prefix="fuzz-forks-"))
    repo = await aic.Repository.create(storage)
    session = await repo.writable_session("main")
    await session.set_metadata("/data", _array_meta([8], [4]))
    for group in ("/grp", "/old"):
        await session.set_metadata(group, b'{"zarr_format": 3, "node_type": "group"}')
    await session.commit("base")
    session = await repo.writable_session("main")  # a committed session is read-only
    fork = session.fork()
    await fork.set_chunk("/data", (0,), b"abcd")
    await fork.set_metadata("/grp/new", _array_meta([4, 4], [2, 2]))
    await fork.set_chunk("/grp/new", (1, 1), b"wxyz")
    await fork.delete_node("/old")
    body: dict[str, Any] = msgpack.unpackb(
        zstandard.ZstdDecompressor().decompress(fork.to_bytes()[16:]),
        raw=False,
        strict_map_key=False,
    )
    return session, body


PARENT, SEED_BODY = LOOP.run_until_complete(_parent())
# what ties a payload to the parent; fuzzed payloads keep them, to reach the merge
TIES = {key: SEED_BODY[key] for key in ("storage", "snapshot", "branch")}


def _pack(body: object) -> bytes:
    packed = zstandard.ZstdCompressor(level=1).compress(msgpack.packb(body, use_bin_type=True))
    return struct.pack("<8sHHI", b"AICFORK\x00", 2, 0, zlib.crc32(packed)) + packed


async def _merge_and_list(fork: aic.ForkSession) -> None:
    try:
        await PARENT.merge(fork)
    except aic.ForkPayloadError:
        return
    try:  # what a merged payload used to break
        async for _ in PARENT.store.list():
            pass
        await PARENT.status()
    finally:
        PARENT.discard_changes()


def fuzz_fork_payload(body: bytes) -> None:
    try:
        plain = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:  # not msgpack: nothing of ours is reached
        return
    if isinstance(plain, dict):
        plain.update(TIES)
    try:
        fork = aic.ForkSession.from_bytes(_pack(plain))
    except aic.ForkPayloadError:
        return
    LOOP.run_until_complete(_merge_and_list(fork))


def one_input(data: bytes) -> None:
    if not data:
        return
    which, body = data[0] % 6, data[1:]
    if which == FORK:
        fuzz_fork_payload(body)
        return
    try:
        if which < 3:
            # fuzz the flatbuffer itself behind a valid header, where the structure lives
            manifest = DECODERS[which](encode_file(TYPES[which], body, level=1), "fuzz")
            if which == 1:
                for node_id in manifest.node_ids():
                    list(manifest.iter_node(node_id))
                    manifest.lookup(node_id, (0, 0))
        elif which == 3:
            decode_ref(body, "fuzz")
        else:
            fuzz_config_yaml(body)
    except FormatError:
        pass


def write_fork_seed(corpus: Path) -> None:
    """A real fork's body, selected by the first byte, as a seed."""
    (corpus / "fork_payload").write_bytes(bytes([FORK]) + msgpack.packb(SEED_BODY))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        if not arg.startswith("-") and Path(arg).is_dir():
            write_fork_seed(Path(arg))
    LOOP.run_until_complete(PARENT.merge(aic.ForkSession.from_bytes(_pack(SEED_BODY))))
    PARENT.discard_changes()  # the seed merges
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
