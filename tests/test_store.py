"""zarr's own store test suite, run against our store.

An Icechunk store holds only node metadata (``<path>/zarr.json``, valid zarr v3 group or
array documents) and chunks of existing arrays (``<path>/c/<coords>``). Where zarr's
generic tests use keys or values no Icechunk repository can hold (``foo/0/0``, metadata
``b"bar"``), the test is overridden with the same assertions on keys an Icechunk store
can hold; every other test runs as zarr wrote it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.core.sync import _collect_aiterator
from zarr.storage._utils import _normalize_byte_range_index
from zarr.testing.store import StoreTests
from zarr.testing.utils import assert_bytes_equal

import aicechunk as aic
from aicechunk.store import IcechunkStore

GROUP = b'{"zarr_format":3,"node_type":"group","attributes":{}}'


def array_meta(shape: list[Any], chunks: list[Any], **extra: Any) -> bytes:
    """A zarr v3 array document (uint8, regular grid); ``extra`` overrides fields."""
    doc = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes"}],
        **extra,
    }
    return json.dumps(doc).encode()


# The hierarchy every store in this suite starts with: a 1-D array at the root (so "c/0"
# is a chunk key, as zarr's tests use), and arrays "foo" (1-D) and "bar" (2-D).
SETUP = {
    "zarr.json": array_meta([100], [1]),
    "foo/zarr.json": array_meta([100], [1]),
    "bar/zarr.json": array_meta([10, 10], [1, 1]),
}
SETUP_KEYS = set(SETUP)


async def make_store(tmp_path: Path, read_only: bool) -> IcechunkStore:
    repo = await aic.Repository.open_or_create(aic.local_filesystem_storage(tmp_path / "repo"))
    session = await repo.writable_session("main")
    for key, value in SETUP.items():
        await session.store.set(key, cpu.Buffer.from_bytes(value))
    if read_only:
        return IcechunkStore(session, read_only=True)
    return session.store


# zarr 3.1's Store has _get_bytes/_get_json helpers (and its StoreTests test them); zarr 3.4
# has neither, so these overrides of its tests run where zarr still has them
zarr_helpers = pytest.mark.skipif(
    not hasattr(Store, "_get_bytes"), reason="this zarr's Store has no _get_bytes/_get_json"
)


class TestIcechunkStore(StoreTests[IcechunkStore, cpu.Buffer]):
    store_cls = IcechunkStore
    buffer_cls = cpu.Buffer

    async def set(self, store: IcechunkStore, key: str, value: Buffer) -> None:
        # bypasses the store: straight to the session
        from aicechunk.store.keys import ChunkKey, MetadataKey, parse_key

        parsed = parse_key(key)
        if isinstance(parsed, MetadataKey):
            await store.session.set_metadata(parsed.path, value.to_bytes())
        elif isinstance(parsed, ChunkKey):
            await store.session.set_chunk(parsed.path, parsed.coords, value.to_bytes())
        else:
            raise AssertionError(f"test used a key we cannot hold: {key}")

    async def get(self, store: IcechunkStore, key: str) -> Buffer | None:
        from aicechunk.store.keys import ChunkKey, MetadataKey, parse_key

        parsed = parse_key(key)
        data: bytes | None = None
        if isinstance(parsed, MetadataKey):
            data = await store.session.get_metadata(parsed.path)
        elif isinstance(parsed, ChunkKey):
            data = await store.session.get_chunk(parsed.path, parsed.coords)
        return None if data is None else self.buffer_cls.from_bytes(data)

    @pytest.fixture
    async def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        store = await make_store(tmp_path, read_only=False)
        return {"session": store.session}

    @pytest.fixture
    async def store(self, open_kwargs: dict[str, Any]) -> IcechunkStore:
        return await IcechunkStore.open(**open_kwargs)

    def test_store_repr(self, store: IcechunkStore) -> None:
        assert repr(store).startswith("IcechunkStore(<Session writable branch='main'")

    def test_store_supports_writes(self, store: IcechunkStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: IcechunkStore) -> None:
        assert store.supports_listing

    async def listed(self, store: IcechunkStore, prefix: str = "") -> list[str]:
        return sorted(k for k in await _collect_aiterator(store.list_prefix(prefix)))

    # -- overridden: zarr uses keys or values no Icechunk repository can hold --------------

    async def test_serializable_store(self, store: IcechunkStore, tmp_path: Path) -> None:
        # a writable session does not pickle (forks do): pickle the store of a fork
        with pytest.raises(aic.SessionStateError, match="fork"):
            pickle.dumps(store)
        await store.session.commit("setup")
        # a committed session is read-only: fork a new one
        repo = await aic.Repository.open(aic.local_filesystem_storage(tmp_path / "repo"))
        store = (await repo.writable_session("main")).fork().store
        await store.set("bar/c/0/0", self.buffer_cls.from_bytes(b"pending"))
        new_store: IcechunkStore = pickle.loads(pickle.dumps(store))
        assert new_store.read_only == store.read_only
        assert new_store.session.snapshot_id == store.session.snapshot_id
        data_buf = self.buffer_cls.from_bytes(b"\x01\x02\x03\x04")
        await new_store.set("foo/c/3", data_buf)
        observed = await new_store.get("foo/c/3", prototype=default_buffer_prototype())
        assert_bytes_equal(observed, data_buf)
        # the unpickled store carries the pending changes it had
        pending = await new_store.get("bar/c/0/0", default_buffer_prototype())
        assert pending is not None and pending.to_bytes() == b"pending"

    async def test_read_only_store_raises(self, open_kwargs: dict[str, Any]) -> None:
        store = await self.store_cls.open(**{**open_kwargs, "read_only": True})
        assert store.read_only
        with pytest.raises(ValueError, match="read-only mode and does not support writing"):
            await store.set("foo/c/0", self.buffer_cls.from_bytes(b"bar"))
        with pytest.raises(ValueError, match="read-only mode and does not support writing"):
            await store.delete("foo/c/0")

    async def test_with_read_only_store(self, open_kwargs: dict[str, Any]) -> None:
        store = await self.store_cls.open(**{**open_kwargs, "read_only": True})
        writer = store.with_read_only(read_only=False)
        assert not writer._is_open
        assert not writer.read_only
        await writer.set("foo/c/0", self.buffer_cls.from_bytes(b"bar"))
        await writer.delete("foo/c/0")
        for reader in (store, store.with_read_only(read_only=True)):
            assert reader.read_only
            with pytest.raises(ValueError, match="read-only mode and does not support writing"):
                await reader.set("foo/c/0", self.buffer_cls.from_bytes(b"bar"))
            with pytest.raises(ValueError, match="read-only mode and does not support writing"):
                await reader.delete("foo/c/0")

    @pytest.mark.parametrize("key", ["c/0", "foo/c/1", "bar/c/0/3"])
    @pytest.mark.parametrize(
        ("data", "byte_range"),
        [
            (b"\x01\x02\x03\x04", None),
            (b"\x01\x02\x03\x04", RangeByteRequest(1, 4)),
            (b"\x01\x02\x03\x04", OffsetByteRequest(1)),
            (b"\x01\x02\x03\x04", SuffixByteRequest(1)),
            (b"", None),
            (bytes(range(256)) * 4, RangeByteRequest(10, 600)),  # a native chunk
            (bytes(range(256)) * 4, SuffixByteRequest(5)),
        ],
    )
    async def test_get(
        self, store: IcechunkStore, key: str, data: bytes, byte_range: ByteRequest
    ) -> None:
        data_buf = self.buffer_cls.from_bytes(data)
        await self.set(store, key, data_buf)
        observed = await store.get(key, prototype=default_buffer_prototype(), byte_range=byte_range)
        start, stop = _normalize_byte_range_index(data_buf, byte_range=byte_range)
        assert_bytes_equal(observed, data_buf[start:stop])

    async def test_get_many(self, store: IcechunkStore) -> None:
        keys = tuple(f"foo/c/{i}" for i in range(10))
        values = tuple(k.encode() for k in keys)
        for k, v in zip(keys, values, strict=True):
            await self.set(store, k, self.buffer_cls.from_bytes(v))
        requests = zip(keys, (default_buffer_prototype(),) * 10, (None,) * 10, strict=True)
        observed = await _collect_aiterator(store._get_many(requests))
        assert sorted((k, b.to_bytes()) for k, b in observed) == sorted(  # type: ignore[union-attr]
            zip(keys, values, strict=True)
        )

    @pytest.mark.parametrize("key", ["c/0", "foo/c/1", "bar/c/0/3"])
    @pytest.mark.parametrize("data", [b"\x01\x02\x03\x04", b"", b"x" * 2000])
    async def test_getsize(self, store: IcechunkStore, key: str, data: bytes) -> None:
        await self.set(store, key, self.buffer_cls.from_bytes(data))
        assert await store.getsize(key) == len(data)

    async def test_getsize_prefix(self, store: IcechunkStore) -> None:
        data_buf = self.buffer_cls.from_bytes(b"\x01\x02\x03\x04")
        keys = ["bar/c/0/0", "bar/c/0/1", "bar/c/1/0", "bar/c/1/1"]
        await store._set_many([(k, data_buf) for k in keys])
        assert await store.getsize_prefix("bar/c") == 4 * len(keys)

    @pytest.mark.parametrize("key", ["zarr.json", "c/0", "foo/c/1", "bar/c/0/3"])
    @pytest.mark.parametrize("data", [b"\x01\x02\x03\x04", b""])
    async def test_set(self, store: IcechunkStore, key: str, data: bytes) -> None:
        if key.endswith("zarr.json"):
            data = GROUP if data else array_meta([3], [1])
        data_buf = self.buffer_cls.from_bytes(data)
        await store.set(key, data_buf)
        assert_bytes_equal(await self.get(store, key), data_buf)

    async def test_set_many(self, store: IcechunkStore) -> None:
        items = {
            "zarr.json": GROUP,
            "foo/zarr.json": array_meta([5], [1], attributes={"x": 1}),
            "foo/c/0": b"zero",
            "bar/c/1/1": b"one-one",
        }
        await store._set_many((k, self.buffer_cls.from_bytes(v)) for k, v in items.items())
        for k, v in items.items():
            assert (await self.get(store, k)).to_bytes() == v  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        "key_ranges",
        [
            [],
            [("zarr.json", RangeByteRequest(0, 2))],
            [("c/0", RangeByteRequest(0, 2)), ("zarr.json", None)],
            [
                ("bar/c/0/0", RangeByteRequest(0, 2)),
                ("bar/c/0/1", SuffixByteRequest(2)),
                ("bar/c/0/2", OffsetByteRequest(2)),
            ],
        ],
    )
    async def test_get_partial_values(
        self, store: IcechunkStore, key_ranges: list[tuple[str, ByteRequest]]
    ) -> None:
        for key, _ in key_ranges:
            if not key.endswith("zarr.json"):
                await self.set(store, key, self.buffer_cls.from_bytes(key.encode()))
        observed = await store.get_partial_values(default_buffer_prototype(), key_ranges)
        for (key, byte_range), obs in zip(key_ranges, observed, strict=True):
            assert obs is not None
            expected = await store.get(key, default_buffer_prototype(), byte_range)
            assert expected is not None
            assert obs.to_bytes() == expected.to_bytes()

    async def test_exists(self, store: IcechunkStore) -> None:
        assert not await store.exists("baz/zarr.json")
        assert not await store.exists("foo")
        await store.set("baz/zarr.json", self.buffer_cls.from_bytes(GROUP))
        assert await store.exists("baz/zarr.json")
        assert not await store.exists("foo/c/7")
        await store.set("foo/c/7", self.buffer_cls.from_bytes(b"7"))
        assert await store.exists("foo/c/7")

    async def test_delete(self, store: IcechunkStore) -> None:
        await store.set("baz/zarr.json", self.buffer_cls.from_bytes(GROUP))
        await store.set("baz/q/zarr.json", self.buffer_cls.from_bytes(GROUP))
        await store.delete("baz/zarr.json")  # a group goes with everything below it
        assert not await store.exists("baz/zarr.json")
        assert not await store.exists("baz/q/zarr.json")
        await store.set("foo/c/2", self.buffer_cls.from_bytes(b"2"))
        await store.delete("foo/c/2")
        assert not await store.exists("foo/c/2")
        assert await store.exists("foo/zarr.json")

    async def test_delete_dir(self, store: IcechunkStore) -> None:
        await store.set("zarr.json", self.buffer_cls.from_bytes(GROUP))
        await store.set("foo-bar/zarr.json", self.buffer_cls.from_bytes(GROUP))
        await store.set("foo/c/0", self.buffer_cls.from_bytes(b"chunk"))
        await store.set("bar/c/1/1", self.buffer_cls.from_bytes(b"chunk"))
        await store.set("bar/c/2/1", self.buffer_cls.from_bytes(b"chunk"))
        await store.delete_dir("foo")
        assert await store.exists("zarr.json")
        assert await store.exists("foo-bar/zarr.json")
        assert not await store.exists("foo/zarr.json")
        assert not await store.exists("foo/c/0")
        await store.delete_dir("bar/c/1")  # chunks under a chunk prefix only
        assert not await store.exists("bar/c/1/1")
        assert await store.exists("bar/c/2/1")
        assert await store.exists("bar/zarr.json")

    async def test_delete_nonexistent_key_does_not_raise(self, store: IcechunkStore) -> None:
        await store.delete("nonexistent_key")
        await store.delete("nope/zarr.json")
        await store.delete("foo/c/99")

    async def test_is_empty(self, store: IcechunkStore) -> None:
        await store.clear()
        assert await store.is_empty("")
        await store.set("foo/zarr.json", self.buffer_cls.from_bytes(array_meta([4], [2])))
        await self.set(store, "foo/c/1", self.buffer_cls.from_bytes(b"something"))
        assert not await store.is_empty("")
        assert await store.is_empty("fo")
        assert not await store.is_empty("foo/")
        assert not await store.is_empty("foo")
        assert await store.is_empty("spam/")

    async def test_clear(self, store: IcechunkStore) -> None:
        await self.set(store, "foo/c/1", self.buffer_cls.from_bytes(b"something"))
        await store.clear()
        assert await store.is_empty("")

    async def test_list(self, store: IcechunkStore) -> None:
        assert sorted(await _collect_aiterator(store.list())) == sorted(SETUP_KEYS)
        data = self.buffer_cls.from_bytes(b"")
        items = {f"foo/c/{i}": data for i in range(10)}
        await store._set_many(items.items())
        observed = sorted(await _collect_aiterator(store.list()))
        assert observed == sorted(SETUP_KEYS | set(items))

    async def test_list_prefix(self, store: IcechunkStore) -> None:
        await store.clear()
        prefixes = ("", "a/", "a/b/", "a/b/c/")
        items = {p + "zarr.json": self.buffer_cls.from_bytes(GROUP) for p in prefixes}
        await store._set_many(items.items())
        for prefix in prefixes:
            expected = sorted(k for k in items if k.startswith(prefix))
            assert await self.listed(store, prefix) == expected

    async def test_list_empty_path(self, store: IcechunkStore) -> None:
        await store.clear()
        data = self.buffer_cls.from_bytes(b"")
        items = {
            "foo/bar/zarr.json": self.buffer_cls.from_bytes(array_meta([4], [1])),
            "foo/bar/c/1": data,
            "foo/baz/zarr.json": self.buffer_cls.from_bytes(array_meta([4], [1])),
            "foo/baz/c/0": data,
        }
        await store._set_many(items.items())
        assert sorted(await _collect_aiterator(store.list())) == sorted(items)
        assert await self.listed(store, "") == sorted(items)
        assert await self.listed(store, "foo/bar/") == ["foo/bar/c/1", "foo/bar/zarr.json"]

    async def test_list_dir(self, store: IcechunkStore) -> None:
        await store.clear()
        assert await _collect_aiterator(store.list_dir("")) == ()
        roots_and_keys = [
            ("foo", {"foo/zarr.json": array_meta([4], [1]), "foo/c/1": b"\x01"}),
            (
                "foo/bar",
                {
                    "foo/bar/zarr.json": GROUP,
                    "foo/bar/child/zarr.json": GROUP,
                    "foo/bar/arr/zarr.json": array_meta([2, 2], [1, 1]),
                    "foo/bar/arr/c/0/1": b"x",
                },
            ),
        ]
        for root, items in roots_and_keys:
            assert await _collect_aiterator(store.list_dir(root)) == ()
            await store._set_many((k, self.buffer_cls.from_bytes(v)) for k, v in items.items())
            expected = sorted({k.removeprefix(root + "/").split("/")[0] for k in items})
            assert sorted(await _collect_aiterator(store.list_dir(root))) == expected
            assert sorted(await _collect_aiterator(store.list_dir(root + "/"))) == expected
        assert sorted(await _collect_aiterator(store.list_dir("foo/bar/arr/c"))) == ["0"]
        assert sorted(await _collect_aiterator(store.list_dir("foo/bar/arr/c/0"))) == ["1"]

    async def test_set_if_not_exists(self, store: IcechunkStore) -> None:
        await self.set(store, "foo/c/5", self.buffer_cls.from_bytes(b"0000"))
        await store.set_if_not_exists("foo/c/5", self.buffer_cls.from_bytes(b"1111"))
        assert (await store.get("foo/c/5", default_buffer_prototype())).to_bytes() == b"0000"  # type: ignore[union-attr]
        await store.set_if_not_exists("foo/c/6", self.buffer_cls.from_bytes(b"1111"))
        assert (await store.get("foo/c/6", default_buffer_prototype())).to_bytes() == b"1111"  # type: ignore[union-attr]

    @zarr_helpers
    async def test_get_bytes(self, store: IcechunkStore) -> None:
        await self.set(store, "zarr.json", self.buffer_cls.from_bytes(GROUP))
        assert await store._get_bytes("zarr.json", prototype=default_buffer_prototype()) == GROUP
        with pytest.raises(FileNotFoundError):
            await store._get_bytes("nonexistent/zarr.json", prototype=default_buffer_prototype())

    @zarr_helpers
    def test_get_bytes_sync(self, store: IcechunkStore) -> None:
        from zarr.core.sync import sync

        sync(self.set(store, "zarr.json", self.buffer_cls.from_bytes(GROUP)))
        assert store._get_bytes_sync("zarr.json", prototype=default_buffer_prototype()) == GROUP

    @zarr_helpers
    async def test_get_json(self, store: IcechunkStore) -> None:
        doc = {"zarr_format": 3, "node_type": "group", "attributes": {"foo": "bar"}}
        await self.set(store, "zarr.json", self.buffer_cls.from_bytes(json.dumps(doc).encode()))
        assert await store._get_json("zarr.json", prototype=default_buffer_prototype()) == doc

    @zarr_helpers
    def test_get_json_sync(self, store: IcechunkStore) -> None:
        from zarr.core.sync import sync

        doc = {"zarr_format": 3, "node_type": "group", "attributes": {"foo": "bar"}}
        sync(self.set(store, "zarr.json", self.buffer_cls.from_bytes(json.dumps(doc).encode())))
        assert store._get_json_sync("zarr.json", prototype=default_buffer_prototype()) == doc

    # -- beyond zarr's suite ----------------------------------------------------------------

    async def test_invalid_keys_and_metadata_are_refused(self, store: IcechunkStore) -> None:
        from aicechunk.errors import InvalidMetadataError, InvalidStoreKeyError

        for key in ("foo/0/0", "foo/c/0.0", "foo/c/x", "a//b/zarr.json", "../zarr.json"):
            with pytest.raises(InvalidStoreKeyError):
                await store.set(key, self.buffer_cls.from_bytes(b"x"))
            assert await store.get(key, default_buffer_prototype()) is None
        with pytest.raises(InvalidMetadataError):
            await store.set("q/zarr.json", self.buffer_cls.from_bytes(b"bar"))
        with pytest.raises(InvalidStoreKeyError):
            await store.set(".zarray", self.buffer_cls.from_bytes(b"{}"))
        assert await store.get(".zattrs", default_buffer_prototype()) is None
        with pytest.raises(aic.AicechunkError):
            await store.set("foo/c/100", self.buffer_cls.from_bytes(b"outside the grid"))
        with pytest.raises(aic.AicechunkError):
            await store.set("nothere/c/0", self.buffer_cls.from_bytes(b"no array"))
