"""S3 credentials of the S3 driver: static keys, anonymous, the environment's chain, or
refreshable ones (icechunk's ``s3_refreshable_credentials``).

Refreshable credentials are a user callable returning fresh keys with their expiry
(``ExpiringS3Credentials``, icechunk's ``S3StaticCredentials`` or a tuple). The client
calls it again, in a worker thread, shortly before the keys expire; the callable travels
with the storage description, so it must pickle (``_refresh``: shared with GCS).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aicechunk.drivers._refresh import check_expiry, check_get_credentials, refresh_windows
from aicechunk.drivers.settings import SECRET, wrap_fields

__all__ = ["ExpiringS3Credentials", "S3Credentials", "fresh_credentials", "refreshable"]

_NEVER = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ExpiringS3Credentials:
    """Keys a ``get_credentials`` callable returns: valid until ``expires_after`` (a
    datetime with a time zone; ``None``: never expire). Fields as icechunk's
    ``S3StaticCredentials``, which is accepted too."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_after: datetime | None = None


def fresh_credentials(value: Any) -> ExpiringS3Credentials:
    """What a ``get_credentials`` callable returned, checked: an object with icechunk's
    ``S3StaticCredentials`` attributes, or a tuple ``(key, secret[, token[, expiry]])``."""
    if isinstance(value, tuple) and 2 <= len(value) <= 4:
        fresh = ExpiringS3Credentials(*value)
    elif hasattr(value, "access_key_id") and hasattr(value, "secret_access_key"):
        fresh = ExpiringS3Credentials(
            value.access_key_id,
            value.secret_access_key,
            getattr(value, "session_token", None),
            getattr(value, "expires_after", None),
        )
    else:
        raise TypeError(
            "get_credentials must return S3 credentials (access_key_id, secret_access_key, "
            f"session_token, expires_after), got {type(value).__name__}"
        )
    check_expiry(fresh.expires_after)
    return fresh


@dataclass(frozen=True)
class S3Credentials:
    """How the driver authenticates: static keys, anonymous, the environment's chain, or
    ``get_credentials``, a picklable callable returning fresh keys (refreshable).

    With ``get_credentials``, the static fields (if set) are the first keys, valid until
    ``expires_after`` (icechunk's ``scatter_initial_credentials``: fetched once where the
    storage was made, so workers do not all call the callable at start).
    ``repr`` never shows the secret parts.
    """

    access_key_id: str | None = field(default=None, repr=False, metadata=SECRET)
    secret_access_key: str | None = field(default=None, repr=False, metadata=SECRET)
    session_token: str | None = field(default=None, repr=False, metadata=SECRET)
    anonymous: bool = False
    get_credentials: Callable[[], Any] | None = field(default=None, repr=False)
    expires_after: datetime | None = None

    def __post_init__(self) -> None:
        if self.get_credentials is not None:
            check_get_credentials(self.get_credentials)
        wrap_fields(self)

    @property
    def kind(self) -> str:
        """``static``, ``anonymous``, ``refreshable`` or ``from_env``."""
        if self.anonymous:
            return "anonymous"
        if self.get_credentials is not None:
            return "refreshable"
        return "static" if self.access_key_id else "from_env"

    def with_initial(self) -> S3Credentials:
        """These refreshable credentials with their first keys fetched now."""
        assert self.get_credentials is not None
        fresh = fresh_credentials(self.get_credentials())
        return S3Credentials(
            fresh.access_key_id,
            fresh.secret_access_key,
            fresh.session_token,
            get_credentials=self.get_credentials,
            expires_after=fresh.expires_after,
        )


def _metadata(fresh: ExpiringS3Credentials) -> dict[str, Any]:
    expiry = fresh.expires_after or _NEVER
    return {
        "access_key": str(fresh.access_key_id),
        "secret_key": str(fresh.secret_access_key),
        "token": None if fresh.session_token is None else str(fresh.session_token),
        "expiry_time": expiry.astimezone(UTC).isoformat(),
    }


async def refreshable(credentials: S3Credentials) -> Any:
    """aiobotocore credentials that call ``credentials.get_credentials`` (in a worker
    thread) when the keys they hold are about to expire."""
    from aiobotocore.credentials import AioRefreshableCredentials

    fetch = credentials.get_credentials
    assert fetch is not None

    async def refresh() -> dict[str, Any]:
        return _metadata(fresh_credentials(await asyncio.to_thread(fetch)))

    if credentials.access_key_id and credentials.secret_access_key:
        first = _metadata(
            ExpiringS3Credentials(
                credentials.access_key_id,
                credentials.secret_access_key,
                credentials.session_token,
                credentials.expires_after,
            )
        )
    else:
        first = await refresh()
    made = AioRefreshableCredentials.create_from_metadata(first, refresh, "aicechunk-refresh")
    # botocore's windows are class attributes; these keys get ours
    made._advisory_refresh_timeout, made._mandatory_refresh_timeout = refresh_windows()
    return made
