"""aicechunk: an async-first, pure-Python implementation of Icechunk."""

from aicechunk.config import CachingConfig, RepositoryConfig
from aicechunk.conflicts import (
    BasicConflictSolver,
    Conflict,
    ConflictDetector,
    ConflictKind,
    RebaseFailedError,
    VersionSelection,
)
from aicechunk.errors import (
    AicechunkError,
    ConflictError,
    FormatError,
    InvalidKey,
    InvalidRefNameError,
    ObjectNotFound,
    PreconditionFailed,
    ReadOnlyError,
    RefExistsError,
    RefNotFoundError,
    RepositoryError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    SessionStateError,
    StorageError,
)
from aicechunk.repository import Repository, SnapshotInfo
from aicechunk.session import Diff, ForkPayloadError, ForkSession, Session
from aicechunk.storage import (
    Storage,
    gcs_storage,
    http_storage,
    in_memory_storage,
    local_filesystem_storage,
    s3_storage,
    storage_from_driver,
)
from aicechunk.store import IcechunkStore

__version__ = "0.1.0"

__all__ = [
    "AicechunkError",
    "BasicConflictSolver",
    "CachingConfig",
    "Conflict",
    "ConflictDetector",
    "ConflictError",
    "ConflictKind",
    "Diff",
    "ForkPayloadError",
    "ForkSession",
    "FormatError",
    "IcechunkStore",
    "InvalidKey",
    "InvalidRefNameError",
    "ObjectNotFound",
    "PreconditionFailed",
    "ReadOnlyError",
    "RebaseFailedError",
    "RefExistsError",
    "RefNotFoundError",
    "Repository",
    "RepositoryConfig",
    "RepositoryError",
    "RepositoryExistsError",
    "RepositoryNotFoundError",
    "Session",
    "SessionStateError",
    "SnapshotInfo",
    "Storage",
    "StorageError",
    "VersionSelection",
    "__version__",
    "gcs_storage",
    "http_storage",
    "in_memory_storage",
    "local_filesystem_storage",
    "s3_storage",
    "storage_from_driver",
]
