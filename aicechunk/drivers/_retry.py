"""Retries of transient failures, shared by the network drivers.

A request that timed out, lost its connection, got a truncated body or a throttling or
5xx answer may succeed if sent again; anything else (a 404, a failed precondition, a
malformed answer) will not. ``retrying`` sends a request again with exponential backoff
and full jitter, at most ``attempts`` times, and lets the last failure through;
``request`` does the same and turns that failure into the ``StorageError`` a caller
sees (``ObjectNotFound`` for a 404, ``PreconditionFailed`` for a 412, ...).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aicechunk.errors import (
    AicechunkError,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    TransientStatus,
)

__all__ = [
    "RETRY_STATUS",
    "is_transient",
    "request",
    "retrying",
    "status_error",
]

_T = TypeVar("_T")

#: HTTP answers worth another try: request timeout, throttling, server errors
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def is_transient(err: BaseException) -> bool:
    """Whether an aiohttp request that failed with ``err`` may succeed if sent again:
    timeouts, dropped or refused connections, truncated bodies, 408/429/5xx answers."""
    # imported here, not at the top: the storage constructors import the drivers'
    # settings, and aiohttp (~9 MiB, 120 modules) is needed only once a request fails
    import aiohttp

    if isinstance(err, TimeoutError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return True
    if isinstance(err, aiohttp.ClientResponseError | TransientStatus):
        return err.status in RETRY_STATUS
    return False


async def retrying(
    call: Callable[[], Awaitable[_T]],
    *,
    attempts: int,
    transient: Callable[[BaseException], bool] = is_transient,
    first_delay: float = 0.05,
    max_delay: float = 5.0,
) -> _T:
    """``await call()``, again after a transient failure, at most ``attempts`` times in
    all; the last failure (or the first that is not transient) is raised."""
    delay = first_delay
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            return await call()
        except Exception as err:
            if attempt >= attempts or not transient(err):
                raise
        await asyncio.sleep(random.uniform(0, delay))  # full jitter
        delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")  # pragma: no cover


def status_error(status: int | None, key: str | None, driver: str, action: str) -> StorageError:
    """The error for an HTTP answer that is no success (``None``: no answer at all)."""
    if status in (404, 410):
        return ObjectNotFound("no such object", key=key, driver=driver)
    if status == 412:
        return PreconditionFailed(
            "conditional write lost (object exists or changed)", key=key, driver=driver
        )
    if status in (401, 403):
        return StorageError(
            f"access denied (HTTP {status}): check the credentials", key=key, driver=driver
        )
    return StorageError(f"{action} failed: HTTP {status}", key=key, driver=driver)


async def request(
    call: Callable[[], Awaitable[_T]],
    *,
    attempts: int,
    key: str | None,
    driver: str,
    action: str,
) -> _T:
    """``retrying(call)``, its last failure raised as a ``StorageError`` naming ``key``
    and ``driver``: by HTTP status if the failure has one, else by its type."""
    try:
        return await retrying(call, attempts=attempts)
    except TransientStatus as err:  # still failing after the last try
        raise status_error(err.status, key, driver, action) from err
    except AicechunkError:
        raise
    except Exception as err:  # the client's errors, whatever their type
        status = getattr(err, "status", None)
        if isinstance(status, int):
            raise status_error(status, key, driver, action) from err
        raise StorageError(
            f"{action} failed: {type(err).__name__}", key=key, driver=driver
        ) from err
