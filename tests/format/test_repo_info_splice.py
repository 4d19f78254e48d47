"""The repo info file of a change spliced into the last one written
(``format/repo_info_splice.py``): after every kind of change, in random sequences, the
spliced bytes are exactly those the whole segmented encoder writes for the same
``RepoInfo`` (also from new objects, no segments kept), and they decode to what the
Icechunk layout decodes to. The changes a store makes are spliced, not written whole."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicechunk.errors import FormatError
from aicechunk.format import repo_info_splice
from aicechunk.format import repo_updates as ru
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import (
    RepoInfo,
    SnapshotInfo,
    decode_repo_info,
    encode_repo_info,
    next_update_time,
    push_update,
)
from aicechunk.format.repo_info_model import with_snapshot
from aicechunk.format.repo_info_segments import encode_repo_info_segmented
from aicechunk.format.repo_info_splice import derive, encode_kept, encode_spliced, forget
from aicechunk.format.repo_updates import Update
from tests.format.strategies_v2 import flags, metadata, names, repo_infos, statuses

# kinds of change a store makes, each written by splicing; then those written whole
SPLICED = (
    "commit",
    "detached",
    "branch_create",
    "branch_reset",
    "branch_delete",
    "tag_create",
    "tag_delete",
    "status",
    "metadata",
    "flags",
    "config",
    "nothing",
)
WHOLE = ("amend", "many_branches", "dropped_snapshot")

# ids that sort before, after and between the others, and anywhere
raw_ids = st.one_of(
    st.binary(min_size=12, max_size=12),
    st.integers(0, 255).map(lambda b: bytes([0] * 11 + [b])),
    st.integers(0, 255).map(lambda b: bytes([255] * 11 + [b])),
)


def _fresh(info: RepoInfo) -> RepoInfo:
    """``info`` with new snapshot and update objects (no segments kept)."""
    snapshots = tuple(dataclasses.replace(s) for s in info.snapshots)
    updates = tuple(dataclasses.replace(u) for u in info.latest_updates)
    return dataclasses.replace(info, snapshots=snapshots, latest_updates=updates)


def _snapshot(data: st.DataObject, info: RepoInfo, parent: SnapshotId | None) -> SnapshotInfo:
    while True:
        new_id = SnapshotId(data.draw(raw_ids))
        if info.snapshot(new_id) is None:
            break
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=data.draw(st.integers(0, 99)))
    return SnapshotInfo(new_id, parent, at, data.draw(st.text(max_size=8)), data.draw(metadata))


def _any_id(data: st.DataObject, info: RepoInfo) -> SnapshotId:
    return data.draw(st.sampled_from([s.id for s in info.snapshots]))


Changed = tuple[RepoInfo, ru.UpdateKind] | None


def _change(what: str, data: st.DataObject, info: RepoInfo) -> Changed:
    """``info`` after a change of kind ``what``, made as the store's changes make it."""
    branches, tags = dict(info.branches), dict(info.tags)
    if what in ("commit", "amend"):
        name = data.draw(st.sampled_from(sorted(branches)))
        now = branches[name]
        if what == "commit":
            added = _snapshot(data, info, now)
            listed = with_snapshot(info.snapshots, added)
            kind: ru.UpdateKind = ru.NewCommit(name, added.id)
        else:  # as session/amend.py: a tuple sorted again, so written whole
            replaced = info.snapshot(now)
            assert replaced is not None
            added = _snapshot(data, info, replaced.parent_id)
            listed = (*info.snapshots, added)
            kind = ru.CommitAmended(name, now, added.id)
        new = dataclasses.replace(info, branches={**branches, name: added.id}, snapshots=listed)
        return new, kind
    if what == "detached":
        parent = data.draw(st.none() | st.just(_any_id(data, info)))
        added = _snapshot(data, info, parent)
        listed = with_snapshot(info.snapshots, added)
        return dataclasses.replace(info, snapshots=listed), ru.NewDetachedSnapshot(added.id)
    if what == "branch_create":
        name = data.draw(names)
        if name in branches:
            return None
        branches[name] = _any_id(data, info)
        return dataclasses.replace(info, branches=branches), ru.BranchCreated(name)
    if what == "branch_reset":
        name = data.draw(st.sampled_from(sorted(branches)))
        previous, branches[name] = branches[name], _any_id(data, info)
        return dataclasses.replace(info, branches=branches), ru.BranchReset(name, previous)
    if what == "branch_delete":
        others = sorted(set(branches) - {"main"})
        if not others:
            return None
        name = data.draw(st.sampled_from(others))
        previous = branches.pop(name)
        return dataclasses.replace(info, branches=branches), ru.BranchDeleted(name, previous)
    if what == "tag_create":
        name = data.draw(names)
        if name in tags or name in info.deleted_tags:
            return None
        tags[name] = _any_id(data, info)
        return dataclasses.replace(info, tags=tags), ru.TagCreated(name)
    if what == "tag_delete":
        live = sorted(set(tags) - set(info.deleted_tags))  # a name is deleted once
        if not live:
            return None
        name = data.draw(st.sampled_from(live))
        previous = tags.pop(name)
        deleted = (*info.deleted_tags, name)
        new = dataclasses.replace(info, tags=tags, deleted_tags=deleted)
        return new, ru.TagDeleted(name, previous)
    if what == "status":
        status = data.draw(statuses)
        return dataclasses.replace(info, status=status), ru.RepoStatusChanged(status)
    if what == "metadata":
        return dataclasses.replace(info, metadata=data.draw(metadata)), ru.MetadataChanged()
    if what == "flags":
        on, off = data.draw(flags), data.draw(flags)
        new = dataclasses.replace(info, enabled_feature_flags=on, disabled_feature_flags=off)
        return new, ru.FeatureFlagChanged(7, None)
    if what == "config":
        config = data.draw(st.none() | st.binary(max_size=20))
        return dataclasses.replace(info, config=config), ru.ConfigChanged()
    if what == "nothing":
        return dataclasses.replace(info), ru.GCRan()
    if what == "many_branches":
        target, k = _any_id(data, info), 0
        while len(branches) < len(info.branches) + 20:  # more than a splice takes
            branches.setdefault(f"many-{k}", target)
            k += 1
        return dataclasses.replace(info, branches=branches), ru.BranchCreated("many")
    # dropped_snapshot: one no ref or parent names goes (as expiration does)
    named = {*branches.values(), *tags.values()}
    named |= {s.parent_id for s in info.snapshots if s.parent_id is not None}
    unnamed = [s for s in info.snapshots if s.id not in named]
    if not unnamed:
        return None
    gone = data.draw(st.sampled_from(unnamed))
    listed = tuple(s for s in info.snapshots if s is not gone)
    return dataclasses.replace(info, snapshots=listed), ru.ExpirationRan()


