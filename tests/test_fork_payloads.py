"""Crafted fork payloads: everything a payload holds is checked as strictly as the session
API checks the same change, before anything is merged; a refused payload leaves the
parent session unchanged and able to commit."""

from __future__ import annotations

import copy
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import zarr.api.asynchronous as zas
import zstandard

import aicechunk as aic
from tests.test_store import array_meta as store_array_meta

CHUNK = 4
Body = dict[str, Any]
GROUP = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()


def array_meta(shape: list[int], chunks: list[int]) -> bytes:
    return store_array_meta(
        shape,
        chunks,
        data_type="int64",
        codecs=[{"name": "bytes", "configuration": {"endian": "little"}}],
    )


def unpack(payload: bytes) -> Body:
    body: Body = msgpack.unpackb(
        zstandard.ZstdDecompressor().decompress(payload[16:]), raw=False, strict_map_key=False
    )
    return body


def pack(body: Body) -> bytes:
    packed = zstandard.ZstdCompressor().compress(msgpack.packb(body, use_bin_type=True))
    return struct.pack("<8sHHI", b"AICFORK\x00", 2, 0, zlib.crc32(packed)) + packed


def table(coords: list[list[int]], ndim: int) -> dict[str, Any]:
    """A chunk table of inline 1-byte chunks at ``coords``."""
    return {
        "d": ndim,
        "c": np.array(coords, dtype="<i8").reshape(len(coords), ndim).tobytes(),
        "k": np.full(len(coords), 1, dtype="u1").tobytes(),
        "I": [np.ones(len(coords), dtype="<u8").tobytes(), b"x" * len(coords)],
    }


async def setup() -> tuple[aic.Repository, aic.Session, bytes, Body]:
    """A repository with the array /data (8 elements, grid [2]) and the group /grp; a fork
    that writes chunk 0 of /data, creates group /g and array /new; its payload."""
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    root = await zas.open_group(store=session.store, mode="w")
    await root.create_array("data", shape=(2 * CHUNK,), chunks=(CHUNK,), dtype="i8")
    await root.create_group("grp")
    await session.commit("base")
    session = await repo.writable_session("main")  # a committed session is read-only
    fork = session.fork()
    data = await zas.open_array(store=fork.store, path="data")
    await data.setitem(slice(0, CHUNK), np.arange(CHUNK))
    await fork.set_metadata("/g", GROUP)
    await fork.set_metadata("/new", array_meta([8], [4]))
    await fork.set_chunk("/new", (1,), b"12345678" * 4)
    payload = fork.to_bytes()
    return repo, session, payload, unpack(payload)


def ids(body: Body) -> dict[str, bytes]:
    """Node ids by path: the payload's new nodes and, from its chunk changes, /data."""
    changes = body["changes"]
    found = {p: n for p, n, _ in changes["ng"]} | {p: n for p, n, _ in changes["na"]}
    new = set(found.values())
    found["/data"] = next(n for n, _ in changes["c"] if n not in new)
    return found


def set_path(index: int, path: Any) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        body["changes"]["ng"][index][0] = path

    return mutate


def add_group(path: Any, data: Any = GROUP) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        body["changes"]["ng"].append([path, b"\x01" * 8, data])

    return mutate


def chunks_of(path: str, tables: list[dict[str, Any]]) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        nid = ids(body)[path]
        body["changes"]["c"] = [[n, t] for n, t in body["changes"]["c"] if n != nid]
        body["changes"]["c"].append([nid, tables])

    return mutate


def chunk_list(path: str, entries: list[Any]) -> Callable[[Body], None]:
    return chunks_of(path, [{"L": entries}])


def with_new_array_def(fn: Callable[[list[Any]], None]) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        fn(body["changes"]["na"][0][2])

    return mutate


def set_field(key: str, value: Any) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        body[key] = value

    return mutate


def dup_first_group(body: Body) -> None:
    p, _, data = body["changes"]["ng"][0]
    body["changes"]["ng"].append([p, b"\x02" * 8, data])


def group_path_as_array(body: Body) -> None:
    body["changes"]["na"][0][0] = body["changes"]["ng"][0][0]


def shared_node_id(body: Body) -> None:
    body["changes"]["na"][0][1] = body["changes"]["ng"][0][1]


def group_gets_chunks(body: Body) -> None:
    gid = ids(body)["/g"]
    body["changes"]["c"].append([gid, [table([[0]], 1)]])


