"""Spec v2's repo info settings, as Icechunk 2.x has them: ``num_updates_per_repo_info_file``
(how many updates ``repo`` keeps before older ones are read from the backup they link to)
and ``repo_update_retries`` (how a change that lost the race to another writer is
retried). Interop with icechunk 2.3.0 in-process, both ways, across the overflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import aicechunk as aic
from aicechunk.config import RepoInfoUpdates, RepoUpdateRetries
from aicechunk.drivers import MemoryDriver
from aicechunk.drivers.base import ObjectInfo
from aicechunk.errors import PreconditionFailed, StorageError
from aicechunk.format.repo_info import REPO_INFO_KEY, decode_repo_info
from aicechunk.repo_info_store import IMMEDIATE_RETRIES, retry_delays
from aicechunk.testing import CountingDriver
from tests.oracle import needs_icechunk2

pytestmark = pytest.mark.filterwarnings("ignore:The LocalFileSystem storage is not safe")


# --- the settings ----------------------------------------------------------------------------


def test_the_settings_are_stored_under_icechunks_keys() -> None:
    config = aic.RepositoryConfig()
    assert config.num_updates_per_repo_info_file is None and config.repo_update_retries is None
    assert config.repo_info_updates() == RepoInfoUpdates(1000, 100, 50, 30_000)
    config.num_updates_per_repo_info_file = 3
    config.repo_update_retries = RepoUpdateRetries(max_tries=7, initial_backoff_ms=2)
    assert config.to_dict() == {
        "num_updates_per_repo_info_file": 3,
        "repo_update_retries": {
            "default": {"max_tries": 7, "initial_backoff_ms": 2, "max_backoff_ms": None}
        },
    }
    # a field left unset takes Icechunk's storage retry default (180 s), not 30 s
    assert config.repo_info_updates() == RepoInfoUpdates(3, 7, 2, 180_000)
    assert aic.RepositoryConfig.from_flex(config.to_flex()) == config
    assert aic.RepositoryConfig.from_yaml(config.to_yaml()) == config
    for bad in (-1, 0x10000, True, "3"):
        with pytest.raises(ValueError):
            config.num_updates_per_repo_info_file = bad  # type: ignore[assignment]
    with pytest.raises(ValueError):
        RepoUpdateRetries(max_tries=0)  # icechunk: "invalid zero value"


@needs_icechunk2
async def test_icechunks_settings_read_as_ours(tmp_path: Path) -> None:
    import icechunk as ic
    from icechunk._icechunk_python import RepoUpdateRetryConfig

    cfg = ic.RepositoryConfig.default()
    cfg.num_updates_per_repo_info_file = 4
    cfg.repo_update_retries = RepoUpdateRetryConfig(
        default=ic.StorageRetriesSettings(max_tries=9, max_backoff_ms=70)
    )
    for spec in (1, 2):
        ic.Repository.create(
            ic.local_filesystem_storage(str(tmp_path / f"v{spec}")), cfg, spec_version=spec
        )
        ours = await aic.Repository.open(aic.local_filesystem_storage(tmp_path / f"v{spec}"))
        assert ours.config.num_updates_per_repo_info_file == 4
        assert ours.config.repo_update_retries == RepoUpdateRetries(9, None, 70)
        assert ours.config.repo_info_updates() == RepoInfoUpdates(4, 9, 100, 70)


def test_retries_follow_icechunks_schedule() -> None:
    delays = list(retry_delays(RepoInfoUpdates(1000, 9, 10, 25)))
    assert len(delays) == 9 and delays[:IMMEDIATE_RETRIES] == [0.0] * 5
    for delay, base in zip(delays[5:], (0.010, 0.020, 0.025, 0.025), strict=True):
        assert base <= delay <= 2 * base  # exponential, capped, with jitter up to as much
    # icechunk retries 5 times at once whatever max_tries says
    assert list(retry_delays(RepoInfoUpdates(1000, 1, 10, 25))) == [0.0] * 5


class AlwaysRaced(CountingDriver):
    """Every conditional write of ``repo`` loses to another writer, once ``armed``."""

    armed = False
    lost = 0

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        if self.armed and key == REPO_INFO_KEY and if_match is not None:
            self.lost += 1
            raise PreconditionFailed("another writer replaced it", key=key)
        return await super()._put(key, data, if_none_match=if_none_match, if_match=if_match)


@pytest.mark.parametrize(("max_tries", "attempts"), [(7, 8), (2, 6)])
async def test_a_change_that_keeps_losing_is_tried_as_configured(
    max_tries: int, attempts: int
) -> None:
    driver = AlwaysRaced(MemoryDriver())
    config = aic.RepositoryConfig()
    config.repo_update_retries = RepoUpdateRetries(max_tries, 1, 2)
    repo = await aic.Repository.create(aic.storage_from_driver(driver), config, spec_version=2)
    main = await repo.lookup_branch("main")
    driver.armed = True
    with pytest.raises(StorageError, match=f"in {attempts} attempts") as info:
        await repo.create_tag("t", main)
    assert not isinstance(info.value, PreconditionFailed)  # that would read as "exists"
    assert driver.lost == attempts
    driver.armed = False
    assert await repo.list_tags() == set()


# --- the overflow, both ways --------------------------------------------------------------


async def _changes(repo: aic.Repository, n: int, prefix: str) -> None:
    main = await repo.lookup_branch("main")
    for i in range(n):
        await repo.create_branch(f"{prefix}{i}", main)
    await repo.create_tag(f"{prefix}t", main)
    await repo.delete_branch(f"{prefix}0")


def _logged(updates: Any) -> list[tuple[str, str, str | None]]:
    return [(type(u.kind).__name__, u.updated_at.isoformat(), u.backup_path) for u in updates]


async def _ours_logged(repo: aic.Repository) -> list[tuple[str, str, str | None]]:
    return _logged([u async for u in repo.ops_log()])


def _kept(root: Path) -> int:
    info = decode_repo_info((root / REPO_INFO_KEY).read_bytes(), REPO_INFO_KEY)
    return len(info.latest_updates)


@needs_icechunk2
async def test_an_ops_log_icechunk_overflowed_is_read_whole_and_continued(tmp_path: Path) -> None:
    import icechunk as ic

    cfg = ic.RepositoryConfig.default()
    cfg.num_updates_per_repo_info_file = 3
    theirs = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path)), cfg, spec_version=2)
    main = theirs.lookup_branch("main")
    for i in range(6):
        theirs.create_branch(f"ic{i}", main)
    theirs.create_tag("ict", main)
    assert _kept(tmp_path) == 3
    expected = _logged(theirs.ops_log())
    assert len(expected) == 8
    ours = await aic.Repository.open(aic.local_filesystem_storage(tmp_path))
    assert await _ours_logged(ours) == expected
    await _changes(ours, 3, "ours")  # icechunk's persisted setting is in effect here
    assert _kept(tmp_path) == 3
    logged = await _ours_logged(ours)
    # icechunk's newest entry now links to the backup our first change made
    assert len(logged) == 8 + 5 and logged[6:] == expected[1:]
    assert logged[5][:2] == expected[0][:2] and logged[5][2] is not None
    again = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path)))
    assert _logged(again.ops_log()) == logged


@needs_icechunk2
async def test_an_ops_log_we_overflow_is_read_whole_by_icechunk(tmp_path: Path) -> None:
    import icechunk as ic

    config = aic.RepositoryConfig()
    config.num_updates_per_repo_info_file = 2
    ours = await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path), config, spec_version=2
    )
    await _changes(ours, 4, "b")
    assert _kept(tmp_path) == 2
    logged = await _ours_logged(ours)
    assert [k for k, _, _ in logged] == [
        "BranchDeleted",
        "TagCreated",
        *["BranchCreated"] * 4,
        "RepoInitialized",
    ]
    theirs = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path)))
    assert theirs.config.num_updates_per_repo_info_file == 2
    assert _logged(theirs.ops_log()) == logged
    main = theirs.lookup_branch("main")
    theirs.create_tag("ic", main)  # icechunk keeps to the setting too
    assert _kept(tmp_path) == 2
    after = await _ours_logged(ours)
    assert after[0][0] == "TagCreated" and after[2:] == logged[1:]
    assert after[1][:2] == logged[0][:2]
