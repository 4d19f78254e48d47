"""The repository configuration users build and persist (in ``config.yaml`` on spec v1,
in the repo info file on spec v2)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, overload

from aicechunk.errors import AicechunkWarning, FormatError, redact_credentials
from aicechunk.format.config import decode_config_yaml, encode_config_yaml
from aicechunk.format.config_flex import decode_config_flex, encode_config_flex
from aicechunk.format.header import MAX_PAYLOAD
from aicechunk.virtual.containers import VirtualChunkContainer

__all__ = [
    "INLINE_CHUNK_THRESHOLD_BYTES",
    "NUM_UPDATES_PER_REPO_INFO_FILE",
    "READ_AHEAD_BYTES",
    "READ_AHEAD_CHUNKS",
    "READ_CONCURRENCY",
    "UPLOAD_CONCURRENCY",
    "WRITE_BEHIND_BYTES",
    "CachingConfig",
    "DecompressionLimits",
    "RepoInfoUpdates",
    "RepoUpdateRetries",
    "RepositoryConfig",
]

#: Chunks of at most this many bytes are stored inside manifests (Icechunk's default).
INLINE_CHUNK_THRESHOLD_BYTES = 512
#: How many chunk reads one ``get_partial_values`` call runs at once.
READ_CONCURRENCY = 64
#: Write-behind: the most bytes of chunks a writable session holds while they upload
#: (``set`` returns once the chunk is queued; commit waits for every upload). 0: off.
WRITE_BEHIND_BYTES = 64 * 1024**2
#: Write-behind: how many chunk uploads of one session run at once.
UPLOAD_CONCURRENCY = 64
#: Read-ahead: how many chunks after a sequential run of reads of one array a session
#: fetches before they are asked for. 0: off.
READ_AHEAD_CHUNKS = 32
#: Read-ahead: the most bytes of chunks fetched ahead and not yet read.
READ_AHEAD_BYTES = 64 * 1024**2
#: Spec v2: how many updates the repo info file keeps in its operations log before the
#: older ones are left to the backups in ``overwritten/`` (Icechunk 2.x's default).
NUM_UPDATES_PER_REPO_INFO_FILE = 1000
#: Spec v2: how a change of the repo info file that lost the race is retried when
#: ``repo_update_retries`` is unset: (max tries, initial backoff ms, max backoff ms).
REPO_UPDATE_RETRIES = (100, 50, 30_000)
#: ... and the defaults of each field left unset in a ``repo_update_retries`` that is set
#: (Icechunk's storage retry defaults, which that setting's fields fall back to).
STORAGE_RETRIES = (10, 100, 180_000)


@dataclass(frozen=True)
class CachingConfig:
    """Bounds of the in-memory caches, in Icechunk's units (``None``: the default).

    Snapshots are weighed by their node count, manifests by their chunk references,
    transaction logs by their changes; chunk and attribute caches are in bytes.
    """

    num_snapshot_nodes: int | None = None
    num_chunk_refs: int | None = None
    num_transaction_changes: int | None = None
    num_bytes_attributes: int | None = None
    num_bytes_chunks: int | None = None

    DEFAULTS: ClassVar[dict[str, int]] = {
        "num_snapshot_nodes": 500_000,
        "num_chunk_refs": 15_000_000,
        "num_transaction_changes": 0,
        "num_bytes_attributes": 0,
        "num_bytes_chunks": 0,
    }

    def resolved(self, name: str) -> int:
        """The value in effect for ``name`` (the default when unset)."""
        value = getattr(self, name)
        return self.DEFAULTS[name] if value is None else int(value)


@dataclass(frozen=True)
class RepoUpdateRetries:
    """How often, and how patiently, a spec v2 change retries when another writer replaced
    the repo info file first (Icechunk's ``RepoUpdateRetryConfig(default=
    StorageRetriesSettings(...))``, stored as ``repo_update_retries: {default: ...}``).

    As in Icechunk 2.x, the first 5 retries are immediate; then up to ``max_tries - 5``
    more follow after an exponential backoff from ``initial_backoff_ms`` (doubling, at
    most ``max_backoff_ms``, plus up to as much again of random jitter). A field left
    ``None`` takes Icechunk's storage retry default (10 tries, 100 ms, 180 s); leaving the
    whole setting unset gives 100 tries, 50 ms and 30 s.
    """

    max_tries: int | None = None
    initial_backoff_ms: int | None = None
    max_backoff_ms: int | None = None

    def __post_init__(self) -> None:
        for name, least in (("max_tries", 1), ("initial_backoff_ms", 0), ("max_backoff_ms", 0)):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < least
            ):
                raise ValueError(f"repo_update_retries.{name} must be an integer >= {least}")

    def resolved(self) -> tuple[int, int, int]:
        """(max tries, initial backoff ms, max backoff ms) in effect."""
        values = (self.max_tries, self.initial_backoff_ms, self.max_backoff_ms)
        return tuple(  # type: ignore[return-value]
            d if v is None else v for v, d in zip(values, STORAGE_RETRIES, strict=True)
        )


@dataclass(frozen=True)
class RepoInfoUpdates:
    """What a spec v2 repository's changes of the repo info file follow: how many updates
    its operations log keeps (``num_updates_per_repo_info_file``) and how a change that
    lost the race is retried (``repo_update_retries``), resolved from the configuration."""

    per_file: int = NUM_UPDATES_PER_REPO_INFO_FILE
    max_tries: int = REPO_UPDATE_RETRIES[0]
    initial_backoff_ms: int = REPO_UPDATE_RETRIES[1]
    max_backoff_ms: int = REPO_UPDATE_RETRIES[2]


@dataclass(frozen=True)
class DecompressionLimits:
    """How far a compressed file (snapshot, manifest, transaction log) or fork payload may
    expand: a guard against decompression bombs.

    A file of ``n`` stored bytes may decompress to at most
    ``min(max_bytes, max(min_bytes, n * max_ratio))`` bytes; beyond that decoding stops
    with ``FormatError`` (``ForkPayloadError`` for fork payloads) before more memory is
    taken. Real files expand 5-70x (measured on manifests of a million references), so
    the ratio leaves a wide margin while bounding a crafted 32 KB file to ``min_bytes``.
    ``max_bytes`` cannot exceed ``MAX_PAYLOAD`` (2 GiB, the largest flatbuffer).
    """

    max_bytes: int = 1 << 30
    max_ratio: int = 1024
    min_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_ratio", "min_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DecompressionLimits.{name} must be a positive integer")
        if self.max_bytes > MAX_PAYLOAD:
            raise ValueError(
                f"DecompressionLimits.max_bytes cannot exceed {MAX_PAYLOAD} (the format's limit)"
            )

    def bound(self, stored_size: int) -> int:
        """The most bytes ``stored_size`` compressed bytes may decompress to."""
        return min(self.max_bytes, max(self.min_bytes, stored_size * self.max_ratio))


CONFIG_FILE = "config.yaml"

#: The limits used where no repository configuration is at hand (fork payloads).
DEFAULT_DECOMPRESSION_LIMITS = DecompressionLimits()


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is not None:
                out[key] = _merge(base.get(key), value)
        return out
    return override if override is not None else base


class _IntSetting:
    """An integer setting of ``RepositoryConfig`` (``None``: unset, the default), stored
    under its attribute name (``aicechunk_<name>`` for ``ours``, a setting Icechunk does
    not have and ignores) and checked to be at least ``minimum`` when set."""

    def __init__(
        self, minimum: int, doc: str, *, ours: bool = False, maximum: int | None = None
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.ours = ours
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = f"aicechunk_{name}" if self.ours else name

    @overload
    def __get__(self, config: None, owner: type | None = None) -> _IntSetting: ...
    @overload
    def __get__(self, config: RepositoryConfig, owner: type | None = None) -> int | None: ...
    def __get__(
        self, config: RepositoryConfig | None, owner: type | None = None
    ) -> _IntSetting | int | None:
        if config is None:
            return self
        value = config._data.get(self.name)
        return None if value is None else int(value)

    def __set__(self, config: RepositoryConfig, value: int | None) -> None:
        if value is not None and (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < self.minimum
            or (self.maximum is not None and value > self.maximum)
        ):
            most = "" if self.maximum is None else f" and at most {self.maximum}"
            raise ValueError(f"{self.name} must be an integer of at least {self.minimum}{most}")
        config._data[self.name] = value


class RepositoryConfig:
    """Repository settings; every field unset (``None``) means "the default".

    Stored as the mapping Icechunk writes, so settings this class does not model yet
    survive a load and save unchanged.
    """

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = copy.deepcopy(data) if data else {}
        self._ignored: set[str] = set()  # containers already warned about

    @classmethod
    def default(cls) -> RepositoryConfig:
        """A configuration with nothing set."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (Icechunk's shape)."""
        return copy.deepcopy(self._data)

    def is_default(self) -> bool:
        """Whether nothing is set."""

        def empty(v: Any) -> bool:
            return v is None or (isinstance(v, dict) and all(empty(x) for x in v.values()))

        return all(empty(v) for v in self._data.values())

    def merge(self, other: RepositoryConfig) -> RepositoryConfig:
        """This configuration with everything ``other`` sets on top."""
        return RepositoryConfig(_merge(self._data, other._data))

    def to_yaml(self) -> bytes:
        """``config.yaml`` bytes, as Icechunk writes them."""
        return encode_config_yaml(self._data)

    @classmethod
    def from_yaml(cls, data: bytes, name: str = "config.yaml") -> RepositoryConfig:
        """Parse ``config.yaml`` bytes."""
        return cls(decode_config_yaml(data, name))

    def to_flex(self) -> bytes:
        """The FlexBuffer a spec v2 repo info file stores, as Icechunk 2.x writes it."""
        return encode_config_flex(self._data)

    @classmethod
    def from_flex(cls, data: bytes, name: str = "repo") -> RepositoryConfig:
        """Parse the configuration FlexBuffer of the spec v2 repo info file ``name``
        (``FormatError`` naming it, also for an aicechunk setting out of bounds)."""
        config = cls(decode_config_flex(data, name))
        try:
            config.decompression_limits()
        except FormatError as err:
            raise FormatError(name, f"configuration: {err.problem}") from None
        return config

    inline_chunk_threshold_bytes = _IntSetting(
        0,
        "Chunks of at most this many bytes are stored inside manifests (``None``: "
        "``INLINE_CHUNK_THRESHOLD_BYTES``, 512).",
    )
    get_partial_values_concurrency = _IntSetting(
        1,
        "How many chunk reads one ``get_partial_values`` call runs at once (``None``: "
        "``READ_CONCURRENCY``, 64).",
    )
    write_behind_bytes = _IntSetting(
        0,
        "Write-behind (an aicechunk setting): the most bytes of chunks a writable session "
        "holds while they upload; ``set`` returns once a chunk is queued and commit waits "
        "for every upload (``None``: ``WRITE_BEHIND_BYTES``, 64 MiB; 0: off).",
        ours=True,
    )
    read_ahead_chunks = _IntSetting(
        0,
        "Read-ahead (an aicechunk setting): how many chunks a session fetches ahead of a "
        "sequential run of reads of one array, within ``READ_AHEAD_BYTES`` (64 MiB) "
        "(``None``: ``READ_AHEAD_CHUNKS``, 32; 0: off).",
        ours=True,
    )

    num_updates_per_repo_info_file = _IntSetting(
        0,
        "Spec v2: how many updates the repo info file keeps in its operations log before "
        "older ones are read from the backups in ``overwritten/`` (``None``: "
        "``NUM_UPDATES_PER_REPO_INFO_FILE``, 1,000, as in Icechunk; at most 65,535).",
        maximum=0xFFFF,
    )

    @property
    def repo_update_retries(self) -> RepoUpdateRetries | None:
        """Spec v2: how a change of the repo info file that lost the race to another
        writer is retried (``None``: Icechunk's defaults, see ``RepoUpdateRetries``)."""
        raw = self._data.get("repo_update_retries")
        default = raw.get("default") if isinstance(raw, dict) else None
        if not isinstance(default, dict):
            return None
        names = {f.name for f in fields(RepoUpdateRetries)}
        try:
            return RepoUpdateRetries(**{k: v for k, v in default.items() if k in names})
        except ValueError as err:
            raise FormatError(CONFIG_FILE, str(err)) from None

    @repo_update_retries.setter
    def repo_update_retries(self, value: RepoUpdateRetries | None) -> None:
        self._data["repo_update_retries"] = None if value is None else {"default": asdict(value)}

    def repo_info_updates(self) -> RepoInfoUpdates:
        """The spec v2 repo info settings in effect (``FormatError`` for a stored value
        out of bounds)."""
        per_file = self.num_updates_per_repo_info_file
        retries = self.repo_update_retries
        tries = REPO_UPDATE_RETRIES if retries is None else retries.resolved()
        if per_file is not None and not 0 <= per_file <= 0xFFFF:
            raise FormatError(CONFIG_FILE, f"num_updates_per_repo_info_file is {per_file}")
        return RepoInfoUpdates(
            NUM_UPDATES_PER_REPO_INFO_FILE if per_file is None else per_file, *tries
        )

    @property
    def caching(self) -> CachingConfig | None:
        """Cache bounds (``None``: all defaults)."""
        raw = self._data.get("caching")
        if not isinstance(raw, dict):
            return None
        names = {f.name for f in fields(CachingConfig)}
        return CachingConfig(**{k: v for k, v in raw.items() if k in names})

    @caching.setter
    def caching(self, value: CachingConfig | None) -> None:
        self._data["caching"] = None if value is None else asdict(value)

    @property
    def max_decompressed_bytes(self) -> int | None:
        """The most bytes one snapshot, manifest or transaction log may decompress to
        (``None``: ``DecompressionLimits.max_bytes``, 1 GiB). An aicechunk setting:
        Icechunk ignores it."""
        value = self._data.get("aicechunk_max_decompressed_bytes")
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise FormatError(
            CONFIG_FILE, f"aicechunk_max_decompressed_bytes is not an integer: {value!r}"
        )

    @max_decompressed_bytes.setter
    def max_decompressed_bytes(self, value: int | None) -> None:
        if value is not None:
            DecompressionLimits(max_bytes=value)  # the one place the bounds are checked
        self._data["aicechunk_max_decompressed_bytes"] = value

    def decompression_limits(self) -> DecompressionLimits:
        """The decompression limits in effect."""
        value = self.max_decompressed_bytes
        if value is None:
            return DEFAULT_DECOMPRESSION_LIMITS
        try:
            return DecompressionLimits(max_bytes=value)
        except ValueError as err:
            raise FormatError(CONFIG_FILE, str(err)) from None

    # -- virtual chunk containers --------------------------------------------------------

    @property
    def virtual_chunk_containers(self) -> dict[str, VirtualChunkContainer]:
        """Declared containers by URL prefix."""
        raw = self._data.get("virtual_chunk_containers") or {}
        containers = {}
        for key, value in raw.items():
            if not isinstance(value, dict):
                continue
            url_prefix = value.get("url_prefix")
            if not isinstance(url_prefix, str):
                raise FormatError(
                    "config.yaml",
                    f"virtual_chunk_containers[{key!r}]: url_prefix must be a string, "
                    f"got {url_prefix!r}",
                )
            # as icechunk: a prefix is completed with "/", and a container whose prefix is
            # not a URL its store serves (icechunk's old default containers "s3", "gcs",
            # "az", "tigris", "file") is ignored with a warning, never an error
            if not url_prefix.endswith("/"):
                url_prefix += "/"
            try:
                container = VirtualChunkContainer.from_plain({**value, "url_prefix": url_prefix})
            except (KeyError, TypeError, ValueError) as err:
                if key in self._ignored:
                    continue
                self._ignored.add(key)
                warnings.warn(
                    redact_credentials(
                        f"config.yaml: virtual chunk container {key!r} is ignored: {err}"
                    ),
                    AicechunkWarning,
                    stacklevel=2,
                )
                continue
            containers[url_prefix] = container
        return containers

    def set_virtual_chunk_container(self, container: VirtualChunkContainer) -> None:
        """Declare (or replace) the container for ``container.url_prefix``."""
        raw = self._data.get("virtual_chunk_containers") or {}
        raw[container.url_prefix] = container.to_plain()
        self._data["virtual_chunk_containers"] = raw

    def clear_virtual_chunk_containers(self) -> None:
        """Remove every declared container."""
        self._data["virtual_chunk_containers"] = {}

    def get_virtual_chunk_container(self, url_prefix: str) -> VirtualChunkContainer | None:
        """The container declared for exactly ``url_prefix``."""
        return self.virtual_chunk_containers.get(url_prefix)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RepositoryConfig) and _merge({}, self._data) == _merge(
            {}, other._data
        )

    def __repr__(self) -> str:
        return f"RepositoryConfig({redact_credentials(repr(self._data))})"
