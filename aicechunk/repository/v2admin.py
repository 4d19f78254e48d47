"""Administration of a repository as Icechunk 2.x has it: its status, feature flags, the
repo info file as a dict, snapshot lookups from it, and a snapshot's manifest files.

Functions of a repository (anything holding an ``AssetManager`` as ``_assets``), which
the ``Repository`` class takes as its methods, as it takes ``v2ops``'. Status and
feature flags live in the repo info file of spec v2: on a spec v1 repository each of
their calls, and ``inspect_repo_info``, raises ``UnsupportedSpecVersionError`` naming the
version, as icechunk 2.3 refuses them. ``lookup_snapshot``, ``list_manifest_files`` and
``fetch_spec_version`` work on every spec version, as in icechunk.

What a status that is not online does: ``RepoInfoStore.update`` refuses every change of
the repo info file (commits, flushes, branch and tag changes, metadata, feature flags;
``ReadOnlyRepositoryError``), ``require_online`` refuses new writable sessions; reads
and read-only sessions go on; only ``set_status`` itself passes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from aicechunk.assets import AssetManager
from aicechunk.awaited import must_await
from aicechunk.errors import InvalidInputError, RefNotFoundError
from aicechunk.format import feature_flags as ff
from aicechunk.format import repo_updates as ru
from aicechunk.format.feature_flags import FeatureFlag
from aicechunk.format.header import HEADER_SIZE, MAGIC, Compression, FileType
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import RepoInfo
from aicechunk.repo_info_store import RepoInfoStore
from aicechunk.repository.history import SnapshotInfo, parse_snapshot_id
from aicechunk.repository.v2ops import repo_info_store_of
from aicechunk.storage import Storage

__all__ = [
    "ManifestFileInfo",
    "disabled_feature_flags",
    "enabled_feature_flags",
    "feature_flags",
    "fetch_spec_version",
    "get_status",
    "inspect_repo_info",
    "list_manifest_files",
    "lookup_snapshot",
    "require_online",
    "set_feature_flag",
    "set_status",
]


class HasAssets(Protocol):
    """A repository, as these functions see it."""

    _assets: AssetManager


@dataclass(frozen=True, slots=True)
class ManifestFileInfo:
    """A manifest file a snapshot uses (icechunk's ``ManifestFileInfo``): its id, its
    size in bytes, and how many chunk references it holds."""

    id: str
    size_bytes: int
    num_chunk_refs: int


# -- status ---------------------------------------------------------------------------


async def get_status(self: HasAssets) -> ru.RepoStatus:
    """The repository's status: its availability (``RepoAvailability.online`` or
    ``read_only``), when it was set, and why (icechunk's ``get_status``)."""
    return (await repo_info_store_of(self, "the repository status").info()).status


async def require_online(repo: HasAssets, doing: str) -> None:
    """Refuse ``doing`` (icechunk's words: "Cannot create writable session") with
    ``ReadOnlyRepositoryError`` unless the repository's status is online; nothing on spec
    v1, which has no status. Reads the repo info file the caller read last (a branch
    lookup just before reads it anyway), so the check costs no request."""
    store = repo._assets.refs
    if isinstance(store, RepoInfoStore):
        status = (await store.info(fresh=False)).status
        if not status.is_online:
            raise store.read_only_error(status, doing)


@must_await("the repository status was not set")
async def set_status(self: HasAssets, status: ru.RepoStatus) -> None:
    """Set the repository's status, logged as a ``RepoStatusChanged`` update. Whatever
    the status was, this goes through: it is how a read-only repository goes back online.
    ``RepoAvailability.offline``, which icechunk 2.3 neither sets nor honours (it reads
    it as online), is refused (``InvalidInputError``)."""
    store = repo_info_store_of(self, "the repository status")
    if not isinstance(status, ru.RepoStatus):
        raise TypeError(f"a status is a RepoStatus, not {type(status).__name__}")
    if status.availability is ru.RepoAvailability.offline:
        raise InvalidInputError(
            "an offline status cannot be set: icechunk 2.3 reads it as online "
            "(set RepoAvailability.read_only to stop writes)"
        )

    def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind]:
        return replace(info, status=status), ru.RepoStatusChanged(status)

    await store.update(change, check_status=False)


