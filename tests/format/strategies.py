"""Hypothesis strategies for format objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from aicechunk.format.ids import ChunkId, ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import ChunkRef, InlineRef, NativeRef, VirtualRef
from aicechunk.format.snapshot import (
    ArrayNodeData,
    DimensionShape,
    GroupNodeData,
    ManifestFileInfo,
    ManifestRef,
    NodeSnapshot,
    Snapshot,
)
from aicechunk.format.transaction_log import TransactionLog

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)

snapshot_ids = st.binary(min_size=12, max_size=12).map(SnapshotId)
manifest_ids = st.binary(min_size=12, max_size=12).map(ManifestId)
chunk_ids = st.binary(min_size=12, max_size=12).map(ChunkId)
node_ids = st.binary(min_size=8, max_size=8).map(NodeId)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)  # what icechunk can read back
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)

chunk_refs: st.SearchStrategy[ChunkRef] = st.one_of(
    st.builds(NativeRef, chunk_ids, U64, U64),
    st.builds(InlineRef, st.binary(max_size=64)),
    st.builds(
        VirtualRef,
        st.text(min_size=1, max_size=40).map(lambda s: "s3://bucket/" + s),
        U64,
        U64,
        st.none(),
        st.none(),
    ),
    st.builds(VirtualRef, st.just("gs://b/f.nc"), U64, U64, st.text(min_size=1, max_size=20)),
    st.builds(VirtualRef, st.just("file:///x"), U64, U64, st.none(), st.integers(1, 2**32 - 1)),
)

path_names = st.text(
    alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=10,
)


@st.composite
def nodes(draw: st.DrawFn) -> NodeSnapshot:
    parts = draw(st.lists(path_names, max_size=3))
    path = "/" + "/".join(parts)
    if draw(st.booleans()):
        return NodeSnapshot(draw(node_ids), path, draw(st.binary(max_size=50)), GroupNodeData())
    ndim = draw(st.integers(0, 3))
    shape = tuple(DimensionShape(draw(U64), draw(U64)) for _ in range(ndim))
    names = draw(st.none() | st.tuples(*[st.none() | st.text(max_size=5)] * ndim))
    manifests = tuple(
        ManifestRef(draw(manifest_ids), tuple((draw(U32), draw(U32)) for _ in range(ndim)))
        for _ in range(draw(st.integers(0, 2)))
    )
    return NodeSnapshot(
        draw(node_ids), path, draw(st.binary(max_size=50)), ArrayNodeData(shape, names, manifests)
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    node_list = draw(st.lists(nodes(), max_size=6, unique_by=lambda n: n.path))
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        microseconds=draw(st.integers(0, 253_402_300_799_999_999))
    )
    return Snapshot(
        id=draw(snapshot_ids),
        parent_id=draw(st.none() | snapshot_ids),
        flushed_at=when,
        message=draw(st.text(max_size=40)),
        metadata=draw(st.dictionaries(st.text(max_size=10), json_values, max_size=4)),
        nodes=tuple(node_list),
        manifest_files=tuple(
            draw(
                st.lists(
                    st.builds(ManifestFileInfo, manifest_ids, U64, U32),
                    max_size=3,
                    unique_by=lambda f: f.id,
                )
            )
        ),
    )


coords = st.lists(U32, min_size=0, max_size=4).map(tuple)


@st.composite
def transaction_logs(draw: st.DrawFn) -> TransactionLog:
    def id_tuple() -> tuple[NodeId, ...]:
        return tuple(sorted(draw(st.lists(node_ids, max_size=3, unique=True))))

    chunks = draw(st.dictionaries(node_ids, st.lists(coords, max_size=4, unique=True), max_size=3))
    return TransactionLog(
        id=draw(snapshot_ids),
        new_groups=id_tuple(),
        new_arrays=id_tuple(),
        deleted_groups=id_tuple(),
        deleted_arrays=id_tuple(),
        updated_groups=id_tuple(),
        updated_arrays=id_tuple(),
        updated_chunks={k: tuple(sorted(v)) for k, v in chunks.items()},
    )
