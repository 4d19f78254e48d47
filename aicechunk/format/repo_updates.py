"""The operations log of a spec v2 repository: what each change of the repo info file did.

Each ``Update`` of ``RepoInfo.latest_updates`` holds one of the kinds below (a flatbuffer
union; the kind's code is its position in the schema's union, from 1), when it happened,
and the key under ``overwritten/`` of the repo info file as it was before the next update.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import flatbuffers

from aicechunk.format.flatbuf import Field, Reader, table
from aicechunk.format.ids import SnapshotId
from aicechunk.format.timestamps import from_micros, to_micros

__all__ = [
    "UPDATE_CODES",
    "UPDATE_FIELDS",
    "Availability",
    "BranchCreated",
    "BranchDeleted",
    "BranchReset",
    "CommitAmended",
    "ConfigChanged",
    "ExpirationRan",
    "FeatureFlagChanged",
    "GCRan",
    "MetadataChanged",
    "NewCommit",
    "NewDetachedSnapshot",
    "RepoAvailability",
    "RepoInitialized",
    "RepoMigrated",
    "RepoStatus",
    "RepoStatusChanged",
    "TagCreated",
    "TagDeleted",
    "Update",
    "UpdateKind",
]


class RepoAvailability(enum.IntEnum):
    """Whether a repository takes writes, under icechunk's names (``online``,
    ``read_only``; the spec's third value, ``offline``, icechunk 2.3 neither sets nor
    honours: it reads it as online). The upper-case names are aliases."""

    online = 0
    read_only = 1
    offline = 2
    ONLINE = 0
    READ_ONLY = 1
    OFFLINE = 2


Availability = RepoAvailability


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RepoStatus:
    """The repository's availability, when it was set (now, unless given: a datetime
    with a time zone, as icechunk requires), and why, if limited (icechunk's
    ``RepoStatus``)."""

    availability: RepoAvailability
    set_at: datetime = field(default_factory=_now)
    limited_availability_reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.availability, RepoAvailability):
            raise TypeError(
                f"availability is a RepoAvailability, not {type(self.availability).__name__}"
            )
        if self.set_at is None:  # icechunk's RepoStatus(availability, None, ...)
            object.__setattr__(self, "set_at", _now())
        elif not isinstance(self.set_at, datetime) or self.set_at.utcoffset() is None:
            raise TypeError("set_at must be a datetime with a time zone (tzinfo), not naive")
        reason = self.limited_availability_reason
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"limited_availability_reason is a str, not {type(reason).__name__}")

    @property
    def is_online(self) -> bool:
        """Whether the repository takes writes."""
        return self.availability is RepoAvailability.online


@dataclass(frozen=True, slots=True)
class RepoInitialized:
    """The repository was created."""


@dataclass(frozen=True, slots=True)
class RepoMigrated:
    """The repository was upgraded from one spec version to another."""

    from_version: int
    to_version: int


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """The stored configuration changed."""


@dataclass(frozen=True, slots=True)
class MetadataChanged:
    """The repository metadata changed."""


@dataclass(frozen=True, slots=True)
class TagCreated:
    """A tag was created."""

    name: str


@dataclass(frozen=True, slots=True)
class TagDeleted:
    """A tag was deleted; it pointed at ``previous_snap_id``."""

    name: str
    previous_snap_id: SnapshotId


@dataclass(frozen=True, slots=True)
class BranchCreated:
    """A branch was created."""

    name: str


@dataclass(frozen=True, slots=True)
class BranchDeleted:
    """A branch was deleted; it pointed at ``previous_snap_id``."""

    name: str
    previous_snap_id: SnapshotId


@dataclass(frozen=True, slots=True)
class BranchReset:
    """A branch was reset; it pointed at ``previous_snap_id``."""

    name: str
    previous_snap_id: SnapshotId


@dataclass(frozen=True, slots=True)
class NewCommit:
    """A commit moved ``branch`` to ``new_snap_id``."""

    branch: str
    new_snap_id: SnapshotId


@dataclass(frozen=True, slots=True)
class CommitAmended:
    """``branch``'s tip ``previous_snap_id`` was replaced by ``new_snap_id``."""

    branch: str
    previous_snap_id: SnapshotId
    new_snap_id: SnapshotId


