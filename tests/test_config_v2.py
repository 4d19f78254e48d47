"""The configuration of a spec v2 repository, in its repo info file: stored on create,
read on open (the ``config`` argument set on top), changed by ``save_config`` with a
``ConfigChanged`` entry in the operations log, and the same bytes both ways with
icechunk 2.3.0 (in a Python 3.12 subprocess; those tests skip without one)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.format import repo_updates as ru
from aicechunk.format.config import Tagged
from aicechunk.format.config_flex import decode_config_flex, encode_config_flex
from aicechunk.format.flexbuf import encode_flex
from aicechunk.format.repo_info import REPO_INFO_KEY, decode_repo_info, encode_repo_info
from tests.format.test_icechunk2_interop import PYTHON

needs_icechunk = pytest.mark.skipif(PYTHON is None, reason="no Python with icechunk 2.3.0")

# icechunk 2.3.0: `create ROOT VERSION` makes a repository with rich()'s configuration
# (which icechunk stores with its storage defaults merged in); `save ROOT N` opens one with
# inline_chunk_threshold_bytes=N set on top and saves it; `fetch ROOT OTHER` compares
# the persisted configurations of two repositories. Each prints what it fetches of the
# persisted configuration, and the ops log (spec v2).
_SCRIPT = """
import json, sys, icechunk as ic

def rich():
    cfg = ic.RepositoryConfig.default()
    cfg.inline_chunk_threshold_bytes = 99
    cfg.get_partial_values_concurrency = 7
    cfg.max_concurrent_requests = 11
    cfg.num_updates_per_repo_info_file = 500
    cfg.compression = ic.CompressionConfig(level=5, algorithm=ic.CompressionAlgorithm.Zstd)
    cfg.caching = ic.CachingConfig(num_snapshot_nodes=10, num_chunk_refs=20,
        num_transaction_changes=30, num_bytes_attributes=40, num_bytes_chunks=50)
    cfg.storage = ic.StorageSettings(
        concurrency=ic.StorageConcurrencySettings(
            max_concurrent_requests_for_object=3, ideal_concurrent_request_size=1000),
        retries=ic.StorageRetriesSettings(max_tries=4, initial_backoff_ms=5),
        unsafe_use_conditional_update=False, unsafe_use_metadata=False)
    dim = ic.ManifestSplitDimCondition
    split = ic.ManifestSplittingConfig.from_dict({
        ic.ManifestSplitCondition.AnyArray(): {dim.Axis(0): 4, dim.DimensionName("time"): 12,
                                               dim.DimensionName("0"): 3, dim.Any(): 1},
        ic.ManifestSplitCondition.or_conditions([
            ic.ManifestSplitCondition.name_matches("temp.*"),
            ic.ManifestSplitCondition.path_matches("/a/.*")]): {dim.Axis(1): 2}})
    cond = ic.ManifestPreloadCondition
    preload = ic.ManifestPreloadConfig(max_total_refs=1000, max_arrays_to_scan=9,
        preload_if=cond.or_conditions([cond.true(), cond.num_refs(1, 100),
            cond.num_refs(None, 7), cond.name_matches("x"), cond.path_matches("/a"),
            cond.and_conditions([cond.false()])]))
    vcl = ic.ManifestVirtualChunkLocationCompressionConfig(
        5, dictionary_max_training_samples=6, dictionary_max_size_bytes=700,
        compression_level=3)
    cfg.manifest = ic.ManifestConfig(splitting=split, preload=preload,
        virtual_chunk_location_compression=vcl,
        max_concurrent_manifest_fetches_during_commit=8)
    for prefix, store in (
        ("s3://bkt/p/", ic.s3_store(region="us-east-1", endpoint_url="http://h:9000")),
        ("gcs://bkt/p/", ic.gcs_store()),
        ("https://h/p/", ic.http_store()),
        ("file:///tmp/p/", ic.local_filesystem_store("/tmp/p")),
    ):
        cfg.set_virtual_chunk_container(ic.VirtualChunkContainer(prefix, store))
    return cfg

command, root = sys.argv[1], sys.argv[2]
storage = ic.local_filesystem_storage(root)
if command == "create":
    ic.Repository.create(storage, config=rich(), spec_version=int(sys.argv[3]))
elif command == "save":
    given = ic.RepositoryConfig(inline_chunk_threshold_bytes=int(sys.argv[3]))
    ic.Repository.open(storage, config=given).save_config()
