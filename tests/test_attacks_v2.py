"""Attacks on spec v2 repositories: crafted ``repo`` files and ``overwritten/`` copies,
swapped files of the wrong spec version, crafted moves, hostile FlexBuffers, and a server
that lies about the ``repo`` object's version or garbles its answers.

Every attack must end in a typed ``AicechunkError`` that names the file, or succeed
without harm, within a deadline: a hang is a failure (``bounded``), never a stuck suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import zarr.api.asynchronous as zas
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.drivers.base import ObjectInfo
from aicechunk.errors import AicechunkError, FormatError, StorageError
from aicechunk.format import repo_updates as ru
from aicechunk.format.flatbuf import Reader
from aicechunk.format.flexbuf import MAX_DEPTH, decode_flex, encode_flex
from aicechunk.format.header import HEADER_SIZE, FileType, decode_versioned, encode_file
from aicechunk.format.ids import NodeId, SnapshotId
from aicechunk.format.repo_info import (
    OVERWRITTEN_PREFIX,
    REPO_INFO_KEY,
    RepoInfo,
    SnapshotInfo,
    decode_config,
    decode_repo_info,
    encode_repo_info,
)
from aicechunk.format.snapshot import decode_snapshot, encode_snapshot
from aicechunk.format.timestamps import EPOCH, MAX_MICROS
from aicechunk.format.transaction_log import (
    MoveOperation,
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)
from aicechunk.testing import CountingDriver
from tests.conftest import s3_test_storage
from tests.format.corruption import mutate
from tests.servers import create_s3_bucket, next_bucket_name, serve_app

T = TypeVar("T")
DEADLINE = 20.0
NOW = datetime(2025, 5, 5, tzinfo=UTC)


class Hang(Exception):
    """The attack ran past its deadline."""


@contextlib.contextmanager
def deadline(seconds: float = DEADLINE) -> Iterator[None]:
    """Fail (``Hang``) what runs past ``seconds``, also a loop that never awaits: an alarm
    interrupts pure Python code where ``asyncio.wait_for`` cannot."""

    def expired(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def bounded(work: Awaitable[T], seconds: float = DEADLINE) -> T:
    """``work`` under ``asyncio.wait_for`` (a hang that awaits), with an alarm behind it
    (a hang that spins)."""
    with deadline(seconds + 5):
        try:
            return await asyncio.wait_for(work, seconds)
        except TimeoutError:
            raise Hang(f"still waiting after {seconds} s") from None


async def collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


# --- crafting repo info files ---------------------------------------------------------

A, B, C = (SnapshotId(bytes([n]) * 12) for n in (0x0A, 0x0B, 0x0C))


def sample_info(**changes: Any) -> RepoInfo:
    """Three snapshots A <- B <- C (C with pruned logs), refs, deleted tags, metadata;
    every field that crafting patches is present (not left at its default)."""
    info = RepoInfo(
        branches={"aa": B, "main": C, "zz": C},
        tags={"t1": C, "t2": B},
        snapshots=(
            SnapshotInfo(A, None, NOW, "root"),
            SnapshotInfo(B, A, NOW + timedelta(seconds=1), "b", {"k": 1}),
            SnapshotInfo(C, B, NOW + timedelta(seconds=2), "c", {"k": 2}, (A,)),
        ),
        status=ru.RepoStatus(ru.Availability.READ_ONLY, NOW, "why"),
        latest_updates=(
            ru.Update(ru.NewCommit("main", C), NOW + timedelta(seconds=3), None),
            ru.Update(ru.RepoInitialized(), NOW, "repo.1.X"),
        ),
        deleted_tags=("d1", "d2"),
        metadata={"k1": "placeholder-one", "k2": 2},
        repo_before_updates="repo.0.Y",
    )
    return replace(info, **changes)


def payload(data: bytes) -> bytearray:
    return bytearray(decode_versioned(data, FileType.REPO_INFO)[1])


def wrap(body: bytes | bytearray, file_type: FileType = FileType.REPO_INFO) -> bytes:
    return encode_file(file_type, bytes(body), spec_version=2)


def ref_names(body: bytearray, index: int) -> list[tuple[int, int]]:
    """(start, length) of each name in the refs vector at root field ``index``."""
    r = Reader(bytes(body), "x")
    return [r.vector(pos, 0) for pos in r.table_vector(r.root(), index)]


def rename(body: bytearray, index: int, old: str, new: str) -> None:
    assert len(old) == len(new)
    for start, length in ref_names(body, index):
        if bytes(body[start : start + length]) == old.encode():
            body[start : start + length] = new.encode()
            return
    raise AssertionError(f"no name {old!r}")


def field_pos(body: bytearray, *path: tuple[int, int | None]) -> int:
    """Position of a field reached from the root by (field, vector item or None) steps."""
    r = Reader(bytes(body), "x")
    table = r.root()
    for step, (index, item) in enumerate(path):
        if step == len(path) - 1:
            pos = r.field(table, index)
            assert pos is not None, f"field {index} is absent"
            return pos
        table = (
            r.table_vector(table, index)[item] if item is not None else r.table_field(table, index)
        )  # type: ignore[assignment]
    raise AssertionError("empty path")


def vector_length_pos(body: bytearray, index: int) -> int:
    r = Reader(bytes(body), "x")
    pos = r.table_field(r.root(), index)
    assert pos is not None
    return pos


def decode_fails(body: bytes | bytearray, *words: str) -> FormatError:
    with deadline(), pytest.raises(FormatError) as info:
        decode_repo_info(wrap(body), "repo")
    message = str(info.value)
    assert message.startswith("repo: "), message
    for word in words:
        assert word in message, message
    return info.value


# --- the format: crafted repo info files ------------------------------------------------


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize("parent", [3, 99, -2, -(2**31)])
def test_a_parent_outside_the_snapshot_list(parent: int) -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into("<i", body, field_pos(body, (4, 2), (1, None)), parent)  # C's parent
    decode_fails(body, "parent offset", "outside")


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize("index", [1, 2], ids=["tag", "branch"])
@pytest.mark.parametrize("position", [3, 2**32 - 1])
def test_a_ref_outside_the_snapshot_list(index: int, position: int) -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into("<I", body, field_pos(body, (index, 1), (1, None)), position)
    decode_fails(body, "points at snapshot")


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize(
    ("index", "old", "new", "problem"),
    [
        (2, "zz", "aa", "twice"),  # branches aa, main, aa
        (2, "zz", "ab", "sorted"),  # branches aa, main, ab: a binary search misses ab
        (1, "t2", "t1", "twice"),
        (1, "t1", "t3", "sorted"),
        (3, "d2", "d1", "twice"),
        (3, "d1", "d3", "sorted"),
        (6, "k2", "k1", "twice"),  # repository metadata names
    ],
)
def test_duplicate_or_unsorted_names(index: int, old: str, new: str, problem: str) -> None:
    body = payload(encode_repo_info(sample_info()))
    if index in (1, 2):
        rename(body, index, old, new)
    else:  # deleted tags are strings; metadata items hold a name at field 0
        start = bytes(body).index(old.encode())
        assert bytes(body).count(old.encode()) == 1
        body[start : start + len(old)] = new.encode()
    decode_fails(body, problem)


@pytest.mark.attack("crafted v2 files")
def test_an_empty_operations_log() -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into("<I", body, vector_length_pos(body, 7), 0)
    decode_fails(body, "operations log")


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize(
    "index", [3, 4, 7, 1, 2], ids=["deleted_tags", "snapshots", "updates", "tags", "branches"]
)
def test_vectors_claiming_huge_lengths(index: int) -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into("<I", body, vector_length_pos(body, index), 2**31 - 1)
    decode_fails(body, "outside")


@pytest.mark.attack("crafted v2 files")
def test_pruned_logs_claiming_a_huge_length() -> None:
    body = payload(encode_repo_info(sample_info()))
    r = Reader(bytes(body), "x")
    c = r.table_vector(r.root(), 4)[2]
    pruned = r.table_field(c, 5)
    assert pruned is not None
    struct.pack_into("<I", body, pruned, 2**30)
    decode_fails(body, "outside")


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize(
    ("path", "fmt", "value", "problem"),
    [
        (((4, 2), (2, None)), "<Q", MAX_MICROS + 1, "past year 9999"),  # flushed_at
        (((4, 2), (2, None)), "<Q", 2**64 - 1, "past year 9999"),
        (((7, 0), (2, None)), "<Q", 2**64 - 1, "past year 9999"),  # updated_at
        (((5, None), (1, None)), "<Q", 2**64 - 1, "past year 9999"),  # status set_at
        (((5, None), (0, None)), "<B", 9, "availability 9"),
        (((7, 0), (0, None)), "<B", 77, "update type 77"),
        (((7, 0), (0, None)), "<B", 0, "update type 0"),
    ],
)
def test_out_of_range_scalars(
    path: tuple[tuple[int, int | None], ...], fmt: str, value: int, problem: str
) -> None:
    body = payload(encode_repo_info(sample_info()))
    struct.pack_into(fmt, body, field_pos(body, *path), value)
    decode_fails(body, problem)


@pytest.mark.attack("crafted v2 files")
def test_a_repo_info_file_of_spec_version_1_or_of_another_type() -> None:
    good = encode_repo_info(sample_info())
    v1 = good[: HEADER_SIZE - 3] + b"\x01" + good[HEADER_SIZE - 2 :]
    with pytest.raises(FormatError, match="repo: spec version 1 has no repo info file"):
        decode_repo_info(v1, "repo")
    snapshot = good[: HEADER_SIZE - 2] + bytes([FileType.SNAPSHOT]) + good[HEADER_SIZE - 1 :]
    with pytest.raises(FormatError, match="repo: expected a repo_info file, got snapshot"):
        decode_repo_info(snapshot, "repo")


# --- hostile FlexBuffers: depth and shared containers -----------------------------------


def nested_lists(depth: int) -> bytes:
    """A FlexBuffer of lists nested ``depth`` deep, each holding the next."""
    buf = bytearray(b"\x00")  # the innermost: an empty vector at offset 1
    inner = 1
    for _ in range(depth):
        buf.append(1)  # length
        at = len(buf)
        buf += bytes([at - inner, 0x28])  # one item: the inner vector (1-byte width)
        inner = at
    slot = len(buf)
    return bytes(buf + bytes([slot - inner, 0x28, 1]))


def laughs(levels: int) -> bytes:
    """A FlexBuffer of ``levels`` vectors each holding the one below twice: 2**levels
    leaves in a buffer of a few bytes per level (a billion laughs)."""
    buf = bytearray(bytes([1, 0, 0x08]))  # [0]: one unsigned 0
    below = 1
    for _ in range(levels):
        buf.append(2)
        at = len(buf)
        buf += bytes([at - below, at + 1 - below, 0x28, 0x28])
        below = at
    slot = len(buf)
    return bytes(buf + bytes([slot - below, 0x28, 1]))


def test_the_crafted_flexbuffers_are_well_formed() -> None:
    assert decode_flex(nested_lists(3)) == [[[[]]]]
    assert decode_flex(laughs(2)) == [[[0], [0]], [[0], [0]]]


@pytest.mark.attack("bombs")
@pytest.mark.parametrize("levels", [24, 64, 190])
def test_a_billion_laughs_flexbuffer(levels: int) -> None:
    data = laughs(levels)
    with deadline(10), pytest.raises(FormatError, match="meta: malformed FlexBuffer"):
        decode_flex(data, "meta")


@pytest.mark.attack("bombs")
def test_one_string_referred_to_from_many_slots_costs_its_size_once() -> None:
    """A big string that every item of a long vector refers to: the decoded value must
    share it, not copy it per item (a memory bomb otherwise)."""
    text = b"x" * 100_000
    buf = bytearray(struct.pack("<I", len(text)) + text + b"\x00")
    string_at = 4
    count = 20_000
    buf += b"\x00" * (-len(buf) % 4)
    buf += struct.pack("<I", count)
    items = len(buf)
    for i in range(count):
        buf += struct.pack("<I", items + 4 * i - string_at)
    buf += bytes([0x16]) * count  # strings of 4-byte width
    slot = len(buf)
    buf += struct.pack("<I", slot - items) + bytes([0x2A, 4])  # root: vector, width 4
    with deadline(10):
        value = decode_flex(bytes(buf), "meta")
    assert len(value) == count and all(v is value[0] for v in value)


@pytest.mark.attack("bombs")
def test_nesting_past_the_limit_is_refused_without_a_recursion_error() -> None:
    assert len(decode_flex(nested_lists(MAX_DEPTH - 1))) == 1
    for depth in (MAX_DEPTH + 1, 5000):
        with pytest.raises(FormatError, match="nested deeper"):
            decode_flex(nested_lists(depth), "meta")


def _with_flex_metadata(crafted: bytes) -> bytes:
    """A repo info file whose metadata value ``k1`` is ``crafted``, padded in front to the
    length of the string it replaces (a FlexBuffer's root is at its end)."""
    filler = "p" * (len(crafted) + 16)
    body = payload(encode_repo_info(sample_info(metadata={"k1": filler, "k2": 2})))
    old = encode_flex(filler)
    assert bytes(body).count(old) == 1
    start = bytes(body).index(old)
    body[start : start + len(old)] = crafted.rjust(len(old), b"\x00")
    return wrap(body)


@pytest.mark.attack("bombs")
@pytest.mark.parametrize("make", [lambda: laughs(60), lambda: nested_lists(3000)])
def test_hostile_flexbuffers_in_the_repo_info_file(make: Callable[[], bytes]) -> None:
    crafted = make()
    with deadline(10), pytest.raises(FormatError, match="repo: malformed FlexBuffer"):
        decode_repo_info(_with_flex_metadata(crafted), "repo")
    info = sample_info(config=crafted)
    decoded = decode_repo_info(encode_repo_info(info), "repo")  # the config decodes lazily
    with deadline(10), pytest.raises(FormatError, match="repo config: malformed FlexBuffer"):
        decode_config(decoded)


# --- repositories with crafted repo info files ------------------------------------------


async def v2_repo(driver: MemoryDriver | None = None) -> tuple[MemoryDriver, aic.Repository]:
    """A spec v2 repository: two commits on main, branch dev, tag t."""
    driver = driver or MemoryDriver()
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=2)
    for n in range(2):
        session = await repo.writable_session("main")
        if n == 0:
            arr = await zas.create_array(
                session.store, name="x", shape=(4,), chunks=(1,), dtype="i4"
            )
        else:
            arr = await zas.open_array(store=session.store, path="x")
        await arr.setitem(slice(None), np.full(4, n, dtype="i4"))
        await session.commit(f"commit {n}")
    tip = await repo.lookup_branch("main")
    await repo.create_branch("dev", tip)
    await repo.create_tag("t", tip)
    return driver, repo


