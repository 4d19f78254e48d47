"""The repo info file of spec v2 (``$ROOT/repo``): the one mutable object of a repository.

It holds the branches and tags (each naming a snapshot by its index in the snapshot
list), the names of deleted tags (never to be reused), every snapshot's id, parent,
time, message and metadata, the repository's status, metadata and feature flags, its
configuration (a FlexBuffer, kept as bytes), and the operations log: the newest updates,
then ``repo_before_updates``, the ``overwritten/`` copy that holds older ones.

Every change rewrites the file with a conditional write, after copying the old file to
``overwritten/<backup_name>``; ``push_update`` makes the new operations log as Icechunk
does. Files are laid out as Icechunk lays them out, so an unchanged one re-encodes to the
same bytes.

Metadata (a snapshot's, the repository's) keeps the FlexBuffers it was read with, or
first written with, for as long as it is the same mapping: rewriting the file after a
change does not encode every snapshot's metadata again, and a mapping changed in place
by whoever was handed it changes nothing stored (a change replaces the mapping).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import flatbuffers

from aicechunk.errors import FormatError
from aicechunk.format.fastbuilder import FastBuilder
from aicechunk.format.flatbuf import FILE_IDENTIFIER, Reader, guarded, offset_vector, table
from aicechunk.format.flexbuf import decode_flex, encode_flex
from aicechunk.format.header import FileType, decode_versioned, encode_file
from aicechunk.format.ids import SnapshotId, encode_base32, encode_base32_many
from aicechunk.format.metadata import check_commit_properties
from aicechunk.format.repo_info_model import Flex, Lazy, RepoInfo, SnapshotInfo, with_snapshot
from aicechunk.format.repo_info_refs import check_order, read_refs
from aicechunk.format.repo_updates import (
    Update,
    UpdateKind,
    decode_status,
    decode_update,
    encode_status,
    encode_update,
)
from aicechunk.format.stored_update import stored_updates
from aicechunk.format.timestamps import from_micros, to_micros

__all__ = [
    "OVERWRITTEN_PREFIX",
    "REPO_INFO_KEY",
    "UPDATES_PER_FILE",
    "Lazy",
    "RepoInfo",
    "SnapshotInfo",
    "backup_name",
    "check_backup_name",
    "decode_config",
    "decode_repo_info",
    "encode_repo_info",
    "next_update_time",
    "push_update",
    "with_snapshot",
]

REPO_INFO_KEY = "repo"
OVERWRITTEN_PREFIX = "overwritten/"
#: How many operations log entries one repo info file keeps (Icechunk's default).
UPDATES_PER_FILE = 1000
_YEAR_3000_MS = int(datetime(3000, 1, 1, tzinfo=UTC).timestamp() * 1000)
_NAME = "repo"
# Icechunk's names are ``repo.<ms>.<20 characters>``; a file name holds 255 bytes
_MAX_BACKUP_NAME_BYTES = 255


def backup_name(now: datetime, random12: bytes) -> str:
    """The name (under ``overwritten/``) of the copy of the repo info file made before
    overwriting it at ``now``: newer copies list first."""
    millis = to_micros(now) // 1000
    return f"repo.{_YEAR_3000_MS - millis}.{encode_base32(random12)}"


def check_backup_name(name: str, file: str) -> str:
    """``name`` if it can name a copy under ``overwritten/``: one path segment (no ``/``
    or ``\\``, not ``.`` or ``..``), no control characters, at most 255 bytes of UTF-8.
    Otherwise a ``FormatError`` naming ``file``, the repo info file that gave it: a
    crafted name must never lead a reader outside ``overwritten/``."""
    problem = None
    if name in ("", ".", ".."):
        problem = "is no name"
    elif "/" in name or "\\" in name:
        problem = "is more than one path segment"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        problem = "holds a control character"
    elif len(name.encode("utf-8", "surrogatepass")) > _MAX_BACKUP_NAME_BYTES:
        problem = f"is longer than {_MAX_BACKUP_NAME_BYTES} bytes"
    if problem is not None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise FormatError(file, f"the backup name {shown!r} {problem}")
    return name


def next_update_time(latest: datetime) -> datetime:
    """The first time after the latest update's, which the next update must be dated."""
    try:
        return latest + timedelta(microseconds=1)
    except OverflowError:
        raise FormatError(
            _NAME,
            f"the latest update is dated {latest.isoformat()}, the last time there is: "
            "no later change can be logged",
        ) from None


