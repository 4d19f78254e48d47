"""Metadata in the repo info file is written from the FlexBuffers it was read (or first
written) with while it is the same mapping; a new mapping is encoded and checked."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

import aicechunk as aic
from aicechunk.drivers import MemoryDriver
from aicechunk.errors import UnrepresentableValueError
from aicechunk.format import repo_updates as ru
from aicechunk.format.ids import SnapshotId
from aicechunk.format.repo_info import RepoInfo, SnapshotInfo, decode_repo_info, encode_repo_info

AT = datetime(2026, 12, 7, tzinfo=UTC)


def _info() -> RepoInfo:
    first = SnapshotId.random()
    return RepoInfo(
        branches={"main": first},
        tags={},
        snapshots=(SnapshotInfo(first, None, AT, "first", {"run": {"n": 1}, "by": "me"}),),
        status=ru.RepoStatus(ru.Availability.ONLINE, AT),
        latest_updates=(ru.Update(ru.RepoInitialized(), AT, None),),
        metadata={"project": {"name": "x"}},
    )


def test_changing_a_decoded_mapping_in_place_changes_nothing_written() -> None:
    data = encode_repo_info(_info())
    info = decode_repo_info(data)
    info.snapshots[0].metadata["run"]["n"] = 2
    info.metadata["project"]["name"] = "y"  # type: ignore[index]
    assert encode_repo_info(info) == data


def test_a_new_mapping_is_encoded_and_checked() -> None:
    info = decode_repo_info(encode_repo_info(_info()))
    snap = dataclasses.replace(info.snapshots[0], metadata={"run": {"n": 3}})
    changed = dataclasses.replace(info, snapshots=(snap,), metadata={"project": None})
    again = decode_repo_info(encode_repo_info(changed))
    assert again.snapshots[0].metadata == {"run": {"n": 3}}
    assert again.metadata == {"project": None}
    bad = dataclasses.replace(info.snapshots[0], metadata={"x": float("nan")})
    with pytest.raises(UnrepresentableValueError):
        encode_repo_info(dataclasses.replace(info, snapshots=(bad,)))


def test_an_encoded_mapping_is_not_encoded_again() -> None:
    info = _info()
    first = encode_repo_info(info)
    info.snapshots[0].metadata["by"] = "someone else"  # after it was written once
    assert encode_repo_info(info) == first


async def test_metadata_handed_out_and_changed_stays_as_stored() -> None:
    storage = aic.storage_from_driver(MemoryDriver())
    repo = await aic.Repository.create(storage, spec_version=2)
    await repo.set_metadata({"project": {"name": "x"}})
    handed = await repo.get_metadata()
    handed["project"]["name"] = "changed in place"
    await repo.create_branch("other", await repo.lookup_branch("main"))  # rewrites the file
    reopened = await aic.Repository.open(storage)
    assert await reopened.get_metadata() == {"project": {"name": "x"}}
