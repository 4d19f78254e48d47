"""icechunk's ``icechunk.dask``: ``store_dask`` on arrays of a synchronous fork's store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zarr

import aicechunk.store as core_store
from aicechunk.integrations import dask as core
from aicechunk.sync._facade import unwrap, wrap
from aicechunk.sync.distributed import extract_session, merge_sessions
from aicechunk.sync.session import ForkSession
from aicechunk.sync.store import IcechunkStore

__all__ = ["extract_session", "merge_sessions", "store_dask", "store_dask_async"]


def _on_core_store(target: Any) -> Any:
    # the core writes through its own store class; a facade store is one, seen as the core's
    store = target.store
    if isinstance(store, IcechunkStore):
        plain = core_store.IcechunkStore(unwrap(store.session), read_only=store.read_only)
        return zarr.open_array(store=plain, path=target.path, mode="r+")
    return target


def _core_arguments(
    targets: Sequence[Any], split_every: int | None, store_kwargs: dict[str, Any]
) -> dict[str, Any]:
    return {
        "targets": [_on_core_store(t) for t in targets],
        "split_every": split_every or 8,
        **store_kwargs,
    }


def store_dask(
    *,
    sources: Sequence[Any],
    targets: Sequence[Any],
    regions: Sequence[tuple[slice, ...]] | None = None,
    split_every: int | None = None,
    **store_kwargs: Any,
) -> ForkSession:
    """Write dask arrays into zarr arrays of one fork's store; returns the merged fork to
    merge into the session that forked (``session.merge(fork)``), then commit."""
    arguments = _core_arguments(targets, split_every, store_kwargs)
    result: ForkSession = wrap(core.store_dask(sources=sources, regions=regions, **arguments))
    return result


async def store_dask_async(
    *,
    sources: Sequence[Any],
    targets: Sequence[Any],
    regions: Sequence[tuple[slice, ...]] | None = None,
    split_every: int | None = None,
    **store_kwargs: Any,
) -> ForkSession:
    """Awaitable ``store_dask``."""
    arguments = _core_arguments(targets, split_every, store_kwargs)
    merged = await core.store_dask_async(sources=sources, regions=regions, **arguments)
    result: ForkSession = wrap(merged)
    return result
