"""config.yaml between the two libraries (spec v1 repositories): every setting icechunk
writes survives our save, both ways, and what icechunk tolerates in a config we tolerate
too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import icechunk as ic
import pytest

import aicechunk as aic
from tests.oracle import V1


def rich_config() -> Any:
    """An icechunk config using every kind of setting, tagged values included."""
    cfg = ic.RepositoryConfig.default()
    cfg.inline_chunk_threshold_bytes = 99
    cfg.get_partial_values_concurrency = 7
    cfg.compression = ic.CompressionConfig(level=5, algorithm=ic.CompressionAlgorithm.Zstd)
    cfg.caching = ic.CachingConfig(
        num_snapshot_nodes=10,
        num_chunk_refs=20,
        num_transaction_changes=30,
        num_bytes_attributes=40,
        num_bytes_chunks=50,
    )
    cfg.storage = ic.StorageSettings(
        concurrency=ic.StorageConcurrencySettings(
            max_concurrent_requests_for_object=3, ideal_concurrent_request_size=1000
        ),
        unsafe_use_conditional_update=False,
        unsafe_use_conditional_create=False,
        unsafe_use_metadata=False,
    )
    split = ic.ManifestSplittingConfig.from_dict(
        {
            ic.ManifestSplitCondition.AnyArray(): {
                ic.ManifestSplitDimCondition.Axis(0): 4,
                ic.ManifestSplitDimCondition.DimensionName("time"): 12,
                ic.ManifestSplitDimCondition.DimensionName("0"): 3,  # a name that looks numeric
                ic.ManifestSplitDimCondition.Any(): 1,
            },
            ic.ManifestSplitCondition.name_matches("temp.*"): {
                ic.ManifestSplitDimCondition.Axis(1): 2
            },
        }
    )
    cond = ic.ManifestPreloadCondition
    preload = ic.ManifestPreloadConfig(
        max_total_refs=1000,
        preload_if=cond.or_conditions(
            [
                cond.true(),
                cond.num_refs(1, 100),
                cond.name_matches("x"),
                cond.path_matches("/a"),
                cond.and_conditions([cond.false()]),
            ]
        ),
    )
    cfg.manifest = ic.ManifestConfig(splitting=split, preload=preload)
    for prefix, store in (
        ("s3://bkt/p/", ic.s3_store(region="us-east-1")),
        ("gcs://bkt/p/", ic.gcs_store()),
        ("https://h/p/", ic.http_store()),
        ("file:///tmp/p/", ic.local_filesystem_store("/tmp/p")),
    ):
        cfg.set_virtual_chunk_container(ic.VirtualChunkContainer(prefix, store))
    return cfg


async def test_icechunk_config_survives_our_save(tmp_path: Path) -> None:
    storage_path = str(tmp_path / "r")
    await asyncio.to_thread(
        ic.Repository.create, ic.local_filesystem_storage(storage_path), config=rich_config(), **V1
    )
    written_by_icechunk = (tmp_path / "r" / "config.yaml").read_bytes()
    # what icechunk reads of its own file (icechunk 2.x fills in defaults, such as local
    # storage's retries, so this is not rich_config() itself)
    before = await asyncio.to_thread(ic.Repository.open, ic.local_filesystem_storage(storage_path))

    repo = await aic.Repository.open(aic.local_filesystem_storage(storage_path))
    await repo.save_config()
    assert (tmp_path / "r" / "config.yaml").read_bytes() == written_by_icechunk

    reopened = await asyncio.to_thread(
        ic.Repository.open, ic.local_filesystem_storage(storage_path)
    )
    assert reopened.config == before.config


async def test_a_config_loaded_from_icechunk_creates_a_repository_icechunk_opens(
    tmp_path: Path,
) -> None:
    source = str(tmp_path / "source")
    await asyncio.to_thread(
        ic.Repository.create, ic.local_filesystem_storage(source), config=rich_config(), **V1
    )
    loaded = await aic.Repository.fetch_config(aic.local_filesystem_storage(source))
    assert loaded is not None
    await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path / "ours"), config=loaded, spec_version=1
    )

    theirs, opened = await asyncio.gather(
        asyncio.to_thread(ic.Repository.open, ic.local_filesystem_storage(source)),
        asyncio.to_thread(ic.Repository.open, ic.local_filesystem_storage(str(tmp_path / "ours"))),
    )
    assert opened.config == theirs.config


# icechunk 1.x's own compatibility repository declares its old default containers, whose
# prefixes are not URLs; icechunk ignores them with a warning
LEGACY_CONTAINERS = b"""inline_chunk_threshold_bytes: 12
virtual_chunk_containers:
  s3:
    name: s3
    url_prefix: s3://
    store: !s3_compatible
      region: us-east-1
      endpoint_url: http://localhost:9000
      anonymous: false
      allow_http: true
  az:
    name: az
    url_prefix: az
    store: !azure {}
  tigris:
    name: tigris
    url_prefix: tigris
    store: !tigris
      region: null
      endpoint_url: https://fly.storage.tigris.dev
      anonymous: false
      allow_http: false
  gcs:
    name: gcs
    url_prefix: gcs
    store: !gcs {}
  file:
    name: file
    url_prefix: file
    store: !local_file_system ''
  legacy:
    url_prefix: s3://bucket/no-slash
    store: !s3 {region: us-east-1, anonymous: false, allow_http: false}
  noscheme:
    url_prefix: bucket/x/
    store: !s3 {region: us-east-1, anonymous: false, allow_http: false}
  azure:
    url_prefix: az://container/path/
    store: !azure {account: acc}