cfg = ic.Repository.fetch_config(storage)
other = None
if command == "fetch" and len(sys.argv) > 3:
    other = ic.Repository.fetch_config(ic.local_filesystem_storage(sys.argv[3]))
repo = ic.Repository.open(storage)
vcl = cfg.manifest and cfg.manifest.virtual_chunk_location_compression
print(json.dumps({
    "equals_other": other is not None and cfg == other,
    "inline": cfg.inline_chunk_threshold_bytes,
    "num_chunk_refs": cfg.caching and cfg.caching.num_chunk_refs,
    "containers": sorted(cfg.virtual_chunk_containers or {}),
    "compression_level": vcl and vcl.compression_level,
    "ops": [type(u.kind).__name__ for u in repo.ops_log()] if int(repo.spec_version) > 1 else [],
}))
"""


def _icechunk(*args: object) -> dict[str, Any]:
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, "-c", _SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def _custom() -> aic.RepositoryConfig:
    config = aic.RepositoryConfig()
    config.inline_chunk_threshold_bytes = 12
    config.caching = aic.CachingConfig(num_chunk_refs=1234)
    config.set_virtual_chunk_container(
        aic.VirtualChunkContainer("s3://bucket/data/", aic.s3_store(region="eu-west-1"))
    )
    return config


async def _info(driver: MemoryDriver) -> Any:
    return decode_repo_info(await driver.get(REPO_INFO_KEY))


# --- aicechunk on its own ------------------------------------------------------------------


async def test_create_stores_the_config_and_open_reads_it() -> None:
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    created = await aic.Repository.create(storage, _custom(), spec_version=2)
    assert created.config == _custom()
    assert not await driver.exists("config.yaml")  # spec v2 has none
    stored = (await _info(driver)).config
    assert stored is not None and aic.RepositoryConfig.from_flex(stored) == _custom()
    assert await aic.Repository.fetch_config(storage) == _custom()
    opened = await aic.Repository.open(storage)
    assert opened.config == _custom() and opened.config.inline_chunk_threshold_bytes == 12
    assert list(opened.config.virtual_chunk_containers) == ["s3://bucket/data/"]
    # the config argument is set on top of the stored one, which stays as it was
    on_top = aic.RepositoryConfig()
    on_top.inline_chunk_threshold_bytes = 40
    merged = (await aic.Repository.open(storage, on_top)).config
    assert merged.inline_chunk_threshold_bytes == 40 and merged.caching == _custom().caching
    assert await aic.Repository.fetch_config(storage) == _custom()


async def test_the_default_config_is_not_stored() -> None:
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    await aic.Repository.create(storage, aic.RepositoryConfig(), spec_version=2)
    assert (await _info(driver)).config is None
    assert await aic.Repository.fetch_config(storage) is None
    assert (await aic.Repository.open(storage)).config == aic.RepositoryConfig.default()


async def test_save_config_updates_the_repo_info_file_and_logs_it() -> None:
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    repo = await aic.Repository.create(storage, spec_version=2)
    changed = repo.reopen(_custom())
    await changed.save_config()
    info = await _info(driver)
    assert [type(u.kind) for u in info.latest_updates] == [ru.ConfigChanged, ru.RepoInitialized]
    assert info.latest_updates[1].backup_path is not None  # the old file was copied first
    assert await aic.Repository.fetch_config(storage) == _custom()
    assert (await aic.Repository.open(storage)).config == _custom()
    # branches and history are untouched; saving again logs again, as icechunk does
    assert await repo.list_branches() == {"main"}
    await changed.save_config()
    assert len((await _info(driver)).latest_updates) == 3


async def test_fetch_config_on_both_versions_and_without_a_repository() -> None:
    for version in (1, 2):
        storage = aic.in_memory_storage()
        assert await aic.Repository.fetch_config(storage) is None
        await aic.Repository.create(storage, _custom(), spec_version=version)
        assert await aic.Repository.fetch_config(storage) == _custom()


async def test_a_config_yaml_beside_a_v2_repository_is_ignored() -> None:
    """As in icechunk: a spec v2 repository's configuration is in its repo info file,
    whatever an unfinished upgrade left in ``config.yaml``."""
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    await aic.Repository.create(storage, _custom(), spec_version=2)
    await driver.put("config.yaml", b"inline_chunk_threshold_bytes: 77\n")
    assert (await aic.Repository.open(storage)).config == _custom()
    await driver.put("config.yaml", b"{not yaml")
    assert (await aic.Repository.open(storage)).config == _custom()


async def test_save_config_racing_other_changes_loses_none() -> None:

    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    repo = await aic.Repository.create(storage, spec_version=2)
    main = await repo.lookup_branch("main")
    await asyncio.gather(
        repo.reopen(_custom()).save_config(), *(repo.create_branch(f"b{i}", main) for i in range(5))
    )
    assert await aic.Repository.fetch_config(storage) == _custom()
    assert await repo.list_branches() == {"main", *(f"b{i}" for i in range(5))}


def test_flex_round_trip_keeps_tagged_variants() -> None:
    doc = {
        "manifest": {
            "preload": {
                "preload_if": Tagged(
                    "or",
                    [
                        "true",
                        Tagged("num_refs", {"from": "Unbounded", "to": Tagged("Excluded", 5)}),
                        Tagged("and", [Tagged("name_matches", {"regex": "x"})]),
                    ],
                )
            },
            "splitting": {
                "split_sizes": [
                    [
                        Tagged("or", ["any_array", Tagged("path_matches", {"regex": ".*"})]),
                        [
                            {"condition": Tagged("Axis", 0), "num_chunks": 2},
                            {"condition": Tagged("DimensionName", "t"), "num_chunks": 3},
                            {"condition": "Any", "num_chunks": 4},
                        ],
                    ]
                ]
            },
        },
        "virtual_chunk_containers": {
            "mem://": {"url_prefix": "mem://", "store": Tagged("in_memory", None), "name": None},
            "s3://b/": {"url_prefix": "s3://b/", "store": Tagged("s3", {"region": "x"})},
        },
    }
    back = decode_config_flex(encode_config_flex(doc))
    assert {k: v for k, v in back.items() if v is not None} == doc


# --- malformed configurations --------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (b"\x00\x01", "malformed FlexBuffer"),
        (encode_flex([1, 2]), "top level"),
        (encode_flex({"caching": 5}), "caching"),
        (encode_flex({"inline_chunk_threshold_bytes": -1}), "inline_chunk_threshold_bytes"),
        (encode_flex({"virtual_chunk_containers": {"p": {"url_prefix": "s3://p/"}}}), "store"),
        (encode_flex({"virtual_chunk_containers": {"p": {"store": {"a": 1, "b": 2}}}}), "variant"),
        (encode_flex({"manifest": {"splitting": {"split_sizes": [["any_array"]]}}}), "split_sizes"),
        (encode_flex({"manifest": {"preload": {"preload_if": {"or": 3}}}}), "preload_if"),
    ],
)
async def test_bad_config_bytes_are_a_format_error_naming_the_file(
    config: bytes, problem: str
) -> None:
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    await aic.Repository.create(storage, spec_version=2)
    info = await _info(driver)
    await driver.put(REPO_INFO_KEY, encode_repo_info(replace(info, config=config)))
    for call in (aic.Repository.open(storage), aic.Repository.fetch_config(storage)):
        with pytest.raises(aic.FormatError, match=problem) as caught:
            await call
        assert caught.value.file == "repo" and "configuration" in caught.value.problem


@pytest.mark.parametrize("bad", ["lots", -1, 4 << 30, True])
async def test_a_bad_persisted_maximum_names_the_repo_info_file(bad: object) -> None:
    driver = MemoryDriver()
    storage = aic.storage_from_driver(driver)
    await aic.Repository.create(storage, spec_version=2)
    info = await _info(driver)
    config = encode_config_flex({"aicechunk_max_decompressed_bytes": bad})
    await driver.put(REPO_INFO_KEY, encode_repo_info(replace(info, config=config)))
    with pytest.raises(aic.FormatError, match=r"configuration: .*bytes") as caught:
        await aic.Repository.open(storage)
    assert caught.value.file == "repo"


async def test_an_unstorable_config_is_refused_before_anything_is_written() -> None:
    driver = MemoryDriver()
    config = aic.RepositoryConfig({"inline_chunk_threshold_bytes": 3, "extra": {1, 2}})
    with pytest.raises(aic.UnrepresentableValueError):
        await aic.Repository.create(aic.storage_from_driver(driver), config, spec_version=2)
    assert [info.key async for info in driver.list("")] == []


# --- both ways with icechunk 2.3.0 -----------------------------------------------------------


@needs_icechunk
async def test_we_read_every_field_icechunk_writes(tmp_path: Path) -> None:
    """icechunk writes the same configuration into a spec v1 repository (config.yaml,
    which the v1 interop tests already cover) and a spec v2 one (a FlexBuffer): we read
    the two identically, and our encoding of it decodes to the same again."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    _icechunk("create", v1, 1)
    _icechunk("create", v2, 2)
    assert _icechunk("fetch", v2, v1)["equals_other"]  # icechunk reads the two alike
    from_yaml = await aic.Repository.fetch_config(aic.local_filesystem_storage(v1))
    from_flex = await aic.Repository.fetch_config(aic.local_filesystem_storage(v2))
    assert from_yaml is not None and from_flex is not None
    assert from_flex.to_dict() == from_yaml.to_dict()
    assert from_flex.inline_chunk_threshold_bytes == 99
    assert from_flex.caching == aic.CachingConfig(10, 20, 30, 40, 50)
    assert sorted(from_flex.virtual_chunk_containers) == sorted(
        ["s3://bkt/p/", "gcs://bkt/p/", "https://h/p/", "file:///tmp/p/"]
    )
    preload = from_flex.to_dict()["manifest"]["preload"]["preload_if"]
    assert isinstance(preload, Tagged) and preload.tag == "or"
    assert aic.RepositoryConfig.from_flex(from_flex.to_flex()) == from_flex
    repo = await aic.Repository.open(aic.local_filesystem_storage(v2))
    assert repo.config == from_flex and repo.spec_version == 2


