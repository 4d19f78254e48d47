"""A session's pending changes: what was added, updated and deleted since its snapshot.

The change set is plain data: it knows node ids, paths, metadata bytes and chunk
references, never storage. Sessions consult it before the snapshot, commits turn it into
manifests, a snapshot and a transaction log, and forks carry it between processes and
merge it back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aicechunk.changes.chunktable import ChunkTable
from aicechunk.format import Coords
from aicechunk.format.ids import ChunkId, NodeId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef, VirtualRef
from aicechunk.format.snapshot import DimensionShape

__all__ = [
    "ArrayDefinition",
    "ChangeSet",
]


@dataclass(frozen=True, slots=True)
class ArrayDefinition:
    """What an array node records besides its chunks: shape, dimension names, metadata."""

    shape: tuple[DimensionShape, ...]
    dimension_names: tuple[str | None, ...] | None
    user_data: bytes


class ChangeSet:
    """Pending changes of one session.

    ``new_groups``/``new_arrays`` map path -> node id (+ definition); updates are keyed by
    node id; deletions record path -> node id of nodes that existed in the base snapshot
    (a node created and deleted in the same session simply disappears). ``chunks`` maps a
    node id to the chunk references set (a ``ChunkRef``) or deleted (``None``).

    Chunk changes merged in from forks stay column by column (``ChunkTable``) until
    something asks for them one by one: a commit encodes them without making objects.
    Chunks set one by one after a node has tables wait in a short tail (applied after
    the tables), folded into a table of its own when the tables are used, so that one
    change does not turn millions of bulk references into objects.
    """

    def __init__(
        self,
        new_groups: dict[str, tuple[NodeId, bytes]] | None = None,
        new_arrays: dict[str, tuple[NodeId, ArrayDefinition]] | None = None,
        updated_groups: dict[NodeId, bytes] | None = None,
        updated_arrays: dict[NodeId, ArrayDefinition] | None = None,
        deleted_groups: dict[str, NodeId] | None = None,
        deleted_arrays: dict[str, NodeId] | None = None,
        chunks: dict[NodeId, dict[Coords, ChunkRef | None]] | None = None,
    ) -> None:
        self.new_groups = {} if new_groups is None else new_groups
        self.new_arrays = {} if new_arrays is None else new_arrays
        self.updated_groups = {} if updated_groups is None else updated_groups
        self.updated_arrays = {} if updated_arrays is None else updated_arrays
        self.deleted_groups = {} if deleted_groups is None else deleted_groups
        self.deleted_arrays = {} if deleted_arrays is None else deleted_arrays
        # a node's chunk changes are its dict, then its tables applied in order
        self._chunks: dict[NodeId, dict[Coords, ChunkRef | None]] = chunks or {}
        self._tables: dict[NodeId, list[ChunkTable]] = {}
        self._tail: dict[NodeId, dict[Coords, ChunkRef | None]] = {}  # after the tables

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChangeSet):
            return NotImplemented
        fields = (
            "new_groups",
            "new_arrays",
            "updated_groups",
            "updated_arrays",
            "deleted_groups",
            "deleted_arrays",
        )
        if any(getattr(self, f) != getattr(other, f) for f in fields):
            return False
        mine = {n: refs for n, refs in self.chunks.items() if refs}
        return mine == {n: refs for n, refs in other.chunks.items() if refs}

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"<ChangeSet new_nodes={len(list(self.new_node_paths()))} "
            f"arrays_with_chunk_changes={len(self.chunk_nodes())}>"
        )

    # -- chunk storage ----------------------------------------------------------------

    def chunk_nodes(self) -> list[NodeId]:
        """Ids of the arrays with chunk changes."""
        return list(dict.fromkeys([*self._chunks, *self._tables, *self._tail]))

    def _fold(self, node_id: NodeId) -> None:
        """Turn the node's tail into a table after its others."""
        tail = self._tail.pop(node_id, None)
        if not tail:
            return
        table = ChunkTable.from_refs(tail)
        if table is None:  # mixed dimensionality (never valid in an array): objects
            self._materialize(node_id).update(tail)
        else:
            self._tables.setdefault(node_id, []).append(table)

    def _fold_all(self) -> None:
        for node_id in list(self._tail):
            self._fold(node_id)

    def _materialize(self, node_id: NodeId) -> dict[Coords, ChunkRef | None]:
        self._fold(node_id)
        refs = self._chunks.setdefault(node_id, {})
        for table in self._tables.pop(node_id, ()):
            refs.update(table.to_refs())
        return refs

    @property
    def chunks(self) -> dict[NodeId, dict[Coords, ChunkRef | None]]:
        """Every array's chunk changes as reference objects (tables are turned into
        objects on first access)."""
        self._fold_all()
        for node_id in list(self._tables):
            self._materialize(node_id)
        return self._chunks

    def chunk_table(self, node_id: NodeId) -> ChunkTable | None:
        """The node's chunk changes as one resolved table, when they are held as tables
        only (the merged-forks case); ``None`` otherwise."""
        self._fold(node_id)
        tables = self._tables.get(node_id)
        if not tables or self._chunks.get(node_id):
            return None
        combined = ChunkTable.combine(tables)
        self._tables[node_id] = [combined]
        return combined

    def chunk_parts(
        self, node_id: NodeId
    ) -> tuple[Mapping[Coords, ChunkRef | None], Sequence[ChunkTable]]:
        """The node's chunk changes as held: references set one by one, and tables
        (applied after them), without turning tables into objects."""
        self._fold(node_id)
        return self._chunks.get(node_id, {}), self._tables.get(node_id, [])

    def chunk_change_rows(self) -> int:
        """How many chunk changes are held (a chunk changed twice may count twice)."""
        tables = sum(len(t) for ts in self._tables.values() for t in ts)
        singles = (*self._chunks.values(), *self._tail.values())
        return tables + sum(map(len, singles))

    def chunk_changes_coords(self, node_id: NodeId) -> Sequence[Coords]:
        """Coordinates of every chunk changed (set or deleted) in one array."""
        table = self.chunk_table(node_id)
        if table is not None:
            return table.coord_rows()
        return list(self.chunk_changes(node_id))

    # -- queries ----------------------------------------------------------------------

    def is_empty(self) -> bool:
        """Whether nothing has changed."""
        return not (
            self.new_groups
            or self.new_arrays
            or self.updated_groups
            or self.updated_arrays
            or self.deleted_groups
            or self.deleted_arrays
            or self.chunk_change_rows() > 0
        )

    def is_deleted(self, path: str) -> bool:
        """Whether the base snapshot's node at ``path`` was deleted."""
        return path in self.deleted_groups or path in self.deleted_arrays

    def chunk_change(self, node_id: NodeId, coords: Coords) -> tuple[bool, ChunkRef | None]:
        """Whether chunk ``coords`` of one node was changed, and its reference then
        (``None``: deleted). Tables are searched as columns, not turned into objects."""
        tail = self._tail.get(node_id)
        if tail and coords in tail:
            return True, tail[coords]
        tables = self._tables.get(node_id)
        if tables:
            table = ChunkTable.combine(tables)
            self._tables[node_id] = [table]
            row = table.row_of(coords)
            if row is not None:  # tables apply after the references set one by one
                return True, table.ref_at(row)
        refs = self._chunks.get(node_id)
        if refs and coords in refs:
            return True, refs[coords]
        return False, None

    def chunk_changes(self, node_id: NodeId) -> dict[Coords, ChunkRef | None]:
        """The chunk references set or deleted for one node (empty if none)."""
        if node_id in self._tables or node_id in self._tail:
            return self._materialize(node_id)
        return self._chunks.get(node_id, {})

    def new_node_paths(self) -> Iterator[str]:
        """Paths of nodes created in this session."""
        yield from self.new_groups
        yield from self.new_arrays

    # -- changes ----------------------------------------------------------------------

    def add_group(self, path: str, node_id: NodeId, user_data: bytes) -> None:
        """Record a new group."""
        self.new_groups[path] = (node_id, user_data)

    def add_array(self, path: str, node_id: NodeId, definition: ArrayDefinition) -> None:
        """Record a new array."""
        self.new_arrays[path] = (node_id, definition)

    def update_group(self, path: str, node_id: NodeId, user_data: bytes) -> None:
        """Record new metadata for a group (new or from the base snapshot)."""
        if path in self.new_groups:
            self.new_groups[path] = (node_id, user_data)
        else:
            self.updated_groups[node_id] = user_data

    def update_array(self, path: str, node_id: NodeId, definition: ArrayDefinition) -> None:
        """Record a new definition for an array (new or from the base snapshot)."""
        if path in self.new_arrays:
            self.new_arrays[path] = (node_id, definition)
        else:
            self.updated_arrays[node_id] = definition

    def delete_group(self, path: str, node_id: NodeId) -> None:
        """Record the deletion of a group."""
        if self.new_groups.pop(path, None) is None:
            self.updated_groups.pop(node_id, None)
            self.deleted_groups[path] = node_id

    def delete_array(self, path: str, node_id: NodeId) -> None:
        """Record the deletion of an array and forget its pending chunks."""
        self._chunks.pop(node_id, None)
        self._tables.pop(node_id, None)
        self._tail.pop(node_id, None)
        if self.new_arrays.pop(path, None) is None:
            self.updated_arrays.pop(node_id, None)
            self.deleted_arrays[path] = node_id

    def set_chunk(self, node_id: NodeId, coords: Coords, ref: ChunkRef | None) -> None:
        """Record a chunk reference (``None`` deletes the chunk)."""
        if node_id in self._tables:  # after the tables, without turning them into objects
            self._tail.setdefault(node_id, {})[coords] = ref
        else:
            self._chunks.setdefault(node_id, {})[coords] = ref

    def add_chunk_table(self, node_id: NodeId, table: ChunkTable) -> None:
        """Record chunk changes held as a table (applied after the ones already here)."""
        self._fold(node_id)
        if len(table):
            self._tables.setdefault(node_id, []).append(table)

    def merge(self, other: ChangeSet) -> None:
        """Fold ``other`` in; where both touch the same thing, ``other`` wins (a node
        ``other`` adds replaces one this change set added at the same path).

        ``other``'s deletions name nodes of the base snapshot by id: they go first, so
        that a node ``other`` deleted and created again at the same path is the new one.
        """
        self._fold_all()
        other._fold_all()
        for path, nid in other.deleted_groups.items():
            self.updated_groups.pop(nid, None)
            self.deleted_groups[path] = nid
        for path, nid in other.deleted_arrays.items():
            self._chunks.pop(nid, None)
            self._tables.pop(nid, None)
            self.updated_arrays.pop(nid, None)
            self.deleted_arrays[path] = nid
        for path, (nid, data) in other.new_groups.items():
            replaced = self.new_arrays.pop(path, None)
            if replaced is not None:
                self._chunks.pop(replaced[0], None)
                self._tables.pop(replaced[0], None)
            self.new_groups[path] = (nid, data)
        for path, (nid, definition) in other.new_arrays.items():
            self.new_groups.pop(path, None)
            replaced = self.new_arrays.get(path)
            if replaced is not None and replaced[0] != nid:
                self._chunks.pop(replaced[0], None)
                self._tables.pop(replaced[0], None)
            self.new_arrays[path] = (nid, definition)
        self.updated_groups.update(other.updated_groups)
        self.updated_arrays.update(other.updated_arrays)
        for nid, refs in other._chunks.items():
            if refs and nid in self._tables:  # after this node's tables: as a table
                self._tail.setdefault(nid, {}).update(refs)
                self._fold(nid)
            elif refs:
                self._chunks.setdefault(nid, {}).update(refs)
        for nid, tables in other._tables.items():
            for table in tables:
                self.add_chunk_table(nid, table)

    # -- plain data (fork payloads) -----------------------------------------------------

    def to_plain(self) -> dict[str, Any]:
        """The change set as plain data (bytes, ints, strings, lists, dicts)."""
        return {
            "ng": [[p, n.bytes, d] for p, (n, d) in self.new_groups.items()],
            "na": [[p, n.bytes, _def_to_plain(d)] for p, (n, d) in self.new_arrays.items()],
            "ug": [[n.bytes, d] for n, d in self.updated_groups.items()],
            "ua": [[n.bytes, _def_to_plain(d)] for n, d in self.updated_arrays.items()],
            "dg": [[p, n.bytes] for p, n in self.deleted_groups.items()],
            "da": [[p, n.bytes] for p, n in self.deleted_arrays.items()],
            "c": [[n.bytes, self._node_chunks_to_plain(n)] for n in self.chunk_nodes()],
        }

    def _node_chunks_to_plain(self, node_id: NodeId) -> list[dict[str, Any]]:
        self._fold(node_id)
        out = []
        refs = self._chunks.get(node_id)
        if refs:
            table = ChunkTable.from_refs(refs)
            if table is None:  # mixed dimensionality (never valid in an array): one by one
                out.append({"L": [[list(c), _ref_to_plain(r)] for c, r in refs.items()]})
            else:
                out.append(table.to_plain())
        tables = self._tables.get(node_id, [])
        if len(tables) > 1:
            tables = [ChunkTable.combine(tables)]
        out.extend(t.to_plain() for t in tables)
        return out

    @classmethod
    def from_plain(cls, data: Any) -> ChangeSet:
        """Rebuild a change set from ``to_plain``'s output; ``ValueError`` (or
        ``InvalidIdError``) for anything of the wrong type, shape or size, or duplicated."""
        _need(isinstance(data, dict), "a change set must be a mapping")

        def rows(key: str, size: int) -> list[list[Any]]:
            return [_list(r, f"a {key!r} entry", size) for r in _list(data[key], key)]

        def node_id(value: Any) -> NodeId:
            return NodeId(_bytes(value, "node id"))

        cs = cls(
            new_groups=_unique(
                [(p, (node_id(n), _bytes(d, "metadata"))) for p, n, d in rows("ng", 3)],
                "new group paths",
            ),
            new_arrays=_unique(
                [(p, (node_id(n), _def_from_plain(d))) for p, n, d in rows("na", 3)],
                "new array paths",
            ),
            updated_groups=_unique(
                [(node_id(n), _bytes(d, "metadata")) for n, d in rows("ug", 2)],
                "updated groups",
            ),
            updated_arrays=_unique(
                [(node_id(n), _def_from_plain(d)) for n, d in rows("ua", 2)], "updated arrays"
            ),
            deleted_groups=_unique([(p, node_id(n)) for p, n in rows("dg", 2)], "deleted groups"),
            deleted_arrays=_unique([(p, node_id(n)) for p, n in rows("da", 2)], "deleted arrays"),
        )
        seen: set[NodeId] = set()
        for n, items in rows("c", 2):
            nid = node_id(n)
            _need(nid not in seen, "duplicate chunk changes of one node")
            seen.add(nid)
            for item in _list(items, "chunk changes"):
                _need(isinstance(item, dict), "chunk changes must be tables")
                if "L" not in item:
                    cs.add_chunk_table(nid, ChunkTable.from_plain(item))
                    continue
                for entry in _list(item["L"], "chunk changes"):
                    coords, ref = _list(entry, "a chunk change", 2)
                    key = tuple(_int(x, "a chunk index") for x in _list(coords, "coordinates"))
                    cs.set_chunk(nid, key, _ref_from_plain(ref))
        return cs


