"""Repository: create and open, branches and tags, history, and sessions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from aicechunk.assets import AssetManager
from aicechunk.awaited import must_await
from aicechunk.changes.conflicts import ConflictSolver
from aicechunk.config import (
    INLINE_CHUNK_THRESHOLD_BYTES,
    READ_AHEAD_CHUNKS,
    READ_CONCURRENCY,
    WRITE_BEHIND_BYTES,
    RepositoryConfig,
)
from aicechunk.errors import (
    ConflictError,
    PreconditionFailed,
    RefExistsError,
    RefNotFoundError,
    RepositoryError,
    RepositoryExistsError,
    SessionStateError,
)
from aicechunk.format import refs as ref_format
from aicechunk.format.ids import SnapshotId
from aicechunk.repository import configs, history, rearrange, v2admin, v2ops
from aicechunk.repository.creation import (
    DEFAULT_SPEC_VERSION,
    await_creation,
    write_new_repository,
)
from aicechunk.repository.history import SnapshotInfo
from aicechunk.repository.history import parse_snapshot_id as _snapshot_id
from aicechunk.repository.warmup import warm_up
from aicechunk.session import Diff, Session, SessionConfig
from aicechunk.storage import Storage
from aicechunk.store import IcechunkStore
from aicechunk.virtual import VirtualResolver

__all__ = ["Repository", "SnapshotInfo", "spec_version"]


def spec_version() -> int:
    """The Icechunk spec version this library writes by default (icechunk's
    ``spec_version()``)."""
    return DEFAULT_SPEC_VERSION


class Repository:
    """A version-controlled Zarr hierarchy in one storage location.

    Open one with ``await Repository.open(storage)`` (or ``create``, ``open_or_create``);
    read and write through sessions.
    """

    def __init__(
        self,
        storage: Storage,
        config: RepositoryConfig,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
        *,
        spec_version: int = 1,
    ) -> None:
        self._storage = storage
        self._config = config
        self._credentials = dict(authorize_virtual_chunk_access or {})
        self._resolver: VirtualResolver | None = None
        limits, updates = config.decompression_limits(), config.repo_info_updates()
        self._assets = AssetManager(storage.driver(), config.caching, limits, spec_version, updates)
        self._commit_metadata: dict[str, Any] = {}

    # -- lifecycle --------------------------------------------------------------------

    @property
    def storage(self) -> Storage:
        """Where the repository lives."""
        return self._storage

    @property
    def spec_version(self) -> int:
        """The Icechunk spec version of this repository (1, or 2 for one in Icechunk
        2.x's default layout); commits keep it."""
        return self._assets.format_version

    @property
    def config(self) -> RepositoryConfig:
        """The configuration in effect (persisted with ``save_config``)."""
        return self._config

    @property
    def authorized_virtual_containers(self) -> dict[str, Any]:
        """URL prefix -> credentials of the virtual chunk containers the user authorized."""
        return dict(self._credentials)

    @property
    def authorized_virtual_container_prefixes(self) -> set[str]:
        """The URL prefixes of the virtual chunk containers the user authorized
        (icechunk's name)."""
        return set(self._credentials)

    def __repr__(self) -> str:
        return f"<Repository {self._storage!r}>"

    def reopen(
        self,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
    ) -> Repository:
        """This repository again, with ``config`` set on top of the configuration in
        effect and, if given, other virtual chunk credentials (the current ones if not).

        As in icechunk, the new object starts with no default commit metadata; nothing is
        read from storage (``fetch_config`` reads what is persisted)."""
        effective = self._config if config is None else self._config.merge(config)
        given = authorize_virtual_chunk_access
        credentials = self._credentials if given is None else given
        return type(self)(self._storage, effective, credentials, spec_version=self.spec_version)

    def set_default_commit_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Metadata every commit (and flush) of sessions made from now on starts with;
        a commit's own metadata is set on top of it (its keys win). Sessions already made
        keep what they had, as in icechunk; ``{}`` clears it."""
        self._commit_metadata = dict(metadata)

    def default_commit_metadata(self) -> dict[str, Any]:
        """The default commit metadata set with ``set_default_commit_metadata``."""
        return dict(self._commit_metadata)

    async def close(self) -> None:
        """Release the network clients this repository's storage (and its virtual chunk
        containers) made in the running event loop. The repository and its sessions stay
        usable: a later call connects again."""
        await self._assets.driver.close()
        if self._resolver is not None:
            await self._resolver.close()

    async def __aenter__(self) -> Repository:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @classmethod
    async def exists(cls, storage: Storage) -> bool:
        """Whether a repository exists at ``storage``: a ``main`` branch (spec version 1)
        or a repo info file (spec version 2)."""
        return await AssetManager(storage.driver()).spec_version() is not None

    @classmethod
    @must_await("no repository was created")
    async def create(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
        *,
        check_clean_root: bool = True,
        spec_version: int | None = None,
    ) -> Repository:
        """Make a new, empty repository of ``spec_version``: the newest (2, Icechunk 2.x's
        layout) when ``None``, as Icechunk 2.x does; 1 for a repository Icechunk 1.x
        must read (it cannot read spec version 2).

        Refused where a repository exists (``RepositoryExistsError``;
        ``UnsupportedSpecVersionError`` for one of a spec version not supported) and, unless
        ``check_clean_root=False``, where anything else is stored (``RootNotEmptyError``).

        Creation is all or nothing, also between processes creating at once: the initial
        snapshot, whose id is the same in every repository, is written first and only if
        absent. That decides the one creator that goes on to write the rest (the repo
        info file; in spec v1 ``config.yaml`` and then the ``main`` branch); every other
        creator raises ``RepositoryExistsError`` having written nothing.
        """
        version = DEFAULT_SPEC_VERSION if spec_version is None else spec_version
        effective = await write_new_repository(storage, config, check_clean_root, version)
        return cls(storage, effective, authorize_virtual_chunk_access, spec_version=version)

    @classmethod
    @must_await("the repository was not opened")
    async def open(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
    ) -> Repository:
        """Open an existing repository; ``config`` is set on top of the configuration
        persisted in it (``config.yaml`` on spec v1, the repo info file on spec v2)."""
        limits = None if config is None else config.decompression_limits()
        probed = await configs.probe_files(storage, limits)
        effective, found = configs.opened(storage, config, probed.version, probed.config)
        repo = cls(storage, effective, authorize_virtual_chunk_access, spec_version=found)
        warm_up(repo._assets, probed)  # main's tip snapshot, fetched meanwhile
        return repo

    @classmethod
    @must_await("the repository was not opened or created")
    async def open_or_create(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
        *,
        create_version: int | None = None,
        check_clean_root: bool = True,
    ) -> Repository:
        """Open the repository at ``storage``, creating it if there is none, of spec
        version ``create_version`` (``create``'s ``spec_version``; the repository found is
        opened whatever its version). ``create``'s rules apply: nothing is written beside
        other objects or over a repository of another spec version. Racing another
        process that creates it, this one waits for that creation to finish and opens
        the result."""
        limits = None if config is None else config.decompression_limits()
        probed = await configs.probe(storage, limits)
        if probed[0] is not None:  # one probe: what it read opens the repository
            effective, found = configs.opened(storage, config, *probed)
            return cls(storage, effective, authorize_virtual_chunk_access, spec_version=found)
        try:
            return await cls.create(
                storage,
                config,
                authorize_virtual_chunk_access,
                check_clean_root=check_clean_root,
                spec_version=create_version,
            )
        except RepositoryExistsError:
            await await_creation(storage)
            return await cls.open(storage, config, authorize_virtual_chunk_access)

    fetch_config = staticmethod(configs.fetch_config)
    save_config = configs.save_config

    # -- branches ---------------------------------------------------------------------

    async def list_branches(self) -> set[str]:
        """Names of all branches."""
        return await self._assets.list_branches()

    async def lookup_branch(self, name: str) -> str:
        """The snapshot id a branch points to."""
        ref_format.validate_ref_name(name, self.spec_version)
        return str((await self._assets.fetch_branch(name)).snapshot_id)

    @must_await("no branch was created")
    async def create_branch(self, name: str, snapshot_id: str | SnapshotId) -> None:
        """Create a branch at a snapshot; fails if the branch exists."""
        ref_format.validate_new_ref_name(name, self.spec_version)
        sid = _snapshot_id(snapshot_id)
        await self._assets.fetch_snapshot(sid)  # the snapshot must exist
        try:
            await self._assets.create_branch(name, sid)
        except PreconditionFailed:
            raise RefExistsError(f"branch {name!r} already exists") from None

    @must_await("the branch was not reset")
    async def reset_branch(
        self,
        name: str,
        snapshot_id: str | SnapshotId,
        *,
        from_snapshot_id: str | SnapshotId | None = None,
    ) -> None:
        """Point a branch at another snapshot (history on it is no longer on the branch).

        With ``from_snapshot_id``, only if the branch is at that snapshot: otherwise
        ``ConflictError`` (``expected_parent``, ``actual_parent``) and nothing changes,
        also when another writer moves the branch meanwhile.
        """
        ref_format.validate_ref_name(name, self.spec_version)
        sid = _snapshot_id(snapshot_id)
        expected = None if from_snapshot_id is None else _snapshot_id(from_snapshot_id)
        await self._assets.fetch_snapshot(sid)
        tip = await self._assets.fetch_branch(name)
        hint = "the branch was not reset"
        if expected is not None and tip.snapshot_id != expected:
            raise ConflictError(name, str(expected), str(tip.snapshot_id), hint=hint)
        try:
            await self._assets.move_branch(name, sid, tip)
        except ConflictError as err:
            raise ConflictError(name, err.expected, err.actual, hint=hint) from None

    @must_await("the branch was not deleted")
    async def delete_branch(self, name: str) -> None:
        """Delete a branch (not ``main``); its snapshots stay until garbage collection."""
        ref_format.validate_ref_name(name, self.spec_version)
        if name == "main":
            raise RepositoryError("the 'main' branch cannot be deleted")
        await self._assets.fetch_branch(name)
        await self._assets.delete_branch(name)

    # -- tags -------------------------------------------------------------------------

    async def list_tags(self) -> set[str]:
        """Names of all tags that were not deleted."""
        return await self._assets.list_tags()

    async def lookup_tag(self, name: str) -> str:
        """The snapshot id a tag points to."""
        ref_format.validate_ref_name(name, self.spec_version)
        return str(await self._assets.fetch_tag(name))

    @must_await("no tag was created")
    async def create_tag(self, name: str, snapshot_id: str | SnapshotId) -> None:
        """Create an immutable tag; a name in use, or ever deleted, is refused."""
        ref_format.validate_new_ref_name(name, self.spec_version)
        sid = _snapshot_id(snapshot_id)
        await self._assets.fetch_snapshot(sid)
        try:
            await self._assets.create_tag(name, sid)
        except PreconditionFailed:
            raise RefExistsError(
                f"tag {name!r} already exists or was deleted (tag names are never reused)"
            ) from None

    @must_await("the tag was not deleted")
    async def delete_tag(self, name: str) -> None:
        """Delete a tag; its name can never be used again."""
        ref_format.validate_ref_name(name, self.spec_version)
        await self._assets.fetch_tag(name)
        try:
            await self._assets.delete_tag(name)
        except PreconditionFailed:
            raise RefNotFoundError(f"tag {name!r} was already deleted") from None

    # -- history ----------------------------------------------------------------------

    async def _resolve(
        self,
        branch: str | None = None,
        tag: str | None = None,
        snapshot_id: str | SnapshotId | None = None,
    ) -> SnapshotId:
        given = [x for x in (branch, tag, snapshot_id) if x is not None]
        if len(given) != 1:
            raise ValueError("pass exactly one of branch=, tag=, snapshot_id=")
        if branch is not None:
            ref_format.validate_ref_name(branch, self.spec_version)
            return (await self._assets.fetch_branch(branch)).snapshot_id
        if tag is not None:
            ref_format.validate_ref_name(tag, self.spec_version)
            return await self._assets.fetch_tag(tag)
        assert snapshot_id is not None
        sid = _snapshot_id(snapshot_id)
        await self._assets.fetch_snapshot(sid)
        return sid

    async def ancestry(
        self,
        *,
        branch: str | None = None,
        tag: str | None = None,
        snapshot_id: str | SnapshotId | None = None,
    ) -> AsyncIterator[SnapshotInfo]:
        """The snapshot and its ancestors, newest first, back to the first commit."""
        start = await self._resolve(branch, tag, snapshot_id)
        async for snapshot in self._assets.history(start):
            yield SnapshotInfo.of(snapshot)

    def async_ancestry(
        self,
        *,
        branch: str | None = None,
        tag: str | None = None,
        snapshot_id: str | SnapshotId | None = None,
    ) -> AsyncIterator[SnapshotInfo]:
        """``ancestry`` under icechunk's name for its asynchronous form."""
        return self.ancestry(branch=branch, tag=tag, snapshot_id=snapshot_id)

    async def diff(
        self,
        *,
        from_branch: str | None = None,
        from_tag: str | None = None,
        from_snapshot_id: str | SnapshotId | None = None,
        to_branch: str | None = None,
        to_tag: str | None = None,
        to_snapshot_id: str | SnapshotId | None = None,
    ) -> Diff:
        """What changed from one snapshot to a later one (``from`` must be an ancestor).

        As in icechunk, the changes are those the transaction logs of the snapshots after
        ``from`` up to ``to`` record, named by the paths the nodes have in either snapshot:
        an array resized and resized back is "updated"; a node created and deleted in
        between is not listed.
        """
        start = await self._resolve(from_branch, from_tag, from_snapshot_id)
        end = await self._resolve(to_branch, to_tag, to_snapshot_id)
        return await history.diff(self._assets, start, end)

    # -- spec v2: the operations log and repository metadata (in v2ops) ---------------
    ops_log = v2ops.ops_log
    get_metadata = v2ops.get_metadata
    set_metadata = v2ops.set_metadata
    update_metadata = v2ops.update_metadata
    # -- status, feature flags, inspection; snapshot lookups (in v2admin) -------------
    get_status = v2admin.get_status
    set_status = v2admin.set_status
    feature_flags = v2admin.feature_flags
    enabled_feature_flags = v2admin.enabled_feature_flags
    disabled_feature_flags = v2admin.disabled_feature_flags
    set_feature_flag = v2admin.set_feature_flag
    inspect_repo_info = v2admin.inspect_repo_info
    lookup_snapshot = v2admin.lookup_snapshot
    list_manifest_files = v2admin.list_manifest_files
    fetch_spec_version = staticmethod(v2admin.fetch_spec_version)
    rearrange_session = rearrange.rearrange_session

    # -- sessions ---------------------------------------------------------------------

    def _session_config(self) -> SessionConfig:
        threshold = self._config.inline_chunk_threshold_bytes
        concurrency = self._config.get_partial_values_concurrency
        behind, ahead = self._config.write_behind_bytes, self._config.read_ahead_chunks
        return SessionConfig(
            INLINE_CHUNK_THRESHOLD_BYTES if threshold is None else threshold,
            READ_CONCURRENCY if concurrency is None else concurrency,
            write_behind_bytes=WRITE_BEHIND_BYTES if behind is None else behind,
            read_ahead_chunks=READ_AHEAD_CHUNKS if ahead is None else ahead,
        )

    def _virtual_resolver(self) -> VirtualResolver:
        if self._resolver is None:
            self._resolver = VirtualResolver(
                self._config.virtual_chunk_containers, self._credentials
            )
        return self._resolver

    async def writable_session(self, branch: str) -> Session:
        """A session that commits to ``branch``, starting at its tip."""
        ref_format.validate_ref_name(branch, self.spec_version)
        if not self._storage.driver().supports_writes:
            raise SessionStateError(
                f"storage {self._storage.driver().label} is read-only; open a readonly_session"
            )
        tip = await self._assets.fetch_branch(branch)
        await v2admin.require_online(self, "Cannot create writable session")
        return self._session_on(branch, tip.snapshot_id)

    def _session_on(self, branch: str, snapshot_id: SnapshotId, rearrange: bool = False) -> Session:
        """A session that commits to ``branch``, starting at ``snapshot_id``."""
        return Session(
            self._assets,
            snapshot_id,
            branch=branch,
            read_only=False,
            config=self._session_config(),
            virtual_resolver=self._virtual_resolver(),
            repository_config=self._config,
            commit_metadata=self._commit_metadata,
            rearrange=rearrange,
        )

    async def readonly_session(
        self,
        branch: str | None = None,
        *,
        tag: str | None = None,
        snapshot_id: str | SnapshotId | None = None,
        as_of: datetime | None = None,
    ) -> Session:
        """A read-only session at a branch tip, a tag or a snapshot; with ``as_of`` (and
        a branch), at the snapshot the branch was at then: the newest of its history
        written at or before ``as_of``, a datetime with a time zone."""
        if as_of is not None:
            if branch is None:
                raise ValueError("as_of argument must be provided together with a branch name")
            if tag is not None or snapshot_id is not None:
                raise ValueError("pass exactly one of branch=, tag=, snapshot_id=")
            ref_format.validate_ref_name(branch, self.spec_version)
            sid = await history.snapshot_as_of(self._assets, branch, as_of)
        else:
            sid = await self._resolve(branch, tag, snapshot_id)
        return Session(
            self._assets,
            sid,
            branch=branch,
            read_only=True,
            config=self._session_config(),
            virtual_resolver=self._virtual_resolver(),
            repository_config=self._config,
        )

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        branch: str,
        *,
        message: str,
        metadata: Mapping[str, Any] | None = None,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1000,
    ) -> AsyncIterator[IcechunkStore]:
        """A writable session on ``branch``, as its zarr store, committed on leaving the
        block: ``async with repo.transaction("main", message="...") as store:``.

        As icechunk's ``transaction``: an exception in the block propagates and nothing
        is committed (the session's changes are dropped); a block that changed nothing
        fails to commit (``SessionStateError``); ``rebase_with`` and ``rebase_tries`` are
        ``commit``'s.
        """
        session = await self.writable_session(branch)
        yield session.store
        await session.commit(message, metadata, rebase_with=rebase_with, rebase_tries=rebase_tries)
