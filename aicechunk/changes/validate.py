"""What a node may be: its path, its definition, its chunk coordinates and references.

One set of checks serves every way changes enter a session: the store's keys, the
session API, and fork payloads from other processes (which also pass the store's
metadata parser, so their zarr documents are checked as the store checks them).
Everything accepted here can be committed: values the on-disk format cannot hold are
refused when written, never at commit.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from aicechunk.changes.changeset import ArrayDefinition, ChangeSet
from aicechunk.changes.chunktable import ChunkTable
from aicechunk.errors import (
    ChunkIndexError,
    InvalidChangesError,
    InvalidNodePathError,
    UnrepresentableValueError,
)
from aicechunk.format import Coords
from aicechunk.format.ids import NodeId
from aicechunk.format.manifest import (
    MAX_CHUNK_INDEX,
    MAX_U32,
    MAX_U64,
    ChunkRef,
    InlineRef,
    NativeRef,
    VirtualRef,
)
from aicechunk.format.snapshot import ArrayNodeData, DimensionShape, Snapshot

__all__ = [
    "BaseNodes",
    "InvalidChangesError",  # re-exported from errors
    "MetadataParser",
    "check_changes",
    "check_chunk_coords",
    "check_chunk_ref",
    "check_definition",
    "check_grid_for_spec",
    "check_node_path",
    "check_shape_for_spec",
    "chunk_grid",
    "encodable",
    "is_length",
]


def encodable(text: str) -> bool:
    """Whether ``text`` is valid UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
        return False
    return True


def check_node_path(path: object) -> str:
    """``path`` if it is an absolute, normalized zarr node path (``/`` or ``/a/b``):
    no empty, ``.`` or ``..`` segment, no control character, valid UTF-8."""
    if not isinstance(path, str):
        raise InvalidNodePathError(path, "not a string")
    if path == "/":
        return path
    if not path.startswith("/"):
        raise InvalidNodePathError(path, "must be absolute (start with '/')")
    for segment in path[1:].split("/"):
        if segment in ("", ".", ".."):
            raise InvalidNodePathError(path, "empty, '.' or '..' segment")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise InvalidNodePathError(path, "control character (NUL, newline, ...)")
    if not encodable(path):
        raise InvalidNodePathError(path, "not encodable as UTF-8")
    return path


def is_length(value: Any) -> bool:
    """Whether ``value`` is a non-negative int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def chunk_grid(definition: ArrayDefinition) -> tuple[int, ...]:
    """Number of chunks along each dimension."""
    return tuple(
        (d.array_length + d.chunk_length - 1) // d.chunk_length if d.chunk_length else 0
        for d in definition.shape
    )


def on_grid(coords: Coords, grid: tuple[int, ...]) -> bool:
    """Whether chunk ``coords`` lie on a chunk grid of ``grid`` chunks per dimension."""
    return len(coords) == len(grid) and all(0 <= c < g for c, g in zip(coords, grid, strict=True))


def check_chunk_coords(path: str, coords: Any, definition: ArrayDefinition) -> Coords:
    """``coords`` as a tuple of ints, if they name a chunk of the array's grid that the
    format can hold; ``ChunkIndexError`` or ``UnrepresentableValueError`` otherwise."""
    grid = chunk_grid(definition)
    try:
        normalized = tuple(map(operator.index, coords))
    except TypeError:
        raise ChunkIndexError(path, tuple(coords), grid) from None
    if len(normalized) != len(grid) or any(
        not 0 <= c < g for c, g in zip(normalized, grid, strict=True)
    ):
        raise ChunkIndexError(path, normalized, grid)
    if any(c > MAX_CHUNK_INDEX for c in normalized):
        raise UnrepresentableValueError(
            f"chunk {list(normalized)} of array {path!r}",
            f"chunk indices are uint32 in the format, at most {MAX_CHUNK_INDEX}",
        )
    return normalized


def _u64(value: Any) -> bool:
    return is_length(value) and value <= MAX_U64


def _virtual_problem(location: Any, etag: Any, last_modified: Any) -> str | None:
    if not isinstance(location, str) or not location:
        return "the location must be a non-empty string"
    if not encodable(location):
        return "the location must be valid UTF-8"
    if etag is not None and (not isinstance(etag, str) or not encodable(etag)):
        return "the ETag checksum must be a string"
    if last_modified is not None and not (is_length(last_modified) and last_modified <= MAX_U32):
        return "the last-modified checksum is uint32 seconds since 1970 (until 2106)"
    return None


def check_chunk_ref(where: str, ref: ChunkRef) -> None:
    """Refuse a chunk reference whose fields the manifest format cannot hold."""
    problem = None
    if isinstance(ref, NativeRef | VirtualRef) and not (_u64(ref.offset) and _u64(ref.length)):
        problem = "offset and length must be integers in 0..2**64-1"
    elif isinstance(ref, VirtualRef):
        problem = _virtual_problem(ref.location, ref.etag, ref.last_modified)
    elif isinstance(ref, InlineRef):
        if not isinstance(ref.data, bytes):
            problem = "inline data must be bytes"
    elif not isinstance(ref, NativeRef):
        problem = f"not a chunk reference: {type(ref).__name__}"
    if problem is not None:
        raise UnrepresentableValueError(where, problem)


def check_grid_for_spec(path: str, definition: ArrayDefinition, spec_version: int) -> None:
    """Refuse an array whose chunk grid the repository's spec version cannot record.

    Spec v2 stores each dimension's chunk count as uint32 (``num_chunks``), so a grid of
    more than ``2**32 - 1`` chunks in a dimension is refused here, when its metadata is
    set, rather than failing (or, as in icechunk 2.3.0, silently wrapping) at commit.
    Spec v1 stores chunk lengths as uint64 and has no such limit.
    """
    check_shape_for_spec(f"array {path!r}", definition.shape, spec_version)


def check_shape_for_spec(where: str, shape: Sequence[DimensionShape], spec_version: int) -> None:
    """``check_grid_for_spec`` of one array's dimensions, ``where`` naming the array."""
    if spec_version < 2:
        return
    for dim, dimension in enumerate(shape):
        size = dimension.chunk_count()
        if size > MAX_U32:
            raise UnrepresentableValueError(
                where,
                f"dimension {dim} has {size} chunks; spec version {spec_version} stores a "
                f"dimension's chunk count as uint32, at most {MAX_U32}",
            )


