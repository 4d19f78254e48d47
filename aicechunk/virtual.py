"""Virtual chunk containers: URL prefixes mapped to stores, and the resolver that reads
virtual chunks only from containers the user authorized.

A repository declares containers in its config (persisted in ``config.yaml`` as Icechunk
1.x writes them); a reader authorizes containers with credentials when it opens the
repository. A chunk under a declared and authorized prefix (the longest matching prefix
wins) is read through a driver made once per container (per bucket or host); any other
chunk is refused with an error naming the URL.

Prefixes and chunk locations are compared in one normal form (``drivers.urls``:
percent-escapes decoded once, dot segments and encoded slashes refused, scheme and host
in lower case), and the object read is the one that normal form names, so no spelling
of a URL reaches outside the container it matched. ``file://`` containers do not follow
symbolic links out of their directory, and http(s) reads follow a redirect only to a
URL inside an authorized http container.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aicechunk.drivers.base import ByteRange, Driver, LoopLocal, RangeRequest
from aicechunk.drivers.urls import Location, parse_location
from aicechunk.errors import (
    AicechunkWarning,
    InvalidLocation,
    StorageError,
    VirtualChunkError,
    redact_credentials,
)
from aicechunk.format.config import Tagged
from aicechunk.format.manifest import VirtualRef

__all__ = [
    "GCSCredentials",
    "S3StaticCredentials",
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

# which URL schemes each store kind serves
_SCHEMES = {
    "s3": ("s3",),
    "s3_compatible": ("s3",),
    "tigris": ("s3", "tigris"),
    "gcs": ("gs", "gcs"),
    "http": ("http", "https"),
    "local_file_system": ("file",),
    "in_memory": ("memory",),
    # declared and kept (icechunk accepts them); reading through one is refused
    "azure": ("az", "azure", "abfs"),
}


# --- store configs -----------------------------------------------------------------------


def s3_store(
    region: str | None = None,
    endpoint_url: str | None = None,
    allow_http: bool = False,
    anonymous: bool = False,
    s3_compatible: bool = False,
    force_path_style: bool = False,
    network_stream_timeout_seconds: int | None = 60,
    requester_pays: bool = False,
) -> Tagged:
    """An S3 (or S3-compatible, with ``endpoint_url``) store for a container."""
    kind = "s3_compatible" if (s3_compatible or endpoint_url) else "s3"
    return Tagged(
        kind,
        {
            "region": region,
            "endpoint_url": endpoint_url,
            "anonymous": anonymous,
            "allow_http": allow_http,
            "force_path_style": force_path_style,
            "network_stream_timeout_seconds": network_stream_timeout_seconds,
            "requester_pays": requester_pays,
        },
    )


def gcs_store(options: Mapping[str, str] | None = None) -> Tagged:
    """A GCS store (``options`` may hold ``endpoint_url`` for an emulator)."""
    return Tagged("gcs", dict(options or {}))


def http_store(options: Mapping[str, str] | None = None) -> Tagged:
    """An HTTP(S) store."""
    return Tagged("http", dict(options or {}))


def local_filesystem_store(path: str) -> Tagged:
    """A local directory store."""
    return Tagged("local_file_system", str(path))


@dataclass(frozen=True)
class VirtualChunkContainer:
    """A URL prefix whose chunks are read through ``store``."""

    url_prefix: str
    store: Tagged
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.store, Tagged) or self.store.tag not in _SCHEMES:
            raise ValueError(
                f"container {self.url_prefix!r}: store must come from s3_store, gcs_store, "
                f"http_store or local_filesystem_store, got {self.store!r}"
            )
        if not isinstance(self.url_prefix, str) or not self.url_prefix.endswith("/"):
            raise ValueError(f"container prefix {self.url_prefix!r} must end with '/'")
        try:
            scheme = self.location.scheme
        except InvalidLocation as err:
            raise ValueError(f"container prefix {err}") from None
        allowed = _SCHEMES[self.store.tag]
        if scheme not in allowed:
            raise ValueError(
                f"container {self.url_prefix!r}: a {self.store.tag} store serves "
                f"{' or '.join(s + '://' for s in allowed)} URLs, not {scheme or 'no scheme'}"
            )

    @property
    def location(self) -> Location:
        """The prefix in normal form (what locations are matched against)."""
        return parse_location(self.url_prefix)

    def to_plain(self) -> dict[str, Any]:
        """The container as ``config.yaml`` holds it."""
        return {"name": self.name, "url_prefix": self.url_prefix, "store": self.store}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> VirtualChunkContainer:
        """Rebuild from ``config.yaml`` data."""
        return cls(str(data["url_prefix"]), data["store"], data.get("name"))


@dataclass(frozen=True)
class VirtualChunkSpec:
    """One virtual reference for ``Session``/store ``set_virtual_refs``."""

    index: tuple[int, ...]
    location: str
    offset: int
    length: int
    etag_checksum: str | None = None
    last_updated_at_checksum: datetime | None = None


# --- credentials -------------------------------------------------------------------------


@dataclass(frozen=True)
class S3StaticCredentials:
    """S3 credentials for a container: static keys, anonymous, the environment's chain,
    or a callable returning fresh ``(access_key_id, secret_access_key, session_token)``."""

    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    anonymous: bool = False
    get_credentials: Callable[[], tuple[str, str, str | None]] | None = field(
        default=None, repr=False
    )


@dataclass(frozen=True)
class GCSCredentials:
    """GCS credentials for a container."""

    service_account_file: str | None = None
    anonymous: bool = False


def s3_credentials(
    *,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    anonymous: bool = False,
    from_env: bool = False,
    get_credentials: Callable[[], tuple[str, str, str | None]] | None = None,
) -> S3StaticCredentials:
    """S3 credentials for ``containers_credentials``."""
    if from_env and (access_key_id or anonymous or get_credentials):
        raise ValueError("from_env=True excludes every other kind of S3 credentials")
    return S3StaticCredentials(
        access_key_id, secret_access_key, session_token, anonymous, get_credentials
    )


def gcs_credentials(
    *, service_account_file: str | None = None, anonymous: bool = False, from_env: bool = False
) -> GCSCredentials:
    """GCS credentials for ``containers_credentials``."""
    if from_env and (service_account_file or anonymous):
        raise ValueError("from_env=True excludes other kinds of GCS credentials")
    return GCSCredentials(service_account_file, anonymous)


def containers_credentials(
    credentials: Mapping[str, S3StaticCredentials | GCSCredentials | None],
) -> dict[str, S3StaticCredentials | GCSCredentials | None]:
    """URL prefix -> credentials (``None``: the store's natural credentials)."""
    return dict(credentials)


# --- the resolver ------------------------------------------------------------------------

# Ranges of one object requested in the same event-loop turn (zarr reads chunks
# concurrently) are read with one request when they lie close together: virtual
# datasets are often many small chunks packed in one file.
_COALESCE_GAP = 1 << 16  # join ranges at most 64 KiB apart
_COALESCE_SPAN = 16 << 20  # never read more than 16 MiB in one request

_Waiter = tuple[int, int, "asyncio.Future[bytes]"]


class _Pending:
    """The range reads of one loop waiting for the end of the current turn."""

    def __init__(self) -> None:
        self.queues: dict[tuple[int, str], tuple[Driver, list[_Waiter]]] = {}
        self.scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()


class VirtualResolver:
    """Reads virtual chunks through drivers made per authorized container."""

    def __init__(
        self,
        containers: Mapping[str, VirtualChunkContainer],
        authorized: Mapping[str, Any],
    ) -> None:
        # longest prefix (most segments) first, so the most specific container wins
        self._containers = sorted(containers.values(), key=lambda c: -len(c.location.segments))
        self._forms = {c.url_prefix: c.location for c in self._containers}  # parsed once
        self._authorized = dict(authorized)
        try:
            self._authorized_forms = {
                str(parse_location(prefix)): creds for prefix, creds in authorized.items()
            }
        except InvalidLocation as err:
            raise ValueError(f"authorized container prefix {err}") from None
        declared = {str(form) for form in self._forms.values()}
        for prefix in authorized:
            if str(parse_location(prefix)) not in declared:
                warnings.warn(
                    redact_credentials(
                        f"virtual chunk access authorized for {prefix!r}, but the "
                        "repository declares no container with that prefix: it has no effect"
                    ),
                    AicechunkWarning,
                    stacklevel=3,
                )
        self._drivers: dict[tuple[str, str], Driver] = {}
        self._lock = threading.Lock()
        self._pending: LoopLocal[_Pending] = LoopLocal(_Pending)

    def __getstate__(self) -> dict[str, Any]:
        return {"containers": self._containers, "authorized": self._authorized}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            {c.url_prefix: c for c in state["containers"]}, state["authorized"]
        )

    def container_for(self, location: str) -> VirtualChunkContainer | None:
        """The container serving ``location`` (longest matching prefix), if any; none
        for a location that does not parse (see ``drivers.urls``)."""
        try:
            return self._container_at(parse_location(location))
        except InvalidLocation:
            return None

    def _container_at(self, where: Location) -> VirtualChunkContainer | None:
        if where.directory:
            return None  # a chunk is an object, never a prefix
        for container in self._containers:
            if where.within(self._forms[container.url_prefix]):
                return container
        return None

    def _credentials(self, container: VirtualChunkContainer) -> tuple[bool, Any]:
        """Whether ``container`` is authorized, and its credentials."""
        form = str(self._forms[container.url_prefix])
        return form in self._authorized_forms, self._authorized_forms.get(form)

    def _may_redirect(self, target: Location) -> bool:
        """Whether an http(s) virtual read may follow a redirect to ``target``: only into
        an authorized http container."""
        container = self._container_at(target)
        return (
            container is not None
            and container.store.tag == "http"
            and self._credentials(container)[0]
        )

    async def close(self) -> None:
        """Close the drivers made for virtual chunks in the running loop."""
        with self._lock:
            drivers = list(self._drivers.values())
        for driver in drivers:
            await driver.close()

    def _driver(
        self, container: VirtualChunkContainer, location: str, where: Location
    ) -> tuple[Driver, str]:
        authorized, creds = self._credentials(container)
        if not authorized:
            raise VirtualChunkError(
                f"virtual chunk {location}: container {container.url_prefix!r} is not "
                "authorized; pass it in authorize_virtual_chunk_access when opening"
            )
        if where.scheme == "file":
            # rooted at the container's directory, which no symbolic link may leave
            prefix = self._forms[container.url_prefix].segments
            root, key = "/" + "/".join(prefix), "/".join(where.segments[len(prefix) :])
        elif where.scheme in ("http", "https"):
            root, key = where.origin, where.path
        else:
            root, key = where.authority, where.path
        cache_key = (container.url_prefix, root)
        with self._lock:
            driver = self._drivers.get(cache_key)
            if driver is None:
                try:
                    driver = self._make_driver(container, root, creds)
                except ValueError as err:  # a store config no driver accepts
                    raise VirtualChunkError(
                        f"virtual chunk {location}: container {container.url_prefix!r} "
                        f"cannot be read: {err}"
                    ) from None
                self._drivers[cache_key] = driver
        return driver, key

    def _make_driver(self, container: VirtualChunkContainer, root: str, creds: Any) -> Driver:
        store = container.store
        options = store.value if isinstance(store.value, dict) else {}
        if store.tag in ("s3", "s3_compatible", "tigris"):
            from aicechunk.drivers.s3 import S3Credentials, S3Driver

            s3_creds = S3Credentials()
            if isinstance(creds, S3StaticCredentials):
                if creds.get_credentials is not None:
                    key_id, secret, token = creds.get_credentials()
                    s3_creds = S3Credentials(key_id, secret, token)
                else:
                    s3_creds = S3Credentials(
                        creds.access_key_id,
                        creds.secret_access_key,
                        creds.session_token,
                        creds.anonymous,
                    )
            if options.get("anonymous"):
                s3_creds = S3Credentials(anonymous=True)
            return S3Driver(
                root,
                region=options.get("region"),
                endpoint_url=options.get("endpoint_url"),
                allow_http=bool(options.get("allow_http")),
                force_path_style=bool(options.get("force_path_style")),
                credentials=s3_creds,
            )
        if store.tag == "gcs":
            from aicechunk.drivers.gcs import GCSDriver

            gcs = creds if isinstance(creds, GCSCredentials) else GCSCredentials()
            return GCSDriver(
                root,
                service_account_file=gcs.service_account_file,
                anonymous=gcs.anonymous,
                endpoint_url=options.get("endpoint_url"),
            )
        if store.tag == "http":
            from aicechunk.drivers.http import HTTPDriver

            return HTTPDriver(root, follow_redirect=self._may_redirect)
        if store.tag == "local_file_system":
            from aicechunk.drivers.local import LocalDriver

            # Every other file container's directory is its own: no path (no symbolic
            # link, no other spelling of a directory) may lead there from this one. The
            # driver finds them by identity on each read; one at or above this root
            # bars nothing.
            base = self._forms[container.url_prefix]
            others = tuple(
                "/" + "/".join(form.segments)
                for form in self._forms.values()
                if form.scheme == "file" and form != base
            )
            return LocalDriver(root, confine=True, excluded=others, encode_names=False)
        raise VirtualChunkError(f"store kind {store.tag!r} cannot serve virtual chunks here")

    async def fetch(self, ref: VirtualRef, byte_range: ByteRange | None) -> bytes:
        """The bytes of a virtual chunk (``byte_range`` is within the object)."""
        try:
            where = parse_location(ref.location)
        except InvalidLocation as err:
            raise VirtualChunkError(f"virtual chunk {err}") from None
        container = self._container_at(where)
        if container is None:
            raise VirtualChunkError(
                f"virtual chunk {ref.location}: no virtual chunk container is declared for "
                "this URL; add one with RepositoryConfig.set_virtual_chunk_container"
            )
        driver, key = self._driver(container, ref.location, where)
        try:
            if ref.etag is not None or ref.last_modified:
                info = await driver.head(key)
                if ref.etag is not None and info.version.strip('"') != ref.etag.strip('"'):
                    raise VirtualChunkError(
                        f"virtual chunk {ref.location}: the object changed (etag "
                        f"{info.version} != {ref.etag}); refusing to return different bytes"
                    )
                if ref.last_modified and info.last_modified is not None:
                    modified = int(info.last_modified.astimezone(UTC).timestamp())
                    if modified > ref.last_modified:
                        raise VirtualChunkError(
                            f"virtual chunk {ref.location}: the object was modified after "
                            "the reference was written; refusing to return different bytes"
                        )
            if isinstance(byte_range, RangeRequest) and byte_range.length > 0:
                data = await self._read_range(driver, key, byte_range)
            else:
                data = await driver.get(key, byte_range)
        except StorageError as err:
            raise VirtualChunkError(f"virtual chunk {ref.location}: {err}") from err
        expected = byte_range.length if isinstance(byte_range, RangeRequest) else None
        if expected is not None and len(data) != expected:
            raise VirtualChunkError(
                f"virtual chunk {ref.location}: expected {expected} bytes at offset "
                f"{byte_range.offset if isinstance(byte_range, RangeRequest) else 0}, the "
                f"object holds only {len(data)} there"
            )
        return data

    async def _read_range(self, driver: Driver, key: str, wanted: RangeRequest) -> bytes:
        loop = asyncio.get_running_loop()
        pending = self._pending.get()
        future: asyncio.Future[bytes] = loop.create_future()
        _, waiters = pending.queues.setdefault((id(driver), key), (driver, []))
        waiters.append((wanted.offset, wanted.offset + wanted.length, future))
        if not pending.scheduled:
            pending.scheduled = True
            loop.call_soon(self._flush, pending)
        return await future

    def _flush(self, pending: _Pending) -> None:
        queues, pending.queues, pending.scheduled = pending.queues, {}, False
        for (_, key), (driver, waiters) in queues.items():
            waiters.sort(key=lambda w: w[0])
            group = [waiters[0]]
            end = waiters[0][1]
            for waiter in waiters[1:]:
                near = waiter[0] - end <= _COALESCE_GAP
                if near and max(end, waiter[1]) - group[0][0] <= _COALESCE_SPAN:
                    group.append(waiter)
                    end = max(end, waiter[1])
                else:
                    self._start(pending, driver, key, group, end)
                    group, end = [waiter], waiter[1]
            self._start(pending, driver, key, group, end)

    def _start(
        self, pending: _Pending, driver: Driver, key: str, group: list[_Waiter], end: int
    ) -> None:
        task = asyncio.ensure_future(self._read_group(driver, key, group, end))
        pending.tasks.add(task)
        task.add_done_callback(pending.tasks.discard)

    @staticmethod
    async def _read_group(driver: Driver, key: str, group: list[_Waiter], end: int) -> None:
        start = group[0][0]
        try:
            data = await driver.get(key, RangeRequest(start, end - start))
        except BaseException as err:
            for _, _, future in group:
                if future.done():
                    continue
                if isinstance(err, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        for lo, hi, future in group:
            if not future.done():  # a short object gives short slices: the caller says so
                future.set_result(data[lo - start : hi - start])


def resolver_to_plain(resolver: VirtualResolver | None) -> dict[str, Any] | None:
    """Containers and credentials as plain data, for fork payloads.

    Static credentials travel as configured, ``None`` (natural/from-env credentials) as
    ``None``; a refreshable credentials callable cannot travel: that container arrives
    unauthorized and reads under it fail with a clear error.
    """
    if resolver is None:
        return None
    containers = [[c.url_prefix, c.store.tag, c.store.value, c.name] for c in resolver._containers]
    authorized: dict[str, Any] = {}
    for prefix, creds in resolver._authorized.items():
        if creds is None:
            authorized[prefix] = None
        elif isinstance(creds, S3StaticCredentials) and creds.get_credentials is None:
            authorized[prefix] = {
                "kind": "s3",
                "access_key_id": creds.access_key_id,
                "secret_access_key": creds.secret_access_key,
                "session_token": creds.session_token,
                "anonymous": creds.anonymous,
            }
        elif isinstance(creds, GCSCredentials):
            authorized[prefix] = {
                "kind": "gcs",
                "service_account_file": creds.service_account_file,
                "anonymous": creds.anonymous,
            }
    return {"containers": containers, "authorized": authorized}


def resolver_from_plain(data: dict[str, Any] | None) -> VirtualResolver | None:
    """Rebuild what ``resolver_to_plain`` produced."""
    if data is None:
        return None
    containers = {
        prefix: VirtualChunkContainer(prefix, Tagged(tag, value), name)
        for prefix, tag, value, name in data["containers"]
    }
    authorized: dict[str, Any] = {}
    for prefix, creds in data["authorized"].items():
        if creds is None:
            authorized[prefix] = None
        elif creds["kind"] == "s3":
            authorized[prefix] = S3StaticCredentials(
                creds["access_key_id"],
                creds["secret_access_key"],
                creds["session_token"],
                creds["anonymous"],
            )
        else:
            authorized[prefix] = GCSCredentials(creds["service_account_file"], creds["anonymous"])
    return VirtualResolver(containers, authorized)
