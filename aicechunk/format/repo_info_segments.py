"""The repo info file written from pieces kept between writes: the encoder of a change.

Every change of a spec v2 repository rewrites its whole repo info file, which holds every
ref, every snapshot and up to 1,000 operations log entries. Encoding all of them again
costs milliseconds of Python per change, growing with the history, while a change alters
one or two of them. This encoder writes each ref, snapshot and log entry as a *segment*:
a small flatbuffer piece with its own vtables, every offset inside it, a length that is a
multiple of 8 and 8-byte alignment within, so that it reads the same wherever an 8-byte
aligned position puts it. A snapshot's or an update's segment is made the first time it
is written and kept on the object (they are immutable); a ref's depends only on its name.
A file is then its root table, the offset vectors, and the segments joined.

Indices into the snapshot list (a ref's snapshot, a snapshot's parent) shift when a
snapshot is inserted, so segments always hold them (also when 0, which flatbuffers would
leave out) and they are set in place once the file is assembled.

Readers, Icechunk among them, see an ordinary flatbuffer of the same schema; only
vtables are not shared between records, so it is somewhat larger than the layout of
``encode_repo_info`` (Icechunk's, byte for byte), which creation and tests use. Nothing
here decodes: what is written comes from ``RepoInfo`` values, checked as they are made or
decoded.
"""

from __future__ import annotations

import functools
import itertools
import operator
import struct
from collections.abc import Mapping

import numpy as np

from aicechunk.errors import FormatError
from aicechunk.format.fastbuilder import FastBuilder
from aicechunk.format.flatbuf import FILE_IDENTIFIER, Reader, offset_vector
from aicechunk.format.header import FileType, encode_file
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import (
    RepoInfo,
    SnapshotInfo,
    flex_of,
    metadata_items,
    snapshot_table,
    u16_vector,
)
from aicechunk.format.repo_updates import Update, encode_status, encode_update

__all__ = ["encode_repo_info_segmented"]

#: (bytes, position of its root object in them, position of its index field or -1)
Segment = tuple[bytes, int, int]

_NAME = "repo"
_ALIGN = 8
_ROOT_FIELDS = 13
_U32 = struct.Struct("<I")
_DATA, _ROOT, _PATCH = (operator.itemgetter(i) for i in range(3))
# a ref's vtable (8 bytes, 2 fields: the name at 4, the index at 8 in a 12-byte table),
# then the table at 8: its offset back to the vtable, the name's offset (the string
# follows at 20), the index (0 until set)
_REF_HEAD = struct.pack("<4HiII", 8, 12, 4, 8, 8, 8, 0)


def _finish(b: FastBuilder, root: int, patch: int | None) -> Segment:
    """The builder's bytes as a segment: padded in front to a multiple of 8 bytes (the
    builder aligns from the end, so alignment then holds from the start too)."""
    b.Prep(_ALIGN, 0)
    data = bytes(b.Bytes[b.head :])
    start = len(data) - root
    if patch is None:
        return data, start, -1
    found = Reader(data, _NAME).field(start, patch)
    assert found is not None and found % 4 == 0
    return data, start, found


@functools.lru_cache(maxsize=1 << 16)
def _ref_segment(name: str) -> Segment:
    """A ref's table, written directly (no builder: a repository may hold a million
    refs): its vtable, the table (name, then the index to set), the name. Kept for the
    next write (a segment is immutable; the index is set in the file's copy)."""
    data = name.encode("utf-8")
    body = _REF_HEAD + _U32.pack(len(data)) + data + b"\x00"
    return body + bytes(-len(body) % _ALIGN), 8, 16


def _snapshot_segment(snap: SnapshotInfo) -> Segment:
    found: Segment | None = snap._segment
    if found is None:
        b = FastBuilder(256)
        found = _finish(b, snapshot_table(b, snap, 0, "i32!"), 1)
        object.__setattr__(snap, "_segment", found)  # a cache: the info is immutable
    return found


def _update_segment(update: Update) -> Segment:
    found: Segment | None = update._segment
    if found is None:
        b = FastBuilder(128)
        found = _finish(b, encode_update(b, update), None)
        object.__setattr__(update, "_segment", found)
    return found


def _rest_segment(info: RepoInfo) -> tuple[Segment, list[int | None]]:
    """One segment holding the root's other fields (status, metadata, deleted tags,
    feature flags, the link to older updates, config, extra): their positions in it, in
    root field order from 3 (``None``: absent)."""
    b = FastBuilder(512)
    deleted = offset_vector(b, [b.CreateString(name) for name in info.deleted_tags])
    status = encode_status(b, info.status)
    metadata = metadata_items(b, flex_of(info))
    enabled = u16_vector(b, info.enabled_feature_flags)
    disabled = u16_vector(b, info.disabled_feature_flags)
    before = None if info.repo_before_updates is None else b.CreateString(info.repo_before_updates)
    config = None if info.config is None else b.CreateByteVector(info.config)
    extra = None if info.extra is None else b.CreateByteVector(info.extra)
    data, _, _ = _finish(b, deleted, None)
    offsets = [deleted, None, status, metadata, None, before, config, enabled, disabled, extra]
    return (data, 0, -1), [None if o is None else len(data) - o for o in offsets]