@dataclass(frozen=True, slots=True)
class NewDetachedSnapshot:
    """A snapshot was committed on no branch."""

    new_snap_id: SnapshotId


@dataclass(frozen=True, slots=True)
class GCRan:
    """Garbage collection ran."""


@dataclass(frozen=True, slots=True)
class ExpirationRan:
    """Snapshot expiration ran."""


@dataclass(frozen=True, slots=True)
class FeatureFlagChanged:
    """Feature flag ``id`` was set on or off, or back to its default (``None``)."""

    id: int
    new_value: bool | None


@dataclass(frozen=True, slots=True)
class RepoStatusChanged:
    """The repository's status changed."""

    status: RepoStatus


UpdateKind = (
    RepoInitialized
    | RepoMigrated
    | ConfigChanged
    | MetadataChanged
    | TagCreated
    | TagDeleted
    | BranchCreated
    | BranchDeleted
    | BranchReset
    | NewCommit
    | CommitAmended
    | NewDetachedSnapshot
    | GCRan
    | ExpirationRan
    | FeatureFlagChanged
    | RepoStatusChanged
)

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# the schema's union order: a kind's code is its index here + 1
_KINDS: tuple[type, ...] = (
    RepoInitialized,
    RepoMigrated,
    ConfigChanged,
    MetadataChanged,
    TagCreated,
    TagDeleted,
    BranchCreated,
    BranchDeleted,
    BranchReset,
    NewCommit,
    CommitAmended,
    NewDetachedSnapshot,
    GCRan,
    ExpirationRan,
    FeatureFlagChanged,
    RepoStatusChanged,
)
_CODE = {kind: code for code, kind in enumerate(_KINDS, start=1)}
#: each kind's code in the schema's union (for encoders that write tables directly)
UPDATE_CODES: dict[type, int] = dict(_CODE)
# the table fields of each kind, in schema order: (attribute, kind of field)
_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {
    RepoMigrated: (("from_version", "u8"), ("to_version", "u8")),
    TagCreated: (("name", "str"),),
    TagDeleted: (("name", "str"), ("previous_snap_id", "id")),
    BranchCreated: (("name", "str"),),
    BranchDeleted: (("name", "str"), ("previous_snap_id", "id")),
    BranchReset: (("name", "str"), ("previous_snap_id", "id")),
    NewCommit: (("branch", "str"), ("new_snap_id", "id")),
    CommitAmended: (("branch", "str"), ("previous_snap_id", "id"), ("new_snap_id", "id")),
    NewDetachedSnapshot: (("new_snap_id", "id"),),
}
#: each kind's table fields, in schema order: (attribute, "str" | "id" | "u8")
UPDATE_FIELDS = _FIELDS


@dataclass(frozen=True, slots=True)
class Update:
    """One entry of the operations log (newest first in ``RepoInfo.latest_updates``)."""

    kind: UpdateKind
    updated_at: datetime
    backup_path: str | None = None
    # this entry's piece of a repo info file, once written (see repo_info_segments)
    _segment: Any = field(default=None, init=False, repr=False, compare=False)


# --- encoding --------------------------------------------------------------------------


def encode_status(b: flatbuffers.Builder, status: RepoStatus) -> int:
    """A RepoStatus table."""
    reason = status.limited_availability_reason
    reason_off = None if reason is None else b.CreateString(reason)
    return table(
        b,
        3,
        [
            (0, "u8", int(status.availability)),
            (1, "u64", to_micros(status.set_at)),
            (2, "off", reason_off),
        ],
    )


