"""Writing dask arrays into a repository through forks on Dask workers.

Each block is written by a worker through its own copy of a fork (so chunk data goes
straight to storage from the worker); the forks come back through a tree reduction of
merges, and the result is one ``ForkSession`` to merge into the session that forked::

    session = await repo.writable_session("main")          # no uncommitted changes
    fork = session.fork()
    target = zarr.open_array(store=fork.store, path="data")
    merged = store_dask(sources=[dask_array], targets=[target])
    await session.merge(merged)
    await session.commit("written by dask")
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from aicechunk.errors import SessionStateError
from aicechunk.session import ForkSession
from aicechunk.store import IcechunkStore

__all__ = ["run_sync", "store_dask", "store_dask_async"]

T = TypeVar("T")


def _write_block(payload: bytes, path: str, region: tuple[slice, ...], block: Any) -> bytes:
    import zarr

    fork = ForkSession.from_bytes(payload)
    array = zarr.open_array(store=fork.store, path=path, mode="r+")
    array[region] = np.asarray(block)
    return fork.to_bytes()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, also where this thread already
    runs an event loop (a notebook, or Dask's synchronous scheduler called from one): then
    on a thread of its own, so that loop is never re-entered."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="aicechunk-sync") as pool:
        return pool.submit(asyncio.run, coro).result()


def _merge_payloads(*payloads: bytes) -> bytes:
    forks = [ForkSession.from_bytes(p) for p in payloads]
    first = forks[0]
    run_sync(first.merge(*forks[1:]))
    return first.to_bytes()


def _aligned(length: int, offset: int, chunk: int) -> tuple[int, ...]:
    """Block sizes along one dimension whose boundaries fall on the target's chunk grid."""
    sizes = []
    first = min(length, (chunk - offset % chunk) % chunk or chunk)
    if first:
        sizes.append(first)
    done = first
    while done < length:
        sizes.append(min(chunk, length - done))
        done += sizes[-1]
    return tuple(sizes)


def _is_aligned(blocks: tuple[int, ...], offset: int, chunk: int, length: int) -> bool:
    position = offset
    for size in blocks[:-1]:
        position += size
        if position % chunk:
            return False
    return True


def _block_regions(chunks: tuple[tuple[int, ...], ...], offset: tuple[int, ...]) -> list[Any]:
    starts = [list(itertools.accumulate((0, *c[:-1]))) for c in chunks]
    regions = []
    for index in itertools.product(*(range(len(c)) for c in chunks)):
        regions.append(
            tuple(
                slice(off + starts[d][i], off + starts[d][i] + chunks[d][i])
                for d, (i, off) in enumerate(zip(index, offset, strict=True))
            )
        )
    return regions


def store_dask(
    *,
    sources: Sequence[Any],
    targets: Sequence[Any],
    regions: Sequence[tuple[slice, ...] | None] | None = None,
    split_every: int = 8,
    compute: bool = True,
    **compute_kwargs: Any,
) -> ForkSession | Any:
    """Write each dask array of ``sources`` into the zarr array of ``targets`` (arrays on
    one ``ForkSession``'s store), optionally into ``regions`` of them.

    Returns the merged ``ForkSession`` (or, with ``compute=False``, a dask ``Delayed``
    computing its payload). Merge it into the session that forked, then commit.
    """
    import dask
    from dask.delayed import delayed

    if len(sources) != len(targets):
        raise ValueError("sources and targets must have the same length")
    if not targets:
        raise ValueError("store_dask needs at least one target")
    stores = {id(t.store): t.store for t in targets}
    fork: ForkSession | None = None
    for store in stores.values():
        if not isinstance(store, IcechunkStore) or not isinstance(store.session, ForkSession):
            raise SessionStateError(
                "store_dask targets must be zarr arrays on a ForkSession's store "
                "(session.fork().store)"
            )
        if fork is not None and store.session is not fork:
            raise SessionStateError("all targets must be on the same ForkSession")
        fork = store.session
    assert fork is not None
    payload = fork.to_bytes()
    regions = list(regions) if regions is not None else [None] * len(sources)

    written = []
    for source, target, region in zip(sources, targets, regions, strict=True):
        if tuple(source.shape) != tuple(target.shape) and region is None:
            raise ValueError(
                f"source shape {source.shape} does not match target {target.path} "
                f"{target.shape}; pass a region"
            )
        offset = tuple(r.start or 0 for r in region) if region else (0,) * source.ndim
        # two blocks sharing a zarr chunk would each rewrite it from the base snapshot and
        # one write would be lost: rechunk the source onto the target's chunk grid
        grid = tuple(target.chunks)
        if not all(
            _is_aligned(b, o, c, n)
            for b, o, c, n in zip(source.chunks, offset, grid, source.shape, strict=True)
        ):
            source = source.rechunk(
                tuple(_aligned(n, o, c) for n, o, c in zip(source.shape, offset, grid, strict=True))
            )
        blocks = source.to_delayed().ravel()
        for block, block_region in zip(blocks, _block_regions(source.chunks, offset), strict=True):
            written.append(delayed(_write_block)(payload, target.path, block_region, block))

    level = written or [delayed(lambda p: p)(payload)]
    while len(level) > 1:
        level = [
            delayed(_merge_payloads)(*level[i : i + split_every])
            for i in range(0, len(level), split_every)
        ]
    result = level[0]
    if not compute:
        return result
    (merged_payload,) = dask.compute(result, **compute_kwargs)  # type: ignore[attr-defined, no-untyped-call]
    return ForkSession.from_bytes(merged_payload)


async def store_dask_async(
    *,
    sources: Sequence[Any],
    targets: Sequence[Any],
    regions: Sequence[tuple[slice, ...] | None] | None = None,
    split_every: int = 8,
    **compute_kwargs: Any,
) -> ForkSession:
    """``store_dask`` from async code: the blocking dask computation runs in a thread."""
    result = await asyncio.to_thread(
        store_dask,
        sources=sources,
        targets=targets,
        regions=regions,
        split_every=split_every,
        **compute_kwargs,
    )
    assert isinstance(result, ForkSession)
    return result
