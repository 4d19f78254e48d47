"""Upgrading a spec v1 repository to spec v2: icechunk's ``upgrade_icechunk_repository``.

An administrative operation, to run while nobody else writes, as in icechunk. Its steps,
each leaving a repository that opens and has lost nothing:

1. Plan (``upgrade_plan``): read every ref, every reachable snapshot and ``config.yaml``,
   and encode the repo info file that holds them. Nothing is written; a dry run stops
   here and logs what it would do.
2. Write the repo info file ``repo``, only if there is none. From this one write on, the
   repository is spec v2 for every reader: icechunk 2.x and aicechunk read ``repo`` and
   ignore ``refs/``; icechunk 1.x refuses to open it ("this repository uses Icechunk v2
   format, please upgrade the icechunk library"). Before it, it is the spec v1
   repository it was.
3. Read it back: if it does not hold what was planned (never seen; a bug), it is deleted
   again, leaving the spec v1 repository as it was, and the upgrade fails.
4. With ``delete_unused_v1_files``: delete ``refs/`` (the ``main`` branch first, so that a
   spec v1 writer that missed step 2 fails fast, as icechunk orders it) and then
   ``config.yaml`` (the configuration is in the repo info file now). A ref whose snapshot
   the repo info file does not list (a spec v1 writer committed during the upgrade) is
   never deleted: the upgrade stops and says so.

An upgrade interrupted after step 2 is finished by running it again (it deletes what
step 4 left); on a spec v2 repository with nothing left to do it is refused.
"""

from __future__ import annotations

import logging

from aicechunk.assets import CONFIG_KEY, REPO_INFO_KEY, AssetManager
from aicechunk.drivers.base import Driver
from aicechunk.errors import (
    AicechunkError,
    FormatError,
    ObjectNotFound,
    PreconditionFailed,
    ReadOnlyError,
    RepositoryError,
    RepositoryNotFoundError,
    StorageError,
    UnsupportedSpecVersionError,
)
from aicechunk.format import refs as ref_format
from aicechunk.format import repo_updates as ru
from aicechunk.format.repo_info import RepoInfo, decode_repo_info
from aicechunk.repository.repository import Repository
from aicechunk.repository.upgrade_plan import UpgradePlan, plan_upgrade

__all__ = ["upgrade_icechunk_repository"]

log = logging.getLogger(__name__)


async def upgrade_icechunk_repository(
    repo: Repository,
    *,
    dry_run: bool,
    delete_unused_v1_files: bool = True,
    prefetch_concurrency: int | None = None,
) -> Repository:
    """Upgrade a spec v1 repository to spec v2, keeping its whole history (every snapshot
    a branch or tag reaches, with parents, messages, metadata and times), its branches,
    tags, deleted tag names and persisted configuration; the repository reopened (with
    its persisted configuration and ``repo``'s virtual chunk credentials).

    ``dry_run=True`` reads and checks everything, writes nothing, and logs (at INFO, on
    the ``aicechunk.repository.upgrade`` logger) what the upgrade would write and
    delete. ``delete_unused_v1_files`` deletes ``refs/`` and ``config.yaml`` afterwards
    (icechunk 2.x and aicechunk ignore them; icechunk 1.x cannot open the repository
    either way). ``prefetch_concurrency`` bounds how many snapshot files are read at
    once (64 when ``None``).

    Interrupted at any step, the repository opens, as spec v1 or as spec v2, with nothing
    lost, and running the upgrade again finishes it (see the module's docstring). Refused
    on a spec v2 repository (``UnsupportedSpecVersionError``), on read-only storage, and,
    before anything is written, dry run or not, where a snapshot it keeps holds an array
    of more than ``2**32 - 1`` chunks in a dimension (``UnrepresentableValueError`` naming
    the array and snapshot: spec v2 records chunk counts as uint32, so no commit could
    follow; icechunk 2.3.0 upgrades it and truncates the count).
    Nobody else should write to the repository meanwhile, as icechunk asks.
    """
    storage = repo.storage
    driver = storage.driver()
    if not driver.supports_writes:
        raise ReadOnlyError(
            "cannot upgrade a repository on read-only storage",
            key=REPO_INFO_KEY,
            driver=driver.label,
        )
    version = await AssetManager(driver).spec_version()
    if version is None:
        raise RepositoryNotFoundError(f"no repository at {driver.label}: nothing to upgrade")
    credentials = repo.authorized_virtual_containers
    if version != 1:
        await _finish(driver, version, dry_run=dry_run, delete=delete_unused_v1_files)
        return await Repository.open(storage, None, credentials)
    config = repo.config
    assets = AssetManager(driver, config.caching, config.decompression_limits())
    plan = await plan_upgrade(assets, prefetch_concurrency)
    if dry_run:
        log.info(
            "dry run, nothing written: upgrading %s would write %s", driver.label, plan.describe()
        )
        return await Repository.open(storage, None, credentials)
    log.info("upgrading %s: %s", driver.label, plan.describe())
    await _write(driver, plan)
    await _verify(repo, driver, plan)
    if delete_unused_v1_files:
        await _delete_unused(driver, plan.info)
    log.info("upgraded %s to spec version 2", driver.label)
    return await Repository.open(storage, None, credentials)


