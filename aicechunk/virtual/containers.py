"""Virtual chunk containers: URL prefixes mapped to typed store configs, and the
credentials a reader authorizes them with.

A store config is one frozen dataclass per Icechunk object store kind. ``config.yaml``
holds it as Icechunk writes it, a YAML-tagged value (``store: !s3 {region: ...}``,
``!local_file_system /data``); ``to_tagged``/``store_from_tagged`` convert between the two,
so files written by Icechunk 1.x are read here and ours are read there.

This module sits below ``aicechunk.config`` (which imports it) and above ``format`` and
``drivers.urls``; it makes no drivers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

from aicechunk.drivers.urls import Location, parse_location
from aicechunk.errors import InvalidLocation
from aicechunk.format.config import Tagged

__all__ = [
    "AzureStoreConfig",
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
    "VirtualChunkSpec",
    "containers_credentials",
    "credentials_from_plain",
    "gcs_credentials",
    "gcs_store",
    "http_store",
    "local_filesystem_store",
    "s3_credentials",
    "s3_store",
    "store_from_tagged",
]

#: Icechunk's default stream timeout of an S3 store, written when none is given.
DEFAULT_S3_STREAM_TIMEOUT_SECONDS = 60

S3Kind = Literal["s3", "s3_compatible", "tigris"]

#: Icechunk 2.x's ``ChecksumAlgorithm`` for S3 write requests, as ``config.yaml`` spells it.
S3_CHECKSUM_ALGORITHMS = ("crc32", "crc32c", "crc64_nvme", "sha1", "sha256")


# --- store configs -----------------------------------------------------------------------


def _string_map(tag: str, value: Any) -> dict[str, str]:
    """The ``HashMap<String, String>`` options of a gcs, http or azure store."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"a {tag} store's options are a mapping of strings, got {value!r}")
    return dict(value)


def _typed(tag: str, name: str, value: Any, kinds: tuple[type, ...]) -> Any:
    if type(value) not in kinds:
        wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ValueError(f"a {tag} store's {name} must be {wanted}, got {value!r}")
    return value


@dataclass(frozen=True)
class S3StoreConfig:
    """An S3 store (``kind`` ``s3``), an S3-compatible one (``s3_compatible``, usually
    with ``endpoint_url``) or Tigris (``tigris``): Icechunk's ``S3Options``."""

    region: str | None = None
    endpoint_url: str | None = None
    anonymous: bool = False
    allow_http: bool = False
    force_path_style: bool = False
    network_stream_timeout_seconds: int | None = DEFAULT_S3_STREAM_TIMEOUT_SECONDS
    requester_pays: bool = False
    kind: S3Kind = "s3"
    # kept and written back for icechunk 2.x, which checksums its S3 writes with it;
    # virtual chunks are only read here
    checksum_algorithm: str | None = None

    def __post_init__(self) -> None:
        if self.checksum_algorithm not in (None, *S3_CHECKSUM_ALGORITHMS):
            raise ValueError(
                f"checksum_algorithm must be one of {', '.join(S3_CHECKSUM_ALGORITHMS)} or "
                f"None, got {self.checksum_algorithm!r}"
            )

    schemes: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "s3": ("s3",),
        "s3_compatible": ("s3",),
        "tigris": ("s3", "tigris"),
    }

    @property
    def tag(self) -> str:
        """The YAML tag of this store kind."""
        return self.kind

    @property
    def url_schemes(self) -> tuple[str, ...]:
        """The URL schemes this store serves."""
        return self.schemes[self.kind]

    def to_tagged(self) -> Tagged:
        """As ``config.yaml`` holds it (keys in Icechunk's order)."""
        return Tagged(
            self.kind,
            {
                "region": self.region,
                "endpoint_url": self.endpoint_url,
                "anonymous": self.anonymous,
                "allow_http": self.allow_http,
                "force_path_style": self.force_path_style,
                "network_stream_timeout_seconds": self.network_stream_timeout_seconds,
                "requester_pays": self.requester_pays,
                "checksum_algorithm": self.checksum_algorithm,
            },
        )

    @classmethod
    def from_value(cls, tag: str, value: Any) -> S3StoreConfig:
        """From a tagged value; missing keys take Icechunk's defaults, unknown ones are
        ignored (as serde does)."""
        if tag not in cls.schemes:
            raise ValueError(f"not an S3 store kind: {tag!r}")
        if not isinstance(value, Mapping):
            raise ValueError(f"a {tag} store's options are a mapping, got {value!r}")
        none, text, flag, count = type(None), (str,), (bool,), (int,)
        get = value.get
        return cls(
            region=_typed(tag, "region", get("region"), (*text, none)),
            endpoint_url=_typed(tag, "endpoint_url", get("endpoint_url"), (*text, none)),
            anonymous=_typed(tag, "anonymous", get("anonymous", False), flag),
            allow_http=_typed(tag, "allow_http", get("allow_http", False), flag),
            force_path_style=_typed(tag, "force_path_style", get("force_path_style", False), flag),
            network_stream_timeout_seconds=_typed(
                tag,
                "network_stream_timeout_seconds",
                get("network_stream_timeout_seconds", DEFAULT_S3_STREAM_TIMEOUT_SECONDS),
                (*count, none),
            ),
            requester_pays=_typed(tag, "requester_pays", get("requester_pays", False), flag),
            kind=tag,  # type: ignore[arg-type]  # checked against schemes above
            checksum_algorithm=_typed(
                tag, "checksum_algorithm", get("checksum_algorithm"), (*text, none)
            ),
        )


