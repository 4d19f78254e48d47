"""icechunk 2.3.0 (in process) reads the repo info files our changes write from kept
segments (``format/repo_info_segments.py``): after changes of a writer that kept its
segments, and of one that opened the repository cold (lazy decoding, then segments made
for everything), the branches, tags, ancestry, ops log and data are icechunk's to read,
and icechunk commits on top of them; ours then read and extend that."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.format.repo_info import REPO_INFO_KEY, decode_repo_info, encode_repo_info
from tests.one_value import commit_value

icechunk = pytest.importorskip("icechunk")


async def test_icechunk_reads_and_extends_files_written_from_segments(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(str(root))
    repo = await aic.Repository.create(storage, spec_version=2)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(8,), chunks=(1,), dtype="i4", fill_value=0)
    base = await session.commit("array")
    for b in range(6):  # warm: every change starts from the segments of the last
        await repo.create_branch(f"b{b}", base)
        await commit_value(repo, f"b{b}", b, b + 1)
    await repo.create_tag("t", base)
    cold = await aic.Repository.open(storage)  # cold: decoded lazily, segments made anew
    await commit_value(cold, "main", 7, 70)
    await cold.delete_branch("b5")
    data = (root / REPO_INFO_KEY).read_bytes()
    info = decode_repo_info(data)
    assert encode_repo_info(info) != data  # not icechunk's layout, the same content

    theirs = icechunk.Repository.open(icechunk.local_filesystem_storage(str(root)))
    assert set(theirs.list_branches()) == {"main", *(f"b{b}" for b in range(5))}
    assert set(theirs.list_tags()) == {"t"}
    ours_log = [(type(u.kind).__name__, u.updated_at) for u in info.latest_updates]
    their_log = [(type(u.kind).__name__, u.updated_at) for u in theirs.ops_log()]
    assert [k for k, _ in their_log] == [k for k, _ in ours_log]
    assert [t for _, t in their_log] == [t for _, t in ours_log]
    for branch in ("main", "b3"):
        mine = [s.id async for s in cold.ancestry(branch=branch)]
        assert [s.id for s in theirs.ancestry(branch=branch)] == mine
    read = theirs.readonly_session("b3")
    assert zarr.open_array(read.store, path="x", mode="r")[3] == 4
    write = theirs.writable_session("b2")
    zarr.open_array(write.store, path="x", mode="r+")[2] = 99
    tip = write.commit("icechunk on top")

    again = await aic.Repository.open(storage)
    assert await again.lookup_branch("b2") == tip
    await commit_value(again, "b2", 1, 5)
    kinds = [type(u.kind).__name__ async for u in again.ops_log()]
    assert kinds[:3] == ["NewCommit", "NewCommit", "BranchDeleted"]
    assert len(list(theirs.ops_log())) == len(kinds)
