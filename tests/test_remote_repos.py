"""Repositories on remote storage: published over HTTP, and interop with icechunk on S3."""

from __future__ import annotations

import asyncio
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from tests.conftest import s3_test_storage
from tests.oracle import SPEC_VERSIONS, create_kwargs
from tests.servers import create_s3_bucket, http_file_server, next_bucket_name


async def write_sample(repo: aic.Repository) -> str:
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    arr = await group.create_array("x", shape=(30,), chunks=(7,), dtype="i4")
    await arr.setitem(slice(None), np.arange(30, dtype="i4"))
    sid = await session.commit("sample")
    await repo.create_tag("published", sid)
    return str(sid)


@pytest.mark.parametrize("version", [1, 2])
async def test_repository_published_over_http(tmp_path: Path, version: int) -> None:
    local = await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path / "repo"), spec_version=version
    )
    sid = await write_sample(local)
    with http_file_server(tmp_path / "repo") as url:
        storage = aic.http_storage(url)
        assert await aic.Repository.exists(storage)
        repo = await aic.Repository.open(storage)
        assert await repo.lookup_branch("main") == sid
        assert await repo.lookup_tag("published") == sid
        for session in (
            await repo.readonly_session(branch="main"),
            await repo.readonly_session(tag="published"),
        ):
            arr = await zas.open_array(store=session.store, path="x", mode="r")
            np.testing.assert_array_equal(await arr.getitem(slice(None)), np.arange(30))
        history = [s.message async for s in repo.ancestry(branch="main")]
        assert history == ["sample", "Repository initialized"]
        if version == 1:  # ref files are found by listing, which HTTP cannot do
            with pytest.raises(aic.RepositoryError, match=r"cannot list branches.*by name"):
                await repo.list_branches()
            with pytest.raises(aic.RepositoryError, match="cannot list tags"):
                await repo.list_tags()
        else:  # spec v2 keeps them in the repo info file
            assert await repo.list_branches() == {"main"}
            assert await repo.list_tags() == {"published"}
        with pytest.raises(aic.SessionStateError, match="read-only"):
            await repo.writable_session("main")
        with pytest.raises(aic.RefNotFoundError):
            await repo.lookup_branch("nope")
        await storage.driver().close()


def icechunk_storage(endpoint: str, bucket: str, prefix: str) -> icechunk.Storage:
    return icechunk.s3_storage(
        bucket=bucket,
        prefix=prefix,
        region="us-east-1",
        endpoint_url=endpoint,
        allow_http=True,
        force_path_style=True,
        access_key_id="testing",
        secret_access_key="testing",
    )


def icechunk_write_s3(endpoint: str, bucket: str, spec_version: int) -> str:
    storage = icechunk_storage(endpoint, bucket, "theirs")
    repo = icechunk.Repository.create(storage, **create_kwargs(spec_version))
    s = repo.writable_session("main")
    arr = zarr.create_array(store=s.store, name="y", shape=(12,), chunks=(5,), dtype="f8")
    arr[:] = np.linspace(0, 1, 12)
    return str(s.commit("icechunk on s3"))


def icechunk_read_s3(endpoint: str, bucket: str) -> list[float]:
    repo = icechunk.Repository.open(icechunk_storage(endpoint, bucket, "ours"))
    s = repo.readonly_session("main")
    return list(zarr.open_array(store=s.store, path="x", mode="r")[:])


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_interop_on_s3(s3_endpoint: str, spec_version: int) -> None:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    storage = s3_test_storage(s3_endpoint, bucket, "ours")
    ours = await aic.Repository.create(storage, spec_version=spec_version)
    await write_sample(ours)
    assert await asyncio.to_thread(icechunk_read_s3, s3_endpoint, bucket) == list(range(30))

    sid = await asyncio.to_thread(icechunk_write_s3, s3_endpoint, bucket, spec_version)
    theirs = await aic.Repository.open(s3_test_storage(s3_endpoint, bucket, "theirs"))
    assert theirs.spec_version == spec_version
    assert await theirs.lookup_branch("main") == sid
    session = await theirs.readonly_session(branch="main")
    arr = await zas.open_array(store=session.store, path="y", mode="r")
    np.testing.assert_allclose(await arr.getitem(slice(None)), np.linspace(0, 1, 12))


