"""The binary header of every Icechunk metadata file, and compression.

Layout (39 bytes): 12 magic bytes ``ICE🧊CHUNK`` (UTF-8), 24 bytes naming the writing
implementation (space padded, ignored on read), spec version (1 or 2; spec 2.1 files say
2), file type, compression (0 none, 1 zstd). The payload (a flatbuffer) follows,
compressed as the header says. Icechunk compresses with zstd level 3, as we do.
"""

from __future__ import annotations

import enum
import threading
from importlib.metadata import version as _dist_version

import zstandard

from aicechunk.errors import FormatError

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "SPEC_VERSION",
    "SPEC_VERSIONS",
    "Compression",
    "FileType",
    "decode_file",
    "decode_versioned",
    "decompress_bounded",
    "encode_file",
    "spec_version_of",
]

MAGIC = "ICE🧊CHUNK".encode()
IMPLEMENTATION = f"aicechunk-{_dist_version('aicechunk')}".ljust(24)[:24].encode()
SPEC_VERSION = 1
#: Every spec version this library reads and writes (2 stands for 2 and 2.1 alike).
SPEC_VERSIONS = (1, 2)
HEADER_SIZE = len(MAGIC) + 24 + 3
ZSTD_LEVEL = 3
# the largest payload the format can hold: a flatbuffer's offsets reach 2 GiB
MAX_PAYLOAD = 2**31 - 1
# zstd turns one input byte into at most ~43,700 output bytes (a 3-byte RLE block header
# and 1 byte expand to a 128 KiB block); feeding input in slices of at most
# ``remaining // _EXPANSION`` bytes keeps every step's output within the bound
_EXPANSION = 1 << 16
_MIN_SLICE = 64


class FileType(enum.IntEnum):
    """The file types (``REPO_INFO`` since spec v2)."""

    SNAPSHOT = 1
    MANIFEST = 2
    ATTRIBUTES = 3
    TRANSACTION_LOG = 4
    CHUNK = 5
    REPO_INFO = 6


class Compression(enum.IntEnum):
    """Payload compression."""

    NONE = 0
    ZSTD = 1


def encode_file(
    file_type: FileType,
    payload: bytes | bytearray | memoryview,
    level: int = ZSTD_LEVEL,
    threads: int = 0,
    spec_version: int = SPEC_VERSION,
) -> bytes:
    """Header + zstd-compressed payload (``threads`` > 0 compresses on that many threads;
    the output is an ordinary zstd frame)."""
    if spec_version not in SPEC_VERSIONS:
        raise ValueError(f"unknown spec version {spec_version}")
    header = MAGIC + IMPLEMENTATION + bytes((spec_version, file_type, Compression.ZSTD))
    return header + _compressor(level, threads).compress(payload)


_kept = threading.local()  # a compressor is used by one thread at a time


def _compressor(level: int, threads: int) -> zstandard.ZstdCompressor:
    """A compressor of ``level`` on ``threads`` threads, kept per thread: making one
    costs more than compressing a small file (each ``compress`` starts afresh)."""
    kept: dict[tuple[int, int], zstandard.ZstdCompressor] | None = getattr(_kept, "all", None)
    if kept is None:
        kept = _kept.all = {}
    found = kept.get((level, threads))
    if found is None:
        found = kept[(level, threads)] = zstandard.ZstdCompressor(level=level, threads=threads)
    return found


def spec_version_of(header: bytes) -> int | None:
    """The spec version a file's header states, or ``None`` if it is no Icechunk header."""
    if len(header) < HEADER_SIZE or header[: len(MAGIC)] != MAGIC:
        return None
    return header[len(MAGIC) + 24]


def decode_file(
    data: bytes, expected: FileType, name: str = "<bytes>", max_size: int | None = None
) -> bytes:
    """Check every header field of a spec v1 file and return the decompressed payload, of
    at most ``max_size`` bytes (``None``: ``MAX_PAYLOAD``, the format's own limit)."""
    return _decode(data, expected, name, max_size, (SPEC_VERSION,))[1]


