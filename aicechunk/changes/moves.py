"""The moves of a rearrange session: nodes renamed with their subtrees, keeping their ids
(so their chunks, which manifests hold by node id, move with them).

A rearrange session (spec v2) records moves only, in the order they were made. Reading
through it maps paths both ways: where a node of the base snapshot is now
(``current_path``), and which base path is behind a path the session shows
(``original_path``; ``None`` where a move left nothing). The transaction log records every
node whose path changed (``logged``). A rebase replays the moves on the snapshot committed
meanwhile (``conflicts_on``): a move that no longer applies there is a conflict.

Plain data: paths, node ids, no storage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aicechunk.changes.conflicts import Conflict, ConflictKind
from aicechunk.format.ids import NodeId
from aicechunk.format.snapshot import NodeSnapshot, Snapshot
from aicechunk.format.transaction_log import MoveOperation

__all__ = ["Move", "MoveSet", "is_under", "parent_path"]


@dataclass(frozen=True, slots=True)
class Move:
    """One move as the user made it: the node at ``from_path`` (with everything below
    it) to ``to_path``; ``node_id`` is the moved node's, to tell it from a node made at
    the same path later."""

    from_path: str
    to_path: str
    node_id: NodeId
    is_array: bool


def is_under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it (``/a/b`` is under ``/a``, ``/ab`` not)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def parent_path(path: str) -> str:
    """The path of the group holding the node at ``path`` (``/`` for a top-level node)."""
    return path.rsplit("/", 1)[0] or "/"


def _remap(path: str, old: str, new: str) -> str | None:
    """``path`` with the prefix ``old`` replaced by ``new``, or ``None`` if not under it."""
    if path == old:
        return new
    if path.startswith(old + "/"):
        return new + path[len(old) :]
    return None


class MoveSet:
    """The moves of one rearrange session, oldest first."""

    def __init__(self, moves: Iterable[Move] = ()) -> None:
        self.moves: list[Move] = list(moves)

    def __repr__(self) -> str:
        return f"<MoveSet moves={len(self.moves)}>"

    def is_empty(self) -> bool:
        """Whether nothing was moved."""
        return not self.moves

    def record(self, move: Move) -> None:
        """Add a move (checked by the caller against the session's hierarchy)."""
        self.moves.append(move)

    def current_path(self, path: str) -> str:
        """Where the base snapshot's node at ``path`` is after the moves."""
        for move in self.moves:
            moved = _remap(path, move.from_path, move.to_path)
            if moved is not None:
                path = moved
        return path

    def original_path(self, path: str) -> str | None:
        """The base snapshot's path of the node the session shows at ``path``, or
        ``None`` if a move took the node that was there away (and none came in)."""
        for move in reversed(self.moves):
            moved = _remap(path, move.to_path, move.from_path)
            if moved is not None:
                path = moved
            elif is_under(path, move.from_path):
                return None
        return path

    def logged(self, nodes: Iterable[NodeSnapshot]) -> tuple[MoveOperation, ...]:
        """The moves a transaction log records, as Icechunk does: one per node of the
        base snapshot (``nodes``) whose path changed, children of a moved group too,
        from its base path to its final one (a node moved back is not moved)."""
        found = []
        for node in nodes:
            now = self.current_path(node.path)
            if now != node.path:
                found.append(MoveOperation(node.path, now, node.id, node.is_array))
        return tuple(found)

    def conflicts_on(self, theirs: Snapshot) -> list[Conflict]:
        """The moves replayed on ``theirs`` (a snapshot committed meanwhile), each checked
        as ``Session.move`` checks it: the node it moved must still be there (the same
        node), its destination free, under a group. Every failed check is a conflict."""
        found: list[Conflict] = []
        for k, move in enumerate(self.moves):
            before = MoveSet(self.moves[:k])

            def lookup(path: str, before: MoveSet = before) -> NodeSnapshot | None:
                base = before.original_path(path)
                return None if base is None else theirs.get_node(base)

            node = lookup(move.from_path)
            if node is None or node.id != move.node_id:
                kind = ConflictKind.MOVE_OPERATION_CANNOT_BE_REBASED
                found.append(Conflict(kind, move.from_path, node_id=move.node_id))
                continue
            if lookup(move.to_path) is not None:
                kind = ConflictKind.NEW_NODE_CONFLICTS_WITH_EXISTING_NODE
                found.append(Conflict(kind, move.to_path, node_id=move.node_id))
            parent = parent_path(move.to_path)
            holder = lookup(parent)
            if holder is None:
                kind = ConflictKind.MOVE_OPERATION_CANNOT_BE_REBASED
                found.append(Conflict(kind, parent, node_id=move.node_id))
            elif holder.is_array:
                kind = ConflictKind.NEW_NODE_IN_INVALID_GROUP
                found.append(Conflict(kind, parent, node_id=move.node_id))
        return found
