"""A front-to-back flatbuffer whose large regions are produced only while it is written
out, so a file of ten million records never exists whole in memory.

``Segmented`` lays a file out as ``flatbuf.Forward`` does (same positions, padding and
vtables), but a ``hole`` reserves a region whose bytes a generator yields later, slice
by slice; ``parts`` then yields the whole file in order and ``compress_parts`` feeds it
to a streaming zstd compressor. Small writes may patch any earlier region except a hole.
"""

from __future__ import annotations

import bisect
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import zstandard

from aicechunk.format.flatbuf import Forward
from aicechunk.format.header import IMPLEMENTATION, MAGIC, SPEC_VERSIONS, Compression, FileType

__all__ = ["Segmented", "compress_parts", "compress_whole"]

_JOB_SIZE = 1 << 20

Fill = Callable[[], Iterable[bytes | bytearray | memoryview]]


@dataclass(frozen=True)
class _Hole:
    size: int
    fill: Fill


class Segmented(Forward):
    """``Forward`` with holes: regions whose bytes come from a generator at write-out."""

    def __init__(self) -> None:
        super().__init__()
        self._origin = 0  # position of self.buf[0]
        self._starts: list[int] = []  # closed parts, in order
        self._parts: list[bytearray | _Hole] = []

    @property
    def pos(self) -> int:
        return self._origin + len(self.buf)

    def align(self, n: int) -> int:
        pad = -self.pos % n
        if pad:
            self.buf += b"\x00" * pad
        return self.pos

    def hole(self, size: int, fill: Fill, alignment: int = 1) -> int:
        """Reserve ``size`` bytes that ``fill()`` yields at write-out; their position."""
        start = self.align(alignment)
        self._starts += [self._origin, start]
        self._parts += [self.buf, _Hole(size, fill)]
        self._origin = start + size
        self.buf = bytearray()
        return start

    def _at(self, pos: int, size: int) -> tuple[bytearray, int]:
        """The buffer holding ``size`` bytes at ``pos``, and their place in it."""
        if pos >= self._origin:
            return self.buf, pos - self._origin
        i = bisect.bisect_right(self._starts, pos) - 1
        part = self._parts[i]
        if isinstance(part, _Hole) or pos + size > self._starts[i] + len(part):
            raise ValueError(f"write of {size} bytes at {pos} falls in a hole")
        return part, pos - self._starts[i]

    def put(self, pos: int, fmt: str, *values: object) -> None:
        buf, at = self._at(pos, struct.calcsize(fmt))
        struct.pack_into(fmt, buf, at, *values)

    def uoffset(self, at: int, target: int) -> None:
        self.put(at, "<I", target - at)

    def table(self, vtable: int, size: int, alignment: int = 4) -> int:
        start = self.reserve(size, alignment)
        self.put(start, "<i", start - vtable)
        return start

    def offset_vector(self, count: int) -> int:
        start = self.reserve(4 + 4 * count)
        self.put(start, "<I", count)
        return start

    def finish_parts(self, root: int) -> tuple[int, Iterator[bytes | bytearray | memoryview]]:
        """The file's size and its bytes in order (holes filled as they come)."""
        self.put(0, "<I", root)
        self.align(8)
        return self.pos, self._emit()

    def _emit(self) -> Iterator[bytes | bytearray | memoryview]:
        for part in [*self._parts, self.buf]:
            if isinstance(part, _Hole):
                written = 0
                for piece in part.fill():
                    written += len(piece)
                    yield piece
                if written != part.size:
                    raise AssertionError(f"a hole of {part.size} bytes was filled with {written}")
            elif part:
                yield part

    def finish(self, root: int) -> bytes:
        """The whole file in one piece (for tests and small files)."""
        _, parts = self.finish_parts(root)
        return b"".join(parts)

    def finish_buffer(self, root: int) -> bytearray:
        return bytearray(self.finish(root))


def compress_parts(
    file_type: FileType,
    size: int,
    parts: Iterable[bytes | bytearray | memoryview],
    spec_version: int,
    level: int,
    threads: int = 0,
) -> bytes:
    """The file (header and one zstd frame, declaring its ``size``) of a payload given
    in parts: what ``header.encode_file`` writes, without the payload in one piece."""
    # a compressor of its own: one kept per thread would be in use across ``parts``
    compressor = _new_compressor(level, threads).compressobj(size=size)
    out = [_header(file_type, spec_version)]
    for part in parts:
        out.append(compressor.compress(part))
    out.append(compressor.flush())
    return b"".join(out)


def compress_whole(
    file_type: FileType, payload: bytes | bytearray, spec_version: int, level: int
) -> bytes:
    """``compress_parts`` of a payload in one piece, in one call (the same bytes)."""
    return _header(file_type, spec_version) + _kept_compressor(level).compress(payload)


def _header(file_type: FileType, spec_version: int) -> bytes:
    if spec_version not in SPEC_VERSIONS:
        raise ValueError(f"unknown spec version {spec_version}")
    return MAGIC + IMPLEMENTATION + bytes((spec_version, file_type, Compression.ZSTD))


_kept = threading.local()  # a compressor is used by one thread at a time


def _new_compressor(level: int, threads: int) -> zstandard.ZstdCompressor:
    """A compressor of ``level`` on ``threads`` threads."""
    # zstd's default job size for several threads buffers tens of MiB; 1 MiB jobs
    # compress as well here and keep that buffer small
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, job_size=_JOB_SIZE if threads else 0
    )
    return zstandard.ZstdCompressor(compression_params=params)


def _kept_compressor(level: int) -> zstandard.ZstdCompressor:
    """``_new_compressor(level, 0)``, kept per thread for one-call uses (making one costs
    more than compressing a small file; each frame starts afresh)."""
    kept: dict[int, zstandard.ZstdCompressor] | None = getattr(_kept, "all", None)
    if kept is None:
        kept = _kept.all = {}
    found = kept.get(level)
    if found is None:
        found = kept[level] = _new_compressor(level, 0)
    return found
