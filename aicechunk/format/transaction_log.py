"""Transaction log files: which nodes and chunks one commit touched (for rebase, diff)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aicechunk.format.flatbuf import (
    FILE_IDENTIFIER,
    Reader,
    guarded,
    inline_struct,
    new_builder,
    struct_vector,
)
from aicechunk.format.header import FileType, decode_file, encode_file
from aicechunk.format.ids import NodeId, SnapshotId

__all__ = ["TransactionLog", "decode_transaction_log", "encode_transaction_log"]

Coords = tuple[int, ...]


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


# field indexes in the schema's order
_NEW_GROUPS, _NEW_ARRAYS, _DEL_GROUPS, _DEL_ARRAYS, _UPD_ARRAYS, _UPD_GROUPS, _CHUNKS = range(1, 8)


def encode_transaction_log(log: TransactionLog) -> bytes:
    """The transaction log file's bytes; every list sorted as the spec requires."""
    b = new_builder(1024)
    chunk_offs = []
    for nid in sorted(log.updated_chunks):
        coord_offs = []
        for coords in sorted(tuple(c) for c in log.updated_chunks[nid]):
            b.StartVector(4, len(coords), 4)
            for c in reversed(coords):
                b.PrependUint32(c)
            vec = b.EndVector()
            b.StartObject(1)
            b.PrependUOffsetTRelativeSlot(0, vec, 0)
            coord_offs.append(b.EndObject())
        b.StartVector(4, len(coord_offs), 4)
        for off in reversed(coord_offs):
            b.PrependUOffsetTRelative(off)
        chunks_vec = b.EndVector()
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(1, chunks_vec, 0)
        b.PrependStructSlot(0, inline_struct(b, nid.bytes, 1), 0)
        chunk_offs.append(b.EndObject())
    b.StartVector(4, len(chunk_offs), 4)
    for off in reversed(chunk_offs):
        b.PrependUOffsetTRelative(off)
    chunks = b.EndVector()

    def ids(values: Sequence[NodeId]) -> int:
        return struct_vector(b, [v.bytes for v in sorted(values)], 8, 1)

    vectors = {
        _NEW_GROUPS: ids(log.new_groups),
        _NEW_ARRAYS: ids(log.new_arrays),
        _DEL_GROUPS: ids(log.deleted_groups),
        _DEL_ARRAYS: ids(log.deleted_arrays),
        _UPD_ARRAYS: ids(log.updated_arrays),
        _UPD_GROUPS: ids(log.updated_groups),
        _CHUNKS: chunks,
    }
    b.StartObject(8)
    for slot in sorted(vectors, reverse=True):
        b.PrependUOffsetTRelativeSlot(slot, vectors[slot], 0)
    b.PrependStructSlot(0, inline_struct(b, log.id.bytes, 1), 0)
    root = b.EndObject()
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return encode_file(FileType.TRANSACTION_LOG, bytes(b.Output()))


def decode_transaction_log(data: bytes, name: str = "<transaction log>") -> TransactionLog:
    """Decode a transaction log file; ``FormatError`` names the file and the problem."""
    payload = decode_file(data, FileType.TRANSACTION_LOG, name)
    return guarded(name, lambda: _decode(Reader(payload, name)))


def _decode(r: Reader) -> TransactionLog:
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
    return TransactionLog(
        id=SnapshotId(r.raw(id_pos, 12)),
        new_groups=ids(_NEW_GROUPS, "new_groups"),
        new_arrays=ids(_NEW_ARRAYS, "new_arrays"),
        deleted_groups=ids(_DEL_GROUPS, "deleted_groups"),
        deleted_arrays=ids(_DEL_ARRAYS, "deleted_arrays"),
        updated_groups=ids(_UPD_GROUPS, "updated_groups"),
        updated_arrays=ids(_UPD_ARRAYS, "updated_arrays"),
        updated_chunks=chunks,
    )
