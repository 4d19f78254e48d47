"""The local driver's ``put_copy``: a hard link of the version read, the bytes otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aicechunk.drivers import LocalDriver


async def test_an_unchanged_source_is_linked_not_written(tmp_path: Path) -> None:
    driver = LocalDriver(tmp_path)
    read = await driver.put("repo", b"one")
    await driver.put_copy("overwritten/x", b"one", "repo", read.version)
    assert os.stat(tmp_path / "overwritten" / "x").st_ino == os.stat(tmp_path / "repo").st_ino
    # the conditional replace renames a new file over the name: the link keeps the old
    await driver.put("repo", b"two", if_match=read.version)
    assert (tmp_path / "overwritten" / "x").read_bytes() == b"one"
    assert os.stat(tmp_path / "overwritten" / "x").st_nlink == 1
    await driver.close()


async def test_a_source_replaced_since_it_was_read_is_not_linked(tmp_path: Path) -> None:
    driver = LocalDriver(tmp_path)
    read = await driver.put("repo", b"one")
    await driver.put("repo", b"two", if_match=read.version)
    await driver.put_copy("overwritten/x", b"one", "repo", read.version)
    assert (tmp_path / "overwritten" / "x").read_bytes() == b"one"
    assert os.stat(tmp_path / "overwritten" / "x").st_ino != os.stat(tmp_path / "repo").st_ino
    assert os.stat(tmp_path / "repo").st_nlink == 1  # the link made and found wrong is gone
    await driver.close()


async def test_no_links_possible_writes_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "links not allowed here")

    monkeypatch.setattr(os, "link", refuse)
    driver = LocalDriver(tmp_path)
    read = await driver.put("repo", b"one")
    info = await driver.put_copy("overwritten/x", b"one", "repo", read.version)
    assert (tmp_path / "overwritten" / "x").read_bytes() == b"one"
    assert info.size == 3
    await driver.close()


async def test_a_confined_driver_links_within_its_root(tmp_path: Path) -> None:
    driver = LocalDriver(tmp_path, confine=True, fsync=True)
    read = await driver.put("repo", b"one")
    await driver.put_copy("overwritten/x", b"one", "repo", read.version)
    assert os.stat(tmp_path / "overwritten" / "x").st_ino == os.stat(tmp_path / "repo").st_ino
    await driver.close()