def _encode_kind(b: flatbuffers.Builder, kind: UpdateKind) -> int:
    if isinstance(kind, RepoStatusChanged):
        return table(b, 1, [(0, "off", encode_status(b, kind.status))])
    if isinstance(kind, FeatureFlagChanged):
        value = kind.new_value
        return table(
            b, 3, [(0, "u16", kind.id), (1, "bool", bool(value)), (2, "bool", value is not None)]
        )
    specs = _FIELDS.get(type(kind), ())
    strings = {a: b.CreateString(getattr(kind, a)) for a, k in specs if k == "str"}
    fields: list[Field] = []
    for slot, (attr, k) in enumerate(specs):
        if k == "str":
            fields.append((slot, "off", strings[attr]))
        elif k == "id":
            fields.append((slot, "s12", getattr(kind, attr).bytes))
        else:
            fields.append((slot, k, getattr(kind, attr)))
    return table(b, len(specs), fields)


def encode_update(b: flatbuffers.Builder, update: Update) -> int:
    """An Update table (its kind's table first, then its backup path)."""
    kind = _encode_kind(b, update.kind)
    path = None if update.backup_path is None else b.CreateString(update.backup_path)
    return table(
        b,
        4,
        [
            (0, "u8", _CODE[type(update.kind)]),
            (1, "off", kind),
            (2, "u64", to_micros(update.updated_at)),
            (3, "off", path),
        ],
    )


# --- decoding --------------------------------------------------------------------------


def decode_status(r: Reader, pos: int) -> RepoStatus:
    """A RepoStatus table (an availability this library does not know is a FormatError)."""
    code = r.scalar(pos, 0, r.u8, 0)
    try:
        availability = Availability(code)
    except ValueError:
        raise r.fail(f"unknown repository availability {code}") from None
    return RepoStatus(availability, from_micros(r.scalar(pos, 1, r.u64, 0), r), r.string(pos, 2))


def _string(r: Reader, slot: int) -> str:
    """The string whose offset is at ``slot`` (a short path for the log's many)."""
    buf = r.buf
    start = slot + _U32.unpack_from(buf, slot)[0]
    end = start + 4 + _U32.unpack_from(buf, start)[0]
    if end > r.size:
        raise r.fail(f"a string at {start} runs past the {r.size}-byte buffer")
    try:
        return buf[start + 4 : end].decode("utf-8")
    except UnicodeDecodeError:
        raise r.fail("a string is not valid UTF-8") from None


def decode_update(r: Reader, pos: int) -> Update:
    """An Update table. A log holds up to 1,000 of them and is read whole, so this reads
    the bytes directly: one vtable lookup per table, offsets only forward (never below
    0), a read past the end a ``struct.error`` that the caller's ``guarded`` names."""
    buf = r.buf
    code_at, kind_at, time_at, path_at = r.fields(pos, 4)
    if not kind_at:
        raise r.fail("required field 'update_type' is missing")
    at = kind_at + _U32.unpack_from(buf, kind_at)[0]
    code = _U8.unpack_from(buf, code_at)[0] if code_at else 0
    if not 1 <= code <= len(_KINDS):
        raise r.fail(f"unknown update type {code}")
    cls = _KINDS[code - 1]
    kind: Any
    if cls is RepoStatusChanged:
        status = r.table_field(at, 0, "status")
        assert status is not None
        kind = RepoStatusChanged(decode_status(r, status))
    elif cls is FeatureFlagChanged:
        flag_at, value_at, set_at = r.fields(at, 3)
        value = value_at != 0 and r.u8(value_at) != 0
        is_set = set_at != 0 and r.u8(set_at) != 0
        kind = FeatureFlagChanged(r.u16(flag_at) if flag_at else 0, value if is_set else None)
    else:
        specs = _FIELDS.get(cls, ())
        values: list[Any] = []
        for (attr, k), field_at in zip(specs, r.fields(at, len(specs)), strict=True):
            if not field_at and k != "u8":
                raise r.fail(f"required field {attr!r} is missing")
            if k == "str":
                values.append(_string(r, field_at))
            elif k == "id":
                raw = buf[field_at : field_at + 12]
                if len(raw) != 12:
                    raise r.fail(f"the {attr} at {field_at} runs past the buffer")
                values.append(SnapshotId(raw))
            else:
                values.append(_U8.unpack_from(buf, field_at)[0] if field_at else 0)
        kind = cls(*values)
    micros = _U64.unpack_from(buf, time_at)[0] if time_at else 0
    return Update(kind, from_micros(micros, r), _string(r, path_at) if path_at else None)