def push_update(
    info: RepoInfo,
    kind: UpdateKind,
    at: datetime,
    backup_path: str | None,
    limit: int = UPDATES_PER_FILE,
) -> tuple[tuple[Update, ...], str | None]:
    """The operations log and ``repo_before_updates`` of the file that replaces ``info``
    after an update of ``kind`` at ``at``, ``info`` having been copied to ``backup_path``.

    The new update goes first; the previous newest one gets ``backup_path``. Past
    ``limit`` entries the log is cut at the first entry with a backup path, which then
    links to the older ones.
    """
    old = list(info.latest_updates)
    if old and at <= old[0].updated_at:
        raise FormatError(
            _NAME, f"update at {at} is not after the latest one ({old[0].updated_at})"
        )
    if backup_path is not None and not old:
        raise FormatError(_NAME, "a backup path without earlier updates")
    if old:
        old[0] = Update(old[0].kind, old[0].updated_at, backup_path)
    candidates = (Update(kind, at, None), *old)
    # every entry up to the limit, then those up to the first with a backup path (in
    # a log that grew by one, the first past the limit: no walk over the whole log)
    cut = max(limit, 0)
    while cut < len(candidates) and candidates[cut].backup_path is None:
        cut += 1
    if cut < len(candidates):
        return candidates[:cut], candidates[cut].backup_path
    return candidates, info.repo_before_updates


# --- encoding --------------------------------------------------------------------------


def flex_of(owner: SnapshotInfo | RepoInfo) -> Flex:
    """The FlexBuffers of ``owner``'s metadata: those it holds while it is the same
    mapping, else encoded (and checked) now and kept on ``owner`` for the next write."""
    known = owner._flex
    if known is not None and known[0] is owner.metadata:
        return known
    metadata = owner.metadata
    if isinstance(owner, SnapshotInfo):
        check_commit_properties(owner.message, metadata)
    encoded = tuple(
        (key, encode_flex(metadata[key], f"metadata[{key!r}]")) for key in sorted(metadata)
    )
    flex = (metadata, encoded)
    object.__setattr__(owner, "_flex", flex)  # a cache: the owner is immutable otherwise
    return flex


def metadata_items(b: flatbuffers.Builder, flex: Flex) -> int:
    items = []
    for key, data in flex[1]:
        name = b.CreateSharedString(key)
        value = b.CreateByteVector(data)
        items.append(table(b, 2, [(0, "off", name), (1, "off", value)]))
    return offset_vector(b, items)


def _refs(b: flatbuffers.Builder, refs: Mapping[str, SnapshotId], index: dict[bytes, int]) -> int:
    offsets = []
    for name in sorted(refs, key=str.encode):
        position = index.get(refs[name].bytes)
        if position is None:
            raise FormatError(_NAME, f"{name!r} points at {refs[name]}, which is not listed")
        name_off = b.CreateString(name)
        offsets.append(table(b, 2, [(0, "off", name_off), (1, "u32", position)]))
    return offset_vector(b, offsets)


def snapshot_table(b: flatbuffers.Builder, snap: SnapshotInfo, parent: int, kind: str) -> int:
    """One snapshot's table, its parent's index written as a field of ``kind`` (``i32``,
    or ``i32!`` to write it also when 0)."""
    metadata = metadata_items(b, flex_of(snap))
    pruned = None
    if snap.pruned_ancestor_tx_logs:  # an empty list is never written
        b.StartVector(12, len(snap.pruned_ancestor_tx_logs), 1)
        for log_id in reversed(snap.pruned_ancestor_tx_logs):
            b.head -= 12
            b.Bytes[b.head : b.head + 12] = log_id.bytes
        pruned = b.EndVector()
    message = b.CreateString(snap.message)
    fields = [
        (0, "s12", snap.id.bytes),
        (1, kind, parent),
        (2, "u64", to_micros(snap.flushed_at)),
        (3, "off", message),
        (4, "off", metadata),
        (5, "off", pruned),
    ]
    return table(b, 6, fields)


def u16_vector(b: flatbuffers.Builder, values: tuple[int, ...] | None) -> int | None:
    if values is None:
        return None
    b.StartVector(2, len(values), 2)
    for value in reversed(values):
        b.PrependUint16(value)
    return int(b.EndVector())


