"""Creating spec v2 repositories as icechunk 2.x does: ``check_clean_root`` refuses a
location holding anything, also for an interrupted creation; ``open_or_create`` takes
icechunk 2.3.0's ``create_version`` and opens what it finds whatever its version."""

from __future__ import annotations

import pytest

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.drivers.base import Driver
from aicechunk.format.ids import FIRST_SNAPSHOT_ID


async def _keys(driver: Driver) -> dict[str, bytes]:
    return {info.key: await driver.get(info.key) async for info in driver.list("")}


@pytest.mark.parametrize("version", [1, 2])
async def test_an_unclean_root_is_refused_unless_told(version: int) -> None:
    driver = MemoryDriver()
    await driver.put("data/notes.txt", b"someone's file")
    storage = aic.storage_from_driver(driver)
    for call in (
        aic.Repository.create(storage, spec_version=version),
        aic.Repository.open_or_create(storage, create_version=version),
    ):
        with pytest.raises(aic.RootNotEmptyError, match=r"data/notes\.txt"):
            await call
    assert await _keys(driver) == {"data/notes.txt": b"someone's file"}
    repo = await aic.Repository.create(storage, check_clean_root=False, spec_version=version)
    assert repo.spec_version == version
    assert (await aic.Repository.open(storage)).spec_version == version
    assert await driver.get("data/notes.txt") == b"someone's file"


async def test_an_interrupted_v2_creation_is_not_created_over() -> None:
    """What a creation that stopped before its repo info file leaves (the initial
    snapshot and its transaction log) is another creator's: refused, nothing written."""
    source = MemoryDriver()
    await aic.Repository.create(aic.storage_from_driver(source), spec_version=2)
    driver = MemoryDriver()
    for key in (f"snapshots/{FIRST_SNAPSHOT_ID}", f"transactions/{FIRST_SNAPSHOT_ID}"):
        await driver.put(key, await source.get(key))
    before = await _keys(driver)
    for clean in (True, False):
        with pytest.raises(aic.RepositoryExistsError, match="being created"):
            await aic.Repository.create(
                aic.storage_from_driver(driver), check_clean_root=clean, spec_version=2
            )
    assert await _keys(driver) == before


@pytest.mark.parametrize("version", [1, 2])
async def test_open_or_create_creates_the_version_asked_for(version: int) -> None:
    storage = aic.in_memory_storage()
    created = await aic.Repository.open_or_create(storage, create_version=version)
    assert created.spec_version == version
    # a repository that exists opens as it is, whatever version creation would take
    other = 3 - version
    opened = await aic.Repository.open_or_create(storage, create_version=other)
    assert opened.spec_version == version


async def test_open_or_create_refuses_an_unknown_version() -> None:
    driver = MemoryDriver()
    with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 7"):
        await aic.Repository.open_or_create(aic.storage_from_driver(driver), create_version=7)
    assert await _keys(driver) == {}
