"""User-facing storage configurations: where a repository lives.

A ``Storage`` is plain data (a driver config) plus, for in-memory storage, the live
driver, so it pickles and rebuilds its driver in another process or event loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from aicechunk.drivers.base import Driver, DriverConfig
from aicechunk.drivers.memory import MemoryDriver
from aicechunk.drivers.registry import driver_from_config
from aicechunk.drivers.urls import redact_url

__all__ = [
    "Storage",
    "gcs_storage",
    "http_storage",
    "in_memory_storage",
    "local_filesystem_storage",
    "s3_storage",
    "storage_from_driver",
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
    from aicechunk.drivers.local import LocalDriver

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
    prefix: str = "",
    region: str | None = None,
    endpoint_url: str | None = None,
    allow_http: bool = False,
    force_path_style: bool = False,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    anonymous: bool = False,
    from_env: bool | None = None,
    max_concurrency: int = 64,
    max_attempts: int = 10,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> Storage:
    """A repository in S3 or an S3-compatible store.

    Credentials: static keys, ``anonymous=True``, or (the default, or ``from_env=True``)
    the standard AWS chain (environment, config files, instance metadata), resolved
    wherever the storage is used.
    """
    from aicechunk.drivers.s3 import S3Credentials, S3Driver

    if from_env and (access_key_id or anonymous):
        raise ValueError("from_env=True excludes static keys and anonymous access")
    if bool(access_key_id) != bool(secret_access_key):
        raise ValueError("pass both access_key_id and secret_access_key, or neither")
    driver = S3Driver(
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
    return Storage(driver.describe())


def gcs_storage(
    *,
    bucket: str,
    prefix: str = "",
    service_account_file: str | None = None,
    anonymous: bool = False,
    from_env: bool | None = None,
    endpoint_url: str | None = None,
) -> Storage:
    """A repository in Google Cloud Storage.

    Credentials: a service account file, ``anonymous=True``, or the application default
    credentials (``from_env``). ``endpoint_url`` or ``STORAGE_EMULATOR_HOST`` select an
    emulator.
    """
    from aicechunk.drivers.gcs import GCSDriver

    if from_env and (service_account_file or anonymous):
        raise ValueError("from_env=True excludes a service account file and anonymous access")
    driver = GCSDriver(
        bucket,
        prefix,
        service_account_file=service_account_file,
        anonymous=anonymous,
        endpoint_url=endpoint_url,
    )
    return Storage(driver.describe())


def http_storage(base_url: str, *, headers: dict[str, str] | None = None) -> Storage:
    """A published repository, read-only over HTTP(S)."""
    from aicechunk.drivers.http import HTTPDriver

    return Storage(HTTPDriver(base_url, headers=headers).describe())
