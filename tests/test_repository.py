"""Repository, sessions and commits: versioned reads and writes."""

from __future__ import annotations

import asyncio
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.errors import UnrepresentableValueError
from aicechunk.format.ids import FIRST_SNAPSHOT_ID
from aicechunk.format.repo_info import encode_repo_info
from aicechunk.format.snapshot import Snapshot
from aicechunk.repo_info_store import initial_repo_info
from tests.conftest import StorageFactory, s3_test_storage


async def write_array(session: aic.Session, path: str, values: np.ndarray, chunks: int) -> None:
    group = await zas.open_group(store=session.store, mode="a")
    arr = await group.create_array(
        path, shape=values.shape, chunks=(chunks,), dtype=values.dtype, overwrite=True
    )
    await arr.setitem(slice(None), values)


async def read_array(session: aic.Session, path: str) -> np.ndarray:
    arr = await zas.open_array(store=session.store, path=path, mode="r")
    return np.asarray(await arr.getitem(slice(None)))


async def test_create_write_commit_read(make_storage: StorageFactory) -> None:
    storage = make_storage()
    repo = await aic.Repository.create(storage)
    assert await aic.Repository.exists(storage)
    session = await repo.writable_session("main")
    assert not session.has_uncommitted_changes
    await write_array(session, "t", np.arange(100, dtype="f4"), 10)
    assert session.has_uncommitted_changes
    sid = await session.commit("first write", metadata={"author": "me", "n": 1})
    assert not session.has_uncommitted_changes
    assert await repo.lookup_branch("main") == str(sid)

    reopened = await aic.Repository.open(storage)
    ro = await reopened.readonly_session(branch="main")
    assert ro.read_only
    np.testing.assert_array_equal(await read_array(ro, "t"), np.arange(100, dtype="f4"))
    history = [s async for s in reopened.ancestry(branch="main")]
    assert [h.message for h in history] == ["first write", "Repository initialized"]
    assert history[0].metadata == {"author": "me", "n": 1}
    assert history[0].parent_id == history[1].id == "1CECHNKREP0F1RSTCMT0"


async def test_create_refuses_existing_and_open_refuses_missing(
    make_storage: StorageFactory,
) -> None:
    storage = make_storage()
    with pytest.raises(aic.RepositoryNotFoundError):
        await aic.Repository.open(storage)
    await aic.Repository.create(storage)
    with pytest.raises(aic.RepositoryExistsError):
        await aic.Repository.create(storage)
    again = await aic.Repository.open_or_create(storage)
    assert await again.list_branches() == {"main"}


async def test_read_only_session_refuses_writes(repo: aic.Repository) -> None:
    ro = await repo.readonly_session(branch="main")
    with pytest.raises(ValueError, match="read-only"):
        await zas.open_group(store=ro.store, mode="w")  # zarr itself refuses
    from zarr.core.buffer import cpu

    with pytest.raises(aic.ReadOnlyError):
        await ro.store.set("zarr.json", cpu.Buffer.from_bytes(b"{}"))
    with pytest.raises(aic.ReadOnlyError):
        await ro.set_metadata("/", b'{"zarr_format":3,"node_type":"group"}')
    with pytest.raises(aic.ReadOnlyError):
        await ro.commit("nothing")


async def test_commit_without_changes_is_refused(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    with pytest.raises(aic.SessionStateError):
        await session.commit("empty")


async def test_inline_and_native_chunks(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    await write_array(session, "small", np.arange(8, dtype="i1"), 4)  # 4-byte chunks: inline
    await write_array(session, "big", np.arange(4096, dtype="i8"), 1024)  # 8 KiB: native
    small_ref = await session.get_chunk_ref("/small", (0,))
    big_ref = await session.get_chunk_ref("/big", (1,))
    assert type(small_ref).__name__ == "InlineRef"
    assert type(big_ref).__name__ == "NativeRef"
    await session.commit("two arrays")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "small"), np.arange(8, dtype="i1"))
    np.testing.assert_array_equal(await read_array(ro, "big"), np.arange(4096, dtype="i8"))