async def stored_info(driver: MemoryDriver) -> RepoInfo:
    return decode_repo_info(await driver.get(REPO_INFO_KEY), REPO_INFO_KEY)


async def reopen(driver: MemoryDriver) -> aic.Repository:
    return await aic.Repository.open(aic.storage_from_driver(driver))


async def keys(driver: MemoryDriver) -> dict[str, bytes]:
    return {info.key: await driver.get(info.key) async for info in driver.list("")}


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize("shape", ["two-cycle", "self"])
async def test_parents_forming_a_cycle(shape: str) -> None:
    driver, _ = await v2_repo()
    info = await stored_info(driver)
    tip = info.branches["main"]
    chain = list(info.ancestry(tip))
    assert len(chain) == 3
    root = chain[-1].id
    looped = tip if shape == "two-cycle" else root
    snapshots = tuple(replace(s, parent_id=looped) if s.id == root else s for s in info.snapshots)
    await driver.put(REPO_INFO_KEY, encode_repo_info(replace(info, snapshots=snapshots)))
    repo = await reopen(driver)
    with pytest.raises(FormatError, match="loops"):
        await bounded(collect(repo.ancestry(branch="main")))
    with deadline(), pytest.raises(FormatError, match="loops"):
        list((await stored_info(driver)).ancestry(tip))


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize("shape", ["self", "two-cycle", "three-cycle"])
async def test_a_backup_chain_that_loops(shape: str) -> None:
    """``repo_before_updates`` links copies that link back: the ops log must end."""
    driver, repo = await v2_repo()
    info = await stored_info(driver)
    names = {"self": ["a"], "two-cycle": ["a", "b"], "three-cycle": ["a", "b", "c"]}[shape]
    for i, name in enumerate(names):
        nxt = names[(i + 1) % len(names)]
        at = info.latest_updates[-1].updated_at - timedelta(days=i + 1)
        old = replace(
            info, latest_updates=(ru.Update(ru.MetadataChanged(), at),), repo_before_updates=nxt
        )
        await driver.put(OVERWRITTEN_PREFIX + name, encode_repo_info(old))
    await driver.put(REPO_INFO_KEY, encode_repo_info(replace(info, repo_before_updates="a")))
    with pytest.raises(FormatError, match="loops") as err:
        await bounded(collect(repo.ops_log()))
    assert OVERWRITTEN_PREFIX in str(err.value)


