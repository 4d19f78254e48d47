"""Credential constructors, where icechunk's ``icechunk.credentials`` has them (the names
aicechunk lacks: ``aicechunk.sync._names.NOT_YET``)."""

from __future__ import annotations

from aicechunk.storage import (
    GcsBearerCredential,
    S3Credentials,
    gcs_refreshable_credentials,
    s3_refreshable_credentials,
)
from aicechunk.virtual import containers_credentials, gcs_credentials, s3_credentials

__all__ = [
    "GcsBearerCredential",
    "S3Credentials",
    "containers_credentials",
    "gcs_credentials",
    "gcs_refreshable_credentials",
    "s3_credentials",
    "s3_refreshable_credentials",
]
