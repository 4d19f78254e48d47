"""One exception hierarchy for everything a user of aicechunk can see; every exception
the package defines is defined here.

Every error says what went wrong, where (key, driver, file, branch) and why. Raw
``KeyError``, ``struct.error``, ``OSError`` or client-library errors never escape the
package: they are wrapped in one of these, with the original kept as ``__cause__``.
Where Python has a matching built-in, the error is also one (``except ValueError`` keeps
working for bad arguments)::

    AicechunkError
        StorageError                    a driver operation failed (key=, driver=)
            ObjectNotFound
            PreconditionFailed          a conditional write lost
            CommitOutcomeUnknownError   a ref change's answer was lost
            InvalidKey
            ReadOnlyError               (also ValueError)
            InjectedFault               raised by aicechunk.testing.FaultyDriver
            ChunkUploadError            a written-behind chunk did not reach storage
            TransientStatus             a retryable HTTP status, inside drivers only
            WireError                   a broken, cut or missing HTTP answer, inside drivers only
        FormatError                     a stored file is not what the format says
            InvalidIdError              (also ValueError)
        RepositoryError
            RepositoryNotFoundError, RepositoryExistsError, RootNotEmptyError,
            UnsupportedSpecVersionError, RefNotFoundError, RefExistsError,
            InvalidRefNameError, ReadOnlyRepositoryError (the status takes no writes)
        SessionStateError               not allowed in the session's state (also ValueError)
            FeatureFlagDisabledError    a feature flag of the repository turns it off
        ConflictError                   the branch moved (branch, expected_parent, actual_parent)
        RebaseFailedError               conflicts the solver would not resolve (snapshot, conflicts)
        NodeNotFoundError               (also KeyError)
        NodeExistsError                 a node is where a move would put one
        ChunkIndexError                 (also IndexError)
        InvalidLocation, InvalidNodePathError, InvalidStoreKeyError,
        InvalidMetadataError, InvalidChangesError, UnrepresentableValueError,
        ForkPayloadError, InvalidInputError   (all also ValueError)
        VirtualChunkError
        EventLoopError                  (also RuntimeError) a blocking call on its own loop
    AicechunkWarning                    (a UserWarning)
        UnawaitedCallWarning            a commit (or another call that matters) never awaited
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aicechunk.changes.conflicts import Conflict
    from aicechunk.format.repo_updates import RepoStatus

# "scheme://" and everything up to the last "@" on its line. Userinfo written unencoded may
# hold quotes, spaces, "/", "?", "#" and "@" itself, so no character but a line break can be
# trusted to end it: this hides too much rather than too little ("http://h/a b@c" loses
# "h/a b"), and a second URL on the line is hidden with the first.
_USERINFO = re.compile(r"([A-Za-z0-9+.-]*://)[^\n]*@")


def redact_credentials(text: str) -> str:
    """``text`` with the userinfo of every URL in it (``user:password@``) replaced by
    ``***@``: credentials written into URLs never reach a message, a repr or a log.

    Errs on the side of hiding: from each ``scheme://`` to the last ``@`` on its line."""
    return _USERINFO.sub(r"\1***@", text)


def shown_url(url: str) -> str:
    """One URL fit for a message: control characters escaped (so that a line break cannot
    split it from its ``@``), and everything before its last ``@`` after the scheme
    hidden, with or without a ``scheme://``."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in url)
    head, sep, rest = text.partition("://")
    if not sep:
        head, rest = "", head
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return head + sep + rest


class AicechunkError(Exception):
    """Root of every error raised by aicechunk.

    String arguments pass through ``redact_credentials``: a message that quotes a URL
    never shows the password written into it.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_credentials(a) if isinstance(a, str) else a for a in args))


# --- storage -------------------------------------------------------------------------


class StorageError(AicechunkError):
    """A storage operation failed.

    ``key`` is the object key (relative to the driver root) and ``driver`` a short,
    credential-free description of the driver, so a message says which object on which
    backend was involved.
    """

    def __init__(self, message: str, *, key: str | None = None, driver: str | None = None):
        self.key = key
        self.driver = None if driver is None else redact_credentials(driver)
        self.reason = redact_credentials(message)
        where = []
        if key is not None:
            where.append(f"key={key!r}")
        if self.driver is not None:
            where.append(f"driver={self.driver}")
        suffix = f" ({', '.join(where)})" if where else ""
        super().__init__(f"{self.reason}{suffix}")

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


class CommitOutcomeUnknownError(StorageError):
    """A commit's branch update (on spec v2, any change of the repo info file: a branch,
    a tag, the metadata) may or may not have landed, and reading it back to find out
    failed too. The session keeps its changes and refuses new ones; calling
    ``commit`` on it again finds out, and returns the snapshot if it had landed (so no
    change is committed twice)."""


