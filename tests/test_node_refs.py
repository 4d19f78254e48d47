"""Chunk references kept decoded between commits (``AssetManager.node_refs``): a commit
reads back the references the previous one wrote without decoding them, and whatever
moved the session (another session's commit and a rebase, an amend, a discard, a reset
branch, a second repository object on the same storage) it never sees those of
another manifest: each commit's result is checked against a fresh repository, which
decodes everything."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.format.ids import ChunkId, ManifestId, NodeId, SnapshotId
from aicechunk.format.manifest import NativeRef
from aicechunk.format.snapshot import ArrayNodeData
from aicechunk.node_refs import NodeRefs

N = 8


async def _repo(tmp_path: Path, spec: int) -> aic.Repository:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path), spec_version=spec)
    s = await repo.writable_session("main")
    x = await zas.create_array(s.store, name="x", shape=(N,), chunks=(1,), dtype="i4")
    await x.setitem(..., np.arange(N, dtype="i4"))
    await s.commit("all chunks")
    return repo


async def _set(session: aic.Session, index: int, value: int) -> None:
    x = await zas.open_array(store=session.store, path="x", mode="r+")
    await x.setitem(slice(index, index + 1), np.array([value], dtype="i4"))


async def _stored(tmp_path: Path, ref: str, **kind: str) -> list[int]:
    """Array ``x`` at ``ref`` (a branch, or ``snapshot_id=``) as a fresh repository reads it."""
    fresh = await aic.Repository.open(aic.local_filesystem_storage(tmp_path))
    session = await fresh.readonly_session(**(kind or {"branch": ref}))
    x = await zas.open_array(store=session.store, path="x", mode="r")
    return [int(v) for v in np.asarray(await x.getitem(...))]


def _manifest(repo: aic.Repository, snapshot_id: str) -> tuple[ManifestId, NodeId]:
    snap = repo._assets._snapshots.get(SnapshotId.from_str(snapshot_id))
    assert snap is not None
    (node,) = [n for n in snap.nodes if isinstance(n.node_data, ArrayNodeData)]
    assert isinstance(node.node_data, ArrayNodeData)
    (mref,) = node.node_data.manifests
    return mref.object_id, node.id


@pytest.mark.parametrize("spec", [1, 2])
async def test_a_commit_reads_back_the_references_the_last_one_wrote_undecoded(
    tmp_path: Path, spec: int
) -> None:
    repo = await _repo(tmp_path, spec)
    first = _manifest(repo, await repo.lookup_branch("main"))
    assert repo._assets.node_refs.kept(*first)
    s = await repo.writable_session("main")
    await _set(s, 3, -3)
    second = _manifest(repo, await s.commit("one chunk"))
    assert second != first and repo._assets.node_refs.kept(*second)
    # the first manifest was never decoded: its references came from the kept ones
    assert repo._assets._manifests.get(first[0]) is None
    assert await _stored(tmp_path, "main") == [0, 1, 2, -3, 4, 5, 6, 7]


@pytest.mark.parametrize("spec", [1, 2])
async def test_two_sessions_and_a_rebase(tmp_path: Path, spec: int) -> None:
    repo = await _repo(tmp_path, spec)
    one, two = await repo.writable_session("main"), await repo.writable_session("main")
    await _set(one, 0, -10)
    await _set(two, 1, -11)
    await one.commit("one")
    await two.commit("two", rebase_with=aic.ConflictDetector())
    assert await _stored(tmp_path, "main") == [-10, -11, 2, 3, 4, 5, 6, 7]
    three = await repo.writable_session("main")
    await _set(three, 2, -12)
    await three.commit("three")
    assert await _stored(tmp_path, "main") == [-10, -11, -12, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("spec", [1, 2])
async def test_amend_discard_and_reset(tmp_path: Path, spec: int) -> None:
    repo = await _repo(tmp_path, spec)
    base = await repo.lookup_branch("main")
    s = await repo.writable_session("main")
    await _set(s, 1, -1)
    await s.commit("B")
    if spec == 2:
        s = await repo.writable_session("main")
        await _set(s, 2, -2)
        amended = await s.amend("B, amended")
        assert await _stored(tmp_path, "main") == [0, -1, -2, 3, 4, 5, 6, 7]
        assert await _stored(tmp_path, "", snapshot_id=amended) == [0, -1, -2, 3, 4, 5, 6, 7]
    s = await repo.writable_session("main")
    await _set(s, 4, -4)
    s.discard_changes()
    await _set(s, 5, -5)
    await s.commit("C")
    expected = [0, -1, -2 if spec == 2 else 2, 3, 4, -5, 6, 7]
    assert await _stored(tmp_path, "main") == expected
    # back to the first commit: its manifest, not the tip's, is the base
    await repo.reset_branch("main", base)
    s = await repo.writable_session("main")
    await _set(s, 6, -6)
    await s.commit("D")
    assert await _stored(tmp_path, "main") == [0, 1, 2, 3, 4, 5, -6, 7]
    # a branch from the first commit, committed to while main's tip is kept too
    await repo.create_branch("other", base)
    s = await repo.writable_session("other")
    await _set(s, 7, -7)
    await s.commit("E")
    assert await _stored(tmp_path, "other") == [0, 1, 2, 3, 4, 5, 6, -7]
    assert await _stored(tmp_path, "main") == [0, 1, 2, 3, 4, 5, -6, 7]


@pytest.mark.parametrize("spec", [1, 2])
async def test_two_repository_objects_on_one_storage(tmp_path: Path, spec: int) -> None:
    repo = await _repo(tmp_path, spec)
    other = await aic.Repository.open(aic.local_filesystem_storage(tmp_path))
    s = await other.writable_session("main")
    await _set(s, 0, -20)
    await s.commit("through the other")
    # ``repo`` kept the references of the commit before: its session starts from the tip
    s = await repo.writable_session("main")
    await _set(s, 1, -21)
    await s.commit("through the first")
    assert await _stored(tmp_path, "main") == [-20, -21, 2, 3, 4, 5, 6, 7]


def test_kept_references_are_copies_and_keyed_by_manifest_and_node() -> None:
    kept = NodeRefs(100)
    mid, nid = ManifestId.random(), NodeId.random()
    ref = NativeRef(ChunkId(os.urandom(12)), 0, 4)
    kept.put(mid, nid, {(0,): ref})
    got = kept.get(mid, nid)
    assert got == {(0,): ref}
    got[(1,)] = ref  # the caller's copy
    assert kept.get(mid, nid) == {(0,): ref}
    assert kept.get(ManifestId.random(), nid) is None
    assert kept.get(mid, NodeId.random()) is None
    kept.put(mid, nid, {(i,): ref for i in range(26)}, owned=True)  # over a quarter: not kept
    assert kept.get(mid, nid) == {(0,): ref}
    assert NodeRefs(0).get(mid, nid) is None
    mine = {(0,): ref}
    kept.put(mid, nid, mine)  # a copy
    mine[(1,)] = ref
    assert kept.get(mid, nid) == {(0,): ref}
