"""How the S3 driver's aiobotocore clients are configured: for little CPU per request.

A pure-Python client spends most of a small request in botocore, and a busy machine
turns that CPU into latency. The configuration here keeps every safety botocore gives
(retries, signing, conditional writes, error parsing) and turns off the per-request
work that buys the driver nothing:

- checksums S3 does not require (the default computes a CRC of every body sent and
  checks every answer's);
- botocore's validation of the parameters: the driver builds them itself, and keys are
  validated before they get here;
- the User-Agent string, which botocore otherwise rebuilds from two dozen parts twice
  per request (``user_agent()`` is sent instead);
- dateutil's general timestamp parser, which botocore calls for every answer's
  ``Last-Modified`` (``parse_timestamp`` reads S3's two formats with the standard
  library).

aiobotocore and botocore are imported when the first client is made, not with the
package: most uses of aicechunk never talk to S3.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = [
    "AWS_ENVIRONMENT",
    "aws_environment",
    "client_config",
    "parse_timestamp",
    "shared_session",
    "tuned",
    "user_agent",
]

#: the variables botocore reads for credentials, profiles, endpoints and regions
AWS_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
    "AWS_CA_BUNDLE",
)

_SESSION: list[tuple[tuple[str | None, ...], Any]] = []  # (environment, session)


def aws_environment() -> tuple[str | None, ...]:
    """The values of ``AWS_ENVIRONMENT`` now."""
    return tuple(os.environ.get(name) for name in AWS_ENVIRONMENT)


def shared_session(factory: Callable[[], Any]) -> Any:
    """The process's botocore session (made by ``factory`` the first time, ``tuned``).

    One session per process and AWS environment: it caches the service model that every
    client would otherwise load again (a few hundred milliseconds each time), and the
    credentials it resolved. A connection made after an ``AWS_*`` variable changed gets a
    new session (sharing the loaded models), so it resolves credentials, profile, endpoint
    and region from the environment as it is then, as icechunk does when its storage is
    made; connections already open keep theirs.
    """
    environment = aws_environment()
    if _SESSION and _SESSION[0][0] == environment:
        return _SESSION[0][1]
    session = tuned(factory())
    if _SESSION:
        session.register_component("data_loader", _SESSION[0][1].get_component("data_loader"))
    _SESSION[:] = [(environment, session)]
    return session


def tuned(session: Any) -> Any:
    """``session``, its clients set to parse timestamps with ``parse_timestamp``."""
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=parse_timestamp
    )
    return session


def client_config(
    *,
    max_attempts: int,
    connect_timeout: float,
    read_timeout: float,
    max_pool_connections: int,
    path_style: bool,
    anonymous: bool,
) -> Any:
    """The ``AioConfig`` of a client: the driver's settings, and none of the work on
    every request that the driver does not need (see the module's docstring)."""
    from aiobotocore.config import AioConfig
    from botocore import UNSIGNED

    return AioConfig(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path" if path_style else "auto"},
        signature_version=UNSIGNED if anonymous else None,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        parameter_validation=False,
        user_agent=user_agent(),
    )


def user_agent() -> str:
    """The User-Agent header of the S3 driver's requests (fixed for the process)."""
    import aiobotocore
    import botocore

    return (
        f"aicechunk aiobotocore/{aiobotocore.__version__} botocore/{botocore.__version__} "
        f"Python/{platform.python_version()}"
    )


def parse_timestamp(value: str) -> datetime:
    """A timestamp of an S3 answer, as botocore's parser would return it.

    S3 writes two formats: RFC 7231 in headers (``Mon, 07 Dec 2026 04:59:01 GMT``) and
    ISO 8601 in listings (``2026-12-07T04:59:01.000Z``); both are read by the standard
    library here. Anything else (epoch seconds, other zones, no zone) goes to botocore's
    general parser, which costs ~0.3 ms an answer.
    """
    try:
        if value.endswith(" GMT"):
            return parsedate_to_datetime(value)
        if "T" in value:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is not None:
                return parsed
    except (TypeError, ValueError):
        pass
    from botocore.utils import parse_timestamp as general

    found: datetime = general(value)
    return found
