"""A commit of one value into array ``x`` of a repository, as several tests make them."""

from __future__ import annotations

import numpy as np
import zarr.api.asynchronous as zas

import aicechunk as aic


async def commit_value(repo: aic.Repository, branch: str, index: int, value: int) -> str:
    """Set ``x[index] = value`` in a new session on ``branch`` and commit it."""
    session = await repo.writable_session(branch)
    arr = await zas.open_array(store=session.store, path="x", mode="r+")
    await arr.setitem(slice(index, index + 1), np.array([value], dtype="i4"))
    return await session.commit(f"{branch} {value}")
