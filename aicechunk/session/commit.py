"""Commit and rebase: a flush, then one compare-and-swap of the branch.

A commit checks the branch tip first (a commit that already lost writes nothing; on spec
v2, the tip this process last saw, which the conditional update confirms), flushes the
changes, and moves the branch with ``AssetManager.move_branch``. When the answer to
that move is lost, the outcome is settled by reading the branch back; a rebase replays
the changes on each snapshot committed meanwhile, through a conflict solver.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from aicechunk.changes.conflicts import ConflictSolver, rebase_changes
from aicechunk.errors import CommitOutcomeUnknownError, ConflictError, SessionStateError
from aicechunk.format.ids import SnapshotId
from aicechunk.format.metadata import check_commit_properties
from aicechunk.format.snapshot import Snapshot
from aicechunk.refstore import RefInfo
from aicechunk.session.flush import Flush
from aicechunk.session.reads import base_snapshot, list_nodes
from aicechunk.session.rearrange import check_move_flag
from aicechunk.session.state import SessionState

__all__ = [
    "NO_CHANGES",
    "commit",
    "finish_despite_cancellation",
    "flush",
    "rebase",
    "settle",
    "with_defaults",
]

NO_CHANGES = (
    "cannot commit: no changes were made in this session (pass allow_empty=True to commit anyway)"
)

T = TypeVar("T")
log = logging.getLogger(__name__)


async def commit(
    state: SessionState,
    message: str,
    metadata: Mapping[str, Any] | None,
    rebase_with: ConflictSolver | None,
    rebase_tries: int,
    allow_empty: bool = False,
) -> SnapshotId:
    """Save ``state``'s changes as a new snapshot and move its branch there (see
    ``Session.commit`` for the guarantees)."""
    state.check_writable(unsettled_ok=True, rearrange_ok=True, saving=True)
    branch = state.branch
    if branch is None:
        raise SessionStateError("this session is not on a branch and cannot commit")
    metadata = with_defaults(state, metadata)
    # what the format cannot hold is refused before anything is written
    check_commit_properties(message, metadata)
    if state.unsettled is not None and await settle(state):
        return state.snapshot_id  # the earlier commit of these changes had landed
    if not (allow_empty or state.has_changes()):
        raise SessionStateError(NO_CHANGES)
    if state.moves is not None:
        await check_move_flag(state.assets, "commit rearrange session")
    tries = 0
    while True:
        # the tip first: a commit that already lost writes nothing. The tip this process
        # last saw is enough when it is the session's (the repo info file of spec v2):
        # the branch's conditional update tells if it moved since (Icechunk 2.x reads
        # nothing before writing the files)
        tip = state.assets.refs.known_branch(branch) if tries == 0 else None
        if tip is None or tip.snapshot_id != state.snapshot_id:
            tip = await state.assets.fetch_branch(branch)
        error: BaseException | None
        if tip.snapshot_id != state.snapshot_id:
            error = ConflictError(branch, str(state.snapshot_id), str(tip.snapshot_id))
        else:
            base = await base_snapshot(state)
            flushing = Flush(state, base, await list_nodes(state))
            snapshot = await flushing.prepare(message, metadata)
            # the files are stored while the branch's update gets ready (for a spec v2
            # repository: alongside the repo info file's backup); the ref moves after
            files = flushing.write()
            move, cancelled = await finish_despite_cancellation(
                _moved(state, branch, snapshot, tip, files), abandon_while=files
            )
            if move.cancelled() and files.cancelled():
                raise asyncio.CancelledError  # before the ref's write: nothing happened
            error = None if move.cancelled() else move.exception()
            if move.cancelled() or isinstance(error, CommitOutcomeUnknownError):
                state.unsettled = snapshot.id
            elif error is None:
                state.committed(snapshot.id)
                log.info("committed snapshot %s on branch %r", snapshot.id, branch)
            if cancelled or move.cancelled():
                raise asyncio.CancelledError
            if error is None:
                return snapshot.id
            if isinstance(error, CommitOutcomeUnknownError):
                raise CommitOutcomeUnknownError(
                    f"commit {error.reason}; commit this session again to find out", key=error.key
                ) from error.__cause__
        if isinstance(error, ConflictError) and rebase_with is not None:
            tries += 1
            if tries <= rebase_tries:
                log.debug("branch %r moved: rebasing, try %d of %d", branch, tries, rebase_tries)
                await rebase(state, rebase_with)
                continue
        raise error


async def flush(
    state: SessionState, message: str, metadata: Mapping[str, Any] | None
) -> SnapshotId:
    """Save ``state``'s changes as a snapshot on no branch; the session then reads it,
    read-only and detached (see ``Session.flush``)."""
    if not state.has_changes():
        raise SessionStateError("no changes to flush")
    state.check_writable(rearrange_ok=True, saving=True)
    metadata = with_defaults(state, metadata)
    check_commit_properties(message, metadata)
    if state.moves is not None:
        await check_move_flag(state.assets, "flush rearrange session")
    base = await base_snapshot(state)
    snapshot = await Flush(state, base, await list_nodes(state)).run(message, metadata)
    await state.assets.refs.record_detached(snapshot)
    state.committed(snapshot.id)
    log.info("flushed anonymous snapshot %s (from branch %r)", snapshot.id, state.branch)
    state.branch = None
    state.read_only = True
    return snapshot.id


def with_defaults(state: SessionState, metadata: Mapping[str, Any] | None) -> Any:
    """The repository's default commit metadata updated with ``metadata`` (a value that
    is no mapping is returned as is, for ``check_commit_properties`` to refuse)."""
    if metadata is None:
        return dict(state.commit_metadata)
    if not isinstance(metadata, Mapping):
        return metadata
    return {**state.commit_metadata, **metadata}


async def settle(state: SessionState) -> bool:
    """Find out whether the commit whose outcome was unknown landed; if it did, the
    session moves to it and drops the changes it committed. Returns whether it did."""
    assert state.unsettled is not None and state.branch is not None
    new_id = state.unsettled
    landed, _ = await state.assets.branch_reached(state.branch, new_id, state.snapshot_id)
    state.unsettled = None
    if landed:
        state.committed(new_id)
    return landed


async def rebase(state: SessionState, solver: ConflictSolver) -> None:
    """Move the pending changes onto the branch tip, resolving conflicts with ``solver``;
    ``RebaseFailedError`` listing those it cannot resolve (the session is then as it was).
    A rearrange session's moves are replayed on each snapshot: one that no longer applies
    there fails the rebase, whatever the solver.
    """
    state.check_writable(unsettled_ok=True, rearrange_ok=True, saving=True)
    branch = state.branch
    if branch is None:
        raise SessionStateError("this session is not on a branch")
    if state.unsettled is not None:
        await settle(state)
    tip = (await state.assets.fetch_branch(branch)).snapshot_id
    chain = await state.assets.history_since(tip, state.snapshot_id)
    if chain is None:
        raise SessionStateError(
            f"branch {branch!r} no longer descends from snapshot {state.snapshot_id}"
        )
    # work on a copy: a failed rebase leaves the session exactly as it was
    original = (state.snapshot_id, state.changes)
    state.changes = copy.deepcopy(state.changes)
    try:
        for snapshot_id in reversed(chain):
            log = await state.assets.fetch_transaction_log(snapshot_id)
            theirs = await state.assets.fetch_snapshot(snapshot_id)
            ours = {view.id: view.path for view in await list_nodes(state)}
            moves = state.moves
            # their own moves make one conflict, as icechunk reports it: ours come after
            fatal = [] if moves is None or log.moved_nodes else moves.conflicts_on(theirs)
            state.changes = rebase_changes(state.changes, log, theirs, solver, ours, fatal)
            state.snapshot_id = snapshot_id
    except BaseException:
        state.snapshot_id, state.changes = original
        raise
    state.forget_read_ahead()


async def _moved(
    state: SessionState,
    branch: str,
    snapshot: Snapshot,
    tip: RefInfo,
    files: asyncio.Future[Any],
) -> None:
    """Move ``branch`` to ``snapshot`` once its ``files`` are stored; whatever the outcome,
    the file writes have ended when this returns (a commit that fails leaves no write
    running)."""
    try:
        await state.assets.move_branch(branch, snapshot.id, tip, snapshot, files)
    finally:
        if not files.done():
            await asyncio.wait((files,))
        if not files.cancelled():
            files.exception()  # retrieved: raised by the move, or of no interest now


async def finish_despite_cancellation(
    aw: Awaitable[T], abandon_while: asyncio.Future[Any] | None = None
) -> tuple[asyncio.Future[T], bool]:
    """Run ``aw`` to its end even if the calling task is cancelled meanwhile (its outcome
    must be known); return it, finished, and whether a cancellation was held back.
    ``abandon_while``: work that ``aw`` waits for before it writes anything a reader
    could see (a commit's files); a cancellation arriving before it is done cancels it
    and ``aw`` instead of waiting."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled = True
            if abandon_while is not None and not abandon_while.done():
                abandon_while.cancel()
                task.cancel()
    return task, cancelled
