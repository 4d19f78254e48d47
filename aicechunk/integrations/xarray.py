"""Writing xarray Datasets into a session, with dask variables written through forks.

Everything goes through xarray's own zarr writer (``ZarrStore`` and ``dump_to_store``), so
CF encoding (``scale_factor``, ``_FillValue``, ``dtype``, time units), ``append_dim`` and
``region`` behave exactly as in ``Dataset.to_zarr``. The writes land on a fork that
carries the session's changes; the session sees them only when everything succeeded, so
a failure leaves it as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping, MutableMapping
from typing import Any, Literal

from aicechunk.integrations.dask import run_sync, store_dask
from aicechunk.session import Session

__all__ = ["to_icechunk", "to_icechunk_async"]

Region = Mapping[str, slice | Literal["auto"]] | Literal["auto"] | None


def to_icechunk(
    obj: Any,
    session: Session,
    *,
    group: str | None = None,
    mode: Literal["w", "w-", "a", "a-", "r+"] | None = None,
    safe_chunks: bool = True,
    align_chunks: bool = False,
    append_dim: Hashable | None = None,
    region: Region = None,
    encoding: Mapping[Any, Any] | None = None,
    chunkmanager_store_kwargs: MutableMapping[Any, Any] | None = None,
    split_every: int | None = None,
) -> None:
    """Write a Dataset (or DataArray) into ``session``; commit afterwards.

    The arguments are those of ``icechunk.xarray.to_icechunk`` and mean what they mean for
    ``Dataset.to_zarr``: ``mode`` defaults to ``"a"`` with ``append_dim``, ``"r+"`` with
    ``region`` and ``"w-"`` otherwise. Dask-backed variables are written block by block on
    the Dask workers through forks and merged back; in-memory ones directly. If anything
    fails, the session keeps exactly the changes it had. Blocking, usable with or without
    a running event loop; from async code prefer ``to_icechunk_async``.
    """
    from xarray.backends.common import ArrayWriter
    from xarray.backends.writers import _validate_dataset_names, dump_to_store
    from xarray.backends.zarr import ZarrStore, _choose_default_mode

    dataset = obj.to_dataset() if not hasattr(obj, "data_vars") else obj
    chosen = _choose_default_mode(mode=mode, append_dim=append_dim, region=region)
    fork = session.fork_with_changes()
    target = ZarrStore.open_group(
        fork.store,
        mode=chosen,
        group=group,
        zarr_format=3,
        consolidated=False,
        consolidate_on_close=False,
        append_dim=append_dim,
        write_region=region,
        safe_chunks=safe_chunks,
        align_chunks=align_chunks,
    )
    dataset = target._validate_and_autodetect_region(dataset)
    _validate_dataset_names(dataset)
    target._validate_encoding(encoding or {})
    # metadata (resizing for appends) and in-memory variables go straight to the fork;
    # the writer keeps the (encoded) dask variables with their target arrays and regions
    writer = ArrayWriter()  # type: ignore[no-untyped-call]
    dump_to_store(dataset, target, writer, encoding=dict(encoding or {}))  # type: ignore[no-untyped-call]
    written = fork
    if writer.sources:
        # the merged fork carries the fork's changes too: it is everything this call wrote
        written = store_dask(
            sources=writer.sources,
            targets=writer.targets,
            regions=[tuple(r) if r else None for r in writer.regions],
            split_every=split_every or 8,
            **dict(chunkmanager_store_kwargs or {}),
        )
    run_sync(session.merge(written))


async def to_icechunk_async(obj: Any, session: Session, **kwargs: Any) -> None:
    """``to_icechunk`` from async code (the blocking work runs in a thread)."""
    await asyncio.to_thread(to_icechunk, obj, session, **kwargs)
