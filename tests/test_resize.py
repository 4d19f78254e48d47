"""Resizing arrays as zarr does it, compared with icechunk 2.x: shrinking drops the chunks
past the new end from listings and the next snapshot, and status and the transaction log
list them as changed; a delete past the end is refused; growing back shows the fill
value, never stale data."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import zarr

import aicechunk as aic
from tests.oracle import SPEC_VERSIONS, create_kwargs, needs_icechunk2


def scenario(store: Any, commit: Any, status: Any, coords: Any) -> dict[str, Any]:
    """The same user steps on either library, through zarr's sync API."""
    seen: dict[str, Any] = {}
    a = zarr.create_array(store(), name="a", shape=(6,), chunks=(1,), dtype="i4", fill_value=-1)
    a[:] = np.arange(6)
    commit("six")

    a = zarr.open_array(store(), path="a")
    a[5] = 55
    a.resize((3,))
    seen["status_after_shrink"] = status()
    seen["coords_after_shrink"] = coords()
    commit("shrink")
    seen["coords_committed"] = coords()

    a = zarr.open_array(store(), path="a")
    a.resize((6,))  # growing back shows the fill value, never the old chunks
    seen["grown"] = a[:].tolist()
    commit("grow")

    a = zarr.open_array(store(), path="a")
    a[1] = 11
    a.resize((2,))
    a.resize((6,))  # shrink and grow back in one session
    seen["back"] = a[:].tolist()
    seen["status_back"] = status()
    commit("back")
    seen["final"] = zarr.open_array(store(), path="a")[:].tolist()
    return seen


def plain_diff(diff: Any) -> dict[str, Any]:
    fields = ("new_groups", "new_arrays", "deleted_groups", "deleted_arrays")
    out: dict[str, Any] = {f: sorted(getattr(diff, f)) for f in fields}
    out["updated_groups"] = sorted(diff.updated_groups)
    out["updated_arrays"] = sorted(diff.updated_arrays)
    out["updated_chunks"] = {
        p: sorted(map(tuple, c)) for p, c in sorted(diff.updated_chunks.items())
    }
    return out


def ours(path: Path, spec_version: int) -> dict[str, Any]:
    async def open_repo() -> aic.Repository:
        storage = aic.local_filesystem_storage(path)
        return await aic.Repository.create(storage, spec_version=spec_version)

    repo = asyncio.run(open_repo())
    state: dict[str, Any] = {}

    def store() -> Any:
        if "session" not in state:
            state["session"] = asyncio.run(repo.writable_session("main"))
        return state["session"].store

    def commit(message: str) -> None:
        asyncio.run(state.pop("session").commit(message))

    def status() -> dict[str, list[tuple[int, ...]]]:
        diff = asyncio.run(state["session"].status())
        return {p: sorted(c) for p, c in diff.updated_chunks.items()}

    def coords() -> list[tuple[int, ...]]:
        async def listed() -> list[tuple[int, ...]]:
            session = state.get("session") or await repo.readonly_session(branch="main")
            return [c async for c in session.chunk_coords("/a")]

        return asyncio.run(listed())

    seen = scenario(store, commit, status, coords)

    async def diffs() -> list[dict[str, Any]]:
        ids = [info.id async for info in repo.ancestry(branch="main")]
        return [
            plain_diff(await repo.diff(from_snapshot_id=ids[j], to_snapshot_id=ids[i]))
            for i in range(len(ids))
            for j in range(i + 1, len(ids))
        ]

    seen["diffs"] = asyncio.run(diffs())
    return seen


def theirs(path: Path, spec_version: int) -> dict[str, Any]:
    storage = icechunk.local_filesystem_storage(str(path))
    repo = icechunk.Repository.create(storage, **create_kwargs(spec_version))
    state: dict[str, Any] = {}

    def store() -> Any:
        if "session" not in state:
            state["session"] = repo.writable_session("main")
        return state["session"].store

    def commit(message: str) -> None:
        state.pop("session").commit(message)

    def status() -> dict[str, list[tuple[int, ...]]]:
        diff = state["session"].status()
        return {p: sorted(map(tuple, c)) for p, c in diff.updated_chunks.items()}

    def coords() -> list[tuple[int, ...]]:
        async def listed() -> list[tuple[int, ...]]:
            session = state.get("session") or repo.readonly_session(branch="main")
            # icechunk 2.3.0 bug: a writable session also lists the chunks deleted in it
            # (past a shrunk array's end too), so its listing is taken where a chunk exists
            return [
                tuple(c)
                async for c in session.chunk_coordinates("/a")
                if await session.store.exists("a/c/" + "/".join(map(str, c)))
            ]

        return asyncio.run(listed())

    seen = scenario(store, commit, status, coords)
    ids = [info.id for info in repo.ancestry(branch="main")]
    seen["diffs"] = [
        plain_diff(repo.diff(from_snapshot_id=ids[j], to_snapshot_id=ids[i]))
        for i in range(len(ids))
        for j in range(i + 1, len(ids))
    ]
    return seen


