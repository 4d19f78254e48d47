"""Transaction log files: which nodes and chunks one commit touched (for rebase, diff).

Spec v2 logs (``TransactionLog.spec_version == 2``) also record the nodes a commit moved
(``MoveOperation``), sorted by their new path segment by segment. An amended commit's log
is the replaced commit's merged with its own (``merge_transaction_logs``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from aicechunk.format import Coords
from aicechunk.format.coord_rows import CoordRows
from aicechunk.format.flatbuf import Forward, Reader, guarded
from aicechunk.format.header import ZSTD_LEVEL, FileType, decode_versioned
from aicechunk.format.ids import NodeId, SnapshotId
from aicechunk.format.segmented import Segmented, compress_parts, compress_whole

__all__ = [
    "MoveOperation",
    "TransactionLog",
    "decode_transaction_log",
    "encode_transaction_log",
    "merge_transaction_logs",
    "move_order",
    "transaction_log_payload",
]


@dataclass(frozen=True, slots=True)
class MoveOperation:
    """A node moved from one path to another in a commit (``is_array``: an array, else
    a group)."""

    from_path: str
    to_path: str
    node_id: NodeId
    is_array: bool


def move_order(move: MoveOperation) -> tuple[bytes, ...]:
    """The spec's order of moves: by new path, segment by segment (``/a < /a/b < /a-b``),
    so a moved group is followed by its moved children."""
    return tuple(part.encode() for part in move.to_path.split("/"))


@dataclass(frozen=True)
class TransactionLog:
    """Node ids created, deleted and updated, and chunk coordinates written, per commit.

    Its id is the id of the snapshot it was written with.
    """

    id: SnapshotId
    new_groups: tuple[NodeId, ...] = ()
    new_arrays: tuple[NodeId, ...] = ()
    deleted_groups: tuple[NodeId, ...] = ()
    deleted_arrays: tuple[NodeId, ...] = ()
    updated_groups: tuple[NodeId, ...] = ()
    updated_arrays: tuple[NodeId, ...] = ()
    updated_chunks: Mapping[NodeId, Sequence[Coords]] = field(default_factory=dict)
    moved_nodes: tuple[MoveOperation, ...] = ()
    spec_version: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "moved_nodes", tuple(sorted(self.moved_nodes, key=move_order)))

    def size(self) -> int:
        """How many entries the log holds (node ids and chunk coordinates): the weight
        of a cached log, and whether encoding it is worth a worker thread."""
        return (
            len(self.new_groups)
            + len(self.new_arrays)
            + len(self.deleted_groups)
            + len(self.deleted_arrays)
            + len(self.updated_groups)
            + len(self.updated_arrays)
            + sum(len(c) for c in self.updated_chunks.values())
        )


def merge_transaction_logs(log_id: SnapshotId, logs: Sequence[TransactionLog]) -> TransactionLog:
    """One log of the changes of several (an amend's: the replaced commit's, then its
    own), as Icechunk merges them: every list of ids and every array's chunks united; a
    node moved in more than one is moved once, from its first path to its last, and not
    at all if it came back."""

    def united(name: str) -> tuple[NodeId, ...]:
        return tuple(sorted({i for log in logs for i in getattr(log, name)}))

    chunks: dict[NodeId, set[Coords]] = {}
    moves: dict[NodeId, MoveOperation] = {}
    for log in logs:
        for node_id, coords in log.updated_chunks.items():
            chunks.setdefault(node_id, set()).update(tuple(c) for c in coords)
        for move in log.moved_nodes:
            first = moves.get(move.node_id)
            moves[move.node_id] = move if first is None else replace(first, to_path=move.to_path)
    return TransactionLog(
        id=log_id,
        new_groups=united("new_groups"),
        new_arrays=united("new_arrays"),
        deleted_groups=united("deleted_groups"),
        deleted_arrays=united("deleted_arrays"),
        updated_groups=united("updated_groups"),
        updated_arrays=united("updated_arrays"),
        updated_chunks={n: tuple(sorted(c)) for n, c in chunks.items()},
        moved_nodes=tuple(m for m in moves.values() if m.from_path != m.to_path),
        spec_version=max((log.spec_version for log in logs), default=1),
    )


# field indexes in the schema's order
_NEW_GROUPS, _NEW_ARRAYS, _DEL_GROUPS, _DEL_ARRAYS, _UPD_ARRAYS, _UPD_GROUPS, _CHUNKS = range(1, 8)
_MOVES = 8
_SLICE = 1 << 16  # chunk coordinates laid out at a time
#: logs of at most this many entries are laid out in one buffer, compressed in one call
SMALL_LOG = 4096
#: an array's chunk coordinates sorted without numpy up to this many (its calls cost more)
_SMALL_SORT = 64


def encode_transaction_log(log: TransactionLog) -> bytes:
    """The transaction log file's bytes in the log's spec version; every list sorted as
    the spec requires (moves are a spec v2 feature: a v1 log with moves is refused).

    Written front to back (``segmented.Segmented``); the chunk coordinates of each
    array, possibly millions, are laid out with numpy a slice at a time while the
    compressor consumes them, so the uncompressed file never exists whole.
    """
    if log.size() <= SMALL_LOG:  # one buffer and one call: the same bytes, sooner
        fw = Forward()
        payload = fw.finish_buffer(_layout(log, fw))
        return compress_whole(FileType.TRANSACTION_LOG, payload, log.spec_version, ZSTD_LEVEL)
    w = Segmented()
    root = _layout(log, w)
    size, parts = w.finish_parts(root)
    return compress_parts(FileType.TRANSACTION_LOG, size, parts, log.spec_version, ZSTD_LEVEL)


def transaction_log_payload(log: TransactionLog, streamed: bool = True) -> bytes:
    """The uncompressed file (``streamed=False``: laid out in one buffer, the reference
    the streamed layout is tested against)."""
    w = Segmented() if streamed else Forward()
    return w.finish(_layout(log, w))


def _layout(log: TransactionLog, w: Forward) -> int:
    """Lay the log out into ``w``; the root table's position."""
    v2 = log.spec_version == 2
    if log.moved_nodes and not v2:
        raise ValueError("a spec v1 transaction log cannot record moved nodes")
    if v2:
        vt_root = w.vtable(48, (4, 16, 20, 24, 28, 32, 36, 40, 44))
    else:
        vt_root = w.vtable(44, (4, 16, 20, 24, 28, 32, 36, 40))
    vt_array = w.vtable(16, (4, 12))
    vt_indices = w.vtable(8, (4,))
    root = w.table(vt_root, 48 if v2 else 44)
    w.put(root + 4, "12s", log.id.bytes)
    id_lists = {
        _NEW_GROUPS: log.new_groups,
        _NEW_ARRAYS: log.new_arrays,
        _DEL_GROUPS: log.deleted_groups,
        _DEL_ARRAYS: log.deleted_arrays,
        _UPD_ARRAYS: log.updated_arrays,
        _UPD_GROUPS: log.updated_groups,
    }
    for index, ids in id_lists.items():
        vec = w.struct_vector([i.bytes for i in sorted(ids)])
        w.uoffset(root + 4 + 4 * index + 8, vec)
    node_ids = sorted(log.updated_chunks)
    arrays_vec = w.offset_vector(len(node_ids))
    w.uoffset(root + 40, arrays_vec)
    for i, node_id in enumerate(node_ids):
        table = w.table(vt_array, 16)
        w.put(table + 4, "8s", node_id.bytes)
        w.uoffset(arrays_vec + 4 + 4 * i, table)
        chunk_list = _sorted_unique(log.updated_chunks[node_id])
        if isinstance(w, Segmented) and isinstance(chunk_list, np.ndarray):
            vec = w.offset_vector(0)
            w.put(vec, "<I", len(chunk_list))
            w.uoffset(table + 12, vec)
            _indices_holes(w, vt_indices, vec, chunk_list)
            continue
        vec = w.offset_vector(len(chunk_list))
        w.uoffset(table + 12, vec)
        _indices_block(w, vt_indices, vec, chunk_list)
    if v2:
        _moves(w, root + 44, log.moved_nodes)
    return root


