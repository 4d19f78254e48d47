"""Key segments as file names, as Icechunk's local storage (Rust's ``object_store``)
names them, so that both libraries find each other's files."""

from __future__ import annotations

from urllib.parse import unquote

__all__ = ["NAME_MAX", "decode_name", "encode_name"]

# Characters a file name never holds raw: ASCII controls, and what S3 and GCS advise
# against in keys.
_ESCAPED = frozenset('\\{}^%`]"><[~#|*?') | frozenset(map(chr, [*range(0x20), 0x7F]))

#: bytes in one file name on the file systems we meet
NAME_MAX = 255


def encode_name(segment: str) -> str:
    """A key segment as a file name, percent-encoded as Icechunk's local storage writes it:
    ``branch.ü`` is ``branch.%C3%BC``; ASCII letters, digits and ``.-_ &@:,$=!()+';``
    stay as they are."""
    if segment.isascii() and not _ESCAPED.intersection(segment):
        return segment
    return "".join(
        "".join(f"%{b:02X}" for b in ch.encode()) if ch in _ESCAPED or not ch.isascii() else ch
        for ch in segment
    )


def decode_name(name: str) -> str:
    """The key segment a file name stands for (the inverse of ``encode_name``)."""
    return unquote(name, errors="strict") if "%" in name else name
