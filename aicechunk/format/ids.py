"""Object ids: 12-byte ids for snapshots, manifests and chunks, 8-byte ids for nodes.

Ids are random bytes, written in paths and refs in Crockford base32 (upper case, no
padding), as Icechunk does: 12 bytes give 20 characters, 8 bytes give 13.
"""

from __future__ import annotations

import builtins
import os
from typing import ClassVar, Self

import numpy as np

from aicechunk.errors import InvalidIdError

__all__ = [
    "FIRST_SNAPSHOT_ID",
    "ChunkId",
    "ManifestId",
    "NodeId",
    "ObjectId",
    "SnapshotId",
    "decode_base32",
    "encode_base32",
    "encode_base32_many",
]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
# Crockford's decoding is forgiving: lower case, and I/L for 1, O for 0
_DECODE.update({c.lower(): i for c, i in list(_DECODE.items())})
_DECODE.update({"I": 1, "i": 1, "L": 1, "l": 1, "O": 0, "o": 0})


def encode_base32(data: bytes) -> str:
    """Crockford base32 of ``data``, upper case, no padding (trailing bits zero-filled)."""
    bits = len(data) * 8
    chars = (bits + 4) // 5
    pairs = (chars + 1) // 2  # two characters (10 bits) per lookup: ids are on hot paths
    value = int.from_bytes(data, "big") << (pairs * 10 - bits)
    text = "".join([_PAIRS[(value >> shift) & 1023] for shift in range(pairs * 10 - 10, -1, -10)])
    return text[:chars]


_ALPHABET_BYTES = np.frombuffer(_ALPHABET.encode("ascii"), np.uint8)
_BIT_WEIGHTS = np.array([16, 8, 4, 2, 1], np.uint8)


def encode_base32_many(data: bytes, size: int) -> list[str]:
    """``encode_base32`` of each ``size``-byte value in ``data`` (a multiple of ``size``
    bytes long), all at once: for the many ids one file lists."""
    count = len(data) // size
    chars = (size * 8 + 4) // 5
    bits = np.zeros((count, chars * 5), np.uint8)
    bits[:, : size * 8] = np.unpackbits(
        np.frombuffer(data, np.uint8, count * size).reshape(-1, size), axis=1
    )
    text = _ALPHABET_BYTES[bits.reshape(count, chars, 5) @ _BIT_WEIGHTS].tobytes().decode("ascii")
    return [text[i : i + chars] for i in range(0, count * chars, chars)]


def decode_base32(text: str, size: int, what: str = "id") -> bytes:
    """Bytes of a Crockford base32 string of a ``size``-byte value."""
    expected = (size * 8 + 4) // 5
    if not isinstance(text, str) or len(text) != expected:
        raise InvalidIdError(what, f"expected {expected} base32 characters, got {text!r}")
    value = 0
    for ch in text:
        digit = _DECODE.get(ch)
        if digit is None:
            raise InvalidIdError(what, f"{text!r} has a character outside Crockford base32: {ch!r}")
        value = (value << 5) | digit
    extra = expected * 5 - size * 8
    if value & ((1 << extra) - 1):
        # only some characters can end an id: the last one carries unused bits
        enders = "".join(c for c in _ALPHABET if not _DECODE[c] & ((1 << extra) - 1))
        raise InvalidIdError(
            what,
            f"{text!r} is not a valid {what}: its last character must be one of "
            f"{enders} (is it mistyped?)",
        )
    return (value >> extra).to_bytes(size, "big")


class ObjectId:
    """An immutable, hashable, ordered id of a fixed number of bytes."""

    __slots__ = ("_bytes", "_hash")
    _bytes: bytes
    _hash: int
    SIZE: ClassVar[int] = 12
    KIND: ClassVar[str] = "object id"

    def __init__(self, data: bytes) -> None:
        if len(data) != self.SIZE:
            raise InvalidIdError(self.KIND, f"expected {self.SIZE} bytes, got {len(data)}")
        object.__setattr__(self, "_bytes", bytes(data))
        object.__setattr__(self, "_hash", hash((type(self).__name__, self._bytes)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def bytes(self) -> bytes:
        """The raw id."""
        return self._bytes

    @classmethod
    def random(cls) -> Self:
        """A new random id."""
        return cls(os.urandom(cls.SIZE))

    @classmethod
    def from_str(cls, text: str) -> Self:
        """Parse the base32 form; ``InvalidIdError`` says what is wrong."""
        return cls(decode_base32(text, cls.SIZE, cls.KIND))

    def __str__(self) -> str:
        return encode_base32(self._bytes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({encode_base32(self._bytes)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: ObjectId) -> bool:
        return self._bytes < other._bytes

    def __le__(self, other: ObjectId) -> bool:
        return self._bytes <= other._bytes

    def __gt__(self, other: ObjectId) -> bool:
        return self._bytes > other._bytes

    def __ge__(self, other: ObjectId) -> bool:
        return self._bytes >= other._bytes

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self._bytes,))


class SnapshotId(str):
    """Id of a snapshot (and of its transaction log): a ``str``, its base32 form.

    Snapshot ids are what users see (``commit`` returns one, ``ancestry`` lists them), so
    they are strings: equal to the same id as icechunk returns it, JSON-serializable, and
    accepted wherever an id is. ``SnapshotId(raw_12_bytes)`` or ``SnapshotId(text)``;
    ``.bytes`` is the raw id. Base32 keeps byte order, so ids sort as their bytes do.
    """

    SIZE: ClassVar[int] = 12
    KIND: ClassVar[str] = "snapshot id"
    bytes: builtins.bytes

    def __new__(cls, data: builtins.bytes | str) -> SnapshotId:
        if isinstance(data, str):
            raw = decode_base32(data, cls.SIZE, cls.KIND)
        else:
            if len(data) != cls.SIZE:
                raise InvalidIdError(cls.KIND, f"expected {cls.SIZE} bytes, got {len(data)}")
            raw = builtins.bytes(data)
        self = super().__new__(cls, encode_base32(raw))
        self.bytes = raw
        return self

    @classmethod
    def known(cls, raw: builtins.bytes, text: str) -> SnapshotId:
        """The id of the 12 bytes ``raw``, whose base32 form ``text`` the caller made
        (``encode_base32_many``): no second encoding."""
        if len(raw) != cls.SIZE:
            raise InvalidIdError(cls.KIND, f"expected {cls.SIZE} bytes, got {len(raw)}")
        self = str.__new__(cls, text)
        self.bytes = raw
        return self

    @classmethod
    def random(cls) -> SnapshotId:
        """A new random id."""
        return cls(os.urandom(cls.SIZE))

    @classmethod
    def from_str(cls, text: str) -> SnapshotId:
        """Parse the base32 form; ``InvalidIdError`` says what is wrong."""
        return cls(text) if type(text) is not cls else text

    def __repr__(self) -> str:
        return f"SnapshotId({str.__str__(self)!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (SnapshotId, (self.bytes,))


class ManifestId(ObjectId):
    """Id of a manifest file."""

    __slots__ = ()
    KIND = "manifest id"


class ChunkId(ObjectId):
    """Id of a chunk file."""

    __slots__ = ()
    KIND = "chunk id"


class NodeId(ObjectId):
    """Id of a group or array node (8 bytes)."""

    __slots__ = ()
    SIZE = 8
    KIND = "node id"


#: The well-known id of every repository's first snapshot.
FIRST_SNAPSHOT_ID = SnapshotId.from_str("1CECHNKREP0F1RSTCMT0")
