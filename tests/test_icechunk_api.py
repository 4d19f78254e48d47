"""icechunk's calls in the async core, checked against icechunk itself (2.3.0 on the
baseline): the same operations on both (local storage), or icechunk's repository read by
ours.

Icechunk's ``<name>_async`` is our ``<name>`` (the facade in ``aicechunk.sync`` adds the
synchronous twins)."""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
import re
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import zarr
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk import logs
from aicechunk.drivers import _refresh
from tests.conftest import s3_test_storage
from tests.oracle import ICECHUNK_2, SPEC_VERSIONS, create_kwargs
from tests.servers import create_s3_bucket, next_bucket_name

pytestmark = pytest.mark.filterwarnings("ignore:The LocalFileSystem storage is not safe")


def _icechunk_repo(path: Path, spec_version: int = 1) -> tuple[icechunk.Repository, list[str]]:
    """An icechunk repository with an inline chunk, a native chunk and two commits."""
    config = icechunk.RepositoryConfig.default()
    config.inline_chunk_threshold_bytes = 16
    storage = icechunk.local_filesystem_storage(str(path))
    repo = icechunk.Repository.create(storage, config, **create_kwargs(spec_version))
    session = repo.writable_session("main")
    array = zarr.group(session.store).create_array(
        "x", shape=(8,), chunks=(2,), dtype="i4", compressors=None
    )
    array[:2] = 1
    first = session.commit("one", metadata={"n": 1})
    time.sleep(0.02)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="x")[4:] = np.arange(4)
    second = session.commit("two")
    return repo, [first, second]


# --- Repository ------------------------------------------------------------------------


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_lookup_snapshot_and_as_of_agree_with_icechunk(
    tmp_path: Path, spec_version: int
) -> None:
    theirs, (first, second) = _icechunk_repo(tmp_path, spec_version)
    ours = await aic.Repository.open(aic.local_filesystem_storage(tmp_path))
    for sid in (first, second):
        a, b = await ours.lookup_snapshot(sid), theirs.lookup_snapshot(sid)
        assert (a.id, a.parent_id, a.message, a.metadata, a.written_at) == (
            b.id,
            b.parent_id,
            b.message,
            b.metadata,
            b.written_at,
        )
    history = [i.written_at for i in theirs.ancestry(branch="main")]
    probes = [t + d for t in history for d in (timedelta(0), timedelta(microseconds=-1))]
    for when in probes:
        try:
            expected: Any = theirs.readonly_session("main", as_of=when).snapshot_id
        except icechunk.IcechunkError:
            expected = None
        if expected is None:
            with pytest.raises(aic.RefNotFoundError):
                await ours.readonly_session("main", as_of=when)
        else:
            assert (await ours.readonly_session("main", as_of=when)).snapshot_id == expected
    with pytest.raises(ValueError, match="together with a branch"):
        await ours.readonly_session(tag="v", as_of=history[0])
    with pytest.raises(TypeError):
        await ours.readonly_session("main", as_of=datetime(2020, 1, 1))
    with pytest.raises(aic.RefNotFoundError):
        await ours.lookup_snapshot("AAAAAAAAAAAAAAAAAAAA")
    assert [i.id async for i in ours.async_ancestry(branch="main")] == [
        i.id for i in theirs.ancestry(branch="main")
    ]
    # the newest spec version, which each library writes by default (1.1.21: 1)
    assert aic.spec_version() == 2
    assert int(icechunk.spec_version()) == (2 if icechunk.__version__.startswith("2.") else 1)


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_reset_branch_from_snapshot_id(tmp_path: Path, spec_version: int) -> None:
    theirs, (first, second) = _icechunk_repo(tmp_path / "theirs", spec_version)
    with pytest.raises(icechunk.IcechunkError, match="conflict"):
        theirs.reset_branch("main", first, from_snapshot_id=first)
    ours = await aic.Repository.open(aic.local_filesystem_storage(tmp_path / "theirs"))
    with pytest.raises(aic.ConflictError) as info:
        await ours.reset_branch("main", first, from_snapshot_id=first)
    assert (info.value.expected_parent, info.value.actual_parent) == (first, second)
    assert "not reset" in str(info.value)
    assert await ours.lookup_branch("main") == second
    await ours.reset_branch("main", first, from_snapshot_id=second)
    assert await ours.lookup_branch("main") == first == theirs.lookup_branch("main")
    clone = pickle.loads(pickle.dumps(info.value))
    assert (clone.expected_parent, clone.actual_parent, str(clone)) == (
        first,
        second,
        str(info.value),
    )


