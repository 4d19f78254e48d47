"""icechunk 2.3.0 (in process) reads a repository whose repo info file our changes wrote
by splicing (``format/repo_info_splice.py``) many times over: commits on many branches,
branches created, reset and deleted, tags created and deleted, an amend, metadata and a
status change, the operations log cut at a small limit and linked to older backups.
Every change but the first after an open (and the amend) is spliced; icechunk lists the
same refs, ancestry and operations log, reads the data and commits on top."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
import aicechunk.repo_info_store as store_module
from aicechunk.format.repo_info import REPO_INFO_KEY, decode_repo_info, encode_repo_info
from tests.one_value import commit_value

icechunk = pytest.importorskip("icechunk")


async def test_icechunk_reads_a_repository_written_by_spliced_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spliced: list[bool] = []
    real: Callable[[Any], bytes | None] = store_module.encode_spliced

    def counted(info: Any) -> bytes | None:
        found = real(info)
        spliced.append(found is not None)
        return found

    monkeypatch.setattr(store_module, "encode_spliced", counted)
    root = tmp_path / "repo"
    storage = aic.local_filesystem_storage(str(root))
    config = aic.RepositoryConfig()
    config.num_updates_per_repo_info_file = 7  # the log is cut, and linked, again and again
    repo = await aic.Repository.create(storage, config=config, spec_version=2)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(16,), chunks=(1,), dtype="i4", fill_value=0)
    base = await session.commit("array")
    expected = {"main": (15, 0)}  # each branch: an index and the value there
    for b in range(8):
        name = f"b{b}"
        await repo.create_branch(name, base)
        for c in range(3):
            await commit_value(repo, name, b, 10 * b + c)
        expected[name] = (b, 10 * b + 2)
    await repo.create_tag("kept", base)
    await repo.create_tag("gone", base)
    await repo.delete_tag("gone")
    await repo.delete_branch("b7")
    del expected["b7"]
    tip = await repo.lookup_branch("b1")
    await repo.reset_branch("b6", tip)
    expected["b6"] = expected["b1"]
    amending = await repo.writable_session("b2")
    arr = await zas.open_array(store=amending.store, path="x", mode="r+")
    await arr.setitem(slice(2, 3), np.array([99], dtype="i4"))
    await amending.amend("b2 amended")
    expected["b2"] = (2, 99)
    await repo.set_metadata({"owner": "spliced"})
    await commit_value(repo, "main", 15, 150)
    expected["main"] = (15, 150)
    with_metadata = await repo.writable_session("b0")  # a snapshot entry with items
    arr = await zas.open_array(store=with_metadata.store, path="x", mode="r+")
    await arr.setitem(slice(0, 1), np.array([7], dtype="i4"))
    properties = {"run": 3, "tags": ["a", "é"], "note": None, "ok": True}
    await with_metadata.commit("with metadata", metadata=properties)
    expected["b0"] = (0, 7)
    await repo.set_status(aic.RepoStatus(aic.RepoAvailability.read_only, None, "done"))
    assert spliced.count(False) <= 2  # the first change (no file written yet) and the amend
    assert spliced.count(True) >= 30

    data = (root / REPO_INFO_KEY).read_bytes()
    info = decode_repo_info(data)
    assert encode_repo_info(info) != data  # not icechunk's layout, the same content
    ours_log = [(type(u.kind).__name__, u.updated_at) async for u in repo.ops_log()]
    assert len(ours_log) > 7 * 4  # read through the linked backups

    theirs = icechunk.Repository.open(icechunk.local_filesystem_storage(str(root)))
    assert set(theirs.list_branches()) == set(expected)
    assert set(theirs.list_tags()) == {"kept"}
    their_log = [(type(u.kind).__name__, u.updated_at) for u in theirs.ops_log()]
    assert [t for _, t in their_log] == [t for _, t in ours_log]
    assert [k for k, _ in their_log] == [k for k, _ in ours_log]
    assert theirs.get_metadata() == {"owner": "spliced"}
    assert next(iter(theirs.ancestry(branch="b0"))).metadata == properties
    for branch, (index, value) in expected.items():
        mine = [s.id async for s in repo.ancestry(branch=branch)]
        assert [s.id for s in theirs.ancestry(branch=branch)] == mine
        read = theirs.readonly_session(branch)
        assert zarr.open_array(read.store, path="x", mode="r")[index] == value

    # icechunk can change it too: its status back online, a commit; ours reads that
    theirs.set_status(icechunk.RepoStatus(icechunk.RepoAvailability.online, None, None))
    write = theirs.writable_session("b3")
    zarr.open_array(write.store, path="x", mode="r+")[3] = -3
    their_commit = write.commit("theirs")
    again = await aic.Repository.open(storage)
    assert (await again.lookup_branch("b3")) == their_commit
    await commit_value(again, "b3", 4, -4)
    assert [s.message async for s in again.ancestry(branch="b3")][:2] == ["b3 -4", "theirs"]