def encode_repo_info(info: RepoInfo) -> bytes:
    """The repo info file's bytes; ``FormatError`` if a ref or parent names a snapshot
    that is not listed or there is no ``main`` branch, ``UnrepresentableValueError`` for
    metadata that is not JSON."""
    if "main" not in info.branches:
        raise FormatError(_NAME, "a repository must have a 'main' branch")
    if not info.latest_updates:
        raise FormatError(_NAME, "the operations log must hold at least one update")
    index = {s.id.bytes: i for i, s in enumerate(info.snapshots)}
    b = FastBuilder(4096)
    tags = _refs(b, info.tags, index)
    branches = _refs(b, info.branches, index)
    deleted = offset_vector(b, [b.CreateString(name) for name in info.deleted_tags])
    snapshots = []
    for snap in info.snapshots:
        if snap.parent_id is None:
            parent = -1
        elif snap.parent_id.bytes in index:
            parent = index[snap.parent_id.bytes]
        else:
            raise FormatError(_NAME, f"the parent of {snap.id} is not listed")
        snapshots.append(snapshot_table(b, snap, parent, "i32"))
    snapshots_vec = offset_vector(b, snapshots)
    status = encode_status(b, info.status)
    metadata_vec = metadata_items(b, flex_of(info))
    enabled = u16_vector(b, info.enabled_feature_flags)
    disabled = u16_vector(b, info.disabled_feature_flags)
    updates = offset_vector(b, [encode_update(b, u) for u in info.latest_updates])
    before = None if info.repo_before_updates is None else b.CreateString(info.repo_before_updates)
    config = None if info.config is None else b.CreateByteVector(info.config)
    extra = None if info.extra is None else b.CreateByteVector(info.extra)
    root = table(
        b,
        13,
        [
            (0, "u8", info.spec_version),
            (1, "off", tags),
            (2, "off", branches),
            (3, "off", deleted),
            (4, "off", snapshots_vec),
            (5, "off", status),
            (6, "off", metadata_vec),
            (7, "off", updates),
            (8, "off", before),
            (9, "off", config),
            (10, "off", enabled),
            (11, "off", disabled),
            (12, "off", extra),
        ],
    )
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return encode_file(FileType.REPO_INFO, bytes(b.Output()), spec_version=2)


# --- decoding --------------------------------------------------------------------------


def decode_repo_info(
    data: bytes, name: str = "repo", max_size: int | None = None, *, lazy: bool = False
) -> RepoInfo:
    """Decode a repo info file; ``FormatError`` names the file and the problem (also when
    it would decompress to more than ``max_size`` bytes, or is of spec version 1).

    ``lazy``: the snapshots and the operations log are decoded (and checked) when first
    used, not now (a ``Lazy`` sequence each); the refs, the status and the rest are now.
    """
    version, payload = decode_versioned(data, FileType.REPO_INFO, name, max_size)
    if version < 2:
        raise FormatError(name, f"spec version {version} has no repo info file")
    return guarded(name, lambda: _decode(Reader(payload, name), lazy))


Stored = tuple[dict[str, Any], tuple[tuple[str, bytes], ...]]


def _metadata(r: Reader, table_pos: int, index: int) -> Stored:
    """A metadata field: the mapping, and the FlexBuffers it was read from."""
    found: dict[str, Any] = {}
    if r.field(table_pos, index) is None:
        return found, ()
    stored: dict[str, bytes] = {}
    for pos in r.table_vector(table_pos, index):
        key = r.string(pos, 0, "metadata name")
        assert key is not None
        if key in stored:
            raise r.fail(f"metadata names {key!r} twice")
        stored[key] = r.bytes_field(pos, 1, "metadata value") or b""
        found[key] = decode_flex(stored[key], r.name)
    return found, tuple(stored.items())


