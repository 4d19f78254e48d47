"""The calls that save a session's changes: commit, amend, flush and rebase (part of
``Session``; the work is done in ``commit`` and ``amend``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aicechunk.awaited import must_await
from aicechunk.changes.conflicts import ConflictSolver
from aicechunk.format.ids import SnapshotId
from aicechunk.session import amend as amending
from aicechunk.session import commit as committing
from aicechunk.session.carried import native_extents
from aicechunk.session.state import SessionState

__all__ = ["Saving"]


class Saving:
    """Commit, amend, flush and rebase of a session."""

    _state: SessionState

    async def _uploaded(self) -> None:
        """Wait for every chunk written behind to be stored (``ChunkUploadError`` if one
        could not be: then nothing is saved)."""
        state = self._state
        if state.uploads is not None:
            await state.uploads.drain(lambda: native_extents(state.changes))

    @must_await("nothing was committed")
    async def commit(
        self,
        message: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1000,
        allow_empty: bool = False,
    ) -> SnapshotId:
        """Save the pending changes as a new snapshot and move the branch to it.

        Chunks written behind (``RepositoryConfig.write_behind_bytes``) are stored first;
        if one cannot be, ``ChunkUploadError`` and nothing is committed.

        The snapshot's metadata is the repository's default commit metadata when this
        session was made, updated with ``metadata`` (its keys win), as in icechunk.

        ``message`` must be a str (valid UTF-8) and ``metadata`` JSON with str keys, ints
        within -2**63..2**64-1 and finite floats, as Icechunk reads it back; anything else
        is ``UnrepresentableValueError`` naming it, before anything is written. A session
        with nothing to commit raises ``SessionStateError`` unless ``allow_empty=True``
        (then the new snapshot is the session's, unchanged), as in icechunk 2.x.

        Raises ``ConflictError`` if the branch moved since the session's snapshot (nothing
        of this commit becomes visible), unless ``rebase_with`` resolves the conflicts,
        in which case the changes are rebased onto the new tip and the commit retried
        (at most ``rebase_tries`` times).

        A commit reported as failed is not in the branch's history. When the answer to the
        branch update is lost, the branch's history is searched for the new snapshot to
        tell; if even that cannot be read, ``CommitOutcomeUnknownError`` is raised and the
        next ``commit`` of this session finds out first. Cancelled while the branch update
        is under way, the commit waits for its outcome (bounded by the driver's timeouts)
        before the cancellation takes effect, so the session knows whether its changes were
        committed: if they were, it is at the new snapshot with no pending changes.
        """
        await self._uploaded()
        return await committing.commit(
            self._state, message, metadata, rebase_with, rebase_tries, allow_empty
        )

    @must_await("nothing was amended")
    async def amend(
        self,
        message: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        allow_empty: bool = False,
    ) -> SnapshotId:
        """Replace the branch's tip with a new snapshot holding the tip's changes and
        this session's (icechunk 2.x's ``Session.amend``): the history gains no commit;
        the new one has the tip's parent, ``message``, and ``metadata`` made as a
        commit's (the tip's is not kept). ``allow_empty=True`` amends with no changes, to
        change only the message. Returns the new snapshot's id; the replaced tip leaves
        the branch (logged as ``CommitAmended`` in the operations log).

        Spec v2 only (``UnsupportedSpecVersionError`` naming the version on spec v1).
        ``ConflictError`` if the branch moved since the session's snapshot (rebase, then
        amend); ``SessionStateError`` for the repository's first commit, with nothing to
        amend, or, outside a rearrange session, for a tip that moved nodes. A lost answer
        is handled as ``commit`` handles it.
        """
        await self._uploaded()
        return await amending.amend(self._state, message, metadata, allow_empty)

    @must_await("nothing was flushed")
    async def flush(self, message: str, metadata: Mapping[str, Any] | None = None) -> SnapshotId:
        """Save the pending changes as an anonymous snapshot, on no branch, and return
        its id (icechunk's ``Session.flush``): its parent is the session's snapshot, its
        metadata made as a commit's. As in icechunk, the session then reads it, read-only
        and on no branch: tag it or ``create_branch`` at it to keep it from garbage
        collection."""
        await self._uploaded()
        return await committing.flush(self._state, message, metadata)

    @must_await("nothing was rebased")
    async def rebase(self, solver: ConflictSolver) -> None:
        """Move the pending changes onto the branch tip, resolving conflicts with ``solver``.

        Raises ``RebaseFailedError`` listing conflicts the solver cannot resolve. A commit
        that moved nodes cannot be rebased over (``MOVE_OPERATION_CANNOT_BE_REBASED``, as
        in icechunk); a rearrange session's moves are replayed on each commit, and one
        that no longer applies (its node deleted or replaced, its destination taken, its
        new parent gone) is a conflict no solver resolves.
        """
        await committing.rebase(self._state, solver)
