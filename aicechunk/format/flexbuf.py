"""FlexBuffers for JSON values: metadata values and the configuration of spec v2 files.

Spec v2 stores every metadata value (snapshot, snapshot info and repository metadata)
and the repository configuration as a FlexBuffer, where spec v1 used MessagePack.

Writing goes through the ``flatbuffers`` package's builder, choosing the types Icechunk's
serde encoder chooses (non-negative integers unsigned, negative ones signed, floats as
narrow as is lossless), so values come out byte for byte as Icechunk writes them.
Reading is our own: every offset is checked against the buffer and must point strictly
backwards (so no crafted buffer loops), and nesting is bounded. Containers may share
children (a writer shares keys and strings), so a crafted buffer could refer to one
vector from many slots, level upon level: the values read are counted, and one buffer
yields no more values than it has bytes (each value's slot takes a byte at least), and
a string read twice is the same object.
"""

from __future__ import annotations

import struct
from typing import Any

from flatbuffers import flexbuffers

from aicechunk.errors import FormatError, UnrepresentableValueError
from aicechunk.format.metadata import check_value

__all__ = ["MAX_DEPTH", "decode_flex", "encode_flex"]

#: Containers nested deeper than this are refused both ways (the reader recurses).
MAX_DEPTH = 200

# FlexBuffer type codes (the upper six bits of a packed type byte)
_NULL, _INT, _UINT, _FLOAT, _KEY, _STRING = 0, 1, 2, 3, 4, 5
_IND_INT, _IND_UINT, _IND_FLOAT, _MAP, _VECTOR = 6, 7, 8, 9, 10
_VEC_INT, _VEC_UINT, _VEC_FLOAT, _VEC_KEY, _VEC_STRING = 11, 12, 13, 14, 15
_BLOB, _BOOL, _VEC_BOOL = 25, 26, 36
# fixed-length typed vectors: type -> (element type, length)
_FIXED = {16 + 3 * (n - 2) + k: (k + 1, n) for n in (2, 3, 4) for k in range(3)}
_TYPED = {_VEC_INT: _INT, _VEC_UINT: _UINT, _VEC_FLOAT: _FLOAT, _VEC_KEY: _KEY}
_TYPED[_VEC_STRING] = _STRING
_TYPED[_VEC_BOOL] = _BOOL
_UNSIGNED = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_SIGNED = {1: "<b", 2: "<h", 4: "<i", 8: "<q"}
_FLOATS = {4: "<f", 8: "<d"}


def encode_flex(value: Any, name: str = "<metadata>") -> bytes:
    """The FlexBuffer of a JSON value; ``UnrepresentableValueError`` (naming ``name``) for
    anything that is not JSON as Icechunk reads it back."""
    check_value(value, name, MAX_DEPTH)
    builder = flexbuffers.Builder()
    _add(builder, value, name)
    return bytes(builder.Finish())


def _add(b: flexbuffers.Builder, value: Any, where: str) -> None:
    if value is None:
        b.Null()
    elif isinstance(value, bool):
        b.Bool(value)
    elif isinstance(value, int):
        if value >= 0:
            b.UInt(value)
        else:
            b.Int(value)
    elif isinstance(value, float):
        b.Float(value, 4 if _fits_f32(value) else 8)
    elif isinstance(value, str):
        b.String(value)
    elif isinstance(value, dict):
        with b.Map():
            # keys in byte order, as serde_json's maps hand them to Icechunk's writer
            for key, item in sorted(value.items(), key=lambda kv: kv[0].encode()):
                if "\x00" in key:  # keys end at a zero byte
                    raise UnrepresentableValueError(f"{where} key {key!r}", "holds a NUL")
                b.Key(key.encode())
                _add(b, item, f"{where}[{key!r}]")
    else:  # list or tuple, as check_value allows
        kind = _scalar_kind(value)
        if kind is None:
            with b.Vector():
                for i, item in enumerate(value):
                    _add(b, item, f"{where}[{i}]")
        elif kind == flexbuffers.Type.FLOAT and 2 <= len(value) <= 4:
            # the library cannot size a float past the f32 range itself
            width = 4 if all(map(_fits_f32, value)) else 8
            b.FixedTypedVectorFromElements(list(value), kind, width)
        elif kind != flexbuffers.Type.BOOL and 2 <= len(value) <= 4:
            b.FixedTypedVectorFromElements(list(value), kind)
        else:
            with b.TypedVector():
                for item in value:
                    _add(b, item, where)


def _scalar_kind(items: list[Any] | tuple[Any, ...]) -> Any:
    """The type of a typed vector for ``items`` (all unsigned, all signed, all floats or
    all booleans), or ``None`` for an untyped one: Icechunk's writer makes a list of
    scalars of one type a typed vector (of fixed length when it has 2 to 4 numbers)."""
    if not items:
        return None
    kinds = set()
    for item in items:
        if isinstance(item, bool):
            kinds.add(flexbuffers.Type.BOOL)
        elif isinstance(item, int):
            kinds.add(flexbuffers.Type.UINT if item >= 0 else flexbuffers.Type.INT)
        elif isinstance(item, float):
            kinds.add(flexbuffers.Type.FLOAT)
        else:
            return None
        if len(kinds) > 1:
            return None
    return kinds.pop()


def _fits_f32(value: float) -> bool:
    # a float narrows to 4 bytes when that loses nothing, as Icechunk's writer decides
    try:
        narrowed: float = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return False
    return narrowed == value


def decode_flex(data: bytes, name: str = "<metadata>") -> Any:
    """The JSON value a FlexBuffer holds (a blob comes back as ``bytes``);
    ``FormatError`` naming ``name`` for anything malformed."""
    return _Decoder(data, name).root()


