"""Where a repository keeps its branches and tags, behind one small interface.

Spec version 1 keeps each ref in a file under ``refs/`` (``FileRefStore``); spec version 2
keeps them all in the repo info file (``aicechunk.repo_info_store``). The asset manager
holds one of the two, so the repository and session code never asks which it is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from aicechunk.drivers.base import Driver
from aicechunk.errors import (
    ObjectNotFound,
    PreconditionFailed,
    RefNotFoundError,
    RepositoryError,
    UnsupportedSpecVersionError,
)
from aicechunk.format import refs as ref_format
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import REPO_INFO_KEY
from aicechunk.format.snapshot import Snapshot

__all__ = ["FileRefStore", "RefInfo", "RefStore"]


@dataclass(frozen=True, slots=True)
class RefInfo:
    """A branch or tag: the snapshot it points to and the version of the object that
    stores it (the ref file in spec v1, the repo info file in spec v2)."""

    snapshot_id: SnapshotId
    version: str


class RefStore(Protocol):
    """Branches and tags of one repository, and what the store knows of snapshots."""

    spec_version: int

    async def fetch_branch(self, name: str) -> RefInfo:
        """Where a branch points (``RefNotFoundError`` if it does not exist)."""
        ...

    def known_branch(self, name: str) -> RefInfo | None:
        """Where a branch pointed when this store last read or wrote it, without reading
        (``None`` if it holds nothing of it): a guess that a conditional write confirms."""
        ...

    async def fetch_tag(self, name: str) -> SnapshotId:
        """Where a tag points (``RefNotFoundError`` if it does not exist or was deleted)."""
        ...

    async def list_branches(self) -> set[str]:
        """Names of all branches."""
        ...

    async def list_tags(self) -> set[str]:
        """Names of all tags not deleted."""
        ...

    async def create_branch(self, name: str, snapshot_id: SnapshotId) -> None:
        """Create a branch; ``PreconditionFailed`` if it exists."""
        ...

    async def update_branch(
        self,
        name: str,
        new_id: SnapshotId,
        tip: RefInfo,
        snapshot: Snapshot | None,
        files: asyncio.Future[Any] | None = None,
    ) -> None:
        """Move branch ``name`` from ``tip`` to ``new_id`` in one conditional write:
        ``PreconditionFailed`` (or ``ConflictError``) if it moved meanwhile, another
        ``StorageError`` if the answer was lost. ``snapshot`` is the new commit's
        snapshot (``None`` for a reset, which points at an existing one). ``files``:
        the writes of the new snapshot's files, under way; the ref moves only once they
        are stored (their failure is raised as is, the ref untouched)."""
        ...

    async def delete_branch(self, name: str) -> None:
        """Remove a branch."""
        ...

    async def create_tag(self, name: str, snapshot_id: SnapshotId) -> None:
        """Create a tag; ``PreconditionFailed`` if the name was ever used."""
        ...

    async def delete_tag(self, name: str) -> None:
        """Delete a tag for good; ``PreconditionFailed`` if it already was."""
        ...

    async def parent_of(self, snapshot: Snapshot) -> SnapshotId | None:
        """The parent of a snapshot read from its file (spec v2 files do not hold it)."""
        ...

    async def record_detached(self, snapshot: Snapshot) -> None:
        """Record a snapshot written on no branch (``Session.flush``)."""
        ...


class FileRefStore:
    """Spec version 1: one small JSON file per branch and per tag under ``refs/``, tag
    tombstones beside them; each file updated with a conditional write."""

    spec_version = 1

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    async def fetch_branch(self, name: str) -> RefInfo:
        key = ref_format.branch_key(name)
        try:
            data, info = await self.driver.get_object(key)
        except ObjectNotFound:
            if await self.driver.exists(REPO_INFO_KEY):  # upgraded since it was opened
                raise UnsupportedSpecVersionError(
                    f"the repository at {self.driver.label} is spec version 2 now (it was "
                    "upgraded since this object opened it as spec version 1): open it again"
                ) from None
            raise RefNotFoundError(f"branch {name!r} does not exist") from None
        return RefInfo(ref_format.decode_ref(data, key), info.version)

    def known_branch(self, name: str) -> RefInfo | None:
        return None  # each ref is its own small file: read when needed

    async def fetch_tag(self, name: str) -> SnapshotId:
        key = ref_format.tag_key(name)
        try:
            data = await self.driver.get(key)
        except ObjectNotFound:
            raise RefNotFoundError(f"tag {name!r} does not exist") from None
        if await self.driver.exists(ref_format.tag_tombstone_key(name)):
            raise RefNotFoundError(f"tag {name!r} was deleted")
        return ref_format.decode_ref(data, key)

    async def _parsed_keys(self, what: str) -> list[tuple[str, str]]:
        if not self.driver.supports_listing:
            raise RepositoryError(
                f"cannot list {what}: storage {self.driver.label} does not support listing; "
                "open a branch or tag by name instead"
            )
        found = []
        async for info in self.driver.list("refs/"):
            parsed = ref_format.parse_ref_key(info.key)
            if parsed is not None:
                found.append(parsed)
        return found

    async def list_branches(self) -> set[str]:
        return {name for kind, name in await self._parsed_keys("branches") if kind == "branch"}

    async def list_tags(self) -> set[str]:
        parsed = await self._parsed_keys("tags")
        tags = {name for kind, name in parsed if kind == "tag"}
        return tags - {name for kind, name in parsed if kind == "tag_tombstone"}

    async def create_branch(self, name: str, snapshot_id: SnapshotId) -> None:
        await self.driver.put(
            ref_format.branch_key(name),
            ref_format.encode_ref(str(snapshot_id)),
            if_none_match=True,
        )

    async def update_branch(
        self,
        name: str,
        new_id: SnapshotId,
        tip: RefInfo,
        snapshot: Snapshot | None,
        files: asyncio.Future[Any] | None = None,
    ) -> None:
        if files is not None:
            await files
        await self.driver.put(
            ref_format.branch_key(name),
            ref_format.encode_ref(str(new_id)),
            if_match=tip.version,
        )

    async def delete_branch(self, name: str) -> None:
        await self.driver.delete(ref_format.branch_key(name))

    async def create_tag(self, name: str, snapshot_id: SnapshotId) -> None:
        if await self.driver.exists(ref_format.tag_tombstone_key(name)):
            raise PreconditionFailed(
                "tag was deleted and cannot be reused", key=ref_format.tag_key(name)
            )
        await self.driver.put(
            ref_format.tag_key(name), ref_format.encode_ref(str(snapshot_id)), if_none_match=True
        )

    async def delete_tag(self, name: str) -> None:
        # the ref file stays, as the spec requires
        await self.driver.put(
            ref_format.tag_tombstone_key(name), ref_format.TOMBSTONE_CONTENT, if_none_match=True
        )

    async def parent_of(self, snapshot: Snapshot) -> SnapshotId | None:
        return snapshot.parent_id

    async def record_detached(self, snapshot: Snapshot) -> None:
        return None  # a spec v1 snapshot file names its parent: nothing else to record
