"""Sessions: a view of one snapshot plus pending changes, and the commit that saves them.

A read-only session reads one snapshot. A writable session also records changes in a
``ChangeSet``; ``commit`` writes manifests, a transaction log and a snapshot, then moves
the branch with a conditional write (all or nothing), and the session is read-only since.

``Session`` is the facade: its state is a ``SessionState``, and the work is done by
``reads`` (nodes, chunks, status), ``flush`` and ``commit`` (commit and rebase), ``amend``,
``rearrange`` (moves) and ``payload`` (fork serialization), each a module of its own;
``saving`` and ``rearrange`` hold the facade's calls for them.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from aicechunk.assets import AssetManager
from aicechunk.awaited import must_await
from aicechunk.changes.changeset import ArrayDefinition, ChangeSet
from aicechunk.changes.chunktable import ChunkTable
from aicechunk.changes.conflicts import ConflictSolver
from aicechunk.changes.moves import MoveSet
from aicechunk.changes.validate import check_chunk_coords, check_chunk_ref, chunk_grid
from aicechunk.config import DEFAULT_DECOMPRESSION_LIMITS, DecompressionLimits, RepositoryConfig
from aicechunk.drivers.base import ByteRange
from aicechunk.errors import (
    ChunkIndexError,
    NodeNotFoundError,
    SessionStateError,
    UnrepresentableValueError,
)
from aicechunk.format import Coords
from aicechunk.format.ids import ChunkId, NodeId, SnapshotId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef
from aicechunk.format.snapshot import Snapshot
from aicechunk.session import merging, reads
from aicechunk.session.carried import inherit_pending
from aicechunk.session.payload import decode_fork, encode_fork
from aicechunk.session.readahead import ReadAhead
from aicechunk.session.reads import ChunkType, Diff, NodeView
from aicechunk.session.rearrange import Rearranging
from aicechunk.session.saving import Saving
from aicechunk.session.state import SessionConfig, SessionMode, SessionState
from aicechunk.session.uploads import Uploads
from aicechunk.store import IcechunkStore
from aicechunk.store.metadata import parse_metadata
from aicechunk.virtual import ChunkFetcher

__all__ = ["ForkSession", "Session"]


def _is_under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


class Session(Saving, Rearranging):
    """One snapshot of a repository, read-only or with pending changes on a branch (or,
    in a rearrange session, pending moves)."""

    def __init__(
        self,
        assets: AssetManager,
        snapshot_id: SnapshotId,
        *,
        branch: str | None,
        read_only: bool,
        config: SessionConfig | None = None,
        changes: ChangeSet | None = None,
        virtual_resolver: ChunkFetcher | None = None,
        repository_config: RepositoryConfig | None = None,
        commit_metadata: Mapping[str, Any] | None = None,
        rearrange: bool = False,
    ) -> None:
        self._state = SessionState(
            assets,
            snapshot_id,
            branch,
            read_only,
            config or SessionConfig(),
            changes or ChangeSet(),
            virtual_resolver,
            repository_config=repository_config,
            commit_metadata=dict(commit_metadata or {}),
            moves=MoveSet() if rearrange else None,
        )
        state = self._state
        if not read_only:
            state.uploads = Uploads(
                assets.write_chunk,
                max_bytes=state.config.write_behind_bytes,
                concurrency=state.config.upload_concurrency,
            )
        state.readahead = ReadAhead(
            assets.fetch_chunk,
            chunks=state.config.read_ahead_chunks,
            max_bytes=state.config.read_ahead_bytes,
        )

    @classmethod
    def _of(cls, state: SessionState) -> Any:
        session = cls.__new__(cls)
        session._state = state
        return session

    # -- properties -------------------------------------------------------------------

    @property
    def read_only(self) -> bool:
        """Whether the session refuses writes."""
        return self._state.read_only

    @property
    def snapshot_id(self) -> SnapshotId:
        """The snapshot this session reads (and, if writable, commits on top of)."""
        return self._state.snapshot_id

    @property
    def branch(self) -> str | None:
        """The branch a writable session commits to (``None`` for detached reads)."""
        return self._state.branch

    @property
    def has_uncommitted_changes(self) -> bool:
        """Whether anything was written (or moved) since the session started or last
        committed."""
        return self._state.has_changes()

    @property
    def config(self) -> RepositoryConfig:
        """The configuration of the repository this session reads, as icechunk's
        ``Session.config``. A fork rebuilt from a payload knows only the settings a
        session uses (inline threshold, read concurrency): the rest are defaults."""
        if self._state.repository_config is not None:
            return self._state.repository_config
        config = RepositoryConfig()
        config.inline_chunk_threshold_bytes = self._state.config.inline_chunk_threshold_bytes
        config.get_partial_values_concurrency = self._state.config.read_concurrency
        return config

    @property
    def read_concurrency(self) -> int:
        """How many reads ``get_partial_values`` runs at once."""
        return self._state.config.read_concurrency

    @property
    def store(self) -> IcechunkStore:
        """A zarr store reading and writing through this session."""
        return IcechunkStore(self)

    @property
    def changes(self) -> ChangeSet:
        """The pending change set (do not mutate)."""
        return self._state.changes

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else self.mode.name.lower()
        return f"<Session {mode} branch={self.branch!r} snapshot={self.snapshot_id}>"

    # -- nodes ------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """The base snapshot."""
        return await reads.base_snapshot(self._state)

    async def get_node(self, path: str) -> NodeView | None:
        """The group or array at ``path`` (``/`` is the root), or ``None``.

        ``InvalidNodePathError`` if ``path`` is not an absolute node path: a relative
        ``a/b`` names no node and would otherwise read as "absent" (icechunk refuses it).
        """
        return await reads.get_node(self._state, path)

    async def list_nodes(self) -> list[NodeView]:
        """Every node, sorted by path."""
        return await reads.list_nodes(self._state)

    async def get_metadata(self, path: str) -> bytes | None:
        """The zarr metadata document of the node at ``path``."""
        node = await self.get_node(path)
        return None if node is None else node.user_data

    async def set_metadata(self, path: str, data: bytes) -> None:
        """Create or update the node at ``path`` from its zarr metadata document."""
        self._state.check_writable()
        await self.set_node(path, data, parse_metadata(path, data))

    async def set_node(self, path: str, user_data: bytes, array: ArrayDefinition | None) -> None:
        """Create or update the node at ``path``: an array of definition ``array``, or a
        group if ``None``, with ``user_data`` as its metadata document. A node of the
        other kind there is replaced (it gets a new id, as a new node)."""
        state = self._state
        state.check_writable()
        if array is not None:
            state.check_grid(path, array)
        existing = await reads.get_node(state, path)
        changes = state.changes
        if existing is not None and existing.is_array != (array is not None):
            self._delete_one(existing)
            existing = None
        if existing is None:
            if array is None:
                changes.add_group(path, NodeId.random(), bytes(user_data))
            else:
                changes.add_array(path, NodeId.random(), array)
        elif existing.user_data != user_data:
            if array is None:
                changes.update_group(path, existing.id, bytes(user_data))
            else:
                changes.update_array(path, existing.id, array)

    def _delete_one(self, node: NodeView) -> None:
        if node.is_array:
            self._state.changes.delete_array(node.path, node.id)
        else:
            self._state.changes.delete_group(node.path, node.id)

    async def delete_node(self, path: str) -> None:
        """Delete an array, or a group with everything below it; absent nodes are fine."""
        self._state.check_writable()
        node = await self.get_node(path)
        if node is None:
            return
        if node.is_array:
            self._delete_one(node)
        else:
            await self.delete_prefix(path)

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every node at or below the node path ``prefix``."""
        self._state.check_writable()
        for node in await self.list_nodes():
            if _is_under(node.path, prefix):
                self._delete_one(node)

    async def clear(self) -> None:
        """Delete every node and chunk."""
        await self.delete_prefix("/")

    # -- chunks -----------------------------------------------------------------------

    async def get_chunk_ref(self, path: str, coords: Coords) -> ChunkRef | None:
        """The reference of one chunk, or ``None`` if it has none."""
        return await reads.chunk_ref(self._state, path, coords)

    async def get_chunk(
        self, path: str, coords: Coords, byte_range: ByteRange | None = None
    ) -> bytes | None:
        """A chunk's bytes (or part of them), ``None`` if the chunk was never written."""
        return await reads.read_chunk(self._state, path, coords, byte_range)

    async def chunk_size(self, path: str, coords: Coords) -> int | None:
        """A chunk's size in bytes without reading it, ``None`` if it was never written."""
        ref = await self.get_chunk_ref(path, coords)
        if ref is None:
            return None
        return len(ref.data) if isinstance(ref, InlineRef) else ref.length

    async def set_chunk(self, path: str, coords: Coords, data: bytes) -> None:
        """Write a chunk: small ones inline in the manifest, others as chunk files."""
        state = self._state
        state.check_writable()
        _, coords = await reads.array_for_chunk(state, path, coords)
        ref: ChunkRef
        if len(data) <= state.config.inline_chunk_threshold_bytes:
            ref = InlineRef(bytes(data))
        else:
            chunk_id = ChunkId.random()
            if state.uploads is None:
                await state.assets.write_chunk(chunk_id, data)
            else:
                await state.uploads.put(chunk_id, bytes(data))
            ref = NativeRef(chunk_id, 0, len(data))
        # re-read: the node may have been replaced while the chunk was written
        current, _ = await reads.get_array(state, path)
        state.changes.set_chunk(current.id, coords, ref)

    async def set_chunk_ref(self, path: str, coords: Coords, ref: ChunkRef) -> None:
        """Record an existing reference (e.g. a virtual one) for a chunk."""
        self._state.check_writable()
        node, coords = await reads.array_for_chunk(self._state, path, coords)
        check_chunk_ref(f"chunk {list(coords)} of array {path!r}", ref)
        self._state.changes.set_chunk(node.id, coords, ref)

    async def set_chunk_table(self, path: str, table: ChunkTable) -> None:
        """Record many chunk changes of the array at ``path`` at once, held column by column
        (no object per chunk; the store's bulk virtual reference calls make such tables)."""
        self._state.check_writable()
        node, definition = await reads.get_array(self._state, path)
        row = table.first_off_grid(chunk_grid(definition))
        if row is not None:
            coords = tuple(table.coords[row].tolist())
            raise ChunkIndexError(path, coords, chunk_grid(definition), row=row)
        self._state.changes.add_chunk_table(node.id, table)

    def has_virtual_container(self, location: str) -> bool:
        """Whether a declared virtual chunk container serves ``location``."""
        virtual = self._state.virtual
        return virtual is not None and virtual.container_for(location) is not None

    async def chunk_type(self, array_path: str, chunk_coordinates: Sequence[int]) -> ChunkType:
        """Where a chunk's bytes are: ``ChunkType.NATIVE``, ``INLINE``, ``VIRTUAL``, or
        ``UNINITIALIZED`` (also off the chunk grid). ``NodeNotFoundError`` if there is no
        array at ``array_path``, as in icechunk."""
        await reads.get_array(self._state, array_path)
        return ChunkType.of(await self.get_chunk_ref(array_path, tuple(chunk_coordinates)))

    async def all_virtual_chunk_locations(self) -> list[str]:
        """Every distinct URL that virtual chunks of this snapshot point into."""
        return await reads.virtual_chunk_locations(self._state)

    async def delete_chunk(self, path: str, coords: Coords) -> None:
        """Delete one chunk (reads then see the fill value)."""
        self._state.check_writable()
        node = await self.get_node(path)
        if node is None or node.array is None:
            return
        try:
            coords = check_chunk_coords(path, coords, node.array)
        except (ChunkIndexError, UnrepresentableValueError):
            return  # no chunk can be there
        self._state.changes.set_chunk(node.id, coords, None)

    async def chunk_coordinates(
        self, array_path: str, batch_size: int = 1000
    ) -> AsyncIterator[Coords]:
        """Coordinates of every chunk of the array at ``array_path`` that has a reference,
        sorted. As icechunk: ``InvalidNodePathError`` (a ``ValueError``) for a relative
        path, ``NodeNotFoundError`` where there is no array; ``batch_size`` is accepted
        (the coordinates come from manifests in memory: there are no batches to size)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        node = await reads.get_node(self._state, array_path)
        if node is None or node.array is None:
            raise NodeNotFoundError(array_path, "array")
        async for coords in reads.array_chunk_coords(self._state, node):
            yield coords

    def chunk_coords(self, path: str) -> AsyncIterator[Coords]:
        """As ``chunk_coordinates``, but none where there is no array (the store's use)."""
        return reads.chunk_coords(self._state, path)

    # -- status -----------------------------------------------------------------------

    async def status(self) -> Diff:
        """The pending changes as a ``Diff``."""
        return await reads.status(self._state)

    def discard_changes(self) -> None:
        """Forget every pending change (chunk files already written become garbage)."""
        self._state.check_writable(rearrange_ok=True)
        self._state.discard()

    # -- forks ------------------------------------------------------------------------

    def fork(self) -> ForkSession:
        """A session to hand to a worker (task, process, Dask worker) that writes in parallel.

        Only a writable session without uncommitted changes can fork (a committed one is
        read-only, as in icechunk: fork a new one). Bring forks back with ``merge``.
        """
        if self.read_only:
            if self._state.saved_as is not None:
                self._state.check_writable(saving=True)  # says which commit ended it
            raise SessionStateError("a read-only session cannot fork; use a writable session")
        if self.has_uncommitted_changes:
            raise SessionStateError(
                "cannot fork a session with uncommitted changes: commit them, then fork a new "
                "writable session, so that every fork starts from the same snapshot"
            )
        return self._fork(ChangeSet())

    def _fork(self, changes: ChangeSet) -> ForkSession:
        s = self._state
        state = SessionState(s.assets, s.snapshot_id, s.branch, False, s.config, changes, s.virtual)
        state.repository_config = s.repository_config
        fork: ForkSession = ForkSession._of(state)
        return fork

    def fork_with_changes(self) -> ForkSession:
        """A fork that also sees this session's pending changes, for integrations that
        write metadata first and then fan chunk writes out (like ``to_icechunk``).

        Merging it back re-applies those changes unchanged. Chunks this session still
        uploads (write-behind) are read from here by the fork in this process, and
        travel in its payload to other processes; this session's commit waits for them."""
        self._state.check_writable()
        fork = self._fork(copy.deepcopy(self._state.changes))
        inherit_pending(fork._state, self._state)  # chunks it names still uploading here
        return fork

    @must_await("nothing was merged")
    async def merge(self, *forks: ForkSession) -> None:
        """Fold the changes of ``forks`` into this session.

        Every fork must come from this repository, branch and base snapshot. Where two
        forks wrote the same chunk or node, the later argument wins (Icechunk's rule).
        Chunk data is already in storage, so merging moves only references: it costs
        O(total changes) and no I/O. Forks rebuilt from payloads are first checked
        against the base snapshot (``ForkPayloadError``; nothing is merged then).
        """
        self._state.check_writable()
        for fork in forks:
            if not isinstance(fork, ForkSession):
                raise SessionStateError(
                    f"can only merge ForkSessions (from session.fork()), got {type(fork).__name__}"
                )
            merging.check_mergeable(self._state, fork._state)
        await merging.merge(self._state, [fork._state for fork in forks])

    def allow_pickling(self) -> None:
        """Removed: pickling writable sessions was replaced by ``Session.fork()``."""
        raise SessionStateError(
            "Session.allow_pickling() was removed: use session.fork() to send a session to "
            "workers and session.merge(*forks) to bring the changes back. Pickling a session "
            "with changes could let the same changes be merged twice."
        )

    def __getstate__(self) -> dict[str, Any]:
        if not self.read_only:
            raise SessionStateError(
                "a writable Session cannot be pickled: use session.fork(), whose ForkSession "
                "pickles (and serializes with to_bytes())"
            )
        return {"state": self._state.to_pickle()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._state = state["state"]


class ForkSession(Session):
    """A writable session for a worker: it writes, then goes back to be merged.

    It serializes to a compact, versioned payload (``to_bytes``, also used by pickle)
    holding the storage description, the base snapshot, the branch and the pending
    changes; its size grows with the changes, not with the repository. A fork cannot
    commit, amend or rebase: merge it into the session it came from.
    """

    async def commit(
        self,
        message: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1000,
        allow_empty: bool = False,
    ) -> SnapshotId:
        """Refused: a fork's changes are committed by the session it is merged into."""
        raise SessionStateError(
            "a ForkSession cannot commit: merge it into its parent session "
            "(await session.merge(fork)) and commit there"
        )

    async def amend(
        self,
        message: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        allow_empty: bool = False,
    ) -> SnapshotId:
        """Refused: a fork's changes are committed by the session it is merged into."""
        raise SessionStateError(
            "a ForkSession cannot amend: merge it into its parent session and amend there"
        )

    async def flush(self, message: str, metadata: Mapping[str, Any] | None = None) -> SnapshotId:
        """Refused: a fork's changes are saved by the session it is merged into."""
        raise SessionStateError(
            "a ForkSession cannot flush: merge it into its parent session and flush there"
        )

    async def rebase(self, solver: ConflictSolver) -> None:
        """Refused: rebase the parent session after merging."""
        raise SessionStateError("a ForkSession cannot rebase: merge it, then rebase the parent")

    @must_await("nothing was merged")
    async def merge(self, *forks: ForkSession) -> None:
        """Fold other forks into this one (tree reductions); later arguments win."""
        await super().merge(*forks)

    def fork(self) -> ForkSession:
        """Refused: fork the parent session instead."""
        raise SessionStateError("a ForkSession cannot fork; fork the parent session")

    @property
    def mode(self) -> SessionMode:
        """``SessionMode.READONLY``, as icechunk reports a fork's (one on no branch),
        though it takes writes."""
        return SessionMode.READONLY

    def __repr__(self) -> str:
        return f"<ForkSession branch={self.branch!r} snapshot={self.snapshot_id}>"

    def to_bytes(self) -> bytes:
        """The fork as a versioned, checksummed binary payload."""
        return encode_fork(self._state)

    @classmethod
    def from_bytes(
        cls, payload: bytes, limits: DecompressionLimits = DEFAULT_DECOMPRESSION_LIMITS
    ) -> ForkSession:
        """Rebuild a fork from ``to_bytes()``; ``ForkPayloadError`` on a bad payload.

        The payload decompresses within ``limits`` of its size, and every change in it
        is checked as the session API checks it (paths, zarr metadata, chunk grids,
        values the format can hold); ``merge`` checks the rest against the base snapshot.
        """
        fork: ForkSession = cls._of(decode_fork(payload, limits, False))
        return fork

    def __reduce__(self) -> tuple[object, ...]:
        # a pickle's reader trusts it: a refreshable credentials callable comes back too
        return (_unpickle_fork, (self.to_bytes(),))


def _unpickle_fork(payload: bytes) -> ForkSession:
    fork: ForkSession = ForkSession._of(decode_fork(payload, DEFAULT_DECOMPRESSION_LIMITS, True))
    return fork
