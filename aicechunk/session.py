"""Sessions: a view of one snapshot plus pending changes, and the commit that saves them.

A read-only session reads one snapshot. A writable session also records changes in a
``ChangeSet``; ``commit`` writes manifests, a transaction log and a snapshot, then moves
the branch with a conditional write, so a commit is all or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
import numpy as np
import zstandard

from aicechunk.assets import AssetManager, RefInfo
from aicechunk.changeset import ArrayDefinition, ChangeSet, Coords
from aicechunk.config import DEFAULT_DECOMPRESSION_LIMITS, DecompressionLimits
from aicechunk.drivers.base import ByteRange, RangeRequest, range_bounds
from aicechunk.errors import (
    AicechunkError,
    ChunkIndexError,
    CommitOutcomeUnknownError,
    ConflictError,
    ForkPayloadError,
    FormatError,
    InvalidMetadataError,
    PreconditionFailed,
    ReadOnlyError,
    SessionStateError,
    StorageError,
    UnrepresentableValueError,
)
from aicechunk.format import refs as ref_format
from aicechunk.format.header import decompress_bounded
from aicechunk.format.ids import ChunkId, ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import (
    ChunkRef,
    InlineRef,
    NativeRef,
    VirtualRef,
    encode_array_manifest,
    encode_array_manifest_columns,
)
from aicechunk.format.metadata import check_commit_properties
from aicechunk.format.snapshot import (
    ArrayNodeData,
    GroupNodeData,
    ManifestFileInfo,
    ManifestRef,
    NodeSnapshot,
    Snapshot,
)
from aicechunk.format.transaction_log import TransactionLog
from aicechunk.nodes import (
    BaseNodes,
    check_changes,
    check_chunk_coords,
    check_chunk_ref,
    check_node_path,
    chunk_grid,
    in_logged_extent,
    on_grid,
    parse_metadata,
)

if TYPE_CHECKING:
    from aicechunk.conflicts import ConflictSolver
    from aicechunk.store import IcechunkStore

__all__ = ["Diff", "ForkPayloadError", "ForkSession", "NodeView", "Session", "SessionConfig"]

DEFAULT_INLINE_THRESHOLD = 512


class NodeNotFoundError(AicechunkError, KeyError):
    """No group or array at a path."""

    def __init__(self, path: str, what: str = "node"):
        self.path = path
        super().__init__(f"no {what} at {path!r}")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as the session sees it: snapshot state with pending changes applied."""

    path: str
    id: NodeId
    user_data: bytes
    array: ArrayDefinition | None
    # manifests holding the node's chunks in the base snapshot (empty for new nodes)
    manifests: tuple[ManifestRef, ...] = ()

    @property
    def is_array(self) -> bool:
        """Whether the node is an array (else a group)."""
        return self.array is not None