async def test_default_commit_metadata_as_icechunk(tmp_path: Path) -> None:
    theirs = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "t")))
    ours = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "o"))
    results = []
    for repo in (theirs, ours):
        repo.set_default_commit_metadata({"a": 1, "b": 2})
        assert repo.default_commit_metadata() == {"a": 1, "b": 2}
        if repo is theirs:
            session: Any = repo.writable_session("main")
        else:
            session = await ours.writable_session("main")
        repo.set_default_commit_metadata({"late": True})  # sessions already made keep theirs
        if repo is theirs:
            zarr.group(session.store).attrs["k"] = 1
            sid = session.commit("m", {"b": 3})
            results.append(repo.lookup_snapshot(sid).metadata)
            results.append(repo.reopen().default_commit_metadata())
        else:
            group = await zas.group(store=session.store)
            await group.update_attributes({"k": 1})
            sid = await session.commit("m", {"b": 3})
            results.append((await ours.lookup_snapshot(sid)).metadata)
            results.append(ours.reopen().default_commit_metadata())
    assert results[0] == results[2] == {"a": 1, "b": 3}
    assert results[1] == results[3] == {}


async def test_reopen_merges_the_config(tmp_path: Path) -> None:
    config = aic.RepositoryConfig()
    config.inline_chunk_threshold_bytes = 7
    config.get_partial_values_concurrency = 3
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path), config)
    other = aic.RepositoryConfig()
    other.inline_chunk_threshold_bytes = 9
    again = repo.reopen(other)
    assert again is not repo and repo.config.inline_chunk_threshold_bytes == 7
    assert again.config.inline_chunk_threshold_bytes == 9
    assert again.config.get_partial_values_concurrency == 3
    assert repo.reopen().config.inline_chunk_threshold_bytes == 7
    assert repo.authorized_virtual_container_prefixes == set()


async def test_transaction_commits_on_a_clean_exit_only(tmp_path: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path))
    tip = await repo.lookup_branch("main")
    with pytest.raises(KeyError):
        async with repo.transaction("main", message="dropped") as store:
            await (await zas.group(store=store)).update_attributes({"x": 1})
            raise KeyError("boom")
    assert await repo.lookup_branch("main") == tip
    with pytest.raises(aic.SessionStateError, match="no changes"):
        async with repo.transaction("main", message="empty"):
            pass
    async with repo.transaction("main", message="kept", metadata={"m": 1}) as store:
        assert isinstance(store, aic.IcechunkStore) and not store.read_only
        await (await zas.group(store=store)).update_attributes({"x": 2})
    info = await repo.lookup_snapshot(await repo.lookup_branch("main"))
    assert (info.message, info.metadata, info.parent_id) == ("kept", {"m": 1}, tip)


