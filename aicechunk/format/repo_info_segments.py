"""The repo info file written from pieces kept between writes: the encoder of a change.

Every change of a spec v2 repository rewrites its whole repo info file, which holds every
ref, every snapshot and up to 1,000 operations log entries. Encoding all of them again
costs milliseconds of Python per change, growing with the history, while a change alters
one or two of them. This encoder writes each ref, snapshot and log entry as a *segment*:
a small flatbuffer piece with its own vtables, every offset inside it, a length that is a
multiple of 8 and 8-byte alignment within, so that it reads the same wherever an 8-byte
aligned position puts it. A snapshot's or an update's segment is made the first time it
is written and kept on the object (they are immutable); a ref's depends only on its name.
A file is then its root table, the offset vectors, and the segments joined: a
``Layout`` (four ``Section``s of segments, where each starts, its entry in an offset
vector and the indices they hold, and the root's other fields), put together by
``assemble``. ``repo_info_splice`` keeps the layout of the last files written and makes
the next one's by splicing in what a change altered.

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
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

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
from aicechunk.format.repo_info_direct import direct_snapshot_segment, direct_update_segment
from aicechunk.format.repo_updates import (
    Update,
    encode_status,
    encode_update,
)

__all__ = [
    "Layout",
    "Section",
    "assemble",
    "build_layout",
    "encode_repo_info_segmented",
    "ref_segment",
    "rest_key",
    "rest_segment",
    "section",
    "snapshot_segment",
    "update_segment",
]

#: (bytes, position of its root object in them, position of its index field or -1)
Segment = tuple[bytes, int, int]
Buffer = bytes | memoryview

_NAME = "repo"
_ALIGN = 8
_ROOT_FIELDS = 13
# the head: the root offset and identifier, the root's vtable at 8, its table (aligned to
# 4: its last byte is the spec version, a u8), then the four offset vectors (aligned)
_VTABLE_AT = 8
_TABLE_AT = _VTABLE_AT + 4 + 2 * _ROOT_FIELDS + (-(_VTABLE_AT + 4 + 2 * _ROOT_FIELDS) % 4)
_TABLE_SIZE = 4 + 4 * (_ROOT_FIELDS - 1) + 1
_VECTORS_AT = _TABLE_AT + _TABLE_SIZE + (-(_TABLE_AT + _TABLE_SIZE) % 4)
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
def ref_segment(name: str) -> Segment:
    """A ref's table, written directly (no builder: a repository may hold a million
    refs): its vtable, the table (name, then the index to set), the name. Kept for the
    next write (a segment is immutable; the index is set in the file's copy)."""
    data = name.encode("utf-8")
    body = _REF_HEAD + _U32.pack(len(data)) + data + b"\x00"
    return body + bytes(-len(body) % _ALIGN), 8, 16


def snapshot_segment(snap: SnapshotInfo) -> Segment:
    """A snapshot's table (its parent's index to set), kept on the info for the next
    write."""
    found: Segment | None = snap._segment
    if found is None:
        if snap.pruned_ancestor_tx_logs:  # spec 2.1's list, after an expiration
            b = FastBuilder(256)
            found = _finish(b, snapshot_table(b, snap, 0, "i32!"), 1)
        else:
            found = direct_snapshot_segment(snap)
        object.__setattr__(snap, "_segment", found)  # a cache: the info is immutable
    return found


def update_segment(update: Update) -> Segment:
    """An operations log entry's table, kept on the entry for the next write: written
    directly for the kinds a commit, a ref change or a tag makes (two per change: the
    new entry, and the one before it now with its backup path), else by the builder."""
    found: Segment | None = update._segment
    if found is None:
        found = direct_update_segment(update)
        if found is None:
            b = FastBuilder(128)
            found = _finish(b, encode_update(b, update), None)
        object.__setattr__(update, "_segment", found)
    return found


def rest_segment(info: RepoInfo) -> tuple[Segment, tuple[int | None, ...]]:
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
    return (data, 0, -1), tuple(None if o is None else len(data) - o for o in offsets)


class Section(NamedTuple):
    """Segments written one after another (the refs of one kind, the snapshots, the
    log): their bytes (``length`` of them, in a few pieces: a splice copies none), where
    each starts, and what assembling a file needs of each, kept from one file to the
    next: ``entries``, the position of its root object less 4 bytes per segment before
    it (its entry in the file's offset vector, less a constant of the section's place);
    for segments that hold an index, ``patches`` (where that goes) and ``values`` (the
    index). Positions count from the section's start. Never changed: ``splice`` and
    ``shifted`` make new ones."""

    pieces: tuple[Buffer, ...]
    length: int
    starts: NDArray[np.int64]
    entries: NDArray[np.int64]
    patches: NDArray[np.int64] | None = None
    values: NDArray[np.int32] | None = None

    def splice(
        self, i: int, j: int, added: list[Segment], values: list[int], stop: int | None = None
    ) -> Section:
        """The segments from ``i`` to ``j`` (excluded) replaced by ``added``, holding
        ``values`` (ignored by a section without indices); with ``stop``, those from
        ``stop`` on (``stop`` >= ``j``) left out too."""
        count = len(self.starts)
        stop = count if stop is None else stop
        a, b, e = (int(self.starts[k]) if k < count else self.length for k in (i, j, stop))
        datas = list(map(_DATA, added))
        firsts = list(itertools.accumulate(map(len, datas), initial=a))
        size = firsts.pop() - a
        shift = size - (b - a)  # of the bytes after the splice
        pieces = (*_within(self.pieces, 0, a), *datas, *_within(self.pieces, b, e))

        def spliced(old: NDArray[Any], new: list[int], by: int) -> NDArray[Any]:
            after = old[j:stop] + by if by else old[j:stop]
            return np.concatenate((old[:i], np.array(new, old.dtype), after))

        roots = map(_ROOT, added)
        entries = [f + r - 4 * k for k, (f, r) in enumerate(zip(firsts, roots, strict=True), i)]
        # the entries after the splice: their tables moved by ``shift`` bytes, their
        # slots in the vector by 4 bytes per segment added or removed
        step = shift - 4 * (len(added) - (j - i))
        starts = spliced(self.starts, firsts, shift)
        entries_now = spliced(self.entries, entries, step)
        if self.patches is None or self.values is None:
            return Section(pieces, e + shift, starts, entries_now)
        patches = [f + p for f, (_, _, p) in zip(firsts, added, strict=True)]
        return Section(
            pieces,
            e + shift,
            starts,
            entries_now,
            spliced(self.patches, patches, shift),
            spliced(self.values, values, 0),
        )

    def shifted(self, at: int) -> Section:
        """The indices from ``at`` up one: a snapshot was inserted at ``at``."""
        assert self.values is not None
        return self._replace(values=self.values + (self.values >= at))

    def with_value(self, i: int, value: int) -> Section:
        """Segment ``i`` holding index ``value``."""
        assert self.values is not None
        values = self.values.copy()
        values[i] = value
        return self._replace(values=values)


def _within(pieces: tuple[Buffer, ...], lo: int, hi: int) -> list[Buffer]:
    """The bytes from ``lo`` to ``hi`` of the joined ``pieces``, as pieces (no copy)."""
    found: list[Buffer] = []
    at = 0
    for piece in pieces:
        end = at + len(piece)
        if end > lo and at < hi:
            whole = at >= lo and end <= hi
            found.append(piece if whole else memoryview(piece)[max(lo - at, 0) : hi - at])
        at = end
    return found


def section(segments: list[Segment], values: list[int] | None) -> Section:
    """Segments, and the index each holds (``None``: a section without indices)."""
    n = len(segments)
    datas = tuple(map(_DATA, segments))  # map over C getters: no Python frame per item
    sizes = np.fromiter(map(len, datas), np.int64, n)
    starts = np.cumsum(sizes) - sizes
    roots = np.fromiter(map(_ROOT, segments), np.int64, n)
    entries = starts + roots - 4 * np.arange(n, dtype=np.int64)
    length = int(sizes.sum())
    if values is None:
        return Section(datas, length, starts, entries)
    patches = starts + np.fromiter(map(_PATCH, segments), np.int64, n)
    return Section(datas, length, starts, entries, patches, np.array(values, np.int32))


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    """A repo info file in pieces: what it encodes, the names of its refs in the file's
    order (by UTF-8 bytes), its four sections (tags, branches, snapshots, log) and the
    segment of the root's other fields (``rest``, with their positions in it and what
    it was made from)."""

    info: RepoInfo
    tag_names: tuple[str, ...]
    branch_names: tuple[str, ...]
    tags: Section
    branches: Section
    snapshots: Section
    updates: Section
    rest: bytes
    rest_fields: tuple[int | None, ...]
    rest_key: tuple[Any, ...]


def rest_key(info: RepoInfo) -> tuple[Any, ...]:
    """What the segment of the root's other fields is made from (equal: the same bytes)."""
    return (
        info.deleted_tags,
        info.status,
        flex_of(info)[1],
        info.enabled_feature_flags,
        info.disabled_feature_flags,
        info.repo_before_updates,
        info.config,
        info.extra,
    )


def _check(info: RepoInfo) -> None:
    """What a repo info file needs that its parts do not say."""
    if "main" not in info.branches:
        raise FormatError(_NAME, "a repository must have a 'main' branch")
    if not info.latest_updates:
        raise FormatError(_NAME, "the operations log must hold at least one update")


def build_layout(info: RepoInfo) -> Layout:
    """The pieces of ``info``'s file, segments made now for what has none yet; the same
    checks as ``encode_repo_info``."""
    _check(info)
    index = {s.id.bytes: i for i, s in enumerate(info.snapshots)}

    def refs(found: Mapping[str, SnapshotId]) -> tuple[tuple[str, ...], Section]:
        names = tuple(sorted(found, key=str.encode))
        values = []
        for name in names:
            target = found[name]
            position = index.get(target.bytes)
            if position is None:
                raise FormatError(_NAME, f"{name!r} points at {target}, which is not listed")
            values.append(position)
        return names, section(list(map(ref_segment, names)), values)

    tag_names, tags = refs(info.tags)
    branch_names, branches = refs(info.branches)
    snapshots = info.snapshots
    get = index.get
    # comprehensions, not a loop of appends: this runs for every snapshot
    parents = [-1 if s.parent_id is None else get(s.parent_id.bytes, -2) for s in snapshots]
    if -2 in parents:
        orphan = snapshots[parents.index(-2)]
        raise FormatError(_NAME, f"the parent of {orphan.id} is not listed")
    listed = section([s._segment or snapshot_segment(s) for s in snapshots], parents)
    log = section([u._segment or update_segment(u) for u in info.latest_updates], None)
    (rest, _, _), fields = rest_segment(info)
    return Layout(
        info, tag_names, branch_names, tags, branches, listed, log, rest, fields, rest_key(info)
    )


def assemble(layout: Layout) -> tuple[bytes, Layout]:
    """The file of ``layout`` (the root table, the four offset vectors, the segments,
    each index set in place; compressed), and ``layout`` again, its sections now each
    one piece of the file's bytes (which the next splice cuts)."""
    parts = (layout.tags, layout.branches, layout.snapshots, layout.updates)
    counts = [len(p.starts) for p in parts]
    # the head: root offset and identifier, the root's vtable and table, four vectors
    vector_starts = list(itertools.accumulate((4 + 4 * n for n in counts), initial=_VECTORS_AT))
    segments_at = vector_starts[-1] + (-vector_starts[-1] % _ALIGN)
    bases = list(itertools.accumulate((p.length for p in parts), initial=segments_at))
    rest_at = bases[-1]

    head = bytearray(_VECTORS_AT)
    struct.pack_into("<I4s", head, 0, _TABLE_AT, FILE_IDENTIFIER)
    # root fields: 0 spec version (u8, last in the table), 1 tags, 2 branches, 3 deleted,
    # 4 snapshots, 5 status, 6 metadata, 7 updates, 8 before, 9 config, 10/11 flags, 12 extra
    targets: list[int | None] = [None] * _ROOT_FIELDS
    for field_index, vector_at in zip((1, 2, 4, 7), vector_starts, strict=False):
        targets[field_index] = vector_at
    for field_index, offset in enumerate(layout.rest_fields, start=3):
        if offset is not None:
            targets[field_index] = rest_at + offset
    slots = [0] * _ROOT_FIELDS
    slots[0] = _TABLE_SIZE - 1
    for field_index in range(1, _ROOT_FIELDS):
        target = targets[field_index]
        if target is not None:
            slot_at = _TABLE_AT + 4 * field_index
            slots[field_index] = 4 * field_index
            struct.pack_into("<I", head, slot_at, target - slot_at)
    vtable = (4 + 2 * _ROOT_FIELDS, _TABLE_SIZE, *slots)
    struct.pack_into(f"<{len(vtable)}H", head, _VTABLE_AT, *vtable)
    struct.pack_into("<i", head, _TABLE_AT, _TABLE_AT - _VTABLE_AT)
    head[_TABLE_AT + _TABLE_SIZE - 1] = layout.info.spec_version

    # the vectors: each one's count, then the offset of each of its tables (the segment's
    # entry, moved by where its section and its vector are)
    vectors: list[bytes] = []
    for p, count, vector_at, base in zip(parts, counts, vector_starts, bases, strict=False):
        vectors.append(_U32.pack(count))
        vectors.append((p.entries + (base - vector_at - 4)).astype("<u4").tobytes())
    vectors.append(bytes(segments_at - vector_starts[-1]))
    pieces = [piece for p in parts for piece in p.pieces]
    body = bytearray().join((head, *vectors, *pieces, layout.rest))
    words = np.frombuffer(body, "<i4")
    for p, base in zip(parts[:3], bases, strict=False):
        if p.patches is not None and p.values is not None and len(p.values):
            words[(p.patches + base) >> 2] = p.values
    view = memoryview(body)
    kept = [
        Section((view[base : base + p.length],), *p[1:])
        for p, base in zip(parts, bases, strict=False)
    ]
    # zstd level 1: this file is rewritten by every change, and at level 1 it comes out
    # about as small as at the usual 3 (its segments repeat), in two thirds of the time
    data = encode_file(FileType.REPO_INFO, body, level=1, spec_version=2)
    return data, Layout(
        layout.info,
        layout.tag_names,
        layout.branch_names,
        kept[0],
        kept[1],
        kept[2],
        kept[3],
        layout.rest,
        layout.rest_fields,
        layout.rest_key,
    )


def encode_repo_info_segmented(info: RepoInfo) -> bytes:
    """The repo info file's bytes, from segments (made now for what has none yet); the
    same checks as ``encode_repo_info``."""
    return assemble(build_layout(info))[0]