async def test_branches_and_tags(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    await write_array(session, "a", np.zeros(10, dtype="i4"), 5)
    first = await session.commit("zeros")
    await repo.create_branch("dev", first)
    with pytest.raises(aic.RefExistsError):
        await repo.create_branch("dev", first)
    dev = await repo.writable_session("dev")
    await write_array(dev, "a", np.ones(10, dtype="i4"), 5)
    second = await dev.commit("ones")
    assert await repo.list_branches() == {"main", "dev"}
    assert await repo.lookup_branch("dev") == str(second)
    assert await repo.lookup_branch("main") == str(first)

    await repo.create_tag("v1", first)
    assert await repo.list_tags() == {"v1"}
    assert await repo.lookup_tag("v1") == str(first)
    with pytest.raises(aic.RefExistsError):
        await repo.create_tag("v1", second)  # tags cannot move
    tagged = await repo.readonly_session(tag="v1")
    np.testing.assert_array_equal(await read_array(tagged, "a"), np.zeros(10, dtype="i4"))
    await repo.delete_tag("v1")
    assert await repo.list_tags() == set()
    with pytest.raises(aic.RefNotFoundError):
        await repo.lookup_tag("v1")
    with pytest.raises(aic.RefExistsError):
        await repo.create_tag("v1", second)  # a deleted tag name is never reused

    await repo.reset_branch("main", second)
    assert await repo.lookup_branch("main") == str(second)
    await repo.delete_branch("dev")
    assert await repo.list_branches() == {"main"}
    with pytest.raises(aic.RepositoryError):
        await repo.delete_branch("main")
    with pytest.raises(aic.RefNotFoundError):
        await repo.lookup_branch("dev")


@pytest.mark.parametrize("name", ["", "a//b", "..", "x\x00", "back\\slash"])
async def test_bad_ref_names(repo: aic.Repository, name: str) -> None:
    sid = await repo.lookup_branch("main")
    with pytest.raises(aic.InvalidRefNameError):
        await repo.create_branch(name, sid)
    with pytest.raises(aic.InvalidRefNameError):
        await repo.create_tag(name, sid)


async def test_time_travel(repo: aic.Repository) -> None:
    expected: dict[str, np.ndarray] = {}
    for i in range(4):
        session = await repo.writable_session("main")  # one per commit
        values = np.full(20, i, dtype="i2") + np.arange(20, dtype="i2")
        await write_array(session, "x", values, 7)
        sid = await session.commit(f"commit {i}")
        expected[str(sid)] = values
    history = [s async for s in repo.ancestry(branch="main")]
    assert len(history) == 5
    for info in history[:-1]:
        ro = await repo.readonly_session(snapshot_id=info.id)
        np.testing.assert_array_equal(await read_array(ro, "x"), expected[info.id])
    empty = await repo.readonly_session(snapshot_id=history[-1].id)
    assert [k async for k in empty.store.list()] == []


async def test_conflicting_commit_raises(repo: aic.Repository) -> None:
    setup = await repo.writable_session("main")
    await zas.open_group(store=setup.store, mode="w")
    base = await setup.commit("root group")
    s1 = await repo.writable_session("main")
    s2 = await repo.writable_session("main")
    await write_array(s1, "a", np.arange(4, dtype="i4"), 2)
    await write_array(s2, "b", np.arange(4, dtype="i4"), 2)
    winner = await s1.commit("one")
    with pytest.raises(aic.ConflictError) as info:
        await s2.commit("two")
    assert info.value.branch == "main"
    assert info.value.actual == str(winner)
    assert info.value.expected == str(base)
    assert await repo.lookup_branch("main") == str(winner)
    # nothing of the loser became visible
    ro = await repo.readonly_session(branch="main")
    assert await ro.get_metadata("/b") is None
    # with a rebase the disjoint change lands on top
    third = await s2.commit("two", rebase_with=aic.BasicConflictSolver())
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "a"), np.arange(4, dtype="i4"))
    np.testing.assert_array_equal(await read_array(ro, "b"), np.arange(4, dtype="i4"))
    parents = [s.id async for s in repo.ancestry(branch="main")]
    assert parents[:3] == [str(third), str(winner), str(base)]

    # both creating the same node is a conflict no solver resolves
    s3 = await repo.writable_session("main")
    s4 = await repo.writable_session("main")
    await write_array(s3, "same", np.arange(2, dtype="i4"), 2)
    await write_array(s4, "same", np.arange(2, dtype="i4"), 2)
    await s3.commit("same 1")
    with pytest.raises(aic.RebaseFailedError) as failed:
        await s4.commit("same 2", rebase_with=aic.BasicConflictSolver())
    assert failed.value.conflicts[0].kind is aic.ConflictKind.NEW_NODE_CONFLICTS_WITH_EXISTING_NODE


async def _chunk_conflict(repo: aic.Repository) -> tuple[aic.Session, aic.Session]:
    setup = await repo.writable_session("main")
    await write_array(setup, "a", np.zeros(4, dtype="i8"), 2)
    await setup.commit("setup")
    ours = await repo.writable_session("main")
    theirs = await repo.writable_session("main")
    a_ours = await zas.open_array(store=ours.store, path="a")
    a_theirs = await zas.open_array(store=theirs.store, path="a")
    await a_theirs.setitem(slice(0, 2), np.array([7, 7]))
    await a_ours.setitem(slice(0, 2), np.array([1, 1]))
    await a_ours.setitem(slice(2, 4), np.array([2, 2]))
    await theirs.commit("theirs")
    return ours, theirs


async def test_version_selection_use_ours(repo: aic.Repository) -> None:
    ours, _ = await _chunk_conflict(repo)
    solver = aic.BasicConflictSolver(on_chunk_conflict=aic.VersionSelection.UseOurs)
    await ours.commit("ours", rebase_with=solver)
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "a"), [1, 1, 2, 2])


