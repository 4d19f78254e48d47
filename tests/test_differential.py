"""Differential test: random operation sequences applied to aicechunk and to icechunk.

Each sequence of hierarchy, array, write, delete, resize, attribute, commit, branch, tag
and branch-switch steps runs through zarr's synchronous API against two repositories on
local storage, one driven by aicechunk and one by icechunk 2.3.0 in-process (the oracle
for format behaviour), on spec v1 and on spec v2 repositories. After every commit both
must agree on the whole hierarchy (node paths and kinds, metadata documents as parsed
JSON), every array's values and stored chunk bytes, the chunk coordinates listed, the
branch's ancestry, the branches and tags, and the diff the commit made. At the end each
library reads the other's repository and must see the same. Snapshot ids are random in
both, so snapshots are named by their commit message (unique within a sequence). It
needs icechunk 2.x: icechunk 1.1.21 logs the chunks a shrink deletes differently
(tests/test_resize.py).

Intended differences the generator avoids (documented decisions):
- deleting a chunk key outside the array's grid is a no-op in aicechunk and an error in
  icechunk, so chunk deletes pick coordinates inside the current grid;
- aicechunk refuses ref names with control characters, backslashes, bidi controls or
  non-NFC forms, so ref names come from a small plain-ASCII set.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import icechunk
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import aicechunk as aic
from tests.oracle import create_kwargs, needs_icechunk2

T = TypeVar("T")

icechunk.set_logs_filter("error")  # not the warning that local storage is not for concurrency

NAMES = ("a", "b", "c")
DTYPES = ("i4", "f4", "u1", "f8", "bool", "i8", "c8", "<M8[s]", "str")
BRANCHES = ("main", "dev", "feat")
TAGS = ("v1", "v2")
INIT_MESSAGE = "Repository initialized"

Op = tuple[Any, ...]


async def _collect(items: AsyncIterator[T]) -> list[T]:
    return [x async for x in items]


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine on zarr's event loop, where zarr's sync API runs the stores."""

    async def wrap() -> T:
        return await coro

    return sync(wrap())


# -- the two libraries behind one small interface ------------------------------------


def _norm_diff(d: Any) -> dict[str, Any]:
    return {
        "new_groups": sorted(d.new_groups),
        "new_arrays": sorted(d.new_arrays),
        "deleted_groups": sorted(d.deleted_groups),
        "deleted_arrays": sorted(d.deleted_arrays),
        "updated_groups": sorted(d.updated_groups),
        "updated_arrays": sorted(d.updated_arrays),
        "updated_chunks": {
            path: sorted(tuple(c) for c in coords) for path, coords in d.updated_chunks.items()
        },
    }


class AicLib:
    """aicechunk through its async API, run on zarr's loop."""

    name = "aicechunk"

    def __init__(self, repo: aic.Repository) -> None:
        self.repo = repo
        self.session: aic.Session | None = None

    @classmethod
    def create(cls, path: Path, spec_version: int) -> AicLib:
        storage = aic.local_filesystem_storage(path)
        return cls(run(aic.Repository.create(storage, spec_version=spec_version)))

    @classmethod
    def open(cls, path: Path) -> AicLib:
        return cls(run(aic.Repository.open(aic.local_filesystem_storage(path))))

    def checkout(self, branch: str) -> None:
        self.session = run(self.repo.writable_session(branch))

    @property
    def store(self) -> Store:
        assert self.session is not None
        return self.session.store

    def commit(self, message: str) -> str:
        assert self.session is not None
        return str(run(self.session.commit(message, {"msg": message, "n": [1, None]})))

    def create_branch(self, name: str, sid: str) -> None:
        run(self.repo.create_branch(name, sid))

    def create_tag(self, name: str, sid: str) -> None:
        run(self.repo.create_tag(name, sid))

    def branches(self) -> set[str]:
        return run(self.repo.list_branches())

    def tags(self) -> set[str]:
        return run(self.repo.list_tags())

    def lookup_branch(self, name: str) -> str:
        return str(run(self.repo.lookup_branch(name)))

    def ancestry(self, sid: str) -> list[tuple[str, str, dict[str, Any]]]:
        infos = run(_collect(self.repo.ancestry(snapshot_id=sid)))
        return [(str(i.id), i.message, i.metadata) for i in infos]

    def diff(self, from_sid: str, to_sid: str) -> dict[str, Any]:
        return _norm_diff(run(self.repo.diff(from_snapshot_id=from_sid, to_snapshot_id=to_sid)))

    def readonly_store(self, sid: str) -> tuple[Store, Callable[[str], list[tuple[int, ...]]]]:
        return self.view(run(self.repo.readonly_session(snapshot_id=sid)))

    def view(
        self, session: aic.Session | None = None
    ) -> tuple[Store, Callable[[str], list[tuple[int, ...]]]]:
        """A session's store and its chunk listing (the writable session by default)."""
        s = session or self.session
        assert s is not None

        def coords(path: str) -> list[tuple[int, ...]]:
            return sorted(tuple(c) for c in run(_collect(s.chunk_coords("/" + path))))

        return s.store, coords


