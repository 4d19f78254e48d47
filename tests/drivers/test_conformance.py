"""One conformance suite for every driver (see conftest.FACTORIES)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from aicechunk.drivers import (
    OffsetRange,
    RangeRequest,
    SuffixRange,
    driver_from_config,
)
from aicechunk.errors import (
    AicechunkError,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
    ReadOnlyError,
)
from tests.drivers.conftest import DriverUnderTest
from tests.drivers.race import increment_worker

DATA = bytes(range(256)) * 3  # 768 bytes, every byte value


def writable(dut: DriverUnderTest) -> None:
    if not dut.driver.supports_writes:
        pytest.skip("read-only driver")


async def keys_of(dut: DriverUnderTest, prefix: str = "") -> list[str]:
    return [info.key async for info in dut.driver.list(prefix)]


# --- reads -----------------------------------------------------------------------------


async def test_get_roundtrip_and_metadata(dut: DriverUnderTest) -> None:
    await dut.seed("a/b/obj", DATA)
    assert await dut.driver.get("a/b/obj") == DATA
    data, info = await dut.driver.get_object("a/b/obj")
    assert data == DATA
    assert info.key == "a/b/obj"
    assert info.size == len(DATA)
    assert info.version
    head = await dut.driver.head("a/b/obj")
    assert (head.key, head.size, head.version) == (info.key, info.size, info.version)
    assert head.last_modified is not None
    assert await dut.driver.exists("a/b/obj")
    assert not await dut.driver.exists("a/b/other")


async def test_empty_object(dut: DriverUnderTest) -> None:
    await dut.seed("empty", b"")
    assert await dut.driver.get("empty") == b""
    assert (await dut.driver.head("empty")).size == 0
    assert await dut.driver.get("empty", SuffixRange(4)) == b""


@pytest.mark.parametrize(
    ("byte_range", "expected"),
    [
        (RangeRequest(0, 0), b""),
        (RangeRequest(0, 1), DATA[:1]),
        (RangeRequest(10, 20), DATA[10:30]),
        (RangeRequest(0, len(DATA)), DATA),
        (RangeRequest(len(DATA) - 1, 1), DATA[-1:]),
        (RangeRequest(len(DATA) - 5, 50), DATA[-5:]),
        (RangeRequest(len(DATA), 5), b""),
        (RangeRequest(len(DATA) + 100, 5), b""),
        (OffsetRange(0), DATA),
        (OffsetRange(700), DATA[700:]),
        (OffsetRange(len(DATA) - 1), DATA[-1:]),
        (OffsetRange(len(DATA)), b""),
        (OffsetRange(len(DATA) + 7), b""),
        (SuffixRange(0), b""),
        (SuffixRange(1), DATA[-1:]),
        (SuffixRange(100), DATA[-100:]),
        (SuffixRange(len(DATA)), DATA),
        (SuffixRange(len(DATA) + 50), DATA),
    ],
    ids=repr,
)
async def test_byte_ranges(dut: DriverUnderTest, byte_range: object, expected: bytes) -> None:
    await dut.seed("ranged", DATA)
    assert await dut.driver.get("ranged", byte_range) == expected  # type: ignore[arg-type]


def test_byte_range_validation() -> None:
    with pytest.raises(ValueError):
        RangeRequest(-1, 3)
    with pytest.raises(ValueError):
        OffsetRange(-2)
    with pytest.raises(ValueError):
        SuffixRange(-1)


async def test_missing_object_errors_name_key_and_driver(dut: DriverUnderTest) -> None:
    for call in (
        lambda: dut.driver.get("no/such/key"),
        lambda: dut.driver.get("no/such/key", RangeRequest(0, 4)),
        lambda: dut.driver.get_object("no/such/key"),
        lambda: dut.driver.head("no/such/key"),
    ):
        with pytest.raises(ObjectNotFound) as info:
            await call()
        assert info.value.key == "no/such/key"
        assert info.value.driver == dut.driver.label
        assert "no/such/key" in str(info.value)
        assert isinstance(info.value, AicechunkError)


async def test_a_directory_is_not_an_object(dut: DriverUnderTest) -> None:
    await dut.seed("dir/child", b"x")
    with pytest.raises(ObjectNotFound):
        await dut.driver.get("dir")
    with pytest.raises(ObjectNotFound):
        await dut.driver.head("dir")


async def test_get_object_if_changed(dut: DriverUnderTest) -> None:
    """The object only when it is no longer at the version given (``None`` when it
    is). An empty version matches nothing (a server that gave none), a directory is no
    object, a missing key is ``ObjectNotFound``."""
    await dut.seed("refs/c", DATA)
    _, first = await dut.driver.get_object("refs/c")
    assert await dut.driver.get_object_if_changed("refs/c", first.version) is None
    for version in ("", "not-" + first.version, '"quoted"'):
        assert await dut.driver.get_object_if_changed("refs/c", version) == (DATA, first)
    await dut.seed("refs/c", b"changed")
    found = await dut.driver.get_object_if_changed("refs/c", first.version)
    assert found is not None
    data, info = found
    assert data == b"changed" and info.version != first.version and info.size == 7
    assert await dut.driver.get_object_if_changed("refs/c", info.version) is None
    await dut.seed("dir/child", b"x")
    for key in ("no/such/key", "dir"):
        with pytest.raises(ObjectNotFound) as raised:
            await dut.driver.get_object_if_changed(key, first.version)
        assert raised.value.key == key and raised.value.driver == dut.driver.label
    with pytest.raises(InvalidKey):
        await dut.driver.get_object_if_changed("../escape", first.version)


# --- listing ---------------------------------------------------------------------------


async def test_list_sorted_with_prefixes(dut: DriverUnderTest) -> None:
    if not dut.driver.supports_listing:
        pytest.skip("driver cannot list")
    names = ["b/2", "a/b/x", "a/bc/d", "a/b", "a/c", "z", "a/b/y/z", "a-1", "a/b.txt"]
    for name in names:
        if name == "a/b":
            continue  # "a/b" is a directory here; objects and dirs cannot share a name
        await dut.seed(name, name.encode())
    expected = sorted(n for n in names if n != "a/b")
    assert await keys_of(dut) == expected
    assert await keys_of(dut, "a/") == [n for n in expected if n.startswith("a/")]
    assert await keys_of(dut, "a/b") == ["a/b.txt", "a/b/x", "a/b/y/z", "a/bc/d"]
    assert await keys_of(dut, "a/b/") == ["a/b/x", "a/b/y/z"]
    assert await keys_of(dut, "nothing/") == []
    assert await keys_of(dut, "a/b/x") == ["a/b/x"]
    infos = [info async for info in dut.driver.list("b/")]
    assert [(i.key, i.size) for i in infos] == [("b/2", 3)]
    assert infos[0].version == (await dut.driver.head("b/2")).version


async def test_list_many_is_lexicographic(dut: DriverUnderTest) -> None:
    if not dut.driver.supports_listing:
        pytest.skip("driver cannot list")
    names = [f"chunks/{i}" for i in range(120)] + ["chunks/A", "chunks/_", "chunks/a"]
    await asyncio.gather(*(dut.seed(n, b"x") for n in names))
    assert await keys_of(dut, "chunks/") == sorted(names)


# --- writes ----------------------------------------------------------------------------


async def test_put_overwrites_and_changes_version(dut: DriverUnderTest) -> None:
    writable(dut)
    versions = []
    # a version names a content: object stores' ETags repeat for identical bytes, so
    # only successive different contents must give different versions
    for payload in (b"AAAA", b"BBBB", b"CCCC", b"DDDD"):
        info = await dut.driver.put("k", payload)
        assert info.size == 4
        assert await dut.driver.get("k") == payload
        assert (await dut.driver.head("k")).version == info.version
        versions.append(info.version)
    # every write is a new version, even back-to-back writes of the same size
    assert len(set(versions)) == len(versions)


async def test_put_accepts_bytes_like(dut: DriverUnderTest) -> None:
    writable(dut)
    await dut.driver.put("ba", bytearray(b"abc"))
    await dut.driver.put("mv", memoryview(b"xyz"))
    assert await dut.driver.get("ba") == b"abc"
    assert await dut.driver.get("mv") == b"xyz"


async def test_if_none_match(dut: DriverUnderTest) -> None:
    writable(dut)
    first = await dut.driver.put("refs/r", b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed) as info:
        await dut.driver.put("refs/r", b"two", if_none_match=True)
    assert info.value.key == "refs/r"
    assert await dut.driver.get("refs/r") == b"one"
    assert (await dut.driver.head("refs/r")).version == first.version


async def test_if_match(dut: DriverUnderTest) -> None:
    writable(dut)
    v1 = await dut.driver.put("refs/m", b"one")
    v2 = await dut.driver.put("refs/m", b"two", if_match=v1.version)
    assert v2.version != v1.version
    with pytest.raises(PreconditionFailed):
        await dut.driver.put("refs/m", b"three", if_match=v1.version)
    assert await dut.driver.get("refs/m") == b"two"
    with pytest.raises(PreconditionFailed):
        await dut.driver.put("refs/absent", b"x", if_match=v2.version)
    assert not await dut.driver.exists("refs/absent")
    with pytest.raises(ValueError):
        await dut.driver.put("refs/m", b"x", if_none_match=True, if_match=v2.version)


async def test_write_once(dut: DriverUnderTest) -> None:
    writable(dut)
    info = await dut.driver.put("chunks/new/abc", DATA, write_once=True)
    assert (info.key, info.size) == ("chunks/new/abc", len(DATA))
    assert info.version == (await dut.driver.head("chunks/new/abc")).version
    assert await dut.driver.get("chunks/new/abc") == DATA
    # a retried write of the same key replaces it whole
    await dut.driver.put("chunks/new/abc", b"again", write_once=True)
    assert await dut.driver.get("chunks/new/abc") == b"again"
    await dut.driver.put("chunks/empty", b"", write_once=True)
    assert await dut.driver.get("chunks/empty") == b""
    with pytest.raises(ValueError):
        await dut.driver.put("chunks/x", b"x", write_once=True, if_none_match=True)
    with pytest.raises(ValueError):
        await dut.driver.put("chunks/x", b"x", write_once=True, if_match=info.version)
    assert not await dut.driver.exists("chunks/x")
    if dut.driver.supports_listing:
        assert await keys_of(dut) == ["chunks/empty", "chunks/new/abc"]
    if dut.root is not None:  # nothing staged is left behind
        assert not [p for p in (dut.root / ".aicechunk").rglob("*") if p.is_file()]


async def test_put_copy_stores_the_version_read(dut: DriverUnderTest) -> None:
    """A backup (``put_copy``) holds the bytes of the version read, also when the source
    was replaced meanwhile or is gone, and the source is left as it is."""
    writable(dut)
    first = await dut.driver.put("repo", b"first")
    info = await dut.driver.put_copy("overwritten/a", b"first", "repo", first.version)
    assert info.key == "overwritten/a" and info.size == 5
    assert info.version == (await dut.driver.head("overwritten/a")).version
    await dut.driver.put("repo", b"second!", if_match=first.version)
    # read as ``first``, replaced since: the bytes given are stored, not the source's
    await dut.driver.put_copy("overwritten/b", b"first", "repo", first.version)
    await dut.driver.put_copy("overwritten/c", b"gone", "absent", "no-version")
    assert await dut.driver.get("overwritten/a") == b"first"
    assert await dut.driver.get("overwritten/b") == b"first"
    assert await dut.driver.get("overwritten/c") == b"gone"
    assert await dut.driver.get("repo") == b"second!"
    # replacing the source leaves its copies as they were
    now = await dut.driver.head("repo")
    await dut.driver.put_copy("overwritten/d", b"second!", "repo", now.version)
    await dut.driver.put("repo", b"third", if_match=now.version)
    assert await dut.driver.get("overwritten/d") == b"second!"
    assert await dut.driver.get("repo") == b"third"
    if dut.root is not None:  # nothing staged is left behind
        assert not [p for p in (dut.root / ".aicechunk" / "tmp").glob("*")]


async def test_large_objects_whole_and_in_ranges(dut: DriverUnderTest) -> None:
    big = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: past the local small-op size
    await dut.seed("big/object", big)
    assert await dut.driver.get("big/object") == big
    assert await dut.driver.get("big/object", RangeRequest(5, 2 << 20)) == big[5 : 5 + (2 << 20)]
    assert await dut.driver.get("big/object", SuffixRange(1 << 20)) == big[-(1 << 20) :]
    assert await dut.driver.get("big/object", OffsetRange(len(big) - 3)) == big[-3:]
    if dut.driver.supports_writes:
        await dut.driver.put("big/once", big, write_once=True)
        assert await dut.driver.get("big/once") == big


async def test_delete(dut: DriverUnderTest) -> None:
    writable(dut)
    for name in ("d/1", "d/2", "d/3", "keep"):
        await dut.driver.put(name, b"x")
    await dut.driver.delete("d/1")
    await dut.driver.delete("d/1")  # missing: not an error
    assert not await dut.driver.exists("d/1")
    await dut.driver.delete_many(["d/2", "d/3", "d/missing"])
    await dut.driver.delete_many([])
    assert not await dut.driver.exists("d/2")
    assert await dut.driver.get("keep") == b"x"
    if dut.driver.supports_listing:
        assert await keys_of(dut) == ["keep"]


async def test_read_only_drivers_refuse_writes(dut: DriverUnderTest) -> None:
    if dut.driver.supports_writes:
        pytest.skip("writable driver")
    with pytest.raises(ReadOnlyError):
        await dut.driver.put("k", b"x")
    with pytest.raises(ReadOnlyError):
        await dut.driver.put("k", b"x", write_once=True)
    with pytest.raises(ReadOnlyError):
        await dut.driver.delete("k")


async def test_concurrent_tasks(dut: DriverUnderTest) -> None:
    writable(dut)
    await asyncio.gather(*(dut.driver.put(f"c/{i:03}", bytes([i]) * i) for i in range(100)))
    got = await asyncio.gather(*(dut.driver.get(f"c/{i:03}") for i in range(100)))
    assert got == [bytes([i]) * i for i in range(100)]


# --- keys ------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "/abs",
    "a/../b",
    "..",
    "../escape",
    "a/./b",
    "a//b",
    "trailing/",
    "back\\slash",
    "nul\x00byte",
    "ctl\x01",
    "newline\n",
    "del\x7f",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_invalid_keys_rejected_and_nothing_written(dut: DriverUnderTest, key: str) -> None:
    for call in (
        lambda: dut.driver.get(key),
        lambda: dut.driver.head(key),
        lambda: dut.driver.get_object(key),
    ):
        with pytest.raises(InvalidKey):
            await call()
    if dut.driver.supports_writes:
        with pytest.raises(InvalidKey) as info:
            await dut.driver.put(key, b"evil")
        assert info.value.driver == dut.driver.label
        with pytest.raises(InvalidKey):
            await dut.driver.put(key, b"evil", write_once=True)
        with pytest.raises(InvalidKey):
            await dut.driver.delete(key)
        with pytest.raises(InvalidKey):
            await dut.driver.delete_many(["fine", key])
        if dut.driver.supports_listing:
            assert await keys_of(dut) == []
    if dut.root is not None:
        outside = [p for p in dut.root.parent.rglob("*") if not p.is_relative_to(dut.root)]
        assert outside == []


@pytest.mark.parametrize("prefix", ["/abs", "../x", "a/../", "a\\b", "\x00"], ids=repr)
def test_invalid_prefixes_rejected(dut: DriverUnderTest, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        dut.driver.list(prefix)


def test_key_type_checked(dut: DriverUnderTest) -> None:
    with pytest.raises(InvalidKey):
        asyncio.run(dut.driver.get(b"bytes-key"))  # type: ignore[arg-type]


# --- lifecycle and portability ---------------------------------------------------------


async def test_describe_is_plain_data_and_rebuilds(dut: DriverUnderTest) -> None:
    await dut.seed("p/obj", b"payload")
    config = dut.driver.describe()
    assert json.loads(json.dumps(config)) == config
    rebuilt = driver_from_config(config)
    async with rebuilt:
        assert await rebuilt.get("p/obj") == b"payload"
    clone = pickle.loads(pickle.dumps(dut.driver))
    async with clone:
        assert await clone.get("p/obj") == b"payload"
    assert "secret" not in repr(dut.driver).lower()


async def test_usable_after_close_and_with_context(dut: DriverUnderTest) -> None:
    await dut.seed("life", b"1")
    async with dut.driver as d:
        assert await d.get("life") == b"1"
    assert await dut.driver.get("life") == b"1"
    await dut.driver.close()
    await dut.driver.close()


async def test_works_from_other_event_loops(dut: DriverUnderTest) -> None:
    await dut.seed("loops", b"shared")

    def in_new_loop() -> bytes:
        return asyncio.run(dut.driver.get("loops"))

    results = await asyncio.gather(*(asyncio.to_thread(in_new_loop) for _ in range(3)))
    assert results == [b"shared"] * 3
    assert await dut.driver.get("loops") == b"shared"


# --- the race --------------------------------------------------------------------------


@pytest.mark.attack("conditional-write races (test servers)")
async def test_conditional_increment_race_loses_nothing(dut: DriverUnderTest) -> None:
    """Workers race conditional read-modify-writes on one key: 200 rounds in all."""
    writable(dut)
    if not dut.driver.supports_conditional_writes:
        pytest.skip("no conditional writes")
    await dut.driver.put("counter", b"0")
    workers, rounds = 4, 50
    target: object
    if dut.shared_across_processes:
        pool: ProcessPoolExecutor | ThreadPoolExecutor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")
        )
        target = dut.driver.describe()
    else:
        pool = ThreadPoolExecutor(workers)
        target = dut.driver
    loop = asyncio.get_running_loop()
    with pool:
        futures = [
            loop.run_in_executor(pool, increment_worker, target, "counter", rounds)
            for _ in range(workers)
        ]
        results = await asyncio.gather(*futures)
    won = [value for result in results for value in result]
    final = int(await dut.driver.get("counter"))
    assert final == len(won)
    # each successful update wrote a distinct next value: nobody overwrote a winner
    assert sorted(won) == list(range(1, final + 1))
    assert final >= rounds  # at least one worker's worth of progress


@pytest.mark.attack("close across event loops")
async def test_close_in_one_loop_leaves_other_loops_reading(dut: DriverUnderTest) -> None:
    """``close()`` releases what the calling loop owns: 120 reads running meanwhile in
    other loops (threads of their own) all succeed."""
    await dut.seed("busy", DATA)
    readers, reads = 4, 30
    started = threading.Barrier(readers + 1)

    def read_in_new_loop() -> list[str]:
        async def main() -> list[str]:
            failures = []
            started.wait()
            for i in range(reads):
                try:
                    if i % 2:
                        assert await dut.driver.get("busy") == DATA
                    else:
                        assert (await dut.driver.get_object("busy"))[0] == DATA
                except Exception as err:
                    failures.append(repr(err))
            return failures

        return asyncio.run(main())

    tasks = [asyncio.ensure_future(asyncio.to_thread(read_in_new_loop)) for _ in range(readers)]
    await asyncio.to_thread(started.wait)
    while not all(task.done() for task in tasks):
        await dut.driver.get("busy")  # this loop uses the driver too, then lets go
        await dut.driver.close()
        await asyncio.sleep(0.001)
    failures = [f for task in tasks for f in task.result()]
    assert failures == [], f"{len(failures)} of {readers * reads} reads failed: {failures[:3]}"
    assert await dut.driver.get("busy") == DATA
