"""Virtual chunks: containers, authorization, checksums, every store kind, interop."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from tests.oracle import V1
from tests.servers import (
    create_gcs_bucket,
    create_s3_bucket,
    http_file_server,
    next_bucket_name,
    put_s3_object,
)

VALUES = np.arange(64, dtype="<i4")
BLOB = b"HEADER--" + VALUES.tobytes()  # chunk data at offset 8, like a small NetCDF


async def virtual_repo(
    tmp_path: Path,
    prefix: str,
    store: object,
    creds: dict[str, object] | None,
    spec_version: int | None = None,
) -> aic.Repository:
    config = aic.RepositoryConfig.default()
    config.set_virtual_chunk_container(aic.VirtualChunkContainer(prefix, store))  # type: ignore[arg-type]
    return await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path / "repo"),
        config=config,
        authorize_virtual_chunk_access=creds,
        spec_version=spec_version,
    )


async def s3_virtual_repo(tmp_path: Path, bucket: str, endpoint: str) -> tuple[aic.Repository, str]:
    """A repository with an authorized container for ``s3://bucket/`` served at
    ``endpoint``; returns it and the container's prefix."""
    prefix = f"s3://{bucket}/"
    store_config = aic.s3_store(
        region="us-east-1", endpoint_url=endpoint, allow_http=True, force_path_style=True
    )
    credentials = aic.containers_credentials(
        {prefix: aic.s3_credentials(access_key_id="testing", secret_access_key="testing")}
    )
    return await virtual_repo(tmp_path, prefix, store_config, credentials), prefix


async def write_refs(repo: aic.Repository, location: str, checksum: object = None) -> aic.Session:
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("v", shape=(64,), chunks=(32,), dtype="<i4", compressors=None)
    for i in range(2):
        await session.store.set_virtual_ref(
            f"v/c/{i}",
            location,
            offset=8 + 128 * i,
            length=128,
            checksum=checksum,  # type: ignore[arg-type]
        )
    await session.commit("virtual")
    return session


async def read_v(session: aic.Session) -> np.ndarray:
    arr = await zas.open_array(store=session.store, path="v", mode="r")
    return np.asarray(await arr.getitem(slice(None)))


async def test_local_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "file.nc").write_bytes(BLOB)
    prefix = f"file://{data_dir}/"
    repo = await virtual_repo(
        tmp_path, prefix, aic.local_filesystem_store(str(data_dir)), {prefix: None}
    )
    session = await write_refs(repo, f"{prefix}file.nc")
    np.testing.assert_array_equal(await read_v(session), VALUES)
    assert await session.chunk_type("/v", (0,)) is aic.ChunkType.VIRTUAL
    assert await session.chunk_type("/v", (5,)) is aic.ChunkType.UNINITIALIZED
    assert await session.all_virtual_chunk_locations() == [f"{prefix}file.nc"]
    # the containers persist (in the repo info file; in config.yaml on spec v1)
    reopened = await aic.Repository.open(
        aic.local_filesystem_storage(tmp_path / "repo"),
        authorize_virtual_chunk_access=aic.containers_credentials({prefix: None}),
    )
    assert list(reopened.config.virtual_chunk_containers) == [prefix]
    ro = await reopened.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_v(ro), VALUES)


