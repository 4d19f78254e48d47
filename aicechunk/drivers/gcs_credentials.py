"""Refreshable credentials of the GCS driver (icechunk's ``gcs_refreshable_credentials``).

A user callable returns a bearer token with its expiry (``GcsBearerCredential``, icechunk's
class of that name, or a tuple); the driver sends it as ``Authorization: Bearer ...`` and
calls the callable again, in a worker thread, shortly before the token expires. The
callable travels with the storage description, so it must pickle (``_refresh``: the checks
and the timing, shared with S3).

gcloud-aio-storage asks the ``token`` it is given for the bearer before every request
(``await token.get()``); ``BearerToken`` answers with ours. It is not a subclass of
gcloud-aio's ``Token``, whose constructor looks for the environment's credentials files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aicechunk.drivers._refresh import Refreshing, check_expiry, check_get_credentials
from aicechunk.drivers.settings import SECRET, wrap_fields
from aicechunk.errors import AicechunkError, StorageError

__all__ = ["BearerToken", "GCSRefreshableCredentials", "GcsBearerCredential", "fresh_bearer"]


@dataclass(frozen=True)
class GcsBearerCredential:
    """A bearer token a ``get_credentials`` callable returns: valid until
    ``expires_after`` (a datetime with a time zone; ``None``: never expires). As
    icechunk's ``GcsBearerCredential``, which is accepted too."""

    bearer: str = field(repr=False)
    expires_after: datetime | None = field(default=None, kw_only=True)


def fresh_bearer(value: Any) -> GcsBearerCredential:
    """What a ``get_credentials`` callable returned, checked: an object with the
    attributes of icechunk's ``GcsBearerCredential``, or a tuple ``(bearer[, expiry])``."""
    if isinstance(value, tuple) and 1 <= len(value) <= 2:
        bearer, expiry = (*value, None)[:2]
    elif hasattr(value, "bearer"):
        bearer, expiry = value.bearer, getattr(value, "expires_after", None)
    else:
        raise TypeError(
            "get_credentials must return a GCS bearer token (bearer, expires_after), "
            f"got {type(value).__name__}"
        )
    if not isinstance(bearer, str) or not bearer:
        raise TypeError("the bearer token must be a non-empty str")
    return GcsBearerCredential(bearer, expires_after=check_expiry(expiry))


@dataclass(frozen=True)
class GCSRefreshableCredentials:
    """``get_credentials``, a picklable callable returning a ``GcsBearerCredential``,
    called where the storage is used and again shortly before each token expires.

    ``bearer`` (if set) is the first token, valid until ``expires_after`` (icechunk's
    ``scatter_initial_credentials``: fetched once where the storage was made, so copies
    of it do not all call the callable at start). ``repr`` never shows the token.
    """

    get_credentials: Callable[[], Any] = field(repr=False)
    bearer: str | None = field(default=None, repr=False, metadata=SECRET)
    expires_after: datetime | None = None

    def __post_init__(self) -> None:
        check_get_credentials(self.get_credentials)
        check_expiry(self.expires_after)
        wrap_fields(self)

    def with_initial(self) -> GCSRefreshableCredentials:
        """These credentials with their first token fetched now."""
        fresh = fresh_bearer(self.get_credentials())
        return GCSRefreshableCredentials(self.get_credentials, fresh.bearer, fresh.expires_after)

    def token(self, driver: str) -> BearerToken:
        """What gcloud-aio-storage's client is given as its ``token`` (one per client:
        it holds the current bearer); failures name ``driver``."""
        return BearerToken(self, driver)


class BearerToken:
    """The token gcloud-aio-storage's ``Storage`` awaits before each request (its only
    use of one): the current bearer, refreshed in a worker thread when it is due."""

    def __init__(self, credentials: GCSRefreshableCredentials, driver: str) -> None:
        fetch = credentials.get_credentials

        def refresh() -> tuple[str, datetime | None]:
            fresh = fresh_bearer(fetch())
            return fresh.bearer, fresh.expires_after

        first = None
        if credentials.bearer:
            first = (str(credentials.bearer), credentials.expires_after)
        self._bearer = Refreshing(refresh, first)
        self._driver = driver

    async def get(self) -> str:
        """The bearer token to send now."""
        try:
            return await self._bearer.get()
        except AicechunkError:
            raise
        except Exception as err:  # the user's callable, or what it returned
            raise StorageError(
                f"get_credentials failed: {type(err).__name__}: {err}", driver=self._driver
            ) from err

    async def close(self) -> None:
        """Nothing to close (the HTTP session is the driver's)."""
