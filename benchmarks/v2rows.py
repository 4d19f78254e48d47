"""Spec version 2 rows: a repository whose repo info file carries a long operations log.

Spec v2 keeps every branch, tag and snapshot, and the log of the latest 1,000 changes,
in one repo info file that each change rewrites (after copying it to ``overwritten/``).
So the cost of a change grows with the repository's history. This workload builds that
history (``branches`` branches, ``commits`` commits on each), then times more commits
on ``main``, an open (with the branch list, so the repo info file is read), and one pass
over the operations log.

The commit row is the median of ``COMMITS`` commits on ``main`` made one after another,
each changing one chunk (a new session each time), for both libraries alike: one commit
takes a few milliseconds, and a single timing of it was mostly noise.

On local disk each timed part starts from a settled disk (``local_rows.settle``: an
untimed ``os.sync()``, for both libraries alike): the history leaves about a thousand
new files dirty, and commits timed while the kernel writes them back measured that
write-back (per-repetition medians spread 2x for both libraries).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import zarr.api.asynchronous as zas
from local_rows import settle
from systems import System
from workloads import Result

__all__ = ["COMMITS", "ops_log_workload", "parse_history"]

#: how many commits on ``main`` the commit row times (its median)
COMMITS = 10


def parse_history(text: str) -> tuple[int, int]:
    """``"100x2"`` -> (100 branches, 2 commits on each)."""
    branches, _, commits = text.partition("x")
    return int(branches), int(commits or 1)


async def _commit_one_chunk(system: System, repo: object, branch: str, i: int, v: int) -> str:
    session = await system.writable(repo, branch)
    arr = await zas.open_array(store=session.store, path="x", mode="r+")
    await arr.setitem(slice(i, i + 1), np.array([v], dtype="i4"))
    return await system.commit(session, f"{branch} {v}")


async def ops_log_workload(system: System, where: str, branches: int, commits: int) -> Result:
    """Build the history, then time ``COMMITS`` more commits (the median), an open and
    the operations log."""
    repo = await system.create(where)
    session = await system.writable(repo)
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("x", shape=(branches,), chunks=(1,), dtype="i4", compressors=None)
    base = await system.commit(session, "array")
    start = time.perf_counter()
    for b in range(branches):
        await system.create_branch(repo, f"branch-{b}", base)
        for c in range(commits):
            await _commit_one_chunk(system, repo, f"branch-{b}", b, c)
    history = time.perf_counter() - start

    kind = where.partition(":")[0]
    settle(kind)
    timed = []
    for i in range(COMMITS):
        session = await system.writable(repo)
        arr = await zas.open_array(store=session.store, path="x", mode="r+")
        index = i % branches
        await arr.setitem(slice(index, index + 1), np.array([-1 - i], dtype="i4"))
        start = time.perf_counter()
        await system.commit(session, f"one more, {i}")
        timed.append(time.perf_counter() - start)
    commit = statistics.median(timed)

    settle(kind)
    start = time.perf_counter()
    repo = await system.open(where)
    listed = await system.list_branches(repo)
    opened = time.perf_counter() - start
    assert len(listed) == branches + 1

    start = time.perf_counter()
    entries = await system.ops_log(repo)
    log = time.perf_counter() - start
    return {
        "history_seconds": history,
        "commit_seconds": commit,
        "open_seconds": opened,
        "ops_log_seconds": log,
        "ops_log_entries": entries,
    }
