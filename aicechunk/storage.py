"""User-facing storage configurations: where a repository lives.

A ``Storage`` is plain data (a driver config) plus, for in-memory storage, the live
driver, so it pickles and rebuilds its driver in another process or event loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aicechunk.drivers.base import Driver, DriverConfig
from aicechunk.drivers.gcs import GCSSettings
from aicechunk.drivers.gcs_credentials import GcsBearerCredential, GCSRefreshableCredentials
from aicechunk.drivers.http import HTTPSettings
from aicechunk.drivers.local import LocalDriver
from aicechunk.drivers.memory import MemoryDriver
from aicechunk.drivers.registry import driver_from_config
from aicechunk.drivers.s3 import S3Settings
from aicechunk.drivers.s3_credentials import ExpiringS3Credentials, S3Credentials
from aicechunk.drivers.urls import parse_location, redact_url
from aicechunk.errors import InvalidLocation

__all__ = [
    "ExpiringS3Credentials",
    "GCSRefreshableCredentials",
    "GcsBearerCredential",
    "S3Credentials",
    "Storage",
    "gcs_refreshable_credentials",
    "gcs_storage",
    "http_storage",
    "in_memory_storage",
    "local_filesystem_storage",
    "r2_storage",
    "s3_refreshable_credentials",
    "s3_storage",
    "storage_from_driver",
    "storage_from_url",
    "tigris_storage",
]

#: Where ``tigris_storage`` and ``r2_storage`` point by default (icechunk's endpoints).
TIGRIS_ENDPOINT = "https://t3.storage.dev"
R2_ENDPOINT = "https://{account_id}.r2.cloudflarestorage.com"
R2_REGION = "auto"


@dataclass
class Storage:
    """Where a repository's files are kept: a driver, described as plain data."""

    config: DriverConfig
    _driver: Driver | None = field(default=None, repr=False, compare=False)

    def driver(self) -> Driver:
        """The driver (made on first use, then shared)."""
        if self._driver is None:
            self._driver = driver_from_config(self.config)
        return self._driver

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {"config": self.config}
        if isinstance(self._driver, MemoryDriver):
            state["driver"] = self._driver
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._driver = state.get("driver")

    def __repr__(self) -> str:
        kind = self.config.get("type", "?")
        where = (
            self.config.get("root")
            or self.config.get("bucket")
            or self.config.get("base_url")
            or self.config.get("name")
        )
        return f"Storage({kind}: {redact_url(where)})"


def local_filesystem_storage(path: str | os.PathLike[str]) -> Storage:
    """A repository in a local directory (created on first write)."""
    driver = LocalDriver(path)
    return Storage(driver.describe(), driver)


def in_memory_storage() -> Storage:
    """A repository in this process's memory, gone when the process ends."""
    driver = MemoryDriver()
    return Storage(driver.describe(), driver)


def storage_from_driver(driver: Driver) -> Storage:
    """Wrap any driver (including a third-party one) as repository storage."""
    return Storage(driver.describe(), driver)


def s3_refreshable_credentials(
    get_credentials: Callable[[], Any], scatter_initial_credentials: bool = False
) -> S3Credentials:
    """Credentials that ``get_credentials`` returns, called again when they are about to
    expire (icechunk's ``s3_refreshable_credentials``); pass them as ``credentials=``.

    ``get_credentials`` returns ``ExpiringS3Credentials`` (or icechunk's
    ``S3StaticCredentials``, or a tuple ``(key, secret, token, expires_after)``) and must
    pickle: it travels with the storage to other processes, which call it there. With
    ``scatter_initial_credentials`` it is called once now, and the copies of the storage
    start with those keys (they travel too, as secrets) until they expire."""
    credentials = S3Credentials(get_credentials=get_credentials)
    return credentials.with_initial() if scatter_initial_credentials else credentials


def _s3_credentials(
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    expires_after: datetime | None,
    anonymous: bool | None,
    from_env: bool | None,
    get_credentials: Callable[[], Any] | None,
    scatter_initial_credentials: bool,
) -> S3Credentials:
    if from_env and (access_key_id or anonymous or get_credentials):
        raise ValueError("from_env=True excludes static keys, anonymous and get_credentials")
    if get_credentials is not None:
        if access_key_id or anonymous:
            raise ValueError("get_credentials excludes static keys and anonymous access")
        return s3_refreshable_credentials(get_credentials, scatter_initial_credentials)
    if bool(access_key_id) != bool(secret_access_key):
        raise ValueError("pass both access_key_id and secret_access_key, or neither")
    return S3Credentials(
        access_key_id,
        secret_access_key,
        session_token,
        bool(anonymous),
        expires_after=expires_after if access_key_id else None,
    )