def unknown_node_chunks(body: Body) -> None:
    body["changes"]["c"].append([b"\x07" * 8, [table([[0]], 1)]])


def update_unknown_array(body: Body) -> None:
    body["changes"]["ua"].append([b"\x07" * 8, [[[8, 4]], None, array_meta([8], [4])]])


def delete_unknown(body: Body) -> None:
    body["changes"]["dg"].append(["/nothing", b"\x07" * 8])


def delete_with_wrong_id(body: Body) -> None:
    body["changes"]["dg"].append(["/grp", b"\x07" * 8])


def shadow_base_node(body: Body) -> None:
    body["changes"]["ng"].append(["/data", b"\x03" * 8, GROUP])


def reuse_base_id(body: Body) -> None:
    body["changes"]["ng"].append(["/other", ids(body)["/data"], GROUP])


def grow_base_array(body: Body) -> None:
    """An updated definition that disagrees with its metadata, to reach chunk 5 of /data."""
    nid = ids(body)["/data"]
    body["changes"]["ua"].append([nid, [[[24, 4]], None, array_meta([8], [4])]])


def chunk_and_delete(body: Body) -> None:
    body["changes"]["da"].append(["/data", ids(body)["/data"]])


SAMPLE_REF = [1, b"x"]
CASES: dict[str, Callable[[Body], None]] = {
    # node paths
    "path ../../evil": set_path(0, "../../evil"),
    "path relative": set_path(0, "relative"),
    "path empty": set_path(0, ""),
    "path /a/../b": set_path(0, "/a/../b"),
    "path /a/./b": set_path(0, "/a/./b"),
    "path //a": set_path(0, "//a"),
    "path trailing /": set_path(0, "/a/"),
    "path NUL": set_path(0, "/\x00"),
    "path newline": set_path(0, "/a\nb"),
    "path DEL": set_path(0, "/a\x7f"),
    "path not a string": set_path(0, 7),
    "path of a deleted node": lambda b: b["changes"]["dg"].append(["../x", b"\x05" * 8]),
    # duplicates
    "duplicate /x": dup_first_group,
    "group and array at one path": group_path_as_array,
    "two nodes, one id": shared_node_id,
    "chunk changes listed twice": lambda b: b["changes"]["c"].append(b["changes"]["c"][0]),
    # metadata
    "metadata not JSON": add_group("/bad", b"{not json"),
    "metadata a JSON list": add_group("/bad", b"[1, 2]"),
    "metadata without node_type": add_group("/bad", b"{}"),
    "metadata not bytes": add_group("/bad", 5),
    "group with array metadata": add_group("/bad", array_meta([8], [4])),
    "array with group metadata": with_new_array_def(lambda d: d.__setitem__(2, GROUP)),
    "shape disagrees with metadata": with_new_array_def(lambda d: d.__setitem__(0, [[2**60, 4]])),
    "dimension names disagree": with_new_array_def(lambda d: d.__setitem__(1, ["x"])),
    "shape beyond uint64": with_new_array_def(lambda d: d.__setitem__(2, array_meta([2**64], [1]))),
    "shape as strings": with_new_array_def(lambda d: d.__setitem__(0, [["8", "4"]])),
    # chunks
    "chunk outside the grid (new array)": chunks_of("/new", [table([[2]], 1)]),
    "chunk outside the grid (base array)": chunks_of("/data", [table([[2]], 1)]),
    "chunk of wrong rank (new array)": chunks_of("/new", [table([[0, 0]], 2)]),
    "chunk of wrong rank (base array)": chunks_of("/data", [table([[0, 0]], 2)]),
    "chunk of rank 0": chunks_of("/data", [table([[]], 0)]),
    "negative chunk index": chunks_of("/data", [table([[-1]], 1)]),
    "chunk index 2**32-1": chunks_of("/data", [table([[2**32 - 1]], 1)]),
    "listed chunk outside the grid": chunk_list("/data", [[[5], SAMPLE_REF]]),
    "listed chunk of wrong rank": chunk_list("/data", [[[0, 1], SAMPLE_REF]]),
    "listed chunk index as string": chunk_list("/data", [[["0"], SAMPLE_REF]]),
    "listed negative offset": chunk_list("/data", [[[0], [0, b"c" * 12, -1, 1]]]),
    "listed negative length": chunk_list("/data", [[[0], [0, b"c" * 12, 0, -1]]]),
    "listed float offset": chunk_list("/data", [[[0], [0, b"c" * 12, 1.5, 1]]]),
    "listed bad chunk id": chunk_list("/data", [[[0], [0, b"c" * 5, 0, 1]]]),
    "listed empty location": chunk_list("/data", [[[0], [2, "", 0, 1, None, None]]]),
    "listed last-modified beyond uint32": chunk_list(
        "/data", [[[0], [2, "s3://b/k", 0, 1, None, 2**32]]]
    ),
    "listed ETag not a string": chunk_list("/data", [[[0], [2, "s3://b/k", 0, 1, 5, None]]]),
    "listed unknown kind": chunk_list("/data", [[[0], [9, b"x"]]]),
    "chunks of a group": group_gets_chunks,
    "chunks of an unknown node": unknown_node_chunks,
    "chunks of a deleted array": chunk_and_delete,
    # against the base snapshot
    "update of an unknown array": update_unknown_array,
    "delete of an unknown node": delete_unknown,
    "delete with the wrong node id": delete_with_wrong_id,
    "new node over a base node": shadow_base_node,
    "new node with a base node's id": reuse_base_id,
    "base array redefined past its metadata": grow_base_array,
    # the rest of the body
    "body not a mapping": lambda b: (b.clear(), b.update({"changes": []})),
    "cache sizes not integers": set_field("cache", ["a", "b", "c"]),
    "read concurrency 0": set_field("concurrency", 0),
    "inline threshold negative": set_field("inline", -1),
    "branch not a string": set_field("branch", 5),
    "changes not a mapping": set_field("changes", [1, 2]),
}


