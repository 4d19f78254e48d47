"""The flush: a session's pending changes written as manifests, a transaction log and a
snapshot (Icechunk's ``FlushProcess``).

A ``Flush`` writes files only; it never moves a branch. Nothing it writes is visible
until a ref points at the snapshot, so a failed or cancelled flush leaves only garbage.
An amend's flush (``amending``) logs the replaced commit's changes with its own, and its
snapshot's parent is the replaced commit's parent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from aicechunk.assets import AssetManager
from aicechunk.changes.changeset import ChangeSet
from aicechunk.changes.chunktable import ChunkTable
from aicechunk.changes.validate import chunk_grid, on_grid
from aicechunk.format import Coords
from aicechunk.format.ids import ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import ChunkRef
from aicechunk.format.manifest_encode import encode_array_manifest
from aicechunk.format.manifest_stream import encode_array_manifest_stream
from aicechunk.format.snapshot import (
    ArrayNodeData,
    GroupNodeData,
    ManifestFileInfo,
    ManifestRef,
    NodeSnapshot,
    Snapshot,
    encode_snapshot,
)
from aicechunk.format.transaction_log import (
    TransactionLog,
    encode_transaction_log,
    merge_transaction_logs,
)
from aicechunk.offload import ENCODE_ITEMS_OFF_LOOP, LOG_ROWS_OFF_LOOP, off_loop
from aicechunk.session.reads import NodeView, base_refs, grids, logged_chunk_changes
from aicechunk.session.state import SessionState

__all__ = ["Flush"]


class Flush:
    """One flush of ``state``'s pending changes; ``views`` are the session's nodes,
    listed once by the caller (the transaction log and the manifests both use them).
    ``amending``: the log of the commit an amend replaces, and that commit's parent."""

    def __init__(
        self,
        state: SessionState,
        base: Snapshot,
        views: list[NodeView],
        amending: tuple[TransactionLog, SnapshotId] | None = None,
    ) -> None:
        self.state = state
        self.amending = amending
        self.assets: AssetManager = state.assets
        self.version = state.assets.format_version  # files in the repository's spec version
        self.changes: ChangeSet = state.changes
        self.base = base
        self.views = views
        self.grids = grids(views)
        self.new_files: list[tuple[ManifestFileInfo, bytes]] = []
        # the references of each new manifest, kept decoded once it is stored
        self.new_refs: dict[ManifestId, tuple[NodeId, dict[Coords, ChunkRef]]] = {}
        # the new snapshot and its transaction log, with their bytes (``prepare``)
        self.encoded: tuple[Snapshot, bytes, TransactionLog, bytes] | None = None

    async def run(self, message: str, metadata: Mapping[str, Any]) -> Snapshot:
        """Write manifests, transaction log and snapshot (``prepare``, then ``write``)."""
        snapshot = await self.prepare(message, metadata)
        await self.write()
        return snapshot

    async def prepare(self, message: str, metadata: Mapping[str, Any]) -> Snapshot:
        """Make the new snapshot and encode every file of it, writing nothing (reading
        the base manifests of changed arrays): ``write`` then stores them all at once."""
        snapshot_id = SnapshotId.random()
        # listing (and, for merged forks, combining) many chunk changes: off the loop
        rows = self.changes.chunk_change_rows()
        log = await off_loop(rows >= LOG_ROWS_OFF_LOOP, self.transaction_log, snapshot_id)
        log_bytes = await off_loop(log.size() >= ENCODE_ITEMS_OFF_LOOP, encode_transaction_log, log)
        nodes = [await self.node(view) for view in self.views]
        snapshot = Snapshot(
            id=snapshot_id,
            parent_id=self.state.snapshot_id if self.amending is None else self.amending[1],
            flushed_at=datetime.now(UTC),
            message=message,
            metadata=dict(metadata),
            nodes=tuple(nodes),
            manifest_files=self.manifest_files(nodes),
            spec_version=self.version,
        )
        big = len(snapshot.nodes) >= ENCODE_ITEMS_OFF_LOOP
        self.encoded = (snapshot, await off_loop(big, encode_snapshot, snapshot), log, log_bytes)
        return snapshot

    def write(self) -> asyncio.Future[list[None]]:
        """Start storing what ``prepare`` encoded, every file at once (one hand-off to a
        local driver's thread, or concurrent requests), since none is visible before a
        ref points at the snapshot: the writes are under way when this returns; the
        future it returns is done when all are stored, or with the first failure."""
        assert self.encoded is not None, "prepare first"
        snapshot, snapshot_bytes, log, log_bytes = self.encoded
        return asyncio.gather(
            self.assets.write_transaction_log(log, log_bytes),
            *(self.write_manifest_file(i.id, data) for i, data in self.new_files),
            self.assets.write_snapshot(snapshot, data=snapshot_bytes),
        )

    async def write_manifest_file(self, manifest_id: ManifestId, data: bytes) -> None:
        """Store one new manifest; then keep its references decoded (the next commit on
        the branch reads them back: ``reads.base_refs``)."""
        await self.assets.write_manifest_bytes(manifest_id, data)
        kept = self.new_refs.get(manifest_id)
        if kept is not None:
            self.assets.node_refs.put(manifest_id, *kept, owned=True)

    def transaction_log(self, snapshot_id: SnapshotId) -> TransactionLog:
        """The log of the pending changes (with the replaced commit's, for an amend)."""
        c = self.changes
        moves = self.state.moves
        log = TransactionLog(
            id=snapshot_id,
            new_groups=tuple(sorted(nid for nid, _ in c.new_groups.values())),
            new_arrays=tuple(sorted(nid for nid, _ in c.new_arrays.values())),
            deleted_groups=tuple(sorted(c.deleted_groups.values())),
            deleted_arrays=tuple(sorted(c.deleted_arrays.values())),
            updated_groups=tuple(sorted(c.updated_groups)),
            updated_arrays=tuple(sorted(c.updated_arrays)),
            updated_chunks=logged_chunk_changes(c, self.grids),
            moved_nodes=() if moves is None else moves.logged(self.base.nodes),
            spec_version=self.version,
        )
        if self.amending is None:
            return log
        return merge_transaction_logs(snapshot_id, [self.amending[0], log])

    def manifest_files(self, nodes: list[NodeSnapshot]) -> tuple[ManifestFileInfo, ...]:
        """The manifest files the new snapshot's nodes use: new ones and kept ones."""
        known = {f.id: f for f in self.base.manifest_files}
        files = {info.id: info for info, _ in self.new_files}
        for node in nodes:
            if isinstance(node.node_data, ArrayNodeData):
                for mref in node.node_data.manifests:
                    if mref.object_id not in files and mref.object_id in known:
                        files[mref.object_id] = known[mref.object_id]
        return tuple(sorted(files.values(), key=lambda f: f.id))

    async def node(self, view: NodeView) -> NodeSnapshot:
        """The snapshot node of ``view``; an array's changed chunks go to a new manifest."""
        if view.array is None:
            return NodeSnapshot(view.id, view.path, view.user_data, GroupNodeData())
        definition = view.array
        manifests = await self.array_manifests(view, chunk_grid(definition))
        return NodeSnapshot(
            view.id,
            view.path,
            view.user_data,
            ArrayNodeData(definition.shape, definition.dimension_names, manifests),
        )

    async def array_manifests(
        self, view: NodeView, grid: tuple[int, ...]
    ) -> tuple[ManifestRef, ...]:
        # a shrunk array drops the stored chunks past its new end (as icechunk does)
        shrunk = any(
            hi > g for m in view.manifests for (_, hi), g in zip(m.extents, grid, strict=False)
        )
        table = None if shrunk else self.changes.chunk_table(view.id)
        if table is not None and view.manifests and not _off_grid(table, grid):
            # tables over stored references: those join them as a table (the new rows,
            # often millions of bulk refs, never become objects)
            stored = ChunkTable.from_refs(await base_refs(self.state, view))
            if stored is not None and (stored.ndim == table.ndim or not len(stored)):
                table = ChunkTable.combine([t for t in (stored, table) if len(t)] or [table])
            else:
                table = None
        if table is not None and not _off_grid(table, grid):
            # tables (bulk virtual refs, merged forks): encoded column by column, streamed
            # into the compressor (rows past the end, if any, are resolved one by one below)
            cols = table.ref_columns()
            if not len(cols):
                return ()
            manifest_id = ManifestId.random()
            data, extents = await asyncio.to_thread(
                encode_array_manifest_stream, manifest_id, view.id, cols, self.version
            )
            self.new_files.append((ManifestFileInfo(manifest_id, len(data), len(cols)), data))
            return (ManifestRef(manifest_id, extents),)
        changed = self.changes.chunk_changes(view.id)
        if not (changed or shrunk):
            return view.manifests
        refs = await self.array_refs(view, changed, grid, shrunk)
        return await self.write_manifest(view.id, refs, grid, live=refs is changed)

    async def array_refs(
        self,
        view: NodeView,
        changed: dict[Coords, ChunkRef | None],
        grid: tuple[int, ...],
        shrunk: bool,
    ) -> dict[Coords, ChunkRef]:
        """Every reference of the array after the changes."""
        if view.manifests:
            refs = await base_refs(self.state, view)
            for coords, ref in changed.items():
                if ref is None:
                    refs.pop(coords, None)
                else:
                    refs[coords] = ref
            if shrunk:
                refs = {c: r for c, r in refs.items() if on_grid(c, grid)}
            return refs
        if type(None) in set(map(type, changed.values())):  # no per-ref __eq__
            return {c: r for c, r in changed.items() if r is not None}
        return changed  # type: ignore[return-value]  # a new array: its changes are its refs

    async def write_manifest(
        self,
        node_id: NodeId,
        refs: dict[Coords, ChunkRef],
        grid: tuple[int, ...],
        *,
        live: bool,
    ) -> tuple[ManifestRef, ...]:
        """Encode one array's manifest (written with the others by ``run``). ``live``:
        ``refs`` is the change set's own dict, copied before it goes to a thread."""
        if not refs:
            return ()
        manifest_id = ManifestId.random()
        big = len(refs) >= ENCODE_ITEMS_OFF_LOOP  # a few refs: cheaper than a thread hop
        data, extents = await off_loop(
            big,
            encode_array_manifest,
            manifest_id,
            node_id,
            dict(refs) if live and big else refs,
            self.version,
        )
        if any(hi > g for (_, hi), g in zip(extents, grid, strict=False)):
            # written, then the array shrank in this session: drop what is past its end
            # (the extents tell, at no cost in the usual case)
            refs = {c: r for c, r in refs.items() if on_grid(c, grid)}
            if not refs:
                return ()
            data, extents = await off_loop(
                big, encode_array_manifest, manifest_id, node_id, refs, self.version
            )
        self.new_files.append((ManifestFileInfo(manifest_id, len(data), len(refs)), data))
        # the change set's own dict may change after this: copied
        self.new_refs[manifest_id] = (node_id, dict(refs) if live else refs)
        return (ManifestRef(manifest_id, extents),)


def _off_grid(table: ChunkTable, grid: tuple[int, ...]) -> bool:
    """Whether a row of ``table`` is past the end of ``grid`` (the array shrank)."""
    return (
        len(table) > 0
        and table.ndim > 0
        and bool((table.coords >= np.asarray(grid, dtype=np.int64)).any())
    )
