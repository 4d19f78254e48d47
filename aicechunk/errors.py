"""One exception hierarchy for everything a user of aicechunk can see.

Every error says what went wrong, where (key, driver, file, branch) and why. Raw
``KeyError``, ``struct.error``, ``OSError`` or client-library errors never escape the
package: they are wrapped in one of these, with the original kept as ``__cause__``.
"""

from __future__ import annotations


class AicechunkError(Exception):
    """Root of every error raised by aicechunk."""


# --- storage -------------------------------------------------------------------------


class StorageError(AicechunkError):
    """A storage operation failed.

    ``key`` is the object key (relative to the driver root) and ``driver`` a short,
    credential-free description of the driver, so a message says which object on which
    backend was involved.
    """

    def __init__(self, message: str, *, key: str | None = None, driver: str | None = None):
        self.key = key
        self.driver = driver
        self.reason = message
        where = []
        if key is not None:
            where.append(f"key={key!r}")
        if driver is not None:
            where.append(f"driver={driver}")
        suffix = f" ({', '.join(where)})" if where else ""
        super().__init__(f"{message}{suffix}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_storage_error, (type(self), self.reason, self.key, self.driver))


def _rebuild_storage_error(
    cls: type[StorageError], reason: str, key: str | None, driver: str | None
) -> StorageError:
    return cls(reason, key=key, driver=driver)


class ObjectNotFound(StorageError):
    """The object does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists (create-only) or changed (if-match)."""


class InvalidKey(StorageError):
    """A key is malformed or would reach outside the driver's root."""


class ReadOnlyError(StorageError, ValueError):
    """A write was attempted through a read-only driver, store or session.

    Also a ``ValueError``, which is what zarr expects from a read-only store.
    """


#: Short alias used by the driver protocol documentation.
ReadOnly = ReadOnlyError


# --- format --------------------------------------------------------------------------


class FormatError(AicechunkError):
    """A file does not follow the Icechunk on-disk format.

    ``file`` names the file (its repository key, or a description when decoding bytes
    that did not come from storage) and ``problem`` what was wrong with it.
    """

    def __init__(self, file: str, problem: str):
        self.file = file
        self.problem = problem
        super().__init__(f"{file}: {problem}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.file, self.problem))


# --- repository and sessions ---------------------------------------------------------


class RepositoryError(AicechunkError):
    """A repository-level operation failed."""


class RepositoryNotFoundError(RepositoryError):
    """No repository exists at the given storage location."""


class RepositoryExistsError(RepositoryError):
    """A repository already exists where one was to be created."""


class RefNotFoundError(RepositoryError):
    """A branch, tag or snapshot does not exist."""


class RefExistsError(RepositoryError):
    """A branch or tag cannot be created because the name is taken (or was a tag)."""


class InvalidRefNameError(RepositoryError):
    """A branch or tag name is not allowed."""


class SessionStateError(AicechunkError):
    """An operation is not allowed in the session's current state."""


class ConflictError(AicechunkError):
    """A commit lost the race: the branch moved since the session started."""

    def __init__(self, branch: str, expected: str | None, actual: str | None):
        self.branch = branch
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"branch {branch!r} moved: the session expected tip {expected}, "
            f"but the branch is at {actual}; rebase and commit again"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.branch, self.expected, self.actual))


# --- values and payloads ---------------------------------------------------------------


class InvalidNodePathError(AicechunkError, ValueError):
    """A node path that is not an absolute, normalized zarr path (``/`` or ``/a/b``)."""

    def __init__(self, path: object, why: str):
        self.path = path
        super().__init__(f"invalid node path {path!r}: {why}")


class InvalidMetadataError(AicechunkError, ValueError):
    """Zarr metadata that is not a valid v3 group or array document."""

    def __init__(self, path: str, why: str):
        self.path = path
        super().__init__(f"metadata for node {path!r}: {why}")


class ChunkIndexError(AicechunkError, IndexError):
    """Chunk coordinates outside an array's chunk grid, or of another rank."""

    def __init__(self, path: str, coords: tuple[int, ...], grid: tuple[int, ...]):
        self.path = path
        super().__init__(
            f"chunk {list(coords)} is outside the chunk grid {list(grid)} of array {path!r}"
        )


class UnrepresentableValueError(AicechunkError, ValueError):
    """A value the on-disk format cannot hold (a chunk index beyond uint32, a shape
    beyond uint64, ...): refused when written, so that every commit can succeed."""

    def __init__(self, where: str, why: str):
        self.where = where
        super().__init__(f"{where}: {why}")


class ForkPayloadError(AicechunkError, ValueError):
    """A fork payload that is truncated, corrupted, of another format version, too large
    when decompressed, or holding changes no session could have made."""
