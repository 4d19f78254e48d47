"""The branches and tags of a repo info file, read for every open and every change.

A repository may hold many refs, each a small table (a name, the position of its
snapshot in the file's list): ``read_refs`` reads them straight from the bytes, one
vtable lookup each, with the checks of the general reader (``flatbuf.Reader``): a table
or string outside the buffer, a missing name, text that is not UTF-8, a position past
the snapshot list, names out of order or repeated: each a ``FormatError``. A read past
the end is a ``struct.error`` that the caller's ``guarded`` names.
"""

from __future__ import annotations

import struct

from aicechunk.format.flatbuf import Reader

__all__ = ["check_order", "read_refs"]

_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TWO = struct.Struct("<HH")


def check_order(r: Reader, what: str, previous: str | None, name: str) -> None:
    """Refuse ``name`` after ``previous`` unless it sorts after it: names are looked up
    by binary search (Icechunk does), in byte order (which is code point order), each
    once."""
    if previous is None or previous < name:
        return
    if previous == name:
        raise r.fail(f"{what} lists {name!r} twice")
    raise r.fail(f"{what} are not sorted: {previous!r} comes before {name!r}")


def read_refs(r: Reader, positions: list[int], count: int, what: str) -> list[tuple[str, int]]:
    """Each ref's name and snapshot position, from its table at each of ``positions``
    (of a list of ``count`` snapshots), in order."""
    buf, size = r.buf, r.size
    found: list[tuple[str, int]] = []
    previous: str | None = None
    for pos in positions:
        vtable = pos - _I32.unpack_from(buf, pos)[0]
        if vtable < 0:  # unpack_from would count a negative offset from the end
            raise r.fail(f"a vtable at {vtable}, before the buffer")
        slots = (_U16.unpack_from(buf, vtable)[0] - 4) >> 1
        if slots >= 2:
            name_off, index_off = _TWO.unpack_from(buf, vtable + 4)
        elif slots == 1:
            name_off, index_off = _U16.unpack_from(buf, vtable + 4)[0], 0
        else:
            name_off = index_off = 0
        if not name_off:
            raise r.fail("required field 'ref name' is missing")
        name_at = pos + name_off
        start = name_at + _U32.unpack_from(buf, name_at)[0]
        end = start + 4 + _U32.unpack_from(buf, start)[0]
        if end > size:
            raise r.fail(f"a string at {start} runs past the {size}-byte buffer")
        try:
            name = buf[start + 4 : end].decode("utf-8")
        except UnicodeDecodeError:
            raise r.fail("a string is not valid UTF-8") from None
        position = _U32.unpack_from(buf, pos + index_off)[0] if index_off else 0
        if position >= count:
            raise r.fail(f"{name!r} points at snapshot {position} of {count}")
        if previous is not None and not previous < name:
            check_order(r, what, previous, name)
        found.append((name, position))
        previous = name
    return found
