"""Repo info file segments written directly, front to back, without a builder: the
snapshot entry and the operations log entries every commit and ref change adds (two log
entries per change: the new one, and the one before it now with its backup path).

A segment (see ``repo_info_segments``) is a flatbuffer piece whose offsets all point
inside it, a multiple of 8 bytes long, read the same at any 8-byte aligned position. These
lay out the same tables as the builder does (same fields, same values), in another order:
vtable, table, then what the table points to, offsets only forward. Each writer is
checked against the decoder by property tests (``tests/format/test_repo_info_segments``).
"""

from __future__ import annotations

import struct

from aicechunk.format.repo_info import SnapshotInfo, flex_of
from aicechunk.format.repo_updates import UPDATE_CODES, UPDATE_FIELDS, Update
from aicechunk.format.timestamps import to_micros

__all__ = ["direct_snapshot_segment", "direct_update_segment"]

#: (bytes, position of its root object in them, position of its index field or -1)
Segment = tuple[bytes, int, int]

_ALIGN = 8
_U32 = struct.Struct("<I")


def _string_bytes(value: str) -> bytes:
    """A flatbuffer string (length, UTF-8, NUL), padded to a multiple of 4."""
    data = value.encode("utf-8")
    body = _U32.pack(len(data)) + data + b"\x00"
    return body + bytes(-len(body) % 4)


# A snapshot written directly, front to back: its vtable at 0 (6 slots: id, parent,
# time, message, metadata; no pruned logs), the table at 16 (soffset, the parent's index
# at 4 (set in the file), the time at 8 (aligned), the message and metadata offsets at
# 16 and 20, the id at 24; 40 bytes), then the metadata vector, its items (each a vtable
# and a table: name, value), the message, the names and the values.
_SNAPSHOT_AT = 16
_SNAPSHOT_HEAD = struct.Struct("<8HiiQII12s4x")
_ITEM_VTABLE = struct.pack("<4H", 8, 12, 4, 8)


def _byte_vector(data: bytes) -> bytes:
    """A flatbuffer vector of bytes (length, bytes), padded to a multiple of 4."""
    body = _U32.pack(len(data)) + data
    return body + bytes(-len(body) % 4)


def direct_snapshot_segment(snap: SnapshotInfo) -> Segment:
    """A snapshot's entry (without spec 2.1 pruned logs): (bytes, root, where its parent's
    index goes)."""
    items = flex_of(snap)[1]  # checked as for the builder
    vector_at = _SNAPSHOT_AT + 40
    items_at = vector_at + 4 + 4 * len(items)
    strings_at = items_at + 20 * len(items)
    message = _string_bytes(snap.message)
    tail = [message]
    at = strings_at + len(message)
    names: list[int] = []
    values: list[int] = []
    for key, _ in items:
        names.append(at)
        tail.append(_string_bytes(key))
        at += len(tail[-1])
    for _, data in items:
        values.append(at)
        tail.append(_byte_vector(data))
        at += len(tail[-1])
    head = _SNAPSHOT_HEAD.pack(
        16,
        40,
        24,
        4,
        8,
        16,
        20,
        0,
        _SNAPSHOT_AT,
        0,
        to_micros(snap.flushed_at),
        strings_at - (_SNAPSHOT_AT + 16),
        vector_at - (_SNAPSHOT_AT + 20),
        snap.id.bytes,
    )
    vector = [_U32.pack(len(items))]
    records = []
    for k, (name, value) in enumerate(zip(names, values, strict=True)):
        item = items_at + 20 * k  # its vtable; its table 8 bytes on
        vector.append(_U32.pack(item + 8 - (vector_at + 4 + 4 * k)))
        records.append(
            _ITEM_VTABLE + struct.pack("<iII", 8, name - (item + 12), value - (item + 16))
        )
    data = b"".join((head, *vector, *records, *tail))
    return data + bytes(-len(data) % _ALIGN), _SNAPSHOT_AT, _SNAPSHOT_AT + 4


# An update written directly, front to back (offsets only point forward): its vtable at
# 0 (6 u16: sizes, then the slots of the kind's code, the kind, the time, the backup
# path), the table at 16 (soffset, kind offset at 4, time at 8 (aligned), backup path
# offset at 16, code at 20; 24 bytes), the kind's vtable and table at 40, its strings,
# the backup path last.
_UPDATE_AT = 16
_KIND_AT = _UPDATE_AT + 24
_UPDATE_HEAD = struct.Struct("<6H4xiIQIB3x")
_DIRECT_KINDS = {
    kind: (fields, UPDATE_CODES[kind])
    for kind, fields in UPDATE_FIELDS.items()
    if all(what in ("str", "id") for _, what in fields)
}


def direct_update_segment(update: Update) -> Segment | None:
    """An operations log entry of a kind a commit, a ref change or a tag makes: (bytes,
    root, -1); ``None`` for the other kinds (the builder writes those)."""
    kind = update.kind
    found = _DIRECT_KINDS.get(type(kind))
    if found is None:
        return None
    fields, code = found
    names = [getattr(kind, attr) for attr, what in fields if what == "str"]
    ids = [getattr(kind, attr).bytes for attr, what in fields if what == "id"]
    # the kind's vtable (slots in schema order), then its table: string offsets first
    # (aligned), the 12-byte ids after them
    vtable_size = 4 + 2 * len(fields)
    table_at = _KIND_AT + vtable_size + (-vtable_size % 4)
    table_size = 4 + 4 * len(names) + 12 * len(ids)
    table_size += -table_size % 4
    slots: list[int] = []
    next_str, next_id = 4, 4 + 4 * len(names)
    for _, what in fields:
        if what == "str":
            slots.append(next_str)
            next_str += 4
        else:
            slots.append(next_id)
            next_id += 12
    head = struct.pack(f"<{2 + len(fields)}H", vtable_size, table_size, *slots)
    head += bytes(table_at - _KIND_AT - len(head))
    offsets: list[int] = []
    tail: list[bytes] = []
    at = table_at + table_size  # the strings
    for name in names:
        piece = _string_bytes(name)
        offsets.append(at - (table_at + 4 + 4 * len(offsets)))
        tail.append(piece)
        at += len(piece)
    kind_table = struct.pack(f"<i{len(names)}I", table_at - _KIND_AT, *offsets) + b"".join(ids)
    kind_table += bytes(table_size - len(kind_table))
    backup = update.backup_path
    path_offset = 0
    if backup is not None:
        path_offset = at - (_UPDATE_AT + 16)
        tail.append(_string_bytes(backup))
    update_head = _UPDATE_HEAD.pack(
        12,
        24,
        20,
        4,
        8,
        16 if backup is not None else 0,
        _UPDATE_AT,
        table_at - (_UPDATE_AT + 4),
        to_micros(update.updated_at),
        path_offset,
        code,
    )
    data = b"".join((update_head, head, kind_table, *tail))
    return data + bytes(-len(data) % _ALIGN), _UPDATE_AT, -1
