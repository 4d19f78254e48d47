"""Refreshable credentials for a repository on GCS (icechunk's
``gcs_refreshable_credentials``), against fake-gcs-server behind a proxy that records the
``Authorization`` header of every request (the server itself accepts any token)."""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import icechunk
import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
import aicechunk.sync as facade
import aicechunk.sync.credentials as facade_credentials
from aicechunk.drivers import _refresh
from tests.servers import FaultProxy, create_gcs_bucket, fault_proxy, next_bucket_name

#: every token a ``Tokens`` callable issued, and the thread that called it
ISSUED: list[tuple[str, int]] = []


@dataclass(frozen=True)
class Tokens:
    """A ``get_credentials``: a new bearer token on each call, valid for ``lifetime``
    seconds (as icechunk's ``GcsBearerCredential`` with ``icechunks=True``)."""

    lifetime: float
    icechunks: bool = False

    def __call__(self) -> Any:
        token = f"token-{len(ISSUED)}"
        ISSUED.append((token, threading.get_ident()))
        expiry = datetime.now(UTC) + timedelta(seconds=self.lifetime)
        kind = icechunk.GcsBearerCredential if self.icechunks else aic.GcsBearerCredential
        return kind(token, expires_after=expiry)


def failing() -> aic.GcsBearerCredential:
    """A ``get_credentials`` whose token service is down."""
    raise ConnectionError("token service unreachable")


def not_a_token() -> str:
    """A ``get_credentials`` returning the wrong thing."""
    return "a bare string"


@pytest.fixture
def proxy(gcs_endpoint: str) -> Iterator[FaultProxy]:
    """A recording proxy in front of fake-gcs-server; ``ISSUED`` starts empty."""
    ISSUED.clear()
    with fault_proxy(gcs_endpoint) as (_, state):
        yield state


def _storage(proxy: FaultProxy, bucket: str | None = None, **options: Any) -> aic.Storage:
    """GCS storage through the proxy (in a new bucket unless ``bucket`` is given)."""
    if bucket is None:
        bucket = next_bucket_name()
        create_gcs_bucket(proxy.url, bucket)
    return aic.gcs_storage(bucket=bucket, prefix="repo", endpoint_url=proxy.url, **options)


def _sent_since(proxy: FaultProxy, start: int) -> set[str | None]:
    """The ``Authorization`` headers the proxy saw since its ``start``-th request."""
    return set(proxy.authorizations[start:])


async def test_a_repository_on_gcs_with_refreshable_credentials(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tokens valid for 4 s, refreshed 2.5 s before they expire: 1.5 s of use each
    monkeypatch.setattr(_refresh, "REFRESH_BEFORE", timedelta(seconds=2.5))
    storage = _storage(proxy, get_credentials=Tokens(4))
    assert not ISSUED  # called where the storage is used, not where it is made
    before = len(proxy.authorizations)
    repo = await aic.Repository.create(storage)
    session = await repo.writable_session("main")
    array = await zas.create_array(session.store, name="x", shape=(4,), chunks=(2,), dtype="i4")
    await array.setitem(slice(None), np.arange(4, dtype="i4"))
    await session.commit("on GCS")
    assert [token for token, _ in ISSUED] == ["token-0"]
    assert ISSUED[0][1] != threading.get_ident()  # a worker thread, not the event loop's
    assert _sent_since(proxy, before) == {"Bearer token-0"}
    # within REFRESH_BEFORE of expiry: the next request carries a new token
    await asyncio.sleep(1.6)
    before = len(proxy.authorizations)
    reader = await repo.readonly_session(branch="main")
    got = await (await zas.open_array(store=reader.store, path="x")).getitem(slice(None))
    assert np.asarray(got).tolist() == [0, 1, 2, 3]
    assert len(ISSUED) == 2
    assert _sent_since(proxy, before) == {"Bearer token-1"}
    # the callable travels: a pickled storage (another process, another loop) calls it
    clone = pickle.loads(pickle.dumps(storage))
    assert await aic.Repository.exists(clone)
    assert len(ISSUED) == 3
    assert proxy.authorizations[-1] == "Bearer token-2"
    await repo.close()


async def test_scattered_initial_credentials_are_fetched_once(proxy: FaultProxy) -> None:
    bucket = next_bucket_name()
    create_gcs_bucket(proxy.url, bucket)
    await aic.Repository.create(_storage(proxy, bucket, get_credentials=Tokens(3600)))
    ISSUED.clear()
    credentials = aic.gcs_refreshable_credentials(
        Tokens(3600, icechunks=True), scatter_initial_credentials=True
    )
    assert [token for token, _ in ISSUED] == ["token-0"]
    assert "token-0" not in repr(credentials)
    storage = _storage(proxy, bucket, credentials=credentials)
    assert "token-0" not in repr(storage.config)
    copies = [pickle.loads(pickle.dumps(storage)) for _ in range(3)]
    before = len(proxy.authorizations)
    for copy in copies:
        assert await aic.Repository.exists(copy)
    assert len(ISSUED) == 1  # the copies start with the token fetched up front
    assert _sent_since(proxy, before) == {"Bearer token-0"}


async def test_refreshable_gcs_credentials_travel_with_pickled_forks_only(
    proxy: FaultProxy,
) -> None:
    repo = await aic.Repository.create(_storage(proxy, get_credentials=Tokens(3600)))
    fork = (await repo.writable_session("main")).fork()
    issued = len(ISSUED)
    clone = pickle.loads(pickle.dumps(fork))
    assert await clone.get_node("/") is None  # read with a token of its own
    assert len(ISSUED) == issued + 1
    with pytest.raises(aic.ForkPayloadError, match="unpickled"):
        aic.ForkSession.from_bytes(fork.to_bytes())


async def test_credentials_that_cannot_work_are_refused(proxy: FaultProxy) -> None:
    with pytest.raises(TypeError, match="must pickle"):
        aic.gcs_refreshable_credentials(lambda: aic.GcsBearerCredential("t"))
    with pytest.raises(TypeError, match="must pickle"):
        aic.gcs_storage(bucket="b", get_credentials=lambda: ("t", None))
    with pytest.raises(ValueError, match="exclude"):
        aic.gcs_storage(bucket="b", get_credentials=Tokens(60), anonymous=True)
    with pytest.raises(ValueError, match="excludes"):
        aic.gcs_storage(bucket="b", get_credentials=Tokens(60), from_env=True)
    # a callable that fails, or returns no token, fails the request that needed it
    with pytest.raises(aic.StorageError, match="get_credentials failed: ConnectionError"):
        await aic.Repository.exists(_storage(proxy, get_credentials=failing))
    with pytest.raises(aic.StorageError, match="get_credentials failed: TypeError"):
        await aic.Repository.exists(_storage(proxy, get_credentials=not_a_token))


def test_the_facade_has_icechunk_names() -> None:
    assert facade.gcs_refreshable_credentials is aic.gcs_refreshable_credentials
    assert facade_credentials.gcs_refreshable_credentials is aic.gcs_refreshable_credentials
    assert facade.GcsBearerCredential is aic.GcsBearerCredential
    theirs = icechunk.GcsBearerCredential("t", expires_after=None)
    ours = aic.GcsBearerCredential("t", expires_after=None)
    assert (ours.bearer, ours.expires_after) == (theirs.bearer, theirs.expires_after)
