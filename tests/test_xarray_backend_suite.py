"""xarray's own zarr backend tests, run against ``IcechunkStore`` through a repository.

From ``xarray.tests.test_backends``:

- ``TestIcechunkZarrBackend``: ``ZarrBase`` (via ``TestZarrWriteEmpty``, which adds the
  fill-value and write-empty tests); ``create_zarr_target`` hands every test the store of a
  fresh writable session of a fresh in-memory repository, and a path a test makes for itself
  (``create_tmp_file()``) is mapped to such a store in ``save``/``open``, so every test that
  runs writes through our store and reads back through it.
- ``TestIcechunkZarrBackendCommitted``: the same tests with a commit after every ``save`` and
  ``roundtrip`` reading from a read-only session at the commit (manifests, snapshots).
- ``TestIcechunkRegionAuto`` and ``TestIcechunkRegionAutoCommitted``: ``TestZarrRegionAuto``.
- ``TestIcechunkDictStoreExtras``: the tests ``TestZarrDictStore`` adds (``load_async``).

Tests asking for consolidated metadata run too: xarray turns it off for a store whose
``supports_consolidated_metadata`` is False, which is what those tests then check.

Tests that cannot apply to an Icechunk store are listed in ``SKIPS`` (test name -> reason) and
skipped by an autouse fixture, so the reason shows in the report; nothing is deselected.
The whole ``zarr_format=2`` parametrization is skipped the same way: a repository holds only
Zarr v3.  Tests that need a package which is not installed are skipped by xarray's own
``requires_*`` marks.

xarray's repository-level ``conftest.py`` (not shipped in the wheel) implements the
``skip_if_param`` mark; ``_skips`` below does the same job here.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("xarray")
pytest.importorskip("zarr")

import numpy as np
import xarray as xr
from xarray.tests import test_backends as xtb

# Fixtures the suite asks for, defined in xarray's test modules; importing registers them here.
from xarray.tests.conftest import time_unit, use_dask  # noqa: F401
from xarray.tests.test_backends import default_zarr_format, tmp_store  # noqa: F401
from zarr.core.sync import sync
from zarr.storage import WrapperStore

import aicechunk as aic

# Tests that cannot apply to an Icechunk store: test name (``originalname``) -> why.
SKIPS: dict[str, str] = {
    "test_pickle": (
        "pickles a dataset opened on the writable session's store; a writable Session refuses "
        "pickling by design (session.fork() is the picklable form), so the same changes cannot "
        "be merged twice; test_pickle_from_readonly_session below pickles the read path"
    ),
    "test_pickle_dataarray": "as test_pickle: pickles a dataset on a writable session's store",
    "test_default_zarr_fill_value": (
        "opens the target with open_dataset() without engine=, which xarray guesses as zarr "
        "only for a path ending in '.zarr', never for a Store object (zarr's MemoryStore too)"
    ),
    "test_chunk_key_encoding_v2": (
        "writes an array with the 'v2' chunk key encoding (chunks at '<path>/0/0'); an "
        "Icechunk store names chunks '<path>/c/<i>/<j>' only (icechunk refuses such keys "
        "too), so aicechunk refuses that metadata when written (tests/test_nodes.py)"
    ),
    "test_write_empty": (
        "lists chunk files with os.walk under a directory store; a repository keeps chunks in "
        "manifests, not as files named by chunk key; test_write_empty_chunks below checks the "
        "same behaviour through the store's listing"
    ),
}

V2_REASON = (
    "an Icechunk repository holds only Zarr v3 (spec v1 stores v3 metadata per node); "
    "zarr_format=2 cannot be written to it"
)


async def _fresh_store() -> aic.IcechunkStore:
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    return session.store


def fresh_store() -> aic.IcechunkStore:
    """The store of a writable session on ``main`` of a new in-memory repository."""
    return sync(_fresh_store())


@pytest.fixture(autouse=True)
def _skips(request: pytest.FixtureRequest) -> None:
    """Apply ``SKIPS``, the v2 skip, and xarray's ``skip_if_param`` marks, in that order."""
    name = getattr(request.node, "originalname", request.node.name)
    if name in SKIPS:
        pytest.skip(f"not applicable to an Icechunk store: {SKIPS[name]}")
    callspec = getattr(request.node, "callspec", None)
    if callspec is None:
        return
    if 2 in (callspec.params.get("default_zarr_format"), callspec.params.get("zarr_format")):
        pytest.skip(V2_REASON)
    # xarray's repository conftest (not in the wheel) implements this mark:
    # skip_if_param(reason=..., condition=..., **params) skips the case with those params.
    for mark in request.node.iter_markers("skip_if_param"):
        kwargs = dict(mark.kwargs)
        reason = kwargs.pop("reason", "")
        condition = kwargs.pop("condition", True)
        if condition and all(callspec.params.get(k) == v for k, v in kwargs.items()):
            pytest.skip(reason)


