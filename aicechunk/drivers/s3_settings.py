"""The S3 driver's settings: one frozen dataclass that describes, pickles and rebuilds
the driver (``S3Driver``, re-exported from ``aicechunk.drivers.s3``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from aicechunk.drivers.s3_credentials import S3Credentials
from aicechunk.drivers.settings import URL, DriverSettings, check_endpoint
from aicechunk.errors import InvalidLocation, redact_credentials

__all__ = ["S3Settings"]


@dataclass(frozen=True)
class S3Settings(DriverSettings):
    """The S3 driver's options (see ``S3Driver``); static credentials appear only as
    the user configured them, and never in a ``repr``."""

    type_name: ClassVar[str] = "s3"

    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = field(default=None, metadata=URL)
    allow_http: bool = False
    force_path_style: bool = False
    credentials: S3Credentials = field(default_factory=S3Credentials)
    max_concurrency: int = 64
    max_attempts: int = 10
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise InvalidLocation(
                f"s3://{self.bucket}", f"S3 bucket must be a bare bucket name, got {self.bucket!r}"
            )
        endpoint = self.endpoint_url
        check_endpoint(endpoint, "S3")
        if endpoint and endpoint.lower().startswith("http://") and not self.allow_http:
            raise ValueError(
                f"endpoint {redact_credentials(endpoint)} is plain HTTP: pass allow_http=True"
            )
        object.__setattr__(self, "prefix", self.prefix.strip("/"))
        super().__post_init__()

    def client_key(self) -> tuple[object, ...]:
        """Everything the client is made from (credentials included: a client is never
        shared across them)."""
        return (
            self.region,
            self.endpoint_url,
            self.force_path_style,
            self.credentials,
            self.max_attempts,
            self.connect_timeout,
            self.read_timeout,
            self.max_concurrency,
        )
