"""Helpers for distributed writes with forks (the pre-1.0 style, kept for migration)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from aicechunk.errors import SessionStateError
from aicechunk.session import ForkSession, Session

__all__ = ["merge_sessions"]


def _flatten(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, list | tuple):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


async def merge_sessions(*forks: ForkSession | list[Any] | tuple[Any, ...]) -> ForkSession:
    """Merge forks, given flat or as the nested lists a Dask tree reduction hands over,
    into the first one and return it.

    Discouraged: prefer ``await session.merge(*forks)`` on the session that forked.
    """
    warnings.warn(
        "merge_sessions is discouraged: use `await session.merge(*forks)` instead",
        DeprecationWarning,
        stacklevel=2,
    )
    flat = _flatten(forks)
    if not flat:
        raise ValueError("merge_sessions needs at least one ForkSession")
    for item in flat:
        if not isinstance(item, ForkSession):
            kind = "a plain Session" if isinstance(item, Session) else type(item).__name__
            raise SessionStateError(
                f"merge_sessions takes ForkSessions, got {kind}: to merge into a session use "
                "`await session.merge(*forks)` (Session.merge)"
            )
    first: ForkSession = flat[0]
    await first.merge(*flat[1:])
    return first