async def _write(driver: Driver, plan: UpgradePlan) -> None:
    """Write the repo info file where there is none. A lost answer is settled by reading
    it back: our bytes there mean it landed."""
    try:
        await driver.put(REPO_INFO_KEY, plan.data, if_none_match=True)
    except StorageError as err:
        try:
            stored = await driver.get(REPO_INFO_KEY)
        except StorageError:
            raise err from None
        if stored == plan.data:
            return
        if isinstance(err, PreconditionFailed):
            raise RepositoryError(
                f"another process wrote the repo info file at {driver.label} during the "
                "upgrade (an upgrade or creation of its own); this upgrade wrote nothing"
            ) from None
        raise


def _differences(stored: RepoInfo, planned: RepoInfo) -> list[str]:
    def lineage(info: RepoInfo) -> list[tuple[object, ...]]:
        return [(s.id, s.parent_id, s.flushed_at, s.message) for s in info.snapshots]

    checks = {
        "branches": (dict(stored.branches), dict(planned.branches)),
        "tags": (dict(stored.tags), dict(planned.tags)),
        "deleted tags": (stored.deleted_tags, planned.deleted_tags),
        "snapshots": (lineage(stored), lineage(planned)),
        "operations log": (len(stored.latest_updates), len(planned.latest_updates)),
        "configuration": (stored.config, planned.config),
    }
    return [name for name, (a, b) in checks.items() if a != b]


async def _verify(repo: Repository, driver: Driver, plan: UpgradePlan) -> None:
    """Read the repository back as spec v2; where it does not hold what was planned,
    delete the repo info file (nothing else was changed yet) and fail."""
    try:
        stored = decode_repo_info(await driver.get(REPO_INFO_KEY), REPO_INFO_KEY)
        opened = await Repository.open(repo.storage)
        differ = _differences(stored, plan.info)
        if opened.spec_version != 2:
            differ.append(f"it opens as spec version {opened.spec_version}")
    except StorageError:
        raise  # the repository is spec v2 and whole; running the upgrade again finishes it
    except AicechunkError as err:
        differ = [str(err)]
    if not differ:
        return
    await driver.delete(REPO_INFO_KEY)
    raise RepositoryError(
        f"the upgrade of {driver.label} failed its check ({', '.join(differ)} not as "
        "planned); its repo info file was deleted again, and the repository is the spec "
        "version 1 repository it was"
    )


async def _unaccounted_refs(driver: Driver, info: RepoInfo, keys: list[str]) -> list[str]:
    """The ref files naming a snapshot the repo info file does not list."""
    parsed = [ref_format.parse_ref_key(key) for key in keys]
    deleted = {p[1] for p in parsed if p is not None and p[0] == "tag_tombstone"}
    unknown = []
    for key, found in zip(keys, parsed, strict=True):
        if found is None or found[0] == "tag_tombstone" or found[1] in deleted:
            continue
        try:
            sid = ref_format.decode_ref(await driver.get(key), key)
        except ObjectNotFound:
            continue
        except FormatError:
            sid = None
        if sid is None or info.snapshot(sid) is None:
            unknown.append(key)
    return unknown


async def _delete_unused(driver: Driver, info: RepoInfo) -> None:
    """Delete ``refs/`` (``main`` first) and ``config.yaml``, never a ref that the repo
    info file does not account for."""
    keys = [item.key async for item in driver.list("refs/")]
    unknown = await _unaccounted_refs(driver, info, keys)
    if unknown:
        raise RepositoryError(
            f"the repository at {driver.label} is spec version 2 now, but these spec v1 ref "
            f"files point at snapshots its repo info file does not list: {unknown!r:.300} "
            "(a spec v1 writer changed them during the upgrade?). Nothing was deleted; "
            "recover those snapshots (their files are in place) and delete the refs by hand"
        )
    main = ref_format.branch_key("main")
    if main in keys:
        await driver.delete(main)  # spec v1 writers fail fast from here on
    await driver.delete_many(key for key in keys if key != main)
    left = [item.key async for item in driver.list("refs/")]
    if left:
        raise RepositoryError(
            f"the repository at {driver.label} is spec version 2, but {len(left)} spec v1 "
            f"ref files could not be deleted ({left[:3]!r}...); run the upgrade again"
        )
    try:
        await driver.delete(CONFIG_KEY)
    except StorageError as err:  # as icechunk: the upgrade is done; a new run deletes it
        log.warning(
            "config.yaml at %s was not deleted (%s); run the upgrade again", driver.label, err
        )


async def _finish(driver: Driver, version: int, *, dry_run: bool, delete: bool) -> None:
    """A spec v2 repository: finish an upgrade that stopped before deleting the unused
    spec v1 files, or refuse."""
    info = None
    if version == 2:
        info = decode_repo_info(await driver.get(REPO_INFO_KEY), REPO_INFO_KEY)
    migrated = next(
        (u for u in (info.latest_updates if info else ()) if isinstance(u.kind, ru.RepoMigrated)),
        None,
    )
    if info is not None and migrated is not None and delete:
        has_refs = [item.key async for item in driver.list("refs/")] != []
        if has_refs or await driver.exists(CONFIG_KEY):
            if dry_run:
                log.info(
                    "dry run, nothing deleted: would delete the unused spec v1 files at %s",
                    driver.label,
                )
                return
            log.info("finishing the upgrade of %s: deleting the unused spec v1 files", driver.label)
            await _delete_unused(driver, info)
            return
    when = ""
    if migrated is not None:
        when = f" (upgraded from spec version 1 at {migrated.updated_at:%Y-%m-%d %H:%M:%S} UTC)"
    raise UnsupportedSpecVersionError(
        f"{driver.label} holds a spec version {version} repository{when}: "
        "upgrade_icechunk_repository upgrades spec version 1 repositories to 2"
    )