# --- Session ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_flush_as_icechunk(tmp_path: Path, spec_version: int) -> None:
    storage = icechunk.local_filesystem_storage(str(tmp_path / "t"))
    theirs = icechunk.Repository.create(storage, **create_kwargs(spec_version))
    ts = theirs.writable_session("main")
    zarr.group(ts.store).attrs["k"] = 1
    ours = await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path / "o"), spec_version=spec_version
    )
    os_ = await ours.writable_session("main")
    await (await zas.group(store=os_.store)).update_attributes({"k": 1})
    their_id = ts.flush("anon", metadata={"a": 1})
    our_id = await os_.flush("anon", metadata={"a": 1})
    for session, sid in ((ts, their_id), (os_, our_id)):
        assert session.snapshot_id == sid
        assert (session.read_only, session.branch, session.has_uncommitted_changes) == (
            True,
            None,
            False,
        )
    assert await ours.lookup_branch("main") == "1CECHNKREP0F1RSTCMT0"
    info = await ours.lookup_snapshot(our_id)
    assert (info.message, info.metadata, info.parent_id) == (
        "anon",
        {"a": 1},
        "1CECHNKREP0F1RSTCMT0",
    )
    if ICECHUNK_2:
        # icechunk 2.3.0 flushes a session with nothing to flush too (1.1.21 refused, as
        # aicechunk does): an empty anonymous snapshot on top of the last one
        assert theirs.lookup_snapshot(ts.flush("again")).parent_id == their_id
    else:
        with pytest.raises(icechunk.IcechunkError, match="no changes"):
            ts.flush("again")
    with pytest.raises(aic.SessionStateError, match="no changes"):
        await os_.flush("again")
    # the anonymous snapshot is readable and can be kept
    await ours.create_tag("kept", our_id)
    ro = await ours.readonly_session(tag="kept")
    assert (await zas.open_group(store=ro.store, mode="r")).attrs["k"] == 1


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_chunk_type_and_coordinates_agree_with_icechunk(
    tmp_path: Path, spec_version: int
) -> None:
    theirs, _ = _icechunk_repo(tmp_path, spec_version)
    ts = theirs.readonly_session("main")
    ours = await (
        await aic.Repository.open(aic.local_filesystem_storage(tmp_path))
    ).readonly_session("main")
    for coords in ([0], [1], [2], [3], [9]):
        mine = await ours.chunk_type("/x", coords)
        # icechunk 1.x names the members INLINE...; 2.x inline...: ChunkType has both
        assert mine is getattr(aic.ChunkType, str(ts.chunk_type("/x", coords)).split(".")[1])
        assert isinstance(mine, aic.ChunkType)
    assert {m.name: m.value for m in aic.ChunkType} == {
        "UNINITIALIZED": 0,
        "NATIVE": 1,
        "VIRTUAL": 2,
        "INLINE": 3,
    }
    assert [aic.ChunkType[n.lower()] for n in ("UNINITIALIZED", "NATIVE", "VIRTUAL", "INLINE")] == [
        aic.ChunkType.UNINITIALIZED,
        aic.ChunkType.NATIVE,
        aic.ChunkType.VIRTUAL,
        aic.ChunkType.INLINE,
    ]
    assert [c async for c in ours.chunk_coordinates("/x")] == [
        c async for c in ts.chunk_coordinates("/x")
    ]
    with pytest.raises(ValueError):
        [c async for c in ts.chunk_coordinates("x")]
    with pytest.raises(ValueError):
        [c async for c in ours.chunk_coordinates("x")]
    with pytest.raises(icechunk.IcechunkError, match="not found"):
        [c async for c in ts.chunk_coordinates("/nope")]
    with pytest.raises(aic.AicechunkError, match="no array"):
        [c async for c in ours.chunk_coordinates("/nope")]
    with pytest.raises(aic.AicechunkError, match="no array"):
        await ours.chunk_type("/nope", [0])
    assert [c async for c in ours.chunk_coords("/nope")] == []  # the lenient old name


async def test_session_config_is_the_repository_config(tmp_path: Path) -> None:
    config = aic.RepositoryConfig()
    config.inline_chunk_threshold_bytes = 5
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path), config)
    session = await repo.writable_session("main")
    assert session.config.inline_chunk_threshold_bytes == 5
    assert (await repo.readonly_session("main")).config.inline_chunk_threshold_bytes == 5
    fork = aic.ForkSession.from_bytes(session.fork().to_bytes())
    assert fork.config.inline_chunk_threshold_bytes == 5
    assert isinstance(icechunk.Session.config, property)  # icechunk's is a property too


# --- errors ----------------------------------------------------------------------------


def test_error_and_conflict_attributes_have_icechunks_names() -> None:
    def props(obj: object) -> set[str]:
        return {n for n in dir(obj) if not n.startswith("_")}

    assert {"expected_parent", "actual_parent"} <= props(aic.ConflictError)
    assert {"snapshot", "conflicts"} <= props(aic.RebaseFailedError("S", []))
    conflict = aic.Conflict(aic.ConflictKind.ZARR_METADATA_DOUBLE_UPDATE, "/a")
    assert {"conflict_type", "conflicted_chunks", "path"} <= props(conflict)
    names = re.findall(
        r"^\s+(\w+) = \(\d+,\)",
        Path(icechunk.__file__).with_name("_icechunk_python.pyi").read_text(),
        re.M,
    )
    missing = {n for n in names if not hasattr(aic.ConflictType, n)}
    assert names and not missing, missing
    chunks = aic.Conflict(aic.ConflictKind.CHUNK_DOUBLE_UPDATE, "/a", frozenset({(1,), (0,)}))
    assert chunks.conflict_type is aic.ConflictType.ChunkDoubleUpdate
    assert chunks.conflicted_chunks == [[0], [1]]
    assert aic.Conflict(aic.ConflictKind.DELETE_OF_UPDATED_ARRAY, "/a").conflicted_chunks is None
    error = aic.RebaseFailedError("SNAP", [chunks])
    clone = pickle.loads(pickle.dumps(error))
    assert clone.snapshot == "SNAP" and clone.conflicts == [chunks]


