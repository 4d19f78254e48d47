"""The driver protocol: byte storage that every backend implements.

A driver stores opaque objects under string keys relative to its root. It knows nothing
of Icechunk: the layers above decide what the keys and bytes mean. Everything here is
plain data or abstract; each backend is one short module beside this one.
"""

from __future__ import annotations

import abc
import builtins
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import ClassVar, Generic, Self, TypeVar

from aicechunk.drivers._loop import LoopLocal
from aicechunk.drivers.settings import DriverConfig, DriverSettings
from aicechunk.errors import (
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
    ReadOnlyError,
    StorageError,
)

__all__ = [
    "ByteRange",
    "ConfiguredDriver",
    "Driver",
    "DriverConfig",
    "LoopLocal",  # re-exported: the virtual resolver keeps per-loop state with it
    "ObjectInfo",
    "OffsetRange",
    "RangeRequest",
    "SuffixRange",
    "http_range_header",
    "is_empty_range",
    "range_bounds",
    "slice_bytes",
    "validate_key",
    "validate_prefix",
]

S = TypeVar("S", bound=DriverSettings)

#: The longest key a driver accepts, in UTF-8 bytes (S3's and GCS's limit).
MAX_KEY_BYTES = 1024

# --- byte ranges -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """``length`` bytes starting at ``offset``."""

    offset: int
    length: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 0:
            raise ValueError(f"byte range needs offset >= 0 and length >= 0, got {self}")


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Everything from ``offset`` to the end of the object."""

    offset: int

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"byte range needs offset >= 0, got {self}")


@dataclass(frozen=True, slots=True)
class SuffixRange:
    """The last ``length`` bytes of the object (all of it if it is shorter)."""

    length: int

    def __post_init__(self) -> None:
        if self.length < 0:
            raise ValueError(f"byte range needs length >= 0, got {self}")


ByteRange = RangeRequest | OffsetRange | SuffixRange


def range_bounds(byte_range: ByteRange | None, size: int) -> tuple[int, int]:
    """Resolve a byte range against an object of ``size`` bytes to ``(start, stop)``.

    Ranges past the end are clipped, as HTTP range reads are: the result may be empty.
    """
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeRequest):
        start = min(byte_range.offset, size)
        return start, min(size, byte_range.offset + byte_range.length)
    if isinstance(byte_range, OffsetRange):
        return min(byte_range.offset, size), size
    return max(0, size - byte_range.length), size


def http_range_header(byte_range: ByteRange | None) -> str | None:
    """The HTTP ``Range`` header value of a byte range (``None``: the whole object).

    Empty ranges have no header form: check ``is_empty_range`` first.
    """
    if byte_range is None:
        return None
    if isinstance(byte_range, RangeRequest):
        return f"bytes={byte_range.offset}-{byte_range.offset + byte_range.length - 1}"
    if isinstance(byte_range, OffsetRange):
        return f"bytes={byte_range.offset}-"
    return f"bytes=-{byte_range.length}"


def is_empty_range(byte_range: ByteRange | None) -> bool:
    """Whether the range asks for no bytes at all (whatever the object's size)."""
    return isinstance(byte_range, RangeRequest | SuffixRange) and byte_range.length == 0


def slice_bytes(data: bytes, byte_range: ByteRange | None) -> bytes:
    """Apply a byte range to a whole object held in memory."""
    if byte_range is None:
        return data
    start, stop = range_bounds(byte_range, len(data))
    return data[start:stop]


# --- objects ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a driver knows about one stored object.

    ``version`` is an opaque token (an ETag, a GCS generation, a local file token) that
    changes whenever the object is replaced; pass it to ``put(if_match=...)``.
    """

    key: str
    size: int
    version: str
    last_modified: datetime | None = None


# --- keys ------------------------------------------------------------------------------


#: characters no key may contain: controls and lone surrogates
_FORBIDDEN = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
#: an empty, ``.`` or ``..`` segment anywhere in a key
_BAD_SEGMENT = re.compile(r"(?:^|/)\.{0,2}(?:/|$)")


def _check_segments(value: str, what: str, driver: str | None, allow_trailing_slash: bool) -> None:
    if not isinstance(value, str):
        raise InvalidKey(f"{what} must be a str, got {type(value).__name__}", driver=driver)
    # a str of n characters has at least n and at most 4n UTF-8 bytes: encode only if unsure
    if len(value) * 4 > MAX_KEY_BYTES and len(value.encode("utf-8", "surrogatepass")) > (
        MAX_KEY_BYTES
    ):
        raise InvalidKey(f"{what} is longer than {MAX_KEY_BYTES} bytes", key=value, driver=driver)
    if value.startswith("/"):
        raise InvalidKey(f"{what} must be relative (no leading '/')", key=value, driver=driver)
    if "\\" in value:
        raise InvalidKey(f"{what} must not contain a backslash", key=value, driver=driver)
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        ch = bad.group()
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise InvalidKey(f"{what} must be valid Unicode", key=value, driver=driver)
        raise InvalidKey(
            f"{what} must not contain control character {ch!r}", key=value, driver=driver
        )
    body = value[:-1] if allow_trailing_slash and value.endswith("/") else value
    if body and _BAD_SEGMENT.search(body):
        raise InvalidKey(f"{what} has an empty, '.' or '..' path segment", key=value, driver=driver)


def validate_key(key: str, driver: str | None = None) -> str:
    """Check that ``key`` names an object strictly inside a driver's root.

    Refused: empty keys, a leading ``/``, a trailing ``/``, empty, ``.`` or ``..``
    segments, backslashes, NUL and other control characters, and keys longer than
    ``MAX_KEY_BYTES``. Returns the key unchanged so calls can be chained.
    """
    if isinstance(key, str) and not key:
        raise InvalidKey("key must not be empty", key=key, driver=driver)
    _check_segments(key, "key", driver, allow_trailing_slash=False)
    return key


def validate_prefix(prefix: str, driver: str | None = None) -> str:
    """Check a listing prefix: empty (everything) or key-like, a trailing ``/`` allowed."""
    if prefix == "":
        return prefix
    _check_segments(prefix, "prefix", driver, allow_trailing_slash=True)
    return prefix


# --- the protocol ----------------------------------------------------------------------


class Driver(abc.ABC):
    """Byte storage behind one protocol.

    Subclasses implement the abstract coroutines. Keys are validated here, before any
    backend sees them, so no key can reach outside the driver's root. Writes and
    listing are refused with a typed error when the capability flags say so.
    """

    #: short type name used in configs and messages, e.g. ``"local"``
    type_name: ClassVar[str] = "abstract"
    supports_writes: ClassVar[bool] = True
    supports_listing: ClassVar[bool] = True
    supports_conditional_writes: ClassVar[bool] = True
    #: whether a write may be sent again after its answer was lost, so that a
    #: ``PreconditionFailed`` may answer the second try of a write whose first landed
    #: (network drivers); ``False`` where a failed condition always means nothing was
    #: written (local files, memory)
    resends_writes: ClassVar[bool] = True

    # -- description ------------------------------------------------------------------

    @abc.abstractmethod
    def describe(self) -> DriverConfig:
        """Plain data that rebuilds this driver (see ``registry.driver_from_config``).

        Never contains live clients; credentials appear only as the user configured them.
        """

    @property
    def label(self) -> str:
        """A short, credential-free name for messages, e.g. ``local:/data/repo``."""
        return self.type_name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"

    # -- reads ------------------------------------------------------------------------

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        """The object's bytes, or the requested part of them.

        Raises ``ObjectNotFound`` if there is no such object (also when the range is
        empty: an empty range has no HTTP form, so backends are asked with ``head``).
        """
        validate_key(key, self.label)
        if is_empty_range(byte_range):
            await self._head(key)
            return b""
        return await self._get(key, byte_range)

    async def get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The whole object together with its ``ObjectInfo`` (read consistently)."""
        validate_key(key, self.label)
        return await self._get_object(key)

    async def get_object_if_changed(
        self, key: str, version: str
    ) -> tuple[bytes, ObjectInfo] | None:
        """``get_object``, or ``None`` if the object is still at ``version`` (an empty
        version matches nothing): a driver that can tell without the bytes does not
        transfer them (a local file's status; an S3 GET with ``If-None-Match``).
        ``ObjectNotFound`` if there is none."""
        validate_key(key, self.label)
        return await self._get_object_if_changed(key, version)

    async def head(self, key: str) -> ObjectInfo:
        """The object's metadata without its bytes."""
        validate_key(key, self.label)
        return await self._head(key)

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        try:
            await self.head(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in lexicographic key order."""
        validate_prefix(prefix, self.label)
        if not self.supports_listing:
            raise StorageError(
                "this driver cannot list objects", key=prefix or None, driver=self.label
            )
        return self._list(prefix)

    # -- writes -----------------------------------------------------------------------

    async def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        write_once: bool = False,
    ) -> ObjectInfo:
        """Store ``data`` under ``key``, atomically: readers see the old or the new bytes.

        ``if_none_match=True`` creates only if no object exists; ``if_match=version``
        replaces only if the stored version is still ``version`` (an empty one never
        is). A failed condition raises ``PreconditionFailed`` and changes nothing.

        ``write_once=True`` is the caller's promise that the key is new (named by a random
        id) and read by nobody before ``put`` returns: a driver may then write the object
        in place instead of staging and renaming it (local files: 5-8x fewer metadata
        operations). It cannot be combined with a condition.
        """
        validate_key(key, self.label)
        self._check_writable(key)
        if if_none_match and if_match is not None:
            raise ValueError("pass at most one of if_none_match and if_match")
        if write_once:
            if if_none_match or if_match is not None:
                raise ValueError("write_once cannot be combined with a condition")
            return await self._put_once(key, bytes(data))
        if if_match == "":
            # a version a server failed to give matches nothing; S3 clients drop an empty
            # If-Match header and the write would replace whatever is there
            raise PreconditionFailed(
                "an empty version matches no object", key=key, driver=self.label
            )
        return await self._put(key, bytes(data), if_none_match=if_none_match, if_match=if_match)

    async def put_copy(self, key: str, data: bytes, source: str, version: str) -> ObjectInfo:
        """Store ``data`` under ``key`` as ``put(key, data, write_once=True)`` does, where
        ``data`` is what ``source`` holds at ``version`` (a backup of it): a driver may
        copy that object instead of writing ``data`` when it can make sure the copy is
        of that version (a local file is hard-linked, as Icechunk's local storage does)."""
        validate_key(key, self.label)
        validate_key(source, self.label)
        self._check_writable(key)
        return await self._put_copy(key, bytes(data), source, version)

    async def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error."""
        validate_key(key, self.label)
        self._check_writable(key)
        await self._delete(key)

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Delete many objects; missing ones are not an error."""
        keys = list(keys)
        for key in keys:
            validate_key(key, self.label)
        if keys:
            self._check_writable(keys[0])
            await self._delete_many(keys)

    def _check_writable(self, key: str) -> None:
        if not self.supports_writes:
            raise ReadOnlyError("this driver is read-only", key=key, driver=self.label)

    # -- lifecycle --------------------------------------------------------------------

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release the clients and connections the running event loop holds; operations
        running in other loops are not disturbed. The driver may be used again afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what backends implement ------------------------------------------------------

    @abc.abstractmethod
    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        """The bytes of ``key`` in ``byte_range`` (never an empty range: ``get`` answers
        those)."""

    @abc.abstractmethod
    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]: ...

    @abc.abstractmethod
    async def _head(self, key: str) -> ObjectInfo: ...

    async def _get_object_if_changed(
        self, key: str, version: str
    ) -> tuple[bytes, ObjectInfo] | None:
        """A ``get_object_if_changed``; by default the whole object, compared after."""
        data, info = await self._get_object(key)
        return None if version and info.version == version else (data, info)

    @abc.abstractmethod
    def _list(self, prefix: str) -> AsyncIterator[ObjectInfo]: ...

    @abc.abstractmethod
    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo: ...

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        """A ``write_once`` put; by default an ordinary atomic put."""
        return await self._put(key, data, if_none_match=False, if_match=None)

    async def _put_copy(self, key: str, data: bytes, source: str, version: str) -> ObjectInfo:
        """A ``put_copy``; by default a ``write_once`` put of ``data``."""
        return await self._put_once(key, data)

    @abc.abstractmethod
    async def _delete(self, key: str) -> None: ...

    async def _delete_many(self, keys: builtins.list[str]) -> None:
        """Default: one delete at a time; backends with batch deletes override this."""
        for key in keys:
            await self._delete(key)


class ConfiguredDriver(Driver, Generic[S]):
    """A driver whose options are one settings dataclass (every built-in driver).

    ``describe()``, rebuilding from a config (``from_config``, the registry's factory)
    and pickling all derive from ``settings``, so a driver rebuilt in another process
    has every option its original had. Subclasses set ``settings_type`` and do their
    setup in ``_start`` (their ``__init__`` builds the settings and calls it).
    """

    settings_type: ClassVar[type[DriverSettings]]
    settings: S

    def _start(self, settings: S) -> None:
        """Take ``settings`` and set up what the driver needs besides them."""
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: S) -> Self:
        """The driver for ``settings``."""
        driver = cls.__new__(cls)
        driver._start(settings)
        return driver

    @classmethod
    def from_config(cls, config: DriverConfig) -> Self:
        """Rebuild from ``describe()``."""
        settings: S = cls.settings_type.from_config(config)  # type: ignore[assignment]
        return cls.from_settings(settings)

    def describe(self) -> DriverConfig:
        """Plain data that rebuilds this driver: the settings' ``to_config()``."""
        return self.settings.to_config()

    def __reduce__(self) -> tuple[object, ...]:
        # plain settings travel, never clients, threads or loops
        return (type(self).from_settings, (self.settings,))
