"""``VirtualResolver`` serializes itself for fork payloads and is what sessions type
against (``ChunkFetcher``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import msgpack

import aicechunk as aic
from aicechunk.drivers.base import RangeRequest
from aicechunk.format.manifest import VirtualRef
from aicechunk.virtual import ChunkFetcher, VirtualResolver


def resolver(tmp_path: Path) -> VirtualResolver:
    containers = {
        p: aic.VirtualChunkContainer(p, store, name)
        for p, store, name in (
            ("s3://a/", aic.s3_store(region="r", endpoint_url="http://127.0.0.1:1"), "a"),
            ("s3://b/", aic.s3_store(), None),
            ("gs://c/", aic.gcs_store({"endpoint_url": "http://127.0.0.1:2"}), None),
            ("https://h/p/", aic.http_store(), None),
            (f"file://{tmp_path}/", aic.local_filesystem_store(tmp_path), None),
        )
    }
    authorized = aic.containers_credentials(
        {
            "s3://a/": aic.s3_credentials(access_key_id="K", secret_access_key="S"),
            "s3://b/": aic.s3_credentials(get_credentials=lambda: ("K", "S", None)),
            "gs://c/": aic.gcs_credentials(anonymous=True),
            f"file://{tmp_path}/": None,
        }
    )
    return VirtualResolver(containers, authorized)


async def test_to_plain_is_msgpack_data_that_rebuilds_the_resolver(tmp_path: Path) -> None:
    original = resolver(tmp_path)
    plain = original.to_plain()
    rebuilt = VirtualResolver.from_plain(msgpack.unpackb(msgpack.packb(plain), use_list=True))
    assert rebuilt.to_plain() == plain
    for location in ("s3://a/x", "s3://b/x", "gs://c/x", "https://h/p/x", f"file://{tmp_path}/x"):
        assert rebuilt.container_for(location) == original.container_for(location)
    # a refreshing credentials callable cannot travel: its container arrives unauthorized
    assert set(plain["authorized"]) == {"s3://a/", "gs://c/", f"file://{tmp_path}/"}
    (tmp_path / "x").write_bytes(b"0123456789")
    ref = VirtualRef(f"file://{tmp_path}/x", 2, 4)
    assert await rebuilt.fetch(ref, RangeRequest(2, 4)) == b"2345"
    await rebuilt.close()


def test_pickling_keeps_containers_and_credentials(tmp_path: Path) -> None:
    original = VirtualResolver.from_plain(resolver(tmp_path).to_plain())  # no callables
    assert pickle.loads(pickle.dumps(original)).to_plain() == original.to_plain()


def test_the_resolver_is_a_chunk_fetcher(tmp_path: Path) -> None:
    assert isinstance(resolver(tmp_path), ChunkFetcher)