"""


async def test_containers_icechunk_ignores_are_ignored_with_a_warning(tmp_path: Path) -> None:
    storage = aic.local_filesystem_storage(tmp_path)
    await aic.Repository.create(storage, spec_version=1)  # config.yaml, icechunk 1.x
    (tmp_path / "config.yaml").write_bytes(LEGACY_CONTAINERS)
    repo = await aic.Repository.open(storage)
    with pytest.warns(aic.AicechunkWarning) as caught:
        containers = repo.config.virtual_chunk_containers
    ignored = sorted(str(w.message).split("'")[1] for w in caught)
    assert ignored == ["az", "file", "gcs", "noscheme", "s3", "tigris"]
    # the prefix without its "/" is completed, as icechunk completes it; azure is kept
    assert sorted(containers) == ["az://container/path/", "s3://bucket/no-slash/"]

    session = await repo.writable_session("main")  # sessions work, arrays read
    import zarr

    zarr.create_array(session.store, name="a", shape=(2,), dtype="i4")
    await session.store.set_virtual_ref("a/c/0", "s3://bucket/no-slash/x", offset=0, length=4)
    with pytest.raises(aic.AicechunkError, match="no virtual chunk container"):
        await session.store.set_virtual_ref("a/c/1", "s3://bucket/no-slashy", offset=0, length=4)
    await session.commit("works")

    def icechunk_agrees() -> list[str]:
        opened = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path)))
        s = opened.writable_session("main")
        accepted = []
        for i, url in enumerate(["s3://bucket/no-slash/x", "s3://bucket/no-slashy"]):
            try:
                s.store.set_virtual_ref(f"a/c/{i}", url, offset=0, length=4)
                accepted.append(url)
            except ic.IcechunkError:
                pass
        return accepted

    assert await asyncio.to_thread(icechunk_agrees) == ["s3://bucket/no-slash/x"]


async def test_authorizing_an_undeclared_prefix_warns() -> None:
    config = aic.RepositoryConfig()
    config.set_virtual_chunk_container(
        aic.VirtualChunkContainer("s3://declared/", aic.s3_store(region="us-east-1"))
    )
    repo = await aic.Repository.create(aic.in_memory_storage(), config=config)
    opened = await aic.Repository.open(
        repo.storage,
        authorize_virtual_chunk_access={"s3://declared/": None, "s3://typo/": None},
    )
    with pytest.warns(aic.AicechunkWarning, match="'s3://typo/'.*declares no container"):
        await opened.readonly_session(branch="main")
