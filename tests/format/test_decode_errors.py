"""Bad bytes raise FormatError naming the file and the problem, never anything else."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicechunk.errors import FormatError, InvalidMetadataError
from aicechunk.format.config import Tagged, decode_config_yaml, encode_config_yaml
from aicechunk.format.header import HEADER_SIZE, MAGIC, FileType, decode_file, encode_file
from aicechunk.format.ids import FIRST_SNAPSHOT_ID, ChunkId, ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import InlineRef, NativeRef, VirtualRef, decode_manifest
from aicechunk.format.manifest_encode import encode_manifest
from aicechunk.format.refs import decode_ref
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
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)
from aicechunk.store.metadata import parse_metadata
from tests.format.corruption import MALFORMED_PAYLOADS, check_header_problems, mutate

NID = NodeId(b"\x01" * 8)
MID = ManifestId(b"\x02" * 12)


def sample_snapshot() -> bytes:
    return encode_snapshot(
        Snapshot(
            SnapshotId.random(),
            FIRST_SNAPSHOT_ID,
            datetime.now(UTC),
            "message",
            {"k": [1, "two", {"three": 3.0}]},
            (
                NodeSnapshot(NodeId.random(), "/", b"{}", GroupNodeData()),
                NodeSnapshot(
                    NID,
                    "/a",
                    b'{"node_type":"array"}',
                    ArrayNodeData(
                        (DimensionShape(10, 2), DimensionShape(4, 4)),
                        ("x", None),
                        (ManifestRef(MID, ((0, 5), (0, 1))),),
                    ),
                ),
            ),
            (ManifestFileInfo(MID, 100, 3),),
        )
    )


def sample_manifest() -> bytes:
    return encode_manifest(
        MID,
        {
            NID: [
                ((0, 0), InlineRef(b"abc")),
                ((1, 0), NativeRef(ChunkId.random(), 0, 100)),
                ((2, 0), VirtualRef("s3://b/f.nc", 8, 16, "etag")),
            ]
        },
    )


def sample_log() -> bytes:
    return encode_transaction_log(
        TransactionLog(SnapshotId.random(), new_arrays=(NID,), updated_chunks={NID: ((0, 0),)})
    )


DECODERS: dict[str, tuple[Callable[[bytes, str], Any], Callable[[], bytes], FileType]] = {
    "snapshot": (decode_snapshot, sample_snapshot, FileType.SNAPSHOT),
    "manifest": (decode_manifest, sample_manifest, FileType.MANIFEST),
    "transaction log": (decode_transaction_log, sample_log, FileType.TRANSACTION_LOG),
}


def icechunk_files(tmp: Path) -> dict[str, list[bytes]]:
    """Real spec v1 files written by icechunk, grouped by kind."""
    import icechunk
    import numpy as np
    import zarr

    from tests.oracle import V1

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp)), **V1)
    s = repo.writable_session("main")
    root = zarr.group(store=s.store, attributes={"a": 1})
    arr = root.create_array("x", shape=(40,), chunks=(10,), dtype="f8")
    arr[:] = np.arange(40.0)
    s.commit("one", metadata={"m": 1})
    return {
        "snapshot": [p.read_bytes() for p in (tmp / "snapshots").iterdir()],
        "manifest": [p.read_bytes() for p in (tmp / "manifests").iterdir()],
        "transaction log": [p.read_bytes() for p in (tmp / "transactions").iterdir()],
    }


@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    files = icechunk_files(tmp_path_factory.mktemp("ic"))
    for kind, (_, make, _) in DECODERS.items():
        files[kind].append(make())
    return files


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_header_problems_are_named(kind: str) -> None:
    decode, make, _ = DECODERS[kind]
    check_header_problems(decode, make(), kind, unknown_version=9)


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_malformed_flatbuffers(kind: str) -> None:
    decode, _, file_type = DECODERS[kind]
    for payload in MALFORMED_PAYLOADS:
        with pytest.raises(FormatError, match="some/file: "):
            decode(encode_file(file_type, payload), "some/file")


def test_header_fields() -> None:
    data = encode_file(FileType.SNAPSHOT, b"payload")
    assert data.startswith(MAGIC) and data[12:22] == b"aicechunk-"
    assert decode_file(data, FileType.SNAPSHOT) == b"payload"
    raw = data[: HEADER_SIZE - 1] + b"\x00" + b"plain"
    assert decode_file(raw, FileType.SNAPSHOT) == b"plain"
    assert zstandard.ZstdDecompressor().decompress(data[HEADER_SIZE:]) == b"payload"


@pytest.mark.parametrize("kind", sorted(DECODERS))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_only_format_errors(
    kind: str, real_files: dict[str, list[bytes]], data: st.DataObject
) -> None:
    decode = DECODERS[kind][0]
    original = data.draw(st.sampled_from(real_files[kind]))
    file_type = DECODERS[kind][2]
    payload = decode_file(original, file_type)
    # mutate the decompressed flatbuffer (where structure lives) or the raw file
    target = data.draw(st.sampled_from(["payload", "file"]))
    blob = mutate(data, payload if target == "payload" else original)
    mutated = encode_file(file_type, bytes(blob)) if target == "payload" else bytes(blob)
    try:
        result = decode(mutated, "fuzzed")
        if kind == "manifest":  # lookups decode lazily: exercise them too
            for nid in result.node_ids():
                list(result.iter_node(nid))
                result.lookup(nid, (0,))
    except FormatError as err:
        assert str(err).startswith("fuzzed: ")


@pytest.mark.attack("fuzzed decoders and payloads")
def test_atheris_fuzzing_finds_nothing(tmp_path: Path) -> None:
    """A bounded coverage-guided run of tests/fuzz/fuzz_decoders.py (if atheris installed):
    the file decoders and fork payloads (from_bytes, then merge and listings)."""
    import subprocess
    import sys

    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    selector = {"snapshot": 0, "manifest": 1, "transaction log": 2}  # the script's first byte
    for kind, (_, make, file_type) in DECODERS.items():
        payload = decode_file(make(), file_type)
        (corpus / kind.replace(" ", "_")).write_bytes(bytes([selector[kind]]) + payload)
    config = {  # config.yaml: the script's selector 4
        "inline_chunk_threshold_bytes": 64,
        "caching": {"num_snapshot_nodes": 10, "num_chunk_refs": None},
        "compression": {"algorithm": None, "level": 3},
        "virtual_chunk_containers": {
            "s3://b/": {"name": None, "url_prefix": "s3://b/", "store": Tagged("s3", {})},
            "file:///d/": {"url_prefix": "file:///d/", "store": Tagged("local_file_system", "/d")},
        },
    }
    (corpus / "config").write_bytes(bytes([4]) + encode_config_yaml(config))
    script = Path(__file__).parent.parent / "fuzz" / "fuzz_decoders.py"
    done = subprocess.run(
        [sys.executable, str(script), "-runs=20000", "-max_len=4096", str(corpus)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (corpus / "fork_payload").exists()  # fork payloads were fuzzed from a real seed


# --- config.yaml, ref.json and zarr.json: malformed documents ----------------------------

DEEP = 100_000  # far past the interpreter's recursion limit


@pytest.mark.attack("malformed config and metadata")
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (  # a container without url_prefix (was KeyError)
            b"virtual_chunk_containers:\n  s3://b/:\n    store: !s3 {}\n",
            "url_prefix",
        ),
        (  # a store that is no tagged object store (was ValueError)
            b"virtual_chunk_containers:\n  s3://b/:\n    url_prefix: s3://b/\n    store: 5\n",
            ".store",
        ),
        (
            b"virtual_chunk_containers:\n  s3://b/:\n    url_prefix: s3://b/\n    store: !ftp x\n",
            ".store",
        ),
        (b"virtual_chunk_containers:\n  s3://b/: [1]\n", "expected a mapping"),
        (b"caching:\n  num_snapshot_nodes: abc\n", "num_snapshot_nodes"),  # was ValueError
        (b"caching:\n  num_chunk_refs: -5\n", "num_chunk_refs"),
        (b"caching:\n  num_bytes_chunks: true\n", "num_bytes_chunks"),
        (b"compression:\n  level: high\n", "compression.level"),
        (b"max_concurrent_requests: 1.5\n", "max_concurrent_requests"),
        (b"a: " + b"[" * DEEP + b"]" * DEEP + b"\n", "nested deeper"),  # was RecursionError
        (b"a: " + b"{b: " * 200 + b"1" + b"}" * 200 + b"\n", "nested deeper"),
        (b"- " * 5_000 + b"x\n", "nested deeper"),
    ],
)
def test_malformed_config_yaml(text: bytes, problem: str) -> None:
    with pytest.raises(FormatError, match=problem) as info:
        decode_config_yaml(text, "config.yaml")
    assert str(info.value).startswith("config.yaml: ")


def test_config_yaml_nesting_bound_leaves_real_configs_alone() -> None:
    nested = {"a": {"b": {"c": {"d": [[[1]]]}}}}
    assert decode_config_yaml(encode_config_yaml({"manifest": nested}))["manifest"] == nested


@pytest.mark.attack("malformed config and metadata")
@pytest.mark.parametrize(
    "data", [b"[" * DEEP + b"]" * DEEP, b'{"snapshot":' * DEEP + b"1" + b"}" * DEEP]
)
def test_deeply_nested_ref_json(data: bytes) -> None:
    with pytest.raises(FormatError, match="nested too deeply"):
        decode_ref(data, "refs/branch.main/ref.json")


@pytest.mark.attack("malformed config and metadata")
@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"[" * DEEP + b"]" * DEEP, "nested too deeply"),
        (b'{"attributes":' * DEEP + b"{}" + b"}" * DEEP, "nested too deeply"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"array"', "expected a JSON object, got str"),
    ],
)
def test_malformed_zarr_json(data: bytes, problem: str) -> None:
    with pytest.raises(InvalidMetadataError, match=problem):
        parse_metadata("/a", data)


@pytest.mark.attack("malformed config and metadata")
@pytest.mark.parametrize(
    ("data", "problem"),
    [
        # two readers, two branches: Python's json keeps the last, icechunk refuses
        (b'{"snapshot":"1CECHNKREP0F1RSTCMT0","snapshot":"AAAAAAAAAAAAAAAAAAA0"}', "twice"),
        (b'{"x":{"a":1,"a":2},"snapshot":"1CECHNKREP0F1RSTCMT0"}', "twice"),
        (b'\xef\xbb\xbf{"snapshot":"1CECHNKREP0F1RSTCMT0"}', "byte order mark"),
        (b'{"snapshot":"1CECHNKREP0F1RSTCMT0","x":NaN}', "NaN is not JSON"),
        (b'{"snapshot":"1CECHNKREP0F1RSTCMT0","x":Infinity}', "Infinity is not JSON"),
        (b'{"snapshot":"1CECHNKREP0F1RSTCMT0","x":-Infinity}', "-Infinity is not JSON"),
        (b'{"snapshot":"AAAAAAAAAAAAAAAAAAAA"}', "no snapshot id.*last character"),
        (b'{"snapshot":"1CECHNKREP0F1RSTCMT!"}', "no snapshot id.*Crockford"),
    ],
)
def test_ref_json_is_read_as_strictly_as_icechunk_reads_it(data: bytes, problem: str) -> None:
    with pytest.raises(FormatError, match=problem) as info:
        decode_ref(data, "refs/branch.main/ref.json")
    assert info.value.file == "refs/branch.main/ref.json"
    assert str(info.value).startswith("refs/branch.main/ref.json: ")


@pytest.mark.parametrize(
    "data",
    [
        b'{"snapshot":"1cechnkrep0f1rstcmt0"}',  # Crockford base32: case and aliases
        b'{"snapshot":"ICECHNKREPOF1RSTCMTO"}',
        b' {"snapshot":"\\u0031CECHNKREP0F1RSTCMT0","other":1e999}\n',
    ],
)
def test_ref_json_that_icechunk_accepts(data: bytes) -> None:
    assert decode_ref(data, "refs/branch.main/ref.json") == "1CECHNKREP0F1RSTCMT0"


@pytest.mark.attack("malformed config and metadata")
def test_zarr_json_with_a_key_given_twice_is_refused() -> None:
    from aicechunk.errors import InvalidMetadataError
    from aicechunk.store.metadata import metadata_document

    doc = b'{"zarr_format":3,"node_type":"group","node_type":"array"}'
    with pytest.raises(InvalidMetadataError, match="'node_type' is given twice"):
        metadata_document("/g", doc)
    # zarr writes NaN and Infinity into zarr.json: those stay readable there
    nan = b'{"zarr_format":3,"node_type":"group","attributes":{"x":NaN,"y":-Infinity}}'
    assert metadata_document("/g", nan)["attributes"]["y"] == float("-inf")