@dataclass
class Diff:
    """What changed between two snapshots, or in a session.

    Paths of new, deleted and updated groups and arrays, and per array path the
    coordinates of chunks written or deleted.
    """

    new_groups: set[str] = field(default_factory=set)
    new_arrays: set[str] = field(default_factory=set)
    deleted_groups: set[str] = field(default_factory=set)
    deleted_arrays: set[str] = field(default_factory=set)
    updated_groups: set[str] = field(default_factory=set)
    updated_arrays: set[str] = field(default_factory=set)
    updated_chunks: dict[str, set[Coords]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """Whether nothing changed."""
        return not any(
            (
                self.new_groups,
                self.new_arrays,
                self.deleted_groups,
                self.deleted_arrays,
                self.updated_groups,
                self.updated_arrays,
                self.updated_chunks,
            )
        )


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The parts of the repository configuration a session uses."""

    inline_chunk_threshold_bytes: int = DEFAULT_INLINE_THRESHOLD
    read_concurrency: int = 64


def _is_under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


class Session:
    """One snapshot of a repository, read-only or with pending changes on a branch."""

    def __init__(
        self,
        assets: AssetManager,
        snapshot_id: SnapshotId,
        *,
        branch: str | None,
        read_only: bool,
        config: SessionConfig | None = None,
        changes: ChangeSet | None = None,
        virtual_resolver: Any = None,
    ) -> None:
        self._assets = assets
        self._snapshot_id = snapshot_id
        self._branch = branch
        self._read_only = read_only
        self._config = config or SessionConfig()
        self._changes = changes or ChangeSet()
        self._virtual = virtual_resolver
        self._token = uuid.uuid4().hex
        # a commit whose branch update may or may not have landed (see ``commit``)
        self._unsettled: SnapshotId | None = None
        # changes that came in a fork payload are checked against the base when merged
        self._from_payload = False

    # -- properties -------------------------------------------------------------------

    @property
    def read_only(self) -> bool:
        """Whether the session refuses writes."""
        return self._read_only

    @property
    def snapshot_id(self) -> SnapshotId:
        """The snapshot this session reads (and, if writable, commits on top of)."""
        return self._snapshot_id

    @property
    def branch(self) -> str | None:
        """The branch a writable session commits to (``None`` for detached reads)."""
        return self._branch

    @property
    def has_uncommitted_changes(self) -> bool:
        """Whether anything was written since the session started or last committed."""
        return not self._changes.is_empty()

    @property
    def read_concurrency(self) -> int:
        """How many reads ``get_partial_values`` runs at once."""
        return self._config.read_concurrency

    @property
    def store(self) -> IcechunkStore:
        """A zarr store reading and writing through this session."""
        from aicechunk.store import IcechunkStore

        return IcechunkStore(self)

    @property
    def changes(self) -> ChangeSet:
        """The pending change set (do not mutate)."""
        return self._changes

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "writable"
        return f"<Session {mode} branch={self._branch!r} snapshot={self._snapshot_id}>"

    def _check_writable(self, *, unsettled_ok: bool = False) -> None:
        if self._read_only:
            raise ReadOnlyError("this session is read-only; use repo.writable_session(branch)")
        if self._unsettled is not None and not unsettled_ok:
            raise SessionStateError(
                f"whether this session's last commit (snapshot {self._unsettled}) landed is "
                "unknown: commit again to find out before making more changes"
            )

    # -- nodes ------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """The base snapshot."""
        return await self._assets.fetch_snapshot(self._snapshot_id)

    def _view(self, node: NodeSnapshot) -> NodeView:
        changes = self._changes
        if isinstance(node.node_data, ArrayNodeData):
            definition = changes.updated_arrays.get(node.id)
            if definition is None:
                definition = ArrayDefinition(
                    tuple(node.node_data.shape),
                    None
                    if node.node_data.dimension_names is None
                    else tuple(node.node_data.dimension_names),
                    node.user_data,
                )
            return NodeView(
                node.path,
                node.id,
                definition.user_data,
                definition,
                tuple(node.node_data.manifests),
            )
        user_data = changes.updated_groups.get(node.id, node.user_data)
        return NodeView(node.path, node.id, user_data, None)

    async def get_node(self, path: str) -> NodeView | None:
        """The group or array at ``path`` (``/`` is the root), or ``None``.

        ``InvalidNodePathError`` if ``path`` is not an absolute node path: a relative
        ``a/b`` names no node and would otherwise read as "absent" (icechunk refuses it).
        """
        check_node_path(path)
        changes = self._changes
        if path in changes.new_groups:
            nid, data = changes.new_groups[path]
            return NodeView(path, nid, data, None)
        if path in changes.new_arrays:
            nid, definition = changes.new_arrays[path]
            return NodeView(path, nid, definition.user_data, definition)
        if changes.is_deleted(path):
            return None
        node = (await self.snapshot()).get_node(path)
        return None if node is None else self._view(node)

    async def list_nodes(self) -> list[NodeView]:
        """Every node, sorted by path."""
        snap = await self.snapshot()
        views = [self._view(n) for n in snap.nodes if not self._changes.is_deleted(n.path)]
        for path in self._changes.new_node_paths():
            view = await self.get_node(path)
            if view is not None:
                views.append(view)
        views.sort(key=lambda v: v.path)
        return views

    async def get_metadata(self, path: str) -> bytes | None:
        """The zarr metadata document of the node at ``path``."""
        node = await self.get_node(path)
        return None if node is None else node.user_data

    async def set_metadata(self, path: str, data: bytes) -> None:
        """Create or update the node at ``path`` from its zarr metadata document."""
        self._check_writable()
        check_node_path(path)
        definition = parse_metadata(path, data)
        existing = await self.get_node(path)
        if existing is not None and existing.is_array != (definition is not None):
            # the node changes kind: the old one goes, a new one (new id) takes its place
            self._delete_one(existing)
            existing = None
        if existing is None:
            if definition is None:
                self._changes.add_group(path, NodeId.random(), bytes(data))
            else:
                self._changes.add_array(path, NodeId.random(), definition)
        elif existing.user_data != data:
            if definition is None:
                self._changes.update_group(path, existing.id, bytes(data))
            else:
                self._changes.update_array(path, existing.id, definition)

    def _delete_one(self, node: NodeView) -> None:
        if node.is_array:
            self._changes.delete_array(node.path, node.id)
        else:
            self._changes.delete_group(node.path, node.id)

    async def delete_node(self, path: str) -> None:
        """Delete an array, or a group with everything below it; absent nodes are fine."""
        self._check_writable()
        node = await self.get_node(path)
        if node is None:
            return
        if node.is_array:
            self._delete_one(node)
        else:
            await self._delete_under(path)

    async def _delete_under(self, prefix: str) -> None:
        for node in await self.list_nodes():
            if _is_under(node.path, prefix):
                self._delete_one(node)

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every node at or below ``prefix`` and, inside an array, its chunks."""
        self._check_writable()
        await self._delete_under(prefix)
        # a prefix inside an array's chunk space: "/arr/c" or "/arr/c/1"
        parts = prefix.rstrip("/").split("/")
        for i in range(len(parts) - 1, 0, -1):
            if parts[i] == "c":
                array_path = "/".join(parts[:i]) or "/"
                node = await self.get_node(array_path)
                if node is not None and node.is_array:
                    head = tuple(int(p) for p in parts[i + 1 :] if p.isdigit())
                    async for coords in self.chunk_coords(array_path):
                        if coords[: len(head)] == head:
                            self._changes.set_chunk(node.id, coords, None)
                break

    async def clear(self) -> None:
        """Delete every node and chunk."""
        self._check_writable()
        await self._delete_under("/")

    # -- chunks -----------------------------------------------------------------------

    async def _array(self, path: str) -> NodeView:
        node = await self.get_node(path)
        if node is None or node.array is None:
            raise NodeNotFoundError(path, "array")
        return node

    async def _array_for_chunk(self, path: str, coords: Coords) -> tuple[NodeView, Coords]:
        """The array at ``path`` and ``coords`` as ints, checking they lie on its chunk
        grid and the format can hold them."""
        node = await self._array(path)
        assert node.array is not None
        return node, check_chunk_coords(path, coords, node.array)

    async def _base_ref(self, node: NodeView, coords: Coords) -> ChunkRef | None:
        for mref in node.manifests:
            if all(lo <= c < hi for c, (lo, hi) in zip(coords, mref.extents, strict=False)):
                manifest = await self._assets.fetch_manifest(mref.object_id)
                ref = manifest.lookup(node.id, coords)
                if ref is not None:
                    return ref
        return None

    async def get_chunk_ref(self, path: str, coords: Coords) -> ChunkRef | None:
        """The reference of one chunk, or ``None`` if it has none."""
        node = await self.get_node(path)
        if node is None or node.array is None:
            return None
        changed = self._changes.chunk_changes(node.id)
        if coords in changed:
            return changed[coords]
        return await self._base_ref(node, coords)

    async def get_chunk(
        self, path: str, coords: Coords, byte_range: ByteRange | None = None
    ) -> bytes | None:
        """A chunk's bytes (or part of them), ``None`` if the chunk was never written."""
        ref = await self.get_chunk_ref(path, coords)
        if ref is None:
            return None
        if isinstance(ref, InlineRef):
            start, stop = range_bounds(byte_range, len(ref.data))
            return bytes(ref.data[start:stop])
        start, stop = range_bounds(byte_range, ref.length)
        inner = RangeRequest(ref.offset + start, stop - start)
        if isinstance(ref, NativeRef):
            return await self._assets.fetch_chunk(ref.chunk_id, inner)
        if self._virtual is None:
            raise SessionStateError(
                f"chunk {list(coords)} of {path!r} is virtual ({ref.location}); "
                "virtual chunk access needs an authorized virtual chunk container"
            )
        data: bytes = await self._virtual.fetch(ref, inner)
        return data

    async def chunk_size(self, path: str, coords: Coords) -> int | None:
        """A chunk's size in bytes without reading it, ``None`` if it was never written."""
        ref = await self.get_chunk_ref(path, coords)
        if ref is None:
            return None
        return len(ref.data) if isinstance(ref, InlineRef) else ref.length

    async def set_chunk(self, path: str, coords: Coords, data: bytes) -> None:
        """Write a chunk: small ones inline in the manifest, others as chunk files."""
        self._check_writable()
        _, coords = await self._array_for_chunk(path, coords)
        ref: ChunkRef
        if len(data) <= self._config.inline_chunk_threshold_bytes:
            ref = InlineRef(bytes(data))
        else:
            chunk_id = ChunkId.random()
            await self._assets.write_chunk(chunk_id, data)
            ref = NativeRef(chunk_id, 0, len(data))
        # re-read: the node may have been replaced while the chunk was written
        current = await self._array(path)
        self._changes.set_chunk(current.id, coords, ref)

    async def set_chunk_ref(self, path: str, coords: Coords, ref: ChunkRef) -> None:
        """Record an existing reference (e.g. a virtual one) for a chunk."""
        self._check_writable()
        node, coords = await self._array_for_chunk(path, coords)
        check_chunk_ref(f"chunk {list(coords)} of array {path!r}", ref)
        self._changes.set_chunk(node.id, coords, ref)

    def has_virtual_container(self, location: str) -> bool:
        """Whether a declared virtual chunk container serves ``location``."""
        return self._virtual is not None and self._virtual.container_for(location) is not None

    async def chunk_type(self, path: str, coords: Coords) -> str:
        """``native``, ``inline``, ``virtual`` or ``uninitialized``."""
        ref = await self.get_chunk_ref(path, coords)
        if ref is None:
            return "uninitialized"
        return {NativeRef: "native", InlineRef: "inline"}.get(type(ref), "virtual")

    async def all_virtual_chunk_locations(self) -> list[str]:
        """Every distinct URL that virtual chunks of this snapshot point into."""
        found: set[str] = set()
        for node in await self.list_nodes():
            if not node.is_array:
                continue
            async for coords in self.chunk_coords(node.path):
                ref = await self.get_chunk_ref(node.path, coords)
                if isinstance(ref, VirtualRef):
                    found.add(ref.location)
        return sorted(found)

    async def delete_chunk(self, path: str, coords: Coords) -> None:
        """Delete one chunk (reads then see the fill value)."""
        self._check_writable()
        node = await self.get_node(path)
        if node is None or node.array is None:
            return
        try:
            coords = check_chunk_coords(path, coords, node.array)
        except (ChunkIndexError, UnrepresentableValueError):
            return  # no chunk can be there
        self._changes.set_chunk(node.id, coords, None)

    async def _base_refs(self, node: NodeView) -> dict[Coords, ChunkRef]:
        refs: dict[Coords, ChunkRef] = {}
        manifests = await asyncio.gather(
            *(self._assets.fetch_manifest(m.object_id) for m in node.manifests)
        )
        for manifest in manifests:
            for coords, ref in manifest.iter_node(node.id):
                refs[coords] = ref
        return refs

    async def chunk_coords(self, path: str) -> AsyncIterator[Coords]:
        """Coordinates of every chunk of the array at ``path`` that has a reference."""
        node = await self.get_node(path)
        if node is None or node.array is None:
            return
        changed = self._changes.chunk_changes(node.id)
        base = await self._base_refs(node)
        coords = {c for c in base if c not in changed}
        coords.update(c for c, r in changed.items() if r is not None)
        grid = chunk_grid(node.array)  # a shrunk array has no chunks past its end
        for c in sorted(coords):
            if on_grid(c, grid):
                yield c

    # -- status -----------------------------------------------------------------------

    async def status(self) -> Diff:
        """The pending changes as a ``Diff``."""
        changes = self._changes
        snap = await self.snapshot()
        by_id = {n.id: n.path for n in snap.nodes}
        paths = {nid: p for p, (nid, _) in changes.new_arrays.items()} | by_id
        diff = Diff(
            new_groups=set(changes.new_groups),
            new_arrays=set(changes.new_arrays),
            deleted_groups=set(changes.deleted_groups),
            deleted_arrays=set(changes.deleted_arrays),
            updated_groups={by_id[n] for n in changes.updated_groups if n in by_id},
            updated_arrays={by_id[n] for n in changes.updated_arrays if n in by_id},
        )
        for nid, coords in self._logged_chunk_changes(await self._grids()).items():
            if nid in paths:
                diff.updated_chunks[paths[nid]] = set(coords)
        return diff

    def _logged_chunk_changes(
        self, grids: Mapping[NodeId, tuple[int, ...]]
    ) -> dict[NodeId, tuple[Coords, ...]]:
        """The chunk changes a commit logs, per array (``grids``: the arrays that exist):
        those past a shrunk array's end are not changes of the new snapshot, but, as in
        icechunk, an array with chunk changes keeps its entry even when none is left."""
        c = self._changes
        changed = {nid: c.chunk_changes_coords(nid) for nid in c.chunk_nodes()}
        return {
            nid: tuple(x for x in coords if in_logged_extent(x, grids[nid]))
            for nid, coords in changed.items()
            if coords and nid in grids
        }

    async def _grids(self, views: list[NodeView] | None = None) -> dict[NodeId, tuple[int, ...]]:
        """The chunk grid of every array as this session sees it (of ``views``, if given)."""
        if views is None:
            views = await self.list_nodes()
        return {n.id: chunk_grid(n.array) for n in views if n.array}

    def discard_changes(self) -> None:
        """Forget every pending change (chunk files already written become garbage)."""
        self._check_writable()
        self._changes = ChangeSet()

    # -- forks ------------------------------------------------------------------------

    def fork(self) -> ForkSession:
        """A session to hand to a worker (task, process, Dask worker) that writes in parallel.

        Only a writable session without uncommitted changes can fork: commit first, so
        that every fork starts from the same snapshot. Bring forks back with ``merge``.
        """
        if self._read_only:
            raise SessionStateError("a read-only session cannot fork; use a writable session")
        if self.has_uncommitted_changes:
            raise SessionStateError(
                "cannot fork a session with uncommitted changes: commit them first, so every "
                "fork starts from the same snapshot"
            )
        return ForkSession(
            self._assets,
            self._snapshot_id,
            branch=self._branch,
            read_only=False,
            config=self._config,
            virtual_resolver=self._virtual,
        )

    def _fork_carrying_changes(self) -> ForkSession:
        """A fork that also sees this session's pending changes (for integrations that
        write metadata first and then fan chunk writes out, like ``to_icechunk``).

        Merging it back re-applies those changes unchanged."""
        self._check_writable()
        return ForkSession(
            self._assets,
            self._snapshot_id,
            branch=self._branch,
            read_only=False,
            config=self._config,
            changes=copy.deepcopy(self._changes),
            virtual_resolver=self._virtual,
        )

    def _check_mergeable(self, fork: Session) -> None:
        if not isinstance(fork, ForkSession):
            raise SessionStateError(
                f"can only merge ForkSessions (from session.fork()), got {type(fork).__name__}"
            )
        if fork._assets.driver.label != self._assets.driver.label:
            raise SessionStateError(
                f"fork is from another repository ({fork._assets.driver.label}, "
                f"not {self._assets.driver.label})"
            )
        if fork._branch != self._branch:
            raise SessionStateError(
                f"fork is from branch {fork._branch!r}, this session is on {self._branch!r}"
            )
        if fork._snapshot_id != self._snapshot_id:
            raise SessionStateError(
                f"fork starts at snapshot {fork._snapshot_id}, this session at "
                f"{self._snapshot_id}: forks merge only into the session state they came from"
            )

    async def merge(self, *forks: ForkSession) -> None:
        """Fold the changes of ``forks`` into this session.

        Every fork must come from this repository, branch and base snapshot. Where two
        forks wrote the same chunk or node, the later argument wins (Icechunk's rule).
        Chunk data is already in storage, so merging moves only references: it costs
        O(total changes) and no I/O. Forks rebuilt from payloads are first checked
        against the base snapshot (``ForkPayloadError``; nothing is merged then).
        """
        self._check_writable()
        for fork in forks:
            self._check_mergeable(fork)
        if any(fork._from_payload for fork in forks):
            base = BaseNodes(await self.snapshot())
            for fork in forks:
                if fork._from_payload:
                    try:
                        check_changes(fork._changes, base)
                    except (AicechunkError, ValueError) as err:
                        raise ForkPayloadError(f"fork payload refused: {err}") from err
        for fork in forks:
            self._changes.merge(fork._changes)

    def allow_pickling(self) -> None:
        """Removed: pickling writable sessions was replaced by ``Session.fork()``."""
        raise SessionStateError(
            "Session.allow_pickling() was removed: use session.fork() to send a session to "
            "workers and session.merge(*forks) to bring the changes back. Pickling a session "
            "with changes could let the same changes be merged twice."
        )

    def __getstate__(self) -> dict[str, Any]:
        if not self._read_only:
            raise SessionStateError(
                "a writable Session cannot be pickled: use session.fork(), whose ForkSession "
                "pickles (and serializes with to_bytes())"
            )
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- commit -----------------------------------------------------------------------

    async def _flush(self, message: str, metadata: Mapping[str, Any]) -> Snapshot:
        """Write manifests, transaction log and snapshot for the pending changes."""
        snapshot_id = SnapshotId.random()
        views = await self.list_nodes()  # listed once: the log and the manifests use them
        grids = await self._grids(views)
        # listing (and, for merged forks, combining) many chunk changes: off the loop
        if self._changes.chunk_change_rows() >= _THREAD_LOG_ROWS:
            log = await asyncio.to_thread(self._transaction_log, snapshot_id, grids)
        else:
            log = self._transaction_log(snapshot_id, grids)
        # the transaction log does not depend on the manifests: write it meanwhile
        log_written = asyncio.ensure_future(self._assets.write_transaction_log(log))
        try:
            return await self._flush_rest(snapshot_id, message, metadata, views, log_written)
        except BaseException:
            log_written.cancel()
            with contextlib.suppress(BaseException):
                await log_written
            raise

    async def _flush_rest(
        self,
        snapshot_id: SnapshotId,
        message: str,
        metadata: Mapping[str, Any],
        views: list[NodeView],
        log_written: asyncio.Future[None],
    ) -> Snapshot:
        base = await self.snapshot()
        changes = self._changes
        known_files = {f.id: f for f in base.manifest_files}
        nodes: list[NodeSnapshot] = []
        new_files: list[tuple[ManifestFileInfo, bytes]] = []

        async def array_node(view: NodeView) -> NodeSnapshot:
            assert view.array is not None
            manifests = view.manifests
            grid = chunk_grid(view.array)
            # a shrunk array drops the stored chunks past its new end (as icechunk does)
            shrunk = any(
                hi > g for m in manifests for (_, hi), g in zip(m.extents, grid, strict=False)
            )
            table = None if view.manifests else changes.chunk_table(view.id)
            past_end = (
                table is not None
                and len(table) > 0
                and table.ndim > 0
                and bool((table.coords >= np.asarray(grid, dtype=np.int64)).any())
            )
            if past_end:
                table = None  # rows past the end: resolved one by one below
            if table is not None:  # merged forks' tables: encoded column by column
                cols = table.ref_columns()
                manifests = ()
                if len(cols):
                    manifest_id = ManifestId.random()
                    data, extents = await asyncio.to_thread(
                        encode_array_manifest_columns, manifest_id, view.id, cols
                    )
                    manifests = (ManifestRef(manifest_id, extents),)
                    new_files.append((ManifestFileInfo(manifest_id, len(data), len(cols)), data))
                changed = {}
            else:
                changed = changes.chunk_changes(view.id)
            if changed or shrunk:
                refs: dict[Coords, ChunkRef]
                if view.manifests:
                    refs = await self._base_refs(view)
                    for coords, ref in changed.items():
                        if ref is None:
                            refs.pop(coords, None)
                        else:
                            refs[coords] = ref
                    if shrunk:
                        refs = {c: r for c, r in refs.items() if on_grid(c, grid)}
                elif type(None) in set(map(type, changed.values())):  # no per-ref __eq__
                    refs = {c: r for c, r in changed.items() if r is not None}
                else:  # a new array: its changes are all its refs (the common bulk case)
                    refs = changed  # type: ignore[assignment]
                manifests = ()
                if refs:
                    manifest_id = ManifestId.random()
                    data, extents = await asyncio.to_thread(
                        encode_array_manifest,
                        manifest_id,
                        view.id,
                        dict(refs) if refs is changed else refs,  # the live dict: a copy
                    )
                    if any(hi > g for (_, hi), g in zip(extents, grid, strict=False)):
                        # written, then the array shrank in this session: drop what is
                        # past its end (the extents tell, at no cost in the usual case)
                        refs = {c: r for c, r in refs.items() if on_grid(c, grid)}
                        data, extents = await asyncio.to_thread(
                            encode_array_manifest, manifest_id, view.id, refs
                        )
                    if refs:
                        manifests = (ManifestRef(manifest_id, extents),)
                        info = ManifestFileInfo(manifest_id, len(data), len(refs))
                        new_files.append((info, data))
            return NodeSnapshot(
                view.id,
                view.path,
                view.user_data,
                ArrayNodeData(view.array.shape, view.array.dimension_names, manifests),
            )

        for view in views:
            if view.array is None:
                nodes.append(NodeSnapshot(view.id, view.path, view.user_data, GroupNodeData()))
            else:
                nodes.append(await array_node(view))

        await asyncio.gather(
            *(self._assets.write_manifest_bytes(info.id, data) for info, data in new_files)
        )
        files: dict[ManifestId, ManifestFileInfo] = {}
        for info, _ in new_files:
            files[info.id] = info
        for node in nodes:
            if isinstance(node.node_data, ArrayNodeData):
                for mref in node.node_data.manifests:
                    if mref.object_id not in files and mref.object_id in known_files:
                        files[mref.object_id] = known_files[mref.object_id]

        snapshot = Snapshot(
            id=snapshot_id,
            parent_id=self._snapshot_id,
            flushed_at=datetime.now(UTC),
            message=message,
            metadata=dict(metadata),
            nodes=tuple(nodes),
            manifest_files=tuple(sorted(files.values(), key=lambda f: f.id)),
        )
        await log_written
        await self._assets.write_snapshot(snapshot)
        return snapshot

    def _transaction_log(
        self, snapshot_id: SnapshotId, grids: Mapping[NodeId, tuple[int, ...]]
    ) -> TransactionLog:
        """The log of the pending changes."""
        c = self._changes
        return TransactionLog(
            id=snapshot_id,
            new_groups=tuple(sorted(nid for nid, _ in c.new_groups.values())),
            new_arrays=tuple(sorted(nid for nid, _ in c.new_arrays.values())),
            deleted_groups=tuple(sorted(c.deleted_groups.values())),
            deleted_arrays=tuple(sorted(c.deleted_arrays.values())),
            updated_groups=tuple(sorted(c.updated_groups)),
            updated_arrays=tuple(sorted(c.updated_arrays)),
            updated_chunks=self._logged_chunk_changes(grids),
        )

    async def commit(
        self,
        message: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1000,
    ) -> SnapshotId:
        """Save the pending changes as a new snapshot and move the branch to it.

        ``message`` must be a str (valid UTF-8) and ``metadata`` JSON with str keys, ints
        within -2**63..2**64-1 and finite floats, as Icechunk reads it back; anything else
        is ``UnrepresentableValueError`` naming it, before anything is written.

        Raises ``ConflictError`` if the branch moved since the session's snapshot (nothing
        of this commit becomes visible), unless ``rebase_with`` resolves the conflicts,
        in which case the changes are rebased onto the new tip and the commit retried
        (at most ``rebase_tries`` times).

        A commit reported as failed is not in the branch's history. When the answer to the
        branch update is lost, the branch's history is searched for the new snapshot to
        tell; if even that cannot be read, ``CommitOutcomeUnknownError`` is raised and the
        next ``commit`` of this session finds out first. Cancelled while the branch update
        is under way, the commit waits for its outcome (bounded by the driver's timeouts)
        before the cancellation takes effect, so the session knows whether its changes were
        committed: if they were, it is at the new snapshot with no pending changes.
        """
        self._check_writable(unsettled_ok=True)
        if self._branch is None:
            raise SessionStateError("this session is not on a branch and cannot commit")
        # what the format cannot hold is refused before anything is written
        check_commit_properties(message, {} if metadata is None else metadata)
        if self._unsettled is not None and await self._settle():
            return self._snapshot_id  # the earlier commit of these changes had landed
        if not self.has_uncommitted_changes:
            raise SessionStateError("no changes to commit")
        tries = 0
        while True:
            # the tip first, as icechunk does: a commit that already lost writes nothing
            tip = await self._assets.fetch_branch(self._branch)
            if tip.snapshot_id != self._snapshot_id:
                conflict = ConflictError(self._branch, str(self._snapshot_id), str(tip.snapshot_id))
                tries += 1
                if rebase_with is None or tries > rebase_tries:
                    raise conflict
                await self.rebase(rebase_with)
                continue
            snapshot = await self._flush(message, {} if metadata is None else metadata)
            move, cancelled = await _finish_despite_cancellation(
                self._move_branch(snapshot.id, tip)
            )
            error = None if move.cancelled() else move.exception()
            if move.cancelled() or isinstance(error, CommitOutcomeUnknownError):
                self._unsettled = snapshot.id
            elif error is None:
                self._snapshot_id = snapshot.id
                self._changes = ChangeSet()
            if cancelled or move.cancelled():
                raise asyncio.CancelledError
            if error is None:
                return snapshot.id
            if isinstance(error, ConflictError) and rebase_with is not None:
                tries += 1
                if tries <= rebase_tries:
                    await self.rebase(rebase_with)
                    continue
            raise error

    async def _move_branch(self, new_id: SnapshotId, tip: RefInfo) -> None:
        """Move the branch from ``tip`` (read before the flush, at the session's snapshot)
        to ``new_id``, only if its ref is still at ``tip``'s version.

        Returns if it moved; raises ``ConflictError`` (or the storage error) if it surely
        did not, and ``CommitOutcomeUnknownError`` if that cannot be found out.
        """
        assert self._branch is not None
        failure: StorageError
        try:
            await self._assets.update_branch(self._branch, new_id, tip.version)
            return
        except PreconditionFailed as err:
            failure = err  # another writer won, or a retried request of ours already landed
        except StorageError as err:
            failure = err  # the answer was lost: the write may have been applied
        landed, now = await self._landed(new_id, failure)
        if landed:
            return
        if isinstance(failure, PreconditionFailed):
            raise ConflictError(self._branch, str(self._snapshot_id), str(now)) from None
        raise failure

    async def _landed(
        self, new_id: SnapshotId, cause: StorageError | None
    ) -> tuple[bool, SnapshotId]:
        """Whether ``new_id`` is in the branch's history (other writers may have committed
        on top of it since), and the branch's tip. Looks a few times if looking fails."""
        assert self._branch is not None
        last: AicechunkError | None = None
        for attempt in range(_SETTLE_ATTEMPTS):
            try:
                tip = (await self._assets.fetch_branch(self._branch)).snapshot_id
                chain = await self._assets.history_since(tip, self._snapshot_id)
            except StorageError as err:
                last = err
                await asyncio.sleep(_SETTLE_BACKOFF * 2**attempt)
                continue
            except AicechunkError as err:  # the branch is gone, or its history unreadable
                last = err
                break
            return chain is not None and new_id in chain, tip
        why = f" ({cause})" if cause is not None else ""
        raise CommitOutcomeUnknownError(
            f"commit outcome unknown: moving branch {self._branch!r} to snapshot {new_id} "
            f"may have failed{why}, and the branch could not be read back ({last}); "
            "commit this session again to find out",
            key=ref_format.branch_key(self._branch),
        ) from last

    async def _settle(self) -> bool:
        """Find out whether the commit whose outcome was unknown landed; if it did, the
        session moves to it and drops the changes it committed. Returns whether it did."""
        assert self._unsettled is not None
        new_id = self._unsettled
        landed, _ = await self._landed(new_id, None)
        self._unsettled = None
        if landed:
            self._snapshot_id = new_id
            self._changes = ChangeSet()
        return landed

    async def rebase(self, solver: ConflictSolver) -> None:
        """Move the pending changes onto the branch tip, resolving conflicts with ``solver``.

        Raises ``RebaseFailedError`` listing conflicts the solver cannot resolve.
        """
        self._check_writable(unsettled_ok=True)
        if self._branch is None:
            raise SessionStateError("this session is not on a branch")
        if self._unsettled is not None:
            await self._settle()
        from aicechunk.conflicts import rebase_changes

        tip = (await self._assets.fetch_branch(self._branch)).snapshot_id
        chain = await self._assets.history_since(tip, self._snapshot_id)
        if chain is None:
            raise SessionStateError(
                f"branch {self._branch!r} no longer descends from snapshot {self._snapshot_id}"
            )
        # work on a copy: a failed rebase leaves the session exactly as it was
        original = (self._snapshot_id, self._changes)
        self._changes = copy.deepcopy(self._changes)
        try:
            for snapshot_id in reversed(chain):
                log = await self._assets.fetch_transaction_log(snapshot_id)
                theirs = await self._assets.fetch_snapshot(snapshot_id)
                self._changes = await rebase_changes(self, self._changes, log, theirs, solver)
                self._snapshot_id = snapshot_id
        except BaseException:
            self._snapshot_id, self._changes = original
            raise


__all__ += [
    "ChunkIndexError",
    "InvalidMetadataError",
    "NodeNotFoundError",
]


# how many times a commit reads the branch back when the answer to its update was lost,
# and the first pause (doubling) between those reads
_SETTLE_ATTEMPTS = 5
_SETTLE_BACKOFF = 0.05

T = TypeVar("T")


async def _finish_despite_cancellation(aw: Awaitable[T]) -> tuple[asyncio.Future[T], bool]:
    """Run ``aw`` to its end even if the calling task is cancelled meanwhile (its outcome
    must be known); return it, finished, and whether a cancellation was held back."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled = True
    return task, cancelled


# a transaction log of at least this many chunk changes is built in a worker thread
_THREAD_LOG_ROWS = 10_000

_FORK_MAGIC = b"AICFORK\x00"
_FORK_VERSION = 2  # 2: chunk changes stored column by column
_FORK_HEADER = struct.Struct("<8sHHI")  # magic, version, flags, crc32 of the body


class ForkSession(Session):
    """A writable session for a worker: it writes, then goes back to be merged.

    It serializes to a compact, versioned payload (``to_bytes``, also used by pickle)
    holding the storage description, the base snapshot, the branch and the pending
    changes; its size grows with the changes, not with the repository. A fork cannot
    commit or rebase: merge it into the session it came from.
    """

    async def commit(
        self,
        message: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1000,
    ) -> SnapshotId:
        """Refused: a fork's changes are committed by the session it is merged into."""
        raise SessionStateError(
            "a ForkSession cannot commit: merge it into its parent session "
            "(await session.merge(fork)) and commit there"
        )

    async def rebase(self, solver: ConflictSolver) -> None:
        """Refused: rebase the parent session after merging."""
        raise SessionStateError("a ForkSession cannot rebase: merge it, then rebase the parent")

    async def merge(self, *forks: ForkSession) -> None:
        """Fold other forks into this one (tree reductions); later arguments win."""
        await super().merge(*forks)

    def fork(self) -> ForkSession:
        """Refused: fork the parent session instead."""
        raise SessionStateError("a ForkSession cannot fork; fork the parent session")

    def __repr__(self) -> str:
        return f"<ForkSession branch={self._branch!r} snapshot={self._snapshot_id}>"

    # -- serialization --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The fork as a versioned, checksummed binary payload."""
        from aicechunk.changeset import changeset_to_plain
        from aicechunk.virtual import resolver_to_plain

        body = {
            "storage": dict(self._assets.driver.describe()),
            "cache": list(astuple_cache(self._assets)),
            "snapshot": self._snapshot_id.bytes,
            "branch": self._branch,
            "inline": self._config.inline_chunk_threshold_bytes,
            "concurrency": self._config.read_concurrency,
            "changes": changeset_to_plain(self._changes),
            "virtual": resolver_to_plain(self._virtual),
        }
        packed = zstandard.ZstdCompressor(level=3).compress(msgpack.packb(body, use_bin_type=True))
        header = _FORK_HEADER.pack(_FORK_MAGIC, _FORK_VERSION, 0, zlib.crc32(packed))
        return header + packed

    @classmethod
    def from_bytes(
        cls, payload: bytes, limits: DecompressionLimits = DEFAULT_DECOMPRESSION_LIMITS
    ) -> ForkSession:
        """Rebuild a fork from ``to_bytes()``; ``ForkPayloadError`` on a bad payload.

        The payload decompresses within ``limits`` of its size, and every change in it
        is checked as the session API checks it (paths, zarr metadata, chunk grids,
        values the format can hold); ``merge`` checks the rest against the base snapshot.
        """
        from aicechunk.assets import CacheSizes
        from aicechunk.changeset import changeset_from_plain
        from aicechunk.drivers.registry import driver_from_config
        from aicechunk.virtual import resolver_from_plain

        if not isinstance(payload, bytes | bytearray | memoryview):
            raise ForkPayloadError(f"a fork payload is bytes, not {type(payload).__name__}")
        if len(payload) < _FORK_HEADER.size:
            raise ForkPayloadError(f"fork payload truncated: {len(payload)} bytes")
        magic, version, _flags, crc = _FORK_HEADER.unpack_from(payload)
        if magic != _FORK_MAGIC:
            raise ForkPayloadError("not a fork payload (bad magic bytes)")
        if version != _FORK_VERSION:
            raise ForkPayloadError(
                f"fork payload format version {version}; this aicechunk reads {_FORK_VERSION}"
            )
        packed = payload[_FORK_HEADER.size :]
        if zlib.crc32(packed) != crc:
            raise ForkPayloadError("fork payload corrupted or truncated (checksum mismatch)")
        try:
            raw = decompress_bounded(packed, limits.bound(len(packed)), "fork payload")
        except FormatError as err:
            raise ForkPayloadError(str(err)) from None
        try:
            body = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            if not isinstance(body, dict):
                raise ValueError("the body is not a mapping")
            changes = changeset_from_plain(body["changes"])
            driver = driver_from_config(body["storage"])
            cache = body["cache"]
            if not (isinstance(cache, list) and len(cache) == 3 and all(map(_count, cache))):
                raise ValueError("cache sizes must be 3 non-negative integers")
            sizes = CacheSizes(*cache)
            snapshot_id = SnapshotId(body["snapshot"])
            inline, concurrency = body["inline"], body["concurrency"]
            if not (_count(inline) and _count(concurrency) and concurrency > 0):
                raise ValueError(
                    "the inline threshold must be a non-negative integer and the read "
                    "concurrency a positive one"
                )
            config = SessionConfig(inline, concurrency)
            branch = body["branch"]
            if branch is not None and not isinstance(branch, str):
                raise ValueError("the branch must be a string")
            virtual = resolver_from_plain(body.get("virtual"))
        except Exception as err:  # any decoding failure of a checksummed payload
            raise ForkPayloadError(
                f"fork payload unreadable: {type(err).__name__}: {err}"
            ) from None
        try:
            check_changes(changes)
        except (AicechunkError, ValueError) as err:
            raise ForkPayloadError(f"fork payload refused: {err}") from err
        fork = cls(
            AssetManager(driver, sizes, limits),
            snapshot_id,
            branch=branch,
            read_only=False,
            config=config,
            changes=changes,
            virtual_resolver=virtual,
        )
        fork._from_payload = True
        return fork

    def __reduce__(self) -> tuple[object, ...]:
        return (ForkSession.from_bytes, (self.to_bytes(),))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def astuple_cache(assets: AssetManager) -> tuple[int, int, int]:
    """The cache sizes of an asset manager, as plain numbers."""
    c = assets.cache
    return (c.snapshot_nodes, c.chunk_refs, c.transaction_changes)
