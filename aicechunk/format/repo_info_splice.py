"""The repo info file of a change, spliced into the file written before it.

Every change of a spec v2 repository rewrites its whole repo info file, while it alters
one or two of its entries: a commit lists one snapshot and moves one branch, and the
operations log gains an entry at its front (and may lose its oldest). Writing the file
from its segments (``repo_info_segments``) still walks every ref, snapshot and log entry
in Python, so the time of a change grew with the history. Here the ``Layout`` of the
last files written is kept, and the file of a ``RepoInfo`` made from one of them by a
change is made from that layout: the new segments spliced in, the indices held by refs
and parents from an inserted snapshot's position up shifted by one (numpy), the offset
vectors computed again (numpy), the bytes joined and compressed. Python then does work
in proportion to what changed, not to the history.

What is recognised: the snapshot list unchanged or with one snapshot inserted by
``with_snapshot`` (anywhere: its ``_origin`` names the list it was made from); a few
refs created, moved or deleted; the operations log unchanged or pushed
(``push_update``: a new entry first, the one before it given its backup path, maybe the
oldest cut); anything else of the root (status, metadata, deleted tags, feature flags,
the link to older updates, configuration) changed at will. Anything else (snapshots
removed, a list sorted anew, many refs changed, a log rewritten) is not, and the file is
written whole. Either way the bytes are those ``encode_repo_info_segmented`` writes for
the same ``RepoInfo``.
"""

from __future__ import annotations

import bisect
import operator
import threading
from collections.abc import Mapping, Sequence

from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import RepoInfo, SnapshotInfo
from aicechunk.format.repo_info_segments import (
    Layout,
    Section,
    assemble,
    build_layout,
    ref_segment,
    rest_key,
    rest_segment,
    snapshot_segment,
    update_segment,
)
from aicechunk.format.repo_updates import Update

__all__ = ["derive", "encode_kept", "encode_spliced", "forget", "missing_segments"]

#: how many layouts are kept (one per repository written to lately)
KEPT_LAYOUTS = 2
#: a larger file is not kept (a repository of a million refs): it is written whole
KEPT_BYTES_AT_MOST = 16 << 20
#: a change of more refs than this is written whole
SPLICED_REFS_AT_MOST = 16

_BY_ID = operator.attrgetter("id")
_lock = threading.Lock()
_kept: list[Layout] = []


def encode_spliced(info: RepoInfo) -> bytes | None:
    """The file of ``info`` spliced into a kept layout it was made from by one change
    (that layout replaced by the new one), or ``None`` if there is no such layout."""
    with _lock:
        candidates = list(reversed(_kept))
    for base in candidates:
        layout = derive(base, info)
        if layout is not None:
            data, assembled = assemble(layout)
            _keep(assembled, base)
            return data
    return None


def encode_kept(info: RepoInfo) -> bytes:
    """The file of ``info`` written whole, its layout kept for the next change."""
    data, layout = assemble(build_layout(info))
    _keep(layout, None)
    return data


def missing_segments(info: RepoInfo) -> int:
    """How many snapshots and log entries of ``info`` have no segment yet (to make)."""
    missing = sum(1 for s in info.snapshots if s._segment is None)
    return missing + sum(1 for u in info.latest_updates if u._segment is None)


def _keep(layout: Layout, replaced: Layout | None) -> None:
    parts = (layout.tags, layout.branches, layout.snapshots, layout.updates)
    size = sum(p.length for p in parts)
    with _lock:
        _kept[:] = [kept for kept in _kept if kept is not replaced]
        if size <= KEPT_BYTES_AT_MOST:
            _kept.append(layout)
        del _kept[:-KEPT_LAYOUTS]


def forget() -> None:
    """Drop the kept layouts (tests: the next change is written whole)."""
    with _lock:
        _kept.clear()


