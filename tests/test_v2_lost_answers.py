"""The answer to a spec v2 change of ``repo`` lost on the wire, on moto S3: the request
reached the server and was applied, the connection was cut before the answer came back.
As a lost ref write in spec v1, the change is settled by reading ``repo`` back: it is
done once (never lost, never twice), or, when ``repo`` cannot be read back either, the
outcome is unknown (``CommitOutcomeUnknownError``) and the next commit finds out."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
import aicechunk.repo_info_store
from tests.conftest import s3_test_storage
from tests.servers import FaultProxy, create_s3_bucket, fault_proxy, next_bucket_name
from tests.test_reliability import collect, make_array, write_x, x_values

pytestmark = pytest.mark.attack("lost answers")


@pytest.fixture
def proxied(s3_endpoint: str) -> Iterator[tuple[aic.Storage, aic.Storage, FaultProxy]]:
    """The same bucket straight at moto and through a fault proxy (PUTs of ``repo`` only)."""
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    with fault_proxy(s3_endpoint) as (url, proxy):
        proxy.methods, proxy.path_suffix = ("PUT",), "/repo"
        through = aic.s3_storage(
            bucket=bucket,
            prefix="repo",
            region="us-east-1",
            endpoint_url=url,
            allow_http=True,
            force_path_style=True,
            access_key_id="testing",
            secret_access_key="testing",
            max_attempts=3,  # a request cut once is sent again; reads that keep failing end soon
        )
        yield s3_test_storage(s3_endpoint, bucket), through, proxy


async def _kinds(repo: aic.Repository) -> collections.Counter[str]:
    return collections.Counter(type(u.kind).__name__ for u in await collect(repo.ops_log()))


async def test_cut_answers_to_commits_and_ref_changes_lose_and_double_nothing(
    proxied: tuple[aic.Storage, aic.Storage, FaultProxy],
) -> None:
    direct, through, proxy = proxied
    await make_array(direct, 8, 2)
    ours = await aic.Repository.open(through)
    theirs = await aic.Repository.open(direct)
    before = await _kinds(theirs)
    sids = []
    for i in range(4):
        proxy.faults = ["lose"]
        sids.append(await write_x(ours, i, f"mine {i}"))
        assert proxy.faults == [] and proxy.faulted == i + 1
        await write_x(theirs, 4 + i, f"theirs {i}")  # another writer on top, each time
    tip = await ours.lookup_branch("main")
    changes: list[Any] = [
        lambda: ours.create_tag("t", tip),
        lambda: ours.create_branch("b", tip),
        lambda: ours.reset_branch("b", sids[0]),
        lambda: ours.delete_branch("b"),
        lambda: ours.delete_tag("t"),
        lambda: ours.set_metadata({"k": 1}),
    ]
    for change in changes:
        proxy.faults = ["lose"]
        await change()
        assert proxy.faults == []
    assert proxy.faulted == 4 + len(changes)
    fresh = await aic.Repository.open(direct)
    history = [info.message for info in await collect(fresh.ancestry(branch="main"))]
    for i in range(4):
        assert history.count(f"mine {i}") == 1 and history.count(f"theirs {i}") == 1
    assert (await x_values(fresh)).tolist() == list(range(8))
    assert await fresh.list_tags() == set() and await fresh.list_branches() == {"main"}
    assert await fresh.get_metadata() == {"k": 1}
    after = await _kinds(fresh)
    after.subtract(before)
    assert +after == collections.Counter(
        NewCommit=8,
        TagCreated=1,
        BranchCreated=1,
        BranchReset=1,
        BranchDeleted=1,
        TagDeleted=1,
        MetadataChanged=1,
    )


@pytest.mark.parametrize("what", ["commit", "tag"])
async def test_a_cut_answer_that_cannot_be_read_back_is_an_unknown_outcome(
    proxied: tuple[aic.Storage, aic.Storage, FaultProxy],
    monkeypatch: pytest.MonkeyPatch,
    what: str,
) -> None:
    monkeypatch.setattr(aicechunk.repo_info_store, "SETTLE_BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(aic.assets, "SETTLE_BACKOFF_SECONDS", 0.0)
    direct, through, proxy = proxied
    await make_array(direct, 8, 2)
    ours = await aic.Repository.open(through)
    tip = await ours.lookup_branch("main")
    session = await ours.writable_session("main")
    # the write lands and its answer is cut; every retry and read back of `repo` fails
    proxy.methods = ("PUT", "GET")
    proxy.faults = ["PUT:lose"] + ["503"] * 1_000
    if what == "tag":
        with pytest.raises(aic.CommitOutcomeUnknownError, match="outcome unknown"):
            await ours.create_tag("t", tip)
        proxy.faults = []
        assert await ours.lookup_tag("t") == tip  # it had landed, once
        kinds = await _kinds(await aic.Repository.open(direct))
        assert kinds["TagCreated"] == 1
        return
    await (await zas.open_array(store=session.store, path="x")).setitem(3, 3)
    with pytest.raises(aic.CommitOutcomeUnknownError, match="outcome unknown"):
        await session.commit("mine")
    proxy.faults = []
    sid = await session.commit("mine, again")  # finds that the first one landed
    history = await collect((await aic.Repository.open(direct)).ancestry(branch="main"))
    assert [info.message for info in history[:2]] == ["mine", "setup"]
    assert str(history[0].id) == str(sid)
    assert (await x_values(ours))[3] == 3
