"""aicechunk: an async-first, pure-Python implementation of Icechunk."""

from aicechunk.errors import (
    AicechunkError,
    ConflictError,
    FormatError,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
    ReadOnlyError,
    StorageError,
)
from aicechunk.storage import (
    Storage,
    gcs_storage,
    http_storage,
    in_memory_storage,
    local_filesystem_storage,
    s3_storage,
    storage_from_driver,
)

__version__ = "0.1.0"

__all__ = [
    "AicechunkError",
    "ConflictError",
    "FormatError",
    "InvalidKey",
    "ObjectNotFound",
    "PreconditionFailed",
    "ReadOnlyError",
    "Storage",
    "StorageError",
    "__version__",
    "gcs_storage",
    "http_storage",
    "in_memory_storage",
    "local_filesystem_storage",
    "s3_storage",
    "storage_from_driver",
]
