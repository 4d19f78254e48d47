"""Drivers under test for the conformance suite.

Each entry makes a fresh, empty driver and says how to reach its contents from another
worker. Later drivers (S3 on moto, GCS on fake-gcs-server, HTTP on aiohttp) add entries
here; the suite in test_conformance.py runs unchanged over all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aicechunk.drivers import Driver, LocalDriver, MemoryDriver
from aicechunk.drivers.gcs import GCSDriver
from aicechunk.drivers.http import HTTPDriver
from aicechunk.drivers.s3 import S3Credentials, S3Driver
from tests.servers import (
    FaultProxy,
    create_gcs_bucket,
    create_s3_bucket,
    fault_proxy,
    http_file_server,
    next_bucket_name,
)


@dataclass
class DriverUnderTest:
    """A driver plus what the suite needs to know to exercise it."""

    driver: Driver
    # writes objects the driver can then read; the driver itself unless it is read-only
    seed: Callable[[str, bytes], Awaitable[None]]
    # workers in other processes see the same objects (False: use threads instead)
    shared_across_processes: bool = True
    # the directory that must contain everything written, for drivers on local disk
    root: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)


async def _memory(tmp_path: Path) -> DriverUnderTest:
    driver = MemoryDriver()

    async def seed(key: str, data: bytes) -> None:
        await driver.put(key, data)

    return DriverUnderTest(driver, seed, shared_across_processes=False)


async def _local(tmp_path: Path) -> DriverUnderTest:
    root = tmp_path / "root"
    driver = LocalDriver(root)

    async def seed(key: str, data: bytes) -> None:
        await driver.put(key, data)

    return DriverUnderTest(driver, seed, root=root)


async def _s3(tmp_path: Path, endpoint: str) -> DriverUnderTest:
    bucket = next_bucket_name()
    create_s3_bucket(endpoint, bucket)
    driver = S3Driver(
        bucket,
        "some/prefix",
        region="us-east-1",
        endpoint_url=endpoint,
        allow_http=True,
        force_path_style=True,
        credentials=S3Credentials("testing", "testing"),
    )

    async def seed(key: str, data: bytes) -> None:
        await driver.put(key, data)

    return DriverUnderTest(driver, seed)


async def _gcs(tmp_path: Path, endpoint: str) -> DriverUnderTest:
    bucket = next_bucket_name()
    create_gcs_bucket(endpoint, bucket)
    driver = GCSDriver(bucket, "some/prefix", endpoint_url=endpoint)

    async def seed(key: str, data: bytes) -> None:
        await driver.put(key, data)

    return DriverUnderTest(driver, seed)


async def _http(tmp_path: Path, make_server: Callable[[Path], str]) -> DriverUnderTest:
    # a local directory published over HTTP; the suite seeds it through a local driver
    published = tmp_path / "published"
    writer = LocalDriver(published)
    driver = HTTPDriver(make_server(published))

    async def seed(key: str, data: bytes) -> None:
        await writer.put(key, data)

    return DriverUnderTest(driver, seed, root=published)


FACTORIES: dict[str, Callable[..., Awaitable[DriverUnderTest]]] = {
    "http": _http,
    "memory": _memory,
    "local": _local,
    "s3": _s3,
    "gcs": _gcs,
}


@pytest.fixture(params=sorted(FACTORIES))
async def dut(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DriverUnderTest]:
    args: list[object] = [tmp_path]
    if request.param in ("s3", "gcs"):
        args.append(request.getfixturevalue(f"{request.param}_endpoint"))
    if request.param == "http":
        stack = contextlib.ExitStack()
        request.addfinalizer(stack.close)
        args.append(lambda root: stack.enter_context(http_file_server(root)))
    made = await FACTORIES[request.param](*args)
    try:
        yield made
    finally:
        await made.driver.close()


@pytest.fixture
def proxied(s3_endpoint: str) -> Iterator[tuple[FaultProxy, str]]:
    """(the recording proxy in front of moto, a fresh bucket's name)."""
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    with fault_proxy(s3_endpoint) as (_, proxy):
        yield proxy, bucket