async def test_s3_clients_are_shared_per_loop_and_released_on_close(s3_endpoint: str) -> None:
    from aicechunk.drivers import s3 as s3_driver

    storage = s3_test_storage(s3_endpoint)
    async with await aic.Repository.create(storage) as repo:
        session = await repo.writable_session("main")
        group = await zas.open_group(store=session.store, mode="w")
        await group.create_array("a", shape=(4,), chunks=(2,), dtype="i4")
        await session.commit("one")
        # another bucket, same settings: the same client and connections
        again = await aic.Repository.create(s3_test_storage(s3_endpoint))
        assert await again.lookup_branch("main") != await repo.lookup_branch("main")
        pool = s3_driver._CLIENTS[asyncio.get_running_loop()]
        assert len(pool) == 1
        (shared,) = pool.values()
        assert shared.users == 2
        await again.close()
        assert shared.users == 1 and len(pool) == 1
    assert len(pool) == 0  # the last user closed it
    # closed repositories reconnect when used again
    messages = [s.message async for s in repo.ancestry(branch="main")]
    assert messages[0] == "one" and await repo.lookup_branch("main")
    assert len(pool) == 1
    await repo.close()


LEFT_OPEN = """
import asyncio, sys
import aicechunk as aic

async def main(s3_endpoint, s3_bucket, gcs_endpoint, gcs_bucket, http_url):
    s3 = aic.s3_storage(bucket=s3_bucket, prefix="r", region="us-east-1",
                        endpoint_url=s3_endpoint, allow_http=True, force_path_style=True,
                        access_key_id="testing", secret_access_key="testing")
    for storage in (s3, aic.gcs_storage(bucket=gcs_bucket, prefix="r", endpoint_url=gcs_endpoint)):
        repo = await aic.Repository.create(storage)
        assert await repo.list_branches() == {"main"}
    published = await aic.Repository.open(aic.http_storage(http_url))
    assert await published.lookup_branch("main")
    print("done")

asyncio.run(main(*sys.argv[1:]))
"""


async def test_clients_left_open_are_closed_when_the_loop_ends(
    tmp_path: Path, s3_endpoint: str, gcs_endpoint: str
) -> None:
    """A script that never closes its repositories: its S3, GCS and HTTP sessions are
    closed as asyncio.run ends, not reported unclosed by the garbage collector."""
    import subprocess
    import sys

    from tests.servers import create_gcs_bucket

    s3_bucket, gcs_bucket = next_bucket_name(), next_bucket_name()
    create_s3_bucket(s3_endpoint, s3_bucket)
    create_gcs_bucket(gcs_endpoint, gcs_bucket)
    local = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "pub"))
    await write_sample(local)
    with http_file_server(tmp_path / "pub") as url:
        args = [s3_endpoint, s3_bucket, gcs_endpoint, gcs_bucket, url]
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", LEFT_OPEN, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert "Unclosed" not in done.stderr, done.stderr


SYNC_AND_SPAWNED = """
import asyncio, multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
import numpy as np, zarr
import aicechunk as aic

def write(fork, i):  # in a spawned worker, through zarr's synchronous API
    zarr.open_array(store=fork.store, path="a")[2 * i : 2 * i + 2] = i
    return fork

if __name__ == "__main__":
    endpoint, bucket = sys.argv[1:]
    storage = aic.s3_storage(bucket=bucket, prefix="r", region="us-east-1",
                             endpoint_url=endpoint, allow_http=True, force_path_style=True,
                             access_key_id="testing", secret_access_key="testing")
    repo = asyncio.run(aic.Repository.create(storage))
    session = asyncio.run(repo.writable_session("main"))
    zarr.create_array(session.store, name="a", shape=(8,), chunks=(2,), dtype="i4")  # sync API
    asyncio.run(session.commit("array"))
    session = asyncio.run(repo.writable_session("main"))  # a committed one is read-only
    fork = session.fork()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        forks = list(pool.map(write, [fork] * 4, range(4)))
    asyncio.run(session.merge(*forks))
    asyncio.run(session.commit("from workers"))
    ro = asyncio.run(repo.readonly_session(branch="main"))
    print(zarr.open_array(store=ro.store, path="a", mode="r")[:].tolist())
"""


async def test_clients_of_sync_api_and_spawned_workers_are_closed_quietly(
    tmp_path: Path, s3_endpoint: str
) -> None:
    """S3 used from zarr's synchronous API (its own loop, on a thread that never ends)
    and from spawned pool workers: nothing is reported unclosed at exit."""
    import subprocess
    import sys

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    script = tmp_path / "script.py"
    script.write_text(SYNC_AND_SPAWNED)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script), s3_endpoint, bucket],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 0, 1, 1, 2, 2, 3, 3]"
    assert "Unclosed" not in done.stderr, done.stderr
