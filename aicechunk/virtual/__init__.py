"""Virtual chunks: chunks stored in other objects (a NetCDF file, an HDF5 file, an
archive) that a repository references by URL, offset and length.

- ``containers``: which URL prefixes a repository declares, the typed store config each
  is read through, and the credentials a reader authorizes them with;
- ``resolver``: ``VirtualResolver``, which reads a chunk only from an authorized
  container, through a driver per container;
- ``ranges``: the planner that joins nearby byte ranges of one object into one read;
- ``batching``: gathers the concurrent reads the planner joins.
"""

from __future__ import annotations

from aicechunk.errors import VirtualChunkError
from aicechunk.virtual.containers import (
    AzureStoreConfig,
    Credentials,
    GCSCredentials,
    GCSStoreConfig,
    HTTPStoreConfig,
    InMemoryStoreConfig,
    LocalStoreConfig,
    S3StaticCredentials,
    S3StoreConfig,
    StoreConfig,
    VirtualChunkContainer,
    VirtualChunkSpec,
    containers_credentials,
    gcs_credentials,
    gcs_store,
    http_store,
    local_filesystem_store,
    s3_credentials,
    s3_store,
)
from aicechunk.virtual.resolver import ChunkFetcher, VirtualResolver

__all__ = [
    "AzureStoreConfig",
    "ChunkFetcher",
    "Credentials",
    "GCSCredentials",
    "GCSStoreConfig",
    "HTTPStoreConfig",
    "InMemoryStoreConfig",
    "LocalStoreConfig",
    "S3StaticCredentials",
    "S3StoreConfig",
    "StoreConfig",
    "VirtualChunkContainer",
    "VirtualChunkError",
    "VirtualChunkSpec",
    "VirtualResolver",
    "containers_credentials",
    "gcs_credentials",
    "gcs_store",
    "http_store",
    "local_filesystem_store",
    "s3_credentials",
    "s3_store",
]
