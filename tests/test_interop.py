"""Interop with the icechunk package (2.3.0 on the baseline; 1.1.21 on Python 3.11), both
ways, on local storage, on each spec version it writes.

icechunk is synchronous at its Python surface; it runs here in worker threads so that it
never blocks our event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.errors import InvalidNodePathError
from tests.oracle import SPEC_VERSIONS, create_kwargs


def icechunk_writes(path: Path, spec_version: int) -> dict[str, Any]:
    """A rich repository written by icechunk; returns what icechunk reports about it."""
    storage = icechunk.local_filesystem_storage(str(path))
    repo = icechunk.Repository.create(storage, **create_kwargs(spec_version))
    s = repo.writable_session("main")
    root = zarr.group(store=s.store, attributes={"title": "rich", "n": 1})
    sub = root.create_group("sub/deeper", attributes={"level": 2})
    f4 = root.create_array("f4", shape=(100,), chunks=(10,), dtype="f4", dimension_names=("t",))
    f4[:] = np.arange(100, dtype="f4")
    i8 = sub.create_array(
        "i8", shape=(20, 30), chunks=(7, 11), dtype="i8", dimension_names=("y", None)
    )
    i8[:] = np.arange(600, dtype="i8").reshape(20, 30)
    small = root.create_array("small", shape=(4,), chunks=(2,), dtype="u1")  # inline chunks
    small[:] = np.array([1, 2, 3, 4], dtype="u1")
    first = s.commit("first", metadata={"author": "icechunk", "k": [1, 2]})
    repo.create_branch("dev", first)
    s = repo.writable_session("main")
    arr = zarr.open_array(store=s.store, path="f4")
    arr[0:10] = -1
    second = s.commit("second")
    repo.create_tag("v1", first)
    repo.create_tag("gone", first)
    repo.delete_tag("gone")
    return {
        "first": first,
        "second": second,
        "ancestry": [(a.id, a.message, a.metadata) for a in repo.ancestry(branch="main")],
    }


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_we_read_what_icechunk_wrote(tmp_path: Path, spec_version: int) -> None:
    facts = await asyncio.to_thread(icechunk_writes, tmp_path / "ic", spec_version)
    repo = await aic.Repository.open(aic.local_filesystem_storage(tmp_path / "ic"))
    assert repo.spec_version == spec_version
    assert await repo.list_branches() == {"main", "dev"}
    assert await repo.list_tags() == {"v1"}
    assert await repo.lookup_branch("main") == facts["second"]
    assert await repo.lookup_tag("v1") == facts["first"]
    with pytest.raises(aic.RefNotFoundError):
        await repo.lookup_tag("gone")
    with pytest.raises(aic.RefExistsError):
        await repo.create_tag("gone", facts["first"])
    ours = [(a.id, a.message, a.metadata) async for a in repo.ancestry(branch="main")]
    assert ours == facts["ancestry"]

    session = await repo.readonly_session(branch="main")
    root = await zas.open_group(store=session.store, mode="r")
    assert dict(root.attrs) == {"title": "rich", "n": 1}
    f4 = await zas.open_array(store=session.store, path="f4", mode="r")
    expected = np.arange(100, dtype="f4")
    expected[:10] = -1
    np.testing.assert_array_equal(await f4.getitem(slice(None)), expected)
    assert f4.metadata.dimension_names == ("t",)  # type: ignore[union-attr]
    i8 = await zas.open_array(store=session.store, path="sub/deeper/i8", mode="r")
    np.testing.assert_array_equal(
        await i8.getitem(slice(None)), np.arange(600, dtype="i8").reshape(20, 30)
    )
    small = await zas.open_array(store=session.store, path="small", mode="r")
    np.testing.assert_array_equal(await small.getitem(slice(None)), [1, 2, 3, 4])
    old = await repo.readonly_session(tag="v1")
    f4_old = await zas.open_array(store=old.store, path="f4", mode="r")
    np.testing.assert_array_equal(await f4_old.getitem(slice(None)), np.arange(100, dtype="f4"))
    diff = await repo.diff(from_tag="v1", to_branch="main")
    assert diff.updated_chunks == {"/f4": {(0,)}}


def icechunk_reads_and_commits(path: Path, expected: dict[str, np.ndarray]) -> str:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    assert set(repo.list_branches()) == {"main", "feature"}
    assert set(repo.list_tags()) == {"release"}
    s = repo.readonly_session("main")
    for name, values in expected.items():
        np.testing.assert_array_equal(
            zarr.open_array(store=s.store, path=name, mode="r")[:], values
        )
    messages = [a.message for a in repo.ancestry(branch="main")]
    assert messages == ["second", "first", "Repository initialized"], messages
    # icechunk's diff reads our transaction logs
    diff = repo.diff(from_tag="release", to_branch="main")
    assert sorted(diff.updated_chunks["/grid"]) == [
        [1, 0],
        [1, 1],
        [1, 2],
        [2, 0],
        [2, 1],
        [2, 2],
        [3, 0],
        [3, 1],
        [3, 2],
    ]
    full = repo.diff(from_snapshot_id="1CECHNKREP0F1RSTCMT0", to_tag="release")
    assert full.new_arrays == {"/grid", "/nested/text", "/nested/big", "/nested/mixed"}
    s = repo.writable_session("main")
    arr = zarr.open_array(store=s.store, path="grid")
    arr[0, :] = 99
    return str(s.commit("icechunk on top", metadata={"by": "icechunk"}))


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_icechunk_reads_what_we_wrote_and_commits_on_top(
    tmp_path: Path, spec_version: int
) -> None:
    storage = aic.local_filesystem_storage(tmp_path / "ours")
    repo = await aic.Repository.create(storage, spec_version=spec_version)
    session = await repo.writable_session("main")
    root = await zas.open_group(store=session.store, mode="w", attributes={"made": "by us"})
    grid = await root.create_array(
        "grid", shape=(16, 12), chunks=(5, 5), dtype="f8", dimension_names=("y", "x")
    )
    values = np.random.default_rng(0).random((16, 12))
    await grid.setitem(slice(None), values)
    text = await root.create_array("nested/text", shape=(3,), chunks=(2,), dtype="i2")
    await text.setitem(slice(None), np.array([7, 8, 9], dtype="i2"))
    big = await root.create_array(
        "nested/big", shape=(50, 40), chunks=(20, 20), dtype="f8", compressors=None
    )  # 3.2 KB chunks: native chunk files
    big_values = np.random.default_rng(1).random((50, 40))
    await big.setitem(slice(None), big_values)
    # zeros compress to inline chunks, random values stay native: one manifest, both kinds
    mixed = await root.create_array("nested/mixed", shape=(600,), chunks=(100,), dtype="f8")
    mixed_values = np.concatenate([np.zeros(300), np.random.default_rng(2).random(300)])
    await mixed.setitem(slice(None), mixed_values)
    first = await session.commit("first", metadata={"who": "us"})
    await repo.create_tag("release", first)
    await repo.create_branch("feature", first)
    session = await repo.writable_session("main")  # a committed session is read-only
    grid2 = await zas.open_array(store=session.store, path="grid")
    values[5:, :] = 0.5
    await grid2.setitem((slice(5, None), slice(None)), np.full((11, 12), 0.5))
    await session.commit("second")

    new_id = await asyncio.to_thread(
        icechunk_reads_and_commits,
        tmp_path / "ours",
        {
            "grid": values,
            "nested/text": np.array([7, 8, 9], dtype="i2"),
            "nested/big": big_values,
            "nested/mixed": mixed_values,
        },
    )
    assert await repo.lookup_branch("main") == new_id
    ro = await repo.readonly_session(branch="main")
    after = await zas.open_array(store=ro.store, path="grid", mode="r")
    values[0, :] = 99
    np.testing.assert_array_equal(await after.getitem(slice(None)), values)
    history = [a async for a in repo.ancestry(branch="main")]
    assert history[0].message == "icechunk on top"
    assert history[0].metadata == {"by": "icechunk"}
    assert (await aic.Repository.open(storage)).spec_version == spec_version


async def test_we_read_split_manifests_and_inline_chunks(tmp_path: Path) -> None:
    from tests.format.test_read_icechunk import write_rich_repository

    rich = await asyncio.to_thread(write_rich_repository, tmp_path)
    repo = await aic.Repository.open(aic.local_filesystem_storage(tmp_path / "repo"))
    session = await repo.readonly_session(branch="main")
    split = await zas.open_array(store=session.store, path="split_me", mode="r")
    np.testing.assert_array_equal(await split.getitem(slice(None)), np.arange(10) * 100)
    native = await zas.open_array(store=session.store, path="a/native", mode="r")
    np.testing.assert_array_equal(await native.getitem(slice(None)), np.arange(48.0).reshape(6, 8))
    inline = await zas.open_array(store=session.store, path="inline", mode="r")
    np.testing.assert_array_equal(await inline.getitem(slice(None)), [1, 2, 3, 4])
    keys = sorted([k async for k in session.store.list_prefix("split_me/")])
    assert keys == sorted(["split_me/zarr.json", *(f"split_me/c/{i}" for i in range(10))])
    assert repo.config.inline_chunk_threshold_bytes == 64
    assert rich["second"] == await repo.lookup_branch("main")


LAST_MODIFIED = [
    (9999, 12, 31, 0, 0, 0),  # icechunk's own fixture
    (1960, 1, 1, 0, 0, 0),  # before 1970
    (1969, 12, 31, 23, 59, 59),
    (2000, 1, 1, 0, 0, 0),
]


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_last_modified_checksums_are_stored_as_icechunk_stores_them(
    tmp_path: Path, spec_version: int
) -> None:
    from datetime import UTC, datetime

    from aicechunk.format.manifest import decode_manifest

    dates = [datetime(*d, tzinfo=UTC) for d in LAST_MODIFIED]

    def icechunk_side() -> None:
        storage = icechunk.local_filesystem_storage(str(tmp_path / "ic"))
        repo = icechunk.Repository.create(storage, **create_kwargs(spec_version))
        s = repo.writable_session("main")
        zarr.create_array(s.store, name="a", shape=(len(dates),), chunks=(1,), dtype="u1")
        for i, when in enumerate(dates):
            s.store.set_virtual_ref(
                f"a/c/{i}", "s3://b/x", offset=0, length=1, checksum=when, validate_container=False
            )
        s.commit("virtual")

    await asyncio.to_thread(icechunk_side)
    storage = aic.local_filesystem_storage(tmp_path / "ours")
    repo = await aic.Repository.create(storage, spec_version=spec_version)
    s = await repo.writable_session("main")
    await zas.create_array(s.store, name="a", shape=(len(dates),), chunks=(1,), dtype="u1")
    for i, when in enumerate(dates):
        await s.store.set_virtual_ref(
            f"a/c/{i}", "s3://b/x", offset=0, length=1, checksum=when, validate_container=False
        )
    await s.commit("virtual")  # used to fail with struct.error

    def stored(root: Path) -> list[int | None]:
        (path,) = (root / "manifests").iterdir()
        manifest = decode_manifest(path.read_bytes(), path.name)
        (node,) = manifest.node_ids()
        return [ref.last_modified for _, ref in sorted(manifest.iter_node(node))]

    ours, theirs = stored(tmp_path / "ours"), stored(tmp_path / "ic")
    assert ours == theirs and len(ours) == len(dates)


async def test_relative_node_paths_are_refused_as_by_icechunk(tmp_path: Path) -> None:
    """Found while writing tests/test_differential.py: ``chunk_coords("a")`` listed nothing
    (no node is named ``a``; nodes are ``/a``) where icechunk raises; a relative path is a
    caller's mistake and gets a clear error from every session query."""
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "ours"))
    session = await repo.writable_session("main")
    a = await zas.create_array(session.store, name="a", shape=(2,), chunks=(1,), dtype="i4")
    await a.setitem(slice(None), 1)
    assert [c async for c in session.chunk_coords("/a")] == [(0,), (1,)]
    with pytest.raises(InvalidNodePathError, match="absolute"):
        [c async for c in session.chunk_coords("a")]
    with pytest.raises(InvalidNodePathError):
        await session.get_chunk_ref("a", (0,))

    def theirs() -> None:
        ic_repo = icechunk.Repository.create(
            icechunk.local_filesystem_storage(str(tmp_path / "ic"))
        )
        ic_session = ic_repo.writable_session("main")
        zarr.create_array(ic_session.store, name="a", shape=(2,), chunks=(1,), dtype="i4")

        async def listed() -> list[tuple[int, ...]]:
            return [c async for c in ic_session.chunk_coordinates("a")]

        with pytest.raises(ValueError, match="must start with a `/`"):
            asyncio.run(listed())

    await asyncio.to_thread(theirs)