def s3_storage(
    *,
    bucket: str,
    prefix: str | None = S3Settings.prefix,
    region: str | None = S3Settings.region,
    endpoint_url: str | None = S3Settings.endpoint_url,
    allow_http: bool = S3Settings.allow_http,
    force_path_style: bool = S3Settings.force_path_style,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    expires_after: datetime | None = None,
    anonymous: bool | None = None,
    from_env: bool | None = None,
    get_credentials: Callable[[], Any] | None = None,
    scatter_initial_credentials: bool = False,
    credentials: S3Credentials | None = None,
    max_concurrency: int = S3Settings.max_concurrency,
    max_attempts: int = S3Settings.max_attempts,
    connect_timeout: float = S3Settings.connect_timeout,
    read_timeout: float = S3Settings.read_timeout,
) -> Storage:
    """A repository in S3 or an S3-compatible store (options: see ``S3Settings``).

    Credentials: static keys, ``anonymous=True``, ``get_credentials`` (refreshable, see
    ``s3_refreshable_credentials``), ``credentials`` made beforehand, or (the default, or
    ``from_env=True``) the standard AWS chain (environment, config files, instance
    metadata), resolved wherever the storage is used.
    """
    made = _s3_credentials(
        access_key_id,
        secret_access_key,
        session_token,
        expires_after,
        anonymous,
        from_env,
        get_credentials,
        scatter_initial_credentials,
    )
    if credentials is not None:
        if made.kind != "from_env" or from_env:
            raise ValueError("credentials= excludes every other credentials argument")
        made = credentials
    settings = S3Settings(
        bucket,
        prefix or "",
        region=region,
        endpoint_url=endpoint_url,
        allow_http=allow_http,
        force_path_style=force_path_style,
        credentials=made,
        max_concurrency=max_concurrency,
        max_attempts=max_attempts,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    return Storage(settings.to_config())


def tigris_storage(
    *,
    bucket: str,
    prefix: str | None,
    region: str | None = None,
    endpoint_url: str | None = None,
    use_weak_consistency: bool = False,
    **options: Any,
) -> Storage:
    """A repository in Tigris (S3-compatible), as icechunk's ``tigris_storage``: the
    endpoint defaults to ``TIGRIS_ENDPOINT``, and a ``region`` is required, as Tigris is
    consistent only within one. ``options``: ``s3_storage``'s credentials and limits.

    ``use_weak_consistency`` (icechunk's read-only, eventually consistent reads from the
    nearest region) is not supported: ``ValueError``."""
    if use_weak_consistency:
        raise ValueError(
            "use_weak_consistency=True is not supported: aicechunk reads Tigris "
            "consistently only (pass region=)"
        )
    if region is None:
        raise ValueError(
            "Tigris storage requires a region to provide full consistency: pass region="
        )
    return s3_storage(
        bucket=bucket,
        prefix=prefix,
        region=region,
        endpoint_url=endpoint_url or TIGRIS_ENDPOINT,
        **options,
    )


def r2_storage(
    *,
    bucket: str | None = None,
    prefix: str | None = None,
    account_id: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    **options: Any,
) -> Storage:
    """A repository in Cloudflare R2 (S3-compatible), as icechunk's ``r2_storage``: the
    endpoint is ``endpoint_url`` or made from ``account_id`` (``R2_ENDPOINT``), the
    region ``auto`` unless given, with path-style addressing. Without ``bucket``, the
    first segment of ``prefix`` is the bucket. ``options``: ``s3_storage``'s."""
    if endpoint_url is None:
        if account_id is None:
            raise ValueError("Either endpoint_url or account_id must be provided")
        endpoint_url = R2_ENDPOINT.format(account_id=account_id)
    if bucket is None:
        if not prefix:
            raise ValueError("Either bucket or prefix must be provided")
        bucket, _, prefix = prefix.strip("/").partition("/")
    options.setdefault("force_path_style", True)
    return s3_storage(
        bucket=bucket,
        prefix=prefix,
        region=region or R2_REGION,
        endpoint_url=endpoint_url,
        **options,
    )


def gcs_refreshable_credentials(
    get_credentials: Callable[[], Any], scatter_initial_credentials: bool = False
) -> GCSRefreshableCredentials:
    """A bearer token that ``get_credentials`` returns, called again when it is about to
    expire (icechunk's ``gcs_refreshable_credentials``); pass it as ``credentials=``.

    ``get_credentials`` returns a ``GcsBearerCredential`` (or icechunk's, or a tuple
    ``(bearer, expires_after)``) and must pickle: it travels with the storage to other
    processes, which call it there. With ``scatter_initial_credentials`` it is called once
    now, and the copies of the storage start with that token (it travels too, as a secret)
    until it expires."""
    credentials = GCSRefreshableCredentials(get_credentials)
    return credentials.with_initial() if scatter_initial_credentials else credentials


def gcs_storage(
    *,
    bucket: str,
    prefix: str = GCSSettings.prefix,
    service_account_file: str | None = GCSSettings.service_account_file,
    anonymous: bool = GCSSettings.anonymous,
    from_env: bool | None = None,
    endpoint_url: str | None = GCSSettings.endpoint_url,
    get_credentials: Callable[[], Any] | None = None,
    scatter_initial_credentials: bool = False,
    credentials: GCSRefreshableCredentials | None = GCSSettings.credentials,
    max_concurrency: int = GCSSettings.max_concurrency,
    max_attempts: int = GCSSettings.max_attempts,
    timeout: float = GCSSettings.timeout,
) -> Storage:
    """A repository in Google Cloud Storage (options: see ``GCSSettings``).

    Credentials: a service account file, ``anonymous=True``, ``get_credentials``
    (refreshable bearer tokens, see ``gcs_refreshable_credentials``), ``credentials`` made
    beforehand, or the application default credentials (``from_env``).
    ``endpoint_url`` or ``STORAGE_EMULATOR_HOST`` select an emulator.
    """
    if from_env and (service_account_file or anonymous or get_credentials or credentials):
        raise ValueError(
            "from_env=True excludes a service account file, anonymous access and "
            "refreshable credentials"
        )
    if get_credentials is not None:
        if credentials is not None:
            raise ValueError("pass get_credentials or credentials, not both")
        credentials = gcs_refreshable_credentials(get_credentials, scatter_initial_credentials)
    if credentials is not None and (service_account_file or anonymous):
        raise ValueError(
            "refreshable credentials exclude a service account file and anonymous access"
        )
    settings = GCSSettings(
        bucket,
        prefix,
        service_account_file=service_account_file,
        anonymous=anonymous,
        endpoint_url=endpoint_url,
        credentials=credentials,
        max_concurrency=max_concurrency,
        max_attempts=max_attempts,
        timeout=timeout,
    )
    return Storage(settings.to_config())


def http_storage(
    base_url: str,
    *,
    headers: Mapping[str, str] | None = None,
    max_concurrency: int = HTTPSettings.max_concurrency,
    max_attempts: int = HTTPSettings.max_attempts,
    timeout: float = HTTPSettings.timeout,
) -> Storage:
    """A published repository, read-only over HTTP(S) (options: see ``HTTPSettings``)."""
    settings = HTTPSettings(
        base_url,
        headers or {},
        max_concurrency=max_concurrency,
        max_attempts=max_attempts,
        timeout=timeout,
    )
    return Storage(settings.to_config())


def url_scheme(url: str) -> str:
    """The kind of storage a URL names: ``file`` for a path or ``file://``, ``s3``,
    ``gs`` (also spelled ``gcs``), ``http`` or ``https``; another scheme as written."""
    scheme, sep, _ = url.partition("://")
    if not sep or len(scheme) == 1:
        return "file"  # a path (a Windows one too: C:\\... or C://...)
    scheme = scheme.lower()
    return "gs" if scheme == "gcs" else scheme


def storage_from_url(url: str, **options: Any) -> Storage:
    """The storage a URL names: a path or ``file://...``, ``s3://bucket/prefix``,
    ``gs://bucket/prefix``, ``http(s)://...`` (read-only). ``options`` are the keyword
    arguments of the matching constructor (``s3_storage``, ``gcs_storage``,
    ``http_storage``); the URL is parsed by ``drivers.urls.parse_location``."""
    scheme = url_scheme(url)
    if scheme == "file":
        if not url.lower().startswith("file://"):
            return local_filesystem_storage(url, **options)
        return local_filesystem_storage("/" + parse_location(url).path, **options)
    if scheme in ("s3", "gs"):
        where = parse_location(url)
        make = s3_storage if scheme == "s3" else gcs_storage
        return make(bucket=where.authority, prefix=where.path, **options)
    if scheme in ("http", "https"):
        return http_storage(url, **options)  # user:password@ allowed: it becomes auth
    raise InvalidLocation(
        url,
        "unsupported storage URL: use a path or file://, s3://bucket/prefix, "
        "gs://bucket/prefix, http:// or https:// (read-only)",
    )
