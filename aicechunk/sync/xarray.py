"""icechunk's ``icechunk.xarray``: ``to_icechunk`` taking a synchronous session."""

from __future__ import annotations

from typing import Any

from aicechunk.integrations import xarray as core
from aicechunk.sync._facade import unwrap
from aicechunk.sync.session import Session

__all__ = ["to_icechunk", "to_icechunk_async"]


def to_icechunk(obj: Any, session: Session, **kwargs: Any) -> None:
    """Write a Dataset (or DataArray) into ``session``; commit afterwards. The keyword
    arguments are icechunk's (``group``, ``mode``, ``region``, ``append_dim``,
    ``encoding``, ``safe_chunks``, ``align_chunks``, ``chunkmanager_store_kwargs``,
    ``split_every``); see ``aicechunk.xarray.to_icechunk``."""
    core.to_icechunk(obj, unwrap(session), **kwargs)


async def to_icechunk_async(obj: Any, session: Session, **kwargs: Any) -> None:
    """Awaitable ``to_icechunk``."""
    await core.to_icechunk_async(obj, unwrap(session), **kwargs)
