"""Every public member of icechunk 2.3.0's Repository, Session, ForkSession and
IcechunkStore is either in the facade or refused with the reason it is not (a user
reaching for ``repo.garbage_collect()`` is told why, not given a bare AttributeError)."""

from __future__ import annotations

import pytest

import aicechunk.sync as facade

icechunk = pytest.importorskip("icechunk")


def test_each_icechunk_member_is_there_or_explained() -> None:
    repo = facade.Repository.create(facade.in_memory_storage())
    session = repo.writable_session("main")
    instances = {
        "Repository": repo,
        "Session": session,
        "ForkSession": session.fork(),
        "IcechunkStore": session.store,
    }
    unexplained = []
    for name, ours in instances.items():
        for member in dir(getattr(icechunk, name)):
            if member.startswith("_"):
                continue
            try:
                getattr(ours, member)
            except AttributeError as err:
                if "no aicechunk counterpart" not in str(err):
                    unexplained.append(f"{name}.{member}")
    assert unexplained == []


async def test_ops_log_async_is_icechunks_async_iterator() -> None:
    repo = await facade.Repository.create_async(facade.in_memory_storage())
    kinds = [type(u.kind).__name__ async for u in repo.ops_log_async()]
    assert kinds == ["RepoInitialized"]
