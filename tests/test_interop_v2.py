"""Spec v2 repositories, both ways, with icechunk 2.3.0 on local storage.

icechunk 2.3.0 runs in a subprocess (see ``tests/format/test_icechunk2_interop.py``: this
interpreter when it has icechunk 2.3.0, else ``AICECHUNK_PY312``); without one these tests
skip. It drives ``tests/format/icechunk2_script.py``: ``write`` makes a repository with
branches, tags, an amended commit, a moved node and metadata; ``read`` reports all it reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.api.asynchronous as zas

import aicechunk as aic
from aicechunk.format.repo_info import OVERWRITTEN_PREFIX, decode_repo_info
from tests.format.test_icechunk2_interop import PYTHON, icechunk

pytestmark = pytest.mark.skipif(PYTHON is None, reason="no Python with icechunk 2.3.0")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("ic2repo") / "repo"
    return root, icechunk("write", root)


def _copy(written: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(written[0], root)
    return root


async def _paths(repo: aic.Repository, snapshot_id: str) -> list[str]:
    session = await repo.readonly_session(snapshot_id=snapshot_id)
    try:
        group = await zas.open_group(store=session.store, mode="r")
    except Exception:  # the initial, empty snapshot has no root group
        return []
    names = ["/" + name async for name, _ in group.members(max_depth=None)]
    return ["/", *sorted(names)]


async def describe(repo: aic.Repository) -> dict[str, Any]:
    """What ``icechunk2_script.describe`` reports, read by aicechunk (no ops log)."""
    snapshots: dict[str, Any] = {}
    for branch in await repo.list_branches():
        async for info in repo.ancestry(branch=branch):
            snapshots[info.id] = {
                "parent": info.parent_id,
                "message": info.message,
                "metadata": info.metadata,
                "paths": await _paths(repo, info.id),
            }
    main = await repo.readonly_session("main")
    x = await zas.open_array(store=main.store, path="b/x", mode="r")
    return {
        "branches": {b: await repo.lookup_branch(b) for b in await repo.list_branches()},
        "tags": {t: await repo.lookup_tag(t) for t in await repo.list_tags()},
        "snapshots": snapshots,
        "values": np.asarray(await x.getitem(slice(None))).tolist(),
        "spec_version": repo.spec_version,
    }


def _without_ops(found: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in found.items() if k not in ("ops", "metadata")}


async def test_we_read_what_icechunk_wrote(written: tuple[Path, dict[str, Any]]) -> None:
    root, expected = written
    storage = aic.local_filesystem_storage(root)
    assert await aic.Repository.exists(storage)
    repo = await aic.Repository.open(storage)
    assert repo.spec_version == 2
    assert await describe(repo) == _without_ops(expected)
    main = await repo.readonly_session("main")
    group = await zas.open_group(store=main.store, mode="r")
    assert dict(group.attrs) == {"title": "t", "amended": True}
    x = await zas.open_array(store=main.store, path="b/x", mode="r")
    assert x.metadata.dimension_names == ("t",)  # type: ignore[union-attr]
    with pytest.raises(aic.RefNotFoundError, match="deleted"):
        await repo.lookup_tag("gone")
    dev = await repo.readonly_session("dev")
    dev_x = await zas.open_array(store=dev.store, path="a/x", mode="r")
    assert np.asarray(await dev_x.getitem(slice(None))).tolist() == [7, 7, 7, 7, 4, 5, 6, 7]
    info = await repo.lookup_snapshot(expected["branches"]["main"])
    assert info.message == "moved" and info.parent_id is not None
    # open_or_create opens it, and creating over it is refused
    assert (await aic.Repository.open_or_create(storage)).spec_version == 2
    with pytest.raises(aic.RepositoryExistsError):
        await aic.Repository.create(storage, check_clean_root=False)


async def test_icechunk_reads_our_commits_branches_and_tags(
    written: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root = _copy(written, tmp_path)
    expected = written[1]
    repo = await aic.Repository.open(aic.local_filesystem_storage(root))
    session = await repo.writable_session("main")
    x = await zas.open_array(store=session.store, path="b/x")
    await x.setitem(slice(0, 2), np.array([40, 41], dtype="i4"))
    ours = await session.commit("ours", metadata={"by": "aicechunk"})
    await repo.create_branch("feature", ours)
    await repo.create_tag("ours-tag", ours)
    await repo.create_tag("doomed", ours)
    await repo.delete_tag("doomed")
    with pytest.raises(aic.RefExistsError):
        await repo.create_tag("doomed", ours)
    with pytest.raises(aic.RefExistsError):
        await repo.create_tag("gone", ours)  # deleted by icechunk: never reused
    await repo.reset_branch("dev", expected["branches"]["main"])
    await repo.create_branch("tmp", ours)
    await repo.delete_branch("tmp")
    stale = await repo.writable_session("feature")
    fresh = await repo.writable_session("feature")
    for s, value in ((fresh, 1), (stale, 2)):
        arr = await zas.open_array(store=s.store, path="b/x")
        await arr.setitem(slice(7, 8), np.array([value], dtype="i4"))
    on_feature = await fresh.commit("on feature")
    with pytest.raises(aic.ConflictError):
        await stale.commit("stale")

    seen = icechunk("read", root)
    ops = [
        "BranchDeleted",
        "BranchCreated",
        "BranchReset",
        "TagDeleted",
        "TagCreated",
        "TagCreated",
        "BranchCreated",
        "NewCommit",
    ]
    assert seen["ops"][: len(ops) + 1] == ["NewCommit", *ops]
    assert seen["ops"][len(ops) + 1 :] == expected["ops"]
    assert seen["branches"] == {
        **expected["branches"],
        "dev": expected["branches"]["main"],
        "main": ours,
        "feature": on_feature,
    }
    assert seen["tags"] == {**expected["tags"], "ours-tag": ours}
    assert seen["values"] == [40, 41, 2, 3, 4, 5, 6, 7]
    assert seen["snapshots"][ours]["parent"] == expected["branches"]["main"]
    assert seen["snapshots"][ours]["metadata"] == {"by": "aicechunk"}
    assert seen["snapshots"][on_feature]["parent"] == ours
    assert seen["metadata"] == expected["metadata"]
    assert seen == {**await describe(repo), "ops": seen["ops"], "metadata": seen["metadata"]}
    # every overwritten file was backed up before it was replaced, newest first
    info = decode_repo_info((root / "repo").read_bytes())
    for update in info.latest_updates[1:]:
        assert update.backup_path is not None
        assert (root / OVERWRITTEN_PREFIX / update.backup_path).exists()


async def test_icechunk_opens_a_repository_we_created(tmp_path: Path) -> None:
    storage = aic.local_filesystem_storage(tmp_path / "ours")
    repo = await aic.Repository.create(storage, spec_version=2)
    assert repo.spec_version == 2
    files = (tmp_path / "ours").rglob("*")
    # what icechunk 2.3.0 writes for a new repository (our local driver's locks aside)
    names = sorted(str(p.relative_to(tmp_path / "ours")) for p in files if p.is_file())
    first = "1CECHNKREP0F1RSTCMT0"
    assert [n for n in names if not n.startswith(".aicechunk")] == [
        "repo",
        f"snapshots/{first}",
        f"transactions/{first}",
    ]
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w", attributes={"made": "by us"})
    x = await group.create_array("b/x", shape=(8,), chunks=(4,), dtype="i4")
    await x.setitem(slice(None), np.arange(8, dtype="i4") * 3)
    first_commit = await session.commit("first")
    await repo.create_tag("v1", first_commit)
    flushed = await repo.writable_session("main")
    arr = await zas.open_array(store=flushed.store, path="b/x")
    await arr.setitem(slice(0, 1), np.array([99], dtype="i4"))
    detached = await flushed.flush("detached")
    await repo.create_branch("kept", detached)
    seen = icechunk("read", tmp_path / "ours")
    assert seen["spec_version"] == 2
    assert seen["ops"] == [
        "BranchCreated",
        "NewDetachedSnapshot",
        "TagCreated",
        "NewCommit",
        "RepoInitialized",
    ]
    assert seen["values"] == [0, 3, 6, 9, 12, 15, 18, 21]
    assert seen["snapshots"][detached]["parent"] == first_commit
    assert seen["snapshots"][first_commit]["paths"] == ["/", "/b", "/b/x"]
    assert seen == {**await describe(repo), "ops": seen["ops"], "metadata": seen["metadata"]}
    reopened = await aic.Repository.open(storage)
    assert reopened.spec_version == 2
    assert [i.message async for i in reopened.ancestry(branch="kept")] == [
        "detached",
        "first",
        "Repository initialized",
    ]


async def test_v2_is_the_default_and_v1_keeps_its_layout(tmp_path: Path) -> None:
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "default"))
    assert repo.spec_version == aic.spec_version() == 2  # the newest, as icechunk 2.x
    assert (tmp_path / "default" / "repo").exists()
    assert not (tmp_path / "default" / "refs").exists()
    v1 = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "v1"), spec_version=1)
    assert v1.spec_version == 1
    assert (tmp_path / "v1" / "refs" / "branch.main" / "ref.json").exists()
    assert not (tmp_path / "v1" / "repo").exists()
