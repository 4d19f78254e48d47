"""Spec version 2 refs: branches, tags and the snapshot list in the repo info file.

Every change goes through ``RepoInfoStore.update``, the one compare-and-swap of a spec v2
repository: read ``repo`` with its version, apply the change to what was read, copy the
old file to ``overwritten/<backup_name>`` (the spec's order: the backup first), then put
the new file only if ``repo`` is still at that version. A writer that lost the race to an
unrelated change (another branch, a tag) reads again and reapplies its change, as
Icechunk does; a change that no longer applies (the branch moved) raises.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from aicechunk.config import DEFAULT_DECOMPRESSION_LIMITS, DecompressionLimits
from aicechunk.drivers.base import Driver
from aicechunk.errors import (
    ConflictError,
    ObjectNotFound,
    PreconditionFailed,
    RefNotFoundError,
    RepositoryNotFoundError,
    StorageError,
)
from aicechunk.format import repo_updates as ru
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import (
    OVERWRITTEN_PREFIX,
    REPO_INFO_KEY,
    RepoInfo,
    SnapshotInfo,
    backup_name,
    decode_repo_info,
    encode_repo_info,
    push_update,
)
from aicechunk.format.snapshot import Snapshot
from aicechunk.refstore import RefInfo

__all__ = ["UPDATE_ATTEMPTS", "RepoInfoStore", "initial_repo_info"]

#: how many times a change is reapplied after losing the race to other writers
UPDATE_ATTEMPTS = 100
_BACKOFF_SECONDS = 0.005
_BACKOFF_MAX_SECONDS = 0.5

#: a change: the repo info it makes from the one read, with the update's kind, or
#: ``None`` when there is nothing to do (already done); the flag says that an earlier
#: attempt of this change may have landed (its answer was lost)
Change = Callable[[RepoInfo, bool], tuple[RepoInfo, ru.UpdateKind] | None]


def _info_of(snapshot: Snapshot, parent: SnapshotId | None) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot.id, parent, snapshot.flushed_at, snapshot.message, dict(snapshot.metadata)
    )


def initial_repo_info(snapshot: Snapshot, at: datetime, config: bytes | None = None) -> RepoInfo:
    """The repo info file of a new repository whose first snapshot is ``snapshot``
    (``config``: the configuration's FlexBuffer, if one is stored)."""
    return RepoInfo(
        branches={"main": snapshot.id},
        tags={},
        snapshots=(_info_of(snapshot, None),),
        status=ru.RepoStatus(ru.Availability.ONLINE, at),
        latest_updates=(ru.Update(ru.RepoInitialized(), at, None),),
        config=config,
    )


class RepoInfoStore:
    """The refs of a spec v2 repository, all in its repo info file."""

    spec_version = 2

    def __init__(
        self, driver: Driver, limits: DecompressionLimits = DEFAULT_DECOMPRESSION_LIMITS
    ) -> None:
        self.driver = driver
        self.limits = limits
        self._cached: RepoInfo | None = None

    async def read(self) -> tuple[RepoInfo, bytes, str]:
        """The repo info file as stored now: decoded, its bytes, and its version."""
        try:
            data, obj = await self.driver.get_object(REPO_INFO_KEY)
        except ObjectNotFound:
            raise RepositoryNotFoundError(
                f"no repository at {self.driver.label} (no '{REPO_INFO_KEY}' object)"
            ) from None
        info = decode_repo_info(data, REPO_INFO_KEY, self.limits.bound(len(data)))
        self._cached = info
        return info, data, obj.version

    async def info(self, fresh: bool = True) -> RepoInfo:
        """The repo info (the last one read, unless ``fresh``)."""
        if fresh or self._cached is None:
            return (await self.read())[0]
        return self._cached

    async def create(self, snapshot: Snapshot, config: bytes | None = None) -> None:
        """Write the repo info file of a new repository (storing the configuration
        FlexBuffer ``config``, if given); ``PreconditionFailed`` if one exists."""
        await self.create_from(initial_repo_info(snapshot, datetime.now(UTC), config))

    async def create_from(self, info: RepoInfo) -> None:
        """Write ``info`` as the repo info file where there is none (``PreconditionFailed``
        if one exists): a new repository, or one upgraded from spec version 1."""
        await self.driver.put(REPO_INFO_KEY, encode_repo_info(info), if_none_match=True)
        self._cached = info

    async def update(self, change: Change) -> RepoInfo:
        """Apply ``change`` through the compare-and-swap of the repo info file (see the
        module's docstring); the repo info in effect afterwards."""
        maybe_landed = False
        failure: StorageError | None = None
        for attempt in range(UPDATE_ATTEMPTS):
            info, data, version = await self.read()
            result = change(info, maybe_landed)
            if result is None:
                return info
            new, kind = result
            at = max(datetime.now(UTC), info.latest_updates[0].updated_at + timedelta(0, 0, 1))
            name = backup_name(at, os.urandom(12))
            await self.driver.put(OVERWRITTEN_PREFIX + name, data, write_once=True)
            log, before = push_update(info, kind, at, name)
            new = replace(new, latest_updates=log, repo_before_updates=before)
            try:
                await self.driver.put(REPO_INFO_KEY, encode_repo_info(new), if_match=version)
            except PreconditionFailed as err:
                # another writer changed it, or a retried request of ours landed
                failure, maybe_landed = err, True
            except StorageError as err:
                failure, maybe_landed = err, True  # the answer was lost
            else:
                self._cached = new
                return new
            await asyncio.sleep(min(_BACKOFF_MAX_SECONDS, _BACKOFF_SECONDS * 2 ** min(attempt, 10)))
        assert failure is not None
        raise failure

    # -- the RefStore interface ----------------------------------------------------------

    async def fetch_branch(self, name: str) -> RefInfo:
        info, _, version = await self.read()
        found = info.branches.get(name)
        if found is None:
            raise RefNotFoundError(f"branch {name!r} does not exist")
        return RefInfo(found, version)

    async def fetch_tag(self, name: str) -> SnapshotId:
        info = await self.info()
        found = info.tags.get(name)
        if found is None:
            if name in info.deleted_tags:
                raise RefNotFoundError(f"tag {name!r} was deleted")
            raise RefNotFoundError(f"tag {name!r} does not exist")
        return found

    async def list_branches(self) -> set[str]:
        return set((await self.info()).branches)

    async def list_tags(self) -> set[str]:
        return set((await self.info()).tags)

    async def create_branch(self, name: str, snapshot_id: SnapshotId) -> None:
        def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
            now = info.branches.get(name)
            if now is not None:
                if retry and now == snapshot_id:
                    return None
                raise PreconditionFailed(f"branch {name!r} exists", key=REPO_INFO_KEY)
            _listed(info, snapshot_id)
            branches = {**info.branches, name: snapshot_id}
            return replace(info, branches=branches), ru.BranchCreated(name)

        await self.update(change)

    async def update_branch(
        self, name: str, new_id: SnapshotId, tip: RefInfo, snapshot: Snapshot | None
    ) -> None:
        expected = tip.snapshot_id

        def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
            now = info.branches.get(name)
            if now is None:
                raise RefNotFoundError(f"branch {name!r} does not exist")
            if snapshot is not None and info.snapshot(new_id) is not None:
                return None  # the commit is listed: ours landed
            if snapshot is None and now == new_id and retry:
                return None
            if now != expected:
                raise ConflictError(name, str(expected), str(now))
            branches = {**info.branches, name: new_id}
            if snapshot is None:
                _listed(info, new_id)
                return replace(info, branches=branches), ru.BranchReset(name, now)
            listed = (*info.snapshots, _info_of(snapshot, snapshot.parent_id or expected))
            new = replace(info, branches=branches, snapshots=listed)
            return new, ru.NewCommit(name, new_id)

        await self.update(change)

    async def delete_branch(self, name: str) -> None:
        def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
            now = info.branches.get(name)
            if now is None:
                if retry:
                    return None
                raise RefNotFoundError(f"branch {name!r} does not exist")
            branches = {k: v for k, v in info.branches.items() if k != name}
            return replace(info, branches=branches), ru.BranchDeleted(name, now)

        await self.update(change)

    async def create_tag(self, name: str, snapshot_id: SnapshotId) -> None:
        def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
            if retry and info.tags.get(name) == snapshot_id:
                return None
            if name in info.tags or name in info.deleted_tags:
                raise PreconditionFailed(f"tag {name!r} exists or existed", key=REPO_INFO_KEY)
            _listed(info, snapshot_id)
            return replace(info, tags={**info.tags, name: snapshot_id}), ru.TagCreated(name)

        await self.update(change)

    async def delete_tag(self, name: str) -> None:
        def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
            now = info.tags.get(name)
            if now is None:
                if retry and name in info.deleted_tags:
                    return None
                if name in info.deleted_tags:
                    raise PreconditionFailed(f"tag {name!r} was deleted", key=REPO_INFO_KEY)
                raise RefNotFoundError(f"tag {name!r} does not exist")
            tags = {k: v for k, v in info.tags.items() if k != name}
            deleted = (*info.deleted_tags, name)
            new = replace(info, tags=tags, deleted_tags=deleted)
            return new, ru.TagDeleted(name, now)

        await self.update(change)

    async def parent_of(self, snapshot: Snapshot) -> SnapshotId | None:
        for fresh in (False, True):
            found = (await self.info(fresh)).snapshot(snapshot.id)
            if found is not None:
                return found.parent_id
        return snapshot.parent_id

    async def record_detached(self, snapshot: Snapshot) -> None:
        def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
            if info.snapshot(snapshot.id) is not None:
                return None
            listed = (*info.snapshots, _info_of(snapshot, snapshot.parent_id))
            return replace(info, snapshots=listed), ru.NewDetachedSnapshot(snapshot.id)

        await self.update(change)


def _listed(info: RepoInfo, snapshot_id: SnapshotId) -> None:
    if info.snapshot(snapshot_id) is None:
        raise RefNotFoundError(f"snapshot {snapshot_id} is not in the repository's list")
