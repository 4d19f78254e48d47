"""Bulk virtual references: the store's columnar calls (set_virtual_refs_columns,
icechunk's set_virtual_refs_arr, set_virtual_refs) and the streamed commit they feed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk import errors
from aicechunk.format.coord_rows import CoordRows
from aicechunk.format.header import FileType, decode_versioned
from tests.test_virtual import virtual_repo

BLOB = np.arange(1024, dtype="<i4").tobytes()


async def array_session(
    tmp_path: Path,
    shape: tuple[int, ...] = (8, 8),
    spec: int | None = None,
    data_root: Path | None = None,
) -> tuple[aic.Repository, aic.Session, str]:
    """A repository with an authorized container for a local data file, and a session
    with an array ``v`` of one-element int32 chunks."""
    data_dir = (data_root or tmp_path) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "blob").write_bytes(BLOB)
    prefix = f"file://{data_dir}/"
    repo = await virtual_repo(
        tmp_path, prefix, aic.local_filesystem_store(str(data_dir)), {prefix: None}, spec
    )
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array(
        "v", shape=shape, chunks=(1,) * len(shape), dtype="<i4", compressors=None
    )
    return repo, session, f"{prefix}blob"


async def read_all(session: aic.Session) -> np.ndarray:
    arr = await zas.open_array(store=session.store, path="v", mode="r")
    return np.asarray(await arr.getitem(slice(None)))


async def test_columns_round_trip_through_zarr(tmp_path: Path) -> None:
    repo, session, location = await array_session(tmp_path)
    flat = np.arange(64)
    coords = np.stack([flat // 8, flat % 8], axis=1)
    # chunk (i, j) holds element 63 - 8i - j of the blob: reversed order
    await session.store.set_virtual_refs_columns("v", coords, location, 4 * (63 - flat), 4)
    await session.commit("columns")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_all(ro), np.arange(64)[::-1].reshape(8, 8))
    ref = await ro.get_chunk_ref("/v", (1, 2))
    assert ref == aic.format.manifest.VirtualRef(location, 4 * (63 - 10), 4)


async def test_columns_equal_the_per_ref_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = rng.permutation(64)[:40]  # unordered, with a later row overriding an earlier
    rows = np.concatenate([rows, rows[:5]])
    offsets = rng.integers(0, 200, len(rows)) * 4
    manifests, payloads = [], []
    for how in ("columns", "refs", "specs"):
        repo, session, location = await array_session(tmp_path / how, data_root=tmp_path)
        other = location.replace("blob", "other")
        locations = [location if r % 3 else other for r in rows.tolist()]
        coords = np.stack([rows // 8, rows % 8], axis=1)
        if how == "columns":
            await session.store.set_virtual_refs_columns(
                "v", coords, locations, offsets, 4, validate_containers=False
            )
        elif how == "refs":
            for (i, j), loc, off in zip(coords.tolist(), locations, offsets.tolist(), strict=True):
                await session.store.set_virtual_ref(f"v/c/{i}/{j}", loc, offset=off, length=4)
        else:
            specs = [
                aic.VirtualChunkSpec(tuple(c), loc, off, 4)
                for c, loc, off in zip(coords.tolist(), locations, offsets.tolist(), strict=True)
            ]
            assert await session.store.set_virtual_refs("v", specs) is None
        await session.commit(how)
        ro = await repo.readonly_session(branch="main")
        snap = await ro.snapshot()
        (node,) = [n for n in snap.nodes if n.path == "/v"]
        (mref,) = node.node_data.manifests  # type: ignore[union-attr]
        manifest = await ro._state.assets.fetch_manifest(mref.object_id)
        manifests.append([(c, r) for _, c, r in manifest])
        raw = (tmp_path / how / "repo" / "manifests" / str(mref.object_id)).read_bytes()
        payload = decode_versioned(raw, FileType.MANIFEST)[1]
        masked = payload.replace(mref.object_id.bytes, bytes(12)).replace(node.id.bytes, bytes(8))
        payloads.append(masked)
        lookups = [await ro.get_chunk_ref("/v", (r // 8, r % 8)) for r in range(64)]
        manifests.append(lookups)
    assert manifests[0] == manifests[2] == manifests[4]
    assert manifests[1] == manifests[3] == manifests[5]
    assert payloads[0] == payloads[1] == payloads[2]  # byte for byte, but the ids


async def test_icechunks_dense_form(tmp_path: Path) -> None:
    _, session, location = await array_session(tmp_path, (4, 6))
    # a 2 x 3 block at chunk (1, 2); the empty location skips its chunk
    locations = [location] * 6
    locations[4] = ""
    failed = await session.store.set_virtual_refs_arr(
        "v",
        (2, 3),
        locations,
        np.arange(6, dtype=np.uint64) * 4,
        np.full(6, 4, dtype=np.uint64),
        arr_offset=(1, 2),
    )
    assert failed is None
    refs = {c: await session.get_chunk_ref("/v", c) for c in [(1, 2), (2, 4), (2, 3), (0, 0)]}
    assert refs[(1, 2)].offset == 0 and refs[(2, 4)].offset == 20  # type: ignore[union-attr]
    assert refs[(2, 3)] is None and refs[(0, 0)] is None
    # a location no container serves is skipped and reported, as icechunk does
    failed = await session.store.set_virtual_refs_arr(
        "v", (1, 2), ["s3://elsewhere/x", location], np.zeros(2, np.uint64), np.ones(2, np.uint64)
    )
    assert failed == [(0, 0)]
    assert await session.get_chunk_ref("/v", (0, 0)) is None
    assert await session.get_chunk_ref("/v", (0, 1)) is not None


async def test_checksums_travel(tmp_path: Path) -> None:
    repo, session, location = await array_session(tmp_path, (4,))
    when = datetime(2030, 1, 2, tzinfo=UTC)
    await session.store.set_virtual_refs_columns(
        "v", np.arange(3), location, [0, 4, 8], 4, checksums=["etag-1", when, None]
    )
    await session.commit("checksums")
    ro = await repo.readonly_session(branch="main")
    refs = [await ro.get_chunk_ref("/v", (i,)) for i in range(3)]
    assert refs[0].etag == "etag-1"  # type: ignore[union-attr]
    assert refs[1].last_modified == int(when.timestamp())  # type: ignore[union-attr]
    assert refs[2].etag is None and refs[2].last_modified is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"coords": np.array([[0, 0], [8, 1]])}, aic.ChunkIndexError, r"\[8, 1\] \(row 1\)"),
        ({"coords": np.array([[0, 0], [-1, 1]])}, aic.ChunkIndexError, r"row 1"),
        ({"coords": np.array([[0.0, 1.0], [1.0, 1.0]])}, aic.InvalidInputError, "integers"),
        ({"coords": np.array([0, 1])}, aic.InvalidInputError, r"shape \(2,\)"),
        ({"offsets": np.array([4, -4])}, aic.UnrepresentableValueError, "row 1 of array '/v'"),
        ({"offsets": np.array([4, 4, 4])}, aic.InvalidInputError, r"shape \(3,\)"),
        ({"lengths": np.array([4.0, 4.0])}, aic.InvalidInputError, "lengths must be integers"),
        ({"locations": ["x", "y", "z"]}, aic.InvalidInputError, "3 locations for 2 refs"),
        ({"locations": ["s3://a/b", ""]}, aic.UnrepresentableValueError, "row 1"),
        ({"locations": ["s3://a/b"], "location_index": [0, 1]}, aic.InvalidInputError, "row 1"),
        ({"checksums": [None]}, aic.InvalidInputError, "1 checksums for 2 refs"),
        ({"checksums": [None, 5]}, aic.UnrepresentableValueError, "row 1"),
        ({"array_path": "nowhere"}, errors.NodeNotFoundError, "no array"),
    ],
)
async def test_columns_refuse_bad_input(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    _, session, location = await array_session(tmp_path)
    call: dict[str, object] = {
        "array_path": "v",
        "coords": np.array([[0, 0], [1, 1]]),
        "locations": location,
        "offsets": np.array([0, 4]),
        "lengths": 4,
        "validate_containers": False,
    }
    call.update(kwargs)
    with pytest.raises(error, match=match):
        await session.store.set_virtual_refs_columns(**call)  # type: ignore[arg-type]
    assert await session.get_chunk_ref("/v", (0, 0)) is None  # nothing was set


async def test_columns_check_containers(tmp_path: Path) -> None:
    _, session, location = await array_session(tmp_path)
    coords = np.array([[0, 0], [1, 1]])
    with pytest.raises(aic.VirtualChunkError, match="no virtual chunk container"):
        await session.store.set_virtual_refs_columns("v", coords, ["s3://x/y", location], 0, 4)
    assert await session.get_chunk_ref("/v", (1, 1)) is None  # nothing was set
    await session.store.set_virtual_refs_columns("v", coords, [location, location], 0, 4)
    assert await session.get_chunk_ref("/v", (1, 1)) is not None


async def test_specs_path_refuses_a_bad_batch_whole(tmp_path: Path) -> None:
    _, session, location = await array_session(tmp_path)
    specs = [
        aic.VirtualChunkSpec((0, 0), location, 0, 4),
        aic.VirtualChunkSpec((9, 0), location, 0, 4),
    ]
    with pytest.raises(aic.ChunkIndexError, match="row 1"):
        await session.store.set_virtual_refs("v", specs)
    assert await session.get_chunk_ref("/v", (0, 0)) is None
    specs = [aic.VirtualChunkSpec((0, 0), location, -1, 4)]
    with pytest.raises(aic.UnrepresentableValueError, match="offset"):
        await session.store.set_virtual_refs("v", specs)


async def test_forks_merge_columns(tmp_path: Path) -> None:
    repo, session, location = await array_session(tmp_path)
    await session.commit("array")
    session = await repo.writable_session("main")
    forks = [session.fork() for _ in range(2)]
    flat = np.arange(64)
    for k, fork in enumerate(forks):
        part = flat[k::2]
        await fork.store.set_virtual_refs_columns(
            "v", np.stack([part // 8, part % 8], axis=1), location, 4 * part, 4
        )
    await session.merge(*forks)
    await session.commit("merged")
    ro = await repo.readonly_session(branch="main")
    np.testing.assert_array_equal(await read_all(ro), np.arange(64).reshape(8, 8))


def test_coord_rows_read_as_tuples() -> None:
    rows = CoordRows(np.array([[0, 1], [2, 3], [4, 5]]), sorted_unique=True)
    assert list(rows) == [(0, 1), (2, 3), (4, 5)]
    assert rows[1] == (2, 3) and list(rows[1:]) == [(2, 3), (4, 5)]
    assert rows == [(0, 1), (2, 3), (4, 5)] and set(rows) == {(0, 1), (2, 3), (4, 5)}
    assert len(CoordRows(np.zeros((2, 0), dtype=np.int64))) == 2
    assert list(CoordRows(np.zeros((2, 0), dtype=np.int64))) == [(), ()]


@pytest.mark.parametrize("spec", [1, 2])
async def test_icechunk_reads_200k_column_refs(tmp_path: Path, spec: int) -> None:
    n_side = 448  # 200,704 chunks
    repo, session, location = await array_session(tmp_path, (n_side, n_side), spec)
    other = location.replace("blob", "other")
    flat = np.arange(n_side * n_side, dtype=np.int64)
    for first in range(0, len(flat), 50_000):
        part = flat[first : first + 50_000]
        await session.store.set_virtual_refs_columns(
            "v",
            np.stack([part // n_side, part % n_side], axis=1),
            [location, other],
            part * 3,
            part % 7 + 1,
            location_index=part % 2,
            validate_containers=False,
        )
    await session.store.delete("v/c/0/5")
    await session.commit("200k")
    ro = await repo.readonly_session(branch="main")
    log = await ro._state.assets.fetch_transaction_log(ro.snapshot_id)
    (logged,) = log.updated_chunks.values()
    assert len(logged) == len(flat)

    def theirs() -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        ic = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
        store = ic.readonly_session("main").store

        async def collect() -> list[tuple[object, ...]]:
            return [batch async for batch in store.array_chunk_iterator("v")]

        batches = asyncio.run(collect())
        coords = np.concatenate([b[0] for b in batches])
        paths = [p for b in batches for p in b[2]]  # type: ignore[attr-defined]
        return (
            coords,
            paths,
            np.concatenate([b[3] for b in batches]),
            np.concatenate([b[4] for b in batches]),
        )

    coords, paths, offsets, lengths = await asyncio.to_thread(theirs)
    expected = np.delete(flat, 5)
    order = np.lexsort(coords.T[::-1])
    coords, offsets, lengths = coords[order], offsets[order], lengths[order]
    paths = [paths[i] for i in order.tolist()]
    np.testing.assert_array_equal(coords[:, 0] * n_side + coords[:, 1], expected)
    np.testing.assert_array_equal(offsets, expected * 3)
    np.testing.assert_array_equal(lengths, expected % 7 + 1)
    assert paths == [location if i % 2 == 0 else other for i in expected.tolist()]
