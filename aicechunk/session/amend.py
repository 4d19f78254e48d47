"""Amending (spec v2): replacing a branch's tip with a snapshot holding its changes and
the session's, as icechunk 2.x's ``Session.amend``.

The new snapshot is the tip's hierarchy with the session's changes applied; its parent is
the tip's parent, its transaction log the tip's merged with the session's, and the
branch moves to it through the repo info file's compare-and-swap, logged as
``CommitAmended``. The tip replaced stays listed (on no branch) until expiration. Refused
as icechunk refuses it: on spec v1, for the first commit, when the branch moved since the
session started (``ConflictError``: rebase, then amend), and, outside a rearrange session,
for a tip that moved nodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aicechunk.errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    RefNotFoundError,
    SessionStateError,
    StorageError,
)
from aicechunk.format import repo_updates as ru
from aicechunk.format.feature_flags import require_feature
from aicechunk.format.ids import SnapshotId
from aicechunk.format.metadata import check_commit_properties
from aicechunk.format.repo_info import REPO_INFO_KEY, RepoInfo, SnapshotInfo, with_snapshot
from aicechunk.format.snapshot import Snapshot
from aicechunk.repo_info_store import Change, RepoInfoStore
from aicechunk.session.commit import NO_CHANGES, finish_despite_cancellation, settle, with_defaults
from aicechunk.session.flush import Flush
from aicechunk.session.reads import base_snapshot, list_nodes
from aicechunk.session.rearrange import check_move_flag, require_spec_v2
from aicechunk.session.state import SessionState

__all__ = ["amend"]

log = logging.getLogger(__name__)
_HINT = "rebase, then amend again"


async def amend(
    state: SessionState, message: str, metadata: Mapping[str, Any] | None, allow_empty: bool
) -> SnapshotId:
    """Replace ``state``'s branch tip (the session's snapshot) by a snapshot with the
    tip's changes and the session's (see ``Session.amend``)."""
    require_spec_v2(state.assets, "amending a commit")
    state.check_writable(unsettled_ok=True, rearrange_ok=True, saving=True)
    branch = state.branch
    if branch is None:
        raise SessionStateError("this session is not on a branch and cannot amend")
    store = state.assets.refs
    assert isinstance(store, RepoInfoStore)  # spec v2 keeps its refs there
    metadata = with_defaults(state, metadata)
    check_commit_properties(message, metadata)
    if state.unsettled is not None and await settle(state):
        return state.snapshot_id  # the earlier commit of these changes had landed
    if not (allow_empty or state.has_changes()):
        raise SessionStateError(NO_CHANGES)
    tip = await base_snapshot(state)
    if tip.parent_id is None:
        raise SessionStateError(
            "the first commit of a repository cannot be amended: commit a new one instead"
        )
    now = (await state.assets.fetch_branch(branch)).snapshot_id
    if now != state.snapshot_id:  # as a commit: one that already lost writes nothing
        raise ConflictError(branch, str(state.snapshot_id), str(now), hint=_HINT)
    previous = await state.assets.fetch_transaction_log(tip.id)
    if previous.moved_nodes and state.moves is None:
        raise SessionStateError(
            f"the commit being amended ({tip.id}) moved nodes: amend it in a rearrange "
            f"session (repo.rearrange_session({branch!r})), which takes no other change"
        )
    if state.moves is not None:
        await check_move_flag(state.assets, "commit rearrange session")
    views = await list_nodes(state)
    snapshot = await Flush(state, tip, views, (previous, tip.parent_id)).run(message, metadata)
    done, cancelled = await finish_despite_cancellation(store.update(_change(state, snapshot)))
    error = None if done.cancelled() else done.exception()
    if done.cancelled() or isinstance(error, StorageError):
        # the answer was lost (or the update never finished): the branch may have moved,
        # and the next commit or amend of this session finds out first
        state.unsettled = snapshot.id
        if cancelled or done.cancelled():
            raise asyncio.CancelledError
        raise CommitOutcomeUnknownError(
            f"amend of branch {branch!r}: outcome unknown ({error}); amend or commit this "
            "session again to find out",
            key=REPO_INFO_KEY,
        ) from error
    if error is not None:
        raise error
    state.committed(snapshot.id)
    log.info("amended branch %r: snapshot %s replaces %s", branch, snapshot.id, tip.id)
    if cancelled:
        raise asyncio.CancelledError
    return snapshot.id


def _change(state: SessionState, snapshot: Snapshot) -> Change:
    """The repo info change of an amend: the session's branch from the session's
    snapshot to ``snapshot``, which is listed with the replaced snapshot's parent."""
    expected, branch = state.snapshot_id, state.branch
    rearranging = state.moves is not None

    def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
        if info.snapshot(snapshot.id) is not None:
            return None  # listed: an earlier attempt landed
        if rearranging:
            require_feature(info, "move_node", "commit rearrange session")
        now = None if branch is None else info.branches.get(branch)
        if branch is None or now is None:
            raise RefNotFoundError(f"branch {branch!r} does not exist")
        if now != expected:
            raise ConflictError(branch, str(expected), str(now), hint=_HINT)
        replaced = info.snapshot(now)
        if replaced is None:
            raise RefNotFoundError(f"snapshot {now} is not in the repository's list")
        listed = SnapshotInfo(
            snapshot.id,
            replaced.parent_id,
            snapshot.flushed_at,
            snapshot.message,
            dict(snapshot.metadata),
            replaced.pruned_ancestor_tx_logs,
        )
        new = replace(
            info,
            branches={**info.branches, branch: snapshot.id},
            snapshots=with_snapshot(info.snapshots, listed),  # spliced, not encoded whole
        )
        return new, ru.CommitAmended(branch, now, snapshot.id)

    return change
