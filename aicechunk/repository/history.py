"""A repository's history as users see it: snapshot infos, the snapshot of a branch as of
a time, and the diff between two snapshots."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aicechunk.assets import AssetManager
from aicechunk.errors import InvalidIdError, RefNotFoundError, RepositoryError
from aicechunk.format.ids import NodeId, SnapshotId
from aicechunk.format.snapshot import Snapshot
from aicechunk.session import Diff

__all__ = ["SnapshotInfo", "diff", "parse_snapshot_id", "snapshot_as_of"]


def parse_snapshot_id(value: str | SnapshotId) -> SnapshotId:
    """A snapshot id given as an argument: ``TypeError`` for one that is not a str, as
    icechunk; ``RefNotFoundError`` for a str that is no snapshot id."""
    if isinstance(value, SnapshotId):
        return value
    if not isinstance(value, str):
        raise TypeError(f"a snapshot id is a str, not {type(value).__name__}: {value!r:.80}")
    try:
        return SnapshotId.from_str(value)
    except InvalidIdError as err:
        raise RefNotFoundError(err.problem) from None


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot as history shows it: id, parent, time written, message, metadata."""

    id: str
    parent_id: str | None
    written_at: datetime
    message: str
    metadata: dict[str, Any]

    @classmethod
    def of(cls, snapshot: Snapshot) -> SnapshotInfo:
        """The info of a snapshot read from storage."""
        return cls(
            id=str(snapshot.id),
            parent_id=None if snapshot.parent_id is None else str(snapshot.parent_id),
            written_at=snapshot.flushed_at,
            message=snapshot.message,
            metadata=copy.deepcopy(snapshot.metadata),
        )


async def snapshot_as_of(assets: AssetManager, branch: str, as_of: datetime) -> SnapshotId:
    """The snapshot ``branch`` was at ``as_of``: the newest of its history written at or
    before then (icechunk's rule). ``TypeError`` for a naive ``as_of``, as icechunk."""
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise TypeError("as_of must be a datetime with a time zone (tzinfo), not a naive one")
    tip = (await assets.fetch_branch(branch)).snapshot_id
    async for snapshot in assets.history(tip):
        if snapshot.flushed_at <= as_of:
            return snapshot.id
    raise RefNotFoundError(f"branch {branch!r} has no snapshot written at or before {as_of}")


async def diff(assets: AssetManager, start: SnapshotId, end: SnapshotId) -> Diff:
    """What changed from ``start`` to its descendant ``end`` (see ``Repository.diff``)."""
    chain = await assets.history_since(end, start)
    if chain is None:
        raise RepositoryError(f"snapshot {start} is not an ancestor of {end}")
    paths = {n.id: n.path for n in (await assets.fetch_snapshot(start)).nodes}
    paths.update((n.id, n.path) for n in (await assets.fetch_snapshot(end)).nodes)
    logs = [log for sid in chain for log in await assets.transaction_history(sid)]

    def named(ids: set[NodeId]) -> set[str]:
        return {paths[i] for i in ids if i in paths}

    result = Diff(
        new_groups=named({i for log in logs for i in log.new_groups}),
        new_arrays=named({i for log in logs for i in log.new_arrays}),
        deleted_groups=named({i for log in logs for i in log.deleted_groups}),
        deleted_arrays=named({i for log in logs for i in log.deleted_arrays}),
        updated_groups=named({i for log in logs for i in log.updated_groups}),
        updated_arrays=named({i for log in logs for i in log.updated_arrays}),
    )
    for log in logs:  # newest first, as icechunk lists moves
        result.moved_nodes.extend((m.from_path, m.to_path) for m in log.moved_nodes)
        for nid, coords in log.updated_chunks.items():
            if nid in paths:
                result.updated_chunks.setdefault(paths[nid], set()).update(tuple(c) for c in coords)
    return result