async def test_the_legitimate_payload_merges() -> None:
    repo, session, payload, body = await setup()
    assert unpack(payload) == body and unpack(pack(body)) == body
    await session.merge(aic.ForkSession.from_bytes(pack(body)))
    await session.commit("merged")
    ro = await repo.readonly_session(branch="main")
    assert [n.path for n in await ro.list_nodes()] == ["/", "/data", "/g", "/grp", "/new"]


@pytest.mark.attack("crafted payloads")
@pytest.mark.parametrize("case", sorted(CASES))
async def test_crafted_payload_is_refused(case: str) -> None:
    repo, session, _, body = await setup()
    crafted = copy.deepcopy(body)
    CASES[case](crafted)
    before = copy.deepcopy(session.changes)
    with pytest.raises(aic.ForkPayloadError) as info:
        await session.merge(aic.ForkSession.from_bytes(pack(crafted)))
    assert isinstance(info.value, aic.AicechunkError) and isinstance(info.value, ValueError)
    assert session.changes == before
    # the session still works: a legitimate payload merges and commits, listings read
    await session.merge(aic.ForkSession.from_bytes(pack(body)))
    await session.commit("after a refused payload")
    ro = await repo.readonly_session(branch="main")
    keys = sorted([k async for k in ro.store.list()])
    assert "data/c/0" in keys and "new/c/1" in keys and "g/zarr.json" in keys


@pytest.mark.attack("crafted payloads")
async def test_refused_fork_among_good_ones_merges_none() -> None:
    """merge(good, bad): the bad payload is found before the good one is merged."""
    _, session, payload, body = await setup()
    good = aic.ForkSession.from_bytes(payload)
    bad_body = copy.deepcopy(body)
    chunks_of("/data", [table([[2]], 1)])(bad_body)  # passes from_bytes, fails the merge
    bad = aic.ForkSession.from_bytes(pack(bad_body))
    with pytest.raises(aic.ForkPayloadError, match="outside the chunk grid"):
        await session.merge(good, bad)
    assert session.changes.is_empty()


@pytest.mark.attack("crafted payloads")
async def test_payload_errors_say_what() -> None:
    _, session, _, body = await setup()
    messages = {}
    for case in ("path ../../evil", "metadata not JSON", "chunk outside the grid (base array)"):
        crafted = copy.deepcopy(body)
        CASES[case](crafted)
        with pytest.raises(aic.ForkPayloadError) as info:
            await session.merge(aic.ForkSession.from_bytes(pack(crafted)))
        messages[case] = str(info.value)
    assert "'../../evil'" in messages["path ../../evil"]
    assert "not JSON" in messages["metadata not JSON"]
    assert "[2]" in messages["chunk outside the grid (base array)"]
