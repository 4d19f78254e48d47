"""What a session is made of: the snapshot it reads, its branch, its pending changes.

``SessionState`` is the plain record that the session's parts share: reads
(``reads.py``), commit and rebase (``commit.py``) and fork payloads (``payload.py``)
each take it, so none of them reaches into the ``Session`` facade's private fields.

A rearrange session (spec v2) holds moves (``moves``, a ``MoveSet``) and refuses every
other change; any other session holds ``moves = None``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from aicechunk.assets import AssetManager
from aicechunk.changes.changeset import ArrayDefinition, ChangeSet
from aicechunk.changes.moves import MoveSet
from aicechunk.changes.validate import check_grid_for_spec
from aicechunk.config import (
    INLINE_CHUNK_THRESHOLD_BYTES,
    READ_AHEAD_BYTES,
    READ_AHEAD_CHUNKS,
    READ_CONCURRENCY,
    UPLOAD_CONCURRENCY,
    WRITE_BEHIND_BYTES,
    RepositoryConfig,
)
from aicechunk.errors import ReadOnlyError, SessionStateError
from aicechunk.format.ids import ChunkId, SnapshotId
from aicechunk.session.readahead import ReadAhead
from aicechunk.session.uploads import Uploads
from aicechunk.virtual import ChunkFetcher

__all__ = ["REARRANGE_ONLY", "SessionConfig", "SessionMode", "SessionState"]

REARRANGE_ONLY = (
    "this session was made to rearrange the hierarchy (move nodes) and takes no other "
    "change: commit or discard it, and make the change in a repo.writable_session(branch)"
)


class SessionMode(enum.Enum):
    """What a session may do (icechunk's ``SessionMode``, with its values)."""

    READONLY = 0
    """Read only (also a fork, and a session on no branch, as in icechunk)."""
    WRITABLE = 1
    """Read and write groups, arrays and chunks; no moves."""
    REARRANGE = 2
    """Move nodes only (``Repository.rearrange_session``, spec v2)."""

    # icechunk's member names, as aliases of the same members
    readonly = READONLY
    writable = WRITABLE
    rearrange = REARRANGE


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The parts of the repository configuration a session uses (write-behind and
    read-ahead: ``uploads.py`` and ``readahead.py``; 0 turns either off)."""

    inline_chunk_threshold_bytes: int = INLINE_CHUNK_THRESHOLD_BYTES
    read_concurrency: int = READ_CONCURRENCY
    write_behind_bytes: int = WRITE_BEHIND_BYTES
    upload_concurrency: int = UPLOAD_CONCURRENCY
    read_ahead_chunks: int = READ_AHEAD_CHUNKS
    read_ahead_bytes: int = READ_AHEAD_BYTES


@dataclass(slots=True)
class SessionState:
    """One session's state. ``snapshot_id`` and ``changes`` move on commit and rebase;
    ``unsettled`` is a commit whose branch update may or may not have landed;
    ``from_payload`` marks changes that came in a fork payload (checked against the base
    snapshot when merged); ``repository_config`` is the configuration of the repository
    that made the session (``None`` in a fork rebuilt from a payload) and
    ``commit_metadata`` the repository's default commit metadata when it did; ``moves``
    those of a rearrange session (``None`` in any other); ``uploads`` the chunk files
    written behind (``None``: chunks are written before ``set`` returns, as in forks) and
    ``readahead`` the chunks fetched ahead of reads in order (``None``: none are);
    ``parent_uploads``, in a fork made with changes, its parent's uploads, read from
    (never written to: a fork's own chunks are stored before ``set`` returns), and
    ``carried``, in a fork rebuilt from a payload, the bytes of chunks its changes name
    that its parent still uploaded when it was sent (``carried.py``); ``saved_as`` the
    snapshot a commit, amend or flush of this session made (it is read-only since)."""

    assets: AssetManager
    snapshot_id: SnapshotId
    branch: str | None
    read_only: bool
    config: SessionConfig = field(default_factory=SessionConfig)
    changes: ChangeSet = field(default_factory=ChangeSet)
    virtual: ChunkFetcher | None = None
    unsettled: SnapshotId | None = None
    from_payload: bool = False
    repository_config: RepositoryConfig | None = None
    commit_metadata: dict[str, Any] = field(default_factory=dict)
    moves: MoveSet | None = None
    uploads: Uploads | None = None
    readahead: ReadAhead | None = None
    parent_uploads: Uploads | None = None
    carried: dict[ChunkId, bytes] | None = None
    saved_as: SnapshotId | None = None

    def check_writable(
        self, *, unsettled_ok: bool = False, rearrange_ok: bool = False, saving: bool = False
    ) -> None:
        """Refuse writes to a read-only session, or while a commit's outcome is unknown,
        and, unless ``rearrange_ok`` (commit, rebase, discard), any in a rearrange
        session (moves check the mode themselves). A session that committed is read-only
        from then on, as in icechunk: a write or discard is ``ReadOnlyError``, and, as
        icechunk has it, a commit, amend or rebase (``saving``) ``SessionStateError``."""
        if self.read_only and self.saved_as is not None:
            why = (
                f"this session committed snapshot {self.saved_as} and is read-only since, as "
                "in icechunk: make further changes in a new repo.writable_session"
                f"({self.branch!r})"
            )
            raise SessionStateError(why) if saving else ReadOnlyError(why)
        if self.read_only:
            raise ReadOnlyError("this session is read-only; use repo.writable_session(branch)")
        if self.unsettled is not None and not unsettled_ok:
            raise SessionStateError(
                f"whether this session's last commit (snapshot {self.unsettled}) landed is "
                "unknown: commit again to find out before making more changes"
            )
        if self.moves is not None and not rearrange_ok:
            raise SessionStateError(REARRANGE_ONLY)

    def to_pickle(self) -> SessionState:
        """What a read-only session pickles: the state without its write-behind buffer (a
        session that committed has nothing left to upload; the buffer holds a lock)."""
        return replace(self, uploads=None)

    def check_grid(self, path: str, array: ArrayDefinition) -> None:
        """Refuse an array whose chunk grid this repository's spec version cannot record
        (``UnrepresentableValueError``): checked when its metadata is set, so that every
        commit can succeed."""
        check_grid_for_spec(path, array, self.assets.format_version)

    @property
    def mode(self) -> SessionMode:
        """The session's mode; as in icechunk, one on no branch is read-only."""
        if self.read_only or self.branch is None:
            return SessionMode.READONLY
        return SessionMode.WRITABLE if self.moves is None else SessionMode.REARRANGE

    def has_changes(self) -> bool:
        """Whether anything was changed (or moved) since the last commit."""
        return not self.changes.is_empty() or not (self.moves is None or self.moves.is_empty())

    def discard(self) -> None:
        """Forget every pending change (a rearrange session stays one) and what was read
        ahead (the session's view changes)."""
        self.changes = ChangeSet()
        self.carried = None
        self.forget_read_ahead()
        if self.uploads is not None:
            self.uploads.forget_failed()
        if self.moves is not None:
            self.moves = MoveSet()

    def forget_read_ahead(self) -> None:
        """Let go of the chunks fetched ahead: the session's view moved (commit, rebase,
        discard). What they hold is never served wrong (a prefetch is used only for the
        very file a read's reference names), but its bytes would stay held until another
        array's reads needed the room."""
        if self.readahead is not None:
            self.readahead.clear()

    def committed(self, snapshot_id: SnapshotId) -> None:
        """The session's changes are now in ``snapshot_id``: it reads that snapshot and,
        as in icechunk, takes no more changes (``check_writable`` says why)."""
        self.snapshot_id = snapshot_id
        self.discard()
        self.read_only = True
        self.saved_as = snapshot_id
