"""What upgrading a spec v1 repository to spec v2 writes: read, never written here.

The plan is the repo info file that replaces ``refs/`` and ``config.yaml``, made as
Icechunk 2.x's migration makes it: every snapshot reachable from a branch or tag (with
its parent, time, message and metadata), the branches, the tags and the names of deleted
tags, the configuration ``config.yaml`` holds (not the one in effect: settings a caller
passed to ``open`` are not made permanent), and an operations log rebuilt from the
history (``synthetic_ops_log``) under the ``RepoMigrated`` entry of the upgrade itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aicechunk.assets import CONFIG_KEY, SNAPSHOTS, AssetManager
from aicechunk.changes.validate import check_shape_for_spec
from aicechunk.config import RepositoryConfig
from aicechunk.errors import (
    AicechunkError,
    FormatError,
    InvalidIdError,
    ObjectNotFound,
    RefNotFoundError,
    RepositoryError,
)
from aicechunk.format import refs as ref_format
from aicechunk.format import repo_updates as ru
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import RepoInfo, SnapshotInfo, encode_repo_info
from aicechunk.format.snapshot import ArrayNodeData, Snapshot

__all__ = ["DEFAULT_PREFETCH_CONCURRENCY", "UpgradePlan", "plan_upgrade", "synthetic_ops_log"]

#: how many snapshot files are read at once while collecting the history (Icechunk's)
DEFAULT_PREFETCH_CONCURRENCY = 64
_SYNTHETIC_STEP = timedelta(milliseconds=1)  # a ref event after its snapshot, as Icechunk
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class UpgradePlan:
    """A spec v1 repository as its spec v2 repo info file will hold it.

    ``info`` is the file to write (``data`` its bytes, encoded while planning so that
    anything the file cannot hold fails before a write); ``ref_keys`` the ``refs/``
    objects the upgrade makes unused; ``has_config_yaml`` whether ``config.yaml`` is too;
    ``dangling`` how many snapshot files no branch or tag reaches (left where they are,
    unlisted, as Icechunk leaves them).
    """

    info: RepoInfo
    data: bytes
    ref_keys: tuple[str, ...]
    has_config_yaml: bool
    dangling: int = 0

    def describe(self) -> str:
        """One paragraph saying what the upgrade writes and deletes."""
        info = self.info
        deleted = f", {len(info.deleted_tags)} deleted tags" if info.deleted_tags else ""
        config = "its configuration" if info.config is not None else "no configuration"
        unused = len(self.ref_keys) + int(self.has_config_yaml)
        return (
            f"spec v1 -> v2: a repo info file ({len(self.data)} bytes) with "
            f"{len(info.branches)} branches, {len(info.tags)} tags{deleted}, "
            f"{len(info.snapshots)} snapshots, {len(info.latest_updates)} operations log "
            f"entries and {config}; {unused} spec v1 files (refs/, config.yaml) unused after; "
            f"{self.dangling} snapshots no branch or tag reaches left out"
        )


def synthetic_ops_log(
    main: list[SnapshotInfo],
    branches: Iterable[tuple[str, list[SnapshotInfo]]],
    tags: Iterable[tuple[str, SnapshotId]],
    deleted_tags: Iterable[tuple[str, SnapshotId]],
    times: dict[SnapshotId, datetime],
) -> list[ru.Update]:
    """The operations log a spec v1 history stands for, newest first, as Icechunk 2.x's
    migration writes it (``main``: the main branch's ancestry, tip first; each other
    branch with its ancestry, in name order; tags and deleted tags with their snapshots).

    The repository was initialized at its root snapshot's time; each snapshot was a commit
    on the first branch (main first) whose history holds it, at its own time; a branch
    was created a millisecond after its tip, a tag a millisecond after its snapshot, and
    a deleted tag deleted a millisecond after that. Entries are ordered by time (ties in
    that order) and made strictly increasing by a microsecond where they collide.
    """
    if not main:
        return []
    root_time = main[-1].flushed_at
    events: list[tuple[ru.UpdateKind, datetime]] = [(ru.RepoInitialized(), root_time)]
    events += [(ru.NewCommit("main", s.id), s.flushed_at) for s in reversed(main[:-1])]
    emitted = {s.id for s in main}
    for name, ancestry in branches:
        tip_time = ancestry[0].flushed_at if ancestry else root_time
        events.append((ru.BranchCreated(name), tip_time + _SYNTHETIC_STEP))
        for snap in reversed(ancestry):
            if snap.id not in emitted:
                emitted.add(snap.id)
                events.append((ru.NewCommit(name, snap.id), snap.flushed_at))
    for name, sid in tags:
        events.append((ru.TagCreated(name), times.get(sid, root_time) + _SYNTHETIC_STEP))
    for name, sid in deleted_tags:
        at = times.get(sid, root_time) + _SYNTHETIC_STEP
        events += [(ru.TagCreated(name), at), (ru.TagDeleted(name, sid), at + _SYNTHETIC_STEP)]
    events.sort(key=lambda event: event[1])  # stable: ties keep the order above
    updates: list[ru.Update] = []
    for kind, at in events:
        if updates and at <= updates[-1].updated_at:
            at = updates[-1].updated_at + _TICK
        updates.append(ru.Update(kind, at, None))
    updates.reverse()
    return updates


async def _refs(
    assets: AssetManager,
) -> tuple[dict[str, SnapshotId], dict[str, SnapshotId], dict[str, SnapshotId | None], list[str]]:
    """Branches, tags, deleted tags (with the snapshot their ref file names, if it can be
    read) and every key under ``refs/``."""
    driver = assets.driver
    if not driver.supports_listing:
        raise RepositoryError(
            f"cannot upgrade the repository at {driver.label}: its storage cannot list "
            "objects, and the upgrade must find every branch and tag"
        )
    keys = [info.key async for info in driver.list("refs/")]
    parsed = [(key, ref_format.parse_ref_key(key)) for key in keys]
    tombstoned = {p[1] for _, p in parsed if p is not None and p[0] == "tag_tombstone"}
    branch_names = sorted(p[1] for _, p in parsed if p is not None and p[0] == "branch")
    tag_names = sorted(p[1] for _, p in parsed if p is not None and p[0] == "tag")
    live_tags = [name for name in tag_names if name not in tombstoned]
    # deleted tags in the order of their tombstone keys, as Icechunk lists them
    deleted_names = sorted(tombstoned, key=ref_format.tag_tombstone_key)

    async def read(key: str) -> SnapshotId:
        return ref_format.decode_ref(await driver.get(key), key)

    async def read_deleted(name: str) -> SnapshotId | None:
        try:
            return await read(ref_format.tag_key(name))
        except (ObjectNotFound, FormatError):
            return None  # its snapshot is only for the log; the name is what counts

    branch_ids = await asyncio.gather(*(read(ref_format.branch_key(n)) for n in branch_names))
    tag_ids = await asyncio.gather(*(read(ref_format.tag_key(n)) for n in live_tags))
    deleted_ids = await asyncio.gather(*(read_deleted(n) for n in deleted_names))
    return (
        dict(zip(branch_names, branch_ids, strict=True)),
        dict(zip(live_tags, tag_ids, strict=True)),
        dict(zip(deleted_names, deleted_ids, strict=True)),
        keys,
    )


def _info(snap: Snapshot) -> SnapshotInfo:
    """What the repo info file lists of ``snap``; ``UnrepresentableValueError`` for an
    array of ``snap`` whose grid spec v2 cannot record (no commit could follow it)."""
    for node in snap.nodes:
        if isinstance(node.node_data, ArrayNodeData):
            where = f"array {node.path!r} of snapshot {snap.id}"
            check_shape_for_spec(where, node.node_data.shape, 2)
    return SnapshotInfo(snap.id, snap.parent_id, snap.flushed_at, snap.message, dict(snap.metadata))


async def _listed_snapshots(
    assets: AssetManager, concurrency: int
) -> dict[SnapshotId, SnapshotInfo]:
    """Every snapshot file that reads, read ``concurrency`` at a time (a history walk
    reads one parent after another); one that fails here is left to the walk, which
    reports what is wrong with it if it is reachable."""
    if not assets.driver.supports_listing:
        return {}
    ids = []
    async for info in assets.driver.list(SNAPSHOTS):
        try:
            ids.append(SnapshotId.from_str(info.key[len(SNAPSHOTS) :]))
        except InvalidIdError:
            continue  # not a snapshot file
    found: dict[SnapshotId, SnapshotInfo] = {}
    limit = asyncio.Semaphore(concurrency)

    async def prefetch(sid: SnapshotId) -> None:
        async with limit:
            with contextlib.suppress(AicechunkError):
                found[sid] = _info(await assets.fetch_snapshot(sid))

    await asyncio.gather(*(prefetch(sid) for sid in ids))
    return found


async def _history(
    assets: AssetManager, tips: Iterable[SnapshotId], concurrency: int
) -> tuple[dict[SnapshotId, SnapshotInfo], int]:
    """Every snapshot reachable from ``tips`` (``FormatError`` for a missing parent or a
    history that loops, as ``AssetManager.history``), and how many snapshot files are
    reachable from none (dangling; they stay where they are)."""
    found = await _listed_snapshots(assets, concurrency)
    reachable: dict[SnapshotId, SnapshotInfo] = {}
    for tip in tips:
        walked: set[SnapshotId] = set()
        child: SnapshotId | None = None
        cursor: SnapshotId | None = tip
        while cursor is not None and cursor not in reachable:
            if cursor in walked:
                raise FormatError(
                    SNAPSHOTS + str(child), f"history loops: {cursor} is also a descendant"
                )
            walked.add(cursor)
            info = found.get(cursor)
            if info is None:
                try:
                    info = _info(await assets.fetch_snapshot(cursor))
                except RefNotFoundError:
                    if child is None:
                        raise
                    raise FormatError(
                        SNAPSHOTS + str(child), f"the parent snapshot {cursor} does not exist"
                    ) from None
            reachable[cursor] = info
            child, cursor = cursor, info.parent_id
    return reachable, len(found.keys() - reachable.keys())


def _ancestry(snapshots: dict[SnapshotId, SnapshotInfo], tip: SnapshotId) -> list[SnapshotInfo]:
    chain = []
    cursor: SnapshotId | None = tip
    while cursor is not None and cursor in snapshots:
        chain.append(snapshots[cursor])
        cursor = snapshots[cursor].parent_id
    return chain


async def plan_upgrade(
    assets: AssetManager, prefetch_concurrency: int | None = None, now: datetime | None = None
) -> UpgradePlan:
    """Read the spec v1 repository ``assets`` reads and make its upgrade's plan; nothing
    is written. Fails (and so does the upgrade, before writing) where a ref, a reachable
    snapshot or ``config.yaml`` cannot be read, or the repo info file cannot hold it."""
    concurrency = prefetch_concurrency or DEFAULT_PREFETCH_CONCURRENCY
    if concurrency < 1:
        raise ValueError(f"prefetch_concurrency must be at least 1, not {prefetch_concurrency}")
    (branches, tags, deleted, ref_keys), yaml = await asyncio.gather(
        _refs(assets), _config_yaml(assets)
    )
    if "main" not in branches:
        raise RepositoryError(f"no 'main' branch at {assets.driver.label}: nothing to upgrade")
    tips = [*branches.values(), *tags.values()]
    snapshots, dangling = await _history(assets, tips, concurrency)
    main = _ancestry(snapshots, branches["main"])
    others = [(name, _ancestry(snapshots, sid)) for name, sid in branches.items() if name != "main"]
    times = {sid: info.flushed_at for sid, info in snapshots.items()}
    known_deleted = [(name, sid) for name, sid in deleted.items() if sid is not None]
    previous = synthetic_ops_log(main, others, tags.items(), known_deleted, times)
    at = max(now or datetime.now(UTC), previous[0].updated_at + _TICK)
    migrated = ru.Update(ru.RepoMigrated(1, 2), at, None)
    root_time = main[-1].flushed_at
    config = None if yaml is None else RepositoryConfig.from_yaml(yaml, CONFIG_KEY).to_flex()
    info = RepoInfo(
        branches=branches,
        tags=tags,
        snapshots=tuple(snapshots.values()),
        status=ru.RepoStatus(ru.Availability.ONLINE, root_time),
        latest_updates=(migrated, *previous),
        deleted_tags=tuple(deleted),
        config=config,
    )
    data = await asyncio.to_thread(encode_repo_info, info)
    return UpgradePlan(info, data, tuple(ref_keys), yaml is not None, dangling)


async def _config_yaml(assets: AssetManager) -> bytes | None:
    try:
        return await assets.driver.get(CONFIG_KEY)
    except ObjectNotFound:
        return None
