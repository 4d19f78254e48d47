"""The driver protocol: byte storage that every backend implements.

A driver stores opaque objects under string keys relative to its root. It knows nothing
of Icechunk: the layers above decide what the keys and bytes mean. Everything here is
plain data or abstract; each backend is one short module beside this one.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import builtins
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

from aicechunk.drivers.urls import parse_location
from aicechunk.errors import InvalidKey, InvalidLocation, ReadOnlyError, redact_credentials

__all__ = [
    "ByteRange",
    "Driver",
    "DriverConfig",
    "LoopLocal",
    "ObjectInfo",
    "OffsetRange",
    "RangeRequest",
    "RedactedURL",
    "Secret",
    "SuffixRange",
    "http_range_header",
    "is_empty_range",
    "slice_bytes",
    "validate_key",
    "validate_prefix",
]

#: The longest key a driver accepts, in UTF-8 bytes (S3's and GCS's limit).
MAX_KEY_BYTES = 1024

#: Plain-data description of a driver: ``{"type": "local", "root": "/data"}``. It holds no
#: live client and no event loop, so it pickles and rebuilds the driver in another process.
DriverConfig = dict[str, Any]


class Secret(str):
    """A string that never shows itself in ``repr``: credentials inside driver configs.

    It is still a ``str`` (JSON-serializable, picklable, usable by clients); only its
    representation, and so logs and error messages that format configs, hide it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"

    def __reduce__(self) -> tuple[object, ...]:
        return (Secret, (str(self),))


def secret(value: str | None) -> Secret | None:
    """Wrap a credential so that it is hidden from ``repr``."""
    return None if value is None else Secret(value)


