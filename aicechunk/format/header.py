"""The binary header of snapshot, manifest and transaction log files, and compression.

Layout (39 bytes): 12 magic bytes ``ICE🧊CHUNK`` (UTF-8), 24 bytes naming the writing
implementation (space padded, ignored on read), spec version (1), file type, compression
(0 none, 1 zstd). The payload (a flatbuffer) follows, compressed as the header says.
"""

from __future__ import annotations

import enum
from importlib.metadata import version as _dist_version

import zstandard

from aicechunk.errors import FormatError

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "SPEC_VERSION",
    "Compression",
    "FileType",
    "decode_file",
    "encode_file",
    "spec_version_of",
]

MAGIC = "ICE🧊CHUNK".encode()
IMPLEMENTATION = f"aicechunk-{_dist_version('aicechunk')}".ljust(24)[:24].encode()
SPEC_VERSION = 1
HEADER_SIZE = len(MAGIC) + 24 + 3
ZSTD_LEVEL = 3
# the largest decompressed payload we accept: a guard against decompression bombs
MAX_PAYLOAD = 8 * 1024**3


class FileType(enum.IntEnum):
    """The file types of spec v1."""

    SNAPSHOT = 1
    MANIFEST = 2
    ATTRIBUTES = 3
    TRANSACTION_LOG = 4
    CHUNK = 5


class Compression(enum.IntEnum):
    """Payload compression."""

    NONE = 0
    ZSTD = 1


def encode_file(
    file_type: FileType, payload: bytes, level: int = ZSTD_LEVEL, threads: int = 0
) -> bytes:
    """Header + zstd-compressed payload (``threads`` > 0 compresses on that many threads;
    the output is an ordinary zstd frame)."""
    header = MAGIC + IMPLEMENTATION + bytes((SPEC_VERSION, file_type, Compression.ZSTD))
    return header + zstandard.ZstdCompressor(level=level, threads=threads).compress(payload)


def spec_version_of(header: bytes) -> int | None:
    """The spec version a file's header states, or ``None`` if it is no Icechunk header."""
    if len(header) < HEADER_SIZE or header[: len(MAGIC)] != MAGIC:
        return None
    return header[len(MAGIC) + 24]


def decode_file(data: bytes, expected: FileType, name: str = "<bytes>") -> bytes:
    """Check every header field and return the decompressed payload."""
    if len(data) < HEADER_SIZE:
        raise FormatError(name, f"truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    if data[: len(MAGIC)] != MAGIC:
        raise FormatError(name, "bad magic bytes: not an Icechunk file")
    at = len(MAGIC) + 24
    version, file_type, compression = data[at], data[at + 1], data[at + 2]
    if version != SPEC_VERSION:
        raise FormatError(
            name, f"unknown spec version {version} (this library reads {SPEC_VERSION})"
        )
    if file_type != expected:
        try:
            got = FileType(file_type).name.lower()
        except ValueError:
            got = f"unknown type {file_type}"
        raise FormatError(name, f"expected a {expected.name.lower()} file, got {got}")
    body = data[HEADER_SIZE:]
    if compression == Compression.NONE:
        return bytes(body)
    if compression != Compression.ZSTD:
        raise FormatError(name, f"unknown compression algorithm {compression}")
    try:
        reader = zstandard.ZstdDecompressor().decompressobj()
        out = reader.decompress(body)
        if not reader.eof:
            raise FormatError(name, "truncated zstd frame")
    except zstandard.ZstdError as err:
        raise FormatError(name, f"bad zstd frame: {err}") from None
    if len(out) > MAX_PAYLOAD:
        raise FormatError(name, "payload too large")
    return out
