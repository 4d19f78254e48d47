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

__version__ = "0.1.0"

__all__ = [
    "AicechunkError",
    "ConflictError",
    "FormatError",
    "InvalidKey",
    "ObjectNotFound",
    "PreconditionFailed",
    "ReadOnlyError",
    "StorageError",
    "__version__",
]
