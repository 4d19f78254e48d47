"""Chunks a fork payload carries: those its changes name that are not yet stored.

A fork made with ``fork_with_changes`` starts from its parent's pending changes, which
may name chunk files the parent still uploads (write-behind). In the parent's process
the fork reads them from the parent's upload buffer; a fork sent to another process
(pickle, ``to_bytes``) cannot, so its payload carries the bytes of every chunk its
changes name that is still pending there. The rebuilt fork serves reads of them from
those bytes (and everything else from storage); the parent's commit, which waits for its
uploads, still stores them. What a payload carries is bounded by the parent's
write-behind buffer (``write_behind_bytes``), whatever the fork's changes hold.

A carried chunk is checked where the payload is decoded: named by a native reference
of the changes, at most once, and long enough for every reference to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aicechunk.changes.changeset import ChangeSet
from aicechunk.changes.chunktable import ChunkTable
from aicechunk.format.ids import ChunkId
from aicechunk.format.manifest import NativeRef
from aicechunk.session.state import SessionState

__all__ = [
    "carried_from_plain",
    "carried_to_plain",
    "inherit_pending",
    "native_extents",
    "pending_named",
]


def native_extents(changes: ChangeSet) -> dict[ChunkId, int]:
    """Every chunk file a native reference of ``changes`` names, with the end of the
    furthest byte range read from it (without turning chunk tables into objects). Only
    references still in effect count: one a later change of its chunk replaced does
    not (a payload holds the changes resolved, so its reader sees only those)."""
    ends: dict[ChunkId, int] = {}

    def note(chunk_id: ChunkId, end: int) -> None:
        if end > ends.get(chunk_id, -1):
            ends[chunk_id] = end

    for node_id in changes.chunk_nodes():
        refs, tables = changes.chunk_parts(node_id)
        table = ChunkTable.combine(tables) if tables else None  # the tables apply last
        for coords, ref in refs.items():
            if isinstance(ref, NativeRef) and (table is None or table.row_of(coords) is None):
                note(ref.chunk_id, ref.offset + ref.length)
        if table is not None:
            for raw, end in _table_extents(table):
                note(ChunkId(raw), end)
    return ends


def _table_extents(table: ChunkTable) -> Iterable[tuple[bytes, int]]:
    ends = (table.native_offsets + table.native_lengths).tolist()
    return zip((row.tobytes() for row in table.chunk_ids), ends, strict=True)


def pending_named(state: SessionState) -> dict[ChunkId, bytes]:
    """The bytes of the chunks ``state``'s changes name that are not known to be stored:
    pending in its parent's uploads, or carried in from a payload."""
    sources: list[Mapping[ChunkId, bytes] | Any] = [
        s for s in (state.parent_uploads, state.carried) if s
    ]
    if not sources:
        return {}
    found: dict[ChunkId, bytes] = {}
    for chunk_id in native_extents(state.changes):
        for source in sources:
            data = source.get(chunk_id)
            if data is not None:
                found[chunk_id] = data
                break
    return found


def carried_to_plain(chunks: Mapping[ChunkId, bytes]) -> list[list[bytes]]:
    """Carried chunks as payload rows ``[chunk id, bytes]``."""
    return [[chunk_id.bytes, data] for chunk_id, data in chunks.items()]


def carried_from_plain(rows: Any, changes: ChangeSet) -> dict[ChunkId, bytes]:
    """Payload rows back as carried chunks; ``ValueError`` for a row that is not
    ``[12-byte chunk id, bytes]``, names a chunk no native reference of ``changes``
    names, repeats one, or is shorter than a reference to it reads."""
    if not isinstance(rows, list):
        raise ValueError("carried chunks must be a list")
    extents = native_extents(changes) if rows else {}
    carried: dict[ChunkId, bytes] = {}
    for row in rows:
        if not (
            isinstance(row, list)
            and len(row) == 2
            and isinstance(row[0], bytes)
            and len(row[0]) == ChunkId.SIZE
            and isinstance(row[1], bytes)
        ):
            raise ValueError(f"a carried chunk must be [{ChunkId.SIZE}-byte chunk id, bytes]")
        chunk_id = ChunkId(row[0])
        end = extents.get(chunk_id)
        if end is None:
            raise ValueError(f"carried chunk {chunk_id} is named by no change")
        if chunk_id in carried:
            raise ValueError(f"carried chunk {chunk_id} appears twice")
        if len(row[1]) < end:
            raise ValueError(
                f"carried chunk {chunk_id} holds {len(row[1])} bytes; a change reads {end}"
            )
        carried[chunk_id] = row[1]
    return carried


def inherit_pending(fork: SessionState, parent: SessionState) -> None:
    """Let ``fork`` (made with ``parent``'s changes) read the chunks ``parent`` has not
    seen stored: its uploads (or, if ``parent`` is itself such a fork, its parent's) and
    what its payload carried."""
    fork.parent_uploads = parent.uploads if parent.uploads is not None else parent.parent_uploads
    fork.carried = None if parent.carried is None else dict(parent.carried)