async def test_version_selection_use_theirs(repo: aic.Repository) -> None:
    ours, _ = await _chunk_conflict(repo)
    solver = aic.BasicConflictSolver(on_chunk_conflict=aic.VersionSelection.UseTheirs)
    await ours.commit("ours", rebase_with=solver)
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "a"), [7, 7, 2, 2])


async def test_version_selection_fail_and_detector(repo: aic.Repository) -> None:
    ours, _ = await _chunk_conflict(repo)
    tip = await repo.lookup_branch("main")
    for solver in (
        aic.BasicConflictSolver(on_chunk_conflict=aic.VersionSelection.Fail),
        aic.ConflictDetector(),
    ):
        with pytest.raises(aic.RebaseFailedError) as info:
            await ours.commit("ours", rebase_with=solver)
        assert [c.kind for c in info.value.conflicts] == [aic.ConflictKind.CHUNK_DOUBLE_UPDATE]
        assert info.value.conflicts[0].path == "/a"
        assert info.value.conflicts[0].chunk_coords == frozenset({(0,)})
    assert await repo.lookup_branch("main") == tip
    # the session kept its changes: a permissive rebase still works afterwards
    await ours.commit("ours", rebase_with=aic.BasicConflictSolver())


async def test_delete_of_updated_array_policy(repo: aic.Repository) -> None:
    setup = await repo.writable_session("main")
    await write_array(setup, "a", np.zeros(4, dtype="i8"), 2)
    await setup.commit("setup")
    deleter = await repo.writable_session("main")
    writer = await repo.writable_session("main")
    arr = await zas.open_array(store=writer.store, path="a")
    await arr.setitem(slice(0, 2), np.array([5, 5]))
    await writer.commit("write")
    await deleter.store.delete("a/zarr.json")
    strict = aic.BasicConflictSolver(fail_on_delete_of_updated_array=True)
    with pytest.raises(aic.RebaseFailedError) as info:
        await deleter.commit("delete", rebase_with=strict)
    assert info.value.conflicts[0].kind is aic.ConflictKind.DELETE_OF_UPDATED_ARRAY
    await deleter.commit("delete", rebase_with=aic.BasicConflictSolver())
    ro = await repo.readonly_session(branch="main")
    assert await ro.get_metadata("/a") is None


async def test_status_discard_and_diff(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    await write_array(session, "a", np.arange(6, dtype="i4"), 3)
    status = await session.status()
    assert status.new_arrays == {"/a"}
    assert status.new_groups == {"/"}
    assert status.updated_chunks == {"/a": {(0,), (1,)}}
    first = await session.commit("a")
    session = await repo.writable_session("main")  # a committed session is read-only
    arr = await zas.open_array(store=session.store, path="a")
    await arr.setitem(slice(0, 3), np.array([9, 9, 9]))
    session.discard_changes()
    assert not session.has_uncommitted_changes
    arr = await zas.open_array(store=session.store, path="a")
    await arr.setitem(slice(3, 6), np.array([8, 8, 8]))
    second = await session.commit("b")
    diff = await repo.diff(from_snapshot_id=first, to_snapshot_id=second)
    assert diff.updated_chunks == {"/a": {(1,)}}
    assert not diff.new_arrays and not diff.deleted_arrays
    full = await repo.diff(from_snapshot_id="1CECHNKREP0F1RSTCMT0", to_branch="main")
    assert full.new_arrays == {"/a"}
    assert full.updated_chunks == {"/a": {(0,), (1,)}}


async def test_concurrent_writes_from_tasks(repo: aic.Repository) -> None:
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    arr = await group.create_array("x", shape=(64,), chunks=(4,), dtype="i8")

    async def fill(i: int) -> None:
        await arr.setitem(slice(i * 4, i * 4 + 4), np.full(4, i))

    await asyncio.gather(*(fill(i) for i in range(16)))
    await session.commit("parallel")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_array(ro, "x"), np.repeat(np.arange(16), 4))


def test_session_across_event_loops(tmp_path: Path) -> None:
    """A script may call asyncio.run several times and use zarr's sync API in between."""
    storage = aic.local_filesystem_storage(tmp_path / "repo")
    repo = asyncio.run(aic.Repository.create(storage))
    session = asyncio.run(repo.writable_session("main"))
    arr = zarr.create_array(store=session.store, name="s", shape=(10,), chunks=(5,), dtype="u1")
    arr[:] = np.arange(10, dtype="u1")
    sid = asyncio.run(session.commit("sync write"))
    ro = asyncio.run(repo.readonly_session(snapshot_id=sid))
    np.testing.assert_array_equal(
        zarr.open_array(store=ro.store, path="s", mode="r")[:], np.arange(10, dtype="u1")
    )