def encode_repo_info_segmented(info: RepoInfo) -> bytes:
    """The repo info file's bytes, from segments (made now for what has none yet); the
    same checks as ``encode_repo_info``."""
    if "main" not in info.branches:
        raise FormatError(_NAME, "a repository must have a 'main' branch")
    if not info.latest_updates:
        raise FormatError(_NAME, "the operations log must hold at least one update")
    index = {s.id.bytes: i for i, s in enumerate(info.snapshots)}
    segments: list[Segment] = []
    values: list[int] = []  # the index each segment with a patch point holds

    def refs(found: Mapping[str, SnapshotId]) -> int:
        for name in sorted(found, key=str.encode):
            target = found[name]
            position = index.get(target.bytes)
            if position is None:
                raise FormatError(_NAME, f"{name!r} points at {target}, which is not listed")
            segments.append(_ref_segment(name))
            values.append(position)
        return len(found)

    tag_count = refs(info.tags)
    branch_count = refs(info.branches)
    snapshots = info.snapshots
    get = index.get
    # comprehensions, not a loop of appends: this runs for every snapshot at every change
    parents = [-1 if s.parent_id is None else get(s.parent_id.bytes, -2) for s in snapshots]
    if -2 in parents:
        orphan = snapshots[parents.index(-2)]
        raise FormatError(_NAME, f"the parent of {orphan.id} is not listed")
    values += parents
    segments += [s._segment or _snapshot_segment(s) for s in snapshots]
    segments += [u._segment or _update_segment(u) for u in info.latest_updates]
    rest, rest_fields = _rest_segment(info)
    segments.append(rest)
    counts = (tag_count, branch_count, len(info.snapshots), len(info.latest_updates))

    # the head: root offset and identifier, the root's vtable and table, four vectors
    vtable_at = 8
    table_at = vtable_at + 4 + 2 * _ROOT_FIELDS
    table_at += -table_at % 4
    table_size = 4 + 4 * (_ROOT_FIELDS - 1) + 1
    vectors_at = table_at + table_size
    vectors_at += -vectors_at % 4
    vector_starts = list(itertools.accumulate((4 + 4 * n for n in counts), initial=vectors_at))
    segments_at = vector_starts[-1] + (-vector_starts[-1] % _ALIGN)
    datas = list(map(_DATA, segments))  # map over C getters: no Python frame per item
    sizes = np.fromiter(map(len, datas), np.int64, len(segments))
    starts = segments_at + np.concatenate(([0], np.cumsum(sizes)[:-1]))
    roots = starts + np.fromiter(map(_ROOT, segments), np.int64, len(segments))

    head = bytearray(segments_at)
    struct.pack_into("<I4s", head, 0, table_at, FILE_IDENTIFIER)
    # root fields: 0 spec version (u8, last in the table), 1 tags, 2 branches, 3 deleted,
    # 4 snapshots, 5 status, 6 metadata, 7 updates, 8 before, 9 config, 10/11 flags, 12 extra
    targets: list[int | None] = [None] * _ROOT_FIELDS
    for field_index, vector_at in zip((1, 2, 4, 7), vector_starts, strict=False):
        targets[field_index] = vector_at
    rest_at = int(starts[-1])
    for field_index, offset in enumerate(rest_fields, start=3):
        if offset is not None:
            targets[field_index] = rest_at + offset
    slots = [0] * _ROOT_FIELDS
    slots[0] = table_size - 1
    for field_index in range(1, _ROOT_FIELDS):
        target = targets[field_index]
        if target is not None:
            slot_at = table_at + 4 * field_index
            slots[field_index] = 4 * field_index
            struct.pack_into("<I", head, slot_at, target - slot_at)
    vtable = (4 + 2 * _ROOT_FIELDS, table_size, *slots)
    struct.pack_into(f"<{len(vtable)}H", head, vtable_at, *vtable)
    struct.pack_into("<i", head, table_at, table_at - vtable_at)
    head[table_at + table_size - 1] = info.spec_version
    first = 0
    for vector_at, count in zip(vector_starts, counts, strict=False):
        struct.pack_into("<I", head, vector_at, count)
        slot_positions = vector_at + 4 + 4 * np.arange(count, dtype=np.int64)
        offsets = (roots[first : first + count] - slot_positions).astype("<u4")
        head[vector_at + 4 : vector_at + 4 + 4 * count] = offsets.tobytes()
        first += count

    body = bytearray(head)
    body += b"".join(datas)
    patches = np.fromiter(map(_PATCH, segments), np.int64, len(segments))
    patched = patches >= 0
    words = np.frombuffer(body, dtype="<i4")
    words[(starts[patched] + patches[patched]) // 4] = np.asarray(values, dtype="<i4")
    # zstd level 1: this file is rewritten by every change, and at level 1 it comes out
    # about as small as at the usual 3 (its segments repeat), in two thirds of the time
    return encode_file(FileType.REPO_INFO, bytes(body), level=1, spec_version=2)