async def test_refusals(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "file.nc").write_bytes(BLOB)
    prefix = f"file://{data_dir}/"
    repo = await virtual_repo(tmp_path, prefix, aic.local_filesystem_store(str(data_dir)), None)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("v", shape=(64,), chunks=(32,), dtype="<i4", compressors=None)
    with pytest.raises(aic.AicechunkError, match="no virtual chunk container"):
        await session.store.set_virtual_ref("v/c/0", "s3://other/x", offset=0, length=4)
    failed = await session.store.set_virtual_refs(
        "v",
        [
            aic.VirtualChunkSpec((0,), f"{prefix}file.nc", 8, 128),
            aic.VirtualChunkSpec((1,), "gs://nowhere/x", 0, 128),
        ],
    )
    assert failed == [(1,)]
    await session.store.set_virtual_ref(
        "v/c/1", "s3://other/x", offset=0, length=4, validate_container=False
    )
    await session.commit("refs")
    ro = await repo.readonly_session(branch="main")
    # declared but not authorized
    with pytest.raises(aic.VirtualChunkError, match="not authorized") as info:
        await ro.get_chunk("/v", (0,))
    assert str(data_dir) in str(info.value)
    # undeclared prefix
    with pytest.raises(aic.VirtualChunkError, match="no virtual chunk container"):
        await ro.get_chunk("/v", (1,))
    # a container's store must serve the prefix's scheme, and prefixes end with "/"
    with pytest.raises(ValueError, match="serves"):
        aic.VirtualChunkContainer("s3://bucket/", aic.local_filesystem_store("/x"))
    with pytest.raises(ValueError, match="end with"):
        aic.VirtualChunkContainer("s3://bucket", aic.s3_store())


async def test_checksums_and_short_objects(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    target = data_dir / "file.nc"
    target.write_bytes(BLOB)
    prefix = f"file://{data_dir}/"
    repo = await virtual_repo(
        tmp_path, prefix, aic.local_filesystem_store(str(data_dir)), {prefix: None}
    )
    past = datetime.fromtimestamp(time.time() + 5, UTC)
    session = await write_refs(repo, f"{prefix}file.nc", checksum=past)
    np.testing.assert_array_equal(await read_v(session), VALUES)
    # the object changes after the reference's time: refuse instead of wrong bytes
    target.write_bytes(BLOB[::-1])
    later = time.time() + 3600
    os.utime(target, (later, later))
    ro = await repo.readonly_session(branch="main")
    with pytest.raises(aic.VirtualChunkError, match="modified"):
        await ro.get_chunk("/v", (0,))
    # an offset past the end of the object
    target.write_bytes(BLOB[:100])
    s2 = await repo.writable_session("main")
    await s2.store.set_virtual_ref("v/c/0", f"{prefix}file.nc", offset=90, length=128)
    with pytest.raises(aic.VirtualChunkError, match="expected 128 bytes"):
        await s2.get_chunk("/v", (0,))


async def test_s3_seed_example_and_etag(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    etag = put_s3_object(s3_endpoint, bucket, "f.nc", BLOB)
    repo, prefix = await s3_virtual_repo(tmp_path, bucket, s3_endpoint)
    session = await write_refs(repo, f"{prefix}f.nc", checksum=etag)
    np.testing.assert_array_equal(await read_v(session), VALUES)
    put_s3_object(s3_endpoint, bucket, "f.nc", BLOB[::-1])  # the object changes
    ro = await repo.readonly_session(branch="main")
    with pytest.raises(aic.VirtualChunkError, match="changed"):
        await read_v(ro)


async def test_gcs_and_http(tmp_path: Path, gcs_endpoint: str) -> None:
    bucket = next_bucket_name()
    create_gcs_bucket(gcs_endpoint, bucket)
    from aicechunk.drivers.gcs import GCSDriver

    async with GCSDriver(bucket, endpoint_url=gcs_endpoint) as gcs:
        await gcs.put("dir/f.nc", BLOB)
    prefix = f"gs://{bucket}/"
    repo = await virtual_repo(
        tmp_path / "g", prefix, aic.gcs_store({"endpoint_url": gcs_endpoint}), {prefix: None}
    )
    session = await write_refs(repo, f"{prefix}dir/f.nc")
    np.testing.assert_array_equal(await read_v(session), VALUES)

    served = tmp_path / "served"
    served.mkdir()
    (served / "f.nc").write_bytes(BLOB)
    with http_file_server(served) as url:
        hprefix = f"{url}/"
        hrepo = await virtual_repo(tmp_path / "h", hprefix, aic.http_store(), {hprefix: None})
        hsession = await write_refs(hrepo, f"{hprefix}f.nc")
        np.testing.assert_array_equal(await read_v(hsession), VALUES)


def icechunk_virtual(root: Path, data_dir: Path, read_ours: bool) -> list[int]:
    prefix = f"file://{data_dir}/"
    creds = icechunk.containers_credentials({prefix: None})
    if read_ours:
        repo = icechunk.Repository.open(
            icechunk.local_filesystem_storage(str(root)), authorize_virtual_chunk_access=creds
        )
        s = repo.readonly_session("main")
        return list(zarr.open_array(store=s.store, path="v", mode="r")[:])
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        icechunk.VirtualChunkContainer(prefix, icechunk.local_filesystem_store(str(data_dir)))
    )
    repo = icechunk.Repository.create(  # spec v1: its config.yaml holds the container
        icechunk.local_filesystem_storage(str(root)),
        config=config,
        authorize_virtual_chunk_access=creds,
        **V1,
    )
    s = repo.writable_session("main")
    zarr.create_array(
        store=s.store, name="v", shape=(64,), chunks=(32,), dtype="<i4", compressors=None
    )
    for i in range(2):
        s.store.set_virtual_ref(f"v/c/{i}", f"{prefix}file.nc", offset=8 + 128 * i, length=128)
    s.commit("icechunk virtual")
    return []


async def test_interop_virtual_refs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "file.nc").write_bytes(BLOB)
    prefix = f"file://{data_dir}/"
    # icechunk writes, we read
    await asyncio.to_thread(icechunk_virtual, tmp_path / "theirs", data_dir, False)
    theirs = await aic.Repository.open(
        aic.local_filesystem_storage(tmp_path / "theirs"),
        authorize_virtual_chunk_access={prefix: None},
    )
    assert list(theirs.config.virtual_chunk_containers) == [prefix]
    np.testing.assert_array_equal(
        await read_v(await theirs.readonly_session(branch="main")), VALUES
    )
    # we write, icechunk reads
    ours = await virtual_repo(  # spec v1: icechunk 1.x reads it
        tmp_path / "o", prefix, aic.local_filesystem_store(str(data_dir)), {prefix: None}, 1
    )
    await write_refs(ours, f"{prefix}file.nc")
    got = await asyncio.to_thread(icechunk_virtual, tmp_path / "o" / "repo", data_dir, True)
    assert got == list(VALUES)