class IcLib:
    """icechunk 2.3.0 through its synchronous API."""

    name = "icechunk"

    def __init__(self, repo: icechunk.Repository) -> None:
        self.repo = repo
        self.session: icechunk.Session | None = None

    @classmethod
    def create(cls, path: Path, spec_version: int) -> IcLib:
        storage = icechunk.local_filesystem_storage(str(path))
        return cls(icechunk.Repository.create(storage, **create_kwargs(spec_version)))

    @classmethod
    def open(cls, path: Path) -> IcLib:
        return cls(icechunk.Repository.open(icechunk.local_filesystem_storage(str(path))))

    def checkout(self, branch: str) -> None:
        self.session = self.repo.writable_session(branch)

    @property
    def store(self) -> Store:
        assert self.session is not None
        return self.session.store

    def commit(self, message: str) -> str:
        assert self.session is not None
        return self.session.commit(message, metadata={"msg": message, "n": [1, None]})

    def create_branch(self, name: str, sid: str) -> None:
        self.repo.create_branch(name, sid)

    def create_tag(self, name: str, sid: str) -> None:
        self.repo.create_tag(name, sid)

    def branches(self) -> set[str]:
        return set(self.repo.list_branches())

    def tags(self) -> set[str]:
        return set(self.repo.list_tags())

    def lookup_branch(self, name: str) -> str:
        return self.repo.lookup_branch(name)

    def ancestry(self, sid: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [(i.id, i.message, i.metadata) for i in self.repo.ancestry(snapshot_id=sid)]

    def diff(self, from_sid: str, to_sid: str) -> dict[str, Any]:
        return _norm_diff(self.repo.diff(from_snapshot_id=from_sid, to_snapshot_id=to_sid))

    def readonly_store(self, sid: str) -> tuple[Store, Callable[[str], list[tuple[int, ...]]]]:
        return self.view(self.repo.readonly_session(snapshot_id=sid))

    def view(
        self, session: icechunk.Session | None = None
    ) -> tuple[Store, Callable[[str], list[tuple[int, ...]]]]:
        """A session's store and its chunk listing (the writable session by default)."""
        s = session or self.session
        assert s is not None

        def coords(path: str) -> list[tuple[int, ...]]:
            # icechunk 2.3.0 bug: a writable session also lists the chunks deleted in it, so
            # its listing is taken where a chunk exists (aicechunk's is compared as listed)
            listed = {tuple(c) for c in run(_collect(s.chunk_coordinates("/" + path)))}
            return sorted(c for c in listed if run(s.store.exists(_chunk_key(path, c))))

        return s.store, coords


Lib = AicLib | IcLib


# -- what a store and a repository look like, as plain data ---------------------------


def nodes_of(store: Store) -> dict[str, dict[str, Any]]:
    """Every node path ('' is the root) -> its parsed zarr.json."""
    keys = run(_collect(store.list()))
    out = {}
    for key in sorted(k for k in keys if k == "zarr.json" or k.endswith("/zarr.json")):
        buf = run(store.get(key, prototype=default_buffer_prototype()))
        assert buf is not None, key
        out[key[: -len("zarr.json")].rstrip("/")] = json.loads(buf.to_bytes())
    return out


def describe_store(store: Store, coords: Callable[[str], list[tuple[int, ...]]]) -> dict[str, Any]:
    """The hierarchy, metadata, chunk keys and bytes, listed coordinates and values."""
    keys = sorted(run(_collect(store.list())))
    nodes = nodes_of(store)
    chunks = {}
    for key in keys:
        if not key.endswith("zarr.json"):
            buf = run(store.get(key, prototype=default_buffer_prototype()))
            assert buf is not None, key
            chunks[key] = buf.to_bytes()
    arrays = {}
    for path, meta in nodes.items():
        if meta["node_type"] == "array":
            arr = zarr.open_array(store=store, path=path, mode="r")
            values = np.asarray(arr[...])
            arrays[path] = {
                # bytes compare NaN and -0.0 exactly; strings by value (their bytes hold
                # pointers)
                "values": (
                    str(values.dtype),
                    values.shape,
                    values.tolist() if values.dtype.kind in "OTU" else values.tobytes(),
                ),
                "attrs": dict(arr.attrs),
                "coords": coords(path),
            }
        else:
            group = zarr.open_group(store=store, path=path, mode="r")
            arrays[path] = {"attrs": dict(group.attrs)}
    return {"keys": keys, "nodes": nodes, "chunks": chunks, "arrays": arrays}


def messages(lib: Lib, sid: str) -> list[str]:
    return [m for _, m, _ in lib.ancestry(sid)]


def describe_refs(lib: Lib) -> dict[str, Any]:
    """Branches and tags, each named by the message of the snapshot it points to."""
    out: dict[str, Any] = {"branches": {}, "tags": {}}
    for b in sorted(lib.branches()):
        out["branches"][b] = messages(lib, lib.lookup_branch(b))
    for t in sorted(lib.tags()):
        out["tags"][t] = messages(lib, lookup_tag(lib, t))
    return out


def lookup_tag(lib: Lib, name: str) -> str:
    return (
        lib.repo.lookup_tag(name) if isinstance(lib, IcLib) else str(run(lib.repo.lookup_tag(name)))
    )


def describe_repo(lib: Lib) -> dict[str, Any]:
    """Refs, and for every snapshot reachable from a ref: its tree and its diff."""
    refs = describe_refs(lib)
    tips = [lib.lookup_branch(b) for b in sorted(lib.branches())]
    tips += [lookup_tag(lib, t) for t in sorted(lib.tags())]  # a tag may outlive its branch
    snapshots: dict[str, Any] = {}
    for tip in tips:
        history = lib.ancestry(tip)
        parents = [sid for sid, _, _ in history[1:]] + [""]
        for (sid, message, _), parent in zip(history, parents, strict=True):
            if message in snapshots:
                continue
            store, coords = lib.readonly_store(sid)
            snapshots[message] = {
                "tree": describe_store(store, coords),
                "diff": lib.diff(parent, sid) if parent else None,
            }
    return {"refs": refs, "snapshots": snapshots}


# -- operations ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text("xyz", max_size=3),
    lambda inner: st.lists(inner, max_size=2),
    max_leaves=3,
)
seeds = st.integers(0, 2**16)
picks = st.integers(0, 20)