class _PathsToStores:
    """Route a path a test made itself (``create_tmp_file()``) through ``save``/``open`` to a
    repository store kept for that path, so such tests write and read our store too."""

    _stores: dict[str, aic.IcechunkStore]

    def _target(self, target: Any) -> Any:
        if not isinstance(target, str | os.PathLike):
            return target
        stores = self.__dict__.setdefault("_stores", {})
        key = os.fspath(target)
        if key not in stores:
            stores[key] = self._new_target()
        return stores[key]

    def _new_target(self) -> Any:
        return fresh_store()

    def save(self, dataset: Any, store_target: Any, **kwargs: Any) -> Any:
        return super().save(dataset, self._target(store_target), **kwargs)  # type: ignore[misc]

    def open(self, path: Any, **kwargs: Any) -> Any:
        return super().open(self._target(path), **kwargs)  # type: ignore[misc]


class TestIcechunkZarrBackend(_PathsToStores, xtb.TestZarrWriteEmpty):  # type: ignore[misc]
    """``ZarrBase`` and the write-empty tests over a fresh repository session per target."""

    @contextlib.contextmanager
    def create_zarr_target(self) -> Iterator[aic.IcechunkStore]:
        yield fresh_store()

    @contextlib.contextmanager
    def temp_dir(self) -> Iterator[tuple[str, Any]]:
        yield "", fresh_store()


class TestIcechunkRegionAuto(xtb.TestZarrRegionAuto):  # type: ignore[misc]
    """xarray's ``region="auto"`` tests over a fresh repository session per target."""

    @contextlib.contextmanager
    def create_zarr_target(self) -> Iterator[aic.IcechunkStore]:
        yield fresh_store()


# -- the two skipped behaviours, checked the way they apply to a repository -------------------


async def test_pickle_from_readonly_session() -> None:
    """What test_pickle checks, on the picklable read path: a dataset opened on a read-only
    session's store pickles and unpickles to the same data."""
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    expected = xr.Dataset({"foo": ("x", [42])})
    expected.to_zarr(session.store, zarr_format=3, consolidated=False)
    await session.commit("foo")
    readonly = await repo.readonly_session(branch="main")
    with (
        xr.open_zarr(readonly.store, consolidated=False) as ds,
        pickle.loads(pickle.dumps(ds)) as unpickled,
    ):
        xr.testing.assert_identical(expected, unpickled.load())
        xr.testing.assert_identical(expected["foo"], pickle.loads(pickle.dumps(ds["foo"])))


@pytest.mark.parametrize("write_empty", [True, False, None])
async def test_write_empty_chunks(write_empty: bool | None) -> None:
    """What test_write_empty checks with os.walk, through the store's listing: with
    write_empty_chunks false (zarr's default) chunks equal to the fill value get no chunk
    reference, also after an append; with it true every chunk is written."""
    repo = await aic.Repository.create(aic.in_memory_storage())
    session = await repo.writable_session("main")
    store = session.store
    data = np.array([np.nan, np.nan, 1.0, np.nan]).reshape((1, 2, 2))
    ds = xr.Dataset(data_vars={"test": (("Z", "Y", "X"), data)})
    encoding = {"test": {"chunks": (1, 1, 1)}}

    async def chunk_keys() -> set[str]:
        return {key.removeprefix("test/c/") async for key in store.list_prefix("test/c/")}

    ds.to_zarr(store, mode="w", encoding=encoding, write_empty_chunks=write_empty)
    full = {"0/0/0", "0/0/1", "0/1/0", "0/1/1"}
    assert await chunk_keys() == (full if write_empty else {"0/1/0"})

    ds.to_zarr(store, mode="a", append_dim="Z", write_empty_chunks=write_empty)
    appended = {key.replace("0/", "1/", 1) for key in full}
    assert await chunk_keys() == (full | appended if write_empty else {"0/1/0", "1/1/0"})
    with xr.open_zarr(store, consolidated=False) as back:
        xr.testing.assert_identical(back.load(), xr.concat([ds, ds], dim="Z"))


