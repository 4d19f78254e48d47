"""Every member of the synchronous facade behaves as its async twin in the core.

Generated, not listed: for each class of ``aicechunk.sync`` and each member the facade
generated from the core, the member is called on one of two identical repositories (a
copy of the same directory, so ids agree) and the core's counterpart on the other; the
outcomes (results with fresh ids and times masked, or the exception type and message)
must be the same. Arguments come from samples by *parameter name*: a core method gaining
a parameter no sample covers fails here, naming it.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import shutil
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

import aicechunk as aic
import aicechunk.sync as sync
from aicechunk.changes.chunktable import ChunkTable
from aicechunk.format.manifest import InlineRef
from aicechunk.sync._facade import Facade

ID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{20}\b")


def _build(path: Path) -> None:
    repo = sync.Repository.create(sync.local_filesystem_storage(path))
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="x", shape=(4,), chunks=(2,), dtype="u1")
    array[:] = np.arange(4, dtype="u1")
    snapshot = session.commit("first")
    repo.create_branch("dev", snapshot)
    repo.create_tag("t", snapshot)


class World:
    """One copy of the repository, and the objects whose members are compared."""

    def __init__(self, path: Path, facade: bool) -> None:
        module: Any = sync if facade else None
        storage = aic.local_filesystem_storage(path)
        if facade:
            self.repo = module.Repository.open(storage)
            self.session = self.repo.writable_session("main")
        else:
            self.repo = asyncio.run(aic.Repository.open(storage))
            self.session = asyncio.run(self.repo.writable_session("main"))
        self.storage = storage

    def target(self, kind: str) -> Any:
        if kind == "Repository":
            return self.repo
        if kind == "Session":
            return self.session
        if kind == "ForkSession":
            return self.session.fork()
        return self.session.store

    def samples(self) -> dict[str, Any]:
        snapshot = self.session.snapshot_id
        return {
            "branch": "dev",
            "name": "newref",
            "tag": "t",
            "snapshot_id": snapshot,
            "from_snapshot_id": snapshot,
            "to_snapshot_id": snapshot,
            "path": "/x",
            "from_path": "/x",
            "to_path": "/y",
            "array_path": "/x",
            "coords": (0,),
            "chunk_coordinates": (0,),
            "data": b"ab",
            "message": "msg",
            "metadata": {"author": "twin"},
            "prefix": "/x",
            "location": "s3://nowhere/f",
            "key": "x/c/0",
            "offset": 0,
            "length": 1,
            "solver": aic.BasicConflictSolver(),
            "storage": self.storage,
            "ref": InlineRef(b"zz"),
            # bulk virtual references: one chunk as columns, and as a table (a deletion)
            "locations": ["s3://nowhere/f"],
            "offsets": [0],
            "lengths": [1],
            "chunk_grid_shape": (1,),
            "table": ChunkTable(np.zeros((1, 1), dtype=np.int64), np.array([3], np.uint8)),
            "user_data": b'{"zarr_format": 3, "node_type": "group"}',
            "array": None,
            "chunks": [],
            "payload": b"not a payload",
            "read_only": True,
            "prototype": default_buffer_prototype(),
            "key_ranges": [("x/c/0", None)],
            "value": default_buffer_prototype().buffer.from_bytes(b"\x01\x02"),
            "key_start_values": [],
            "status": aic.RepoStatus(aic.RepoAvailability.read_only),
            "setting": False,
        }


def _mask(value: Any) -> Any:
    if isinstance(value, Facade):
        return f"<{type(value.core).__name__}>"
    if isinstance(value, aic.IcechunkStore | aic.Session | aic.Repository):
        return f"<{type(value).__name__}>"
    if isinstance(value, list | tuple | set | frozenset):
        return sorted((_mask(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {_mask(k): _mask(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return "<time>"
    if hasattr(value, "__aenter__"):  # the facade's also works with ``with``
        return "<async context manager>"
    if hasattr(value, "to_bytes") and hasattr(value, "as_numpy_array"):
        return bytes(value.to_bytes())
    if isinstance(value, bytes) and value.startswith(b"AICFORK"):
        return "<fork payload>"  # it names the storage, which is another copy
    text = _same_copy(repr(value))
    text = re.sub(r"datetime\.datetime\([^)]*\)", "<time>", text)
    text = re.sub(r" at 0x[0-9a-f]+", "", text)
    return ID.sub("<id>", text)


def _same_copy(text: str) -> str:
    # the two copies differ only by their directory's last letter
    return re.sub(r"(test_member_behaves[^/]*)/[ab]\b", r"\1/<copy>", text)


def _arguments(func: Any, samples: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    params = list(inspect.signature(func).parameters.values())
    for param in params[1:] if params and params[0].name in ("self", "cls") else params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is not param.empty:
            continue
        assert param.name in samples, f"no sample for parameter {param.name!r} of {func}"
        if param.kind == param.KEYWORD_ONLY:
            kwargs[param.name] = samples[param.name]
        else:
            args.append(samples[param.name])
    return args, kwargs


async def _collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


def _outcome(call: Any) -> Any:
    try:
        result = call()
    except Exception as err:  # the outcome compared is the error itself
        return ("raised", type(err).__name__, ID.sub("<id>", _same_copy(str(err))))
    if inspect.isawaitable(result):
        return _outcome(lambda: asyncio.run(result))
    if hasattr(result, "__anext__"):
        return _outcome(lambda: asyncio.run(_collect(result)))
    if hasattr(result, "__next__"):
        return _outcome(lambda: list(result))
    return ("returned", _mask(result))


FACADES = {
    "Repository": (sync.Repository, aic.Repository),
    "Session": (sync.Session, aic.Session),
    "ForkSession": (sync.ForkSession, aic.ForkSession),
    "IcechunkStore": (sync.IcechunkStore, aic.IcechunkStore),
}


def _members() -> list[tuple[str, str]]:
    found = []
    for kind, (facade, _) in FACADES.items():
        generated = getattr(facade, "_generated", None) or {
            n for n in vars(facade) if not n.startswith("_") and n not in ("session",)
        }
        found += [(kind, name) for name in sorted(generated)]
    return found


def _core_name(name: str) -> str:
    from aicechunk.sync._names import MEMBER_SPELLINGS

    for (_, theirs), (ours, _) in MEMBER_SPELLINGS.items():
        if name == theirs:
            return ours
    if name.endswith("_async"):
        return name[: -len("_async")]
    if name.startswith("async_"):
        return name[len("async_") :]
    return name


def test_the_facade_generates_the_core_members() -> None:
    members = _members()
    assert ("Repository", "writable_session_async") in members
    assert ("Repository", "async_ancestry") in members
    assert ("Session", "commit") in members and ("IcechunkStore", "set_virtual_ref") in members
    assert len(members) > 100


@pytest.mark.parametrize(("kind", "name"), _members(), ids=lambda v: str(v))
def test_member_behaves_as_its_async_twin(tmp_path: Path, kind: str, name: str) -> None:
    _build(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ours, theirs = World(tmp_path / "a", facade=True), World(tmp_path / "b", facade=False)
    _, core_type = FACADES[kind]
    core_name = _core_name(name)
    ours_target, theirs_target = ours.target(kind), theirs.target(kind)

    raw = inspect.getattr_static(core_type, core_name)
    if isinstance(raw, property):
        got = _outcome(lambda: getattr(ours_target, name))
        expected = _outcome(lambda: getattr(theirs_target, core_name))
        if name == "authorized_virtual_container_prefixes":
            expected = ("returned", _mask(set(getattr(theirs_target, core_name))))
        assert got == expected
        return
    func = raw.__func__ if isinstance(raw, classmethod | staticmethod) else raw
    args, kwargs = _arguments(func, ours.samples())
    core_args, core_kwargs = _arguments(func, theirs.samples())
    got = _outcome(lambda: getattr(ours_target, name)(*args, **kwargs))
    expected = _outcome(lambda: getattr(theirs_target, core_name)(*core_args, **core_kwargs))
    assert got == expected
    # and the worlds agree afterwards: the same branches, history and pending changes
    assert _outcome(lambda: ours.repo.list_branches()) == _outcome(theirs.repo.list_branches)
    assert _outcome(ours.session.status) == _outcome(theirs.session.status)
