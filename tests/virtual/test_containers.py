"""Typed store configs: the YAML tags ``config.yaml`` holds them as, both directions, and
what a malformed one says."""

from __future__ import annotations

from pathlib import Path

import icechunk
import pytest

import aicechunk as aic
from aicechunk.format.config import Tagged, decode_config_yaml, encode_config_yaml
from aicechunk.virtual import (
    AzureStoreConfig,
    GCSStoreConfig,
    HTTPStoreConfig,
    InMemoryStoreConfig,
    LocalStoreConfig,
    S3StoreConfig,
    StoreConfig,
)
from aicechunk.virtual.containers import credentials_from_plain, store_from_tagged
from tests.oracle import ICECHUNK_2, V1

EVERY_KIND: list[StoreConfig] = [
    aic.s3_store(region="us-east-1"),
    aic.s3_store(endpoint_url="http://127.0.0.1:9000", allow_http=True, requester_pays=True),
    aic.s3_store(region="r", checksum_algorithm="crc64_nvme"),
    S3StoreConfig(kind="tigris", network_stream_timeout_seconds=None),
    aic.gcs_store({"endpoint_url": "http://127.0.0.1:4443"}),
    aic.http_store(),
    aic.local_filesystem_store("/data/netcdf"),
    AzureStoreConfig({"account": "a"}),
    InMemoryStoreConfig(),
]


@pytest.mark.parametrize("store", EVERY_KIND, ids=lambda s: s.tag)
def test_every_kind_survives_its_yaml_tag(store: StoreConfig) -> None:
    assert store_from_tagged(store.to_tagged()) == store
    doc = {"virtual_chunk_containers": {"x": {"url_prefix": "x", "store": store.to_tagged()}}}
    reread = decode_config_yaml(encode_config_yaml(doc))["virtual_chunk_containers"]["x"]
    assert store_from_tagged(reread["store"]) == store


def test_constructors_make_the_kinds_icechunk_writes() -> None:
    assert aic.s3_store().kind == "s3"
    assert aic.s3_store(s3_compatible=True).kind == "s3_compatible"
    assert aic.s3_store(endpoint_url="http://h").kind == "s3_compatible"
    assert isinstance(aic.gcs_store(), GCSStoreConfig) and aic.gcs_store().options == {}
    assert isinstance(aic.http_store({"a": "b"}), HTTPStoreConfig)
    assert aic.local_filesystem_store(Path("/d")) == LocalStoreConfig("/d")


def test_our_yaml_is_icechunks_yaml(tmp_path: Path) -> None:
    """The same containers, declared here and in icechunk, are the same YAML (a spec v1
    repository's config.yaml)."""
    ours = aic.RepositoryConfig.default()
    theirs = icechunk.RepositoryConfig.default()
    checksummed = []
    if ICECHUNK_2:  # icechunk 2.x's S3 write checksums; 1.x has none and writes no key
        sha256 = icechunk.ChecksumAlgorithm.Sha256
        checksummed.append(
            (
                "s3://k/",
                aic.s3_store(region="r", checksum_algorithm="sha256"),
                icechunk.s3_store(region="r", checksum_algorithm=sha256),
            )
        )
    for prefix, mine, its in (
        *checksummed,
        ("s3://b/p/", aic.s3_store(region="r"), icechunk.s3_store(region="r")),
        (
            "s3://c/",
            aic.s3_store(endpoint_url="http://x", force_path_style=True),
            # (icechunk needs s3_compatible=True, s3_store here infers it from endpoint_url)
            icechunk.s3_store(endpoint_url="http://x", force_path_style=True, s3_compatible=True),
        ),
        ("gcs://b/", aic.gcs_store({"k": "v"}), icechunk.gcs_store({"k": "v"})),
        ("https://h/p/", aic.http_store(), icechunk.http_store()),
        ("file:///d/", aic.local_filesystem_store("/d"), icechunk.local_filesystem_store("/d")),
    ):
        ours.set_virtual_chunk_container(aic.VirtualChunkContainer(prefix, mine))
        theirs.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, its))
    icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(tmp_path)), config=theirs, **V1
    )
    theirs_doc = decode_config_yaml((tmp_path / "config.yaml").read_bytes())
    ours_doc = decode_config_yaml(ours.to_yaml())
    if not ICECHUNK_2:
        for container in ours_doc["virtual_chunk_containers"].values():
            if container["store"].tag.startswith("s3"):
                assert container["store"].value.pop("checksum_algorithm") is None
    assert ours_doc["virtual_chunk_containers"] == theirs_doc["virtual_chunk_containers"]


@pytest.mark.parametrize(
    ("tagged", "message"),
    [
        ("s3", "tagged value"),
        (Tagged("ftp", {}), "unknown store kind"),
        (Tagged("s3", "bucket"), "mapping"),
        (Tagged("s3", {"region": 5}), "region must be str or null"),
        (Tagged("s3", {"anonymous": "yes"}), "anonymous must be bool"),
        (Tagged("s3", {"network_stream_timeout_seconds": True}), "int or null"),
        (Tagged("s3", {"checksum_algorithm": "md5"}), "checksum_algorithm must be one of"),
        (Tagged("s3", {"checksum_algorithm": 1}), "str or null"),
        (Tagged("gcs", {"endpoint_url": 1}), "mapping of strings"),
        (Tagged("http", ["a"]), "mapping of strings"),
        (Tagged("local_file_system", 7), "path is a string"),
    ],
)
def test_malformed_store_configs_say_what_is_wrong(tagged: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store_from_tagged(tagged)


def test_missing_s3_options_take_icechunks_defaults_and_unknown_ones_are_ignored() -> None:
    store = store_from_tagged(Tagged("s3_compatible", {"region": "r", "future_option": 1}))
    assert store == S3StoreConfig(region="r", kind="s3_compatible")
    assert store.network_stream_timeout_seconds == 60


def test_a_malformed_container_in_config_yaml_is_ignored_with_a_warning() -> None:
    doc = {
        "virtual_chunk_containers": {
            "s3://ok/": {"url_prefix": "s3://ok/", "store": Tagged("s3", {})},
            "s3://bad/": {"url_prefix": "s3://bad/", "store": Tagged("s3", {"region": 5})},
        }
    }
    config = aic.RepositoryConfig.from_yaml(encode_config_yaml(doc))
    with pytest.warns(aic.AicechunkWarning, match="region"):
        assert list(config.virtual_chunk_containers) == ["s3://ok/"]


def test_credentials_serialize_themselves() -> None:
    s3 = aic.s3_credentials(access_key_id="KEYID", secret_access_key="SECRET", session_token="T0K")
    gcs = aic.gcs_credentials(service_account_file="/sa.json")
    for creds in (s3, gcs):
        assert creds.portable and credentials_from_plain(creds.to_plain()) == creds
    assert credentials_from_plain(None) is None
    refreshing = aic.s3_credentials(get_credentials=lambda: ("k", "s", None))
    assert not refreshing.portable
    with pytest.raises(ValueError, match="refreshable"):
        refreshing.to_plain()
    assert not {"KEYID", "SECRET", "T0K"} & set(repr(s3).split("'"))  # keys stay out of reprs
