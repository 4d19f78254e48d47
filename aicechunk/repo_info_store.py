"""Spec version 2 refs: branches, tags and the snapshot list in the repo info file.

Every change goes through ``RepoInfoStore.update``, the one compare-and-swap of a spec v2
repository: read ``repo`` with its version, apply the change to what was read, copy the
old file to ``overwritten/<backup_name>`` (the spec's order: the backup first), then put
the new file only if ``repo`` is still at that version. A writer that lost the race to an
unrelated change (another branch, a tag) reads again and reapplies its change, as
Icechunk does, as often and as patiently as the configuration's ``repo_update_retries``
says; a change that no longer applies (the branch moved) raises. The operations log keeps
``num_updates_per_repo_info_file`` updates, the older ones in the backups it links to.
When the answer to the write is lost (any other storage error), ``repo`` is read back to
decide, as a lost ref write is in spec v1: the change is there (done), or the error is
raised and the write is not tried again (the driver has retried what it could); if it
cannot be read back, ``CommitOutcomeUnknownError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from aicechunk.config import DEFAULT_DECOMPRESSION_LIMITS, DecompressionLimits, RepoInfoUpdates
from aicechunk.drivers.base import Driver
from aicechunk.errors import (
    AicechunkError,
    CommitOutcomeUnknownError,
    ConflictError,
    ObjectNotFound,
    PreconditionFailed,
    ReadOnlyRepositoryError,
    RefNotFoundError,
    RepositoryNotFoundError,
    StorageError,
)
from aicechunk.format import repo_updates as ru
from aicechunk.format.feature_flags import require_feature
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import (
    OVERWRITTEN_PREFIX,
    REPO_INFO_KEY,
    RepoInfo,
    SnapshotInfo,
    backup_name,
    decode_repo_info,
    encode_repo_info,
    next_update_time,
    push_update,
    with_snapshot,
)
from aicechunk.format.repo_info_splice import encode_kept, encode_spliced, missing_segments
from aicechunk.format.snapshot import Snapshot
from aicechunk.offload import DECODE_BYTES_OFF_LOOP, ENCODE_ITEMS_OFF_LOOP, off_loop, start_now
from aicechunk.refstore import RefInfo
from aicechunk.repo_info_retries import IMMEDIATE_RETRIES, retry_delays

__all__ = ["IMMEDIATE_RETRIES", "RepoInfoStore", "initial_repo_info", "retry_delays"]

#: reading ``repo`` back after the answer to a change was lost: how many tries, and the
#: wait before the second (doubling), as for a spec v1 branch (``assets.SETTLE_*``)
SETTLE_ATTEMPTS = 5
SETTLE_BACKOFF_SECONDS = 0.05

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
        self,
        driver: Driver,
        limits: DecompressionLimits = DEFAULT_DECOMPRESSION_LIMITS,
        updates: RepoInfoUpdates | None = None,
    ) -> None:
        self.driver = driver
        self.limits = limits
        self.updates = updates or RepoInfoUpdates()
        self._cached: RepoInfo | None = None
        # the file last read or written here: decoded, its bytes and its version
        self._file: tuple[RepoInfo, bytes, str] | None = None
        self._hint: tuple[RepoInfo, bytes] | None = None  # decoded elsewhere (``remember``)

    async def read(self) -> tuple[RepoInfo, bytes, str]:
        """The repo info file as stored now: decoded, its bytes, and its version. The
        file last read or written here is not read again while it is still the one
        stored (its version checked: for a local file, its status alone)."""
        known = self._file
        try:
            if known is None:
                data, obj = await self.driver.get_object(REPO_INFO_KEY)
            else:
                changed = await self.driver.get_object_if_changed(REPO_INFO_KEY, known[2])
                if changed is None:
                    self._cached = known[0]
                    return known
                data, obj = changed
        except ObjectNotFound:
            raise RepositoryNotFoundError(
                f"no repository at {self.driver.label} (no '{REPO_INFO_KEY}' object)"
            ) from None
        # the file is only ever replaced whole, and a commit reads back what the last
        # change wrote: the same bytes are not decoded again (a decode grows with history)
        if self._file is not None and data == self._file[1]:
            info = self._file[0]
        elif self._hint is not None and data == self._hint[1]:
            info = self._hint[0]
        else:
            info = await self.decode(data, REPO_INFO_KEY)
        self._file = (info, data, obj.version)
        self._cached = info
        return self._file

    async def decode(self, data: bytes, key: str) -> RepoInfo:
        """Decode a repo info file (``repo`` or a backup of it) within this store's
        limits; a large one in a worker thread, off the event loop. Its snapshots and
        operations log are decoded when first used (``lazy``): listing branches or
        opening a session needs neither, and a change re-encodes (and so checks) them."""
        bound = self.limits.bound(len(data))
        return await off_loop(
            len(data) >= DECODE_BYTES_OFF_LOOP, decode_repo_info, data, key, bound, lazy=True
        )

    def remember(self, info: RepoInfo, data: bytes) -> None:
        """Keep ``info``, decoded from ``data`` read elsewhere (opening the repository):
        as the last one read unless one was read since, and so that reading the same
        bytes again does not decode them again."""
        self._hint = (info, data)
        if self._cached is None:
            self._cached = info

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
        data = await encode(info)
        try:
            await self.driver.put(REPO_INFO_KEY, data, if_none_match=True)
        except PreconditionFailed:
            # a request retried after its answer was lost finds the object its first try
            # wrote (the bytes hold this creation's time to the microsecond)
            if await self.driver.get(REPO_INFO_KEY) != data:
                raise
        self._cached = info

    async def update(
        self,
        change: Change,
        *,
        version_read: str | None = None,
        check_status: bool = True,
        files: asyncio.Future[Any] | None = None,
    ) -> RepoInfo:
        """Apply ``change`` through the compare-and-swap of the repo info file (see the
        module's docstring); the repo info in effect afterwards.

        ``version_read``: the version of the file the caller saw (a commit's branch tip,
        maybe as this store last read or wrote it). When that is the file this store
        holds, the first attempt applies the change to it without reading it again (as
        Icechunk 2.x does, with its cache of the file). Only a write is decided on that
        file: if it has changed since, the conditional write fails, and the change is
        retried on the file as it is then; a change that is refused there, or finds
        nothing to do, is tried on the file as stored. Other changes (a ref or a tag,
        metadata) start from the file this store holds too where a failed condition
        surely means that nothing was written (``Driver.resends_writes`` false: local
        files, memory), and read it first elsewhere: after a failed condition there, a
        retried request of ours may have landed, and the change is then found done in
        the file read (a tag created elsewhere at the same snapshot looks the same).

        A repository whose status is not online takes no change (``ReadOnlyRepositoryError``,
        read in the same file the change would replace), as in Icechunk; only a change of
        the status itself passes ``check_status=False``.

        ``files``: the writes of the files the change refers to (a commit's snapshot,
        manifests and transaction log), under way; they are stored alongside the backup,
        and the file is put only once both are (their failure is raised as is)."""
        maybe_landed = False
        sent: set[str] = set()  # the backup names of our writes that may have landed
        failure: PreconditionFailed | None = None
        delays = retry_delays(self.updates)
        attempt = 0
        trust = True  # the file known here, for the first attempt
        unread = version_read is None and not self.driver.resends_writes
        while True:
            known = self._file
            cached = attempt == 0 and trust and known is not None
            if cached and known is not None and (unread or version_read == known[2]):
                info, data, version = known
            else:
                cached = False
                info, data, version = await self.read()
            if maybe_landed and _logged(info, sent):
                return info  # a write of ours whose answer was lost is in the file
            try:
                if check_status and not info.status.is_online:
                    if maybe_landed and change(info, True) is None:
                        return info  # ours landed before the status changed
                    raise self.read_only_error(info.status)
                result = change(info, maybe_landed)
            except AicechunkError:
                if not cached:
                    raise
                result = None
            if result is None:
                if cached:  # decided on the file known here: see it as stored first
                    trust = False
                    continue
                return info
            if not version:  # S3 sends no If-Match for an empty one: the put would overwrite
                raise StorageError(
                    "the server gave no version (ETag) of the repo info file: it cannot be "
                    "updated without overwriting others' changes",
                    key=REPO_INFO_KEY,
                    driver=self.driver.label,
                )
            new, kind = result
            at = max(datetime.now(UTC), next_update_time(info.latest_updates[0].updated_at))
            name = backup_name(at, os.urandom(12))
            # the backup is handed over now (with a commit's files) and written while the
            # new file is encoded, which is put once the backup is stored (the spec's order)
            backup = start_now(
                self.driver.put_copy(OVERWRITTEN_PREFIX + name, data, REPO_INFO_KEY, version)
            )
            try:
                log, before = push_update(info, kind, at, name, self.updates.per_file)
                new = replace(new, latest_updates=log, repo_before_updates=before)
                encoded = await encode_change(new)
            except BaseException:
                backup.cancel()
                with contextlib.suppress(BaseException):
                    await backup
                raise
            await backup
            if files is not None:
                await files  # stored meanwhile; on a retry, long done
            try:
                written = await self.driver.put(REPO_INFO_KEY, encoded, if_match=version)
            except PreconditionFailed as err:
                # another writer changed it, or a retried request of ours landed
                failure = err
                maybe_landed = maybe_landed or self.driver.resends_writes
                sent.add(name)
            except StorageError as err:
                sent.add(name)
                return await self._settle(change, err, sent)  # the answer was lost
            else:
                # what was written stands for its bytes (JSON values alike: a tuple
                # in metadata is a list once decoded)
                self._file, self._cached = (new, encoded, written.version), new
                return new
            attempt += 1
            delay = next(delays, None)
            if delay is None:
                break
            await asyncio.sleep(delay)
        # not the PreconditionFailed of the last attempt: callers read that one as "the
        # branch or tag exists"
        raise StorageError(
            f"the repo info file could not be updated in {attempt} attempts, too many "
            f"concurrent changes (last: {failure})",
            key=REPO_INFO_KEY,
            driver=self.driver.label,
        ) from failure

    def read_only_error(
        self, status: ru.RepoStatus, doing: str | None = None
    ) -> ReadOnlyRepositoryError:
        """The error for a write refused by a status that is not online (icechunk's
        words)."""
        reason = status.limited_availability_reason
        said = (
            f"Repo status is {status.availability.name}, set at {status.set_at.isoformat()}, "
            f"reason: {reason!r}"
        )
        where = f" ({self.driver.label})"
        doing = f"{doing}; " if doing else ""
        return ReadOnlyRepositoryError(
            f"the repository status is read-only{where}: {doing}{said}", status
        )

    async def _settle(self, change: Change, lost: StorageError, sent: set[str]) -> RepoInfo:
        """After the answer to a write of ``change`` was lost: the repo info if the change
        is found done, else ``lost`` raised (also when the change no longer applies or the
        file is unreadable). If ``repo`` cannot be read back at all (a few tries, as a
        spec v1 branch is read back), ``CommitOutcomeUnknownError``: it may have landed."""
        last: StorageError | None = None
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                info = (await self.read())[0]
            except StorageError as err:
                last = err
                await asyncio.sleep(SETTLE_BACKOFF_SECONDS * 2**attempt)
                continue
            except AicechunkError:  # unreadable: not ours, nothing to tell
                raise lost from None
            try:
                done = _logged(info, sent) or change(info, True) is None
            except AicechunkError:  # the change no longer applies: not done
                done = False
            if not done:
                raise lost
            return info
        raise CommitOutcomeUnknownError(
            f"outcome unknown: a change of the repo info file may have been applied "
            f"({lost}), and the file could not be read back ({last})",
            key=REPO_INFO_KEY,
            driver=self.driver.label,
        ) from last

    # -- the RefStore interface ----------------------------------------------------------

    async def fetch_branch(self, name: str) -> RefInfo:
        info, _, version = await self.read()
        found = info.branches.get(name)
        if found is None:
            raise RefNotFoundError(f"branch {name!r} does not exist")
        return RefInfo(found, version)

    def known_branch(self, name: str) -> RefInfo | None:
        if self._file is None:
            return None
        info, _, version = self._file
        found = info.branches.get(name)
        return None if found is None else RefInfo(found, version)

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
        self,
        name: str,
        new_id: SnapshotId,
        tip: RefInfo,
        snapshot: Snapshot | None,
        files: asyncio.Future[Any] | None = None,
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
            added = _info_of(snapshot, snapshot.parent_id or expected)
            listed = with_snapshot(info.snapshots, added)  # inserted in order: no sort
            return replace(info, branches=branches, snapshots=listed), ru.NewCommit(name, new_id)

        await self.update(change, version_read=tip.version, files=files)

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
            require_feature(info, "create_tag", "tag creation")
            if name in info.tags or name in info.deleted_tags:
                raise PreconditionFailed(f"tag {name!r} exists or existed", key=REPO_INFO_KEY)
            _listed(info, snapshot_id)
            return replace(info, tags={**info.tags, name: snapshot_id}), ru.TagCreated(name)

        await self.update(change)

    async def delete_tag(self, name: str) -> None:
        def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
            now = info.tags.get(name)
            if retry and now is None and name in info.deleted_tags:
                return None
            require_feature(info, "delete_tag", "tag delete")
            if now is None:
                if name in info.deleted_tags:
                    raise PreconditionFailed(f"tag {name!r} was deleted", key=REPO_INFO_KEY)
                raise RefNotFoundError(f"tag {name!r} does not exist")
            tags = {k: v for k, v in info.tags.items() if k != name}
            new = replace(info, tags=tags, deleted_tags=(*info.deleted_tags, name))
            return new, ru.TagDeleted(name, now)

        await self.update(change)

    async def parent_of(self, snapshot: Snapshot) -> SnapshotId | None:
        for fresh in (False, True):
            found = (await self.info(fresh)).snapshot(snapshot.id)
            if found is not None:
                return found.parent_id
        return snapshot.parent_id

    async def pruned_logs(self, snapshot_id: SnapshotId) -> tuple[SnapshotId, ...]:
        """The transaction logs of the ancestors that expiring snapshots removed from
        between this snapshot and its parent, oldest first (spec 2.1; empty if none)."""
        for fresh in (False, True):
            found = (await self.info(fresh)).snapshot(snapshot_id)
            if found is not None:
                return found.pruned_ancestor_tx_logs
        return ()

    async def record_detached(self, snapshot: Snapshot) -> None:
        def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
            if info.snapshot(snapshot.id) is not None:
                return None
            listed = with_snapshot(info.snapshots, _info_of(snapshot, snapshot.parent_id))
            return replace(info, snapshots=listed), ru.NewDetachedSnapshot(snapshot.id)

        await self.update(change)


async def encode(info: RepoInfo) -> bytes:
    """The bytes of ``info`` in Icechunk's layout (a new file), a large one off the loop."""
    many = len(info.snapshots) + len(info.branches) + len(info.tags) >= ENCODE_ITEMS_OFF_LOOP
    return await off_loop(many, encode_repo_info, info)


async def encode_change(info: RepoInfo) -> bytes:
    """The bytes of ``info`` replacing the file: spliced into the layout of the file it was
    made from (``repo_info_splice``), else whole (in a worker thread if many segments)."""
    found = encode_spliced(info)
    if found is None:
        many = missing_segments(info) >= ENCODE_ITEMS_OFF_LOOP
        found = await off_loop(many, encode_kept, info)
    return found


def _logged(info: RepoInfo, sent: set[str]) -> bool:
    """Whether one of our writes, backed up under a name in ``sent``, is in ``info``'s
    history: the update before ours links to that backup (every change, whatever its kind,
    so that a lost answer never applies one twice, even where reapplying it would be
    allowed, as for metadata or a status)."""
    if not sent:
        return False
    return info.repo_before_updates in sent or any(
        u.backup_path in sent for u in info.latest_updates
    )


def _listed(info: RepoInfo, snapshot_id: SnapshotId) -> None:
    if info.snapshot(snapshot_id) is None:
        raise RefNotFoundError(f"snapshot {snapshot_id} is not in the repository's list")
