"""Rearranging a hierarchy (spec v2): moving nodes in a rearrange session.

As in icechunk 2.x, moves are made only in a session of their own
(``Repository.rearrange_session``), which takes no other change, and a writable session
takes no move. A move renames a node with everything below it; node ids stay, so chunks
(which manifests hold by node id) move at no cost. It is checked as icechunk checks it, and
recorded in the session's ``MoveSet``; reads, status, the commit's snapshot and its
transaction log see the moved hierarchy.

The repository's ``move_node`` feature flag, when disabled, refuses rearrange sessions and
their commits (``check_move_flag``: ``format.feature_flags.require_feature`` on the repo
info file read fresh).
"""

from __future__ import annotations

from aicechunk.assets import AssetManager
from aicechunk.changes.moves import Move, is_under, parent_path
from aicechunk.changes.validate import check_node_path
from aicechunk.errors import (
    NodeExistsError,
    NodeNotFoundError,
    SessionStateError,
    UnsupportedSpecVersionError,
)
from aicechunk.format.feature_flags import require_feature
from aicechunk.repo_info_store import RepoInfoStore
from aicechunk.session import reads
from aicechunk.session.state import SessionMode, SessionState

__all__ = [
    "Rearranging",
    "check_move_flag",
    "move",
    "require_spec_v2",
]


def require_spec_v2(assets: AssetManager, what: str) -> None:
    """``UnsupportedSpecVersionError`` naming the version if the repository is spec v1,
    which has no way to record ``what`` (icechunk raises its format error there)."""
    if assets.format_version < 2:
        raise UnsupportedSpecVersionError(
            f"{what} needs a repository of spec version 2 or later; this one is spec version "
            f"{assets.format_version} (upgrade it to spec version 2 first)"
        )


async def check_move_flag(assets: AssetManager, what: str) -> None:
    """``FeatureFlagDisabledError`` (a ``SessionStateError``) if the ``move_node`` feature
    flag is disabled (read fresh from the repo info file), naming ``what`` was refused, as
    icechunk words it."""
    refs = assets.refs
    if isinstance(refs, RepoInfoStore):
        require_feature(await refs.info(), "move_node", what)


def _normalized(path: object) -> str:
    # icechunk reads "/a/" as "/a"
    if isinstance(path, str) and len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return check_node_path(path)


async def move(state: SessionState, from_path: str, to_path: str) -> None:
    """Move the node at ``from_path`` (and its subtree) to ``to_path``; see
    ``Rearranging.move`` for what is refused."""
    require_spec_v2(state.assets, "moving nodes")
    state.check_writable(rearrange_ok=True)
    if state.moves is None:
        raise SessionStateError(
            "nodes are moved in a rearrange session only: commit or discard this session's "
            "changes, then use repo.rearrange_session(branch)"
        )
    source, target = _normalized(from_path), _normalized(to_path)
    node = await reads.get_node(state, source)
    if node is None:
        raise NodeNotFoundError(source)
    if is_under(target, source):
        raise SessionStateError(
            f"cannot move {source!r} into itself or its own descendant {target!r}: to nest "
            f"its contents under a new group there, create that group in a writable session, "
            f"then move each child of {source!r} into it in a rearrange session"
        )
    if await reads.get_node(state, target) is not None:
        raise NodeExistsError(target, "a move cannot overwrite it")
    parent = parent_path(target)
    holder = await reads.get_node(state, parent)
    if holder is None:
        raise SessionStateError(
            f"cannot move to {target!r}: its parent group {parent!r} does not exist (a move "
            "makes no groups: create it in a writable session and commit first)"
        )
    if holder.is_array:
        raise SessionStateError(
            f"cannot move to {target!r}: its parent {parent!r} is an array, not a group"
        )
    state.moves.record(Move(source, target, node.id, node.is_array))


class Rearranging:
    """The session's mode and its moves (part of ``Session``)."""

    _state: SessionState

    @property
    def mode(self) -> SessionMode:
        """``SessionMode.READONLY``, ``WRITABLE`` or ``REARRANGE`` (icechunk's
        ``Session.mode``; a fork, on no branch, is ``READONLY`` as in icechunk)."""
        return self._state.mode

    async def move(self, from_path: str, to_path: str) -> None:
        """Move or rename the node at ``from_path``, with everything below it, to
        ``to_path`` (icechunk's ``Session.move``): metadata only, no data is copied.

        Only in a rearrange session (``repo.rearrange_session(branch)``) of a spec v2
        repository: elsewhere ``SessionStateError``, or ``UnsupportedSpecVersionError``
        naming the spec version. As in icechunk, ``NodeNotFoundError`` if nothing is at
        ``from_path``, ``NodeExistsError`` if something is at ``to_path``, and
        ``SessionStateError`` for a move into the node itself or below it, or to a place
        whose parent is missing or is an array (moves make no groups).
        """
        await move(self._state, from_path, to_path)
