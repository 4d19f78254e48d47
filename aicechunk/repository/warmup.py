"""The first session on ``main`` after an open fetches the tip snapshot the open saw
while it resolves the branch again.

Opening learns where ``main`` points in its first round trip (the branch file on spec v1,
the repo info file on spec v2: ``configs.probe_files``). A session resolves its branch
again (it must see commits made since), which is another round trip; the first time the
repository fetches ``main`` (``AssetManager.before_first_branch``), the snapshot the open
saw is fetched meanwhile, so open + first read makes one round trip fewer in sequence and
no more requests; an open used for anything else fetches nothing more. If the branch
moved, the session reads its own snapshot and the warmed one stays in the cache.
Snapshots never change, so what is fetched ahead is always right; its failure is nobody's
(the session fetches again). On spec v2 the open's repo info file is decoded then, and
that decoding is reused when the session reads the same bytes.
"""

from __future__ import annotations

import asyncio
import functools

from aicechunk.assets import REPO_INFO_KEY, AssetManager
from aicechunk.format import refs as ref_format
from aicechunk.format.ids import SnapshotId
from aicechunk.repo_info_store import RepoInfoStore
from aicechunk.repository.configs import Probe

__all__ = ["warm_up"]

#: warm-ups under way (a task nobody holds may be collected before it ends)
_RUNNING: set[asyncio.Task[None]] = set()


def warm_up(assets: AssetManager, probed: Probe) -> None:
    """Have the first fetch of branch ``main`` by ``assets`` start fetching the tip
    snapshot ``probed`` saw."""
    if probed.version == 1 and probed.main_ref is None:
        return
    if probed.version != 1 and probed.repo_info is None:
        return
    assets.before_first_branch = functools.partial(_start, assets, probed)


def _start(assets: AssetManager, probed: Probe, branch: str) -> None:
    """Start fetching the tip snapshot in the background (on a fetch of ``main``)."""
    if branch != "main":
        return
    loop = asyncio.get_running_loop()
    task = loop.create_task(_fetch_tip(assets, probed))
    _RUNNING.add(task)
    task.add_done_callback(_quiet)


async def _fetch_tip(assets: AssetManager, probed: Probe) -> None:
    tip: SnapshotId | None = None
    store = assets.refs
    if probed.version == 1 and probed.main_ref is not None:
        tip = ref_format.decode_ref(probed.main_ref, ref_format.branch_key("main"))
    elif isinstance(store, RepoInfoStore) and probed.repo_info is not None:
        info = await store.decode(probed.repo_info, REPO_INFO_KEY)
        store.remember(info, probed.repo_info)  # a v2 snapshot's parent is looked up there
        tip = info.branches.get("main")
    if tip is not None:
        await assets.fetch_snapshot(tip)


def _quiet(task: asyncio.Task[None]) -> None:
    _RUNNING.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a warm-up's failure is never reported