@pytest.mark.attack("hostile names and keys")
@pytest.mark.parametrize(
    "name", ["../../outside", "../repo", "a/b", "..", ".", "", "x\x00y", "x\ny", "x\\y", "é" * 600]
)
async def test_a_backup_name_that_is_no_single_name(tmp_path: Path, name: str) -> None:
    """The ops log reads copies under ``overwritten/`` only: a crafted name is a
    FormatError naming the file it came from, and nothing outside is read."""
    root = tmp_path / "repo"
    await v2_repo_on(root)
    local = aic.local_filesystem_storage(root).driver()
    info = decode_repo_info(await local.get(REPO_INFO_KEY))
    planted = replace(info, latest_updates=(ru.Update(ru.GCRan(), NOW),))
    (tmp_path / "outside").write_bytes(encode_repo_info(planted))
    await local.put(REPO_INFO_KEY, encode_repo_info(replace(info, repo_before_updates=name)))
    counting = CountingDriver(local)
    repo = await aic.Repository.open(aic.storage_from_driver(counting))
    counting.reset()
    with pytest.raises(FormatError, match="repo: ") as err:
        await bounded(collect(repo.ops_log()))
    assert "backup" in str(err.value)
    assert {key for _, key in counting.calls} <= {REPO_INFO_KEY}
    await local.close()