class _Snapshots:
    """The snapshot list of one file: each snapshot's id found on demand (refs name them
    by position), each info decoded on demand, the list's order checked once all are."""

    def __init__(self, r: Reader, root: int) -> None:
        self.r = r
        self.positions = r.table_vector(root, 4, "snapshots")
        self.ids: dict[int, SnapshotId] = {}

    def id(self, position: int) -> SnapshotId:
        found = self.ids.get(position)
        if found is None:
            (id_pos,) = self.r.fields(self.positions[position], 1)
            if not id_pos:
                raise self.r.fail("required field 'snapshot id' is missing")
            found = self.ids[position] = SnapshotId(self.r.raw(id_pos, 12))
        return found

    def find_ids(self, positions: list[int]) -> None:
        """Find the ids at ``positions`` (those not found yet) at once: the refs'."""
        missing = sorted(set(positions).difference(self.ids))
        raws = []
        for position in missing:
            (id_pos,) = self.r.fields(self.positions[position], 1)
            if not id_pos:
                raise self.r.fail("required field 'snapshot id' is missing")
            raws.append(self.r.raw(id_pos, 12))
        texts = encode_base32_many(b"".join(raws), 12)
        for position, raw, text in zip(missing, raws, texts, strict=True):
            self.ids[position] = SnapshotId.known(raw, text)

    def info(self, position: int) -> SnapshotInfo:
        r, pos = self.r, self.positions[position]
        parent = _i32(r, pos, 1)
        if not -1 <= parent < len(self.positions):
            raise r.fail(f"parent offset {parent} outside the {len(self.positions)} snapshots")
        start, count = r.vector(pos, 5)
        ids = r.raw(start, 12 * count)
        pruned = tuple(SnapshotId(ids[12 * i : 12 * i + 12]) for i in range(count))
        flex = _metadata(r, pos, 4)
        return SnapshotInfo(
            self.id(position),
            None if parent < 0 else self.id(parent),
            from_micros(r.scalar(pos, 2, r.u64, 0), r),
            r.string(pos, 3, "message") or "",
            flex[0],
            pruned,
            flex,
        )

    def check(self, infos: tuple[SnapshotInfo, ...]) -> None:
        if any(infos[i].id.bytes >= infos[i + 1].id.bytes for i in range(len(infos) - 1)):
            raise self.r.fail("snapshots are not sorted by id without repeats")


def _decode(r: Reader, lazy: bool) -> RepoInfo:
    root = r.root()
    listed = _Snapshots(r, root)
    count = len(listed.positions)

    def refs(index: int, what: str) -> dict[str, SnapshotId]:
        found = read_refs(r, r.table_vector(root, index, what), count, what)
        listed.find_ids([position for _, position in found])
        ids = listed.ids
        return {name: ids[position] for name, position in found}

    def flags(index: int) -> tuple[int, ...] | None:
        if r.field(root, index) is None:
            return None
        start, count = r.vector(root, index)
        r.raw(start, 2 * count)
        return struct.unpack_from(f"<{count}H", r.buf, start) if count else ()

    status = r.table_field(root, 5, "status")
    assert status is not None
    start, deleted_count = r.vector(root, 3, "deleted_tags")
    r.raw(start, 4 * deleted_count)
    deleted = tuple(_string_at(r, start + 4 * i) for i in range(deleted_count))
    for i in range(1, deleted_count):
        check_order(r, "deleted_tags", deleted[i - 1], deleted[i])
    positions = r.table_vector(root, 7, "latest_updates")
    if not positions:
        raise r.fail("the operations log (latest_updates) is empty")
    snapshots: Lazy[SnapshotInfo] | tuple[SnapshotInfo, ...]
    updates: Lazy[Update] | tuple[Update, ...]
    if lazy:
        snapshots = Lazy(count, lambda i: guarded(r.name, lambda: listed.info(i)), listed.check)
        # an entry is decoded (and checked) when one of its fields is first read
        updates = Lazy(
            len(positions),
            lambda i: stored_updates(r, positions[i : i + 1])[0],
            every=lambda: stored_updates(r, positions),
        )
    else:
        snapshots = tuple(listed.info(i) for i in range(count))
        listed.check(snapshots)
        updates = tuple(decode_update(r, p) for p in positions)
    metadata = _metadata(r, root, 6)
    return RepoInfo(
        branches=refs(2, "branches"),
        tags=refs(1, "tags"),
        snapshots=snapshots,
        status=decode_status(r, status),
        latest_updates=updates,
        deleted_tags=deleted,
        metadata=metadata[0],
        repo_before_updates=r.string(root, 8),
        config=r.bytes_field(root, 9),
        enabled_feature_flags=flags(10),
        disabled_feature_flags=flags(11),
        spec_version=r.scalar(root, 0, r.u8, 0),
        extra=r.bytes_field(root, 12),
        _flex=metadata,
    )


def _i32(r: Reader, table_pos: int, index: int) -> int:
    value = r.scalar(table_pos, index, r.u32, 0)
    return value - (1 << 32) if value >= 1 << 31 else value


def _string_at(r: Reader, slot: int) -> str:
    pos = r.deref(slot)
    length = r.u32(pos)
    try:
        return r.raw(pos + 4, length).decode("utf-8")
    except UnicodeDecodeError:
        raise r.fail("a string is not valid UTF-8") from None


def decode_config(info: RepoInfo) -> Any:
    """The stored configuration as a plain value (``None`` when there is none)."""
    return None if info.config is None else decode_flex(info.config, f"{_NAME} config")
