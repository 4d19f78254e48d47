"""Operations only spec v2 repositories carry: the operations log and repository metadata.

Functions of a repository (anything holding an ``AssetManager`` as ``_assets``); the
``Repository`` class takes them as its methods, so that they live apart from it. Each
raises ``UnsupportedSpecVersionError``, naming the spec version, on a spec v1 repository
(which has no repo info file), where icechunk 2.x raises its format error.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, Protocol

from aicechunk.assets import AssetManager
from aicechunk.awaited import must_await
from aicechunk.errors import FormatError, ObjectNotFound
from aicechunk.format import repo_updates as ru
from aicechunk.format.flexbuf import encode_flex
from aicechunk.format.repo_info import (
    OVERWRITTEN_PREFIX,
    REPO_INFO_KEY,
    RepoInfo,
    check_backup_name,
)
from aicechunk.repo_info_store import RepoInfoStore
from aicechunk.session.rearrange import require_spec_v2

__all__ = [
    "get_metadata",
    "ops_log",
    "repo_info_store_of",
    "set_metadata",
    "update_metadata",
]


class HasAssets(Protocol):
    """A repository, as these functions see it."""

    _assets: AssetManager


def repo_info_store_of(repo: HasAssets, what: str) -> RepoInfoStore:
    """The repository's repo info file, or ``UnsupportedSpecVersionError`` naming the
    spec version of a repository without one (spec v1), where ``what`` needs it."""
    require_spec_v2(repo._assets, what)
    refs = repo._assets.refs
    assert isinstance(refs, RepoInfoStore)  # spec v2 and later keep their refs there
    return refs


async def ops_log(self: HasAssets) -> AsyncIterator[ru.Update]:
    """The repository's operations log, newest first: one ``Update`` (``kind``,
    ``updated_at``, ``backup_path``) per change of its repo info file, as icechunk's
    ``Repository.ops_log()`` yields them. Where the log was cut (past 1000 entries), the
    older entries are read from the copy under ``overwritten/`` it links to; a missing
    copy ends the log there. A link that is no single name, or that leads back to a
    copy already read, is a ``FormatError`` naming the file holding it."""
    store = repo_info_store_of(self, "the operations log")
    info: RepoInfo | None = await store.info()
    assert info is not None
    # the file's own entries go as they are (as icechunk yields them): their fields are
    # decoded only when read (``StoredUpdate``); a copy's are those older than the last
    # entry handed over
    for update in info.latest_updates:
        yield update
    last = None
    source, seen = REPO_INFO_KEY, set()
    while info is not None:
        before = info.repo_before_updates
        if before is None:
            return
        if last is None and info.latest_updates:
            last = info.latest_updates[-1].updated_at
        if check_backup_name(before, source) in seen:
            raise FormatError(source, f"the operations log loops back to {before!r}")
        seen.add(before)
        source = OVERWRITTEN_PREFIX + before
        info = await _backup(store, before)
        for update in () if info is None else info.latest_updates:
            if last is None or update.updated_at < last:
                yield update
                last = update.updated_at


async def _backup(store: RepoInfoStore, name: str) -> RepoInfo | None:
    key = OVERWRITTEN_PREFIX + name
    try:
        data = await store.driver.get(key)
    except ObjectNotFound:
        return None
    info = await store.decode(data, key)
    updates = list(info.latest_updates)
    if updates and updates[0].backup_path is None:  # as it reads in the newer log
        updates[0] = replace(updates[0], backup_path=name)
    return replace(info, latest_updates=tuple(updates))


async def get_metadata(self: HasAssets) -> dict[str, Any]:
    """The repository metadata (a JSON-like dict; ``{}`` when none was set)."""
    return copy.deepcopy(
        dict((await repo_info_store_of(self, "repository metadata").info()).metadata)
    )


async def _change_metadata(repo: HasAssets, metadata: Mapping[str, Any], merge: bool) -> RepoInfo:
    store = repo_info_store_of(repo, "repository metadata")
    given = dict(metadata)
    for key, value in given.items():
        if not isinstance(key, str):
            raise TypeError(f"repository metadata keys are str, not {type(key).__name__}")
        encode_flex(value, f"metadata[{key!r}]")  # refused before anything is written

    def change(info: RepoInfo, retry: bool) -> tuple[RepoInfo, ru.UpdateKind]:
        new = {**info.metadata, **given} if merge else given
        return replace(info, metadata=new), ru.MetadataChanged()

    return await store.update(change)


@must_await("the repository metadata was not set")
async def set_metadata(self: HasAssets, metadata: Mapping[str, Any]) -> None:
    """Replace the repository metadata with ``metadata`` (icechunk's ``set_metadata``:
    returns nothing), through the repo info file's compare-and-swap, logging a
    ``MetadataChanged`` update."""
    await _change_metadata(self, metadata, merge=False)


@must_await("the repository metadata was not updated")
async def update_metadata(self: HasAssets, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``metadata`` into the repository metadata, its keys replacing those there
    (a ``None`` value is stored as null, not a deletion, as in icechunk); the metadata
    afterwards. Logged as a ``MetadataChanged`` update."""
    return copy.deepcopy(dict((await _change_metadata(self, metadata, merge=True)).metadata))