# --- serialization -------------------------------------------------------------------
# A compact, msgpack-friendly form: ids as raw bytes, refs as short tagged lists.

_NATIVE, _INLINE, _VIRTUAL = 0, 1, 2


def _ref_to_plain(ref: ChunkRef | None) -> list[Any] | None:
    if ref is None:
        return None
    if isinstance(ref, NativeRef):
        return [_NATIVE, ref.chunk_id.bytes, ref.offset, ref.length]
    if isinstance(ref, InlineRef):
        return [_INLINE, ref.data]
    return [_VIRTUAL, ref.location, ref.offset, ref.length, ref.etag, ref.last_modified]


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _int(value: Any, what: str) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool), f"{what} must be an integer")
    return int(value)


def _bytes(value: Any, what: str) -> bytes:
    _need(isinstance(value, bytes), f"{what} must be bytes")
    return bytes(value)


def _list(value: Any, what: str, size: int | None = None) -> list[Any]:
    _need(isinstance(value, list), f"{what} must be a list")
    _need(size is None or len(value) == size, f"{what} must have {size} items")
    return list(value)


def _ref_from_plain(item: list[Any] | None) -> ChunkRef | None:
    if item is None:
        return None
    item = _list(item, "a chunk reference")
    _need(len(item) > 0, "a chunk reference cannot be empty")
    kind = item[0]
    if kind == _NATIVE:
        _need(len(item) == 4, "a native reference has 4 fields")
        return NativeRef(
            ChunkId(_bytes(item[1], "chunk id")),
            _int(item[2], "offset"),
            _int(item[3], "length"),
        )
    if kind == _INLINE:
        _need(len(item) == 2, "an inline reference has 2 fields")
        return InlineRef(_bytes(item[1], "inline data"))
    if kind == _VIRTUAL:
        _need(len(item) == 6, "a virtual reference has 6 fields")
        _need(isinstance(item[1], str), "a virtual location must be a string")
        _need(item[4] is None or isinstance(item[4], str), "an ETag must be a string")
        modified = None if item[5] is None else _int(item[5], "last-modified")
        return VirtualRef(
            item[1], _int(item[2], "offset"), _int(item[3], "length"), item[4], modified
        )
    raise ValueError(f"unknown chunk reference kind {kind!r}")


def _def_to_plain(d: ArrayDefinition) -> list[Any]:
    names = None if d.dimension_names is None else list(d.dimension_names)
    return [[[s.array_length, s.chunk_length] for s in d.shape], names, d.user_data]


def _def_from_plain(item: Any) -> ArrayDefinition:
    shape_items, names, user_data = _list(item, "an array definition", 3)
    shape = tuple(
        DimensionShape(_int(a, "array length"), _int(c, "chunk length"))
        for a, c in (_list(d, "a dimension", 2) for d in _list(shape_items, "shape"))
    )
    if names is not None:
        names = tuple(_list(names, "dimension names"))
        _need(all(n is None or isinstance(n, str) for n in names), "bad dimension names")
    return ArrayDefinition(shape, names, _bytes(user_data, "array metadata"))


def _unique(rows: list[tuple[Any, Any]], what: str) -> dict[Any, Any]:
    out = dict(rows)
    _need(len(out) == len(rows), f"duplicate {what}")
    return out