@needs_icechunk2
@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
def test_resizing_matches_icechunk(tmp_path: Path, spec_version: int) -> None:
    mine = ours(tmp_path / "ours", spec_version)
    other = theirs(tmp_path / "ic", spec_version)
    assert mine.pop("diffs") == other.pop("diffs")  # every pair of commits
    assert mine == other
    assert mine["grown"] == [0, 1, 2, -1, -1, -1]
    assert mine["final"] == [0, 11, -1, -1, -1, -1]


async def test_diff_after_shrinking(tmp_path: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "r"))
    session = await repo.writable_session("main")
    a = zarr.create_array(session.store, name="a", shape=(4,), chunks=(1,), dtype="i4")
    a[:] = np.arange(4)
    first = await session.commit("four")
    session = await repo.writable_session("main")
    zarr.open_array(session.store, path="a").resize((2,))
    second = await session.commit("two")
    diff = await repo.diff(from_snapshot_id=first, to_snapshot_id=second)
    # the chunks the shrink deleted are logged, as icechunk 2.x logs them
    assert diff.updated_arrays == {"/a"} and diff.updated_chunks == {"/a": {(2,), (3,)}}


async def test_delete_past_the_end_records_nothing() -> None:
    """Deleting a chunk that cannot exist is a no-op, as for any missing key of a zarr
    store (icechunk raises instead); it is never recorded as a change."""
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="i4")
    await session.commit("empty")
    session = await repo.writable_session("main")
    await session.store.delete("a/c/2")
    await session.store.delete("a/c/0/0")  # wrong rank
    assert not session.has_uncommitted_changes
    assert (await session.status()).updated_chunks == {}


def shrink_diffs(lib: str, path: Path, spec_version: int) -> list[dict[str, list[tuple[int, ...]]]]:
    """``updated_chunks`` of the status and then of the commit when a never-written array
    is shrunk, with either library: to (2,) (every deleted chunk lies past the end) and to
    (0,) (a zero-length dimension)."""
    out = []
    for i, new_shape in enumerate([(2,), (0,)]):
        where = path / f"{lib}{i}"
        if lib == "ic":
            ic_storage = icechunk.local_filesystem_storage(str(where))
            ic_repo = icechunk.Repository.create(ic_storage, **create_kwargs(spec_version))
            ic_session = ic_repo.writable_session("main")
            zarr.create_array(ic_session.store, name="a", shape=(4,), chunks=(1,), dtype="i4")
            zarr.open_array(ic_session.store, path="a").resize(new_shape)
            status: Any = ic_session.status()
            sid = ic_session.commit("shrunk")
            first = [x.id for x in ic_repo.ancestry(branch="main")][-1]
            diff: Any = ic_repo.diff(from_snapshot_id=first, to_snapshot_id=sid)
        else:

            async def run(where: Path = where, new_shape: tuple[int] = new_shape) -> Any:
                storage = aic.local_filesystem_storage(where)
                repo = await aic.Repository.create(storage, spec_version=spec_version)
                first = await repo.lookup_branch("main")
                session = await repo.writable_session("main")
                zarr.create_array(session.store, name="a", shape=(4,), chunks=(1,), dtype="i4")
                zarr.open_array(session.store, path="a").resize(new_shape)
                status = await session.status()
                sid = await session.commit("shrunk")
                return status, await repo.diff(from_snapshot_id=first, to_snapshot_id=sid)

            status, diff = asyncio.run(run())
        for d in (status, diff):
            out.append({p: sorted(map(tuple, c)) for p, c in d.updated_chunks.items()})
    return out


@needs_icechunk2
@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
def test_shrink_logs_chunks_as_icechunk_does(tmp_path: Path, spec_version: int) -> None:
    """Found by tests/test_differential.py: zarr's resize deletes the chunks past the new
    end, written or not; icechunk 2.x's status and transaction log list every one of them
    (icechunk 1.x dropped them, keeping the array's entry, and logged index 0 of a
    zero-length dimension)."""
    ours = shrink_diffs("aic", tmp_path, spec_version)
    assert ours == shrink_diffs("ic", tmp_path, spec_version)
    past_two, all_four = {"/a": [(2,), (3,)]}, {"/a": [(0,), (1,), (2,), (3,)]}
    assert ours == [past_two, past_two, all_four, all_four]
