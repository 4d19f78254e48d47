"""Refreshable credentials, shared by the S3 and GCS drivers: checking the user's callable,
and when to call it again.

A ``get_credentials`` callable travels with the storage description, so it must pickle (a
module-level function, or an instance of a module-level class), as icechunk requires: a
repository sent to another process fetches its own credentials there. It may block (a
token service, a file), so it is called in a worker thread, ``REFRESH_BEFORE`` the
credentials it returned expire. A refresh that fails while the old credentials still have
more than half that time left is not an error yet: they are used, and the next request
tries again (botocore's advisory and mandatory windows, which the S3 driver sets from
``refresh_windows``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

__all__ = [
    "REFRESH_BEFORE",
    "Refreshing",
    "check_expiry",
    "check_get_credentials",
    "refresh_windows",
]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)

#: refresh this long before expiry, and no later than half as long before it (botocore's
#: defaults, 15 and 10 minutes, would call a callable returning short-lived credentials
#: before every request)
REFRESH_BEFORE = timedelta(seconds=60)


def refresh_windows() -> tuple[float, float]:
    """(seconds before expiry when a refresh is due, seconds before expiry when the old
    credentials are no longer used), from ``REFRESH_BEFORE`` as it is now."""
    advisory = REFRESH_BEFORE.total_seconds()
    return advisory, advisory / 2


def check_get_credentials(get_credentials: Any) -> None:
    """``TypeError`` unless ``get_credentials`` is callable and pickles."""
    if not callable(get_credentials):
        raise TypeError("get_credentials must be callable")
    try:
        pickle.dumps(get_credentials)
    except Exception as err:
        raise TypeError(
            "get_credentials must pickle (a module-level function or an instance of "
            f"a module-level class), to reach other processes: {err}"
        ) from None


def check_expiry(expiry: Any) -> datetime | None:
    """``expiry`` if it is ``None`` or a datetime with a time zone, else ``TypeError``."""
    if expiry is not None and (not isinstance(expiry, datetime) or expiry.tzinfo is None):
        raise TypeError("expires_after must be a datetime with a time zone")
    return expiry


class Refreshing(Generic[_T]):
    """A value with an expiry, from a blocking ``fetch`` returning ``(value, expiry)``
    (expiry ``None``: never): ``get()`` returns it, calling ``fetch`` in a worker thread
    first when it is within ``REFRESH_BEFORE`` of expiry (once, however many callers
    wait). ``first``, if given, is used until then without calling ``fetch``."""

    def __init__(
        self,
        fetch: Callable[[], tuple[_T, datetime | None]],
        first: tuple[_T, datetime | None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._current = first
        self._lock = asyncio.Lock()

    def _seconds_left(self) -> float:
        if self._current is None:
            return -math.inf
        expiry = self._current[1]
        if expiry is None:
            return math.inf
        return (expiry - datetime.now(UTC)).total_seconds()

    async def get(self) -> _T:
        """The value, refreshed first if it is due."""
        advisory, mandatory = refresh_windows()
        if self._current is not None and self._seconds_left() > advisory:
            return self._current[0]
        async with self._lock:
            if self._current is None or self._seconds_left() <= advisory:
                try:
                    self._current = await asyncio.to_thread(self._fetch)
                except Exception as err:
                    if self._current is None or self._seconds_left() <= mandatory:
                        raise
                    _log.warning(
                        "refreshing credentials failed (%s: %s); the current ones are "
                        "used until they are about to expire",
                        type(err).__name__,
                        err,
                    )
            return self._current[0]
