"""``Repository.rearrange_session`` (spec v2): a session that moves nodes and nothing else.

A function of a repository, which the ``Repository`` class takes as its method, so that
it lives apart from it (as ``v2ops``'s functions do).
"""

from __future__ import annotations

from typing import Protocol

from aicechunk.assets import AssetManager
from aicechunk.format.ids import SnapshotId
from aicechunk.session import Session
from aicechunk.session.rearrange import check_move_flag, require_spec_v2

__all__ = ["rearrange_session"]


class SessionMaker(Protocol):
    """A repository, as ``rearrange_session`` sees it."""

    _assets: AssetManager

    def _session_on(
        self, branch: str, snapshot_id: SnapshotId, rearrange: bool = False
    ) -> Session: ...

    async def writable_session(self, branch: str) -> Session: ...


async def rearrange_session(self: SessionMaker, branch: str) -> Session:
    """A session on ``branch`` that moves and renames nodes (``Session.move``) and takes
    no other change, as icechunk 2.x's ``rearrange_session``: commit it (or ``amend``)
    as any session.

    Spec v2 only: ``UnsupportedSpecVersionError`` naming the version on spec v1.
    ``SessionStateError`` if the repository's ``move_node`` feature flag is disabled.
    """
    require_spec_v2(self._assets, "a rearrange session")
    writable = await self.writable_session(branch)  # the branch and the storage checked
    await check_move_flag(self._assets, "create rearrange session")
    return self._session_on(branch, writable.snapshot_id, rearrange=True)
