"""The zarr store over a session: zarr keys become nodes and chunk references.

``zarr.json`` keys map to node metadata (``a/b/zarr.json`` is the node ``/a/b``), chunk
keys (``a/b/c/0/1``) to chunk references of that array. Keys of any other shape cannot
exist in an Icechunk repository: reading them finds nothing, writing them is refused.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype

from aicechunk.changes.validate import chunk_grid
from aicechunk.changes.virtual_columns import (
    integer_column,
    last_modified_seconds,
    spec_table,
    virtual_table,
)
from aicechunk.drivers.base import ByteRange, OffsetRange, RangeRequest, SuffixRange, slice_bytes
from aicechunk.drivers.urls import parse_location
from aicechunk.errors import (
    InvalidInputError,
    InvalidStoreKeyError,
    NodeNotFoundError,
    ReadOnlyError,
    VirtualChunkError,
)
from aicechunk.format.manifest import VirtualRef
from aicechunk.store.keys import ChunkKey, MetadataKey, chunk_key, metadata_key, parse_key
from aicechunk.store.metadata import parse_metadata, without_consolidated_metadata
from aicechunk.virtual import VirtualChunkSpec

if TYPE_CHECKING:
    from aicechunk.session import Session

__all__ = ["IcechunkStore"]


def _virtual_ref(
    location: str, offset: int, length: int, checksum: str | datetime | None
) -> VirtualRef:
    # offsets, lengths and checksums the format cannot hold are refused by the session
    if isinstance(checksum, datetime):
        return VirtualRef(location, offset, length, None, last_modified_seconds(checksum))
    return VirtualRef(location, offset, length, checksum, None)


def to_byte_range(byte_range: ByteRequest | None) -> ByteRange | None:
    """zarr's byte requests as driver byte ranges."""
    if byte_range is None:
        return None
    if isinstance(byte_range, RangeByteRequest):
        return RangeRequest(byte_range.start, max(0, byte_range.end - byte_range.start))
    if isinstance(byte_range, OffsetByteRequest):
        return OffsetRange(byte_range.offset)
    if isinstance(byte_range, SuffixByteRequest):
        return SuffixRange(byte_range.suffix)
    raise TypeError(f"Unexpected byte_range, got {byte_range!r}")


