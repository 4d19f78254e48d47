"""A session's pending changes: what was added, updated and deleted since its snapshot.

The change set is plain data: it knows node ids, paths, metadata bytes and chunk
references, never storage. Sessions consult it before the snapshot, commits turn it into
manifests, a snapshot and a transaction log, and forks carry it between processes and
merge it back.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aicechunk.format.ids import ChunkId, NodeId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef, VirtualRef
from aicechunk.format.snapshot import DimensionShape

__all__ = [
    "ArrayDefinition",
    "ChangeSet",
    "Coords",
    "changeset_from_plain",
    "changeset_to_plain",
]

Coords = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ArrayDefinition:
    """What an array node records besides its chunks: shape, dimension names, metadata."""

    shape: tuple[DimensionShape, ...]
    dimension_names: tuple[str | None, ...] | None
    user_data: bytes


@dataclass
class ChangeSet:
    """Pending changes of one session.

    ``new_groups``/``new_arrays`` map path -> node id (+ definition); updates are keyed by
    node id; deletions record path -> node id of nodes that existed in the base snapshot
    (a node created and deleted in the same session simply disappears). ``chunks`` maps a
    node id to the chunk references set (a ``ChunkRef``) or deleted (``None``).
    """

    new_groups: dict[str, tuple[NodeId, bytes]] = field(default_factory=dict)
    new_arrays: dict[str, tuple[NodeId, ArrayDefinition]] = field(default_factory=dict)
    updated_groups: dict[NodeId, bytes] = field(default_factory=dict)
    updated_arrays: dict[NodeId, ArrayDefinition] = field(default_factory=dict)
    deleted_groups: dict[str, NodeId] = field(default_factory=dict)
    deleted_arrays: dict[str, NodeId] = field(default_factory=dict)
    chunks: dict[NodeId, dict[Coords, ChunkRef | None]] = field(default_factory=dict)

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
            or any(self.chunks.values())
        )

    def is_deleted(self, path: str) -> bool:
        """Whether the base snapshot's node at ``path`` was deleted."""
        return path in self.deleted_groups or path in self.deleted_arrays

    def chunk_changes(self, node_id: NodeId) -> dict[Coords, ChunkRef | None]:
        """The chunk references set or deleted for one node (empty if none)."""
        return self.chunks.get(node_id, {})

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
        self.chunks.pop(node_id, None)
        if self.new_arrays.pop(path, None) is None:
            self.updated_arrays.pop(node_id, None)
            self.deleted_arrays[path] = node_id

    def set_chunk(self, node_id: NodeId, coords: Coords, ref: ChunkRef | None) -> None:
        """Record a chunk reference (``None`` deletes the chunk)."""
        self.chunks.setdefault(node_id, {})[coords] = ref

    def merge(self, other: ChangeSet) -> None:
        """Fold ``other`` in; where both touch the same thing, ``other`` wins."""
        for path, (nid, data) in other.new_groups.items():
            self.new_groups[path] = (nid, data)
        for path, (nid, definition) in other.new_arrays.items():
            self.new_arrays[path] = (nid, definition)
        self.updated_groups.update(other.updated_groups)
        self.updated_arrays.update(other.updated_arrays)
        for path, nid in other.deleted_groups.items():
            self.delete_group(path, nid)
        for path, nid in other.deleted_arrays.items():
            self.delete_array(path, nid)
        for nid, refs in other.chunks.items():
            self.chunks.setdefault(nid, {}).update(refs)


# --- serialization -------------------------------------------------------------------
# A compact, msgpack-friendly form: ids as raw bytes, refs as short tagged lists.

_NATIVE, _INLINE, _VIRTUAL = 0, 1, 2
_OFFSET = operator.attrgetter("offset")
_LENGTH = operator.attrgetter("length")


def _ref_to_plain(ref: ChunkRef | None) -> list[Any] | None:
    if ref is None:
        return None
    if isinstance(ref, NativeRef):
        return [_NATIVE, ref.chunk_id.bytes, ref.offset, ref.length]
    if isinstance(ref, InlineRef):
        return [_INLINE, ref.data]
    return [_VIRTUAL, ref.location, ref.offset, ref.length, ref.etag, ref.last_modified]