async def test_forks_carry_containers_and_credentials(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    put_s3_object(s3_endpoint, bucket, "f.nc", BLOB)
    prefix = f"s3://{bucket}/"
    store_config = aic.s3_store(
        region="us-east-1", endpoint_url=s3_endpoint, allow_http=True, force_path_style=True
    )
    creds = {prefix: aic.s3_credentials(access_key_id="testing", secret_access_key="testing")}
    repo = await virtual_repo(tmp_path, prefix, store_config, creds)
    await write_refs(repo, f"{prefix}f.nc")
    session = await repo.writable_session("main")  # a committed session is read-only
    fork = aic.ForkSession.from_bytes(session.fork().to_bytes())
    np.testing.assert_array_equal(await read_v(fork), VALUES)


async def test_refreshable_and_wrong_credentials(tmp_path: Path, s3_endpoint: str) -> None:
    from tests.drivers.test_remote import flaky_server

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    put_s3_object(s3_endpoint, bucket, "f.nc", BLOB)
    prefix = f"s3://{bucket}/"
    calls: list[int] = []

    def fetch_credentials() -> tuple[str, str, str | None]:
        calls.append(1)
        return "testing", "testing", None

    store_config = aic.s3_store(
        region="us-east-1", endpoint_url=s3_endpoint, allow_http=True, force_path_style=True
    )
    creds = {prefix: aic.s3_credentials(get_credentials=fetch_credentials)}
    repo = await virtual_repo(tmp_path / "a", prefix, store_config, creds)
    session = await write_refs(repo, f"{prefix}f.nc")
    np.testing.assert_array_equal(await read_v(session), VALUES)
    assert calls  # the callable supplied the keys

    denial = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidAccessKeyId</Code>"
        b"<Message>no such key</Message></Error>"
    )
    with flaky_server(failures=0, then=403, body=denial) as (url, _):
        wrong_store = aic.s3_store(
            region="us-east-1", endpoint_url=url, allow_http=True, force_path_style=True
        )
        wrong = {prefix: aic.s3_credentials(access_key_id="WRONG", secret_access_key="WRONG")}
        repo2 = await virtual_repo(tmp_path / "b", prefix, wrong_store, wrong)
        session2 = await write_refs(repo2, f"{prefix}f.nc")
        with pytest.raises(aic.VirtualChunkError, match="access denied") as info:
            await session2.get_chunk("/v", (0,))
        assert f"{prefix}f.nc" in str(info.value) and "WRONG" not in str(info.value)