def _check(info: RepoInfo, data: bytes) -> None:
    assert data == encode_repo_info_segmented(info)
    assert data == encode_repo_info_segmented(_fresh(info))
    decoded = decode_repo_info(data)
    assert decoded == info
    assert decoded == decode_repo_info(encode_repo_info(info))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.large_base_example, HealthCheck.too_slow],
)
@given(repo_infos(), st.integers(1, 6), st.data())
def test_spliced_files_are_the_files_written_whole(
    start: RepoInfo, limit: int, data: st.DataObject
) -> None:
    """Random sequences of changes, each pushed onto the operations log (which reaches
    its limit and links to older updates); after each, the file written by splicing."""
    forget()
    info = start
    _check(info, encode_kept(info))
    for _ in range(data.draw(st.integers(1, 25))):
        what = data.draw(st.sampled_from(SPLICED + WHOLE))
        made = _change(what, data, info)
        if made is None:
            continue
        new, kind = made
        try:
            at = next_update_time(info.latest_updates[0].updated_at)
        except FormatError:
            return  # the log reached the end of time
        backup = f"repo.{len(info.latest_updates)}.{data.draw(names)}"
        log, before = push_update(info, kind, at, backup, limit)
        new = dataclasses.replace(new, latest_updates=log, repo_before_updates=before)
        spliced = encode_spliced(new)
        assert (spliced is not None) == (what in SPLICED), what
        written = spliced if spliced is not None else encode_kept(new)
        _check(new, written)
        info = new