def _ref_from_plain(item: list[Any] | None) -> ChunkRef | None:
    if item is None:
        return None
    kind = item[0]
    if kind == _NATIVE:
        return NativeRef(ChunkId(item[1]), int(item[2]), int(item[3]))
    if kind == _INLINE:
        return InlineRef(bytes(item[1]))
    if kind == _VIRTUAL:
        return VirtualRef(str(item[1]), int(item[2]), int(item[3]), item[4], item[5])
    raise ValueError(f"unknown chunk reference kind {kind!r}")


def _def_to_plain(d: ArrayDefinition) -> list[Any]:
    names = None if d.dimension_names is None else list(d.dimension_names)
    return [[[s.array_length, s.chunk_length] for s in d.shape], names, d.user_data]


def _def_from_plain(item: list[Any]) -> ArrayDefinition:
    shape = tuple(DimensionShape(int(a), int(c)) for a, c in item[0])
    names = None if item[1] is None else tuple(item[1])
    return ArrayDefinition(shape, names, bytes(item[2]))


def _chunks_to_plain(refs: dict[Coords, ChunkRef | None]) -> dict[str, Any]:
    """One array's chunk changes, column by column: coordinates as one int64 buffer per
    kind of change, native and inline refs as flat buffers, virtual refs with their
    locations listed once. Coordinates of mixed dimensionality (never valid in an array)
    fall back to one entry per chunk."""
    ndims = set(map(len, refs))
    if len(ndims) > 1:
        return {"L": [[list(c), _ref_to_plain(r)] for c, r in refs.items()]}
    ndim = ndims.pop() if ndims else 0
    groups: dict[type | None, list[tuple[Coords, Any]]] = {}
    for item in refs.items():
        groups.setdefault(type(item[1]) if item[1] is not None else None, []).append(item)

    def coords_of(items: list[tuple[Coords, Any]]) -> bytes:
        flat = itertools.chain.from_iterable(c for c, _ in items)
        return np.fromiter(flat, dtype="<i8", count=len(items) * ndim).tobytes()

    out: dict[str, Any] = {"d": ndim}
    if None in groups:
        out["D"] = [coords_of(groups[None]), len(groups[None])]
    if NativeRef in groups:
        items = groups[NativeRef]
        natives: list[NativeRef] = [r for _, r in items]
        out["N"] = [
            coords_of(items),
            b"".join(r.chunk_id.bytes for r in natives),
            np.fromiter(map(_OFFSET, natives), dtype="<u8", count=len(natives)).tobytes(),
            np.fromiter(map(_LENGTH, natives), dtype="<u8", count=len(natives)).tobytes(),
        ]
    if InlineRef in groups:
        items = groups[InlineRef]
        datas = [r.data for _, r in items]
        out["I"] = [
            coords_of(items),
            np.fromiter(map(len, datas), dtype="<u8", count=len(datas)).tobytes(),
            b"".join(datas),
        ]
    if VirtualRef in groups:
        items = groups[VirtualRef]
        virtuals: list[VirtualRef] = [r for _, r in items]
        locations: dict[str, int] = {}
        which = [locations.setdefault(r.location, len(locations)) for r in virtuals]
        etags = [r.etag for r in virtuals]
        modified = [r.last_modified for r in virtuals]
        out["V"] = [
            coords_of(items),
            list(locations),
            np.asarray(which, dtype="<u4").tobytes(),
            np.fromiter(map(_OFFSET, virtuals), dtype="<u8", count=len(virtuals)).tobytes(),
            np.fromiter(map(_LENGTH, virtuals), dtype="<u8", count=len(virtuals)).tobytes(),
            None if not any(etags) else etags,
            None if not any(modified) else modified,
        ]
    return out


