"""Folding forks back into a session: the checks that they belong there, then the merge.

A fork merges only into the session state it came from (same repository, branch and base
snapshot); changes that arrived in a payload are first checked against the base snapshot.
Chunk data is already in storage, so merging moves references only. Chunks a fork's
payload carried (``carried.py``) are read by a fork it is merged into, never by a session
that uploads: that session reads what it uploads and what is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from aicechunk.changes.validate import BaseNodes, check_changes
from aicechunk.errors import AicechunkError, ForkPayloadError, SessionStateError
from aicechunk.session.reads import base_snapshot
from aicechunk.session.state import SessionState
from aicechunk.store.metadata import parse_metadata

__all__ = ["check_mergeable", "merge"]


def check_mergeable(ours: SessionState, theirs: SessionState) -> None:
    """Refuse a fork of another repository, branch or base snapshot."""
    if theirs.assets.driver.label != ours.assets.driver.label:
        raise SessionStateError(
            f"fork is from another repository ({theirs.assets.driver.label}, "
            f"not {ours.assets.driver.label})"
        )
    if theirs.branch != ours.branch:
        raise SessionStateError(
            f"fork is from branch {theirs.branch!r}, this session is on {ours.branch!r}"
        )
    if theirs.snapshot_id != ours.snapshot_id:
        raise SessionStateError(
            f"fork starts at snapshot {theirs.snapshot_id}, this session at "
            f"{ours.snapshot_id}: forks merge only into the session state they came from"
        )


async def merge(ours: SessionState, forks: Sequence[SessionState]) -> None:
    """Fold the changes of ``forks`` (already checked with ``check_mergeable``) into
    ``ours``; later forks win. Payload forks are checked first: nothing is merged if one
    is refused (``ForkPayloadError``)."""
    from_payloads = [state for state in forks if state.from_payload]
    if from_payloads:
        base = BaseNodes(await base_snapshot(ours))
        for state in from_payloads:
            try:
                check_changes(state.changes, base, parse_metadata)
                for path, (_, definition) in state.changes.new_arrays.items():
                    ours.check_grid(path, definition)
                for nid, definition in state.changes.updated_arrays.items():
                    ours.check_grid(f"<node {nid}>", definition)
            except (AicechunkError, ValueError) as err:
                raise ForkPayloadError(f"fork payload refused: {err}") from err
    for state in forks:
        ours.changes.merge(state.changes)
        if state.carried and ours.uploads is None:
            # a fork merging a fork (a tree reduction in a worker): read the chunks still
            # uploading where they were made from these copies, its own first. A session
            # that uploads never reads a returned fork's copies: it has the chunks it
            # uploads, and a chunk it does not upload must not read as if it were stored
            ours.carried = {**state.carried, **(ours.carried or {})}