class _Decoder:
    __slots__ = ("budget", "buf", "name", "texts")

    def __init__(self, buf: bytes, name: str) -> None:
        self.buf = buf
        self.name = name
        # values still to be read: a well-formed buffer gives each its own slot, so more
        # than one per byte means containers shared to multiply them (a billion laughs)
        self.budget = len(buf)
        self.texts: dict[tuple[int, int], Any] = {}  # (position, kind): a string read once

    def fail(self, problem: str) -> FormatError:
        return FormatError(self.name, f"malformed FlexBuffer: {problem}")

    def _read(self, fmt: dict[int, str], pos: int, width: int) -> Any:
        code = fmt.get(width)
        if code is None:
            raise self.fail(f"a {width}-byte scalar")
        if pos < 0 or pos + width > len(self.buf):
            raise self.fail(f"offset {pos}+{width} outside the {len(self.buf)}-byte buffer")
        return struct.unpack_from(code, self.buf, pos)[0]

    def _uint(self, pos: int, width: int) -> int:
        value: int = self._read(_UNSIGNED, pos, width)
        return value

    def _target(self, slot: int, width: int) -> int:
        offset = self._uint(slot, width)
        if offset > slot:
            raise self.fail(f"offset {offset} at {slot} points before the buffer")
        return slot - offset

    def _nonempty_before(self, at: int, slot: int, length: int) -> None:
        # the items of a container lie after its start and point backwards, so a
        # non-empty container starts strictly before the slot referring to it: a
        # container that contains itself is refused, not followed forever
        if length and at >= slot:
            raise self.fail(f"a container at {at} is referred to from within itself")

    def root(self) -> Any:
        size = len(self.buf)
        if size < 3:
            raise self.fail(f"{size} bytes, too short for a root")
        width = self.buf[-1]
        if width not in _UNSIGNED or size < 2 + width:
            raise self.fail(f"root width {width}")
        return self._value(size - 2 - width, width, self.buf[-2], 0)

    def _value(self, slot: int, parent_width: int, packed: int, depth: int) -> Any:
        kind, width = packed >> 2, 1 << (packed & 3)
        self.budget -= 1
        if self.budget < 0:
            raise self.fail(
                f"more values than its {len(self.buf)} bytes can hold (shared containers?)"
            )
        if kind == _NULL:
            return None
        if kind == _BOOL:
            return self._uint(slot, parent_width) != 0
        if kind == _INT:
            return self._read(_SIGNED, slot, parent_width)
        if kind == _UINT:
            return self._uint(slot, parent_width)
        if kind == _FLOAT:
            return self._read(_FLOATS, slot, parent_width)
        if depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels")
        at = self._target(slot, parent_width)
        if kind == _IND_INT:
            return self._read(_SIGNED, at, width)
        if kind == _IND_UINT:
            return self._uint(at, width)
        if kind == _IND_FLOAT:
            return self._read(_FLOATS, at, width)
        if kind == _KEY:
            return self._key(at)
        if kind in (_STRING, _BLOB):
            found = self.texts.get((at, kind))
            if found is None:
                length = self._uint(at - width, width)
                if at + length > len(self.buf):
                    raise self.fail(f"a {length}-byte string runs past the buffer")
                raw = self.buf[at : at + length]
                found = self.texts[at, kind] = raw if kind == _BLOB else self._text(raw)
            return found
        if kind == _VECTOR:
            return self._vector(at, slot, width, depth)
        if kind == _MAP:
            return self._map(at, slot, width, depth)
        if kind in _TYPED or kind in _FIXED:
            if kind in _FIXED:
                element, length = _FIXED[kind]
            else:
                element, length = _TYPED[kind], self._uint(at - width, width)
            self._span(at, length, width)
            self._nonempty_before(at, slot, length)
            packed_element = element << 2 | (packed & 3)
            return [
                self._value(at + i * width, width, packed_element, depth + 1) for i in range(length)
            ]
        raise self.fail(f"unknown type {kind}")

    def _span(self, at: int, length: int, width: int) -> None:
        if at + length * width > len(self.buf):
            raise self.fail(f"a vector of {length} items runs past the buffer")

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string is not valid UTF-8") from None

    def _key(self, at: int) -> str:
        found = self.texts.get((at, _KEY))
        if found is None:
            end = self.buf.find(b"\x00", at)
            if end < 0:
                raise self.fail("a key has no terminating zero byte")
            found = self.texts[at, _KEY] = self._text(self.buf[at:end])
        return found

    def _vector(self, at: int, slot: int, width: int, depth: int) -> list[Any]:
        length = self._uint(at - width, width)
        self._nonempty_before(at, slot, length)
        self._span(at, length, width)
        types = at + length * width
        if types + length > len(self.buf):
            raise self.fail(f"a vector of {length} items runs past the buffer")
        return [
            self._value(at + i * width, width, self.buf[types + i], depth + 1)
            for i in range(length)
        ]

    def _map(self, at: int, slot: int, width: int, depth: int) -> dict[str, Any]:
        values = self._vector(at, slot, width, depth)
        keys_at = self._target(at - 3 * width, width)
        keys_width = self._uint(at - 2 * width, width)
        if keys_width not in _UNSIGNED:
            raise self.fail(f"map keys of width {keys_width}")
        count = self._uint(keys_at - keys_width, keys_width)
        if count != len(values):
            raise self.fail(f"a map with {count} keys and {len(values)} values")
        self._span(keys_at, count, keys_width)
        doc: dict[str, Any] = {}
        for i, value in enumerate(values):
            key = self._key(self._target(keys_at + i * keys_width, keys_width))
            if key in doc:
                raise self.fail(f"the key {key!r} is given twice")
            doc[key] = value
        return doc
