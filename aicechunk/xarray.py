"""Writing xarray Datasets into a session, with dask variables written through forks."""

from __future__ import annotations

import asyncio
from typing import Any

from aicechunk.session import Session

__all__ = ["to_icechunk", "to_icechunk_async"]


def to_icechunk(
    obj: Any,
    session: Session,
    *,
    group: str | None = None,
    mode: str = "w-",
    split_every: int = 8,
    **to_zarr_kwargs: Any,
) -> None:
    """Write a Dataset (or DataArray) into ``session`` (commit afterwards).

    Metadata and in-memory variables are written directly; dask-backed variables are
    written block by block on the Dask workers through forks, merged back into
    ``session``. Blocking: from async code use ``to_icechunk_async``.
    """
    import zarr

    from aicechunk.dask import store_dask

    dataset = (
        obj.to_dataset() if hasattr(obj, "to_dataset") and not hasattr(obj, "data_vars") else obj
    )
    # metadata and eager variables; the dask part is written below instead of by xarray
    dataset.to_zarr(
        session.store,
        group=group,
        mode=mode,
        compute=False,
        zarr_format=3,
        consolidated=False,
        **to_zarr_kwargs,
    )
    lazy = [name for name, var in dataset.variables.items() if var.chunks is not None]
    if not lazy:
        return
    fork = session._fork_carrying_changes()
    prefix = f"{group.strip('/')}/" if group else ""
    sources = [dataset.variables[name].data for name in lazy]
    targets = [zarr.open_array(store=fork.store, path=f"{prefix}{name}") for name in lazy]
    merged = store_dask(sources=sources, targets=targets, split_every=split_every)
    asyncio.run(session.merge(merged))


async def to_icechunk_async(obj: Any, session: Session, **kwargs: Any) -> None:
    """``to_icechunk`` from async code (the blocking work runs in a thread)."""
    await asyncio.to_thread(to_icechunk, obj, session, **kwargs)
