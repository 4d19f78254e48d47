"""Reading through a session: the base snapshot with the pending changes on top.

Functions of a ``SessionState``: nodes, chunk references and bytes, chunk listings and the
status of the pending changes. Nothing here writes.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from aicechunk.changes.changeset import ArrayDefinition, ChangeSet
from aicechunk.changes.chunktable import DELETED
from aicechunk.changes.validate import (
    check_chunk_coords,
    check_node_path,
    chunk_grid,
    on_grid,
)
from aicechunk.drivers.base import ByteRange, RangeRequest, range_bounds
from aicechunk.errors import NodeNotFoundError, SessionStateError
from aicechunk.format import Coords
from aicechunk.format.coord_rows import CoordRows
from aicechunk.format.ids import ChunkId, ManifestId, NodeId
from aicechunk.format.manifest import ChunkRef, InlineRef, Manifest, NativeRef, VirtualRef
from aicechunk.format.snapshot import ArrayNodeData, ManifestRef, NodeSnapshot, Snapshot
from aicechunk.format.transaction_log import move_order
from aicechunk.session.state import SessionState
from aicechunk.session.uploads import Uploads

__all__ = ["ChunkType", "Diff", "NodeView"]


class ChunkType(enum.Enum):
    """Where a chunk's bytes are (icechunk's ``ChunkType``, with its members and values,
    under icechunk 1.x's names and 2.x's lower-case ones)."""

    UNINITIALIZED = 0
    """No reference: reads see the fill value."""
    NATIVE = 1
    """A chunk file in the repository's storage."""
    VIRTUAL = 2
    """A byte range of an object outside the repository."""
    INLINE = 3
    """Bytes held in the manifest itself."""

    # icechunk 2.x's member names, as aliases of the same members
    uninitialized = UNINITIALIZED
    native = NATIVE
    virtual = VIRTUAL
    inline = INLINE

    @classmethod
    def of(cls, ref: ChunkRef | None) -> ChunkType:
        """The type of a chunk with reference ``ref``."""
        if ref is None:
            return cls.UNINITIALIZED
        if isinstance(ref, InlineRef):
            return cls.INLINE
        return cls.VIRTUAL if isinstance(ref, VirtualRef) else cls.NATIVE


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

    Paths of new, deleted and updated groups and arrays, per array path the
    coordinates of chunks written or deleted, and the nodes moved (spec v2) as
    ``(from, to)`` pairs, as icechunk lists them.
    """

    new_groups: set[str] = field(default_factory=set)
    new_arrays: set[str] = field(default_factory=set)
    deleted_groups: set[str] = field(default_factory=set)
    deleted_arrays: set[str] = field(default_factory=set)
    updated_groups: set[str] = field(default_factory=set)
    updated_arrays: set[str] = field(default_factory=set)
    updated_chunks: dict[str, set[Coords]] = field(default_factory=dict)
    moved_nodes: list[tuple[str, str]] = field(default_factory=list)

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
                self.moved_nodes,
            )
        )


# --- nodes -------------------------------------------------------------------------------


async def base_snapshot(state: SessionState) -> Snapshot:
    """The snapshot the session reads."""
    return await state.assets.fetch_snapshot(state.snapshot_id)


def view_of(changes: ChangeSet, node: NodeSnapshot) -> NodeView:
    """A base snapshot node with the pending updates of it applied."""
    if isinstance(node.node_data, ArrayNodeData):
        definition = changes.updated_arrays.get(node.id)
        if definition is None:
            names = node.node_data.dimension_names
            definition = ArrayDefinition(
                tuple(node.node_data.shape),
                None if names is None else tuple(names),
                node.user_data,
            )
        manifests = tuple(node.node_data.manifests)
        return NodeView(node.path, node.id, definition.user_data, definition, manifests)
    user_data = changes.updated_groups.get(node.id, node.user_data)
    return NodeView(node.path, node.id, user_data, None)


async def get_node(state: SessionState, path: str) -> NodeView | None:
    """The group or array at ``path``, or ``None``; ``InvalidNodePathError`` if ``path``
    is not an absolute node path (a relative ``a/b`` would otherwise read as absent)."""
    check_node_path(path)
    changes = state.changes
    if path in changes.new_groups:
        nid, data = changes.new_groups[path]
        return NodeView(path, nid, data, None)
    if path in changes.new_arrays:
        nid, definition = changes.new_arrays[path]
        return NodeView(path, nid, definition.user_data, definition)
    if changes.is_deleted(path):
        return None
    # a rearrange session shows the base snapshot's nodes at their moved paths
    base_path = path if state.moves is None else state.moves.original_path(path)
    if base_path is None:
        return None
    node = (await base_snapshot(state)).get_node(base_path)
    if node is None:
        return None
    view = view_of(changes, node)
    return view if base_path == path else replace(view, path=path)


async def list_nodes(state: SessionState) -> list[NodeView]:
    """Every node, sorted by path."""
    changes = state.changes
    snap = await base_snapshot(state)
    views = [view_of(changes, n) for n in snap.nodes if not changes.is_deleted(n.path)]
    moves = state.moves
    if moves is not None and not moves.is_empty():
        views = [replace(v, path=moves.current_path(v.path)) for v in views]
    for path in changes.new_node_paths():
        view = await get_node(state, path)
        if view is not None:
            views.append(view)
    views.sort(key=lambda v: v.path)
    return views


async def get_array(state: SessionState, path: str) -> tuple[NodeView, ArrayDefinition]:
    """The array at ``path`` and its definition; ``NodeNotFoundError`` if there is none."""
    node = await get_node(state, path)
    if node is None or node.array is None:
        raise NodeNotFoundError(path, "array")
    return node, node.array


async def array_for_chunk(
    state: SessionState, path: str, coords: Coords
) -> tuple[NodeView, Coords]:
    """The array at ``path`` and ``coords`` as ints, checking they lie on its chunk grid
    and the format can hold them."""
    node, definition = await get_array(state, path)
    return node, check_chunk_coords(path, coords, definition)


# --- chunks ------------------------------------------------------------------------------


async def base_ref(state: SessionState, node: NodeView, coords: Coords) -> ChunkRef | None:
    """The reference the base snapshot holds for one chunk of ``node``."""
    for mref in node.manifests:
        if all(lo <= c < hi for c, (lo, hi) in zip(coords, mref.extents, strict=False)):
            manifest = await state.assets.fetch_manifest(mref.object_id)
            ref = manifest.lookup(node.id, coords)
            if ref is not None:
                return ref
    return None


async def base_refs(state: SessionState, node: NodeView) -> dict[Coords, ChunkRef]:
    """Every reference the base snapshot holds for ``node`` (a new dict, the caller's
    to change). Those of a manifest this process wrote or decoded before are kept
    decoded (``AssetManager.node_refs``): a commit rewriting an array's manifest then
    decodes no stored reference."""
    kept = state.assets.node_refs
    parts = [kept.get(m.object_id, node.id) for m in node.manifests]
    missing = [m.object_id for m, part in zip(node.manifests, parts, strict=True) if part is None]
    if missing:
        fetched = iter(await _fetch_manifests(state, missing))
        for i, part in enumerate(parts):
            if part is None:
                part = parts[i] = dict(next(fetched).iter_node(node.id))
                kept.put(node.manifests[i].object_id, node.id, part)
    if len(parts) == 1:
        return parts[0] or {}
    refs: dict[Coords, ChunkRef] = {}
    for part in parts:
        refs.update(part or {})
    return refs


async def _fetch_manifests(state: SessionState, ids: list[ManifestId]) -> list[Manifest]:
    """The manifests ``ids``, fetched at once (one: no gather, no task)."""
    if len(ids) == 1:
        return [await state.assets.fetch_manifest(ids[0])]
    return list(await asyncio.gather(*map(state.assets.fetch_manifest, ids)))


async def chunk_ref(state: SessionState, path: str, coords: Coords) -> ChunkRef | None:
    """The reference of one chunk, or ``None`` if it has none."""
    node = await get_node(state, path)
    if node is None or node.array is None:
        return None
    return await node_chunk_ref(state, node, coords)


async def node_chunk_ref(state: SessionState, node: NodeView, coords: Coords) -> ChunkRef | None:
    """The reference of one chunk of the array ``node``, or ``None`` if it has none."""
    changed, ref = state.changes.chunk_change(node.id, coords)
    if changed:
        return ref
    return await base_ref(state, node, coords)


async def read_chunk(
    state: SessionState, path: str, coords: Coords, byte_range: ByteRange | None
) -> bytes | None:
    """A chunk's bytes (or part of them), ``None`` if the chunk was never written."""
    node = await get_node(state, path)
    if node is None or node.array is None:
        return None
    ref = await node_chunk_ref(state, node, coords)
    if ref is None:
        return None
    if isinstance(ref, InlineRef):
        start, stop = range_bounds(byte_range, len(ref.data))
        return bytes(ref.data[start:stop])
    start, stop = range_bounds(byte_range, ref.length)
    inner = RangeRequest(ref.offset + start, stop - start)
    if isinstance(ref, NativeRef):
        return await read_native(state, node, coords, ref, inner)
    if state.virtual is None:
        raise SessionStateError(
            f"chunk {list(coords)} of {path!r} is virtual ({ref.location}); "
            "virtual chunk access needs an authorized virtual chunk container"
        )
    return await state.virtual.fetch(ref, inner)


