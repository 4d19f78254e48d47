"""Transport faults: the network drivers turn every one into a ``StorageError`` and retry
the transient ones.

Each driver reads through ``fault_proxy`` in front of its real test server (moto, fake-gcs-
server, an aiohttp file server), which drops connections, cuts bodies short, stalls, hangs,
answers 503 or answers garbage.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aicechunk.drivers import Driver, LocalDriver
from aicechunk.drivers.gcs import GCSDriver
from aicechunk.drivers.http import HTTPDriver
from aicechunk.drivers.s3 import S3Credentials, S3Driver
from aicechunk.errors import ObjectNotFound, StorageError
from tests.servers import (
    FaultProxy,
    bare_moto_server,
    create_gcs_bucket,
    create_s3_bucket,
    fault_proxy,
    http_file_server,
    next_bucket_name,
)

DATA = os.urandom(64 * 1024)
# the drivers' read timeout, ample on a loaded machine; "hang" and "stall" last longer
TIMEOUT = 1.0
TRANSIENT = ["reset", "truncate", "stall", "hang", "503"]

#: a driver reading through the given endpoint, with the given max_attempts
Make = Callable[[str, int], Driver]


@pytest.fixture(params=["s3", "gcs", "http"])
async def faulty(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[FaultProxy, Make]]:
    """(the proxy to arm, a factory of drivers reading the object ``obj`` through it)."""
    kind = request.param
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)
    make: Make
    if kind == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = next_bucket_name()
        create_s3_bucket(endpoint, bucket)

        def make(url: str, attempts: int) -> Driver:
            return S3Driver(
                bucket,
                "p",
                region="us-east-1",
                endpoint_url=url,
                allow_http=True,
                force_path_style=True,
                credentials=S3Credentials("testing", "testing"),
                max_attempts=attempts,
                connect_timeout=TIMEOUT,
                read_timeout=TIMEOUT,
            )

    elif kind == "gcs":
        endpoint = request.getfixturevalue("gcs_endpoint")
        bucket = next_bucket_name()
        create_gcs_bucket(endpoint, bucket)

        def make(url: str, attempts: int) -> Driver:
            return GCSDriver(bucket, "p", endpoint_url=url, max_attempts=attempts, timeout=TIMEOUT)

    else:
        published = tmp_path / "published"
        endpoint = stack.enter_context(http_file_server(published))
        writer = LocalDriver(published)
        await writer.put("obj", DATA)
        await writer.close()

        def make(url: str, attempts: int) -> Driver:
            return HTTPDriver(url, max_attempts=attempts, timeout=TIMEOUT)

    if kind != "http":
        async with make(endpoint, 3) as direct:
            await direct.put("obj", DATA)
    _, proxy = stack.enter_context(fault_proxy(endpoint))
    proxy.hang_seconds = 2 * TIMEOUT
    yield proxy, make


@pytest.mark.attack("transport faults")
@pytest.mark.parametrize("fault", TRANSIENT)
async def test_transient_faults_are_retried(faulty: tuple[FaultProxy, Make], fault: str) -> None:
    proxy, make = faulty
    proxy.faults = [fault, fault]
    async with make(proxy.url, 4) as driver:
        assert await driver.get("obj") == DATA
        assert await driver.get("obj", None) == DATA
    assert proxy.faulted == 2


@pytest.mark.attack("transport faults")
@pytest.mark.parametrize("fault", TRANSIENT)
async def test_persistent_faults_are_a_storage_error(
    faulty: tuple[FaultProxy, Make], fault: str
) -> None:
    proxy, make = faulty
    proxy.faults = [fault] * 10
    async with make(proxy.url, 3) as driver:
        with pytest.raises(StorageError) as caught:
            await driver.get("obj")
    assert type(caught.value) is StorageError
    assert "obj" in str(caught.value)
    # max_attempts, no more (aiohttp itself sends a request again, once, when a reused
    # connection drops before any answer)
    assert 3 <= proxy.requests <= (6 if fault == "reset" else 3)


@pytest.mark.attack("transport faults")
async def test_malformed_answer_is_a_storage_error(faulty: tuple[FaultProxy, Make]) -> None:
    proxy, make = faulty
    proxy.faults = ["malformed"] * 10
    async with make(proxy.url, 3) as driver:
        with pytest.raises(StorageError) as caught:
            await driver.get("obj")
    assert type(caught.value) is StorageError


@pytest.mark.attack("transport faults")
async def test_missing_object_is_not_retried(faulty: tuple[FaultProxy, Make]) -> None:
    proxy, make = faulty
    async with make(proxy.url, 5) as driver:
        with pytest.raises(ObjectNotFound):
            await driver.get("missing")
    assert proxy.requests == 1


# --- the strict parser of PYTHONASYNCIODEBUG=1 -----------------------------------------

_OPEN = """
import asyncio, sys
import aicechunk as aic

async def main():
    storage = aic.s3_storage(
        bucket=sys.argv[2], prefix="repo", region="us-east-1", endpoint_url=sys.argv[1],
        allow_http=True, force_path_style=True, access_key_id="testing",
        secret_access_key="testing", max_attempts=2,  # botocore retries unparsable answers
    )
    try:
        await aic.Repository.open(storage)
    except aic.StorageError as err:
        print("StorageError", err)
    else:
        print("opened")

asyncio.run(main())
"""


def _open_in_debug_mode(endpoint: str, bucket: str, **extra: str) -> str:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONASYNCIODEBUG="1", PYTHONPATH=str(root), **extra)
    done = subprocess.run(
        [sys.executable, "-c", _OPEN, endpoint, bucket],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


async def _repository_without_config(endpoint: str) -> str:
    import aicechunk as aic
    from tests.conftest import s3_test_storage

    bucket = next_bucket_name()
    create_s3_bucket(endpoint, bucket)
    # spec v1: opening it asks for objects that are not there (repo, config.yaml), 404s
    await aic.Repository.create(s3_test_storage(endpoint, bucket), spec_version=1)
    return bucket


@pytest.mark.attack("transport faults")
async def test_open_without_config_in_asyncio_debug_mode(s3_endpoint: str) -> None:
    """No config.yaml means a 404 for it; under PYTHONASYNCIODEBUG=1 the test server's
    answer reads fine (its layer sends one Server header) and the repository opens."""
    bucket = await _repository_without_config(s3_endpoint)
    assert _open_in_debug_mode(s3_endpoint, bucket).strip() == "opened"


@pytest.mark.attack("transport faults")
async def test_malformed_answer_in_asyncio_debug_mode_is_a_storage_error() -> None:
    """Bare moto sends two Server headers, which aiohttp's strict parser refuses: through
    botocore (the lean path off) the driver reports a StorageError (it raised
    AttributeError: botocore's error for an answer it could not parse has
    ``response=None``). The lean path's own client takes a repeated field as HTTP allows."""
    with bare_moto_server() as endpoint:
        bucket = await _repository_without_config(endpoint)
        out = _open_in_debug_mode(endpoint, bucket, AICECHUNK_S3_LEAN="0")
        lean = _open_in_debug_mode(endpoint, bucket)
    assert out.startswith("StorageError get failed"), out
    assert "key='repo'" in out  # the first object open reads (is it spec v2?), named
    assert lean.strip() == "opened"