@pytest.mark.parametrize(("version", "refs"), [(1, "refs"), (2, "repo")])
async def test_one_chunk_read_costs_four_requests(tmp_path: Path, version: int, refs: str) -> None:
    """Fresh repository, one chunk: ref (the repo info file in spec v2), snapshot,
    manifest, chunk; nothing more."""
    from aicechunk.drivers import LocalDriver
    from aicechunk.testing import CountingDriver

    storage = aic.local_filesystem_storage(tmp_path / "r")
    repo = await aic.Repository.create(storage, spec_version=version)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    arr = await group.create_array("x", shape=(1024,), chunks=(256,), dtype="f8", compressors=None)
    await arr.setitem(slice(None), np.arange(1024, dtype="f8"))
    await session.commit("x")

    counting = CountingDriver(LocalDriver(tmp_path / "r"))
    fresh = await aic.Repository.open(aic.storage_from_driver(counting))
    counting.reset()
    ro = await fresh.readonly_session(branch="main")
    chunk = await ro.get_chunk("/x", (2,))
    assert chunk is not None and len(chunk) == 2048
    calls = [f"{method} {key}" for method, key in counting.calls]
    kinds = [c.split(" ")[1].split("/")[0] for c in calls]
    assert kinds == [refs, "snapshots", "manifests", "chunks"], calls


async def test_caches_are_bounded_by_caching_config(tmp_path: Path) -> None:
    from aicechunk.config import CachingConfig
    from aicechunk.drivers import LocalDriver
    from aicechunk.testing import CountingDriver

    storage = aic.local_filesystem_storage(tmp_path / "r")
    repo = await aic.Repository.create(storage)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    for name in ("a", "b"):
        arr = await group.create_array(name, shape=(8,), chunks=(2,), dtype="i8")
        await arr.setitem(slice(None), np.arange(8))
    await session.commit("two arrays")

    async def manifest_reads(config: aic.RepositoryConfig) -> int:
        counting = CountingDriver(LocalDriver(tmp_path / "r"))
        reopened = await aic.Repository.open(aic.storage_from_driver(counting), config=config)
        ro = await reopened.readonly_session(branch="main")
        for _ in range(3):
            for name in ("/a", "/b"):
                for i in range(4):
                    await ro.get_chunk_ref(name, (i,))
        return sum(1 for method, key in counting.calls if key.startswith("manifests/"))

    assert await manifest_reads(aic.RepositoryConfig.default()) == 2  # each manifest once
    small = aic.RepositoryConfig.default()
    small.caching = CachingConfig(num_chunk_refs=4)  # room for one 4-ref manifest
    assert await manifest_reads(small) == 6  # a, b alternate and evict each other


async def test_one_history_walk_ends_on_cycles_and_missing_parents() -> None:
    """``AssetManager.history`` serves ancestry, diff, rebase and the commit-outcome search."""
    from datetime import UTC, datetime

    from aicechunk.assets import AssetManager
    from aicechunk.drivers import MemoryDriver
    from aicechunk.format.ids import SnapshotId
    from aicechunk.format.snapshot import Snapshot

    assets = AssetManager(MemoryDriver())
    a, b, c, d = (SnapshotId.random() for _ in range(4))

    async def write(sid: SnapshotId, parent: SnapshotId | None) -> None:
        snap = Snapshot(sid, parent, datetime.now(UTC), "", {}, (), ())
        await assets.write_snapshot(snap)

    await write(a, None)
    await write(b, a)
    await write(c, b)
    assert [s.id async for s in assets.history(c)] == [c, b, a]
    assert await assets.history_since(c, a) == [c, b]
    assert await assets.history_since(c, c) == []
    assert await assets.history_since(b, c) is None  # c is not an ancestor of b
    await write(d, SnapshotId.random())  # a parent that was never written
    with pytest.raises(aic.FormatError, match="does not exist") as missing:
        await assets.history_since(d, a)
    assert missing.value.file == f"snapshots/{d}"
    # a two-snapshot cycle: e <-> f
    e, f = SnapshotId.random(), SnapshotId.random()
    await write(e, f)
    await write(f, e)
    with pytest.raises(aic.FormatError, match="history loops") as loop:
        await assets.history_since(e, a)
    assert loop.value.file == f"snapshots/{f}"
    with pytest.raises(aic.RefNotFoundError):  # the start itself missing: not found
        await assets.history_since(SnapshotId.random(), a)


@pytest.mark.attack("hostile names and keys")
@pytest.mark.parametrize(
    "name",
    [
        "a" * 249,  # "branch." + name no longer fits a 255-byte path segment
        "a" * 255,
        "\u00e9" * 125,  # 250 bytes of UTF-8 in 125 characters
        "u\u0308ber",  # NFD spelling of "über"
        "e\u0301",  # NFD spelling of "é"
        "admin\u202egnp.exe",  # right-to-left override
        "main\u200f",  # right-to-left mark
        "x\u2066y\u2069",  # isolates
        "main ",  # trailing space
        " main",  # leading space
        "main\u200b",  # zero-width space (Cf)
        "\ufeffmain",  # byte order mark (Cf)
        "main\xa0",  # no-break space (whitespace other than U+0020)
        "ma\u3000in",  # ideographic space
        "x\ty",  # tab (C0)
        "\uff4d\uff41\uff49\uff4e",  # fullwidth "main" (NFKC: main)
        "\ufb01le",  # ligature "fi"
        "x\u0085y",  # next line (C1)
        "x\u2028y",  # line separator (Zl)
        "x\u2029y",  # paragraph separator (Zp)
        "x\u009b31mred",  # C1 CSI: a terminal escape
        "x\u00adhy",  # soft hyphen (Cf)
    ],
)
async def test_ref_names_that_do_not_fit_or_look_alike(tmp_path: Path, name: str) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path))
    sid = await repo.lookup_branch("main")
    before = _tree(tmp_path)  # nothing written (in spec v2 a change adds overwritten/)
    with pytest.raises(aic.InvalidRefNameError, match="ref name"):
        await repo.create_branch(name, sid)
    with pytest.raises(aic.InvalidRefNameError, match="ref name"):
        await repo.create_tag(name, sid)
    assert _tree(tmp_path) == before


