"""Conflict detection and resolution for rebasing a session onto a moved branch.

When a commit loses the race, the changes of each snapshot committed meanwhile (its
transaction log) are compared with ours. ``ConflictDetector`` fails on any conflict;
``BasicConflictSolver`` resolves chunk double-writes by a ``VersionSelection`` and can
let deletions of updated nodes through. A commit that moved nodes (spec v2) cannot be
rebased over, as in Icechunk: that conflict, and those of a rearrange session's own moves,
fail the rebase whatever the solver.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from aicechunk.changes.changeset import ChangeSet
from aicechunk.errors import RebaseFailedError
from aicechunk.format import Coords
from aicechunk.format.ids import NodeId
from aicechunk.format.snapshot import ArrayNodeData, Snapshot
from aicechunk.format.transaction_log import TransactionLog

__all__ = [
    "BasicConflictSolver",
    "Conflict",
    "ConflictDetector",
    "ConflictKind",
    "ConflictSolver",
    "ConflictType",
    "RebaseFailedError",
    "VersionSelection",
]


class ConflictKind(enum.Enum):
    """The kinds of conflict between our changes and a snapshot committed meanwhile."""

    NEW_NODE_CONFLICTS_WITH_EXISTING_NODE = "new node conflicts with existing node"
    NEW_NODE_IN_INVALID_GROUP = "new node inside an array"
    ZARR_METADATA_DOUBLE_UPDATE = "zarr metadata updated by both"
    ZARR_METADATA_UPDATE_OF_DELETED_ARRAY = "metadata update of a deleted array"
    ZARR_METADATA_UPDATE_OF_DELETED_GROUP = "metadata update of a deleted group"
    CHUNK_DOUBLE_UPDATE = "chunks written by both"
    CHUNKS_UPDATED_IN_DELETED_ARRAY = "chunks written in a deleted array"
    CHUNKS_UPDATED_IN_UPDATED_ARRAY = "chunks written in an array whose metadata changed"
    DELETE_OF_UPDATED_ARRAY = "delete of an updated array"
    DELETE_OF_UPDATED_GROUP = "delete of an updated group"
    MOVE_OPERATION_CANNOT_BE_REBASED = "move operation cannot be rebased"

    # icechunk's ``ConflictType`` member names, as aliases of the same members
    NewNodeConflictsWithExistingNode = NEW_NODE_CONFLICTS_WITH_EXISTING_NODE
    NewNodeInInvalidGroup = NEW_NODE_IN_INVALID_GROUP
    ZarrMetadataDoubleUpdate = ZARR_METADATA_DOUBLE_UPDATE
    ZarrMetadataUpdateOfDeletedArray = ZARR_METADATA_UPDATE_OF_DELETED_ARRAY
    ZarrMetadataUpdateOfDeletedGroup = ZARR_METADATA_UPDATE_OF_DELETED_GROUP
    ChunkDoubleUpdate = CHUNK_DOUBLE_UPDATE
    ChunksUpdatedInDeletedArray = CHUNKS_UPDATED_IN_DELETED_ARRAY
    ChunksUpdatedInUpdatedArray = CHUNKS_UPDATED_IN_UPDATED_ARRAY
    DeleteOfUpdatedArray = DELETE_OF_UPDATED_ARRAY
    DeleteOfUpdatedGroup = DELETE_OF_UPDATED_GROUP
    MoveOperationCannotBeRebased = MOVE_OPERATION_CANNOT_BE_REBASED


#: icechunk's name for the kinds of conflict.
ConflictType = ConflictKind


@dataclass(frozen=True)
class Conflict:
    """One conflict: its kind, the node path and, for chunks, the coordinates."""

    kind: ConflictKind
    path: str
    chunk_coords: frozenset[Coords] = frozenset()
    node_id: NodeId | None = None

    @property
    def conflict_type(self) -> ConflictKind:
        """The kind of conflict (icechunk's name for ``kind``)."""
        return self.kind

    @property
    def conflicted_chunks(self) -> list[list[int]] | None:
        """The chunks in conflict, sorted, for a chunk conflict; ``None`` otherwise
        (icechunk's shape of ``chunk_coords``)."""
        if self.kind is not ConflictKind.CHUNK_DOUBLE_UPDATE:
            return None
        return [list(c) for c in sorted(self.chunk_coords)]

    def __str__(self) -> str:
        extra = f" {sorted(self.chunk_coords)}" if self.chunk_coords else ""
        return f"{self.kind.value}: {self.path}{extra}" if self.path else self.kind.value


class VersionSelection(enum.Enum):
    """What to do with a chunk both sides wrote."""

    Fail = "fail"
    UseOurs = "use_ours"
    UseTheirs = "use_theirs"


class ConflictSolver(Protocol):
    """Decides what happens to our changes given a snapshot committed meanwhile."""

    def resolve(self, conflicts: list[Conflict], changes: ChangeSet) -> ChangeSet | None:
        """The patched changes, or ``None`` if the conflicts cannot be resolved."""
        ...


def _paths_by_id(snapshot: Snapshot) -> dict[NodeId, str]:
    return {node.id: node.path for node in snapshot.nodes}


def detect_conflicts(
    changes: ChangeSet, log: TransactionLog, theirs: Snapshot, ours_paths: dict[NodeId, str]
) -> list[Conflict]:
    """Every conflict between ``changes`` and the commit described by ``log``; only
    ``MOVE_OPERATION_CANNOT_BE_REBASED`` (with no path) if that commit moved nodes, as
    Icechunk reports it."""
    if log.moved_nodes:
        return [Conflict(ConflictKind.MOVE_OPERATION_CANNOT_BE_REBASED, "")]
    found: list[Conflict] = []
    their_paths = _paths_by_id(theirs)
    their_nodes = {node.path: node for node in theirs.nodes}
    path_of = {**their_paths, **ours_paths}

    def path(nid: NodeId) -> str:
        return path_of.get(nid, f"<node {nid}>")

    deleted_paths = set(changes.deleted_groups) | set(changes.deleted_arrays)
    new_nodes = list(changes.new_groups) + list(changes.new_arrays)
    for p in new_nodes:
        if p not in deleted_paths and p in their_nodes:
            found.append(Conflict(ConflictKind.NEW_NODE_CONFLICTS_WITH_EXISTING_NODE, p))
    for p in new_nodes:
        parts = p.strip("/").split("/")
        for i in range(len(parts) - 1, 0, -1):
            parent = "/" + "/".join(parts[:i])
            node = their_nodes.get(parent)
            if node is not None and isinstance(node.node_data, ArrayNodeData):
                found.append(Conflict(ConflictKind.NEW_NODE_IN_INVALID_GROUP, parent))
                break
        else:
            node = their_nodes.get("/")
            if p != "/" and node is not None and isinstance(node.node_data, ArrayNodeData):
                found.append(Conflict(ConflictKind.NEW_NODE_IN_INVALID_GROUP, "/"))

    their_updated_arrays = set(log.updated_arrays)
    their_updated_groups = set(log.updated_groups)
    their_deleted_arrays = set(log.deleted_arrays)
    their_deleted_groups = set(log.deleted_groups)
    their_chunks = {nid: set(coords) for nid, coords in log.updated_chunks.items()}

    for nid in changes.updated_arrays:
        if nid in their_updated_arrays:
            found.append(Conflict(ConflictKind.ZARR_METADATA_DOUBLE_UPDATE, path(nid)))
    for nid in changes.updated_groups:
        if nid in their_updated_groups:
            found.append(Conflict(ConflictKind.ZARR_METADATA_DOUBLE_UPDATE, path(nid)))
    for nid in changes.updated_arrays:
        if nid in their_deleted_arrays:
            found.append(Conflict(ConflictKind.ZARR_METADATA_UPDATE_OF_DELETED_ARRAY, path(nid)))
    for nid in changes.updated_groups:
        if nid in their_deleted_groups:
            found.append(Conflict(ConflictKind.ZARR_METADATA_UPDATE_OF_DELETED_GROUP, path(nid)))
    for nid, refs in changes.chunks.items():
        if not refs:
            continue
        if nid in their_deleted_arrays:
            found.append(
                Conflict(ConflictKind.CHUNKS_UPDATED_IN_DELETED_ARRAY, path(nid), node_id=nid)
            )
        if nid in their_updated_arrays:
            found.append(
                Conflict(ConflictKind.CHUNKS_UPDATED_IN_UPDATED_ARRAY, path(nid), node_id=nid)
            )
        both = their_chunks.get(nid, set()) & set(refs)
        if both:
            found.append(
                Conflict(ConflictKind.CHUNK_DOUBLE_UPDATE, path(nid), frozenset(both), nid)
            )
    for p in changes.deleted_arrays:
        node = their_nodes.get(p)
        if node is not None and (node.id in their_updated_arrays or node.id in their_chunks):
            found.append(Conflict(ConflictKind.DELETE_OF_UPDATED_ARRAY, p, node_id=node.id))
    for p in changes.deleted_groups:
        node = their_nodes.get(p)
        if node is not None and node.id in their_updated_groups:
            found.append(Conflict(ConflictKind.DELETE_OF_UPDATED_GROUP, p, node_id=node.id))
    return found


class ConflictDetector:
    """A solver that resolves nothing: any conflict fails the rebase."""

    def resolve(self, conflicts: list[Conflict], changes: ChangeSet) -> ChangeSet | None:
        """``changes`` unchanged if there are no conflicts, else ``None``."""
        return None if conflicts else changes


_ALWAYS_FATAL = {
    ConflictKind.NEW_NODE_CONFLICTS_WITH_EXISTING_NODE,
    ConflictKind.NEW_NODE_IN_INVALID_GROUP,
    ConflictKind.ZARR_METADATA_DOUBLE_UPDATE,
    ConflictKind.ZARR_METADATA_UPDATE_OF_DELETED_ARRAY,
    ConflictKind.ZARR_METADATA_UPDATE_OF_DELETED_GROUP,
    ConflictKind.CHUNKS_UPDATED_IN_DELETED_ARRAY,
    ConflictKind.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
    ConflictKind.MOVE_OPERATION_CANNOT_BE_REBASED,
}


@dataclass(frozen=True)
class BasicConflictSolver:
    """Resolves chunks written by both sides and, optionally, deletes of updated nodes.

    ``on_chunk_conflict``: ``UseOurs`` keeps our chunk, ``UseTheirs`` drops ours,
    ``Fail`` fails the rebase. Structural conflicts (metadata changed by both, new nodes
    where theirs exist, writes into deleted arrays) always fail.
    """

    on_chunk_conflict: VersionSelection = VersionSelection.UseOurs
    fail_on_delete_of_updated_array: bool = False
    fail_on_delete_of_updated_group: bool = False

    def resolve(self, conflicts: list[Conflict], changes: ChangeSet) -> ChangeSet | None:
        """The patched changes, or ``None`` if a conflict is fatal for this solver."""
        for c in conflicts:
            if (
                c.kind in _ALWAYS_FATAL
                or (
                    c.kind is ConflictKind.CHUNK_DOUBLE_UPDATE
                    and self.on_chunk_conflict is VersionSelection.Fail
                )
                or (
                    c.kind is ConflictKind.DELETE_OF_UPDATED_ARRAY
                    and self.fail_on_delete_of_updated_array
                )
                or (
                    c.kind is ConflictKind.DELETE_OF_UPDATED_GROUP
                    and self.fail_on_delete_of_updated_group
                )
            ):
                return None
        if self.on_chunk_conflict is VersionSelection.UseTheirs:
            for c in conflicts:
                if c.kind is ConflictKind.CHUNK_DOUBLE_UPDATE and c.node_id is not None:
                    refs = changes.chunks.get(c.node_id, {})
                    for coords in c.chunk_coords:
                        refs.pop(coords, None)
        return changes


def rebase_changes(
    changes: ChangeSet,
    log: TransactionLog,
    theirs: Snapshot,
    solver: ConflictSolver,
    ours_paths: Mapping[NodeId, str],
    fatal: Sequence[Conflict] = (),
) -> ChangeSet:
    """Our ``changes`` moved on top of ``theirs`` (described by ``log``), or
    ``RebaseFailedError``. ``ours_paths``: the path of every node our side knows (those
    of the session's view, and those it deleted), to name nodes in conflicts. ``fatal``:
    conflicts no solver may resolve (a rearrange session's moves that no longer apply:
    the change set the solver patches holds no moves); moves in ``log`` are fatal too."""
    paths = dict(ours_paths)
    paths.update({nid: p for p, nid in changes.deleted_groups.items()})
    paths.update({nid: p for p, nid in changes.deleted_arrays.items()})
    conflicts = [*detect_conflicts(changes, log, theirs, paths), *fatal]
    moved = ConflictKind.MOVE_OPERATION_CANNOT_BE_REBASED
    if fatal or any(c.kind is moved for c in conflicts):
        raise RebaseFailedError(str(theirs.id), conflicts)
    patched = solver.resolve(conflicts, changes)
    if patched is None:
        raise RebaseFailedError(str(theirs.id), conflicts)
    return patched
