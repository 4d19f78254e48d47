"""Hypothesis strategies for the spec v2 format objects."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from aicechunk.format import repo_updates as ru
from aicechunk.format.repo_info import RepoInfo, SnapshotInfo
from aicechunk.format.snapshot import ArrayNodeData, DimensionShape, Snapshot
from aicechunk.format.transaction_log import MoveOperation, TransactionLog
from tests.format.strategies import (
    U32,
    U64,
    node_ids,
    path_names,
    snapshot_ids,
    snapshots,
    transaction_logs,
)

times = st.integers(0, 253_402_300_799_999_999).map(
    lambda us: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
)
names = st.text(min_size=1, max_size=12)
# JSON values as FlexBuffers hold them: map keys end at a zero byte, so they hold none
keys = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8
)
flex_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=10,
)
metadata = st.dictionaries(st.text(max_size=10), flex_values, max_size=4)
statuses = st.builds(ru.RepoStatus, st.sampled_from(ru.Availability), times, st.none() | names)

#: the kinds commits, ref changes and tags make (written without the builder)
ref_update_kinds: st.SearchStrategy[ru.UpdateKind] = st.one_of(
    st.builds(ru.TagCreated, names),
    st.builds(ru.TagDeleted, names, snapshot_ids),
    st.builds(ru.BranchCreated, names),
    st.builds(ru.BranchDeleted, names, snapshot_ids),
    st.builds(ru.BranchReset, names, snapshot_ids),
    st.builds(ru.NewCommit, names, snapshot_ids),
    st.builds(ru.CommitAmended, names, snapshot_ids, snapshot_ids),
    st.builds(ru.NewDetachedSnapshot, snapshot_ids),
)
update_kinds: st.SearchStrategy[ru.UpdateKind] = st.one_of(
    st.just(ru.RepoInitialized()),
    st.builds(ru.RepoMigrated, st.integers(0, 255), st.integers(0, 255)),
    st.just(ru.ConfigChanged()),
    st.just(ru.MetadataChanged()),
    ref_update_kinds,
    st.just(ru.GCRan()),
    st.just(ru.ExpirationRan()),
    st.builds(ru.FeatureFlagChanged, st.integers(0, 2**16 - 1), st.none() | st.booleans()),
    st.builds(ru.RepoStatusChanged, statuses),
)
updates = st.builds(ru.Update, update_kinds, times, st.none() | names)
flags = st.none() | st.lists(st.integers(0, 2**16 - 1), max_size=4, unique=True).map(tuple)


@st.composite
def repo_infos(draw: st.DrawFn) -> RepoInfo:
    ids = draw(st.lists(snapshot_ids, min_size=1, max_size=6, unique=True))
    infos = []
    for i, sid in enumerate(ids):
        parent = None if i == 0 else ids[draw(st.integers(0, i - 1))]
        pruned = tuple(draw(st.lists(snapshot_ids, max_size=2)))
        infos.append(
            SnapshotInfo(
                sid, parent, draw(times), draw(st.text(max_size=20)), draw(metadata), pruned
            )
        )
    refs = st.dictionaries(names, st.sampled_from(ids), max_size=3)
    branches = {"main": draw(st.sampled_from(ids)), **draw(refs)}
    return RepoInfo(
        branches=branches,
        tags=draw(refs),
        snapshots=tuple(infos),
        status=draw(statuses),
        latest_updates=tuple(draw(st.lists(updates, min_size=1, max_size=5))),
        deleted_tags=tuple(draw(st.lists(names, max_size=3, unique=True))),
        metadata=draw(metadata),
        repo_before_updates=draw(st.none() | names),
        config=draw(st.none() | st.binary(max_size=20)),
        enabled_feature_flags=draw(flags),
        disabled_feature_flags=draw(flags),
        extra=draw(st.none() | st.binary(max_size=8)),
    )


@st.composite
def snapshots_v2(draw: st.DrawFn) -> Snapshot:
    """A v2 snapshot: dimensions as v2 stores them (num_chunks), no parent."""
    snap = draw(snapshots())
    nodes = []
    for node in snap.nodes:
        data = node.node_data
        if isinstance(data, ArrayNodeData):
            shape = []
            for _ in data.shape:
                length, count = draw(U64), draw(U32)
                shape.append(DimensionShape(length, -(-length // count) if count else 0, count))
            data = dataclasses.replace(data, shape=tuple(shape))
        nodes.append(dataclasses.replace(node, node_data=data))
    metadata = draw(st.dictionaries(st.text(max_size=10), flex_values, max_size=4))
    return dataclasses.replace(
        snap, parent_id=None, nodes=tuple(nodes), metadata=metadata, spec_version=2
    )


# node paths a move can name (the decoder refuses '.' and '..' segments)
move_names = path_names.filter(lambda name: name not in (".", ".."))
paths = st.lists(move_names, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
moves = st.builds(MoveOperation, paths, paths, node_ids, st.booleans())


@st.composite
def transaction_logs_v2(draw: st.DrawFn) -> TransactionLog:
    log = draw(transaction_logs())
    return dataclasses.replace(
        log, moved_nodes=tuple(draw(st.lists(moves, max_size=4))), spec_version=2
    )