async def v2_repo_on(root: Path) -> aic.Repository:
    repo = await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=2)
    await repo.create_branch("dev", await repo.lookup_branch("main"))
    return repo


@pytest.mark.attack("crafted v2 files")
async def test_the_latest_update_at_the_end_of_time() -> None:
    """An update dated 9999-12-31T23:59:59.999999: nothing later can be logged; a change
    is refused as a FormatError, and nothing is written."""
    driver, repo = await v2_repo()
    info = await stored_info(driver)
    last = EPOCH + timedelta(microseconds=MAX_MICROS)
    late = (ru.Update(ru.MetadataChanged(), last), *info.latest_updates)
    await driver.put(REPO_INFO_KEY, encode_repo_info(replace(info, latest_updates=late)))
    before = await keys(driver)
    tip = await repo.lookup_branch("main")
    for change in (
        lambda: repo.create_branch("new", tip),
        lambda: repo.set_metadata({"a": 1}),
        lambda: repo.delete_tag("t"),
    ):
        with pytest.raises(FormatError, match="repo: "):
            await bounded(change())
    session = await repo.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x")
    await arr.setitem(0, 5)
    with pytest.raises(FormatError, match="repo: "):
        await bounded(session.commit("after the end of time"))
    after = await keys(driver)
    assert {k: v for k, v in after.items() if k.startswith(("repo", "overwritten/"))} == {
        k: v for k, v in before.items() if k.startswith(("repo", "overwritten/"))
    }