def _reference_push(
    info: RepoInfo, kind: ru.UpdateKind, at: datetime, backup: str, limit: int
) -> tuple[tuple[Update, ...], str | None]:
    """``push_update`` as it was written first: a walk over the whole log."""
    old = list(info.latest_updates)
    old[0] = Update(old[0].kind, old[0].updated_at, backup)
    before, kept = info.repo_before_updates, []
    for update in [Update(kind, at, None), *old]:
        if len(kept) >= limit and update.backup_path is not None:
            before = update.backup_path
            break
        kept.append(update)
    return tuple(kept), before


@settings(max_examples=100, deadline=None)
@given(repo_infos(), st.integers(-1, 7), st.lists(st.none() | names, max_size=8))
def test_push_update_cuts_the_log_where_a_walk_over_it_does(
    info: RepoInfo, limit: int, paths: list[str | None]
) -> None:
    latest = info.latest_updates[0].updated_at
    older = [Update(ru.GCRan(), latest, path) for path in paths]
    info = dataclasses.replace(info, latest_updates=(*info.latest_updates, *older))
    try:
        at = next_update_time(max(u.updated_at for u in info.latest_updates))
    except FormatError:
        return
    assert push_update(info, ru.GCRan(), at, "b", limit) == _reference_push(
        info, ru.GCRan(), at, "b", limit
    )


def _chain(count: int) -> RepoInfo:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = SnapshotInfo(SnapshotId(bytes([128] * 12)), None, t0, "first")
    return RepoInfo(
        branches={"main": first.id},
        tags={},
        snapshots=(first,),
        status=ru.RepoStatus(ru.Availability.ONLINE, t0),
        latest_updates=tuple(Update(ru.GCRan(), t0, None) for _ in range(count)),
    )


@pytest.mark.parametrize("position", ["before", "after"])
def test_a_snapshot_inserted_first_or_last_shifts_the_right_indices(position: str) -> None:
    """The indices of refs and parents at and after the inserted snapshot go up by one,
    those before it do not: 'main' names the first snapshot, which a snapshot inserted
    before it moves to index 1."""
    forget()
    info = _chain(1)
    encode_kept(info)
    raw = bytes([0] * 12) if position == "before" else bytes([255] * 12)
    added = SnapshotInfo(SnapshotId(raw), info.branches["main"], info.status.set_at, "new")
    at = next_update_time(info.latest_updates[0].updated_at)
    log, _ = push_update(info, ru.NewDetachedSnapshot(added.id), at, "b")
    new = dataclasses.replace(
        info, snapshots=with_snapshot(info.snapshots, added), latest_updates=log
    )
    data = encode_spliced(new)
    assert data is not None
    decoded = decode_repo_info(data)
    assert decoded.branches == {"main": info.branches["main"]}
    assert decoded.snapshot(added.id) == added
    assert data == encode_repo_info_segmented(_fresh(new))


def test_a_list_not_made_from_the_kept_one_is_written_whole() -> None:
    """Equal snapshots in a list made otherwise (decoded, sorted anew) say nothing of
    where the new one went: no splice."""
    forget()
    info = _chain(1)
    encode_kept(info)
    base_layout = repo_info_splice._kept[-1]
    added = SnapshotInfo(SnapshotId(bytes([1] * 12)), None, info.status.set_at, "new")
    other = decode_repo_info(encode_repo_info(info))
    made = dataclasses.replace(info, snapshots=with_snapshot(tuple(other.snapshots), added))
    assert derive(base_layout, made) is None
    spliced = dataclasses.replace(info, snapshots=with_snapshot(info.snapshots, added))
    assert derive(base_layout, spliced) is not None