async def test_ref_names_at_the_limits_work(tmp_path: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path))
    sid = await repo.lookup_branch("main")
    longest = "a" * 248
    await repo.create_branch(longest, sid)
    await repo.create_tag("t" * 248, sid)
    await repo.create_branch("\u00fcber", sid)  # NFC non-ASCII names are fine
    await repo.create_tag("a b", sid)  # and inner spaces
    assert await repo.lookup_branch(longest) == sid
    assert await repo.list_branches() == {"main", longest, "\u00fcber"}
    assert await repo.lookup_tag("a b") == sid
    # one spelling per name: the NFD twin of an existing branch cannot be made
    with pytest.raises(aic.InvalidRefNameError, match="NFC"):
        await repo.create_branch("u\u0308ber", sid)


@pytest.mark.attack("malformed config and metadata")
async def test_truncated_native_chunk_is_a_format_error(tmp_path: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path))
    session = await repo.writable_session("main")
    await write_array(session, "t", np.arange(1000, dtype="f8"), 500)  # 4000-byte chunks
    await session.commit("native chunks")
    chunk = sorted((tmp_path / "chunks").iterdir())[0]
    chunk.write_bytes(chunk.read_bytes()[:-10])
    reader = await repo.readonly_session("main")
    with pytest.raises(aic.FormatError, match=f"chunks/{chunk.name}: truncated chunk file"):
        await read_array(reader, "t")


@pytest.mark.attack("malformed config and metadata")
@pytest.mark.parametrize(
    "text",
    [
        b"virtual_chunk_containers:\n  s3://b/:\n    store: !s3 {}\n",
        b"virtual_chunk_containers:\n  s3://b/:\n    url_prefix: s3://b/\n    store: 5\n",
        b"caching:\n  num_snapshot_nodes: abc\n",
        b"caching: " + b"[" * 20_000 + b"]" * 20_000 + b"\n",
    ],
)
async def test_malformed_config_yaml_fails_open(tmp_path: Path, text: bytes) -> None:
    storage = aic.local_filesystem_storage(tmp_path)
    await aic.Repository.create(storage, spec_version=1)  # spec v2 has no config.yaml
    (tmp_path / "config.yaml").write_bytes(text)
    with pytest.raises(aic.FormatError, match=r"^config\.yaml: "):
        await aic.Repository.open(storage)


async def test_container_whose_store_serves_other_urls(tmp_path: Path) -> None:
    storage = aic.local_filesystem_storage(tmp_path)
    repo = await aic.Repository.create(storage, spec_version=1)  # its config.yaml
    (tmp_path / "config.yaml").write_bytes(
        b"virtual_chunk_containers:\n  gs://b/:\n    url_prefix: gs://b/\n    store: !s3 {}\n"
    )
    repo = await aic.Repository.open(storage)
    # as icechunk: ignored with a warning, the repository stays readable
    with pytest.warns(aic.AicechunkWarning, match=r"container 'gs://b/' is ignored"):
        session = await repo.readonly_session("main")
    assert await session.list_nodes() is not None


# --- creation: races, unclean roots, spec version 2 ----------------------------------------


def _threshold_config(threshold: int | None) -> aic.RepositoryConfig | None:
    if threshold is None:
        return None
    config = aic.RepositoryConfig()
    config.inline_chunk_threshold_bytes = threshold
    return config


def _race(storage: aic.Storage, threshold: int | None, how: str, start: Any, outcome: Any) -> None:
    """One racing process: create (or open_or_create) with its own config."""

    async def run() -> str:
        config = _threshold_config(threshold)
        start.wait()
        try:
            if how == "create":
                await aic.Repository.create(storage, config)
            else:
                await aic.Repository.open_or_create(storage, config)
        except aic.RepositoryExistsError:
            return "exists"
        except Exception as err:  # reported to the test, which fails on it
            return f"{type(err).__name__}: {err}"
        return "created" if how == "create" else "opened"

    outcome.put((threshold, asyncio.run(run())))