@pytest.mark.attack("hostile names and keys")
async def test_hostile_ref_names_in_the_repo_info_file(tmp_path: Path) -> None:
    """Names that icechunk 2.x writes as given (in spec v2 a name is no key): listed,
    kept across changes, never turned into a path."""
    root = tmp_path / "repo"
    repo = await v2_repo_on(root)
    local = aic.local_filesystem_storage(root).driver()
    info = decode_repo_info(await local.get(REPO_INFO_KEY))
    tip = info.branches["main"]
    hostile = ["../../escape", "a/b", "", "..", "x\x00y", "\x1b[31m", "n" * 100_000]
    branches = {**info.branches, **{name: tip for name in hostile}}
    tags = {**info.tags, **{name: tip for name in hostile}}
    await local.put(REPO_INFO_KEY, encode_repo_info(replace(info, branches=branches, tags=tags)))
    repo = await aic.Repository.open(aic.local_filesystem_storage(root))
    assert await bounded(repo.list_branches()) == set(branches)
    assert await bounded(repo.list_tags()) == set(tags)
    await bounded(repo.create_branch("fine", tip))
    session = await repo.writable_session("main")
    await zas.create_group(store=session.store, path="g")
    await bounded(session.commit("beside hostile names"))
    assert await repo.list_branches() == {*branches, "fine"}
    outside = sorted(p.name for p in tmp_path.rglob("*") if not p.is_relative_to(root))
    assert outside == []
    await local.close()


# --- swapped files ------------------------------------------------------------------------


@pytest.mark.attack("swapped files")
async def test_a_snapshot_file_swapped_for_another_in_a_v2_repository() -> None:
    driver, _ = await v2_repo()
    info = await stored_info(driver)
    chain = list(info.ancestry(info.branches["main"]))
    tip, parent = chain[0].id, chain[1].id
    await driver.put(f"snapshots/{tip}", await driver.get(f"snapshots/{parent}"))
    repo = await reopen(driver)
    with pytest.raises(FormatError, match=f"snapshots/{tip}: the file holds snapshot {parent}"):
        await bounded(collect(repo.ancestry(branch="main")))


@pytest.mark.attack("swapped files")
@pytest.mark.parametrize("what", ["repo", "snapshot"])
async def test_a_v1_file_where_a_v2_one_is_expected(what: str) -> None:
    """A ``repo`` object that is a v1 file of another type, or says spec version 1."""
    driver, _ = await v2_repo()
    good = await driver.get(REPO_INFO_KEY)
    if what == "repo":
        bad = good[: HEADER_SIZE - 3] + b"\x01" + good[HEADER_SIZE - 2 :]
    else:
        info = await stored_info(driver)
        bad = await driver.get(f"snapshots/{info.branches['main']}")
    await driver.put(REPO_INFO_KEY, bad)
    with pytest.raises(FormatError, match="repo: "):
        await bounded((await reopen(driver)).list_branches())


async def v1_repo() -> tuple[MemoryDriver, aic.Repository, str]:
    driver = MemoryDriver()
    repo = await aic.Repository.create(aic.storage_from_driver(driver), spec_version=1)
    session = await repo.writable_session("main")
    arr = await zas.create_array(session.store, name="x", shape=(4,), chunks=(1,), dtype="i4")
    await arr.setitem(slice(None), np.arange(4, dtype="i4"))
    first = await repo.lookup_branch("main")
    sid = await session.commit("one")
    del first
    return driver, repo, sid


