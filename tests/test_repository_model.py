"""A model-based test: branches, tags, commits, resets, writes, deletes and reads against
aicechunk and a plain in-memory model, checked after every step."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import zarr.api.asynchronous as zas
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import aicechunk as aic

SIZE = 8
names = st.sampled_from(["main", "dev", "feature", "x"])
tag_names = st.sampled_from(["t1", "t2", "t3"])


class RepositoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        # model: snapshot id -> array values; branches/tags -> snapshot id
        self.snapshots: dict[str, np.ndarray] = {}
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.deleted_tags: set[str] = set()
        self.branch = "main"
        self.pending: np.ndarray | None = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.loop.close()

    @initialize()
    def setup(self) -> None:
        async def go() -> str:
            self.repo = await aic.Repository.create(aic.in_memory_storage())
            session = await self.repo.writable_session("main")
            group = await zas.open_group(store=session.store, mode="w")
            await group.create_array("a", shape=(SIZE,), chunks=(1,), dtype="i4", fill_value=0)
            return str(await session.commit("setup"))

        sid = self.run(go())
        self.snapshots[sid] = np.zeros(SIZE, dtype="i4")
        self.branches["main"] = sid
        self.session = self.run(self.repo.writable_session("main"))
        self.pending = self.snapshots[sid].copy()

    # -- writes ---------------------------------------------------------------------------

    @rule(index=st.integers(0, SIZE - 1), value=st.integers(-100, 100))
    def write(self, index: int, value: int) -> None:
        async def go() -> None:
            arr = await zas.open_array(store=self.session.store, path="a")
            await arr.setitem(index, value)

        self.run(go())
        assert self.pending is not None
        self.pending[index] = value

    @rule(index=st.integers(0, SIZE - 1))
    def delete_chunk(self, index: int) -> None:
        self.run(self.session.store.delete(f"a/c/{index}"))
        assert self.pending is not None
        self.pending[index] = 0  # reads of a missing chunk give the fill value

    @rule()
    def discard(self) -> None:
        self.session.discard_changes()
        # the session stays on its own snapshot, even if its branch was reset meanwhile
        self.pending = self.snapshots[str(self.session.snapshot_id)].copy()

    @rule(message=st.text(max_size=10))
    def commit(self, message: str) -> None:
        assert self.pending is not None
        if not self.session.has_uncommitted_changes:
            return
        try:
            sid = str(self.run(self.session.commit(message)))
        except aic.ConflictError:
            # the branch moved under us (a reset): the model knows where it is now
            assert self.branches[self.branch] != str(self.session.snapshot_id)
            self.checkout(self.branch)
            return
        self.snapshots[sid] = self.pending.copy()
        self.branches[self.branch] = sid
        assert self.session.read_only  # as in icechunk: the next change, a new session
        self.checkout(self.branch)

    # -- refs -----------------------------------------------------------------------------

    @rule(name=names)
    def create_branch(self, name: str) -> None:
        tip = self.branches[self.branch]
        try:
            self.run(self.repo.create_branch(name, tip))
        except aic.RefExistsError:
            assert name in self.branches
            return
        assert name not in self.branches
        self.branches[name] = tip

    @rule(name=names)
    def checkout(self, name: str) -> None:
        if name not in self.branches:
            return
        self.session = self.run(self.repo.writable_session(name))
        self.branch = name
        self.pending = self.snapshots[self.branches[name]].copy()

    @precondition(lambda self: len(self.snapshots) > 1)
    @rule(data=st.data())
    def reset_branch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.branches)))
        # insertion order, not id order: ids are random, and replays must draw the same
        target = data.draw(st.sampled_from(list(self.snapshots)))
        self.run(self.repo.reset_branch(name, target))
        self.branches[name] = target

    @rule(name=names)
    def delete_branch(self, name: str) -> None:
        if name == "main" or name == self.branch:
            return
        try:
            self.run(self.repo.delete_branch(name))
        except aic.RefNotFoundError:
            assert name not in self.branches
            return
        del self.branches[name]

    @rule(name=tag_names)
    def create_tag(self, name: str) -> None:
        tip = self.branches[self.branch]
        try:
            self.run(self.repo.create_tag(name, tip))
        except aic.RefExistsError:
            assert name in self.tags or name in self.deleted_tags
            return
        self.tags[name] = tip

    @rule(name=tag_names)
    def delete_tag(self, name: str) -> None:
        try:
            self.run(self.repo.delete_tag(name))
        except aic.RefNotFoundError:
            assert name not in self.tags
            return
        del self.tags[name]
        self.deleted_tags.add(name)

    # -- checks ---------------------------------------------------------------------------

    def read(self, session: aic.Session) -> np.ndarray:
        async def go() -> np.ndarray:
            arr = await zas.open_array(store=session.store, path="a", mode="r")
            return np.asarray(await arr.getitem(slice(None)))

        return self.run(go())

    @invariant()
    def refs_agree(self) -> None:
        if not hasattr(self, "repo"):
            return
        assert self.run(self.repo.list_branches()) == set(self.branches)
        assert self.run(self.repo.list_tags()) == set(self.tags)
        for name, sid in self.branches.items():
            assert self.run(self.repo.lookup_branch(name)) == sid

    @invariant()
    def data_agrees(self) -> None:
        if not hasattr(self, "repo"):
            return
        assert self.pending is not None
        np.testing.assert_array_equal(self.read(self.session), self.pending)
        for name, sid in self.tags.items():
            ro = self.run(self.repo.readonly_session(tag=name))
            np.testing.assert_array_equal(self.read(ro), self.snapshots[sid])


def test_repository_state_machine() -> None:
    run_state_machine_as_test(
        RepositoryMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
