"""Decode every file of a rich spec v1 repository written by icechunk (2.3.0 on the
baseline, 1.1.21 on Python 3.11) and compare with what icechunk's own API reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import zarr

from aicechunk.format import refs
from aicechunk.format.config import Tagged, decode_config_yaml
from aicechunk.format.ids import NodeId, SnapshotId
from aicechunk.format.manifest import InlineRef, NativeRef, VirtualRef, decode_manifest
from aicechunk.format.snapshot import ArrayNodeData, decode_snapshot
from aicechunk.format.transaction_log import decode_transaction_log
from tests.oracle import V1


def write_rich_repository(root: Path) -> dict[str, Any]:
    data_dir = root / "external"
    data_dir.mkdir(parents=True)
    (data_dir / "blob.bin").write_bytes(np.arange(64, dtype="<i4").tobytes())
    config = icechunk.RepositoryConfig.default()
    config.inline_chunk_threshold_bytes = 64
    config.set_virtual_chunk_container(
        icechunk.VirtualChunkContainer(
            f"file://{data_dir}/", icechunk.local_filesystem_store(str(data_dir))
        )
    )
    config.manifest = icechunk.ManifestConfig(
        splitting=icechunk.ManifestSplittingConfig.from_dict(
            {
                icechunk.ManifestSplitCondition.name_matches("split.*"): {
                    icechunk.ManifestSplitDimCondition.Any(): 2
                }
            }
        )
    )
    repo = icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(root / "repo")),
        config=config,
        authorize_virtual_chunk_access=icechunk.containers_credentials(
            {f"file://{data_dir}/": None}
        ),
        **V1,
    )
    s = repo.writable_session("main")
    g = zarr.group(store=s.store, attributes={"title": "rich"})
    g.create_group("a/b", attributes={"x": [1, 2]})
    native = g.create_array(
        "a/native",
        shape=(6, 8),
        chunks=(3, 4),
        dtype="f8",
        dimension_names=("y", "x"),
        compressors=None,
    )
    native[:] = np.arange(48.0).reshape(6, 8)
    inline = g.create_array("inline", shape=(4,), chunks=(2,), dtype="u1", compressors=None)
    inline[:] = [1, 2, 3, 4]
    split = g.create_array(
        "split_me", shape=(10,), chunks=(1,), dtype="i2", compressors=None, fill_value=-1
    )
    split[:] = np.arange(10, dtype="i2") * 100
    virt = g.create_array("virtual", shape=(16,), chunks=(8,), dtype="<i4", compressors=None)
    first = s.commit("arrays", metadata={"author": "ic", "n": 7, "f": 0.5, "l": [None, True]})
    s = repo.writable_session("main")
    s.store.set_virtual_ref("virtual/c/0", f"file://{data_dir}/blob.bin", offset=0, length=32)
    s.store.set_virtual_ref(
        "virtual/c/1", f"file://{data_dir}/blob.bin", offset=32, length=32, checksum="an-etag"
    )
    second = s.commit("virtual refs")
    repo.create_branch("dev", first)
    repo.create_tag("v1", first)
    repo.create_tag("deleted", second)
    repo.delete_tag("deleted")
    del virt
    return {
        "repo": repo,
        "first": first,
        "second": second,
        "ancestry": list(repo.ancestry(branch="main")),
        "data_dir": data_dir,
    }


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_rich_repository(tmp_path_factory.mktemp("rich"))


def test_refs_match(rich: dict[str, Any]) -> None:
    root = Path(rich["repo"].storage.__repr__() and rich["data_dir"].parent / "repo")
    branches = {}
    tags = {}
    tombstones = set()
    for path in (root / "refs").rglob("*"):
        if path.is_dir():
            continue
        key = path.relative_to(root).as_posix()
        kind, name = refs.parse_ref_key(key)  # type: ignore[misc]
        if kind == "branch":
            branches[name] = refs.decode_ref(path.read_bytes(), key)
        elif kind == "tag":
            tags[name] = refs.decode_ref(path.read_bytes(), key)
        else:
            tombstones.add(name)
    repo = rich["repo"]
    assert branches == {b: repo.lookup_branch(b) for b in repo.list_branches()}
    assert set(tags) - tombstones == set(repo.list_tags())
    assert tombstones == {"deleted"}
    assert tags["v1"] == repo.lookup_tag("v1") == rich["first"]


def test_snapshots_match_ancestry(rich: dict[str, Any]) -> None:
    root = rich["data_dir"].parent / "repo"
    decoded = {}
    for path in (root / "snapshots").iterdir():
        snap = decode_snapshot(path.read_bytes(), f"snapshots/{path.name}")
        assert str(snap.id) == path.name
        decoded[path.name] = snap
    for info in rich["ancestry"]:
        snap = decoded[info.id]
        assert snap.message == info.message
        assert snap.metadata == info.metadata
        assert (str(snap.parent_id) if snap.parent_id else None) == info.parent_id
        assert abs((snap.flushed_at - info.written_at.astimezone(UTC)).total_seconds()) < 1e-3
    tip = decoded[rich["second"]]
    paths = [n.path for n in tip.nodes]
    assert paths == sorted(paths)
    assert set(paths) == {"/", "/a", "/a/b", "/a/native", "/inline", "/split_me", "/virtual"}
    native = tip.get_node("/a/native")
    assert native is not None and isinstance(native.node_data, ArrayNodeData)
    assert native.node_data.dimension_names == ("y", "x")
    assert [(d.array_length, d.chunk_length) for d in native.node_data.shape] == [(6, 3), (8, 4)]
    assert json.loads(native.user_data)["shape"] == [6, 8]
    group = tip.get_node("/a/b")
    assert group is not None and json.loads(group.user_data)["attributes"] == {"x": [1, 2]}
    split = tip.get_node("/split_me")
    assert split is not None and isinstance(split.node_data, ArrayNodeData)
    assert len(split.node_data.manifests) == 5  # 10 chunks, 2 per manifest
    assert sorted(m.extents for m in split.node_data.manifests) == [
        ((i, i + 2),) for i in range(0, 10, 2)
    ]
    total = sum(f.num_chunk_refs for f in tip.manifest_files)
    assert total == 4 + 2 + 10 + 2


def test_manifests_hold_every_kind_of_ref(rich: dict[str, Any]) -> None:
    root = rich["data_dir"].parent / "repo"
    kinds: dict[str, int] = {}
    virtual = []
    for path in (root / "manifests").iterdir():
        manifest = decode_manifest(path.read_bytes(), f"manifests/{path.name}")
        assert str(manifest.id) == path.name
        for _nid, _coords, ref in manifest:
            kinds[type(ref).__name__] = kinds.get(type(ref).__name__, 0) + 1
            if isinstance(ref, VirtualRef):
                virtual.append(ref)
            if isinstance(ref, NativeRef):
                assert (root / "chunks" / str(ref.chunk_id)).exists()
    assert set(kinds) == {"NativeRef", "InlineRef", "VirtualRef"}
    assert sorted((v.offset, v.length, v.etag) for v in virtual) == [
        (0, 32, None),
        (32, 32, "an-etag"),
    ]
    assert all(v.location.endswith("/blob.bin") for v in virtual)
    assert InlineRef and NodeId and SnapshotId  # the types the decoder hands out


def test_transaction_logs(rich: dict[str, Any]) -> None:
    root = rich["data_dir"].parent / "repo"
    first = decode_transaction_log(
        (root / "transactions" / rich["first"]).read_bytes(), "transactions/first"
    )
    assert str(first.id) == rich["first"]
    assert len(first.new_arrays) == 4 and len(first.new_groups) == 3
    second = decode_transaction_log(
        (root / "transactions" / rich["second"]).read_bytes(), "transactions/second"
    )
    assert list(second.updated_chunks.values()) == [((0,), (1,))]


def test_config_yaml(rich: dict[str, Any]) -> None:
    root = rich["data_dir"].parent / "repo"
    config = decode_config_yaml((root / "config.yaml").read_bytes())
    assert (
        config["inline_chunk_threshold_bytes"] == rich["repo"].config.inline_chunk_threshold_bytes
    )
    containers = config["virtual_chunk_containers"]
    (prefix,) = containers
    assert prefix == f"file://{rich['data_dir']}/"
    store = containers[prefix]["store"]
    assert store == Tagged("local_file_system", str(rich["data_dir"]))
    assert config["manifest"]["splitting"]["split_sizes"][0][0] == Tagged(
        "name_matches", {"regex": "split.*"}
    ) or "split" in json.dumps(config["manifest"], default=str)
    assert datetime