class InjectedFault(StorageError):
    """A failure injected on purpose by ``aicechunk.testing.FaultyDriver``."""


class ChunkUploadError(StorageError):
    """A chunk written behind (``set`` returned before its upload ended) could not be
    stored: raised by the commit, flush or amend that needed it, which then writes
    nothing. The session keeps the chunk's bytes; the next commit tries again. The
    first upload error is ``__cause__``; ``key`` is its chunk file."""


class TransientStatus(StorageError):
    """A response with a status worth another try (``drivers._retry.RETRY_STATUS``): the
    drivers' retry loop catches it; after the last try it is the driver's error."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.status,))


class WireError(StorageError):
    """An HTTP answer that broke the protocol, was cut short or never came (``drivers.
    http1``): the S3 lean path retries it; after the last try it is the driver's error.
    ``stale`` says a kept-alive connection was closed before any byte of the answer
    arrived, which a request may be sent again for at once on a new connection."""

    def __init__(self, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason,), {"stale": self.stale})


class InvalidKey(StorageError):
    """A key is malformed or would reach outside the driver's root."""


class InvalidLocation(AicechunkError, ValueError):
    """A URL is malformed, or could name something other than what it seems to.

    Refused: userinfo, query strings and fragments where they have no meaning, malformed
    percent-escapes, and path segments that are empty, ``.`` or ``..`` or that hold a
    ``/`` or ``\\`` once decoded (``%2e%2e``, ``%2F``, ``%5C``). ``url`` is shown with its
    credentials redacted.
    """

    def __init__(self, url: str, problem: str):
        self.url = shown_url(url)
        self.problem = problem
        super().__init__(f"{self.url}: {problem}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.url, self.problem))


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


class InvalidIdError(FormatError, ValueError):
    """A string or byte string that is not a valid object id."""


class RepositoryError(AicechunkError):
    """A repository-level operation failed."""


class RepositoryNotFoundError(RepositoryError):
    """No repository exists at the given storage location."""


class RepositoryExistsError(RepositoryError):
    """A repository already exists where one was to be created (or another process is
    creating one there)."""


class RootNotEmptyError(RepositoryError):
    """A repository was to be created where other objects are stored already."""


class UnsupportedSpecVersionError(RepositoryError):
    """The repository follows an Icechunk spec version this library cannot read or write,
    or the operation needs another one than the repository's (the operations log or
    repository metadata on a spec version 1 repository, upgrading one that is spec
    version 2 already); the message names the version."""


class RefNotFoundError(RepositoryError):
    """A branch, tag or snapshot does not exist."""


class RefExistsError(RepositoryError):
    """A branch or tag cannot be created because the name is taken (or was a tag)."""


class InvalidRefNameError(RepositoryError):
    """A branch or tag name is not allowed."""


class SessionStateError(AicechunkError, ValueError):
    """An operation is not allowed in the session's current state (also a ValueError,
    as icechunk's are: pickling a writable session, forking one with changes, ...)."""


class FeatureFlagDisabledError(SessionStateError):
    """A feature flag of the repository (``Repository.set_feature_flag``) turns the
    operation off: ``feature_flag`` names the flag, ``feature_description`` the
    operation, as icechunk says them ("tag creation is disabled by a feature flag
    (create_tag)"); icechunk raises its ``SessionStateError`` here too."""

    def __init__(self, feature_description: str, feature_flag: str):
        self.feature_description = feature_description
        self.feature_flag = feature_flag
        super().__init__(f"{feature_description} is disabled by a feature flag ({feature_flag})")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.feature_description, self.feature_flag))


class ReadOnlyRepositoryError(RepositoryError):
    """The repository's status (``Repository.set_status``) is not online: it takes no
    commits, branch or tag changes, metadata or feature flag changes, and no new writable
    sessions, until its status is set back to online; reads go on (icechunk raises its
    ``ReadOnlyError`` here). ``status`` is the status found (``None`` once unpickled).

    Not a ``StorageError``: nothing failed in storage, and nothing is retried."""

    def __init__(self, message: str, status: RepoStatus | None = None):
        self.status = status
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self),))


class ConflictError(AicechunkError):
    """A branch update lost the race: the branch moved since the session started (or,
    for ``reset_branch(..., from_snapshot_id=)``, is not where the caller said).

    ``expected_parent`` and ``actual_parent`` are icechunk's names for the tip expected
    and the tip found; ``expected`` and ``actual`` are the same values.
    """

    def __init__(
        self, branch: str, expected: str | None, actual: str | None, *, hint: str | None = None
    ):
        self.branch = branch
        self.expected = expected
        self.actual = actual
        self.hint = "rebase and commit again" if hint is None else hint
        super().__init__(
            f"branch {branch!r} moved: expected tip {expected}, "
            f"but the branch is at {actual}; {self.hint}"
        )

    @property
    def expected_parent(self) -> str | None:
        """The snapshot the branch was expected at (icechunk's name)."""
        return self.expected

    @property
    def actual_parent(self) -> str | None:
        """The snapshot the branch was found at (icechunk's name)."""
        return self.actual

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_conflict_error,
            (type(self), self.branch, self.expected, self.actual, self.hint),
        )