@dataclass(frozen=True)
class _OptionsStore:
    """A store kind configured by a string map (Icechunk's ``HashMap<String, String>``)."""

    options: Mapping[str, str] = field(default_factory=dict)

    TAG: ClassVar[str]
    SCHEMES: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _string_map(self.TAG, self.options))

    @property
    def tag(self) -> str:
        """The YAML tag of this store kind."""
        return self.TAG

    @property
    def url_schemes(self) -> tuple[str, ...]:
        """The URL schemes this store serves."""
        return self.SCHEMES

    def to_tagged(self) -> Tagged:
        """As ``config.yaml`` holds it."""
        return Tagged(self.TAG, dict(self.options))


@dataclass(frozen=True)
class GCSStoreConfig(_OptionsStore):
    """A Google Cloud Storage store (``options`` may hold ``endpoint_url`` for an
    emulator)."""

    TAG: ClassVar[str] = "gcs"
    SCHEMES: ClassVar[tuple[str, ...]] = ("gs", "gcs")


@dataclass(frozen=True)
class HTTPStoreConfig(_OptionsStore):
    """An HTTP(S) store."""

    TAG: ClassVar[str] = "http"
    SCHEMES: ClassVar[tuple[str, ...]] = ("http", "https")


@dataclass(frozen=True)
class AzureStoreConfig(_OptionsStore):
    """An Azure Blob store: declared and kept (Icechunk accepts it), but reading
    through it is refused here."""

    TAG: ClassVar[str] = "azure"
    SCHEMES: ClassVar[tuple[str, ...]] = ("az", "azure", "abfs")


@dataclass(frozen=True)
class LocalStoreConfig:
    """A local directory store: ``file://`` URLs under the container's prefix."""

    path: str

    tag: ClassVar[str] = "local_file_system"
    url_schemes: ClassVar[tuple[str, ...]] = ("file",)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise ValueError(f"a local_file_system store's path is a string, got {self.path!r}")

    def to_tagged(self) -> Tagged:
        """As ``config.yaml`` holds it."""
        return Tagged(self.tag, self.path)


@dataclass(frozen=True)
class InMemoryStoreConfig:
    """Icechunk's in-memory store: declared and kept, never read through here."""

    tag: ClassVar[str] = "in_memory"
    url_schemes: ClassVar[tuple[str, ...]] = ("memory",)

    def to_tagged(self) -> Tagged:
        """As ``config.yaml`` holds it."""
        return Tagged(self.tag, None)


StoreConfig = (
    S3StoreConfig
    | GCSStoreConfig
    | HTTPStoreConfig
    | LocalStoreConfig
    | AzureStoreConfig
    | InMemoryStoreConfig
)

_STORE_TYPES = (
    S3StoreConfig,
    GCSStoreConfig,
    HTTPStoreConfig,
    LocalStoreConfig,
    AzureStoreConfig,
    InMemoryStoreConfig,
)


def store_from_tagged(tagged: Any) -> StoreConfig:
    """The typed store config of a ``config.yaml`` tagged value; ``ValueError`` for
    anything else."""
    if not isinstance(tagged, Tagged):
        raise ValueError(f"a store config is a tagged value, got {tagged!r}")
    tag, value = tagged.tag, tagged.value
    if tag in S3StoreConfig.schemes:
        return S3StoreConfig.from_value(tag, value)
    if tag == "local_file_system":
        return LocalStoreConfig(value)
    if tag == "in_memory":
        return InMemoryStoreConfig()
    for kind in (GCSStoreConfig, HTTPStoreConfig, AzureStoreConfig):
        if tag == kind.TAG:
            return kind(_string_map(tag, value))
    raise ValueError(f"unknown store kind {tag!r}")


