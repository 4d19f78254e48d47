"""Ref names on local storage are laid out as icechunk lays them out (spec v1:
percent-encoded file names under refs/), so each library finds the other's branches and
tags, whatever their names (spec v2 keeps them in the repo info file: found there too)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import icechunk
import pytest

import aicechunk as aic
from aicechunk.drivers.local import decode_name, encode_name
from tests.oracle import SPEC_VERSIONS, create_kwargs

# names icechunk 1.1.21 accepts, with the characters its file names escape and keep
# (backslashes and control characters, which icechunk also accepts, are refused by every
# driver's key check: they mean other things on other systems)
NAMES = [
    "ü",
    "a b",
    "x%y",
    "a.b",
    "q?",
    "h#",
    "p+q",
    "tilde~",
    "star*",
    "colon:",
    "emoji🧊",
    "brack[]",
    "lt<gt>",
    "pipe|",
    "caret^",
    "grave`",
    "curly{}",
    'dq"',
    "quote'",
    "amp&",
    "-dash",
]


def icechunk_lists(path: Path) -> tuple[set[str], set[str]]:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    return set(repo.list_branches()), set(repo.list_tags())


def icechunk_makes(path: Path, spec_version: int) -> tuple[str, list[str]]:
    storage = icechunk.local_filesystem_storage(str(path))
    repo = icechunk.Repository.create(storage, **create_kwargs(spec_version))
    sid = repo.lookup_branch("main")
    for name in NAMES:
        repo.create_branch(name, sid)
        repo.create_tag(f"t{name}", sid)
    return sid, sorted(os.listdir(path / "refs")) if spec_version == 1 else []


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_we_find_icechunks_refs_and_lay_ours_out_alike(
    tmp_path: Path, spec_version: int
) -> None:
    sid, their_layout = await asyncio.to_thread(icechunk_makes, tmp_path / "ic", spec_version)
    theirs = await aic.Repository.open(aic.local_filesystem_storage(tmp_path / "ic"))
    assert theirs.spec_version == spec_version
    assert await theirs.list_branches() == {"main", *NAMES}
    assert await theirs.list_tags() == {f"t{n}" for n in NAMES}
    for name in NAMES:
        assert await theirs.lookup_branch(name) == sid
        assert await theirs.lookup_tag(f"t{name}") == sid

    ours = await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path / "ours"), spec_version=spec_version
    )
    first = await ours.lookup_branch("main")
    for name in NAMES:
        await ours.create_branch(name, first)
        await ours.create_tag(f"t{name}", first)
    if spec_version == 1:
        assert sorted(os.listdir(tmp_path / "ours" / "refs")) == their_layout

    # icechunk lists its own refs by their file names (undecoded, "%C3%BC"): it lists ours
    # exactly as it lists its own, and looks each of them up by name
    assert await asyncio.to_thread(icechunk_lists, tmp_path / "ours") == await asyncio.to_thread(
        icechunk_lists, tmp_path / "ic"
    )

    def icechunk_looks_up() -> set[str]:
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / "ours")))
        return {repo.lookup_branch(n) for n in NAMES} | {repo.lookup_tag(f"t{n}") for n in NAMES}

    assert await asyncio.to_thread(icechunk_looks_up) == {first}


@pytest.mark.parametrize("segment", [*NAMES, "", "%", "%25", "plain", "ü" * 40, "\x01\x7f"])
def test_file_names_round_trip(segment: str) -> None:
    name = encode_name(segment)
    assert decode_name(name) == segment
    assert name.isascii() and "/" not in name


async def test_a_name_too_long_once_encoded_is_a_clear_error(tmp_path: Path) -> None:
    # spec v1's ref files (spec v2 keeps ref names in the repo info file)
    repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path), spec_version=1)
    with pytest.raises(aic.AicechunkError, match="longer than a file name may be"):
        await repo.create_branch("ü" * 100, await repo.lookup_branch("main"))
    assert await repo.list_branches() == {"main"}