@st.composite
def array_ops(draw: st.DrawFn) -> Op:
    ndim = draw(st.integers(0, 3))
    most = 4 if ndim == 3 else 9  # a few hundred chunks at most
    shape = tuple(draw(st.integers(0, most)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    name = draw(st.sampled_from(NAMES))
    if draw(st.booleans()):
        name = f"{draw(st.sampled_from(NAMES))}/{name}"  # zarr makes the missing parents
    return (
        "array",
        draw(picks),
        name,
        draw(st.sampled_from(DTYPES)),
        shape,
        chunks,
        draw(st.booleans()),
        draw(st.sampled_from((None, 0, 1))),
    )


operations = st.one_of(
    st.tuples(st.just("group"), picks, st.sampled_from(NAMES), st.booleans()),
    array_ops(),
    array_ops(),
    st.tuples(st.just("write"), picks, seeds),
    st.tuples(st.just("write"), picks, seeds),
    st.tuples(st.just("fill"), picks),
    st.tuples(st.just("delete_chunk"), picks, seeds),
    st.tuples(st.just("delete_node"), picks),
    st.tuples(st.just("resize"), picks, st.lists(st.integers(0, 9), min_size=3, max_size=3)),
    st.tuples(st.just("attrs"), picks, st.sampled_from(("x", "y")), json_values),
    st.tuples(st.just("commit")),
    st.tuples(st.just("commit")),
    st.tuples(st.just("branch"), st.sampled_from(BRANCHES[1:])),
    st.tuples(st.just("tag"), st.sampled_from(TAGS)),
    st.tuples(st.just("delete_branch"), st.sampled_from(BRANCHES)),
    st.tuples(st.just("delete_tag"), st.sampled_from(TAGS)),
    st.tuples(st.just("delete_metadata"), picks),
    st.tuples(st.just("switch"), st.sampled_from(BRANCHES)),
)


def pick(items: list[T], index: int) -> T | None:
    return items[index % len(items)] if items else None


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _chunk_key(path: str, coords: tuple[int, ...]) -> str:
    """The store key of a chunk (zarr's default chunk key encoding)."""
    return "/".join([path, "c", *map(str, coords)])


@dataclass
class Twin:
    """The two libraries side by side, with what the last commit on each branch was."""

    ic: IcLib
    aic: AicLib
    branch: str = "main"

    def apply(self, step: int, op: Op) -> None:
        """Apply ``op`` to both; both must succeed or both must fail."""
        if op[0] == "commit" and self.nothing_to_commit():
            return
        nodes = nodes_of(self.ic.store)  # the oracle's hierarchy resolves the picks
        outcomes: list[str | None] = []
        for lib in (self.ic, self.aic):
            try:
                apply_op(lib, step, op, nodes, self.branch)
            except Exception as e:  # both libraries must refuse the same steps
                outcomes.append(f"{type(e).__name__}: {e}")
            else:
                outcomes.append(None)
        assert (outcomes[0] is None) == (outcomes[1] is None), (op, outcomes)
        if op[0] == "switch" and outcomes[0] is None:
            self.branch = op[1]
        if op[0] == "commit" and outcomes[0] is None:
            self.check_commit()

    def nothing_to_commit(self) -> bool:
        """Compare the sessions' views and pending changes; when there are none, both must
        refuse to commit.

        icechunk keeps the chunk writes of an array created and deleted in the same
        session, so it reports uncommitted changes, and commits a snapshot that changes
        nothing, while its ``status`` is empty; aicechunk refuses such a commit as
        "no changes to commit". The generator's commit is then dropped from both.
        """
        assert self.ic.session is not None and self.aic.session is not None
        # what the sessions read before committing, pending changes included
        assert describe_store(*self.aic.view()) == describe_store(*self.ic.view())
        ic_status = _norm_diff(self.ic.session.status())
        assert _norm_diff(run(self.aic.session.status())) == ic_status
        if any(ic_status.values()):
            return False
        with pytest.raises(aic.SessionStateError, match="no changes"):
            self.aic.commit("nothing")
        self.ic.checkout(self.branch)  # drops the leftovers
        return True

    def check_commit(self) -> None:
        ic_tip, aic_tip = self.ic.lookup_branch(self.branch), self.aic.lookup_branch(self.branch)
        ic_hist, aic_hist = self.ic.ancestry(ic_tip), self.aic.ancestry(aic_tip)
        assert [h[1:] for h in aic_hist] == [h[1:] for h in ic_hist]  # messages, metadata
        assert describe_refs(self.aic) == describe_refs(self.ic)
        ours = describe_store(*self.aic.readonly_store(aic_tip))
        theirs = describe_store(*self.ic.readonly_store(ic_tip))
        assert ours == theirs
        assert self.aic.diff(aic_hist[1][0], aic_tip) == self.ic.diff(ic_hist[1][0], ic_tip)


def apply_op(lib: Lib, step: int, op: Op, nodes: dict[str, Any], branch: str) -> None:
    store = lib.store
    groups = [p for p, m in nodes.items() if m["node_type"] == "group"]
    arrays = [p for p, m in nodes.items() if m["node_type"] == "array"]
    kind = op[0]
    if kind == "root":
        zarr.open_group(store=store, mode="w-", attributes={"root": True})
    elif kind == "group":
        _, parent, name, overwrite = op
        parent_path = pick(groups, parent) or ""
        zarr.open_group(store=store, path=parent_path, mode="r+").create_group(
            name, overwrite=overwrite
        )
    elif kind == "array":
        _, parent, name, dtype, shape, chunks, overwrite, fill = op
        parent_path = pick(groups, parent) or ""
        zarr.open_group(store=store, path=parent_path, mode="r+").create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            overwrite=overwrite,
            fill_value=fill,
        )
    elif kind in ("write", "fill", "delete_chunk", "resize"):
        path = pick(arrays, op[1])
        if path is None:
            return
        arr = zarr.open_array(store=store, path=path, mode="r+")
        if kind == "write":
            rng = np.random.default_rng(op[2])
            sel = tuple(
                slice(int(a), int(a) + int(rng.integers(0, n - a + 1)))
                for n in arr.shape
                for a in [rng.integers(0, n + 1)]
            )
            target = np.empty(tuple(s.stop - s.start for s in sel), dtype=arr.dtype)
            target[...] = rng.integers(0, 3, size=target.shape).astype(arr.dtype)
            arr[sel] = target
        elif kind == "fill":
            arr[...] = arr.fill_value  # all chunks equal the fill value: zarr deletes them
        elif kind == "delete_chunk":
            grid = arr.cdata_shape
            if 0 in grid:
                return
            rng = np.random.default_rng(op[2])
            # inside the grid only: outside it icechunk raises, aicechunk does nothing
            coords = [int(rng.integers(0, n)) for n in grid]
            key = "/".join(["c", *map(str, coords)])
            run(store.delete(_join(path, key)))
        else:
            most = 4 if arr.ndim == 3 else 9
            arr.resize(tuple(min(n, most) for n in op[2][: arr.ndim]))
    elif kind == "delete_node":
        path = pick([p for p in nodes if p], op[1])
        if path is None:
            return
        parent, _, name = path.rpartition("/")
        del zarr.open_group(store=store, path=parent, mode="r+")[name]
    elif kind == "attrs":
        path = pick(sorted(nodes), op[1])
        if path is None:
            return
        node = zarr.open(store=store, path=path, mode="r+")
        node.attrs[op[2]] = op[3]
    elif kind == "commit":
        lib.commit(f"c{step}")
        # a session turns read-only once committed, in both: go on in a new one
        lib.checkout(branch)
    elif kind == "branch":
        lib.create_branch(op[1], lib.lookup_branch(branch))
    elif kind == "tag":
        lib.create_tag(op[1], lib.lookup_branch(branch))
    elif kind == "delete_branch":
        if op[1] == branch:  # icechunk allows deleting the session's branch; not a case here
            return
        lib.repo.delete_branch(op[1]) if isinstance(lib, IcLib) else run(
            lib.repo.delete_branch(op[1])
        )
    elif kind == "delete_tag":
        lib.repo.delete_tag(op[1]) if isinstance(lib, IcLib) else run(lib.repo.delete_tag(op[1]))
    elif kind == "delete_metadata":
        path = pick(sorted(nodes), op[1])
        if path is None:
            return
        run(store.delete(_join(path, "zarr.json")))
    elif kind == "switch":
        lib.checkout(op[1])
    else:  # pragma: no cover
        raise AssertionError(kind)


def run_sequence(ops: list[Op], root: Path, spec_version: int) -> None:
    twin = Twin(IcLib.create(root / "ic", spec_version), AicLib.create(root / "aic", spec_version))
    twin.ic.checkout("main")
    twin.aic.checkout("main")
    for step, op in enumerate([("root",), *ops, ("commit",)]):
        twin.apply(step, op)
    # each library's view of each repository, its own and the other's, is the same
    theirs = describe_repo(twin.ic)
    assert describe_repo(twin.aic) == theirs
    assert describe_repo(AicLib.open(root / "ic")) == theirs
    assert describe_repo(IcLib.open(root / "aic")) == theirs


@needs_icechunk2
@pytest.mark.parametrize("spec_version", [1, 2])
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(operations, min_size=5, max_size=15))
def test_differential(spec_version: int, ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_sequence(ops, Path(tmp), spec_version)
