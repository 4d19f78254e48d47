"""Spec v2 files survive encode -> decode; the repo info file's ops log is kept as
Icechunk keeps it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.errors import FormatError, UnrepresentableValueError
from aicechunk.format import repo_updates as ru
from aicechunk.format.flexbuf import MAX_DEPTH, decode_flex, encode_flex
from aicechunk.format.header import spec_version_of
from aicechunk.format.ids import FIRST_SNAPSHOT_ID, ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import ChunkRef, decode_manifest
from aicechunk.format.manifest_encode import encode_manifest
from aicechunk.format.repo_info import (
    RepoInfo,
    SnapshotInfo,
    backup_name,
    decode_repo_info,
    encode_repo_info,
    push_update,
)
from aicechunk.format.snapshot import Snapshot, decode_snapshot, encode_snapshot
from aicechunk.format.transaction_log import (
    MoveOperation,
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)
from tests.format.strategies import chunk_refs, coords, manifest_ids, node_ids
from tests.format.strategies_v2 import flex_values, repo_infos, snapshots_v2, transaction_logs_v2

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@given(flex_values)
def test_flex_roundtrip(value: Any) -> None:
    assert decode_flex(encode_flex(value)) == value


def test_flex_writes_as_icechunk_does() -> None:
    # bytes icechunk 2.3.0 wrote for the commit metadata value [1, "two", {"three": 3.5}]
    rust = "0374776f007468726565000107000000040000000100000001000000000060400e03012208081426062801"
    assert encode_flex([1, "two", {"three": 3.5}]).hex() == rust
    assert encode_flex({"is_root": True}).hex() == "69735f726f6f740001090101010168022401"
    assert encode_flex(None) == bytes.fromhex("000001")


def test_flex_refuses_nul_in_keys() -> None:
    with pytest.raises(UnrepresentableValueError):
        encode_flex({"a\x00b": 1})


def test_flex_depth_limit() -> None:
    value: Any = []
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(UnrepresentableValueError):
        encode_flex(value)


@settings(max_examples=60, deadline=None)
@given(repo_infos())
def test_repo_info_roundtrip(info: RepoInfo) -> None:
    data = encode_repo_info(info)
    assert spec_version_of(data) == 2
    decoded = decode_repo_info(data)
    assert decoded == info
    assert encode_repo_info(decoded) == data
    for snap in info.snapshots:
        assert decoded.snapshot(snap.id) == snap
        assert next(iter(decoded.ancestry(snap.id))).id == snap.id


@settings(max_examples=60, deadline=None)
@given(snapshots_v2())
def test_snapshot_v2_roundtrip(snap: Snapshot) -> None:
    data = encode_snapshot(snap)
    assert spec_version_of(data) == 2
    decoded = decode_snapshot(data, "snapshots/X")
    assert decoded == snap
    assert encode_snapshot(decoded) == data


@settings(max_examples=60, deadline=None)
@given(transaction_logs_v2())
def test_transaction_log_v2_roundtrip(log: TransactionLog) -> None:
    data = encode_transaction_log(log)
    assert spec_version_of(data) == 2
    assert decode_transaction_log(data) == log


@settings(max_examples=40, deadline=None)
@given(
    manifest_ids,
    st.dictionaries(node_ids, st.dictionaries(coords, chunk_refs, max_size=8), max_size=3),
)
def test_manifest_v2_roundtrip(
    mid: ManifestId, arrays: dict[NodeId, dict[tuple[int, ...], ChunkRef]]
) -> None:
    data = encode_manifest(mid, {n: r.items() for n, r in arrays.items()}, spec_version=2)
    assert spec_version_of(data) == 2
    manifest = decode_manifest(data)
    assert manifest.spec_version == 2
    for node_id, refs in arrays.items():
        assert list(manifest.iter_node(node_id)) == sorted(refs.items())


def test_moves_sorted_segment_by_segment() -> None:
    nid = NodeId(b"\x01" * 8)
    paths = ["/b", "/a-b", "/a/b", "/ab", "/a"]
    log = TransactionLog(
        SnapshotId.random(),
        moved_nodes=tuple(MoveOperation("/x" + p, p, nid, False) for p in paths),
        spec_version=2,
    )
    assert [m.to_path for m in log.moved_nodes] == ["/a", "/a/b", "/a-b", "/ab", "/b"]


def test_v1_log_refuses_moves() -> None:
    move = MoveOperation("/a", "/b", NodeId(b"\x01" * 8), True)
    with pytest.raises(ValueError):
        encode_transaction_log(TransactionLog(SnapshotId.random(), moved_nodes=(move,)))


def _initial() -> RepoInfo:
    first = SnapshotInfo(FIRST_SNAPSHOT_ID, None, T0, "Repository initialized")
    status = ru.RepoStatus(ru.Availability.ONLINE, T0)
    return RepoInfo(
        {"main": FIRST_SNAPSHOT_ID}, {}, (first,), status, (ru.Update(ru.RepoInitialized(), T0),)
    )


def test_push_update_links_backups_and_overflows() -> None:
    info = _initial()
    for i in range(1, 6):
        at = T0 + timedelta(seconds=i)
        log, before = push_update(info, ru.BranchCreated(f"b{i}"), at, f"repo.{i}", limit=3)
        info = RepoInfo(
            info.branches, {}, info.snapshots, info.status, log, repo_before_updates=before
        )
    names = [getattr(u.kind, "name", None) for u in info.latest_updates]
    assert names == ["b5", "b4", "b3"]
    assert [u.backup_path for u in info.latest_updates] == [None, "repo.5", "repo.4"]
    assert info.repo_before_updates == "repo.3"  # the file that holds b2 on top
    with pytest.raises(FormatError):
        push_update(info, ru.GCRan(), T0, "repo.x")  # not after the latest update


def test_backup_names() -> None:
    name = backup_name(datetime(2026, 12, 7, 0, 11, 52, 229000, tzinfo=UTC), b"\x00" * 12)
    assert name == "repo.30707077687771." + "0" * 20


def test_repo_info_refuses_dangling_refs() -> None:
    info = _initial()
    bad = RepoInfo(
        {"main": SnapshotId.random()}, {}, info.snapshots, info.status, info.latest_updates
    )
    with pytest.raises(FormatError, match="not listed"):
        encode_repo_info(bad)
    no_main = RepoInfo(
        {"dev": FIRST_SNAPSHOT_ID}, {}, info.snapshots, info.status, info.latest_updates
    )
    with pytest.raises(FormatError, match="main"):
        encode_repo_info(no_main)
