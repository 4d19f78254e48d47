"""The persisted repository configuration, on every spec version.

Spec version 1 keeps it in ``config.yaml``; spec version 2 in the repo info file (as a
FlexBuffer), changed through the file's compare-and-swap with a ``ConfigChanged`` entry in
the operations log, as Icechunk 2.x does. ``save_config`` is bound as a method of
``Repository`` (which holds the configuration in effect as ``_config``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Protocol

from aicechunk.assets import CONFIG_KEY, REPO_INFO_KEY, AssetManager, detected_spec_version
from aicechunk.awaited import must_await
from aicechunk.config import DEFAULT_DECOMPRESSION_LIMITS, DecompressionLimits, RepositoryConfig
from aicechunk.errors import ObjectNotFound, RepositoryNotFoundError, UnsupportedSpecVersionError
from aicechunk.format import refs as ref_format
from aicechunk.format import repo_updates as ru
from aicechunk.format.config_flex import config_of_repo_info
from aicechunk.format.header import SPEC_VERSIONS
from aicechunk.format.repo_info import RepoInfo
from aicechunk.repo_info_store import RepoInfoStore
from aicechunk.repository.creation import unsupported_message
from aicechunk.storage import Storage

__all__ = ["Probe", "fetch_config", "opened", "probe", "probe_files", "save_config"]


class HasConfig(Protocol):
    """A repository, as ``save_config`` sees it."""

    _assets: AssetManager
    _config: RepositoryConfig


async def _get(storage: Storage, key: str) -> bytes | None:
    try:
        return await storage.driver().get(key)
    except ObjectNotFound:
        return None


@dataclass(frozen=True)
class Probe:
    """What opening a repository learns in its first round trip: the spec version
    (``None``: no repository), the persisted configuration (``None``: none stored), and
    the bytes of the repo info file and of the ``main`` branch file (``None``: absent)."""

    version: int | None
    config: RepositoryConfig | None
    repo_info: bytes | None
    main_ref: bytes | None


async def probe(
    storage: Storage, limits: DecompressionLimits | None = None
) -> tuple[int | None, RepositoryConfig | None]:
    """The spec version of the repository at ``storage`` (``None``: there is none) and
    its persisted configuration (``None``: none stored): ``probe_files``'s first two."""
    found = await probe_files(storage, limits)
    return found.version, found.config


async def probe_files(storage: Storage, limits: DecompressionLimits | None = None) -> Probe:
    """The spec version, configuration and ref files of the repository at ``storage``, in
    one round trip: the repo info file, the ``main`` branch file and ``config.yaml`` are
    asked for together.

    The configuration counts only where the version says the repository holds it: a
    spec v2 repository's is in its repo info file (a ``config.yaml`` left beside it by an
    unfinished upgrade is ignored, as Icechunk ignores it). A spec version this library
    does not read comes back without a configuration, for the caller to refuse. The repo
    info file is decompressed within ``limits`` (the default ones if not given)."""
    repo_info, main_ref, yaml = await asyncio.gather(
        _get(storage, REPO_INFO_KEY),
        _get(storage, ref_format.branch_key("main")),
        _get(storage, CONFIG_KEY),
        return_exceptions=True,
    )
    # failures in the order the answers are needed: a config.yaml that cannot be read
    # matters only to a spec v1 repository
    if isinstance(repo_info, BaseException):
        raise repo_info
    if isinstance(main_ref, BaseException):
        raise main_ref
    version = detected_spec_version(repo_info, main_ref is not None)
    config = None
    if version == 1 and isinstance(yaml, BaseException):
        raise yaml
    if version == 1 and isinstance(yaml, bytes):
        config = RepositoryConfig.from_yaml(yaml, CONFIG_KEY)
    if version == 2 and repo_info is not None:
        bound = (limits or DEFAULT_DECOMPRESSION_LIMITS).bound(len(repo_info))
        flex = config_of_repo_info(repo_info, REPO_INFO_KEY, bound)
        config = None if flex is None else RepositoryConfig.from_flex(flex, REPO_INFO_KEY)
    return Probe(version, config, repo_info, main_ref)


def opened(
    storage: Storage,
    config: RepositoryConfig | None,
    found: int | None,
    persisted: RepositoryConfig | None,
) -> tuple[RepositoryConfig, int]:
    """The configuration and spec version of the repository ``probe`` found (``found``:
    its spec version, ``persisted``: its stored configuration), opened with ``config``
    set on top; ``RepositoryNotFoundError`` if there is none,
    ``UnsupportedSpecVersionError`` for a spec version this library does not read."""
    label = storage.driver().label
    if found is None:
        raise RepositoryNotFoundError(f"no repository at {label} (no 'main' branch)")
    if found not in SPEC_VERSIONS:
        raise UnsupportedSpecVersionError(unsupported_message(label, found))
    effective = persisted or RepositoryConfig.default()
    return (effective if config is None else effective.merge(config)), found


async def fetch_config(storage: Storage) -> RepositoryConfig | None:
    """The configuration persisted at ``storage``: in ``config.yaml`` (spec v1) or in the
    repo info file (spec v2); ``None`` if none is stored (or there is no repository)."""
    return (await probe(storage))[1]


@must_await("the configuration was not saved")
async def save_config(self: HasConfig) -> None:
    """Persist the configuration in effect: to ``config.yaml`` on spec v1; on spec v2
    into the repo info file, through its compare-and-swap, logging a ``ConfigChanged``
    update (as icechunk 2.x does)."""
    store = self._assets.refs
    if not isinstance(store, RepoInfoStore):
        await self._assets.driver.put(CONFIG_KEY, self._config.to_yaml())
        return
    data = self._config.to_flex()  # refused before anything is written if unstorable

    def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind] | None:
        if retry and info.config == data:
            return None  # an earlier attempt landed
        return replace(info, config=data), ru.ConfigChanged()

    await store.update(change)
