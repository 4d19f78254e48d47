"""Typed repository I/O: snapshots, manifests, transaction logs, chunks, refs, config.

The only module that joins drivers (bytes under keys) and the format (bytes <-> objects).
Decoded snapshots, manifests and transaction logs are immutable, so they are cached
(bounded LRU); decoding large files runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from aicechunk.config import (
    DEFAULT_DECOMPRESSION_LIMITS,
    CachingConfig,
    DecompressionLimits,
    RepoInfoUpdates,
)
from aicechunk.drivers.base import ByteRange, Driver, RangeRequest
from aicechunk.errors import (
    AicechunkError,
    CommitOutcomeUnknownError,
    ConflictError,
    FormatError,
    ObjectNotFound,
    PreconditionFailed,
    RefNotFoundError,
    StorageError,
)
from aicechunk.format import refs as ref_format
from aicechunk.format.header import HEADER_SIZE, spec_version_of
from aicechunk.format.ids import ChunkId, ManifestId, SnapshotId
from aicechunk.format.manifest import Manifest, decode_manifest
from aicechunk.format.snapshot import Snapshot, decode_snapshot, encode_snapshot
from aicechunk.format.transaction_log import (
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)
from aicechunk.lru import LRU
from aicechunk.node_refs import MAX_KEPT_REFS, NodeRefs
from aicechunk.offload import DECODE_BYTES_OFF_LOOP, ENCODE_ITEMS_OFF_LOOP, off_loop
from aicechunk.refstore import FileRefStore, RefInfo, RefStore
from aicechunk.repo_info_store import RepoInfoStore

__all__ = [
    "CONFIG_KEY",
    "REPO_INFO_KEY",
    "AssetManager",
    "RefInfo",
    "detected_spec_version",
]

# how many times a branch is read back when the answer to its update was lost, and the
# first pause (doubling) between those reads
SETTLE_ATTEMPTS = 5
SETTLE_BACKOFF_SECONDS = 0.05
# the bytes of the manifests written here kept for reading back (each up to 1/16 of it)
_WRITTEN_BYTES = 16 * 1024 * 1024

logger = logging.getLogger(__name__)

V = TypeVar("V")


SNAPSHOTS = "snapshots/"
MANIFESTS = "manifests/"
TRANSACTIONS = "transactions/"
CHUNKS = "chunks/"
CONFIG_KEY = "config.yaml"
#: the entry point of a spec version 2 repository (Icechunk 2.x), which has no ``refs/``
REPO_INFO_KEY = "repo"


def detected_spec_version(repo_info: bytes | None, has_main: bool) -> int | None:
    """The spec version of a repository whose repo info file starts with ``repo_info``
    (``None``: there is none) and that has a ``main`` branch file or not: see
    ``AssetManager.spec_version``."""
    if repo_info is not None:
        return max(2, spec_version_of(repo_info[:HEADER_SIZE]) or 2)
    return 1 if has_main else None


def _big(data: bytes) -> bool:
    return len(data) >= DECODE_BYTES_OFF_LOOP


def _raised(done: asyncio.Future[Any]) -> BaseException | None:
    return None if done.cancelled() else done.exception()


def _check_id(key: str, what: str, found: object, expected: object) -> None:
    # every file embeds the id it is stored under: a file copied over another (or a
    # crafted one) would otherwise be read as the one asked for
    if found != expected:
        raise FormatError(
            key, f"the file holds {what} {found}, not {expected} (copied over another file?)"
        )


def _check_version(key: str, found: int, repository: int) -> None:
    # a spec v1 repository holds spec v1 files only (upgrading writes only the repo info)
    if found > repository:
        raise FormatError(
            key, f"a spec version {found} file in a spec version {repository} repository"
        )


class AssetManager:
    """Reads and writes a repository's files through one driver, with caching.

    Every file read is decompressed within ``limits`` of its stored size. Files are
    written in the repository's ``format_version`` (its spec version), whose refs live in
    ``refs`` (files under ``refs/`` in spec v1, the repo info file in spec v2).
    """

    def __init__(
        self,
        driver: Driver,
        caching: CachingConfig | None = None,
        limits: DecompressionLimits = DEFAULT_DECOMPRESSION_LIMITS,
        format_version: int = 1,
        updates: RepoInfoUpdates | None = None,
    ) -> None:
        self.driver = driver
        self.caching = caching or CachingConfig()
        self.limits = limits
        self.format_version = format_version
        self.updates = updates or RepoInfoUpdates()
        self.refs: RefStore = (
            FileRefStore(driver)
            if format_version == 1
            else RepoInfoStore(driver, limits, self.updates)
        )
        self.before_first_branch: Callable[[str], None] | None = None
        self._snapshots: LRU[SnapshotId, Snapshot] = LRU(
            self.caching.resolved("num_snapshot_nodes"), lambda s: len(s.nodes)
        )
        self._manifests: LRU[ManifestId, Manifest] = LRU(
            self.caching.resolved("num_chunk_refs"), lambda m: m.num_chunk_refs
        )
        # small manifests written here, as bytes: the next commit reads its base from them
        self._written: LRU[ManifestId, bytes] = LRU(_WRITTEN_BYTES, len)
        # and their references decoded (or those decoded for a commit): ``base_refs``
        self.node_refs = NodeRefs(min(MAX_KEPT_REFS, self.caching.resolved("num_chunk_refs")))
        self._txlogs: LRU[SnapshotId, TransactionLog] = LRU(
            self.caching.resolved("num_transaction_changes"), TransactionLog.size
        )
        # one fetch in flight per file, shared by every task that wants it
        self._inflight: dict[str, asyncio.Future[object]] = {}

    def __getstate__(self) -> dict[str, object]:
        names = ("driver", "caching", "limits", "format_version", "updates")
        return {name: getattr(self, name) for name in names}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(  # type: ignore[misc]
            state["driver"],
            state["caching"],
            state["limits"],
            state.get("format_version", 1),
            state.get("updates"),
        )

    async def _fetch_once(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        # Requests for the same file made concurrently (in one loop) share one read.
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key)
        if pending is not None and pending.get_loop() is loop:
            result: V = await asyncio.shield(pending)  # type: ignore[arg-type]
            return result
        future: asyncio.Future[object] = loop.create_future()
        self._inflight[key] = future
        try:
            value = await load()
        except BaseException as err:
            if not future.done():
                future.set_exception(err)
            future.exception()  # mark retrieved
            raise
        else:
            future.set_result(value)
            return value
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    # -- snapshots --------------------------------------------------------------------

    async def fetch_snapshot(self, snapshot_id: SnapshotId) -> Snapshot:
        """The decoded snapshot (cached)."""
        cached = self._snapshots.get(snapshot_id)
        if cached is not None:
            return cached
        key = SNAPSHOTS + str(snapshot_id)

        async def load() -> Snapshot:
            try:
                data = await self.driver.get(key)
            except ObjectNotFound:
                raise RefNotFoundError(f"snapshot {snapshot_id} does not exist") from None
            bound = self.limits.bound(len(data))
            snap = await off_loop(_big(data), decode_snapshot, data, key, bound)
            _check_id(key, "snapshot", snap.id, snapshot_id)
            _check_version(key, snap.spec_version, self.format_version)
            if snap.spec_version >= 2:  # the parent is in the repo info file
                snap = replace(snap, parent_id=await self.refs.parent_of(snap))
            self._snapshots.put(snapshot_id, snap)
            return snap

        return await self._fetch_once(key, load)

    async def write_snapshot(
        self, snapshot: Snapshot, *, if_absent: bool = False, data: bytes | None = None
    ) -> None:
        """Write a new snapshot file (never overwrites); ``data``: its bytes, if encoded
        already (``encode_snapshot``). Its id is random, except for a repository's initial
        snapshot: ``if_absent=True`` writes that one only if no file has its name
        (``PreconditionFailed`` otherwise)."""
        if data is None:
            data = await off_loop(
                len(snapshot.nodes) >= ENCODE_ITEMS_OFF_LOOP, encode_snapshot, snapshot
            )
        key = SNAPSHOTS + str(snapshot.id)
        if if_absent:
            await self.driver.put(key, data, if_none_match=True)
        else:
            await self.driver.put(key, data, write_once=True)
        self._snapshots.put(snapshot.id, snapshot)

    # -- history ----------------------------------------------------------------------

    async def history(self, snapshot_id: SnapshotId) -> AsyncIterator[Snapshot]:
        """The snapshot, then its ancestors through their parents, newest first.

        Every walk of history goes through here. A parent that does not exist, or a chain
        that comes back to a snapshot already seen (a cycle, which a copied or crafted file
        makes), is a ``FormatError`` naming the snapshot file with the bad parent: never an
        endless walk. (Ids are remembered, 12 bytes each, so no length limit is needed: a
        chain in finite storage that never repeats ends.)
        """
        seen: set[SnapshotId] = set()
        child: SnapshotId | None = None
        cursor: SnapshotId | None = snapshot_id
        while cursor is not None:
            if cursor in seen:
                raise FormatError(
                    SNAPSHOTS + str(child),
                    f"history loops: the parent {cursor} is also a descendant of this snapshot",
                )
            seen.add(cursor)
            try:
                snapshot = await self.fetch_snapshot(cursor)
            except RefNotFoundError:
                if child is None:
                    raise
                raise FormatError(
                    SNAPSHOTS + str(child), f"the parent snapshot {cursor} does not exist"
                ) from None
            yield snapshot
            child, cursor = cursor, snapshot.parent_id

    async def history_since(self, tip: SnapshotId, base: SnapshotId) -> list[SnapshotId] | None:
        """The snapshots from ``tip`` back to ``base`` (excluded), newest first; empty if
        they are the same, ``None`` if ``base`` is not an ancestor of ``tip``."""
        chain: list[SnapshotId] = []
        async for snapshot in self.history(tip):
            if snapshot.id == base:
                return chain
            chain.append(snapshot.id)
        return None

    async def snapshot_exists(self, snapshot_id: SnapshotId) -> bool:
        """Whether the snapshot file is stored."""
        return await self.driver.exists(SNAPSHOTS + str(snapshot_id))

    # -- manifests --------------------------------------------------------------------

    async def fetch_manifest(self, manifest_id: ManifestId) -> Manifest:
        """The manifest, decoded lazily (cached)."""
        cached = self._manifests.get(manifest_id)
        if cached is not None:
            return cached
        key = MANIFESTS + str(manifest_id)

        async def load() -> Manifest:
            data = self._written.get(manifest_id)
            try:
                data = data if data is not None else await self.driver.get(key)
            except ObjectNotFound:
                raise FormatError(key, "manifest file is missing") from None
            bound = self.limits.bound(len(data))
            manifest = await off_loop(_big(data), decode_manifest, data, key, bound)
            _check_id(key, "manifest", manifest.id, manifest_id)
            _check_version(key, manifest.spec_version, self.format_version)
            self._manifests.put(manifest_id, manifest)
            return manifest

        return await self._fetch_once(key, load)

    async def write_manifest_bytes(self, manifest_id: ManifestId, data: bytes) -> None:
        """Write an encoded manifest file."""
        await self.driver.put(MANIFESTS + str(manifest_id), data, write_once=True)
        if len(data) <= _WRITTEN_BYTES // 16:
            self._written.put(manifest_id, data)

    # -- transaction logs -------------------------------------------------------------

    async def fetch_transaction_log(self, snapshot_id: SnapshotId) -> TransactionLog:
        """The transaction log written with a snapshot (cached)."""
        cached = self._txlogs.get(snapshot_id)
        if cached is not None:
            return cached
        key = TRANSACTIONS + str(snapshot_id)
        try:
            data = await self.driver.get(key)
        except ObjectNotFound:
            raise FormatError(key, "transaction log is missing") from None
        bound = self.limits.bound(len(data))
        log = await off_loop(_big(data), decode_transaction_log, data, key, bound)
        _check_id(key, "transaction log of snapshot", log.id, snapshot_id)
        _check_version(key, log.spec_version, self.format_version)
        self._txlogs.put(snapshot_id, log)
        return log

    async def transaction_history(self, snapshot_id: SnapshotId) -> list[TransactionLog]:
        """The transaction logs that together say what a snapshot changed from its parent:
        its own, after (spec 2.1) those of the ancestors that expiring snapshots removed
        from between the two, oldest first, which the repo info file carries. A carried
        log that is gone (an older garbage collection deleted it) is skipped with a
        warning, as icechunk does."""
        carried: tuple[SnapshotId, ...] = ()
        if isinstance(self.refs, RepoInfoStore):
            carried = await self.refs.pruned_logs(snapshot_id)
        logs: list[TransactionLog] = []
        for log_id in carried:
            try:
                logs.append(await self.fetch_transaction_log(log_id))
            except FormatError as err:
                logger.warning("skipping a log carried by snapshot %s: %s", snapshot_id, err)
        logs.append(await self.fetch_transaction_log(snapshot_id))
        return logs

    async def write_transaction_log(self, log: TransactionLog, data: bytes | None = None) -> None:
        """Write the transaction log of a new snapshot (``data``: its bytes, if encoded)."""
        if data is None:
            data = await off_loop(log.size() >= ENCODE_ITEMS_OFF_LOOP, encode_transaction_log, log)
        await self.driver.put(TRANSACTIONS + str(log.id), data, write_once=True)
        self._txlogs.put(log.id, log)

    # -- chunks -----------------------------------------------------------------------

    async def fetch_chunk(self, chunk_id: ChunkId, byte_range: ByteRange | None) -> bytes:
        """Bytes of a native chunk file.

        A ``RangeRequest`` comes from the manifest's reference, which knows the length:
        a chunk file that holds fewer bytes there is truncated, and is reported as such
        rather than handed to a codec.
        """
        key = CHUNKS + str(chunk_id)
        try:
            data = await self.driver.get(key, byte_range)
        except ObjectNotFound:
            raise FormatError(key, "chunk file referenced by a manifest is missing") from None
        if isinstance(byte_range, RangeRequest) and len(data) != byte_range.length:
            raise FormatError(
                key,
                f"truncated chunk file: the manifest expects {byte_range.length} bytes at "
                f"offset {byte_range.offset}, the file holds {len(data)} there",
            )
        return data

    async def write_chunk(self, chunk_id: ChunkId, data: bytes) -> None:
        """Write a native chunk file."""
        await self.driver.put(CHUNKS + str(chunk_id), data, write_once=True)

    # -- refs -------------------------------------------------------------------------

    async def fetch_branch(self, name: str) -> RefInfo:
        """Where a branch points, with the version of what stores it. The first call
        also calls ``before_first_branch`` (the open's warm-up, ``repository/warmup.py``)."""
        if self.before_first_branch is not None:
            warm, self.before_first_branch = self.before_first_branch, None
            warm(name)
        return await self.refs.fetch_branch(name)

    async def fetch_tag(self, name: str) -> SnapshotId:
        """Where a tag points; deleted tags are not found."""
        return await self.refs.fetch_tag(name)

    async def create_branch(self, name: str, snapshot_id: SnapshotId) -> None:
        """Create a branch; fails (``PreconditionFailed``) if the branch exists."""
        await self.refs.create_branch(name, snapshot_id)

    async def move_branch(
        self,
        name: str,
        new_id: SnapshotId,
        tip: RefInfo,
        snapshot: Snapshot | None = None,
        files: asyncio.Future[Any] | None = None,
    ) -> None:
        """Move branch ``name`` from ``tip`` (read by the caller) to ``new_id``, only if
        its ref file is still at ``tip.version``: the one compare-and-swap of a branch.

        Returns if the branch moved. Raises ``ConflictError`` if another writer moved it
        first (or the storage error) when it surely did not; when the answer is lost (a
        dropped connection, or ``PreconditionFailed`` from a retried request whose first
        try was applied), the branch is read back to tell: ``new_id`` on the branch since
        ``tip`` means it moved. If even that cannot be read, ``CommitOutcomeUnknownError``.
        ``snapshot``: the new commit's (``None``: a reset); ``files``: its files' writes,
        under way, waited for before the ref moves (their failure raised as is)."""
        failure: StorageError
        try:
            await self.refs.update_branch(name, new_id, tip, snapshot, files)
            return
        except StorageError as err:
            if files is not None and files.done() and _raised(files) is err:
                raise
            # PreconditionFailed: another writer won, or a retried request of ours landed;
            # otherwise the answer was lost: the write may have been applied
            failure = err
        landed, now = await self.branch_reached(name, new_id, tip.snapshot_id, failure)
        if landed:
            return
        if isinstance(failure, PreconditionFailed):
            raise ConflictError(name, str(tip.snapshot_id), str(now)) from None
        raise failure

    async def branch_reached(
        self,
        name: str,
        new_id: SnapshotId,
        since: SnapshotId,
        cause: StorageError | None = None,
    ) -> tuple[bool, SnapshotId]:
        """Whether branch ``name`` is at ``new_id``, or went through it after ``since``
        (other writers may have committed on top meanwhile), and where it is now. Reads
        a few times if reading fails; ``CommitOutcomeUnknownError`` if it never succeeds."""
        last: AicechunkError | None = None
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                now = (await self.fetch_branch(name)).snapshot_id
                chain = [] if now == new_id else await self.history_since(now, since)
            except StorageError as err:
                last = err
                await asyncio.sleep(SETTLE_BACKOFF_SECONDS * 2**attempt)
                continue
            except AicechunkError as err:  # the branch is gone, or its history unreadable
                last = err
                break
            return now == new_id or (chain is not None and new_id in chain), now
        why = f" ({cause})" if cause is not None else ""
        raise CommitOutcomeUnknownError(
            f"outcome unknown: moving branch {name!r} to snapshot {new_id} may have "
            f"failed{why}, and the branch could not be read back ({last})",
            key=ref_format.branch_key(name),
        ) from last

    async def delete_branch(self, name: str) -> None:
        """Remove a branch."""
        await self.refs.delete_branch(name)

    async def create_tag(self, name: str, snapshot_id: SnapshotId) -> None:
        """Create a tag; fails (``PreconditionFailed``) if the name was ever used."""
        await self.refs.create_tag(name, snapshot_id)

    async def delete_tag(self, name: str) -> None:
        """Delete a tag for good (``PreconditionFailed`` if it already was)."""
        await self.refs.delete_tag(name)

    # -- the repository as a whole ------------------------------------------------------

    async def spec_version(self) -> int | None:
        """The spec version of the repository stored here, ``None`` if there is none.

        A ``repo`` object makes it spec version 2 or later (the version its header states;
        2 if unreadable) even beside ``refs/``, as Icechunk 2 reads it (a repository in the
        middle of migrating); otherwise a ``main`` branch makes it spec version 1.
        """

        async def repo_header() -> bytes | None:
            try:
                return await self.driver.get(REPO_INFO_KEY, RangeRequest(0, HEADER_SIZE))
            except ObjectNotFound:
                return None

        header, has_main = await asyncio.gather(
            repo_header(), self.driver.exists(ref_format.branch_key("main"))
        )
        return detected_spec_version(header, has_main)

    async def scan_root(self, known: frozenset[str]) -> tuple[list[str], str | None]:
        """The stored keys that are among ``known``, up to the first that is not (in key
        order), and that one (``None`` if every stored key is known)."""
        seen: list[str] = []
        listing = self.driver.list("")
        try:
            async for info in listing:
                if info.key not in known:
                    return seen, info.key
                seen.append(info.key)
        finally:
            aclose = getattr(listing, "aclose", None)
            if aclose is not None:
                await aclose()
        return seen, None

    async def list_branches(self) -> set[str]:
        """Names of all branches."""
        return await self.refs.list_branches()

    async def list_tags(self) -> set[str]:
        """Names of all tags that were not deleted."""
        return await self.refs.list_tags()
