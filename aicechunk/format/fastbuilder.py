"""A ``flatbuffers.Builder`` that writes the same bytes in fewer Python calls.

The ``flatbuffers`` package's builder spends most of its time in layers of small calls
(``Prepend`` -> ``Prep`` -> ``Pad``, ``Place`` -> ``enforce_number`` -> ``Write``) for
every scalar, offset, string and vtable. Files with many small tables, such as the repo
info file (one table per snapshot and per operations-log entry, rewritten by every
change of a spec v2 repository), are dominated by that. ``FastBuilder`` overrides those
hot methods with the same layout decisions (alignment, padding, vtable sharing), so its
output is byte for byte the base builder's (tests compare the two), and Icechunk's.
"""

from __future__ import annotations

import struct
from typing import Any

import flatbuffers
from flatbuffers.builder import (
    IsNestedError,
    IsNotNestedError,
    OffsetArithmeticError,
    StructIsNotInlineError,
)

__all__ = ["FastBuilder"]

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


class FastBuilder(flatbuffers.Builder):  # type: ignore[misc]
    """``flatbuffers.Builder`` with its per-table, per-string and per-offset methods
    written out flat; everything else is the base class's."""

    # the base class's state (its slots), as this class uses it
    Bytes: bytearray
    head: int
    minalign: int
    nested: bool
    forceDefaults: bool
    objectEnd: int
    vectorNumElems: int | None
    vtables: dict[tuple[int, ...], int]
    current_vtable: Any  # the open table's field offsets (a list), else None

    def Prep(self, size: int, additionalBytes: int) -> None:
        """Align so that ``size`` bytes land aligned after ``additionalBytes`` more are
        written, growing the buffer as needed (the base class's rule)."""
        if size > self.minalign:
            self.minalign = size
        head: int = self.head
        align = (head - len(self.Bytes) - additionalBytes) & (size - 1)
        needed = align + size + additionalBytes
        while head < needed:
            old = len(self.Bytes)
            self.GrowByteBuffer()
            head += len(self.Bytes) - old
        if align:
            self.Bytes[head - align : head] = bytes(align)
        self.head = head - align

    def PrependUOffsetTRelative(self, off: int) -> None:
        """Prepend an offset to ``off`` (an object already written)."""
        self.Prep(4, 0)
        here = len(self.Bytes) - self.head
        if off > here:
            raise OffsetArithmeticError("flatbuffers: Offset arithmetic error.")
        self.head -= 4
        _U32.pack_into(self.Bytes, self.head, here - off + 4)

    def PrependUOffsetTRelativeSlot(self, o: int, x: int, d: int) -> None:
        if x != d or self.forceDefaults:
            self.PrependUOffsetTRelative(x)
            self.current_vtable[o] = len(self.Bytes) - self.head

    def _scalar_slot(self, fmt: struct.Struct, o: int, x: int | None, d: int | None) -> None:
        if x != d or (self.forceDefaults and d is not None):
            size = fmt.size
            self.Prep(size, 0)
            self.head -= size
            fmt.pack_into(self.Bytes, self.head, x)
            self.current_vtable[o] = len(self.Bytes) - self.head

    def PrependUint64Slot(self, o: int, x: int | None, d: int | None) -> None:
        self._scalar_slot(_U64, o, x, d)

    def PrependUint32Slot(self, o: int, x: int | None, d: int | None) -> None:
        self._scalar_slot(_U32, o, x, d)

    def PrependInt32Slot(self, o: int, x: int | None, d: int | None) -> None:
        self._scalar_slot(_I32, o, x, d)

    def PrependUint16Slot(self, o: int, x: int | None, d: int | None) -> None:
        self._scalar_slot(_U16, o, x, d)

    def PrependUint8Slot(self, o: int, x: int | None, d: int | None) -> None:
        self._scalar_slot(_U8, o, x, d)

    def PrependBoolSlot(self, o: int, x: bool | None, d: bool | None) -> None:
        self._scalar_slot(_U8, o, x, d)

    def PrependStructSlot(self, v: int, x: int, d: int) -> None:
        if x != d:
            if x != len(self.Bytes) - self.head:
                raise StructIsNotInlineError(
                    "flatbuffers: Tried to write a Struct at an Offset that is different "
                    "from the current Offset of the Builder."
                )
            self.current_vtable[v] = x

    def StartObject(self, numfields: int) -> None:
        if self.nested:
            raise IsNestedError()
        self.current_vtable = [0] * numfields
        self.objectEnd = len(self.Bytes) - self.head
        self.nested = True

    def EndObject(self) -> int:
        """Finish the table: its vtable (one already written with the same entries is
        shared, as the base class shares it), then its offset."""
        if not self.nested:
            raise IsNotNestedError()
        self.nested = False
        self.Prep(4, 0)
        self.head -= 4  # the table's offset to its vtable, written below
        at = len(self.Bytes) - self.head
        slots: list[int] = self.current_vtable
        n = len(slots)
        while n and not slots[n - 1]:
            n -= 1  # trailing absent fields are left out
        entries = (at - self.objectEnd, *[at - s if s else 0 for s in slots[:n]])
        vtable: int | None = self.vtables.get(entries)
        if vtable is None:
            self.Prep(2, 2 * n + 2)
            self.head -= 2 * n + 4
            struct.pack_into(f"<{n + 2}H", self.Bytes, self.head, 2 * n + 4, *entries)
            vtable = len(self.Bytes) - self.head
            self.vtables[entries] = vtable
        _I32.pack_into(self.Bytes, len(self.Bytes) - at, vtable - at)
        self.current_vtable = None
        return at

    def StartVector(self, elemSize: int, numElems: int, alignment: int) -> int:
        if self.nested:
            raise IsNestedError()
        self.nested = True
        self.vectorNumElems = numElems
        self.Prep(4, elemSize * numElems)
        if alignment > 4:  # an alignment of 4 or less is what the length's gave
            self.Prep(alignment, elemSize * numElems)
        return len(self.Bytes) - self.head

    def EndVector(self) -> int:
        if not self.nested:
            raise IsNotNestedError()
        self.nested = False
        self.head -= 4
        _U32.pack_into(self.Bytes, self.head, self.vectorNumElems or 0)
        self.vectorNumElems = None
        return len(self.Bytes) - self.head

    def CreateString(self, s: str | bytes, encoding: str = "utf-8", errors: str = "strict") -> int:
        """A zero-terminated string (its length first), aligned as the base class does."""
        if self.nested:
            raise IsNestedError()
        if isinstance(s, str):
            data = s.encode(encoding, errors)
        elif isinstance(s, bytes | bytearray):
            data = bytes(s)
        else:
            raise TypeError("non-string passed to CreateString")
        size = len(data)
        self.Prep(4, size + 1)
        head = self.head - size - 5
        buf = self.Bytes
        buf[head + 4 : head + 4 + size] = data
        buf[head + 4 + size] = 0
        _U32.pack_into(buf, head, size)
        self.head = head
        return len(buf) - head
