"""Bad spec v2 files raise FormatError naming the file and the problem, never anything else."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.errors import FormatError
from aicechunk.format import repo_updates as ru
from aicechunk.format.flexbuf import decode_flex, encode_flex
from aicechunk.format.header import HEADER_SIZE, MAGIC, FileType, decode_versioned, encode_file
from aicechunk.format.ids import FIRST_SNAPSHOT_ID, ChunkId, ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import InlineRef, NativeRef, VirtualRef, decode_manifest
from aicechunk.format.manifest_encode import encode_manifest
from aicechunk.format.repo_info import RepoInfo, SnapshotInfo, decode_repo_info, encode_repo_info
from aicechunk.format.snapshot import (
    ArrayNodeData,
    DimensionShape,
    GroupNodeData,
    ManifestFileInfo,
    ManifestRef,
    NodeSnapshot,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)
from aicechunk.format.transaction_log import (
    MoveOperation,
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)
from tests.format.corruption import MALFORMED_PAYLOADS, check_header_problems, mutate

NID = NodeId(b"\x01" * 8)
MID = ManifestId(b"\x02" * 12)
NOW = datetime(2025, 5, 5, tzinfo=UTC)


def sample_repo() -> bytes:
    other = SnapshotId(b"\x05" * 12)
    snaps = (
        SnapshotInfo(FIRST_SNAPSHOT_ID, None, NOW, "init", {"__icechunk": {"is_root": True}}),
        SnapshotInfo(other, FIRST_SNAPSHOT_ID, NOW, "second", {"k": [1, 2, 3]}, (other,)),
    )
    return encode_repo_info(
        RepoInfo(
            {"main": other, "dev": FIRST_SNAPSHOT_ID},
            {"v1": other},
            snaps,
            ru.RepoStatus(ru.Availability.READ_ONLY, NOW, "maintenance"),
            (
                ru.Update(ru.CommitAmended("main", FIRST_SNAPSHOT_ID, other), NOW, None),
                ru.Update(ru.FeatureFlagChanged(3, None), NOW, "repo.1.X"),
                ru.Update(ru.RepoStatusChanged(ru.RepoStatus(ru.Availability.ONLINE, NOW)), NOW),
            ),
            ("gone",),
            {"owner": "me"},
            "repo.2.Y",
            encode_flex({"inline_chunk_threshold_bytes": 512}),
            (1,),
            (2, 3),
        )
    )


def sample_snapshot() -> bytes:
    return encode_snapshot(
        Snapshot(
            SnapshotId.random(),
            None,
            NOW,
            "message",
            {"k": [1, "two", {"three": 3.0}]},
            (
                NodeSnapshot(NodeId.random(), "/", b"{}", GroupNodeData()),
                NodeSnapshot(
                    NID,
                    "/a",
                    b'{"node_type":"array"}',
                    ArrayNodeData(
                        (DimensionShape(10, 4, 3), DimensionShape(4, 4, 1)),
                        ("x", None),
                        (ManifestRef(MID, ((0, 3), (0, 1))),),
                    ),
                ),
            ),
            (ManifestFileInfo(MID, 100, 3),),
            spec_version=2,
        )
    )


def sample_manifest() -> bytes:
    refs = [
        ((0, 0), InlineRef(b"abc")),
        ((1, 0), NativeRef(ChunkId.random(), 0, 100)),
        ((2, 0), VirtualRef("s3://b/f.nc", 8, 16, "etag")),
    ]
    return encode_manifest(MID, {NID: refs}, spec_version=2)


def sample_log() -> bytes:
    moves = (MoveOperation("/x", "/y", NID, True),)
    log = TransactionLog(
        SnapshotId.random(), new_arrays=(NID,), updated_chunks={NID: ((0, 0),)}, moved_nodes=moves
    )
    return encode_transaction_log(TransactionLog(**{**log.__dict__, "spec_version": 2}))


DECODERS: dict[str, tuple[Callable[[bytes, str], Any], Callable[[], bytes], FileType]] = {
    "repo info": (decode_repo_info, sample_repo, FileType.REPO_INFO),
    "snapshot": (decode_snapshot, sample_snapshot, FileType.SNAPSHOT),
    "manifest": (decode_manifest, sample_manifest, FileType.MANIFEST),
    "transaction log": (decode_transaction_log, sample_log, FileType.TRANSACTION_LOG),
}


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_header_problems_are_named(kind: str) -> None:
    decode, make, _ = DECODERS[kind]
    check_header_problems(decode, make(), kind, unknown_version=3)


def test_a_v1_header_has_no_repo_info() -> None:
    data = bytearray(sample_repo())
    data[HEADER_SIZE - 3] = 1
    with pytest.raises(FormatError, match="repo: spec version 1 has no repo info file"):
        decode_repo_info(bytes(data), "repo")


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_malformed_flatbuffers(kind: str) -> None:
    decode, _, file_type = DECODERS[kind]
    for payload in MALFORMED_PAYLOADS:
        with pytest.raises(FormatError, match="some/file: "):
            decode(encode_file(file_type, payload, spec_version=2), "some/file")


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_bombs_are_refused(kind: str) -> None:
    decode, make, _ = DECODERS[kind]
    header = make()[:HEADER_SIZE]
    huge = zstandard.ZstdCompressor().compress(b"\x00" * (64 << 20))  # declares its size
    with pytest.raises(FormatError, match="bomb"):
        decode(header + huge, "bomb")
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x00" * (8 << 20))
    with pytest.raises(FormatError, match="bomb"):
        decode(header + streamed, "bomb", 1 << 20)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x00\x09",  # root width 9
        bytes.fromhex("010028022801"),  # a one-item vector that contains itself
        bytes.fromhex("ff2801"),  # offset past the start
        bytes.fromhex("05616200001401"),  # string longer than the buffer
        bytes.fromhex("0161ff0024"),  # map with a bad key offset
        bytes.fromhex("00fc01"),  # unknown type 63
    ],
)
def test_bad_flexbuffers(data: bytes) -> None:
    try:
        decode_flex(data, "meta")
    except FormatError as err:
        assert str(err).startswith("meta: ")


@pytest.mark.parametrize("kind", sorted(DECODERS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzz_only_format_errors(kind: str, data: st.DataObject) -> None:
    decode, make, file_type = DECODERS[kind]
    original = make()
    _, payload = decode_versioned(original, file_type)
    blob = mutate(data, payload)
    try:
        result = decode(encode_file(file_type, bytes(blob), spec_version=2), "fuzzed")
        if kind == "manifest":  # lookups decode lazily: exercise them too
            for nid in result.node_ids():
                list(result.iter_node(nid))
    except FormatError as err:
        assert str(err).startswith("fuzzed: ")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_flexbuffers(data: bytes) -> None:
    try:
        decode_flex(data, "meta")
    except FormatError as err:
        assert str(err).startswith("meta: ")


def test_a_container_inside_itself_is_refused() -> None:
    with pytest.raises(FormatError, match="within itself"):
        decode_flex(bytes.fromhex("010028022801"), "meta")


def test_magic_is_shared() -> None:
    assert sample_repo().startswith(MAGIC)