class RedactedURL(str):
    """A URL (an endpoint) whose ``repr`` hides any ``user:password@`` written into it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_credentials(str(self)))

    def __reduce__(self) -> tuple[object, ...]:
        return (RedactedURL, (str(self),))


def check_endpoint(url: str | None, driver: str) -> None:
    """Check an endpoint URL: ``http(s)://host[:port][/path]``, else ``InvalidLocation``
    (also a ``ValueError``).

    An ``@`` anywhere is refused: S3 and GCS clients sign requests with the credentials
    they are given, so ``user:password@`` in an endpoint could only leak them, and written
    unencoded a password may hold ``/``, ``?``, ``#``, quotes or spaces that no parser can
    tell from the rest of the URL."""
    if url is None:
        return
    if not isinstance(url, str):
        raise InvalidLocation(repr(url), f"a {driver} endpoint must be a str URL")
    if "@" in url:
        raise InvalidLocation(
            url,
            f"the {driver} endpoint carries credentials (user:password and an at sign): "
            "pass them as the driver's credentials, not in the URL",
        )
    try:
        location = parse_location(url)
    except InvalidLocation as err:
        raise InvalidLocation(
            url, f"a {driver} endpoint must be an http:// or https:// URL: {err.problem}"
        ) from None
    if location.scheme not in ("http", "https"):
        raise InvalidLocation(url, f"a {driver} endpoint must be an http:// or https:// URL")


def redacted_url(value: str | None) -> RedactedURL | None:
    """Wrap a URL so that its credentials are hidden from ``repr``."""
    return None if value is None else RedactedURL(value)


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


def _check_segments(value: str, what: str, driver: str | None, allow_trailing_slash: bool) -> None:
    if not isinstance(value, str):
        raise InvalidKey(f"{what} must be a str, got {type(value).__name__}", driver=driver)
    if len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(f"{what} is longer than {MAX_KEY_BYTES} bytes", key=value, driver=driver)
    if value.startswith("/"):
        raise InvalidKey(f"{what} must be relative (no leading '/')", key=value, driver=driver)
    if "\\" in value:
        raise InvalidKey(f"{what} must not contain a backslash", key=value, driver=driver)
    for ch in value:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise InvalidKey(
                f"{what} must not contain control character {ch!r}", key=value, driver=driver
            )
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise InvalidKey(f"{what} must be valid Unicode", key=value, driver=driver)
    body = value[:-1] if allow_trailing_slash and value.endswith("/") else value
    if not body:
        return
    for segment in body.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(
                f"{what} has an empty, '.' or '..' path segment", key=value, driver=driver
            )


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


# --- event-loop-local state ------------------------------------------------------------


T = TypeVar("T")


class _LoopEnd:
    """Closers to run when an event loop shuts down (see ``close_at_loop_end``)."""

    def __init__(self) -> None:
        self.closers: dict[int, Callable[[], Awaitable[object]]] = {}
        self.runner: AsyncIterator[None] | None = None


_LOOP_ENDS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopEnd] = (
    weakref.WeakKeyDictionary()
)


async def _run_at_loop_end(end: _LoopEnd) -> AsyncIterator[None]:
    # A started async generator is finalized by the loop's shutdown_asyncgens(), which
    # asyncio.run (and asyncio.Runner) await before closing the loop: its finally block
    # is the one place a library can still await inside a loop that is ending.
    try:
        yield
    finally:
        await _close_now(end)


async def _close_now(end: _LoopEnd) -> None:
    closers, end.closers = list(end.closers.values()), {}
    for close in closers:
        with contextlib.suppress(Exception):
            await close()


@atexit.register
def _close_in_loops_still_running() -> None:
    # Loops that never end before the interpreter does (zarr's synchronous API runs one
    # on a daemon thread; spawned pool workers exit that way) get their closers run here,
    # in their own thread, instead of the garbage collector reporting unclosed sessions.
    for loop, end in list(_LOOP_ENDS.items()):
        if end.closers and loop.is_running() and not loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_close_now(end), loop).result(timeout=5)


async def close_at_loop_end(token: object, close: Callable[[], Awaitable[object]]) -> None:
    """Run ``close()`` when the running loop shuts down (``asyncio.run`` returning), so
    network sessions a user never closed are closed properly instead of being reported
    as unclosed by the garbage collector. ``forget_at_loop_end(token)`` cancels it;
    ``close`` should keep ``token`` alive (the registration is keyed by its identity)."""
    loop = asyncio.get_running_loop()
    end = _LOOP_ENDS.get(loop)
    if end is None:
        end = _LoopEnd()
        _LOOP_ENDS[loop] = end
        runner = _run_at_loop_end(end)
        await runner.__anext__()
        end.runner = runner
    end.closers[id(token)] = close


def forget_at_loop_end(token: object) -> None:
    """Cancel a ``close_at_loop_end`` registration made in the running loop."""
    with contextlib.suppress(RuntimeError):
        end = _LOOP_ENDS.get(asyncio.get_running_loop())
        if end is not None:
            end.closers.pop(id(token), None)


class LoopLocal(Generic[T]):
    """One value per running event loop, made on first use in that loop.

    Network clients and asyncio primitives belong to the loop that made them; a driver
    keeps them here so the same driver works from ``asyncio.run`` called several times,
    from zarr's synchronous API (which runs its own loop) and after unpickling.
    """

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        """The value for the running loop."""
        loop = asyncio.get_running_loop()
        try:
            return self._values[loop]
        except KeyError:
            value: T = self._factory()
            self._values[loop] = value
            return value

    def pop_current(self) -> T | None:
        """Remove and return the running loop's value, if it has one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._values.pop(loop, None)

    def items(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        """Every (loop, value) pair still alive."""
        return list(self._values.items())

    def clear(self) -> None:
        """Forget every value."""
        self._values = weakref.WeakKeyDictionary()


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

    # -- description ------------------------------------------------------------------

    @abc.abstractmethod
    def describe(self) -> DriverConfig:
        """Plain data that rebuilds this driver (see ``registry.driver_from_config``).

        Never contains live clients; credentials appear only as the user configured them.
        """

    @property
    def config(self) -> DriverConfig:
        """Same as ``describe()``."""
        return self.describe()

    @property
    def label(self) -> str:
        """A short, credential-free name for messages, e.g. ``local:/data/repo``."""
        return self.type_name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"

    # -- reads ------------------------------------------------------------------------

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        """The object's bytes, or the requested part of them.

        Raises ``ObjectNotFound`` if there is no such object.
        """
        validate_key(key, self.label)
        return await self._get(key, byte_range)

    async def get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The whole object together with its ``ObjectInfo`` (read consistently)."""
        validate_key(key, self.label)
        return await self._get_object(key)

    async def head(self, key: str) -> ObjectInfo:
        """The object's metadata without its bytes."""
        validate_key(key, self.label)
        return await self._head(key)

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        from aicechunk.errors import ObjectNotFound

        try:
            await self.head(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in lexicographic key order."""
        validate_prefix(prefix, self.label)
        if not self.supports_listing:
            from aicechunk.errors import StorageError

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
        replaces only if the stored version is still ``version``. A failed condition
        raises ``PreconditionFailed`` and changes nothing.

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
        return await self._put(key, bytes(data), if_none_match=if_none_match, if_match=if_match)

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
    async def _get(self, key: str, byte_range: ByteRange | None) -> bytes: ...

    @abc.abstractmethod
    async def _get_object(self, key: str) -> tuple[bytes, ObjectInfo]: ...

    @abc.abstractmethod
    async def _head(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def _list(self, prefix: str) -> AsyncIterator[ObjectInfo]: ...

    @abc.abstractmethod
    async def _put(
        self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None
    ) -> ObjectInfo: ...

    async def _put_once(self, key: str, data: bytes) -> ObjectInfo:
        """A ``write_once`` put; by default an ordinary atomic put."""
        return await self._put(key, data, if_none_match=False, if_match=None)

    @abc.abstractmethod
    async def _delete(self, key: str) -> None: ...

    async def _delete_many(self, keys: builtins.list[str]) -> None:
        """Default: one delete at a time; backends with batch deletes override this."""
        for key in keys:
            await self._delete(key)


def config_value(config: Mapping[str, Any], name: str, driver: str) -> Any:
    """Read a required field of a driver config with a clear error."""
    try:
        return config[name]
    except KeyError:
        raise ValueError(f"{driver} driver config needs {name!r}: got {sorted(config)}") from None
