"""Drivers under test for the conformance suite.

Each entry makes a fresh, empty driver and says how to reach its contents from another
worker. Later drivers (S3 on moto, GCS on fake-gcs-server, HTTP on aiohttp) add entries
here; the suite in test_conformance.py runs unchanged over all of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aicechunk.drivers import Driver, LocalDriver, MemoryDriver


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


FACTORIES: dict[str, Callable[[Path], Awaitable[DriverUnderTest]]] = {
    "memory": _memory,
    "local": _local,
}


@pytest.fixture(params=sorted(FACTORIES))
async def dut(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DriverUnderTest]:
    made = await FACTORIES[request.param](tmp_path)
    try:
        yield made
    finally:
        await made.driver.close()