async def test_icechunk_reads_the_commit_metadata_we_accept(tmp_path: Path) -> None:
    metadata = {
        "big": 2**64 - 1,
        "small": -(2**63),
        "f": 1e308,
        "": None,
        "list": [1, "a", True, None, {"k": [0.5]}],
        "deep": {"a": {"b": {"c": [[[]]]}}},
        "u": "\u00fc\U0001f600",
    }
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path), spec_version=1)
    session = await repo.writable_session("main")
    await zas.open_group(store=session.store, mode="w")
    sid = await session.commit("\u00fcber \U0001f600", metadata=metadata)

    def icechunk_ancestry() -> list[tuple[str, str, dict[str, Any]]]:
        ic = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path)))
        return [(a.id, a.message, a.metadata) for a in ic.ancestry(branch="main")]

    history = await asyncio.to_thread(icechunk_ancestry)
    assert history[0] == (sid, "\u00fcber \U0001f600", metadata)


@pytest.mark.parametrize(
    ("data", "accepted"),
    [
        (b'{"snapshot":"1cechnkrep0f1rstcmt0"}', True),  # lower case
        (b'{"snapshot":"ICECHNKREPOF1RSTCMTO"}', True),  # Crockford aliases
        (b'{"snapshot":"1CECHNKREP0F1RSTCMT0","snapshot":"1CECHNKREP0F1RSTCMT0"}', False),
        (b'\xef\xbb\xbf{"snapshot":"1CECHNKREP0F1RSTCMT0"}', False),
        (b'{"snapshot":"1CECHNKREP0F1RSTCMT0","x":NaN}', False),
    ],
)
async def test_ref_files_as_icechunk_reads_them(
    tmp_path: Path, data: bytes, accepted: bool
) -> None:
    await aic.Repository.create(aic.local_filesystem_storage(tmp_path), spec_version=1)
    (tmp_path / "refs" / "branch.main" / "ref.json").write_bytes(data)

    def icechunk_main() -> str | None:
        try:
            ic = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path)))
            return str(ic.lookup_branch("main"))
        except icechunk.IcechunkError:
            return None

    theirs = await asyncio.to_thread(icechunk_main)
    try:
        repo = await aic.Repository.open(aic.local_filesystem_storage(tmp_path))
        ours: str | None = await repo.lookup_branch("main")
    except aic.FormatError as err:
        assert "refs/branch.main/ref.json" in str(err)
        ours = None
    assert ours == theirs == ("1CECHNKREP0F1RSTCMT0" if accepted else None)
