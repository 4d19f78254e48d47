"""A small, bounds-checked flatbuffer reader, and writing helpers over ``flatbuffers``.

Reading goes through ``Reader``, which checks every offset against the buffer, so a
malformed file raises ``FormatError`` instead of ``IndexError`` or ``struct.error``.
Tables are addressed by field index (0, 1, 2, ... in schema order).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

import flatbuffers
import numpy as np

from aicechunk.errors import FormatError
from aicechunk.format.fastbuilder import FastBuilder

__all__ = ["FILE_IDENTIFIER", "Reader", "new_builder", "struct_vector"]

FILE_IDENTIFIER = b"Ichk"
T = TypeVar("T")

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_SLOTS = [struct.Struct(f"<{n}H") for n in range(17)]  # the vtable entries of n fields


class Reader:
    """Bounds-checked access to one flatbuffer."""

    __slots__ = ("buf", "name", "size")

    def __init__(self, buf: bytes, name: str) -> None:
        self.buf = buf
        self.name = name
        self.size = len(buf)

    def fail(self, problem: str) -> FormatError:
        """A FormatError about this buffer."""
        return FormatError(self.name, f"malformed flatbuffer: {problem}")

    def _check(self, pos: int, length: int) -> None:
        if pos < 0 or pos + length > self.size:
            raise self.fail(f"offset {pos}+{length} outside the {self.size}-byte buffer")

    def u8(self, pos: int) -> int:
        self._check(pos, 1)
        return self.buf[pos]

    def u16(self, pos: int) -> int:
        self._check(pos, 2)
        value: int = _U16.unpack_from(self.buf, pos)[0]
        return value

    def u32(self, pos: int) -> int:
        self._check(pos, 4)
        value: int = _U32.unpack_from(self.buf, pos)[0]
        return value

    def u64(self, pos: int) -> int:
        self._check(pos, 8)
        value: int = _U64.unpack_from(self.buf, pos)[0]
        return value

    def raw(self, pos: int, length: int) -> bytes:
        self._check(pos, length)
        return self.buf[pos : pos + length]

    # -- structure ----------------------------------------------------------------------

    def root(self, identifier: bytes | None = FILE_IDENTIFIER) -> int:
        """Position of the root table."""
        if identifier is not None and self.raw(4, 4) != identifier:
            raise self.fail(f"file identifier is {self.raw(4, 4)!r}, expected {identifier!r}")
        return self.u32(0)

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, if present."""
        self._check(table, 4)
        vtable = table - _I32.unpack_from(self.buf, table)[0]
        vt_len = self.u16(vtable)
        slot = 4 + 2 * index
        if slot + 2 > vt_len:
            return None
        off = self.u16(vtable + slot)
        return table + off if off else None

    def fields(self, table: int, count: int) -> tuple[int, ...]:
        """Absolute positions of fields ``0 .. count-1`` of the table at ``table`` (0 for
        one that is absent), its vtable read once: for decoders of many small tables."""
        self._check(table, 4)
        vtable = table - _I32.unpack_from(self.buf, table)[0]
        present = (self.u16(vtable) - 4) >> 1
        if present >= count:
            self._check(vtable + 4, 2 * count)
            offsets = _SLOTS[count].unpack_from(self.buf, vtable + 4)
        elif present > 0:
            self._check(vtable + 4, 2 * present)
            offsets = _SLOTS[present].unpack_from(self.buf, vtable + 4) + (0,) * (count - present)
        else:
            return (0,) * count
        return tuple([table + o if o else 0 for o in offsets])

    def string_at(self, slot: int) -> str:
        """The string whose offset is stored at ``slot``."""
        start = slot + self.u32(slot)
        length = self.u32(start)
        try:
            return self.raw(start + 4, length).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string is not valid UTF-8") from None

    def deref(self, pos: int) -> int:
        """Follow the offset stored at ``pos``."""
        return pos + self.u32(pos)

    def table_field(self, table: int, index: int, required: str | None = None) -> int | None:
        """Position of a sub-table (or vector/string) field, following its offset."""
        pos = self.field(table, index)
        if pos is None:
            if required:
                raise self.fail(f"required field {required!r} is missing")
            return None
        return self.deref(pos)

    def vector(self, table: int, index: int, required: str | None = None) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent and optional."""
        pos = self.table_field(table, index, required)
        if pos is None:
            return 0, 0
        length = self.u32(pos)
        return pos + 4, length

    def string(self, table: int, index: int, required: str | None = None) -> str | None:
        """A string field."""
        start, length = self.vector(table, index, required)
        if start == 0:
            return None
        try:
            return self.raw(start, length).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string is not valid UTF-8") from None

    def bytes_field(self, table: int, index: int, required: str | None = None) -> bytes | None:
        """A ``[uint8]`` field."""
        start, length = self.vector(table, index, required)
        if start == 0:
            return None
        return self.raw(start, length)

    def scalar(self, table: int, index: int, reader: Callable[[int], int], default: int) -> int:
        pos = self.field(table, index)
        return default if pos is None else reader(pos)

    def struct_at(
        self, table: int, index: int, size: int, required: str | None = None
    ) -> int | None:
        """Position of an inline struct field."""
        pos = self.field(table, index)
        if pos is None:
            if required:
                raise self.fail(f"required field {required!r} is missing")
            return None
        self._check(pos, size)
        return pos

    def table_vector(self, table: int, index: int, required: str | None = None) -> list[int]:
        """Positions of the tables in a vector-of-tables field."""
        start, length = self.vector(table, index, required)
        self._check(start, 4 * length)
        if length < 32:
            return [start + 4 * i + self.u32(start + 4 * i) for i in range(length)]
        offsets = np.frombuffer(self.buf, dtype="<u4", count=length, offset=start)
        positions = offsets.astype(np.int64) + (start + 4 * np.arange(length, dtype=np.int64))
        found: list[int] = positions.tolist()
        return found

    def u32_vector(self, table: int, index: int, required: str | None = None) -> tuple[int, ...]:
        start, length = self.vector(table, index, required)
        self._check(start, 4 * length)
        return struct.unpack_from(f"<{length}I", self.buf, start) if length else ()


def guarded(name: str, fn: Callable[[], T]) -> T:
    """Run a decoder, turning any low-level failure into a FormatError naming ``name``."""
    try:
        return fn()
    except FormatError:
        raise
    except (IndexError, struct.error, ValueError, TypeError, KeyError, OverflowError) as err:
        raise FormatError(name, f"malformed content: {type(err).__name__}: {err}") from None


def new_builder(size: int = 1024) -> flatbuffers.Builder:
    """A flatbuffers builder: ``FastBuilder``, which writes the base builder's bytes in
    fewer Python calls (a commit's snapshot took most of its encoding time in them)."""
    return FastBuilder(size)


def struct_vector(
    builder: flatbuffers.Builder, items: list[bytes], size: int, alignment: int
) -> int:
    """A vector of fixed-size structs given as packed little-endian bytes."""
    builder.StartVector(size, len(items), alignment)
    for item in reversed(items):
        builder.Prep(alignment, size)
        builder.head = builder.head - size
        builder.Bytes[builder.head : builder.head + size] = item
    return int(builder.EndVector())


def inline_struct(builder: flatbuffers.Builder, packed: bytes, alignment: int) -> int:
    """Write one struct in place (just before adding it to a table); returns its offset."""
    builder.Prep(alignment, len(packed))
    builder.head = builder.head - len(packed)
    builder.Bytes[builder.head : builder.head + len(packed)] = packed
    return int(builder.Offset())


class Forward:
    """A flatbuffer written front to back, for bulk encoders.

    Every offset in a flatbuffer may point anywhere later in the buffer, so writing a
    parent before its children lets records of one shape be laid out with numpy in one
    go instead of one builder call per field. Tables of one shape share one vtable.
    """

    def __init__(self) -> None:
        # root offset (patched by ``finish``) and the file identifier
        self.buf = bytearray(b"\x00\x00\x00\x00" + FILE_IDENTIFIER)
        self._vtables: dict[tuple[int, tuple[int, ...]], int] = {}

    @property
    def pos(self) -> int:
        return len(self.buf)

    def align(self, n: int) -> int:
        pad = -len(self.buf) % n
        if pad:
            self.buf += b"\x00" * pad
        return len(self.buf)

    def vtable(self, table_size: int, slots: tuple[int, ...]) -> int:
        """Position of a vtable (made once per shape); ``slots`` are field offsets, 0 absent."""
        key = (table_size, slots)
        found = self._vtables.get(key)
        if found is None:
            self.align(2)
            found = self.pos
            self.buf += struct.pack(f"<HH{len(slots)}H", 4 + 2 * len(slots), table_size, *slots)
            self._vtables[key] = found
        return found

    def reserve(self, size: int, alignment: int = 4) -> int:
        start = self.align(alignment)
        self.buf += b"\x00" * size
        return start

    def put(self, pos: int, fmt: str, *values: object) -> None:
        struct.pack_into(fmt, self.buf, pos, *values)

    def uoffset(self, at: int, target: int) -> None:
        """Write at ``at`` the offset of ``target`` (which must lie after it)."""
        struct.pack_into("<I", self.buf, at, target - at)

    def table(self, vtable: int, size: int, alignment: int = 4) -> int:
        """Reserve a table of ``size`` bytes (soffset included) pointing at ``vtable``."""
        start = self.reserve(size, alignment)
        struct.pack_into("<i", self.buf, start, start - vtable)
        return start

    def offset_vector(self, count: int) -> int:
        """Reserve a vector of ``count`` offsets; returns the position of its length."""
        start = self.reserve(4 + 4 * count)
        struct.pack_into("<I", self.buf, start, count)
        return start

    def string(self, value: str | bytes) -> int:
        data = value.encode() if isinstance(value, str) else value
        start = self.align(4)
        self.buf += struct.pack("<I", len(data)) + data + b"\x00"
        return start

    def byte_vector(self, data: bytes) -> int:
        start = self.align(4)
        self.buf += struct.pack("<I", len(data)) + data
        return start

    def struct_vector(self, items: list[bytes], alignment: int = 4) -> int:
        start = self.align(max(4, alignment))
        self.buf += struct.pack("<I", len(items)) + b"".join(items)
        return start

    def finish(self, root: int) -> bytes:
        return bytes(self.finish_buffer(root))

    def finish_buffer(self, root: int) -> bytearray:
        """``finish`` without copying: the buffer itself (large files are compressed from
        it, so they never exist twice)."""
        struct.pack_into("<I", self.buf, 0, root)
        self.align(8)
        return self.buf


# --- tables laid out as Icechunk's generated code lays them out -------------------------

#: A field to write: (slot index, kind, value); kinds are ``u64``, ``u32``, ``i32``,
#: ``u16``, ``u8``, ``bool``, ``off`` (an offset already written) and ``s8``/``s12``
#: (an ObjectId8/ObjectId12 struct, given as its bytes); ``u32!`` and ``i32!`` are
#: ``u32``/``i32`` written even when 0 (a value to be patched in place later).
Field = tuple[int, str, object]

# the order in which flatc's generated ``create`` adds fields: 8-byte scalars, then
# 4-byte values (offsets and id structs among them), then 2-byte, then 1-byte ones,
# each group from the last field of the schema to the first
_GROUP = {"u64": 0, "u32": 1, "i32": 1, "off": 1, "s8": 1, "s12": 1, "u16": 2, "u8": 3}
_GROUP["u32!"] = _GROUP["i32!"] = 1
_GROUP["bool"] = 3


def table(builder: flatbuffers.Builder, num_fields: int, fields: list[Field]) -> int:
    """Write one table of ``num_fields`` slots; a field whose value is ``None`` is absent,
    a scalar equal to its default 0 (false) too. The layout is the one Icechunk's builder
    makes for the same fields, so files can come out byte for byte alike."""
    present = [f for f in fields if f[2] is not None]
    present.sort(key=lambda f: (_GROUP[f[1]], -f[0]))
    builder.StartObject(num_fields)
    for slot, kind, value in present:
        if kind == "off":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind in ("s8", "s12"):
            assert isinstance(value, bytes)
            builder.PrependStructSlot(slot, inline_struct(builder, value, 1), 0)
        elif kind == "u64":
            builder.PrependUint64Slot(slot, value, 0)
        elif kind == "u32":
            builder.PrependUint32Slot(slot, value, 0)
        elif kind == "i32":
            builder.PrependInt32Slot(slot, value, 0)
        elif kind == "u32!":  # a default of None: never left out
            builder.PrependUint32Slot(slot, value, None)
        elif kind == "i32!":
            builder.PrependInt32Slot(slot, value, None)
        elif kind == "u16":
            builder.PrependUint16Slot(slot, value, 0)
        elif kind == "bool":
            builder.PrependBoolSlot(slot, value, False)
        else:
            builder.PrependUint8Slot(slot, value, 0)
    return int(builder.EndObject())


def offset_vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    """A vector of offsets to tables or strings already written."""
    builder.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return int(builder.EndVector())