# --- whole change sets (fork payloads) -------------------------------------------------


#: How a change set's metadata documents are read (the store's ``parse_metadata``): an
#: ``ArrayDefinition`` for array metadata, ``None`` for a group's. The session layer
#: treats metadata as opaque bytes; a caller that can read it passes one in.
MetadataParser = Callable[[str, bytes], ArrayDefinition | None]


def check_definition(path: str, definition: Any) -> ArrayDefinition:
    """``definition`` if it is an ``ArrayDefinition`` the format can hold: lengths within
    uint64, one dimension name (a UTF-8 string or ``None``) per dimension, bytes of
    metadata."""
    if not isinstance(definition, ArrayDefinition):
        raise InvalidChangesError(f"array {path!r} has no array definition")
    shape, names = definition.shape, definition.dimension_names
    if not isinstance(shape, tuple) or not all(
        isinstance(d, DimensionShape) and _u64(d.array_length) and _u64(d.chunk_length)
        for d in shape
    ):
        raise UnrepresentableValueError(
            f"array {path!r}", "shape and chunk lengths must be integers within uint64"
        )
    if names is not None and not (
        isinstance(names, tuple)
        and len(names) == len(shape)
        and all(n is None or (isinstance(n, str) and encodable(n)) for n in names)
    ):
        raise InvalidChangesError(
            f"array {path!r}: dimension names must be one UTF-8 string or None per dimension"
        )
    if not isinstance(definition.user_data, bytes):
        raise InvalidChangesError(f"metadata of array {path!r} is not bytes")
    return definition


def _check_group(path: str, data: Any, parse: MetadataParser | None) -> None:
    if not isinstance(data, bytes):
        raise InvalidChangesError(f"metadata of group {path!r} is not bytes")
    if parse is not None and parse(path, data) is not None:
        raise InvalidChangesError(f"group {path!r} has array metadata")


def _check_array(path: str, definition: Any, parse: MetadataParser | None) -> None:
    check_definition(path, definition)
    if parse is None:
        return
    parsed = parse(path, definition.user_data)
    if parsed is None:
        raise InvalidChangesError(f"array {path!r} has group metadata")
    if parsed != definition:
        raise InvalidChangesError(
            f"array {path!r}: shape or dimension names disagree with its zarr metadata"
        )


def _check_table(path: str, table: ChunkTable, definition: ArrayDefinition) -> None:
    grid = chunk_grid(definition)
    if table.ndim != len(grid):
        raise InvalidChangesError(
            f"array {path!r}: chunk coordinates of rank {table.ndim}, the array has {len(grid)}"
        )
    if len(table) and table.ndim:
        # the table's columns are within 0..MAX_CHUNK_INDEX; the grid may exceed int64
        highest = table.coords.max(axis=0).tolist()
        if any(top >= size for top, size in zip(highest, grid, strict=True)):
            raise ChunkIndexError(path, tuple(highest), grid)
    etags = table.etags or [None] * len(table.which)
    modified = table.modified or [None] * len(table.which)
    for location in table.locations:
        problem = _virtual_problem(location, None, None)
        if problem is not None:
            raise UnrepresentableValueError(f"array {path!r}", problem)
    for etag, when in zip(etags, modified, strict=True):
        problem = _virtual_problem("-", etag, when)
        if problem is not None:
            raise UnrepresentableValueError(f"array {path!r}", problem)


