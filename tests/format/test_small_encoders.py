"""The encoders of small manifests and transaction logs write the general (numpy,
streamed) encoders' bytes."""

from __future__ import annotations

import os
import random

import pytest

from aicechunk.format import Coords, transaction_log
from aicechunk.format.ids import ChunkId, ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef, VirtualRef, decode_manifest
from aicechunk.format.manifest_encode import encode_array_manifest, encode_manifest
from aicechunk.format.manifest_small import SMALL_MANIFEST, small_array_manifest
from aicechunk.format.transaction_log import (
    MoveOperation,
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)


def _refs(rng: random.Random, n: int, ndim: int, kinds: str) -> dict[Coords, ChunkRef]:
    refs: dict[Coords, ChunkRef] = {}
    while len(refs) < n:
        coords = tuple(rng.choice((0, 1, 7, 2**32 - 2, rng.randrange(1000))) for _ in range(ndim))
        if rng.choice(kinds) == "n":
            offset = rng.choice((0, 5, 2**64 - 1))
            refs[coords] = NativeRef(ChunkId(os.urandom(12)), offset, rng.randrange(2**40))
        else:
            refs[coords] = InlineRef(os.urandom(rng.choice((0, 1, 3, 4, 5, 17))))
    return refs


def _general(mid: ManifestId, nid: NodeId, refs: dict[Coords, ChunkRef], version: int) -> bytes:
    # pairs, not a mapping: the general encoder's path
    return encode_manifest(mid, {nid: list(refs.items())}, version)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("kinds", ["n", "i", "ni"])
def test_the_small_encoder_writes_the_general_encoders_bytes(version: int, kinds: str) -> None:
    rng = random.Random(f"{version}{kinds}")
    for _ in range(60):
        n = rng.choice((1, 2, 3, rng.randrange(1, SMALL_MANIFEST + 1), SMALL_MANIFEST))
        refs = _refs(rng, n, rng.choice((1, 2, 3)), kinds)
        mid, nid = ManifestId.random(), NodeId.random()
        small = small_array_manifest(mid, nid, refs, version)
        assert small is not None
        data, extents = small
        assert data == _general(mid, nid, refs, version)
        assert (data, extents) == encode_array_manifest(mid, nid, refs, version)
        assert extents == encode_array_manifest(mid, nid, list(refs.items()), version)[1]
        manifest = decode_manifest(data)
        assert dict(manifest.iter_node(nid)) == refs


def test_the_small_encoder_leaves_the_rest_to_the_general_one() -> None:
    mid, nid = ManifestId.random(), NodeId.random()
    native = NativeRef(ChunkId(os.urandom(12)), 0, 4)
    virtual = VirtualRef("s3://b/k", 0, 4)
    too_many = {(i,): native for i in range(SMALL_MANIFEST + 1)}
    for refs in (
        {},
        {(): native},  # a 0-d array
        {(0,): native, (1,): virtual},
        {(0,): native, (0, 1): native},  # mixed dimensionality
        {(2**32,): native},  # past the format's range: the general encoder refuses it
        too_many,
    ):
        assert small_array_manifest(mid, nid, refs, 2) is None  # type: ignore[arg-type]
    data, extents = encode_array_manifest(mid, nid, too_many, 2)
    assert data == _general(mid, nid, too_many, 2)
    assert extents == ((0, SMALL_MANIFEST + 1),)


@pytest.mark.parametrize("version", [1, 2])
def test_a_small_transaction_log_has_the_streamed_logs_bytes(
    version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(version)
    logs = []
    for k in range(200):
        nid = NodeId.random()
        ndim = rng.choice((1, 2, 3))
        n = rng.choice((1, 2, 5, 64, 65, 300))
        chunks = {nid: [tuple(rng.randrange(40) for _ in range(ndim)) for _ in range(n)]}
        if k % 4 == 0:
            chunks[NodeId.random()] = [(3,), (1,), (3,)]
        moves = (MoveOperation("/a", "/b", nid, True),) if version == 2 and k % 5 == 0 else ()
        logs.append(
            TransactionLog(
                SnapshotId.random(),
                new_groups=tuple(NodeId.random() for _ in range(k % 3)),
                updated_arrays=(nid,),
                updated_chunks=chunks,
                moved_nodes=moves,
                spec_version=version,
            )
        )
    small = [encode_transaction_log(log) for log in logs]
    # the streamed layout (Segmented, numpy, compress_parts) for every log
    monkeypatch.setattr(transaction_log, "SMALL_LOG", -1)
    monkeypatch.setattr(transaction_log, "_SMALL_SORT", 0)
    assert small == [encode_transaction_log(log) for log in logs]
    for log, data in zip(logs, small, strict=True):
        chunks = decode_transaction_log(data).updated_chunks
        assert chunks == {k: tuple(sorted(set(v))) for k, v in log.updated_chunks.items()}