# -- feature flags ----------------------------------------------------------------------


async def feature_flags(self: HasAssets) -> list[FeatureFlag]:
    """Every feature flag of the repository, by id: ``id``, ``name``,
    ``default_enabled``, ``setting`` (``None`` when not set) and ``enabled``."""
    return ff.feature_flags(await repo_info_store_of(self, "feature flags").info())


async def enabled_feature_flags(self: HasAssets) -> list[FeatureFlag]:
    """The feature flags that are on (set on, or on by default and not set)."""
    return [f for f in await feature_flags(self) if f.enabled]


async def disabled_feature_flags(self: HasAssets) -> list[FeatureFlag]:
    """The feature flags that are off."""
    return [f for f in await feature_flags(self) if not f.enabled]


@must_await("the feature flag was not set")
async def set_feature_flag(self: HasAssets, name: str, setting: bool | None) -> None:
    """Turn the operation flag ``name`` guards on (``True``) or off (``False``), or put
    the flag back to its default (``None``); logged as a ``FeatureFlagChanged`` update.
    ``InvalidInputError`` for a name that is no flag's (flags: ``move_node``,
    ``create_tag``, ``delete_tag``)."""
    store = repo_info_store_of(self, "feature flags")
    flag_id = ff.feature_flag_id(name)
    if setting is not None and not isinstance(setting, bool):
        raise TypeError(f"a feature flag setting is a bool or None, not {type(setting).__name__}")

    def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind]:
        new = ff.with_feature_flag(info, flag_id, setting)
        return new, ru.FeatureFlagChanged(flag_id, setting)

    await store.update(change)


# -- snapshots and manifests ------------------------------------------------------------


async def lookup_snapshot(self: HasAssets, snapshot_id: str | SnapshotId) -> SnapshotInfo:
    """The info of one snapshot, on a branch or not (``RefNotFoundError`` if there is no
    such snapshot). On spec v2, from the repo info file's snapshot list, as icechunk: a
    snapshot file no commit listed there is not found."""
    sid = parse_snapshot_id(snapshot_id)
    store = self._assets.refs
    if not isinstance(store, RepoInfoStore):
        return SnapshotInfo.of(await self._assets.fetch_snapshot(sid))
    for fresh in (False, True):  # listed snapshots never change: the last read may do
        found = (await store.info(fresh)).snapshot(sid)
        if found is not None:
            return SnapshotInfo(
                id=str(found.id),
                parent_id=None if found.parent_id is None else str(found.parent_id),
                written_at=found.flushed_at,
                message=found.message,
                metadata=copy.deepcopy(found.metadata),
            )
    raise RefNotFoundError(f"snapshot {sid} does not exist")


async def list_manifest_files(
    self: HasAssets, snapshot_id: str | SnapshotId
) -> list[ManifestFileInfo]:
    """The manifest files the snapshot uses, as its snapshot file lists them (any spec
    version)."""
    snapshot = await self._assets.fetch_snapshot(parse_snapshot_id(snapshot_id))
    return [
        ManifestFileInfo(str(f.id), f.size_bytes, f.num_chunk_refs) for f in snapshot.manifest_files
    ]


async def fetch_spec_version(storage: Storage) -> int | None:
    """The spec version of the repository at ``storage`` without opening it (also one
    this library does not read, to say which library can), ``None`` where there is
    none (icechunk's ``fetch_spec_version``, which answers a ``SpecVersion``, an int)."""
    return await AssetManager(storage.driver()).spec_version()


# -- the repo info file as a dict --------------------------------------------------------

_FILE_TYPES: dict[int, str] = {FileType.REPO_INFO: "repo-info"}  # the only file inspected here
_AVAILABILITY = {0: "Online", 1: "ReadOnly", 2: "Offline"}  # the schema's names