async def read_native(
    state: SessionState, node: NodeView, coords: Coords, ref: NativeRef, inner: RangeRequest
) -> bytes:
    """Bytes of a native chunk file of the array ``node``: from the uploads still under
    way (write-behind: this session's, a fork's parent's, or those a fork's payload
    carried), through the read-ahead, or from storage."""
    pending = _pending(state, ref.chunk_id)
    if pending is not None:
        return pending[inner.offset : inner.offset + inner.length]
    if state.readahead is None or node.array is None:
        return await state.assets.fetch_chunk(ref.chunk_id, inner)
    return await state.readahead.read(
        node.id,
        chunk_grid(node.array),
        coords,
        ref,
        inner,
        lambda at: _stored_ref(state, node, at),
    )


def _pending(state: SessionState, chunk_id: ChunkId) -> bytes | None:
    """The bytes of ``chunk_id`` if it is still being uploaded (see ``read_native``)."""
    sources: tuple[Uploads | Mapping[ChunkId, bytes] | None, ...]
    sources = (state.uploads, state.parent_uploads, state.carried)
    for uploads in sources:
        if uploads is not None:
            pending = uploads.get(chunk_id)
            if pending is not None:
                return pending
    return None


async def _stored_ref(state: SessionState, node: NodeView, coords: Coords) -> ChunkRef | None:
    """The reference of a chunk the read-ahead may fetch: ``None`` for one whose file is
    still being uploaded (its read comes from the buffer; a GET now would be wasted)."""
    ref = await node_chunk_ref(state, node, coords)
    if isinstance(ref, NativeRef) and _pending(state, ref.chunk_id) is not None:
        return None
    return ref


