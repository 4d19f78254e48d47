"""Spec v2 files written by icechunk 2.3.0, read by our decoders and written back.

icechunk runs in a subprocess, so these tests read exactly the files it leaves on disk: this
interpreter when it has ``icechunk==2.3.0`` (the test extra installs it on Python >= 3.12),
else ``AICECHUNK_PY312`` (or ``/work/venv312/bin/python``), a Python >= 3.12 with
``icechunk==2.3.0``, ``zarr`` and ``numpy``. Without one these tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aicechunk.format import repo_updates as ru
from aicechunk.format.header import HEADER_SIZE, spec_version_of
from aicechunk.format.ids import FIRST_SNAPSHOT_ID, SnapshotId
from aicechunk.format.manifest import decode_manifest
from aicechunk.format.repo_info import (
    OVERWRITTEN_PREFIX,
    RepoInfo,
    backup_name,
    decode_repo_info,
    encode_repo_info,
    push_update,
)
from aicechunk.format.snapshot import ArrayNodeData, decode_snapshot, encode_snapshot
from aicechunk.format.transaction_log import decode_transaction_log

SCRIPT = Path(__file__).with_name("icechunk2_script.py")
PIP = "pip install -e '.[test]' on Python >= 3.12"


def _python() -> str | None:
    """A Python with icechunk 2.3.0: this one if it has it, else ``AICECHUNK_PY312``'s."""
    for candidate in (
        sys.executable,
        os.environ.get("AICECHUNK_PY312"),
        "/work/venv312/bin/python",
    ):
        if not candidate or not Path(candidate).exists():
            continue
        done = subprocess.run(
            [candidate, "-c", "import icechunk; print(icechunk.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0 and done.stdout.strip() == "2.3.0":
            return candidate
    return None


PYTHON = _python()
pytestmark = pytest.mark.skipif(
    PYTHON is None,
    reason=f"no Python with icechunk 2.3.0 (set AICECHUNK_PY312, or: {PIP})",
)


def icechunk(command: str, root: Path) -> dict[str, Any]:
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, str(SCRIPT), command, str(root)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    return found


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("ic2") / "repo"
    return root, icechunk("write", root)


def test_repo_info_reads_as_icechunk_reports(written: tuple[Path, dict[str, Any]]) -> None:
    root, expected = written
    data = (root / "repo").read_bytes()
    assert spec_version_of(data) == 2
    info = decode_repo_info(data, "repo")
    assert {k: str(v) for k, v in info.branches.items()} == expected["branches"]
    assert {k: str(v) for k, v in info.tags.items()} == expected["tags"]
    assert info.deleted_tags == ("gone",)
    assert dict(info.metadata) == expected["metadata"]
    for sid, snap in expected["snapshots"].items():
        found = info.snapshot(SnapshotId.from_str(sid))
        assert found is not None
        assert (str(found.parent_id) if found.parent_id else None) == snap["parent"]
        assert found.message == snap["message"]
        assert found.metadata == snap["metadata"]
    kinds = [type(u.kind).__name__.removesuffix("Update") for u in info.latest_updates]
    assert kinds == expected["ops"]
    assert info.latest_updates[0].backup_path is None
    for update in info.latest_updates[1:]:
        assert update.backup_path is not None
        backup = decode_repo_info((root / OVERWRITTEN_PREFIX / update.backup_path).read_bytes())
        assert backup.latest_updates[0].updated_at == update.updated_at


def test_every_file_decodes(written: tuple[Path, dict[str, Any]]) -> None:
    root, expected = written
    for sid, snap in expected["snapshots"].items():
        snapshot = decode_snapshot((root / "snapshots" / sid).read_bytes(), f"snapshots/{sid}")
        assert snapshot.spec_version == 2 and str(snapshot.id) == sid
        assert snapshot.parent_id is None  # v2 keeps parents in the repo info file
        assert [n.path for n in snapshot.nodes] == snap["paths"]
        assert snapshot.message == snap["message"] and snapshot.metadata == snap["metadata"]
        for node in snapshot.nodes:
            if isinstance(node.node_data, ArrayNodeData):
                assert node.node_data.shape[0].num_chunks == 2  # 8 elements, chunks of 4
                assert node.node_data.dimension_names == ("t",)
        log = decode_transaction_log((root / "transactions" / sid).read_bytes())
        assert log.spec_version == 2 and str(log.id) == sid
        if snap["message"] == "moved":
            assert [(m.from_path, m.to_path, m.is_array) for m in log.moved_nodes] == [
                ("/a", "/b", False),
                ("/a/x", "/b/x", True),
            ]
    manifests = list((root / "manifests").iterdir())
    assert manifests
    for path in manifests:
        manifest = decode_manifest(path.read_bytes(), f"manifests/{path.name}")
        assert manifest.spec_version == 2 and manifest.num_chunk_refs == 2


def test_reencoding_gives_icechunks_bytes(written: tuple[Path, dict[str, Any]]) -> None:
    """The repo info files and the snapshots come out byte for byte as icechunk wrote
    them, but for the 24 header bytes naming the writer."""
    root, _ = written
    repo_files = [root / "repo", *(root / "overwritten").iterdir()]
    for path in repo_files:
        data = path.read_bytes()
        assert encode_repo_info(decode_repo_info(data))[HEADER_SIZE:] == data[HEADER_SIZE:]
    for path in (root / "snapshots").iterdir():
        data = path.read_bytes()
        assert encode_snapshot(decode_snapshot(data))[HEADER_SIZE:] == data[HEADER_SIZE:]


def test_icechunk_reads_what_we_write(written: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """Our snapshots replace icechunk's, and our repo info file (with a tag added as a
    writer would add it) replaces icechunk's; icechunk 2.3.0 reads it all."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(written[0], root)
    expected = written[1]
    for path in (root / "snapshots").iterdir():
        path.write_bytes(encode_snapshot(decode_snapshot(path.read_bytes())))
    info = decode_repo_info((root / "repo").read_bytes())
    at = info.latest_updates[0].updated_at + timedelta(milliseconds=1)
    name = backup_name(at, b"\x07" * 12)
    (root / OVERWRITTEN_PREFIX / name).write_bytes((root / "repo").read_bytes())
    log, before = push_update(info, ru.TagCreated("ours"), at, name)
    tags = {**info.tags, "ours": FIRST_SNAPSHOT_ID}
    new = RepoInfo(
        info.branches,
        tags,
        info.snapshots,
        info.status,
        log,
        info.deleted_tags,
        info.metadata,
        before,
        info.config,
        info.enabled_feature_flags,
        info.disabled_feature_flags,
    )
    (root / "repo").write_bytes(encode_repo_info(new))
    seen = icechunk("read", root)
    assert seen["tags"] == {**expected["tags"], "ours": str(FIRST_SNAPSHOT_ID)}
    assert seen["branches"] == expected["branches"]
    assert seen["snapshots"] == expected["snapshots"]
    assert seen["ops"] == ["TagCreated", *expected["ops"]]
    assert seen["values"] == expected["values"] and seen["spec_version"] == 2