def _moves(w: Forward, slot: int, moves: tuple[MoveOperation, ...]) -> None:
    # each MoveOperation: [soffset][from][to][node id: 8 bytes][node type][3 bytes pad]
    vt = w.vtable(24, (4, 8, 12, 20))
    vec = w.offset_vector(len(moves))
    w.uoffset(slot, vec)
    for i, move in enumerate(moves):
        table = w.table(vt, 24)
        w.put(table + 12, "8sB", move.node_id.bytes, int(move.is_array))
        w.uoffset(vec + 4 + 4 * i, table)
        w.uoffset(table + 4, w.string(move.from_path))
        w.uoffset(table + 8, w.string(move.to_path))


def _sorted_unique(coords: Sequence[Coords]) -> list[Coords] | np.ndarray:
    """Coordinates sorted lexicographically without duplicates (a 2-D array when there
    are more than a few, all of one dimensionality, which is the case for a valid array)."""
    if isinstance(coords, CoordRows) and coords.rows.shape[1]:
        if coords.sorted_unique:
            return coords.rows
        return _unique_rows(coords.rows)
    if not coords:
        return []
    if len(coords) <= _SMALL_SORT:  # the order np.lexsort gives valid coordinates
        return sorted(set(map(tuple, coords)))
    ndims = set(map(len, coords))
    if len(ndims) != 1 or 0 in ndims:  # mixed dimensionality, or 0-d arrays
        return sorted(set(tuple(c) for c in coords))
    ndim = ndims.pop()
    flat = itertools.chain.from_iterable(coords)
    return _unique_rows(
        np.fromiter(flat, dtype=np.int64, count=len(coords) * ndim).reshape(-1, ndim)
    )


