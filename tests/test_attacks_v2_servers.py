"""Attacks on the repo info file's compare-and-swap: another writer between read and
write, a server that gives no version, made-up ETags, garbled or truncated answers (an
S3 endpoint in front of moto that lies about ``repo``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.drivers.base import ObjectInfo
from aicechunk.errors import FormatError, StorageError
from aicechunk.format.repo_info import (
    REPO_INFO_KEY,
)
from aicechunk.testing import CountingDriver
from tests.conftest import s3_test_storage
from tests.deadline import bounded, collect
from tests.servers import create_s3_bucket, next_bucket_name, serve_forwarding
from tests.test_attacks_v2 import keys, reopen, v2_repo

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
                for name in [name for name in out if name.lower() == "etag"]:
                    del out[name]  # the only ETag the answer carries is the made-up one
                out["ETag"] = '"0123456789abcdef0123456789abcdef"'
            if request.method == "GET" and lies.truncated_get:
                lies.truncated_get -= 1
                answer = answer[: len(answer) // 2]
        return web.Response(status=status, body=answer, headers=out)

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)

    with serve_forwarding(app, sessions) as url:
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
    after 3, else as ``repo_update_retries`` says) with a StorageError saying so (not a
    ``RefExistsError``, as the last attempt's PreconditionFailed read before), and nothing
    changed."""
    import aicechunk.repo_info_store as store

    monkeypatch.setattr(store, "retry_delays", lambda updates: iter([0.0, 0.0]))
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


@pytest.mark.attack("hostile servers")
@pytest.mark.parametrize("answer", ["garbage", "truncated"])
async def test_a_garbled_answer_to_the_creating_write(s3_endpoint: str, answer: str) -> None:
    """The ``repo`` object of a new repository landed but its answer is garbage: the
    retried request fails its condition on the object this creation wrote, which is no
    other process's repository."""
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    with lying_server(s3_endpoint) as (url, lies):
        setattr(lies, f"{answer}_put", 1)
        repo = await bounded(aic.Repository.create(s3_test_storage(url, bucket), spec_version=2))
        assert lies.seen.count("PUT") >= 1 and lies.garbage_put == lies.truncated_put == 0
        await repo.close()
    honest = await aic.Repository.open(s3_test_storage(s3_endpoint, bucket))
    assert [type(u.kind).__name__ for u in await collect(honest.ops_log())] == ["RepoInitialized"]
    await honest.close()
