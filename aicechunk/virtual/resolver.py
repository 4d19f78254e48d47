"""The resolver that reads virtual chunks only from containers the user authorized.

A repository declares containers in its config; a reader authorizes containers with
credentials when it opens the repository. A chunk under a declared and authorized prefix
(the longest matching prefix wins) is read through a driver made once per container (per
bucket or host); any other chunk is refused with an error naming the URL.

Prefixes and chunk locations are compared in one normal form (``drivers.urls``:
percent-escapes decoded once, dot segments and encoded slashes refused, scheme and host
in lower case), and the object read is the one that normal form names, so no spelling
of a URL reaches outside the container it matched. ``file://`` containers do not follow
symbolic links out of their directory, and http(s) reads follow a redirect only to a
URL inside an authorized http container.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from datetime import UTC
from typing import Any, Protocol, runtime_checkable

from aicechunk.drivers.base import ByteRange, Driver, RangeRequest
from aicechunk.drivers.local import LocalDriver
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
from aicechunk.virtual.batching import CoalescingReader
from aicechunk.virtual.containers import (
    Credentials,
    GCSCredentials,
    GCSStoreConfig,
    HTTPStoreConfig,
    LocalStoreConfig,
    S3StaticCredentials,
    S3StoreConfig,
    VirtualChunkContainer,
    credentials_from_plain,
    store_from_tagged,
)

__all__ = ["ChunkFetcher", "VirtualResolver"]


@runtime_checkable
class ChunkFetcher(Protocol):
    """What a session needs to read virtual chunks: the bytes of a reference, and
    whether a declared container serves a URL. ``to_plain`` lets a fork carry it."""

    async def fetch(self, ref: VirtualRef, byte_range: ByteRange | None) -> bytes:
        """The bytes of ``ref`` (``byte_range`` is within the object)."""
        ...

    def container_for(self, location: str) -> VirtualChunkContainer | None:
        """The container serving ``location``, if any."""
        ...

    def to_plain(self) -> dict[str, Any]:
        """Plain (msgpack-able) data that rebuilds the fetcher in another process."""
        ...


class VirtualResolver:
    """Reads virtual chunks through drivers made per authorized container."""

    def __init__(
        self,
        containers: Mapping[str, VirtualChunkContainer],
        authorized: Mapping[str, Credentials | None],
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
        self._reader = CoalescingReader()

    # -- serialization --------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"containers": self._containers, "authorized": self._authorized}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            {c.url_prefix: c for c in state["containers"]}, state["authorized"]
        )

    def to_plain(self) -> dict[str, Any]:
        """Containers and credentials as plain data, for fork payloads.

        Static credentials travel as configured, ``None`` (natural/from-env credentials)
        as ``None``; a refreshable credentials callable cannot travel: that container
        arrives unauthorized and reads under it fail with a clear error.
        """
        containers = []
        for c in self._containers:
            tagged = c.store.to_tagged()
            containers.append([c.url_prefix, tagged.tag, tagged.value, c.name])
        authorized: dict[str, Any] = {}
        for prefix, creds in self._authorized.items():
            if creds is None:
                authorized[prefix] = None
            elif isinstance(creds, S3StaticCredentials | GCSCredentials) and creds.portable:
                authorized[prefix] = creds.to_plain()
        return {"containers": containers, "authorized": authorized}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> VirtualResolver:
        """Rebuild what ``to_plain`` produced."""
        containers = {
            prefix: VirtualChunkContainer(prefix, store_from_tagged(Tagged(tag, value)), name)
            for prefix, tag, value, name in data["containers"]
        }
        authorized = {
            prefix: credentials_from_plain(creds) for prefix, creds in data["authorized"].items()
        }
        return cls(containers, authorized)

    # -- containers and authorization -----------------------------------------------------

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

    def _credentials(self, container: VirtualChunkContainer) -> tuple[bool, Credentials | None]:
        """Whether ``container`` is authorized, and its credentials."""
        form = str(self._forms[container.url_prefix])
        return form in self._authorized_forms, self._authorized_forms.get(form)

    def _may_redirect(self, target: Location) -> bool:
        """Whether an http(s) virtual read may follow a redirect to ``target``: only into
        an authorized http container."""
        container = self._container_at(target)
        return (
            container is not None
            and isinstance(container.store, HTTPStoreConfig)
            and self._credentials(container)[0]
        )

    # -- drivers --------------------------------------------------------------------------

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

    def _make_driver(
        self, container: VirtualChunkContainer, root: str, creds: Credentials | None
    ) -> Driver:
        # The S3, GCS and HTTP drivers are imported on first use, as drivers.registry
        # does: their clients (aiobotocore, aiohttp) are optional and slow to import.
        store = container.store
        if isinstance(store, S3StoreConfig):
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
            if store.anonymous:
                s3_creds = S3Credentials(anonymous=True)
            return S3Driver(
                root,
                region=store.region,
                endpoint_url=store.endpoint_url,
                allow_http=store.allow_http,
                force_path_style=store.force_path_style,
                credentials=s3_creds,
            )
        if isinstance(store, GCSStoreConfig):
            from aicechunk.drivers.gcs import GCSDriver

            gcs = creds if isinstance(creds, GCSCredentials) else GCSCredentials()
            return GCSDriver(
                root,
                service_account_file=gcs.service_account_file,
                anonymous=gcs.anonymous,
                endpoint_url=store.options.get("endpoint_url"),
            )
        if isinstance(store, HTTPStoreConfig):
            from aicechunk.drivers.http import HTTPDriver

            return HTTPDriver(root, follow_redirect=self._may_redirect)
        if isinstance(store, LocalStoreConfig):
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

    # -- reads ----------------------------------------------------------------------------

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
            await _check_unchanged(driver, key, ref)
            if isinstance(byte_range, RangeRequest) and byte_range.length > 0:
                data = await self._reader.read(driver, key, byte_range)
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


async def _check_unchanged(driver: Driver, key: str, ref: VirtualRef) -> None:
    """Refuse a reference whose object changed since it was written (its etag or
    modification time checksum)."""
    if ref.etag is None and not ref.last_modified:
        return
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
