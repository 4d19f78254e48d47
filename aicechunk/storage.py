"""User-facing storage configurations: where a repository lives.

A ``Storage`` is plain data (a driver config) plus, for in-memory storage, the live
driver, so it pickles and rebuilds its driver in another process or event loop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aicechunk.drivers.base import Driver, DriverConfig
from aicechunk.drivers.gcs import GCSSettings
from aicechunk.drivers.http import HTTPSettings
from aicechunk.drivers.local import LocalDriver
from aicechunk.drivers.memory import MemoryDriver
from aicechunk.drivers.registry import driver_from_config
from aicechunk.drivers.s3 import S3Credentials, S3Settings
from aicechunk.drivers.urls import parse_location, redact_url
from aicechunk.errors import InvalidLocation

__all__ = [
    "Storage",
    "gcs_storage",
    "http_storage",
    "in_memory_storage",
    "local_filesystem_storage",
    "s3_storage",
    "storage_from_driver",
    "storage_from_url",
]


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


def s3_storage(
    *,
    bucket: str,
    prefix: str = S3Settings.prefix,
    region: str | None = S3Settings.region,
    endpoint_url: str | None = S3Settings.endpoint_url,
    allow_http: bool = S3Settings.allow_http,
    force_path_style: bool = S3Settings.force_path_style,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    anonymous: bool = False,
    from_env: bool | None = None,
    max_concurrency: int = S3Settings.max_concurrency,
    max_attempts: int = S3Settings.max_attempts,
    connect_timeout: float = S3Settings.connect_timeout,
    read_timeout: float = S3Settings.read_timeout,
) -> Storage:
    """A repository in S3 or an S3-compatible store (options: see ``S3Settings``).

    Credentials: static keys, ``anonymous=True``, or (the default, or ``from_env=True``)
    the standard AWS chain (environment, config files, instance metadata), resolved
    wherever the storage is used.
    """
    if from_env and (access_key_id or anonymous):
        raise ValueError("from_env=True excludes static keys and anonymous access")
    if bool(access_key_id) != bool(secret_access_key):
        raise ValueError("pass both access_key_id and secret_access_key, or neither")
    settings = S3Settings(
        bucket,
        prefix,
        region=region,
        endpoint_url=endpoint_url,
        allow_http=allow_http,
        force_path_style=force_path_style,
        credentials=S3Credentials(access_key_id, secret_access_key, session_token, anonymous),
        max_concurrency=max_concurrency,
        max_attempts=max_attempts,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    return Storage(settings.to_config())


def gcs_storage(
    *,
    bucket: str,
    prefix: str = GCSSettings.prefix,
    service_account_file: str | None = GCSSettings.service_account_file,
    anonymous: bool = GCSSettings.anonymous,
    from_env: bool | None = None,
    endpoint_url: str | None = GCSSettings.endpoint_url,
    max_concurrency: int = GCSSettings.max_concurrency,
    max_attempts: int = GCSSettings.max_attempts,
    timeout: float = GCSSettings.timeout,
) -> Storage:
    """A repository in Google Cloud Storage (options: see ``GCSSettings``).

    Credentials: a service account file, ``anonymous=True``, or the application default
    credentials (``from_env``). ``endpoint_url`` or ``STORAGE_EMULATOR_HOST`` select an
    emulator.
    """
    if from_env and (service_account_file or anonymous):
        raise ValueError("from_env=True excludes a service account file and anonymous access")
    settings = GCSSettings(
        bucket,
        prefix,
        service_account_file=service_account_file,
        anonymous=anonymous,
        endpoint_url=endpoint_url,
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