class BaseNodes:
    """The nodes of a base snapshot, indexed once for checking many change sets."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.by_id = {n.id: n for n in snapshot.nodes}
        self.by_path = {n.path: n for n in snapshot.nodes}

    def array(self, node_id: NodeId) -> tuple[str, ArrayDefinition] | None:
        """The path and definition of the array ``node_id``, if the snapshot has it."""
        node = self.by_id.get(node_id)
        if node is None or not isinstance(node.node_data, ArrayNodeData):
            return None
        data = node.node_data
        return node.path, ArrayDefinition(data.shape, data.dimension_names, node.user_data)


def check_changes(
    changes: ChangeSet, base: BaseNodes | None = None, parse: MetadataParser | None = None
) -> None:
    """Refuse a change set that the session API could not have produced: invalid paths,
    metadata that ``parse`` refuses or that disagrees with the node's definition,
    duplicate nodes, chunks off an array's grid or beyond the
    format. With ``base`` (the nodes of the snapshot the changes start from), also check
    that updates and deletions name its nodes and that chunks of its arrays lie on their
    grids.

    Raises ``InvalidChangesError``, or the error the session API would raise for the
    same value (``InvalidNodePathError``, ``InvalidMetadataError``, ``ChunkIndexError``,
    ``UnrepresentableValueError``).
    """
    arrays: dict[NodeId, tuple[str, ArrayDefinition]] = {}
    new_ids: set[NodeId] = set()
    new_paths: set[str] = set()
    for path, (nid, data) in changes.new_groups.items():
        check_node_path(path)
        _check_group(path, data, parse)
        new_ids.add(nid)
        new_paths.add(path)
    for path, (nid, definition) in changes.new_arrays.items():
        check_node_path(path)
        if path in new_paths:
            raise InvalidChangesError(f"node {path!r} is added twice (as group and array)")
        _check_array(path, definition, parse)
        if nid in new_ids:
            raise InvalidChangesError(f"node id {nid} is used by two new nodes")
        new_ids.add(nid)
        new_paths.add(path)
        arrays[nid] = (path, definition)
    if len(new_ids) != len(changes.new_groups) + len(changes.new_arrays):
        raise InvalidChangesError("two new nodes share a node id")
    for nid, data in changes.updated_groups.items():
        _check_group(f"<node {nid}>", data, parse)
    for nid, definition in changes.updated_arrays.items():
        _check_array(f"<node {nid}>", definition, parse)
    deleted: dict[NodeId, str] = {}
    for kind, gone in (("group", changes.deleted_groups), ("array", changes.deleted_arrays)):
        for path, nid in gone.items():
            check_node_path(path)
            if nid in deleted or nid in new_ids:
                raise InvalidChangesError(f"node id {nid} of deleted {kind} {path!r} is reused")
            deleted[nid] = path
    if set(changes.deleted_groups) & set(changes.deleted_arrays):
        raise InvalidChangesError("a path is deleted both as a group and as an array")
    updated = set(changes.updated_groups) | set(changes.updated_arrays)
    if updated & (new_ids | set(deleted)):
        raise InvalidChangesError("a node is updated and also added or deleted")

    if base is not None:
        for nid, kind in [
            *((n, "group") for n in changes.updated_groups),
            *((n, "array") for n in changes.updated_arrays),
        ]:
            node = base.by_id.get(nid)
            if node is None or node.is_array != (kind == "array"):
                raise InvalidChangesError(f"updated {kind} {nid} is not in the base snapshot")
        for kind, gone in (("group", changes.deleted_groups), ("array", changes.deleted_arrays)):
            for path, nid in gone.items():
                node = base.by_path.get(path)
                if node is None or node.id != nid or node.is_array != (kind == "array"):
                    raise InvalidChangesError(
                        f"deleted {kind} {path!r} is not that node of the base snapshot"
                    )
        for path in new_paths:
            if path in base.by_path and base.by_path[path].id not in deleted:
                raise InvalidChangesError(f"new node {path!r} exists in the base snapshot")
        if any(nid in base.by_id for nid in new_ids):
            raise InvalidChangesError("a new node reuses the id of a base snapshot node")
        for nid, definition in changes.updated_arrays.items():
            arrays[nid] = (base.by_id[nid].path, definition)

    for nid in changes.chunk_nodes():
        if nid in deleted:
            raise InvalidChangesError(f"chunk changes for deleted array {deleted[nid]!r}")
        if nid not in arrays:
            if base is None:
                continue  # an array of the base snapshot: checked at merge
            found = base.array(nid)
            if found is None:
                raise InvalidChangesError(f"chunk changes for node {nid}, which is not an array")
            arrays[nid] = found
        path, definition = arrays[nid]
        refs, tables = changes.chunk_parts(nid)
        for table in tables:
            _check_table(path, table, definition)
        for coords, ref in refs.items():
            check_chunk_coords(path, coords, definition)
            if ref is not None:
                check_chunk_ref(f"chunk {list(coords)} of array {path!r}", ref)