def _run_race(
    storage: aic.Storage, thresholds: list[int | None], how: str
) -> list[tuple[Any, str]]:
    ctx = multiprocessing.get_context("fork")
    start, outcome = ctx.Barrier(len(thresholds)), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(storage, t, how, start, outcome)) for t in thresholds]
    for p in procs:
        p.start()
    results = [outcome.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


async def _persisted_threshold(storage: aic.Storage) -> int | None:
    config = await aic.Repository.fetch_config(storage)
    return None if config is None else config.inline_chunk_threshold_bytes


def _check_create_race(storage: aic.Storage, pair: list[int | None]) -> None:
    results = _run_race(storage, pair, "create")
    outcomes = sorted(r for _, r in results)
    assert outcomes == ["created", "exists"], results
    winner = next(t for t, r in results if r == "created")
    # the loser wrote nothing: the persisted config is the winner's (none for a default one)
    assert asyncio.run(_persisted_threshold(storage)) == winner

    async def check_repo() -> None:
        repo = await aic.Repository.open(storage)
        assert await repo.list_branches() == {"main"}
        assert await repo.lookup_branch("main") == "1CECHNKREP0F1RSTCMT0"

    asyncio.run(check_repo())


@pytest.mark.attack("creation races and unclean roots")
@pytest.mark.parametrize("run", range(20))
def test_concurrent_creates_have_one_winner_local(tmp_path: Path, run: int) -> None:
    """Two processes create at once with different configs (every other run one of them
    with the default config, which is not stored): one succeeds, the other raises
    RepositoryExistsError and leaves the config and refs as the winner wrote them."""
    pair: list[int | None] = [100 + run, 200 + run] if run % 2 else [None, 300 + run]
    _check_create_race(aic.local_filesystem_storage(tmp_path / "repo"), pair)


@pytest.mark.attack("creation races and unclean roots")
@pytest.mark.parametrize("run", range(5))
def test_concurrent_creates_have_one_winner_s3(s3_endpoint: str, run: int) -> None:
    pair: list[int | None] = [100 + run, 200 + run] if run % 2 else [None, 300 + run]
    _check_create_race(s3_test_storage(s3_endpoint), pair)


@pytest.mark.attack("creation races and unclean roots")
def test_concurrent_open_or_create_all_open_one_repository(tmp_path: Path) -> None:
    storage = aic.local_filesystem_storage(tmp_path / "repo")
    thresholds: list[int | None] = [11, 22, 33, None]
    results = _run_race(storage, thresholds, "open_or_create")
    assert [r for _, r in results] == ["opened"] * len(thresholds), results
    assert asyncio.run(_persisted_threshold(storage)) in thresholds


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.attack("creation races and unclean roots")
@pytest.mark.parametrize("how", ["create", "open_or_create"])
async def test_create_refuses_a_non_empty_root(make_storage: StorageFactory, how: str) -> None:
    storage = make_storage()
    driver = storage.driver()
    await driver.put("data/measurements.nc", b"not a repository")
    call = aic.Repository.create if how == "create" else aic.Repository.open_or_create
    with pytest.raises(aic.RootNotEmptyError, match=r"data/measurements\.nc"):
        await call(storage)
    assert [i.key async for i in driver.list("")] == ["data/measurements.nc"]
    assert not await aic.Repository.exists(storage)
    # the explicit opt-out, as in Icechunk 2.x
    repo = await call(storage, check_clean_root=False)
    assert await repo.list_branches() == {"main"}
    assert await driver.get("data/measurements.nc") == b"not a repository"


@pytest.mark.attack("creation races and unclean roots")
async def test_create_refuses_a_root_holding_only_a_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_bytes(b"inline_chunk_threshold_bytes: 7\n")
    storage = aic.local_filesystem_storage(tmp_path)
    with pytest.raises(aic.RepositoryExistsError, match="being created"):
        await aic.Repository.create(storage)
    assert _tree(tmp_path) == ["config.yaml"]


@pytest.mark.attack("creation races and unclean roots")
async def test_an_interrupted_creation_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The initial snapshot without a main branch: a creation in progress, or one that was
    interrupted; create says so at once, open_or_create after waiting for it."""
    import aicechunk.repository.creation as repository

    storage = aic.local_filesystem_storage(tmp_path)
    await aic.Repository.create(storage, spec_version=1)  # spec v2: tests/test_create_v2.py
    (tmp_path / "refs" / "branch.main" / "ref.json").unlink()
    before = _tree(tmp_path)
    for check_clean_root in (True, False):
        with pytest.raises(aic.RepositoryExistsError, match="being created"):
            await aic.Repository.create(storage, check_clean_root=check_clean_root)
    monkeypatch.setattr(repository, "CREATION_WAIT_SECONDS", 0.2)
    with pytest.raises(aic.RepositoryError, match="interrupted"):
        await aic.Repository.open_or_create(storage)
    assert _tree(tmp_path) == before


def _repo_info_bytes() -> bytes:
    """The repo info file of a new spec v2 repository."""
    now = datetime.now(UTC)
    first = Snapshot(FIRST_SNAPSHOT_ID, None, now, "init", {}, (), (), spec_version=2)
    return encode_repo_info(initial_repo_info(first, now))


def _write_spec_v2_repository(root: Path, with_v1_refs: bool, version: int = 2) -> None:
    """What Icechunk 2.x leaves: a ``repo`` object (binary header, spec version 2, file
    type 6) at the root and no ``refs/`` (or, mid-migration, the v1 refs beside it)."""
    from aicechunk.format.header import MAGIC

    root.mkdir(parents=True, exist_ok=True)
    header = MAGIC + b"ic-2.1.2".ljust(24) + bytes((version, 6, 1))
    (root / "repo").write_bytes(header + b"\x28\xb5\x2f\xfd" + b"\x00" * 40)
    if version == 2:  # a real repo info file (opening reads it, as Icechunk 2.x does)
        (root / "repo").write_bytes(_repo_info_bytes())
    (root / "snapshots").mkdir()
    (root / "snapshots" / "1CECHNKREP0F1RSTCMT0").write_bytes(header[:36] + bytes((2, 1, 1)))
    if with_v1_refs:
        (root / "refs" / "branch.main").mkdir(parents=True)
        (root / "refs" / "branch.main" / "ref.json").write_bytes(
            b'{"snapshot":"1CECHNKREP0F1RSTCMT0"}'
        )


@pytest.mark.attack("creation races and unclean roots")
@pytest.mark.parametrize("with_v1_refs", [False, True])
async def test_spec_v2_repository_is_recognised_and_never_written_over(
    tmp_path: Path, with_v1_refs: bool
) -> None:
    """A ``repo`` object makes it spec v2 (also beside ``refs/``, mid-migration): it
    opens as such, and creating is refused without writing anything."""
    root = tmp_path / "v2"
    _write_spec_v2_repository(root, with_v1_refs)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    storage = aic.local_filesystem_storage(root)
    assert await aic.Repository.exists(storage)
    assert (await aic.Repository.open(storage)).spec_version == 2
    assert (await aic.Repository.open_or_create(storage)).spec_version == 2
    for create in (
        lambda: aic.Repository.create(storage),
        lambda: aic.Repository.create(storage, check_clean_root=False, spec_version=2),
    ):
        with pytest.raises(aic.RepositoryExistsError):
            await create()
    opened = await aic.Repository.open(storage)
    # the repo info file lists the snapshot; the snapshot file itself here is a stub
    assert (await opened.lookup_snapshot(str(FIRST_SNAPSHOT_ID))).id == str(FIRST_SNAPSHOT_ID)
    with pytest.raises(aic.FormatError):
        await opened.readonly_session(snapshot_id=str(FIRST_SNAPSHOT_ID))
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.attack("creation races and unclean roots")
async def test_unknown_spec_version_is_refused_and_never_written_over(tmp_path: Path) -> None:
    root = tmp_path / "v9"
    _write_spec_v2_repository(root, False, version=9)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    storage = aic.local_filesystem_storage(root)
    assert await aic.Repository.exists(storage)
    calls = [
        lambda: aic.Repository.open(storage),
        lambda: aic.Repository.open_or_create(storage),
        lambda: aic.Repository.open_or_create(storage, check_clean_root=False),
        lambda: aic.Repository.create(storage),
        lambda: aic.Repository.create(storage, check_clean_root=False),
    ]
    for call in calls:
        with pytest.raises(aic.UnsupportedSpecVersionError, match="spec version 9 repository"):
            await call()
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.attack("creation races and unclean roots")
async def test_spec_v2_repository_is_recognised_on_every_driver(
    make_storage: StorageFactory,
) -> None:
    storage = make_storage()
    driver = storage.driver()
    await driver.put("repo", _repo_info_bytes())
    assert await aic.Repository.exists(storage)
    assert (await aic.Repository.open(storage)).spec_version == 2
    assert (await aic.Repository.open_or_create(storage)).spec_version == 2
    with pytest.raises(aic.RepositoryExistsError):
        await aic.Repository.create(storage)
    assert [info.key async for info in driver.list("")] == ["repo"]


async def test_a_commit_that_already_lost_writes_nothing(tmp_path: Path) -> None:
    """As icechunk: the tip is checked before anything is written, so a loser leaves no
    snapshot, manifest or transaction log behind."""
    root = tmp_path / "r"
    repo = await aic.Repository.create(aic.local_filesystem_storage(root))
    first = await repo.writable_session("main")
    zarr.open_group(first.store, mode="w")
    await first.commit("root")
    loser = await repo.writable_session("main")
    winner = await repo.writable_session("main")
    for session, value in ((loser, 1), (winner, 2)):
        zarr.create_array(session.store, name=f"a{value}", shape=(4,), chunks=(1,), dtype="i4")
    await winner.commit("wins")

    def metadata_files() -> set[str]:
        return {
            str(p.relative_to(root))
            for d in ("snapshots", "manifests", "transactions")
            for p in (root / d).glob("*")
        }

    before = metadata_files()
    with pytest.raises(aic.ConflictError):
        await loser.commit("loses")
    assert metadata_files() == before
    await loser.commit("rebased", rebase_with=aic.BasicConflictSolver())
    assert len(metadata_files() - before) >= 2  # the rebased commit wrote its files


@pytest.mark.attack("close across event loops")
async def test_close_in_one_loop_leaves_reads_in_other_loops_working(tmp_path: Path) -> None:
    """``repo.close()`` releases what the calling loop holds; reads running in other
    loops at the same time (120 in all) are not broken by it."""
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "repo"))
    session = await repo.writable_session("main")
    await write_array(session, "x", np.arange(64), chunks=4)
    await session.commit("data")
    readers, reads = 4, 30

    def read_in_new_loop() -> int:
        async def main() -> int:
            failed = 0
            for _ in range(reads):
                try:
                    ro = await repo.readonly_session(branch="main")
                    np.testing.assert_array_equal(await read_array(ro, "x"), np.arange(64))
                except Exception:
                    failed += 1
            return failed

        return asyncio.run(main())

    tasks = [asyncio.ensure_future(asyncio.to_thread(read_in_new_loop)) for _ in range(readers)]
    while not all(task.done() for task in tasks):
        await repo.close()
        await asyncio.sleep(0.001)
    assert sum(task.result() for task in tasks) == 0


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


UNREPRESENTABLE_COMMITS = [
    ("m", {"x": b"1"}, r"metadata\['x'\]: bytes"),
    ("m", {"x": {1: 2}}, r"metadata\['x'\]\[1\]: keys must be str"),
    ("m", {"x": [1, {"y": float("nan")}]}, r"metadata\['x'\]\[1\]\['y'\]: nan"),
    ("m", {"x": float("-inf")}, r"metadata\['x'\]: -inf"),
    ("m", {1: 2}, r"metadata\[1\]: keys must be str"),
    ("m", {"x": 2**64}, r"metadata\['x'\]: integer"),
    ("m", {"x": -(2**63) - 1}, r"metadata\['x'\]: integer"),
    ("m", {"x": "\ud800"}, r"metadata\['x'\]: not encodable as UTF-8"),
    ("m", {"\udc80": 1}, "not encodable as UTF-8"),
    ("m", {"x": {1, 2}}, r"metadata\['x'\]: set is not JSON"),
    ("m", {"x": _nested(600)}, "nested deeper than"),
    ("\ud800", {}, "message: not encodable as UTF-8"),
    (b"m", {}, "message: a commit message must be a str"),
    ("m", [("x", 1)], "metadata: commit metadata must be a dict"),
]


@pytest.mark.attack("unrepresentable values")
@pytest.mark.parametrize(("message", "metadata", "match"), UNREPRESENTABLE_COMMITS)
async def test_commit_refuses_what_the_format_cannot_hold(
    tmp_path: Path, message: Any, metadata: Any, match: str
) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path))
    session = await repo.writable_session("main")
    await write_array(session, "t", np.arange(4, dtype="i4"), 2)
    before = _tree(tmp_path)
    with pytest.raises(UnrepresentableValueError, match=match):
        await session.commit(message, metadata=metadata)
    # nothing was written, and the session can still commit
    assert _tree(tmp_path) == before
    assert session.has_uncommitted_changes
    await session.commit("m", metadata={"x": 1})


async def test_commit_metadata_at_the_limits_roundtrips(tmp_path: Path) -> None:
    # spec v1's limits (MessagePack); spec v2's FlexBuffers nest at most 200 levels
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path), spec_version=1)
    session = await repo.writable_session("main")
    await write_array(session, "t", np.arange(4, dtype="i4"), 2)
    metadata = {
        "big": 2**64 - 1,
        "small": -(2**63),
        "f": 1e308,
        "": None,
        "t": (1, "a"),
        "deep": _nested(400),
        "u": "\u00fc\U0001f600",
    }
    await session.commit("\u00fcber \U0001f600", metadata=metadata)
    reopened = await aic.Repository.open(aic.local_filesystem_storage(tmp_path))
    history = [s async for s in reopened.ancestry(branch="main")]
    info = history[0]
    assert info.message == "\u00fcber \U0001f600"
    assert info.metadata == {**metadata, "t": [1, "a"]}


@pytest.mark.attack("hostile names and keys")
async def test_look_alike_refs_made_by_other_tools_stay_reachable(tmp_path: Path) -> None:
    from aicechunk.format.refs import branch_key, encode_ref

    # ref files as another spec v1 writer makes them
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path), spec_version=1)
    sid = await repo.lookup_branch("main")
    names = ["main ", "\uff4d\uff41\uff49\uff4e", "x\u009by", "x\u00adhy"]
    driver = aic.local_filesystem_storage(tmp_path).driver()
    for name in names:
        await driver.put(branch_key(name), encode_ref(sid))
    await driver.close()
    assert await repo.list_branches() == {"main", *names}
    for name in names:  # looked up by their exact names, and deleted
        assert await repo.lookup_branch(name) == sid
        await repo.delete_branch(name)
    assert await repo.list_branches() == {"main"}