# --- logs ------------------------------------------------------------------------------


async def test_logs_filter_in_icechunks_form(tmp_path: Path, caplog: Any) -> None:
    try:
        aic.set_logs_filter("icechunk=debug,error")
        assert logging.getLogger("aicechunk").level == logging.DEBUG
        aic.set_logs_filter("aicechunk.session=debug,error")
        assert logging.getLogger("aicechunk").level == logging.ERROR
        assert logging.getLogger("aicechunk.session").level == logging.DEBUG
        aic.set_logs_filter("warn")  # replaces: the session logger follows its parent again
        assert logging.getLogger("aicechunk.session").level == logging.NOTSET
        with pytest.raises(ValueError, match="LEVEL"):
            aic.set_logs_filter("aicechunk=loud")
        aic.set_logs_filter("aicechunk.session=info")
        repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path))
        session = await repo.writable_session("main")
        await (await zas.group(store=session.store)).update_attributes({"k": 1})
        with caplog.at_level(logging.INFO, logger="aicechunk.session"):
            sid = await session.commit("m")
        assert any(sid in r.getMessage() for r in caplog.records)
    finally:
        aic.set_logs_filter("")


def test_print_debug_info(capsys: Any) -> None:
    aic.print_debug_info()
    out = capsys.readouterr().out
    for name in ("platform", "python", "aicechunk", "zarr", "numpy"):
        assert re.search(rf"^{name}:  \S", out, re.M), name
    assert logs.debug_info()["aicechunk"] == aic.__version__


# --- storage ---------------------------------------------------------------------------


def _s3_options(storage: Any) -> dict[str, str]:
    """icechunk's S3 storage settings, read from its repr: ``S3Storage(bucket=b, ...)`` in
    1.x, one ``key: value`` line each in 2.x (which leaves out an empty prefix)."""
    text = repr(storage)
    found = dict(re.findall(r"(\w+)=([^,()]*)", text))
    found = found or dict(re.findall(r"^(\w+): (.*)$", text, re.M))
    found.setdefault("prefix", "")
    return found


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bucket": "b", "prefix": "p", "account_id": "acct"},
        {"prefix": "b/p/q", "account_id": "acct"},
        {"bucket": "b", "account_id": "acct"},
        {"bucket": "b", "prefix": "p", "endpoint_url": "https://x.example", "region": "eu"},
        {"bucket": "b", "prefix": "p"},
        {"account_id": "acct"},
    ],
)
def test_r2_storage_as_icechunk(kwargs: dict[str, Any]) -> None:
    try:
        theirs: Any = _s3_options(icechunk.r2_storage(**kwargs, from_env=True))
    except icechunk.IcechunkError as err:
        with pytest.raises(ValueError, match=str(err).split("error: ")[1].split(".")[0]):
            aic.r2_storage(**kwargs, from_env=True)
        return
    ours = aic.r2_storage(**kwargs, from_env=True).config
    assert (ours["bucket"], ours["prefix"]) == (theirs["bucket"], theirs["prefix"])
    assert (ours["region"], ours["endpoint_url"]) == (theirs["region"], theirs["endpoint_url"])
    assert ours["force_path_style"] is (theirs["force_path_style"].lower() == "true")


def test_tigris_storage_as_icechunk() -> None:
    theirs = _s3_options(icechunk.tigris_storage(bucket="b", prefix="p", region="iad"))
    ours = aic.tigris_storage(bucket="b", prefix="p", region="iad").config
    assert (ours["endpoint_url"], ours["region"]) == (theirs["endpoint_url"], "iad")
    with pytest.raises(icechunk.IcechunkError, match="requires a region"):
        icechunk.tigris_storage(bucket="b", prefix="p")
    with pytest.raises(ValueError, match="requires a region"):
        aic.tigris_storage(bucket="b", prefix="p")
    with pytest.raises(ValueError, match="not supported"):
        aic.tigris_storage(bucket="b", prefix="p", use_weak_consistency=True)


