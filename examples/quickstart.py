"""Quickstart: create a repository, write, commit, branch, and travel back in time.

Run: python examples/quickstart.py [DIRECTORY]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr.api.asynchronous as zas

import aicechunk as aic


async def main(directory: Path) -> None:
    storage = aic.local_filesystem_storage(directory)
    repo = await aic.Repository.create(storage)
    print(f"created a repository in {directory}")

    # write an array and commit it
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w", attributes={"title": "demo"})
    temperature = await group.create_array(
        "temperature", shape=(100,), chunks=(10,), dtype="f4", dimension_names=("time",)
    )
    await temperature.setitem(slice(None), np.arange(100, dtype="f4"))
    first = await session.commit("first write", metadata={"author": "quickstart"})
    print(f"committed {first}: first write")

    # a second commit on main, from a new session (one that committed is read-only)
    session = await repo.writable_session("main")
    temperature = await zas.open_array(store=session.store, path="temperature")
    await temperature.setitem(slice(0, 10), np.full(10, -1, dtype="f4"))
    second = await session.commit("fix the first ten values")
    print(f"committed {second}: fix the first ten values")

    # a branch from the first commit, with its own change
    await repo.create_branch("experiment", first)
    experiment = await repo.writable_session("experiment")
    arr = await zas.open_array(store=experiment.store, path="temperature")
    await arr.setitem(slice(90, 100), np.zeros(10, dtype="f4"))
    await experiment.commit("zero the tail on a branch")
    await repo.create_tag("v1", first)
    print(f"branches: {sorted(await repo.list_branches())}, tags: {sorted(await repo.list_tags())}")

    # history, newest first
    async for info in repo.ancestry(branch="main"):
        print(f"  {info.id}  {info.written_at:%H:%M:%S}  {info.message}")

    # time travel: every snapshot reads back what was written then
    for label, kwargs in (
        ("main", {"branch": "main"}),
        ("tag v1", {"tag": "v1"}),
        ("experiment", {"branch": "experiment"}),
    ):
        ro = await repo.readonly_session(**kwargs)  # type: ignore[arg-type]
        values = await (await zas.open_array(store=ro.store, path="temperature", mode="r")).getitem(
            slice(None)
        )
        print(f"{label:>10}: first={values[0]:5.1f} last={values[-1]:5.1f}")
    diff = await repo.diff(from_tag="v1", to_branch="main")
    print(f"v1 -> main changed chunks: {sorted(diff.updated_chunks['/temperature'])}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory(prefix="aicechunk-quickstart-") as tmp:
            asyncio.run(main(Path(tmp) / "repo"))