def _rebuild_conflict_error(
    cls: type[ConflictError], branch: str, expected: str | None, actual: str | None, hint: str
) -> ConflictError:
    return cls(branch, expected, actual, hint=hint)


class RebaseFailedError(AicechunkError):
    """Rebasing met conflicts the solver would not resolve; nothing was changed."""

    def __init__(self, snapshot_id: str, conflicts: Sequence[Conflict]):
        self.snapshot_id = snapshot_id
        self.conflicts = list(conflicts)
        listed = "; ".join(str(c) for c in conflicts)
        super().__init__(f"rebase onto snapshot {snapshot_id} failed: {listed}")

    @property
    def snapshot(self) -> str:
        """The snapshot the rebase failed on (icechunk's name for ``snapshot_id``)."""
        return self.snapshot_id

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.snapshot_id, self.conflicts))


# --- values and payloads ---------------------------------------------------------------


class InvalidNodePathError(AicechunkError, ValueError):
    """A node path that is not an absolute, normalized zarr path (``/`` or ``/a/b``)."""

    def __init__(self, path: object, why: str):
        self.path = path
        super().__init__(f"invalid node path {path!r}: {why}")


class NodeNotFoundError(AicechunkError, KeyError):
    """No group or array at a path."""

    def __init__(self, path: str, what: str = "node"):
        self.path = path
        super().__init__(f"no {what} at {path!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class NodeExistsError(AicechunkError):
    """A group or array is already at a path (a move cannot overwrite it; icechunk's
    ``AlreadyExistsError``)."""

    def __init__(self, path: str, why: str):
        self.path = path
        self.why = why
        super().__init__(f"a node exists at {path!r}: {why}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.why))


class InvalidStoreKeyError(AicechunkError, ValueError):
    """A zarr key that no Icechunk repository can hold (neither metadata nor chunk)."""

    def __init__(self, key: str, why: str):
        self.key = key
        super().__init__(f"invalid store key {key!r}: {why}")


class InvalidMetadataError(AicechunkError, ValueError):
    """Zarr metadata that is not a valid v3 group or array document."""

    def __init__(self, path: str, why: str):
        self.path = path
        super().__init__(f"metadata for node {path!r}: {why}")


class ChunkIndexError(AicechunkError, IndexError):
    """Chunk coordinates outside an array's chunk grid, or of another rank."""

    def __init__(
        self, path: str, coords: tuple[int, ...], grid: tuple[int, ...], row: int | None = None
    ):
        self.path = path
        self.row = row  # the row of a bulk call's input, if it came from one
        where = "" if row is None else f" (row {row})"
        super().__init__(
            f"chunk {list(coords)}{where} is outside the chunk grid {list(grid)} of array {path!r}"
        )


class UnrepresentableValueError(AicechunkError, ValueError):
    """A value the on-disk format cannot hold (a chunk index beyond uint32, a shape
    beyond uint64, ...): refused when written, so that every commit can succeed."""

    def __init__(self, where: str, why: str):
        self.where = where
        super().__init__(f"{where}: {why}")


class InvalidInputError(AicechunkError, ValueError):
    """An argument no repository could accept: an unknown feature flag name, a status
    icechunk cannot set (icechunk's ``InvalidInputError``)."""


class ForkPayloadError(AicechunkError, ValueError):
    """A fork payload that is truncated, corrupted, of another format version, too large
    when decompressed, or holding changes no session could have made."""


class InvalidChangesError(AicechunkError, ValueError):
    """A change set no session could have made (the caller says where it came from)."""


class VirtualChunkError(AicechunkError):
    """A virtual chunk cannot be set or read: no declared container serves its URL, the
    container is not authorized, the object changed or is too short."""


class EventLoopError(AicechunkError, RuntimeError):
    """A blocking call of ``aicechunk.sync`` was made on the facade's own event loop
    thread, where waiting for the loop would wait forever: await the ``*_async`` twin."""


# --- warnings ------------------------------------------------------------------------


class AicechunkWarning(UserWarning):
    """Something was accepted but deserves attention: a virtual chunk container in
    ``config.yaml`` that is ignored, an authorization for a prefix no container declares."""


class UnawaitedCallWarning(AicechunkWarning):
    """A call whose effect matters (``Session.commit``, ``Repository.create``, ...) made
    a coroutine that was dropped without being awaited: it did nothing. The message names
    the call and the line that made it (see ``aicechunk.awaited``)."""