CALLS: list[float] = []


def moto_keys() -> aic.ExpiringS3Credentials:
    """A ``get_credentials`` for moto (any keys work): short-lived (8 s), counted."""
    CALLS.append(time.monotonic())
    return aic.ExpiringS3Credentials(
        "testing", "testing", None, datetime.now(UTC) + timedelta(seconds=8)
    )


def _refreshable_storage(endpoint: str, bucket: str, **extra: Any) -> aic.Storage:
    return aic.s3_storage(
        bucket=bucket,
        prefix="repo",
        region="us-east-1",
        endpoint_url=endpoint,
        allow_http=True,
        force_path_style=True,
        get_credentials=moto_keys,
        **extra,
    )


async def test_refreshable_credentials_for_the_repository_storage(
    s3_endpoint: str, monkeypatch: Any
) -> None:
    # keys for 8 s, due for a refresh 4 s before expiry: making the repository may take
    # up to 4 s before a refresh is due (the old 4 s keys and 2.5 s window left 1.5 s,
    # which a loaded machine overran once)
    monkeypatch.setattr(_refresh, "REFRESH_BEFORE", timedelta(seconds=4))
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    CALLS.clear()
    storage = _refreshable_storage(s3_endpoint, bucket)
    assert not CALLS  # called where the storage is used, not where it is made
    repo = await aic.Repository.create(storage)
    assert len(CALLS) == 1
    made = CALLS[0]
    assert time.monotonic() - made < 4  # nothing was due yet
    await asyncio.sleep(4.2 - (time.monotonic() - made))  # within 4 s of expiry now
    await repo.lookup_branch("main")  # the next request refreshes
    assert len(CALLS) == 2
    # the callable travels: a pickled storage (another process, another loop) calls it
    clone = pickle.loads(pickle.dumps(storage))
    assert await aic.Repository.exists(clone)
    # scatter_initial_credentials: called once now, the copies start with those keys
    CALLS.clear()
    scattered = _refreshable_storage(s3_endpoint, bucket, scatter_initial_credentials=True)
    assert len(CALLS) == 1
    assert await aic.Repository.exists(pickle.loads(pickle.dumps(scattered)))
    assert len(CALLS) == 1
    await repo.close()


async def test_refreshable_credentials_travel_with_pickled_forks_only(s3_endpoint: str) -> None:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    repo = await aic.Repository.create(_refreshable_storage(s3_endpoint, bucket))
    fork = (await repo.writable_session("main")).fork()
    clone = pickle.loads(pickle.dumps(fork))
    assert await clone.get_node("/") is None
    with pytest.raises(aic.ForkPayloadError, match="unpickled"):
        aic.ForkSession.from_bytes(fork.to_bytes())
    with pytest.raises(TypeError, match="pickle"):
        aic.s3_refreshable_credentials(lambda: ("k", "s"))
    assert s3_test_storage  # static keys keep working (the rest of the suite)


# --- a forgotten await -----------------------------------------------------------------


async def test_a_commit_never_awaited_warns_naming_it(tmp_path: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path))
    session = await repo.writable_session("main")
    await (await zas.group(store=session.store)).update_attributes({"k": 1})
    with pytest.warns(aic.UnawaitedCallWarning, match=r"Session\.commit\(\.\.\.\) was never") as w:
        session.commit("forgotten")  # no await
        gc.collect()
    assert w[0].filename == __file__  # the warning points at the line that forgot
    assert "nothing was committed" in str(w[0].message)
    assert await repo.lookup_branch("main") == "1CECHNKREP0F1RSTCMT0"
    # closed on purpose, awaited, or run as a task: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dropped = session.commit("x")
        assert asyncio.iscoroutine(dropped)
        dropped.close()
        del dropped
        gc.collect()
    assert await asyncio.create_task(session.commit("done"))
    assert asyncio.iscoroutinefunction(aic.Session.commit)


def test_unawaited_calls_that_matter_warn_even_outside_a_loop(tmp_path: Path) -> None:
    with pytest.warns(aic.UnawaitedCallWarning, match="Repository.create"):
        aic.Repository.create(aic.local_filesystem_storage(tmp_path))
        gc.collect()
    assert not (tmp_path / "refs").exists()
    repo = asyncio.run(aic.Repository.create(aic.local_filesystem_storage(tmp_path)))
    assert asyncio.run(repo.lookup_branch("main"))