@needs_icechunk
async def test_icechunk_reads_every_field_we_write(tmp_path: Path) -> None:
    """A configuration icechunk wrote, loaded by us and stored by us in a new spec v2
    repository (on create, and again by save_config), is icechunk's to the last field."""
    source = tmp_path / "source"
    _icechunk("create", source, 2)
    loaded = await aic.Repository.fetch_config(aic.local_filesystem_storage(source))
    assert loaded is not None
    ours = tmp_path / "ours"
    await aic.Repository.create(aic.local_filesystem_storage(ours), loaded, spec_version=2)
    found = _icechunk("fetch", ours, source)
    assert found["equals_other"] and found["ops"] == ["RepoInitialized"]
    saved = tmp_path / "saved"
    repo = await aic.Repository.create(aic.local_filesystem_storage(saved), spec_version=2)
    await repo.reopen(loaded).save_config()
    found = _icechunk("fetch", saved, source)
    assert found["equals_other"]
    assert found["ops"] == ["ConfigChanged", "RepoInitialized"]


@needs_icechunk
async def test_a_config_built_here_reads_in_icechunk(tmp_path: Path) -> None:
    """Settings set through our API (an aicechunk-only key among them, which icechunk
    skips; a non-negative i32 we write unsigned, which icechunk reads)."""
    config = _custom()
    config.max_decompressed_bytes = 1 << 20
    data = config.to_dict()
    data["manifest"] = {"virtual_chunk_location_compression": {"compression_level": 3}}
    root = tmp_path / "r"
    await aic.Repository.create(
        aic.local_filesystem_storage(root), aic.RepositoryConfig(data), spec_version=2
    )
    found = _icechunk("fetch", root)
    assert found["inline"] == 12 and found["num_chunk_refs"] == 1234
    assert found["containers"] == ["s3://bucket/data/"]
    assert found["compression_level"] == 3
    reread = await aic.Repository.fetch_config(aic.local_filesystem_storage(root))
    assert reread is not None and reread.max_decompressed_bytes == 1 << 20


@needs_icechunk
async def test_icechunk_save_config_on_our_repository_reads_here(tmp_path: Path) -> None:
    root = tmp_path / "r"
    storage = aic.local_filesystem_storage(root)
    await aic.Repository.create(storage, _custom(), spec_version=2)
    found = _icechunk("save", root, 77)
    assert found["inline"] == 77 and found["num_chunk_refs"] == 1234
    assert found["ops"] == ["ConfigChanged", "RepoInitialized"]
    repo = await aic.Repository.open(storage)
    assert repo.config.inline_chunk_threshold_bytes == 77
    assert repo.config.caching == aic.CachingConfig(num_chunk_refs=1234)
    assert [type(u.kind) async for u in repo.ops_log()] == [ru.ConfigChanged, ru.RepoInitialized]