async def chunk_coords(state: SessionState, path: str) -> AsyncIterator[Coords]:
    """Coordinates of every chunk of the array at ``path`` that has a reference; none if
    there is no array there."""
    node = await get_node(state, path)
    if node is None or node.array is None:
        return
    async for coords in array_chunk_coords(state, node):
        yield coords


#: coordinates listed from a chunk table per step (tuples are made a batch at a time)
LIST_BATCH = 65536


async def array_chunk_coords(state: SessionState, node: NodeView) -> AsyncIterator[Coords]:
    """Coordinates of every chunk of the array ``node`` that has a reference, sorted."""
    assert node.array is not None
    grid = chunk_grid(node.array)  # a shrunk array has no chunks past its end
    table = state.changes.chunk_table(node.id)
    if table is not None and not node.manifests:
        # a new array's bulk changes only: listed from the columns (sorted, one per chunk)
        live = table.coords[table.kinds != DELETED]
        live = live[(live < np.asarray(grid, dtype=live.dtype)).all(axis=1)]
        for start in range(0, len(live), LIST_BATCH):
            for c in live[start : start + LIST_BATCH].tolist():
                yield tuple(c)
        return
    changed = state.changes.chunk_changes(node.id)
    base = await base_refs(state, node)
    coords = {c for c in base if c not in changed}
    coords.update(c for c, r in changed.items() if r is not None)
    for c in sorted(coords):
        if on_grid(c, grid):
            yield c


async def virtual_chunk_locations(state: SessionState) -> list[str]:
    """Every distinct URL that virtual chunks of the session's arrays point into."""
    found: set[str] = set()
    for node in await list_nodes(state):
        if node.array is None:
            continue
        async for coords in array_chunk_coords(state, node):
            ref = await chunk_ref(state, node.path, coords)
            if isinstance(ref, VirtualRef):
                found.add(ref.location)
    return sorted(found)


# --- status ------------------------------------------------------------------------------


def grids(views: list[NodeView]) -> dict[NodeId, tuple[int, ...]]:
    """The chunk grid of every array among ``views``."""
    return {n.id: chunk_grid(n.array) for n in views if n.array}


def logged_chunk_changes(
    changes: ChangeSet, grids: Mapping[NodeId, tuple[int, ...]]
) -> dict[NodeId, Sequence[Coords]]:
    """The chunk changes a commit logs, per array (``grids``: the arrays that exist):
    every chunk the session set or deleted, the ones a shrink deleted past the array's new
    end included, as icechunk 2.x logs them (icechunk 1.x left those out)."""
    changed = {nid: changes.chunk_changes_coords(nid) for nid in changes.chunk_nodes()}
    return {
        nid: coords if isinstance(coords, CoordRows) else tuple(coords)  # rows: no tuples
        for nid, coords in changed.items()
        if len(coords) and nid in grids
    }


async def status(state: SessionState) -> Diff:
    """The pending changes as a ``Diff`` (a rearrange session's moves as icechunk lists
    them: every node moved, children of a moved group too, by their new paths)."""
    changes = state.changes
    snap = await base_snapshot(state)
    if state.moves is not None:
        moved = state.moves.logged(snap.nodes)
        return Diff(moved_nodes=[(m.from_path, m.to_path) for m in sorted(moved, key=move_order)])
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
    logged = logged_chunk_changes(changes, grids(await list_nodes(state)))
    for nid, coords in logged.items():
        if nid in paths:
            diff.updated_chunks[paths[nid]] = set(coords)
    return diff