def _position(listed: Sequence[SnapshotInfo], snapshot_id: SnapshotId) -> int:
    """The index of ``snapshot_id`` in the sorted ``listed``, or -1."""
    at = bisect.bisect_left(listed, snapshot_id, key=_BY_ID)
    return at if at < len(listed) and listed[at].id == snapshot_id else -1


def derive(base: Layout, new: RepoInfo) -> Layout | None:
    """The layout of ``new`` from ``base``, if ``new`` differs from what ``base`` encodes
    by one change recognised here (see the module's docstring), else ``None``."""
    old = base.info
    if "main" not in new.branches or not new.latest_updates:
        return None  # refused, by the whole encoder
    listed = new.snapshots
    snapshots = base.snapshots
    at: int | None = None
    if listed is not old.snapshots:
        origin = getattr(listed, "_origin", None)
        if origin is None or origin[0] is not getattr(old.snapshots, "_token", None):
            return None
        at = origin[1]
        added = listed[at]
        parent = -1 if added.parent_id is None else _position(listed, added.parent_id)
        if parent < 0 and added.parent_id is not None:
            return None
        snapshots = snapshots.shifted(at).splice(at, at, [snapshot_segment(added)], [parent])
    tags = _refs(base.tag_names, base.tags, old.tags, new.tags, listed, at)
    branches = _refs(base.branch_names, base.branches, old.branches, new.branches, listed, at)
    log = _log(base.updates, old.latest_updates, new.latest_updates)
    if tags is None or branches is None or log is None:
        return None
    key = rest_key(new)
    if key == base.rest_key:
        rest, fields = base.rest, base.rest_fields
    else:
        (rest, _, _), fields = rest_segment(new)
    return Layout(
        new, tags[0], branches[0], tags[1], branches[1], snapshots, log, rest, fields, key
    )


def _refs(
    names: tuple[str, ...],
    section: Section,
    old: Mapping[str, SnapshotId],
    new: Mapping[str, SnapshotId],
    listed: Sequence[SnapshotInfo],
    inserted_at: int | None,
) -> tuple[tuple[str, ...], Section] | None:
    """The refs of ``new`` from those of ``old`` (``names``, ``section``), in a list
    where a snapshot was inserted at ``inserted_at`` (if not ``None``)."""
    if inserted_at is not None:
        section = section.shifted(inserted_at)
    if new is old:
        return names, section
    get = old.get
    changed = [name for name in new if new[name] is not get(name)]  # by identity: fast
    added = sum(1 for name in changed if name not in old)
    removed = old.keys() - new.keys() if len(new) - added < len(old) else ()
    if len(changed) + len(removed) > SPLICED_REFS_AT_MOST:
        return None
    for name in removed:
        i = bisect.bisect_left(names, name.encode(), key=str.encode)
        section = section.splice(i, i + 1, [], [])
        names = names[:i] + names[i + 1 :]
    for name in changed:
        position = _position(listed, new[name])
        if position < 0:
            return None  # the whole encoder says which
        i = bisect.bisect_left(names, name.encode(), key=str.encode)
        if i < len(names) and names[i] == name:
            section = section.with_value(i, position)
        else:
            section = section.splice(i, i, [ref_segment(name)], [position])
            names = (*names[:i], name, *names[i:])
    return names, section


def _log(section: Section, old: Sequence[Update], new: Sequence[Update]) -> Section | None:
    """The operations log ``new`` from ``old`` (``section``): the same, or pushed."""
    if new is old:
        return section
    count = len(new)
    if count == len(old) and tuple(new) == tuple(old):
        return section
    # pushed: one or two new entries first (the new update, the one before it with its
    # backup path), then the older ones, maybe the oldest cut
    front = min(count, 2)
    if len(old) < count - 1 or tuple(new[front:]) != tuple(old[front - 1 : count - 1]):
        return None
    pushed = [u._segment or update_segment(u) for u in new[:front]]
    return section.splice(0, front - 1, pushed, [], count - 1)
