"""Shared fixtures: repositories on memory and local storage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import aicechunk as aic

StorageFactory = Callable[[], "aic.Storage"]


@pytest.fixture(params=["memory", "local"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """A factory of fresh, empty storage of each kind."""
    counter = iter(range(1000))

    def make() -> aic.Storage:
        if request.param == "memory":
            return aic.in_memory_storage()
        return aic.local_filesystem_storage(tmp_path / f"repo{next(counter)}")

    return make


@pytest.fixture
async def repo(make_storage: StorageFactory) -> aic.Repository:
    return await aic.Repository.create(make_storage())


RepoFactory = Callable[[], Awaitable["aic.Repository"]]