def _chunks_from_plain(data: dict[str, Any]) -> dict[Coords, ChunkRef | None]:
    if "L" in data:
        return {tuple(int(x) for x in c): _ref_from_plain(r) for c, r in data["L"]}
    ndim = int(data["d"])
    out: dict[Coords, ChunkRef | None] = {}

    def coords(raw: bytes, count: int) -> list[Coords]:
        if ndim == 0:
            return [()] * count
        flat = np.frombuffer(raw, dtype="<i8")
        if len(flat) != count * ndim:
            raise ValueError(f"{len(flat)} coordinates for {count} chunk changes of {ndim} dims")
        # zip over the columns makes the tuples in C
        return list(zip(*flat.reshape(count, ndim).T.tolist(), strict=True))

    if "N" in data:
        raw, ids, offsets, lengths = data["N"]
        offs = np.frombuffer(offsets, dtype="<u8").tolist()
        lens = np.frombuffer(lengths, dtype="<u8").tolist()
        if len(ids) != 12 * len(offs) or len(lens) != len(offs):
            raise ValueError("native chunk columns of different lengths")
        cuts = map(slice, range(0, len(ids), 12), range(12, len(ids) + 12, 12))
        chunk_ids = map(ChunkId, map(ids.__getitem__, cuts))
        out.update(zip(coords(raw, len(offs)), map(NativeRef, chunk_ids, offs, lens), strict=True))
    if "I" in data:
        raw, lengths, blob = data["I"]
        ends = np.cumsum(np.frombuffer(lengths, dtype="<u8").astype(np.int64)).tolist()
        if (ends[-1] if ends else 0) != len(blob):
            raise ValueError("inline chunk lengths do not add up to the inline bytes")
        starts = [0, *ends[:-1]]
        datas = list(map(blob.__getitem__, map(slice, starts, ends)))
        out.update(zip(coords(raw, len(ends)), map(InlineRef, datas), strict=True))
    if "V" in data:
        raw, locations, which, offsets, lengths, etags, modified = data["V"]
        idx = np.frombuffer(which, dtype="<u4").tolist()
        count = len(idx)
        locs = list(map(locations.__getitem__, idx))
        offs = np.frombuffer(offsets, dtype="<u8").tolist()
        lens = np.frombuffer(lengths, dtype="<u8").tolist()
        etag_col = [None] * count if etags is None else etags
        mod_col = [None] * count if modified is None else modified
        refs = map(VirtualRef, locs, offs, lens, etag_col, mod_col)
        out.update(zip(coords(raw, count), refs, strict=True))
    if "D" in data:
        raw, count = data["D"]
        out.update(dict.fromkeys(coords(raw, int(count))))
    return out


def changeset_to_plain(cs: ChangeSet) -> dict[str, Any]:
    """The change set as plain data (bytes, ints, strings, lists, dicts)."""
    return {
        "ng": [[p, n.bytes, d] for p, (n, d) in cs.new_groups.items()],
        "na": [[p, n.bytes, _def_to_plain(d)] for p, (n, d) in cs.new_arrays.items()],
        "ug": [[n.bytes, d] for n, d in cs.updated_groups.items()],
        "ua": [[n.bytes, _def_to_plain(d)] for n, d in cs.updated_arrays.items()],
        "dg": [[p, n.bytes] for p, n in cs.deleted_groups.items()],
        "da": [[p, n.bytes] for p, n in cs.deleted_arrays.items()],
        "c": [[n.bytes, _chunks_to_plain(refs)] for n, refs in cs.chunks.items() if refs],
    }


def changeset_from_plain(data: dict[str, Any]) -> ChangeSet:
    """Rebuild a change set from ``changeset_to_plain``'s output."""
    return ChangeSet(
        new_groups={p: (NodeId(n), bytes(d)) for p, n, d in data["ng"]},
        new_arrays={p: (NodeId(n), _def_from_plain(d)) for p, n, d in data["na"]},
        updated_groups={NodeId(n): bytes(d) for n, d in data["ug"]},
        updated_arrays={NodeId(n): _def_from_plain(d) for n, d in data["ua"]},
        deleted_groups={p: NodeId(n) for p, n in data["dg"]},
        deleted_arrays={p: NodeId(n) for p, n in data["da"]},
        chunks={NodeId(n): _chunks_from_plain(refs) for n, refs in data["c"]},
    )
