"""Ref names on spec v2: names live in the repo info file, never in a storage key, so
``feature/x`` works as in Icechunk 2.x; spec v1 (where a name is a key) still refuses it."""

from __future__ import annotations

import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.errors import InvalidRefNameError


async def test_slashed_branch_and_tag_names_on_spec_v2() -> None:
    repo = await aic.Repository.create(aic.in_memory_storage(), spec_version=2)
    tip = await repo.lookup_branch("main")
    await repo.create_branch("feature/x", tip)
    await repo.create_tag("release/1.0", tip)
    session = await repo.writable_session("feature/x")
    await zas.create_group(store=session.store, attributes={"on": "feature/x"})
    committed = await session.commit("on a slashed branch")
    reopened = await aic.Repository.open(repo.storage)
    assert await reopened.list_branches() == {"main", "feature/x"}
    assert await reopened.lookup_branch("feature/x") == committed
    assert await reopened.lookup_tag("release/1.0") == tip
    read = await reopened.readonly_session(branch="feature/x")
    group = await zas.open_group(store=read.store, mode="r")
    assert group.attrs["on"] == "feature/x"
    await reopened.delete_branch("feature/x")
    assert await reopened.list_branches() == {"main"}


@pytest.mark.parametrize("name", ["", "/x", "x/", "a//b", "../up", "a/.", "a\x00b", "\u202emain"])
async def test_new_names_still_checked_on_spec_v2(name: str) -> None:
    repo = await aic.Repository.create(aic.in_memory_storage(), spec_version=2)
    with pytest.raises(InvalidRefNameError):
        await repo.create_branch(name, await repo.lookup_branch("main"))
    assert await repo.list_branches() == {"main"}


async def test_slashed_names_refused_on_spec_v1() -> None:
    repo = await aic.Repository.create(aic.in_memory_storage(), spec_version=1)
    with pytest.raises(InvalidRefNameError, match="'/'"):
        await repo.create_branch("feature/x", await repo.lookup_branch("main"))