def _unique_rows(grid: np.ndarray) -> np.ndarray:
    grid = grid[np.lexsort(grid.T[::-1])]
    keep = np.ones(len(grid), dtype=bool)
    keep[1:] = (grid[1:] != grid[:-1]).any(axis=1)
    return grid[keep]


def _indices_block(w: Forward, vt: int, vec: int, chunk_list: list[Coords] | np.ndarray) -> None:
    # each ChunkIndices: [soffset][offset to coords = 4][len][coords...]
    n = len(chunk_list)
    if not n:
        return
    if not isinstance(chunk_list, np.ndarray):
        positions = []
        for c in chunk_list:
            table = w.table(vt, 8)
            coords = w.reserve(4 + 4 * len(c))
            w.put(coords, f"<I{len(c)}I", len(c), *c)
            w.uoffset(table + 4, coords)
            positions.append(table)
        firsts = range(vec + 4, vec + 4 + 4 * n, 4)
        w.put(vec + 4, f"<{n}I", *(p - s for p, s in zip(positions, firsts, strict=True)))
        return
    ndim = chunk_list.shape[1]
    rec = 12 + 4 * ndim
    base = w.reserve(n * rec)
    # fixed-size records: laid out a slice at a time, so temporaries stay small
    for start in range(0, n, _SLICE):
        stop = min(n, start + _SLICE)
        rows = np.arange(start, stop, dtype=np.int64)
        pos = base + rows * rec
        records = np.empty((stop - start, 3 + ndim), dtype="<u4")
        records[:, 0] = (pos - vt).astype("<u4")
        records[:, 1] = 4
        records[:, 2] = ndim
        records[:, 3:] = chunk_list[start:stop]
        w.buf[base + start * rec : base + stop * rec] = memoryview(records).cast("B")
        slots = vec + 4 + 4 * rows
        offsets = (pos - slots).astype("<u4")
        w.buf[vec + 4 + 4 * start : vec + 4 + 4 * stop] = memoryview(offsets).cast("B")


