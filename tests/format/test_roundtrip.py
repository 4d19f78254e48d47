"""Every file type survives encode -> decode; ids and refs behave as Icechunk's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.errors import FormatError, InvalidRefNameError
from aicechunk.format import refs
from aicechunk.format.config import Tagged, decode_config_yaml, encode_config_yaml
from aicechunk.format.ids import (
    FIRST_SNAPSHOT_ID,
    ChunkId,
    InvalidIdError,
    ManifestId,
    NodeId,
    SnapshotId,
    decode_base32,
    encode_base32,
    encode_base32_many,
)
from aicechunk.format.manifest import ChunkRef, InlineRef, decode_manifest
from aicechunk.format.manifest_encode import encode_manifest
from aicechunk.format.snapshot import Snapshot, decode_snapshot, encode_snapshot
from aicechunk.format.transaction_log import (
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)
from tests.format.strategies import (
    chunk_refs,
    coords,
    manifest_ids,
    node_ids,
    snapshots,
    transaction_logs,
)


def test_first_snapshot_id() -> None:
    assert str(FIRST_SNAPSHOT_ID) == "1CECHNKREP0F1RSTCMT0"
    assert len(FIRST_SNAPSHOT_ID.bytes) == 12


@given(st.binary(min_size=12, max_size=12))
def test_12_byte_ids_roundtrip(raw: bytes) -> None:
    sid = SnapshotId(raw)
    text = str(sid)
    assert len(text) == 20 and text == text.upper()
    assert SnapshotId.from_str(text) == sid
    assert SnapshotId.from_str(text.lower()) == sid  # Crockford decoding is case-blind
    assert sid != ChunkId(raw)  # ids of different kinds never compare equal


@given(st.binary(min_size=8, max_size=8))
def test_node_ids_roundtrip(raw: bytes) -> None:
    nid = NodeId(raw)
    assert len(str(nid)) == 13
    assert NodeId.from_str(str(nid)) == nid


@given(st.binary(max_size=40))
def test_base32_matches_a_bitstream_reference(raw: bytes) -> None:
    bits = "".join(f"{b:08b}" for b in raw)
    bits += "0" * (-len(bits) % 5)
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    expected = "".join(alphabet[int(bits[i : i + 5], 2)] for i in range(0, len(bits), 5))
    assert encode_base32(raw) == expected
    assert decode_base32(expected, len(raw)) == raw


@given(st.sampled_from([8, 12]), st.lists(st.binary(min_size=12, max_size=12), max_size=40))
def test_base32_of_many_ids_at_once_is_that_of_each(size: int, raws: list[bytes]) -> None:
    values = [raw[:size] for raw in raws]
    assert encode_base32_many(b"".join(values), size) == [encode_base32(v) for v in values]
    for raw in raws:
        known = SnapshotId.known(raw, encode_base32(raw))
        assert known == SnapshotId(raw) and known.bytes == raw


@pytest.mark.parametrize(
    "text", ["", "1CECHNKREP0F1RSTCMT", "1CECHNKREP0F1RSTCMT0X", "1CECHNKREP0F1RSTCMTU", "1CE!"]
)
def test_bad_id_strings(text: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        SnapshotId.from_str(text)
    assert isinstance(info.value, FormatError) and isinstance(info.value, ValueError)


def test_ids_are_ordered_hashable_and_random() -> None:
    ids = {SnapshotId.random() for _ in range(100)}
    assert len(ids) == 100
    ordered = sorted(ids)
    assert [i.bytes for i in ordered] == sorted(i.bytes for i in ids)


@settings(max_examples=60, deadline=None)
@given(snapshots())
def test_snapshot_roundtrip(snap: Snapshot) -> None:
    decoded = decode_snapshot(encode_snapshot(snap), "snapshots/X")
    assert decoded == snap
    for node in snap.nodes:
        assert decoded.get_node(node.path) == node
    assert decoded.get_node("/definitely/not/there/\x00") is None


@settings(max_examples=60, deadline=None)
@given(
    manifest_ids,
    st.dictionaries(node_ids, st.dictionaries(coords, chunk_refs, max_size=8), max_size=4),
)
def test_manifest_roundtrip_and_lookup(
    mid: object, arrays: dict[NodeId, dict[tuple[int, ...], ChunkRef]]
) -> None:
    manifest = decode_manifest(encode_manifest(mid, {n: r.items() for n, r in arrays.items()}))  # type: ignore[arg-type]
    assert manifest.id == mid
    assert sorted(manifest.node_ids()) == sorted(n for n in arrays)
    for node_id, refs_ in arrays.items():
        assert list(manifest.iter_node(node_id)) == sorted(refs_.items())
        for c, ref in refs_.items():
            assert manifest.lookup(node_id, c) == ref
        assert manifest.lookup(node_id, (2**32 - 1,) * 5) is None
    assert manifest.num_chunk_refs == sum(len(r) for r in arrays.values())
    assert manifest.lookup(NodeId(b"\xff" * 8), ()) is None or NodeId(b"\xff" * 8) in arrays


@settings(max_examples=60, deadline=None)
@given(transaction_logs())
def test_transaction_log_roundtrip(log: TransactionLog) -> None:
    assert decode_transaction_log(encode_transaction_log(log)) == log


@given(st.binary(min_size=12, max_size=12))
def test_ref_roundtrip(raw: bytes) -> None:
    sid = str(SnapshotId(raw))
    data = refs.encode_ref(sid)
    assert data == b'{"snapshot":"' + sid.encode() + b'"}'
    assert refs.decode_ref(data) == sid


def test_ref_keys() -> None:
    assert refs.branch_key("main") == "refs/branch.main/ref.json"
    assert refs.tag_key("v1.0") == "refs/tag.v1.0/ref.json"
    assert refs.tag_tombstone_key("v1") == "refs/tag.v1/ref.json.deleted"
    assert refs.parse_ref_key("refs/branch.my-branch/ref.json") == ("branch", "my-branch")
    assert refs.parse_ref_key("refs/tag.it works!/ref.json") == ("tag", "it works!")
    assert refs.parse_ref_key("refs/tag.x/ref.json.deleted") == ("tag_tombstone", "x")
    assert refs.parse_ref_key("refs/branch.x/other") is None
    assert refs.parse_ref_key("snapshots/X") is None


@pytest.mark.parametrize("name", ["", "a/b", ".", "..", "bad\\", "nul\x00", "x" * 256, "\x7f"])
def test_bad_ref_names(name: str) -> None:
    with pytest.raises(InvalidRefNameError):
        refs.branch_key(name)


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[]", b'{"snapshot": 3}', b'{"snapshot":"SHORT"}', b"\xff\xfe"]
)
def test_bad_ref_files(data: bytes) -> None:
    with pytest.raises(FormatError) as info:
        refs.decode_ref(data, "refs/branch.main/ref.json")
    assert "refs/branch.main/ref.json" in str(info.value)


def test_config_yaml_roundtrip_keeps_tags() -> None:
    config = {
        "inline_chunk_threshold_bytes": 100,
        "virtual_chunk_containers": {
            "s3://b/": {
                "name": None,
                "url_prefix": "s3://b/",
                "store": Tagged("s3_compatible", {"region": "us-east-1", "allow_http": True}),
            },
            "file:///d/": {"url_prefix": "file:///d/", "store": Tagged("local_file_system", "/d")},
        },
    }
    text = encode_config_yaml(config)
    assert b"!s3_compatible" in text and b"!local_file_system" in text
    decoded = decode_config_yaml(text)
    assert decoded["virtual_chunk_containers"] == config["virtual_chunk_containers"]
    assert decoded["caching"] is None


@pytest.mark.parametrize(
    "data",
    [b"[1, 2]", b"inline_chunk_threshold_bytes: -1", b"caching: 3", b"a: [unclosed", b"\t- x"],
)
def test_bad_config_yaml(data: bytes) -> None:
    with pytest.raises(FormatError) as info:
        decode_config_yaml(data, "config.yaml")
    assert str(info.value).startswith("config.yaml:")


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 3).flatmap(
        lambda ndim: st.dictionaries(
            st.tuples(*[st.integers(0, 2**32 - 1)] * ndim), chunk_refs, max_size=200
        )
    ),
    st.integers(0, 20),
)
def test_bulk_encoder_mixed_kinds_one_array(
    refs: dict[tuple[int, ...], ChunkRef], same_size: int
) -> None:
    """Large arrays mixing every kind of ref (and inline chunks of one size) go through
    the bulk encoder; each record decodes to what was written."""
    refs = dict(refs)
    for i, key in enumerate(list(refs)[: len(refs) // 2]):
        refs[key] = InlineRef(bytes([i % 256]) * same_size)
    nid = NodeId(b"\x01" * 8)
    manifest = decode_manifest(encode_manifest(ManifestId(b"\x02" * 12), {nid: refs.items()}))
    assert list(manifest.iter_node(nid)) == sorted(refs.items())
    for c, ref in refs.items():
        assert manifest.lookup(nid, c) == ref


@pytest.mark.parametrize("count", [300, 70_000])  # indexed lookups, and bisected ones
def test_manifest_lookups_in_read_ahead_order_match_a_fresh_decode(count: int) -> None:
    """A read-ahead looks a chunk up before the read does; the manifest keeps the last
    decoded references, bounded, and a kept one is the reference a fresh decode gives."""
    import os

    from aicechunk.format.manifest import NativeRef

    node = NodeId(os.urandom(8))
    refs = {(i,): NativeRef(ChunkId(os.urandom(12)), i, 4096 + i) for i in range(count)}
    data = encode_manifest(ManifestId(os.urandom(12)), {node: list(refs.items())})
    manifest = decode_manifest(data)
    for i in range(0, min(count, 2_000)):
        if i + 32 < count:
            assert manifest.lookup(node, (i + 32,)) == refs[(i + 32,)]
        assert manifest.lookup(node, (i,)) == refs[(i,)]
        assert len(manifest._recent) <= 256
    assert manifest.lookup(node, (count,)) is None
    fresh = decode_manifest(data)
    assert [fresh.lookup(node, (i,)) for i in range(0, count, 97)] == [
        manifest.lookup(node, (i,)) for i in range(0, count, 97)
    ]