@pytest.mark.attack("swapped files")
@pytest.mark.parametrize("what", ["snapshot", "transaction log", "manifest"])
async def test_a_v2_file_in_a_v1_repository(what: str) -> None:
    """Icechunk 1.x cannot read spec v2 files and no spec v1 writer makes them: one in a
    v1 repository was put there, and reading it is a FormatError naming it."""
    driver, _, sid = await v1_repo()
    if what == "snapshot":
        key = f"snapshots/{sid}"
        snap = decode_snapshot(await driver.get(key))
        await driver.put(key, encode_snapshot(replace(snap, spec_version=2)))
    elif what == "transaction log":
        key = f"transactions/{sid}"
        log = decode_transaction_log(await driver.get(key))
        await driver.put(key, encode_transaction_log(replace(log, spec_version=2)))
    else:
        key = next(k for k in await keys(driver) if k.startswith("manifests/"))
        data = await driver.get(key)
        await driver.put(key, data[: HEADER_SIZE - 3] + b"\x02" + data[HEADER_SIZE - 2 :])
    repo = await reopen(driver)

    async def read() -> None:
        if what == "transaction log":
            first = [i async for i in repo.ancestry(branch="main")][-1].id
            await repo.diff(from_snapshot_id=first, to_snapshot_id=sid)
            return
        session = await repo.readonly_session("main")
        arr = await zas.open_array(store=session.store, path="x", mode="r")
        await arr.getitem(slice(None))

    with pytest.raises(FormatError, match=f"{key}: .*spec version 2"):
        await bounded(read())


# --- crafted moves ------------------------------------------------------------------------


def log_with_moves(moves: tuple[MoveOperation, ...], version: int = 2) -> bytes:
    log = TransactionLog(SnapshotId.random(), moved_nodes=moves, spec_version=2)
    data = encode_transaction_log(log)
    return data[: HEADER_SIZE - 3] + bytes([version]) + data[HEADER_SIZE - 2 :]


NID = NodeId(b"\x01" * 8)


@pytest.mark.attack("crafted v2 files")
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("relative", "/b"),
        ("/a", "b"),
        ("/a/../../etc", "/b"),
        ("/a", "/b/.."),
        ("/a//b", "/c"),
        ("/a", "/c/"),
        ("/a", "/./c"),
        ("", "/c"),
        ("/a", ""),
        ("/", "/c"),
        ("/a", "/"),
    ],
)
def test_moves_with_paths_that_are_no_node_paths(source: str, target: str) -> None:
    data = log_with_moves((MoveOperation(source, target, NID, True),))
    with pytest.raises(FormatError, match="transactions/X: .*move"):
        decode_transaction_log(data, "transactions/X")


@pytest.mark.attack("crafted v2 files")
def test_moves_in_a_spec_v1_transaction_log() -> None:
    data = log_with_moves((MoveOperation("/a", "/b", NID, False),), version=1)
    with pytest.raises(FormatError, match="transactions/X: .*spec version 1"):
        decode_transaction_log(data, "transactions/X")
    fine = log_with_moves((MoveOperation("/a", "/b", NID, False),))
    assert decode_transaction_log(fine).moved_nodes[0].to_path == "/b"


# --- the compare-and-swap against a server's answers --------------------------------------


class Interrupting(CountingDriver):
    """Runs ``hook`` once, just before the first conditional write of ``repo``: another
    writer changes the repository between this writer's read and its write."""

    def __init__(self, inner: MemoryDriver, hook: Callable[[], Awaitable[None]]) -> None:
        super().__init__(inner)
        self.hook: Callable[[], Awaitable[None]] | None = hook

    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo:
        if key == REPO_INFO_KEY and self.hook is not None:
            hook, self.hook = self.hook, None
            await hook()
        return await super()._put(key, data, if_none_match=if_none_match, if_match=if_match)


@pytest.mark.attack("conditional-write races (test servers)")
async def test_repo_changes_between_read_and_write() -> None:
    driver, repo = await v2_repo()
    tip = await repo.lookup_branch("main")
    other = await reopen(driver)

    async def meddle() -> None:
        await other.create_tag("theirs", tip)
        await other.set_metadata({"theirs": True})

    ours = aic.Repository(
        aic.storage_from_driver(Interrupting(driver, meddle)), repo.config, spec_version=2
    )
    await bounded(ours.create_branch("mine", tip))
    assert "theirs" in await repo.list_tags() and "mine" in await repo.list_branches()
    assert await repo.get_metadata() == {"theirs": True}
    kinds = [type(u.kind).__name__ for u in await collect(repo.ops_log())]
    assert kinds[:3] == ["BranchCreated", "MetadataChanged", "TagCreated"]


class NoVersion(CountingDriver):
    """A server that gives the ``repo`` object no version (no ETag) when it is read."""

    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        data, info = await super()._get_object(key)
        return data, replace(info, version="") if key == REPO_INFO_KEY else info


@pytest.mark.attack("conditional-write races (test servers)")
async def test_a_repo_object_read_without_a_version_is_never_overwritten() -> None:
    """Without the version there is nothing to make the write conditional on (S3 sends
    no ``If-Match`` for an empty one and overwrites): refused before anything is written."""
    driver, repo = await v2_repo()
    before = await keys(driver)
    blind = aic.Repository(aic.storage_from_driver(NoVersion(driver)), repo.config, spec_version=2)
    with pytest.raises(StorageError, match="version"):
        await bounded(blind.create_branch("blind", await repo.lookup_branch("main")))
    assert await keys(driver) == before