def _indices_holes(w: Segmented, vt: int, vec: int, coords: np.ndarray) -> None:
    """``_indices_block`` of a coordinate array, as holes filled at write-out: the
    vector's offsets (after its length at ``vec``), then the records."""
    n, ndim = coords.shape
    rec = 12 + 4 * ndim
    base = 0

    def offsets() -> Iterator[bytes]:
        for start in range(0, n, _SLICE):
            rows = np.arange(start, min(n, start + _SLICE), dtype=np.int64)
            yield (base + rows * rec - (vec + 4 + 4 * rows)).astype("<u4").tobytes()

    def records() -> Iterator[bytes]:
        for start in range(0, n, _SLICE):
            stop = min(n, start + _SLICE)
            out = np.empty((stop - start, 3 + ndim), dtype="<u4")
            out[:, 0] = (base + np.arange(start, stop, dtype=np.int64) * rec - vt).astype("<u4")
            out[:, 1] = 4
            out[:, 2] = ndim
            out[:, 3:] = coords[start:stop]
            yield out.tobytes()

    w.hole(4 * n, offsets)
    base = w.hole(n * rec, records, alignment=4)


def decode_transaction_log(
    data: bytes, name: str = "<transaction log>", max_size: int | None = None
) -> TransactionLog:
    """Decode a transaction log file; ``FormatError`` names the file and the problem (also when it
    would decompress to more than ``max_size`` bytes)."""
    version, payload = decode_versioned(data, FileType.TRANSACTION_LOG, name, max_size)
    return guarded(name, lambda: _decode(Reader(payload, name), version))


def _decode(r: Reader, version: int) -> TransactionLog:
    root = r.root()
    id_pos = r.struct_at(root, 0, 12, "id")
    assert id_pos is not None

    def ids(index: int, what: str) -> tuple[NodeId, ...]:
        start, length = r.vector(root, index, what)
        raw = r.raw(start, 8 * length)
        return tuple(NodeId(raw[8 * i : 8 * i + 8]) for i in range(length))

    chunks: dict[NodeId, tuple[Coords, ...]] = {}
    for pos in r.table_vector(root, _CHUNKS, "updated_chunks"):
        nid = r.struct_at(pos, 0, 8, "node_id")
        assert nid is not None
        coords = tuple(
            tuple(r.u32_vector(cpos, 0, "coords")) for cpos in r.table_vector(pos, 1, "chunks")
        )
        chunks[NodeId(r.raw(nid, 8))] = coords
    moves = []
    listed = r.table_vector(root, _MOVES) if r.field(root, _MOVES) is not None else []
    if listed and version < 2:  # icechunk 2.x writes an empty list in spec v1 logs too
        raise r.fail(f"moved nodes in a spec version {version} transaction log")
    for pos in listed:
        # the spec makes all four fields mandatory without marking them required
        node_id = r.struct_at(pos, 2, 8, "move node_id")
        assert node_id is not None
        kind = r.scalar(pos, 3, r.u8, 0)
        if kind > 1:
            raise r.fail(f"a moved node of unknown type {kind}")
        paths = (r.string(pos, 0, "move from") or "", r.string(pos, 1, "move to") or "")
        for path in paths:
            problem = _move_path_problem(path)
            if problem is not None:
                raise r.fail(f"a move from {paths[0]!r} to {paths[1]!r}: {problem}")
        moves.append(MoveOperation(*paths, NodeId(r.raw(node_id, 8)), kind == 1))
    return TransactionLog(
        id=SnapshotId(r.raw(id_pos, 12)),
        new_groups=ids(_NEW_GROUPS, "new_groups"),
        new_arrays=ids(_NEW_ARRAYS, "new_arrays"),
        deleted_groups=ids(_DEL_GROUPS, "deleted_groups"),
        deleted_arrays=ids(_DEL_ARRAYS, "deleted_arrays"),
        updated_groups=ids(_UPD_GROUPS, "updated_groups"),
        updated_arrays=ids(_UPD_ARRAYS, "updated_arrays"),
        updated_chunks=chunks,
        moved_nodes=tuple(moves),
        spec_version=version,
    )


def _move_path_problem(path: str) -> str | None:
    # what a reader could not apply: other names than node paths, and the root (which
    # no move may name); names themselves are as free as the snapshot's node paths
    if path == "/":
        return "the root cannot move"
    if not path.startswith("/"):
        return f"{path!r} is not absolute"
    if any(segment in ("", ".", "..") for segment in path[1:].split("/")):
        return f"{path!r} has an empty, '.' or '..' segment"
    return None
