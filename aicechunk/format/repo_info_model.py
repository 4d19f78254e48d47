"""What the repo info file of spec v2 holds, as values: ``RepoInfo`` and ``SnapshotInfo``.

``format.repo_info`` encodes and decodes them. A repo info file read for a change, an
open or a list of branches need not turn every snapshot and operations log entry into
objects: its decoder may hand those lists over as ``Lazy`` sequences, decoded (and
checked: a malformed entry is a ``FormatError`` then) when first used.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, overload

from aicechunk.errors import FormatError
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_updates import RepoStatus, Update

__all__ = ["Flex", "Lazy", "RepoInfo", "SnapshotInfo", "with_snapshot"]

T = TypeVar("T")
_NAME = "repo"


class Lazy(Sequence[T]):
    """A sequence of ``count`` items decoded on first use: ``item(i)`` decodes one;
    ``check(items)``, if given, runs once all are decoded (checks that need them all);
    ``every()``, if given, decodes them all at once (when none was decoded alone yet).
    Equal to any sequence of equal items."""

    __slots__ = ("_check", "_count", "_done", "_every", "_item", "_items")

    def __init__(
        self,
        count: int,
        item: Callable[[int], T],
        check: Callable[[tuple[T, ...]], None] | None = None,
        every: Callable[[], tuple[T, ...]] | None = None,
    ) -> None:
        self._count = count
        self._item = item
        self._check = check
        self._every = every
        self._items: list[T | None] = [None] * count
        self._done: tuple[T, ...] | None = None

    def _one(self, i: int) -> T:
        found = self._items[i]
        if found is None:
            found = self._items[i] = self._item(i)
        return found

    def decoded(self) -> tuple[T, ...]:
        """Every item, decoded (and checked) now if not yet."""
        done = self._done
        if done is None:
            if self._every is not None and self._items.count(None) == self._count:
                done = self._every()
            else:
                done = tuple(self._one(i) for i in range(self._count))
            if self._check is not None:
                self._check(done)
            self._done = done
        return done

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        if isinstance(index, slice):
            return self.decoded()[index]
        if self._done is not None:
            return self._done[index]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("index out of range")
        return self._one(index)

    def __iter__(self) -> Iterator[T]:
        return iter(self.decoded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return self.decoded() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self.decoded()) if self._done is not None else f"<{self._count} to decode>"


class _Sorted(tuple):  # type: ignore[type-arg]
    """Snapshot infos known to be sorted by id (``SnapshotId`` text sorts as its bytes).

    One made by ``with_snapshot`` says where it came from: ``_origin`` is the ``_token``
    of the list it was made from and the position of the one snapshot inserted into it,
    so that an encoder that wrote that list can splice the new one in (a token, not the
    list itself: a chain of lists, each holding the one before, would keep every one).
    """

    _token: object
    _origin: tuple[object, int]


_BY_ID = operator.attrgetter("id")


def with_snapshot(snapshots: Sequence[SnapshotInfo], added: SnapshotInfo) -> Sequence[SnapshotInfo]:
    """``snapshots`` with ``added`` inserted where its id sorts (by binary search, no
    sort), for ``RepoInfo(snapshots=...)``. A list not known to be sorted, or one that
    already holds that id, is returned with ``added`` at the end, to be sorted (or
    refused) as any other."""
    if not isinstance(snapshots, _Sorted):
        return (*snapshots, added)
    at = bisect.bisect_left(snapshots, added.id, key=_BY_ID)
    if at < len(snapshots) and snapshots[at].id == added.id:
        return (*snapshots, added)
    token = snapshots.__dict__.get("_token")
    if token is None:
        token = snapshots._token = object()
    made = _Sorted((*snapshots[:at], added, *snapshots[at:]))
    made._origin = (token, at)
    return made


#: a metadata mapping with the FlexBuffer of each of its values, by key
Flex = tuple[Mapping[str, Any], tuple[tuple[str, bytes], ...]]


@dataclass(frozen=True)
class SnapshotInfo:
    """What the repo info file records of one snapshot (its parent among them).

    ``pruned_ancestor_tx_logs`` (spec 2.1): ids of the transaction logs of ancestors that
    expiration removed, oldest first; empty when none were.
    """

    id: SnapshotId
    parent_id: SnapshotId | None
    flushed_at: datetime
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)
    pruned_ancestor_tx_logs: tuple[SnapshotId, ...] = ()
    _flex: Flex | None = field(default=None, repr=False, compare=False)
    # this snapshot's piece of a repo info file, once written (see repo_info_segments)
    _segment: Any = field(default=None, init=False, repr=False, compare=False)


@dataclass(frozen=True)
class RepoInfo:
    """The decoded repo info file. Snapshots, deleted tags and feature flags are kept
    sorted as the file stores them; ``config`` is the configuration's FlexBuffer. Feature
    flags explicitly enabled or disabled are ``None`` when the file has no such list
    (Icechunk writes them once one was set)."""

    branches: Mapping[str, SnapshotId]
    tags: Mapping[str, SnapshotId]
    snapshots: Sequence[SnapshotInfo]
    status: RepoStatus
    latest_updates: Sequence[Update]
    deleted_tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    repo_before_updates: str | None = None
    config: bytes | None = None
    enabled_feature_flags: tuple[int, ...] | None = None
    disabled_feature_flags: tuple[int, ...] | None = None
    spec_version: int = 2
    extra: bytes | None = None
    _flex: Flex | None = field(default=None, repr=False, compare=False)
    _ids: list[bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # a decoded list is sorted (or refused); one sorted here stays so through
        # ``replace``, which every change makes twice
        if not isinstance(self.snapshots, Lazy | _Sorted):
            object.__setattr__(self, "snapshots", _Sorted(sorted(self.snapshots, key=_BY_ID)))
        if not isinstance(self.latest_updates, Lazy):
            object.__setattr__(self, "latest_updates", tuple(self.latest_updates))
        object.__setattr__(self, "deleted_tags", tuple(sorted(self.deleted_tags)))
        for name in ("enabled_feature_flags", "disabled_feature_flags"):
            flags = getattr(self, name)
            if flags is not None:
                object.__setattr__(self, name, tuple(sorted(flags)))

    def snapshot(self, snapshot_id: SnapshotId) -> SnapshotInfo | None:
        """The info of one snapshot (binary search by id), or ``None``."""
        snapshots = self.snapshots
        if isinstance(snapshots, _Sorted):  # ids sort as their text does: no list
            i = bisect.bisect_left(snapshots, snapshot_id, key=_BY_ID)
            found = snapshots[i] if i < len(snapshots) else None
            return found if found is not None and found.id == snapshot_id else None
        ids = self._ids
        if ids is None:  # made on first use: a lazily decoded list is decoded then
            ids = [s.id.bytes for s in self.snapshots]
            object.__setattr__(self, "_ids", ids)
        i = bisect.bisect_left(ids, snapshot_id.bytes)
        if i < len(ids) and ids[i] == snapshot_id.bytes:
            return self.snapshots[i]
        return None

    def ancestry(self, snapshot_id: SnapshotId) -> Iterable[SnapshotInfo]:
        """The snapshot and its ancestors, newest first; ``FormatError`` where a parent
        is not listed or the parents loop."""
        cursor: SnapshotId | None = snapshot_id
        seen: set[SnapshotId] = set()
        while cursor is not None:
            if cursor in seen:
                raise FormatError(
                    _NAME, f"history loops: {cursor} is its own ancestor (from {snapshot_id})"
                )
            seen.add(cursor)
            info = self.snapshot(cursor)
            if info is None:
                raise FormatError(_NAME, f"snapshot {cursor} is not in the repo info file")
            yield info
            cursor = info.parent_id
