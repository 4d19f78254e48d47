"""When a change of a spec v2 repository's repo info file that lost the race to another
writer is tried again: Icechunk 2.x's schedule."""

from __future__ import annotations

import random
from collections.abc import Iterator

from aicechunk.config import RepoInfoUpdates

__all__ = ["IMMEDIATE_RETRIES", "retry_delays"]

#: how many retries of a change that lost the race follow at once, before the backoff
#: starts (Icechunk 2.x: brief contention usually resolves within one or two)
IMMEDIATE_RETRIES = 5


def retry_delays(updates: RepoInfoUpdates) -> Iterator[float]:
    """The waits, in seconds, before each retry of a change that lost the race, as
    Icechunk 2.x schedules them: ``IMMEDIATE_RETRIES`` without a wait, then
    ``max_tries - IMMEDIATE_RETRIES`` more after an exponential backoff from
    ``initial_backoff_ms`` (at most ``max_backoff_ms``) with up to as much again of jitter.
    """
    yield from [0.0] * IMMEDIATE_RETRIES
    delay, most = updates.initial_backoff_ms / 1000, updates.max_backoff_ms / 1000
    for _ in range(max(0, updates.max_tries - IMMEDIATE_RETRIES)):
        step = min(delay, most)
        yield step + step * random.random()
        delay *= 2