class TestIcechunkDictStoreExtras:
    """The tests ``TestZarrDictStore`` adds to ``ZarrBase``: chunk-key encoding and
    ``load_async`` (concurrent and indexed), which reads our store from pytest's event loop
    after zarr's own loop wrote it."""

    @contextlib.contextmanager
    def create_zarr_target(self) -> Iterator[aic.IcechunkStore]:
        yield fresh_store()

    _base = xtb.TestZarrDictStore
    test_chunk_key_encoding_v2 = _base.test_chunk_key_encoding_v2
    test_async_load_multiple_variables = _base.test_async_load_multiple_variables
    test_concurrent_load_multiple_objects = _base.test_concurrent_load_multiple_objects
    test_indexing = _base.test_indexing
    test_raise_on_older_zarr_version = _base.test_raise_on_older_zarr_version


class CommitEachWrite(WrapperStore):  # type: ignore[misc]
    """A store over a repository's ``main`` that commits after every ``to_zarr`` and goes on
    in a new writable session: later writes (appends, regions) and reads then start from a
    committed snapshot instead of the pending changes of one session."""

    supports_consolidated_metadata = False

    def __init__(self, store: aic.IcechunkStore, repo: aic.Repository) -> None:
        super().__init__(store)
        self.repo = repo

    @classmethod
    def fresh(cls) -> CommitEachWrite:
        repo = sync(aic.Repository.create(aic.in_memory_storage()))
        return cls(sync(repo.writable_session("main")).store, repo)

    def _with_store(self, store: aic.IcechunkStore) -> CommitEachWrite:
        return type(self)(store, self.repo)

    def commit_and_continue(self) -> None:
        session = self._store.session
        if session.has_uncommitted_changes:
            sync(session.commit("to_zarr"))
        self._store = sync(self.repo.writable_session("main")).store


class _CommitAfterSave:
    """``save`` commits and continues in a new session (see ``CommitEachWrite``)."""

    def save(self, *args: Any, **kwargs: Any) -> Any:
        resolve = getattr(self, "_target", lambda target: target)  # paths -> their stores
        args = tuple(resolve(arg) for arg in args)
        result = super().save(*args, **kwargs)  # type: ignore[misc]
        for target in args[:2]:
            if isinstance(target, CommitEachWrite):
                target.commit_and_continue()
        return result


class TestIcechunkRegionAutoCommitted(_CommitAfterSave, xtb.TestZarrRegionAuto):  # type: ignore[misc]
    """The region tests with a commit after every write."""

    @contextlib.contextmanager
    def create_zarr_target(self) -> Iterator[CommitEachWrite]:
        yield CommitEachWrite.fresh()


class TestIcechunkZarrBackendCommitted(_CommitAfterSave, TestIcechunkZarrBackend):
    """The same tests with a commit after every ``save`` (appends and regions then change a
    committed snapshot), and ``roundtrip`` reading from a read-only session at the commit:
    the data goes through manifests and a snapshot rather than pending changes."""

    @contextlib.contextmanager
    def create_zarr_target(self) -> Iterator[CommitEachWrite]:
        yield CommitEachWrite.fresh()

    def _new_target(self) -> Any:
        return CommitEachWrite.fresh()

    @contextlib.contextmanager
    def roundtrip(
        self,
        data: Any,
        save_kwargs: dict[str, Any] | None = None,
        open_kwargs: dict[str, Any] | None = None,
        allow_cleanup_failure: bool = False,
    ) -> Iterator[Any]:
        repo = sync(aic.Repository.create(aic.in_memory_storage()))
        session = sync(repo.writable_session("main"))
        self.save(data, session.store, **(save_kwargs or {}))
        sync(session.commit("roundtrip"))
        readonly = sync(repo.readonly_session(branch="main"))
        with self.open(readonly.store, **(open_kwargs or {})) as ds:
            yield ds