def _version(number: int) -> str:
    return f"{number}.0"


def _time(at: datetime) -> str:
    """A time as icechunk writes one: UTC, ``Z``, and 0, 3 or 6 decimals as needed."""
    at = at.astimezone(UTC)
    micros = at.microsecond
    if not micros:
        fraction = ""
    elif micros % 1000 == 0:
        fraction = f".{micros // 1000:03d}"
    else:
        fraction = f".{micros:06d}"
    return at.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def _header(data: bytes) -> dict[str, Any]:
    name = data[len(MAGIC) : HEADER_SIZE - 3].decode("utf-8", "replace").rstrip(" \0")
    app, dash, version = name.partition("-")
    header: dict[str, Any] = {"written_by": name, "app_name": app}
    if dash:
        header["app_version"] = version
    spec, file_type, compression = data[HEADER_SIZE - 3 : HEADER_SIZE]
    header["spec_version"] = _version(spec)
    header["file_type"] = _FILE_TYPES.get(file_type, str(file_type))
    header["compression"] = "zstd" if compression == Compression.ZSTD else "none"
    return header


def _update_kind(kind: ru.UpdateKind) -> dict[str, Any]:
    name = type(kind).__name__
    found: dict[str, Any] = {"type": name if name == "FeatureFlagChanged" else name + "Update"}
    if isinstance(kind, ru.RepoStatusChanged):
        status = kind.status
        found["status"] = {
            "availability": _AVAILABILITY[int(status.availability)],
            "limited_availability_reason": status.limited_availability_reason,
            "set_at": _time(status.set_at),
        }
    elif isinstance(kind, ru.FeatureFlagChanged):
        found.update(id=kind.id, new_value=kind.new_value)
    elif isinstance(kind, ru.RepoMigrated):
        found.update(from_version=_version(kind.from_version), to_version=_version(kind.to_version))
    else:
        for attr in getattr(type(kind), "__dataclass_fields__", {}):
            found[attr] = str(getattr(kind, attr))  # names and snapshot ids
    return found


def _inspected(info: RepoInfo, data: bytes) -> dict[str, Any]:
    snapshots = []
    for snap in info.snapshots:
        entry: dict[str, Any] = {"id": str(snap.id)}
        if snap.parent_id is not None:
            entry["parent_id"] = str(snap.parent_id)
        entry.update(
            flushed_at=_time(snap.flushed_at),
            message=snap.message,
            metadata=copy.deepcopy(snap.metadata),
        )
        snapshots.append(entry)
    updates = []
    for update in info.latest_updates:
        item: dict[str, Any] = {
            "update_type": _update_kind(update.kind),
            "updated_at": _time(update.updated_at),
        }
        if update.backup_path is not None:
            item["backup_path"] = update.backup_path
        updates.append(item)
    found: dict[str, Any] = {
        "header": _header(data),
        "spec_version": _version(info.spec_version),
        "branches": {name: str(info.branches[name]) for name in sorted(info.branches)},
        "tags": {name: str(info.tags[name]) for name in sorted(info.tags)},
        "deleted_tags": list(info.deleted_tags),
        "snapshots": snapshots,
        "metadata": copy.deepcopy(info.metadata),
        "latest_updates": updates,
    }
    if info.repo_before_updates is not None:
        found["repo_before_updates"] = info.repo_before_updates
    return found


async def inspect_repo_info(self: HasAssets) -> dict[str, Any]:
    """The repo info file as icechunk 2.3's ``inspect_repo_info`` shows it, for
    debugging: ``header`` (who wrote the file, its spec version, type and compression),
    ``spec_version``, ``branches``, ``tags``, ``deleted_tags``, ``snapshots``,
    ``metadata``, ``latest_updates`` and, when the log continues in an older copy,
    ``repo_before_updates``; ids and times as strings, as icechunk's JSON has them."""
    info, data, _ = await repo_info_store_of(self, "inspecting the repo info").read()
    return _inspected(info, data)