@pytest.mark.attack("conditional-write races (test servers)")
async def test_an_empty_version_matches_nothing(s3_endpoint: str) -> None:
    driver = s3_test_storage(s3_endpoint).driver()
    try:
        await driver.put("k", b"1")
        with pytest.raises(aic.PreconditionFailed):
            await driver.put("k", b"2", if_match="")
        assert await driver.get("k") == b"1"
    finally:
        await driver.close()


@dataclass
class Lies:
    """What ``lying_server`` does to requests for the ``repo`` object, each so many times:
    answer a (forwarded) PUT with bytes that are not HTTP or with a body cut short, give
    a GET or HEAD a made-up ETag, or cut a GET's body short (with a length to match)."""

    garbage_put: int = 0
    truncated_put: int = 0
    bogus_etag: int = 0
    truncated_get: int = 0
    seen: list[str] = field(default_factory=list)


@contextlib.contextmanager
def lying_server(target: str) -> Iterator[tuple[str, Lies]]:
    """An S3 endpoint on 127.0.0.1 in front of ``target`` (moto) that lies about
    ``repo`` as ``Lies`` says; everything else is forwarded faithfully."""
    import aiohttp
    from aiohttp import web

    lies = Lies()
    sessions: list[aiohttp.ClientSession] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with sessions[0].request(
            request.method, f"{target}{request.rel_url}", headers=headers, data=body
        ) as upstream:
            answer = await upstream.read()
            out = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            status = upstream.status
        transport = request.transport
        assert transport is not None
        if request.path.endswith(f"/{REPO_INFO_KEY}") and 200 <= status < 300:
            lies.seen.append(request.method)
            if request.method == "PUT" and lies.garbage_put:
                lies.garbage_put -= 1
                transport.write(b"HTTP/1.1 2OO OK\r\nETag: nonsense\r\n\r\n\x00\xff")
                transport.close()
                return web.Response()
            if request.method == "PUT" and lies.truncated_put:
                lies.truncated_put -= 1
                response = web.StreamResponse(status=status, headers=out)
                response.content_length = 100
                await response.prepare(request)
                await response.write(b"<Put")
                transport.abort()
                return response
            if request.method in ("GET", "HEAD") and lies.bogus_etag:
                lies.bogus_etag -= 1
                out["ETag"] = '"0123456789abcdef0123456789abcdef"'
            if request.method == "GET" and lies.truncated_get:
                lies.truncated_get -= 1
                answer = answer[: len(answer) // 2]
        return web.Response(status=status, body=answer, headers=out)

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)

    async def start() -> None:
        sessions.append(aiohttp.ClientSession(auto_decompress=False))

    async def stop() -> None:
        await sessions[0].close()

    with serve_app(app, start, stop) as url:
        yield url, lies


async def _on_lying_server(
    s3_endpoint: str,
) -> AsyncIterator[tuple[aic.Repository, aic.Repository, Lies]]:
    """(a repository through the lying server, the same one read directly, the lies)."""
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    honest = await aic.Repository.create(s3_test_storage(s3_endpoint, bucket), spec_version=2)
    session = await honest.writable_session("main")
    arr = await zas.create_array(session.store, name="x", shape=(4,), chunks=(1,), dtype="i4")
    await arr.setitem(slice(None), np.arange(4, dtype="i4"))
    await session.commit("setup")
    with lying_server(s3_endpoint) as (url, lies):
        lied_to = await aic.Repository.open(s3_test_storage(url, bucket))
        yield lied_to, honest, lies
        await lied_to.close()
    await honest.close()


@pytest.fixture
async def lying(s3_endpoint: str) -> AsyncIterator[tuple[aic.Repository, aic.Repository, Lies]]:
    async for found in _on_lying_server(s3_endpoint):
        yield found


async def _kinds(repo: aic.Repository) -> list[str]:
    return [type(u.kind).__name__ for u in await collect(repo.ops_log())]


@pytest.mark.attack("hostile servers")
@pytest.mark.parametrize("answer", ["garbage", "truncated"])
async def test_a_garbled_answer_to_the_conditional_write(
    lying: tuple[aic.Repository, aic.Repository, Lies], answer: str
) -> None:
    """The write landed but its answer is garbage: the change is done once, and so is a
    commit (the next attempt reads the repo info file and finds it there)."""
    repo, honest, lies = lying
    tip = await honest.lookup_branch("main")
    setattr(lies, f"{answer}_put", 1)
    await bounded(repo.create_branch("b", tip))
    session = await repo.writable_session("main")
    arr = await zas.open_array(store=session.store, path="x")
    await arr.setitem(0, 9)
    setattr(lies, f"{answer}_put", 1)
    sid = await bounded(session.commit("through a garbling server"))
    assert lies.garbage_put == lies.truncated_put == 0
    assert await honest.lookup_branch("b") == tip
    assert await honest.lookup_branch("main") == sid
    kinds = await _kinds(honest)
    assert kinds[:3] == ["NewCommit", "BranchCreated", "NewCommit"]


