"""icechunk's ``icechunk.distributed``: ``merge_sessions`` (blocking, as icechunk's) and
``extract_session``, for the pre-1.0 style of distributed writes.

Prefer ``session.merge(*forks)`` on the session that forked.
"""

from __future__ import annotations

from typing import Any

from aicechunk.integrations import distributed as core
from aicechunk.sync._facade import unwrap, wrap
from aicechunk.sync._loop import run
from aicechunk.sync.session import ForkSession, Session

__all__ = ["extract_session", "merge_sessions", "merge_sessions_async"]


def merge_sessions(*sessions: ForkSession | list[Any] | tuple[Any, ...]) -> ForkSession:
    """Merge forks (flat, or nested as a Dask tree reduction hands them over) into the
    first and return it; ``DeprecationWarning``: prefer ``session.merge(*forks)``."""
    merged: ForkSession = wrap(run(core.merge_sessions(*unwrap(sessions))))
    return merged


async def merge_sessions_async(*sessions: ForkSession | list[Any] | tuple[Any, ...]) -> ForkSession:
    """Awaitable ``merge_sessions``."""
    merged: ForkSession = wrap(await core.merge_sessions(*unwrap(sessions)))
    return merged


def extract_session(zarray: Any, axis: Any = None, keepdims: Any = None) -> Session:
    """The session of a zarr array's store (the first step of a Dask reduction over
    arrays, as icechunk's; ``axis`` and ``keepdims`` are Dask's and ignored)."""
    session: Session = zarray.store.session
    return session
