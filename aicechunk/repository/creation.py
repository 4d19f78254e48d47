"""Creating a repository: all or nothing, also between processes creating at once.

The initial snapshot, whose id is the same in every repository, is written first and only
if absent. That decides the one creator that goes on to write ``config.yaml`` and then the
``main`` branch (spec v1), or the repo info file that holds both (spec v2); every other
creator raises ``RepositoryExistsError`` having written nothing.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aicechunk.assets import CONFIG_KEY, REPO_INFO_KEY, AssetManager
from aicechunk.config import RepositoryConfig
from aicechunk.errors import (
    PreconditionFailed,
    RepositoryError,
    RepositoryExistsError,
    RootNotEmptyError,
    UnsupportedSpecVersionError,
)
from aicechunk.format import refs as ref_format
from aicechunk.format.header import SPEC_VERSIONS
from aicechunk.format.ids import FIRST_SNAPSHOT_ID
from aicechunk.format.snapshot import Snapshot
from aicechunk.format.transaction_log import TransactionLog
from aicechunk.repo_info_store import RepoInfoStore
from aicechunk.storage import Storage

__all__ = [
    "CREATION_WAIT_SECONDS",
    "DEFAULT_SPEC_VERSION",
    "await_creation",
    "unsupported_message",
    "write_new_repository",
]

INITIAL_COMMIT_MESSAGE = "Repository initialized"
#: the spec version ``Repository.create`` writes when not told: the newest, as Icechunk 2.x
#: does (``spec_version=1`` makes a repository Icechunk 1.x can read)
DEFAULT_SPEC_VERSION = 2


async def write_new_repository(
    storage: Storage,
    config: RepositoryConfig | None,
    check_clean_root: bool,
    spec_version: int = DEFAULT_SPEC_VERSION,
) -> RepositoryConfig:
    """Write a new, empty repository of ``spec_version`` at ``storage``; its
    configuration in effect."""
    if spec_version not in SPEC_VERSIONS:
        raise UnsupportedSpecVersionError(
            f"cannot create a spec version {spec_version} repository: aicechunk writes "
            f"spec versions {', '.join(map(str, SPEC_VERSIONS))}"
        )
    # as in Icechunk 2.x, a configuration is stored only if one other than the default
    # was given; in spec v2, in the repo info file (encoded first: a configuration that
    # cannot be stored fails before anything is written)
    custom = config is not None and not config.is_default()
    stored = config.to_flex() if config is not None and custom and spec_version >= 2 else None
    driver = storage.driver()
    assets = AssetManager(driver, format_version=spec_version)
    await refuse_existing(assets, driver.label)
    if check_clean_root:
        await refuse_unclean_root(assets, driver.label)
    initial = Snapshot(
        id=FIRST_SNAPSHOT_ID,
        parent_id=None,
        flushed_at=datetime.now(UTC),
        message=INITIAL_COMMIT_MESSAGE,
        # the mark of the first snapshot, as icechunk 2.x writes it on every spec version
        # (icechunk 1.x wrote {"__root": true}; both read either)
        metadata={"__icechunk": {"is_root": True}},
        nodes=(),
        manifest_files=(),
        spec_version=spec_version,
    )
    try:
        await assets.write_snapshot(initial, if_absent=True)
    except PreconditionFailed:
        raise RepositoryExistsError(_creation_in_progress(driver.label)) from None
    # only the creator that wrote the initial snapshot gets here
    effective = config or RepositoryConfig.default()
    try:
        if isinstance(assets.refs, RepoInfoStore):
            # Icechunk 2.x writes the first snapshot's (empty) transaction log too
            await assets.write_transaction_log(TransactionLog(id=FIRST_SNAPSHOT_ID, spec_version=2))
            await assets.refs.create(initial, stored)
            return effective
        if config is not None and not config.is_default():
            # in a clean root nobody else writes config.yaml; past a dirty one it is ours
            await driver.put(CONFIG_KEY, config.to_yaml(), if_none_match=check_clean_root)
        await assets.create_branch("main", FIRST_SNAPSHOT_ID)
    except PreconditionFailed as err:
        # a writer that does not take the initial snapshot first (Icechunk 1.x does not)
        raise RepositoryExistsError(
            f"another process wrote {err.key} at {driver.label} while this one was "
            "creating a repository there"
        ) from None
    return effective


#: The keys a repository creation writes: all that an unfinished creation can leave.
_CREATION_KEYS = frozenset(
    (
        "snapshots/" + str(FIRST_SNAPSHOT_ID),
        "transactions/" + str(FIRST_SNAPSHOT_ID),
        CONFIG_KEY,
        ref_format.branch_key("main"),
    )
)

#: How long ``open_or_create`` waits for another process's creation to finish.
CREATION_WAIT_SECONDS = 10.0


def unsupported_message(label: str, version: int) -> str:
    return (
        f"{label} holds a spec version {version} repository (its '{REPO_INFO_KEY}' object "
        f"says so); aicechunk reads and writes spec versions "
        f"{', '.join(map(str, SPEC_VERSIONS))} only for now, and never writes over it"
    )


def _creation_in_progress(label: str) -> str:
    return (
        f"a repository is being created at {label} by another process (its initial "
        f"snapshot exists, its 'main' branch not yet); if no other process is at work, "
        "an earlier creation was interrupted: empty the location and create again"
    )


async def refuse_existing(assets: AssetManager, label: str) -> None:
    version = await assets.spec_version()
    if version is None:
        return
    if version not in SPEC_VERSIONS:
        raise UnsupportedSpecVersionError(unsupported_message(label, version))
    raise RepositoryExistsError(f"a repository already exists at {label}")


async def refuse_unclean_root(assets: AssetManager, label: str) -> None:
    if not assets.driver.supports_listing:
        raise RootNotEmptyError(
            f"cannot check that {label} is empty (its storage cannot list objects); "
            "pass check_clean_root=False to create a repository there anyway"
        )
    ours, foreign = await assets.scan_root(_CREATION_KEYS)
    if foreign is None:
        if ours:
            # only what a creation writes: another process is creating a repository here
            await refuse_existing(assets, label)
            raise RepositoryExistsError(_creation_in_progress(label))
        return
    await refuse_existing(assets, label)  # made (and written to) since the first check
    raise RootNotEmptyError(
        f"cannot create a repository at {label}: it is not empty (it holds {foreign!r}, "
        "and is no repository); pass check_clean_root=False to create one there anyway"
    )


async def await_creation(storage: Storage) -> None:
    """Wait until the repository another process is creating at ``storage`` exists."""
    assets = AssetManager(storage.driver())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CREATION_WAIT_SECONDS
    delay = 0.005
    while await assets.spec_version() is None:
        if loop.time() >= deadline:
            raise RepositoryError(_creation_in_progress(storage.driver().label))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