@pytest.mark.attack("hostile servers")
async def test_a_made_up_etag_once(lying: tuple[aic.Repository, aic.Repository, Lies]) -> None:
    repo, honest, lies = lying
    lies.bogus_etag = 1
    await bounded(repo.create_tag("v", await honest.lookup_branch("main")))
    assert await honest.lookup_tag("v") == await honest.lookup_branch("main")
    assert (await _kinds(honest))[0] == "TagCreated"


@pytest.mark.attack("hostile servers")
async def test_made_up_etags_always(
    lying: tuple[aic.Repository, aic.Repository, Lies], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read of ``repo`` carries an ETag no write can match: the attempts end (here
    after 3, else ``UPDATE_ATTEMPTS``) with a StorageError saying so (not a
    ``RefExistsError``, as the last attempt's PreconditionFailed read before), and nothing
    changed."""
    import aicechunk.repo_info_store as store

    monkeypatch.setattr(store, "UPDATE_ATTEMPTS", 3)
    repo, honest, lies = lying
    lies.bogus_etag = 10**6
    before = await _kinds(honest)
    with pytest.raises(StorageError, match="in 3 attempts") as err:
        await bounded(repo.create_branch("never", await honest.lookup_branch("main")))
    assert not isinstance(err.value, aic.PreconditionFailed)  # not "the branch exists"
    assert await _kinds(honest) == before and "never" not in await honest.list_branches()


@pytest.mark.attack("hostile servers")
async def test_a_truncated_repo_object(lying: tuple[aic.Repository, aic.Repository, Lies]) -> None:
    """A body cut short with a length to match: a FormatError naming ``repo``, and the
    change is not made (nothing is written after a read that failed)."""
    repo, honest, lies = lying
    lies.truncated_get = 1
    with pytest.raises(FormatError, match="repo: "):
        await bounded(repo.create_branch("never", await honest.lookup_branch("main")))
    assert "never" not in await honest.list_branches()
    await bounded(repo.create_branch("later", await honest.lookup_branch("main")))


# --- property tests: mutated repo info files of ours and icechunk 2.3.0's -----------------


async def exercise(objects: dict[str, bytes], key: str, data: bytes) -> None:
    """Open a repository whose ``key`` holds ``data`` and use it every way that reads or
    rewrites the repo info file; only AicechunkErrors may come out."""
    driver = MemoryDriver()
    for k, v in objects.items():
        await driver.put(k, v)
    await driver.put(key, data)
    try:
        repo = await reopen(driver)
    except AicechunkError:
        return
    calls: list[Callable[[], Awaitable[Any]]] = [
        repo.list_branches,
        repo.list_tags,
        repo.get_metadata,
        lambda: collect(repo.ops_log()),
        lambda: collect(repo.ancestry(branch="main")),
        lambda: repo.create_branch("fuzz", "1CECHNKREP0F1RSTCMT0"),
        lambda: repo.set_metadata({"fuzz": 1}),
    ]
    for call in calls:
        with contextlib.suppress(AicechunkError):
            await call()


@pytest.fixture(scope="module")
def ours() -> dict[str, bytes]:
    async def make() -> dict[str, bytes]:
        driver, repo = await v2_repo()
        await repo.set_metadata({"owner": "me", "nested": {"a": [1, 2.5, None]}})
        await repo.delete_tag("t")
        return await keys(driver)

    return asyncio.run(make())


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from tests.format.test_icechunk2_interop import PYTHON, icechunk

    if PYTHON is None:
        pytest.skip("no Python with icechunk 2.3.0")
    root = tmp_path_factory.mktemp("ic2-attack") / "repo"
    icechunk("write", root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _fuzz(objects: dict[str, bytes], data: st.DataObject, target: str) -> None:
    keys_ = sorted(k for k in objects if k == REPO_INFO_KEY or k.startswith(OVERWRITTEN_PREFIX))
    key = REPO_INFO_KEY if target == "repo" else data.draw(st.sampled_from(keys_[:-1] or keys_))
    body = decode_versioned(objects[key], FileType.REPO_INFO)[1]
    mutated = wrap(mutate(data, body))
    with deadline(30):
        asyncio.run(asyncio.wait_for(exercise(objects, key, mutated), 25))


@pytest.mark.attack("fuzzed decoders and payloads")
@pytest.mark.parametrize("target", ["repo", "backup"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_repo_info_files_of_ours(
    ours: dict[str, bytes], target: str, data: st.DataObject
) -> None:
    _fuzz(ours, data, target)


@pytest.mark.attack("fuzzed decoders and payloads")
@pytest.mark.parametrize("target", ["repo", "backup"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_repo_info_files_of_icechunk(
    theirs: dict[str, bytes], target: str, data: st.DataObject
) -> None:
    _fuzz(theirs, data, target)