class IcechunkStore(Store):
    """A ``zarr.abc.store.Store`` reading and writing through a ``Session``.

    Usable from async code and from zarr's synchronous API alike: the session holds no
    loop-bound state.
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_partial_writes = False
    supports_listing: bool = True

    def __init__(self, session: Session, *, read_only: bool | None = None) -> None:
        super().__init__(read_only=session.read_only if read_only is None else read_only)
        self._session = session

    @property
    def supports_consolidated_metadata(self) -> bool:
        """No: the repository lists its nodes itself, and a consolidated copy would go
        stale with the next commit (Icechunk's store says the same)."""
        return False

    @property
    def session(self) -> Session:
        """The session this store reads and writes through."""
        return self._session

    def with_read_only(self, read_only: bool = False) -> IcechunkStore:
        """The same session seen through a store with another read-only flag.

        A read-only session cannot become writable through its store.
        """
        if not read_only and self._session.read_only:
            raise ReadOnlyError("a read-only session cannot give a writable store")
        return IcechunkStore(self._session, read_only=read_only)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, IcechunkStore)
            and other._session is self._session
            and other.read_only == self.read_only
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IcechunkStore({self._session!r}, read_only={self.read_only})"

    def __getstate__(self) -> dict[str, Any]:
        return {"session": self._session, "read_only": self._read_only}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._session = state["session"]
        self._read_only = state["read_only"]
        self._is_open = True

    @property
    def read_only(self) -> bool:
        """Whether the store refuses writes: opened read-only, or its session is (a
        session that committed is read-only from then on, as in icechunk)."""
        return self._read_only or self._session.read_only

    def _check_writable(self) -> None:
        if self._read_only and not self._session.read_only:
            raise ReadOnlyError("store was opened in read-only mode and does not support writing")
        if self._session.read_only:
            raise ReadOnlyError(
                "this store's session is read-only (a session that committed is read-only "
                "from then on, as in icechunk): write through a new repo.writable_session"
            )

    # -- reads ------------------------------------------------------------------------

    async def get(
        self,
        key: str,
        prototype: BufferPrototype,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """The bytes at ``key`` (or part of them), ``None`` if there are none."""
        data = await self._get_bytes_or_none(key, to_byte_range(byte_range))
        return None if data is None else prototype.buffer.from_bytes(data)

    async def _get_bytes_or_none(self, key: str, byte_range: ByteRange | None) -> bytes | None:
        try:
            parsed = parse_key(key)
        except InvalidStoreKeyError:
            return None
        if parsed is None:
            return None
        if isinstance(parsed, MetadataKey):
            meta = await self._metadata(parsed.path)
            if meta is None:
                return None
            if byte_range is None:
                return meta
            return slice_bytes(meta, byte_range)
        return await self._session.get_chunk(parsed.path, parsed.coords, byte_range)

    async def _metadata(self, path: str) -> bytes | None:
        meta = await self._session.get_metadata(path)
        return None if meta is None else without_consolidated_metadata(meta)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Many (key, range) reads at once, with bounded concurrency."""
        limit = asyncio.Semaphore(self._session.read_concurrency)

        async def one(key: str, byte_range: ByteRequest | None) -> Buffer | None:
            async with limit:
                return await self.get(key, prototype, byte_range)

        return list(await asyncio.gather(*(one(k, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds a node's metadata or a chunk."""
        try:
            parsed = parse_key(key)
        except InvalidStoreKeyError:
            return False
        if parsed is None:
            return False
        if isinstance(parsed, MetadataKey):
            return await self._session.get_metadata(parsed.path) is not None
        return await self._session.chunk_size(parsed.path, parsed.coords) is not None

    async def getsize(self, key: str) -> int:
        """The size in bytes of the value at ``key``."""
        parsed = parse_key(key)
        size: int | None = None
        if isinstance(parsed, MetadataKey):
            meta = await self._metadata(parsed.path)
            size = None if meta is None else len(meta)
        elif isinstance(parsed, ChunkKey):
            size = await self._session.chunk_size(parsed.path, parsed.coords)
        if size is None:
            raise FileNotFoundError(key)
        return size

    # -- writes -----------------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        """Store a node's metadata or a chunk."""
        self._check_writable()
        parsed = parse_key(key)
        if parsed is None:
            raise InvalidStoreKeyError(key, "zarr v2 metadata cannot be stored in Icechunk")
        data = value.to_bytes()
        if isinstance(parsed, MetadataKey):
            data = without_consolidated_metadata(data)
            await self._session.set_node(parsed.path, data, parse_metadata(parsed.path, data))
        else:
            await self._session.set_chunk(parsed.path, parsed.coords, data)

    async def set_virtual_ref(
        self,
        key: str,
        location: str,
        *,
        offset: int,
        length: int,
        checksum: str | datetime | None = None,
        validate_container: bool = True,
    ) -> None:
        """Point the chunk at ``key`` to ``length`` bytes at ``offset`` of ``location``.

        ``checksum`` (an ETag, or the object's last-modified time) makes reads fail if the
        object changes later. With ``validate_container``, a location no declared
        virtual chunk container serves is refused now rather than at read time.
        """
        self._check_writable()
        parsed = parse_key(key)
        if not isinstance(parsed, ChunkKey):
            raise InvalidStoreKeyError(key, "virtual references go to chunk keys")
        if validate_container:
            self._check_container(location)
        await self._session.set_chunk_ref(
            parsed.path, parsed.coords, _virtual_ref(location, offset, length, checksum)
        )

    async def set_virtual_refs(
        self,
        array_path: str,
        chunks: Iterable[VirtualChunkSpec],
        *,
        validate_containers: bool = True,
    ) -> list[tuple[int, ...]] | None:
        """Set many virtual references of one array; returns the chunk indices whose
        location no declared container serves (those are skipped), or ``None``.

        The references are held column by column (as ``set_virtual_refs_columns`` holds
        them), not as one object each; a bad spec (off the grid, a negative offset)
        raises before any of them is set.
        """
        self._check_writable()
        specs = list(chunks)
        if validate_containers:
            served = {
                loc: self._session.has_virtual_container(loc) for loc in {s.location for s in specs}
            }
            failed = [tuple(s.index) for s in specs if not served[s.location]]
            if failed:
                specs = [s for s in specs if served[s.location]]
        else:
            failed = []
        if not specs:
            return failed or None
        path, grid = await self._virtual_target(array_path)
        table = spec_table(path, grid, specs)
        await self._session.set_chunk_table(path, table)
        return failed or None

    async def set_virtual_refs_columns(
        self,
        array_path: str,
        coords: ArrayLike,
        locations: str | Sequence[str],
        offsets: ArrayLike,
        lengths: ArrayLike,
        *,
        location_index: ArrayLike | None = None,
        checksums: Sequence[str | datetime | None] | None = None,
        validate_containers: bool = True,
    ) -> None:
        """Set many virtual references of one array from columns, without an object per
        reference: the bulk form for millions of chunks (e.g. batches of 100,000 rows).

        Row ``i`` points chunk ``coords[i]`` (an ``(n, ndim)`` integer array; ``(n,)``
        for a 1-d array) to ``lengths[i]`` bytes at ``offsets[i]`` (integer arrays of
        ``n``, or one integer for every row) of its location. ``locations`` is one URL
        for every row, one URL per row, or, with ``location_index`` (``n`` integers), a
        short table of URLs each row indexes into. ``checksums``: ``None``, or one per
        row (an ETag string, a last-modified ``datetime``, or ``None``). Later rows win
        over earlier ones for the same chunk.

        Every input is checked first, so a bad batch sets nothing: ``InvalidInputError``
        (shapes, dtypes), ``ChunkIndexError`` (a chunk off the array's grid, with its
        row), ``UnrepresentableValueError`` (negative values, bad URLs or checksums, with
        the row); with ``validate_containers``, ``VirtualChunkError`` if no declared
        virtual chunk container serves a location (as ``set_virtual_ref`` refuses it).
        """
        self._check_writable()
        path, grid = await self._virtual_target(array_path)
        table = virtual_table(
            path,
            grid,
            coords,
            locations,
            offsets,
            lengths,
            location_index=location_index,
            checksums=checksums,
        )
        if validate_containers:
            for location in table.locations:
                self._check_container(location)
        await self._session.set_chunk_table(path, table)

    async def set_virtual_refs_arr(
        self,
        array_path: str,
        chunk_grid_shape: tuple[int, ...],
        locations: Sequence[str],
        offsets: ArrayLike,
        lengths: ArrayLike,
        *,
        validate_containers: bool = True,
        arr_offset: tuple[int, ...] | None = None,
        checksum: str | datetime | None = None,
    ) -> list[tuple[int, ...]] | None:
        """icechunk's dense form of ``set_virtual_refs_columns``: the references of a
        block of ``chunk_grid_shape`` chunks (starting at chunk ``arr_offset``), one per
        chunk in C order; an empty location skips its chunk. ``checksum`` applies to
        every chunk; ``offsets`` and ``lengths`` hold one integer per chunk (or one for
        all; another length is ``InvalidInputError``, as icechunk refuses it). Returns
        the chunk indices whose location no declared container serves (skipped), or
        ``None``."""
        self._check_writable()
        shape = tuple(chunk_grid_shape)
        start = tuple(arr_offset) if arr_offset is not None else (0,) * len(shape)
        if len(start) != len(shape) or any(s < 0 for s in (*shape, *start)):
            raise InvalidInputError(
                f"virtual refs of {array_path!r}: arr_offset {start} does not fit the chunk "
                f"grid shape {shape}"
            )
        n = math.prod(shape)
        listed = list(locations)
        if len(listed) != n:
            raise InvalidInputError(
                f"virtual refs of {array_path!r}: {len(listed)} locations for the "
                f"{n} chunks of a {shape} block"
            )
        # columns of another length are refused (icechunk: ValueError), not cut or indexed past
        offsets_u = integer_column(array_path, "offsets", offsets, n)
        lengths_u = integer_column(array_path, "lengths", lengths, n)
        coords = np.indices(shape, dtype=np.int64).reshape(len(shape), n).T + np.asarray(
            start, dtype=np.int64
        )
        keep = np.fromiter(map(bool, listed), dtype=bool, count=n)
        ids: dict[str, int] = {}
        which = np.fromiter((ids.setdefault(loc, len(ids)) for loc in listed), np.int64, count=n)
        failed: list[tuple[int, ...]] = []
        if validate_containers:
            served = {loc: self._session.has_virtual_container(loc) for loc in set(listed) if loc}
            unserved = np.fromiter((bool(x) and not served[x] for x in listed), bool, count=n)
            failed = [tuple(c) for c in coords[unserved].tolist()]
            keep &= ~unserved
        rows = np.flatnonzero(keep)
        if len(rows):
            await self.set_virtual_refs_columns(
                array_path,
                coords[rows],
                list(ids),
                offsets_u[rows],
                lengths_u[rows],
                location_index=which[rows],
                checksums=None if checksum is None else [checksum] * len(rows),
                validate_containers=False,
            )
        return failed or None

    async def _virtual_target(self, array_path: str) -> tuple[str, tuple[int, ...]]:
        """The node path of the array at ``array_path`` and its chunk grid."""
        path = "/" + array_path.strip("/")
        node = await self._session.get_node(path)
        if node is None or node.array is None:
            raise NodeNotFoundError(path, "array")
        return path, chunk_grid(node.array)

    def _check_container(self, location: str) -> None:
        if not self._session.has_virtual_container(location):
            parse_location(location)  # a URL that does not parse says why (InvalidLocation)
            # the error a read of it would raise: one error for one problem
            raise VirtualChunkError(
                f"virtual chunk {location}: no virtual chunk container is declared for this "
                "URL; add one with RepositoryConfig.set_virtual_chunk_container "
                "(or pass validate_container=False)"
            )

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Store the value only if nothing is stored at ``key``."""
        self._check_writable()
        if not await self.exists(key):
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        """Remove a node (and, for a group, everything below it) or a chunk."""
        self._check_writable()
        try:
            parsed = parse_key(key)
        except InvalidStoreKeyError:
            return
        if isinstance(parsed, MetadataKey):
            await self._session.delete_node(parsed.path)
        elif isinstance(parsed, ChunkKey):
            await self._session.delete_chunk(parsed.path, parsed.coords)

    async def delete_dir(self, prefix: str) -> None:
        """Remove every key below ``prefix``."""
        self._check_writable()
        prefix = prefix.rstrip("/")
        if not prefix:
            await self.clear()
            return
        path = "/" + prefix
        await self._session.delete_prefix(path)
        # a prefix inside an array's chunk space ("arr/c", "arr/c/1"): those chunks go
        parts = path.split("/")
        for i in range(len(parts) - 1, 0, -1):
            if parts[i] == "c":
                array_path = "/".join(parts[:i]) or "/"
                node = await self._session.get_node(array_path)
                if node is not None and node.is_array:
                    head = tuple(int(p) for p in parts[i + 1 :] if p.isdigit())
                    doomed = [c async for c in self._session.chunk_coords(array_path)]
                    for coords in doomed:
                        if coords[: len(head)] == head:
                            await self._session.delete_chunk(array_path, coords)
                break

    async def clear(self) -> None:
        """Remove every node and chunk."""
        self._check_writable()
        await self._session.clear()

    async def is_empty(self, prefix: str) -> bool:
        """Whether nothing is stored below the directory ``prefix``."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        async for _ in self.list_prefix(prefix):
            return False
        return True

    # -- listing ----------------------------------------------------------------------

    async def _all_keys(self) -> AsyncIterator[str]:
        for node in await self._session.list_nodes():
            yield metadata_key(node.path)
            if node.is_array:
                async for coords in self._session.chunk_coords(node.path):
                    yield chunk_key(node.path, coords)

    def list(self) -> AsyncIterator[str]:
        """Every key in the store."""
        return self._all_keys()

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Every key that starts with ``prefix``."""
        async for key in self._all_keys():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """The names directly below ``prefix``: keys, and directories without the ``/``."""
        prefix = prefix.rstrip("/")
        base = f"{prefix}/" if prefix else ""
        seen: set[str] = set()
        async for key in self.list_prefix(base):
            rest = key[len(base) :]
            name = rest.split("/", 1)[0]
            if name and name not in seen:
                seen.add(name)
                yield name
