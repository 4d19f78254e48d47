"""Storage and virtual chunk store constructors, where icechunk's ``icechunk.storage`` has
them (the names aicechunk lacks: ``aicechunk.sync._names.NOT_YET``)."""

from __future__ import annotations

from aicechunk.session import ChunkType
from aicechunk.storage import (
    GcsBearerCredential,
    Storage,
    gcs_storage,
    http_storage,
    in_memory_storage,
    local_filesystem_storage,
    r2_storage,
    s3_storage,
    tigris_storage,
)
from aicechunk.virtual import (
    gcs_credentials,
    gcs_store,
    http_store,
    local_filesystem_store,
    s3_credentials,
    s3_store,
)

__all__ = [
    "ChunkType",
    "GcsBearerCredential",
    "Storage",
    "gcs_credentials",
    "gcs_storage",
    "gcs_store",
    "http_storage",
    "http_store",
    "in_memory_storage",
    "local_filesystem_storage",
    "local_filesystem_store",
    "r2_storage",
    "s3_credentials",
    "s3_storage",
    "s3_store",
    "tigris_storage",
]