async def test_nearby_ranges_read_in_one_request(tmp_path: Path, s3_endpoint: str) -> None:
    """Chunks packed in one object, read concurrently, cost a few GETs, not one each; a
    chunk far away is read on its own; every chunk gets exactly its bytes."""
    from tests.servers import counting_proxy

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    values = np.arange(64 * 4, dtype="<i4")
    far = 1 << 20  # past the coalescing gap
    blob = values.tobytes() + bytes(far) + values[:4].tobytes()
    put_s3_object(s3_endpoint, bucket, "packed.bin", blob)
    with counting_proxy(s3_endpoint) as (proxy, requests):
        repo, prefix = await s3_virtual_repo(tmp_path, bucket, proxy)
        session = await repo.writable_session("main")
        group = await zas.open_group(store=session.store, mode="w")
        await group.create_array("v", shape=(65 * 4,), chunks=(4,), dtype="<i4", compressors=None)
        for i in range(64):
            await session.store.set_virtual_ref(
                f"v/c/{i}", f"{prefix}packed.bin", offset=16 * i, length=16
            )
        await session.store.set_virtual_ref(
            "v/c/64", f"{prefix}packed.bin", offset=len(values) * 4 + far, length=16
        )
        await session.commit("packed")
        ro = await repo.readonly_session(branch="main")
        before = requests()
        got = await read_v(ro)
        reads = requests() - before
        await repo.close()
    np.testing.assert_array_equal(got, np.concatenate([values, values[:4]]))
    assert 2 <= reads <= 20, reads  # 14 seen: zarr reads 10 chunks at a time, not 65 GETs


async def test_an_undeclared_url_is_one_error_when_set_and_when_read() -> None:
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    await zas.create_array(session.store, name="a", shape=(2,), chunks=(1,), dtype="u1")
    url = "s3://nobody-declared/x.bin"
    with pytest.raises(aic.VirtualChunkError, match="no virtual chunk container") as when_set:
        await session.store.set_virtual_ref("a/c/0", url, offset=0, length=1)
    await session.store.set_virtual_ref("a/c/0", url, offset=0, length=1, validate_container=False)
    await session.commit("undeclared")
    session = await repo.writable_session("main")  # a committed session is read-only
    ro = await repo.readonly_session(branch="main")
    arr = await zas.open_array(store=ro.store, path="a", mode="r")
    with pytest.raises(aic.VirtualChunkError, match="no virtual chunk container") as when_read:
        await arr.getitem(0)
    assert type(when_set.value) is type(when_read.value)
    # a URL that does not parse says why, not that no container is declared
    with pytest.raises(aic.InvalidLocation, match=r"\.\."):
        await session.store.set_virtual_ref("a/c/1", "s3://b/../x", offset=0, length=1)
    assert issubclass(aic.InvalidStoreKeyError, aic.AicechunkError)  # exported