def decode_versioned(
    data: bytes, expected: FileType, name: str = "<bytes>", max_size: int | None = None
) -> tuple[int, bytes]:
    """``decode_file`` for a file of any spec version this library knows: the header's
    spec version and the decompressed payload."""
    return _decode(data, expected, name, max_size, SPEC_VERSIONS)


def _decode(
    data: bytes,
    expected: FileType,
    name: str,
    max_size: int | None,
    versions: tuple[int, ...],
) -> tuple[int, bytes]:
    if len(data) < HEADER_SIZE:
        raise FormatError(name, f"truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    if data[: len(MAGIC)] != MAGIC:
        raise FormatError(name, "bad magic bytes: not an Icechunk file")
    at = len(MAGIC) + 24
    version, file_type, compression = data[at], data[at + 1], data[at + 2]
    if version not in versions:
        known = " and ".join(map(str, versions))
        raise FormatError(name, f"unknown spec version {version} (this reads {known})")
    if file_type != expected:
        try:
            got = FileType(file_type).name.lower()
        except ValueError:
            got = f"unknown type {file_type}"
        raise FormatError(name, f"expected a {expected.name.lower()} file, got {got}")
    body = memoryview(data)[HEADER_SIZE:]
    limit = MAX_PAYLOAD if max_size is None else min(max_size, MAX_PAYLOAD)
    if compression == Compression.NONE:
        if len(body) > limit:
            raise FormatError(name, f"payload of {len(body)} bytes exceeds the {limit} allowed")
        return version, bytes(body)
    if compression != Compression.ZSTD:
        raise FormatError(name, f"unknown compression algorithm {compression}")
    return version, decompress_bounded(body, limit, name)


def decompress_bounded(data: bytes | memoryview, max_size: int, name: str = "<bytes>") -> bytes:
    """Decompress one zstd frame to at most ``max_size`` bytes, else ``FormatError``.

    A declared content size is believed only as far as the bound: one within it is
    allocated at once (zstd fails a frame whose output differs from it), one beyond it is
    refused. Without one, input is fed in slices small enough that no step can produce
    much more than what is still allowed. Either way a crafted frame costs at most about
    ``max_size`` bytes of memory, however far it would expand.
    """
    body = memoryview(data).cast("B")
    try:
        declared = zstandard.get_frame_parameters(body).content_size
    except zstandard.ZstdError as err:
        raise FormatError(name, f"bad zstd frame: {err}") from None
    if max_size < declared < zstandard.CONTENTSIZE_ERROR:
        raise FormatError(
            name, f"declares {declared} bytes, more than the {max_size} bytes allowed (a bomb?)"
        )
    if 0 < declared <= max_size:
        # a declared size within bounds is only an allocation: zstd fails the frame
        # if the output does not match it exactly
        try:
            return zstandard.ZstdDecompressor().decompress(body)
        except zstandard.ZstdError as err:
            if "did not decompress full frame" in str(err):
                raise FormatError(name, "truncated zstd frame") from None
            raise FormatError(name, f"bad zstd frame: {err}") from None
    reader = zstandard.ZstdDecompressor().decompressobj()
    parts: list[bytes] = []
    produced = at = 0
    try:
        while at < len(body) and not reader.eof:
            step = max(_MIN_SLICE, (max_size - produced) // _EXPANSION)
            out = reader.decompress(body[at : at + step])
            at += step
            produced += len(out)
            if produced > max_size:
                raise FormatError(
                    name, f"decompresses to more than the {max_size} bytes allowed (a bomb?)"
                )
            parts.append(out)
    except zstandard.ZstdError as err:
        raise FormatError(name, f"bad zstd frame: {err}") from None
    if not reader.eof:
        raise FormatError(name, "truncated zstd frame")
    return b"".join(parts)