def s3_store(
    region: str | None = None,
    endpoint_url: str | None = None,
    allow_http: bool = False,
    anonymous: bool = False,
    s3_compatible: bool = False,
    force_path_style: bool = False,
    network_stream_timeout_seconds: int | None = DEFAULT_S3_STREAM_TIMEOUT_SECONDS,
    requester_pays: bool = False,
    checksum_algorithm: str | None = None,
) -> S3StoreConfig:
    """An S3 (or S3-compatible, with ``endpoint_url``) store for a container
    (``checksum_algorithm``: icechunk 2.x's ``ChecksumAlgorithm`` as a lower-case string,
    ``"crc32"``, ``"sha256"``...)."""
    return S3StoreConfig(
        region=region,
        endpoint_url=endpoint_url,
        anonymous=anonymous,
        allow_http=allow_http,
        force_path_style=force_path_style,
        network_stream_timeout_seconds=network_stream_timeout_seconds,
        requester_pays=requester_pays,
        kind="s3_compatible" if (s3_compatible or endpoint_url) else "s3",
        checksum_algorithm=checksum_algorithm,
    )


def gcs_store(options: Mapping[str, str] | None = None) -> GCSStoreConfig:
    """A GCS store (``options`` may hold ``endpoint_url`` for an emulator)."""
    return GCSStoreConfig(dict(options or {}))


def http_store(options: Mapping[str, str] | None = None) -> HTTPStoreConfig:
    """An HTTP(S) store."""
    return HTTPStoreConfig(dict(options or {}))


def local_filesystem_store(path: str | os.PathLike[str]) -> LocalStoreConfig:
    """A local directory store."""
    return LocalStoreConfig(os.fspath(path))


# --- containers --------------------------------------------------------------------------


@dataclass(frozen=True)
class VirtualChunkContainer:
    """A URL prefix whose chunks are read through ``store``."""

    url_prefix: str
    store: StoreConfig
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.store, _STORE_TYPES):
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
        allowed = self.store.url_schemes
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
        return {"name": self.name, "url_prefix": self.url_prefix, "store": self.store.to_tagged()}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> VirtualChunkContainer:
        """Rebuild from ``config.yaml`` data (``ValueError``/``KeyError`` if malformed)."""
        return cls(str(data["url_prefix"]), store_from_tagged(data["store"]), data.get("name"))


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

    @property
    def portable(self) -> bool:
        """Whether these credentials can travel in a fork payload (a refreshing callable
        cannot)."""
        return self.get_credentials is None

    def to_plain(self) -> dict[str, Any]:
        """Plain data for a fork payload (only when ``portable``)."""
        if not self.portable:
            raise ValueError("refreshable S3 credentials cannot be serialized")
        return {
            "kind": "s3",
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
            "anonymous": self.anonymous,
        }


@dataclass(frozen=True)
class GCSCredentials:
    """GCS credentials for a container."""

    service_account_file: str | None = None
    anonymous: bool = False

    @property
    def portable(self) -> bool:
        """Whether these credentials can travel in a fork payload (always)."""
        return True

    def to_plain(self) -> dict[str, Any]:
        """Plain data for a fork payload."""
        return {
            "kind": "gcs",
            "service_account_file": self.service_account_file,
            "anonymous": self.anonymous,
        }


Credentials = S3StaticCredentials | GCSCredentials


def credentials_from_plain(data: Mapping[str, Any] | None) -> Credentials | None:
    """Rebuild what a credentials ``to_plain`` produced (``None`` stays ``None``: the
    store's natural credentials)."""
    if data is None:
        return None
    if data["kind"] == "s3":
        return S3StaticCredentials(
            data["access_key_id"],
            data["secret_access_key"],
            data["session_token"],
            data["anonymous"],
        )
    if data["kind"] == "gcs":
        return GCSCredentials(data["service_account_file"], data["anonymous"])
    raise ValueError(f"unknown credentials kind {data['kind']!r}")


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
    credentials: Mapping[str, Credentials | None],
) -> dict[str, Credentials | None]:
    """URL prefix -> credentials (``None``: the store's natural credentials)."""
    return dict(credentials)
