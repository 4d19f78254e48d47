"""The command line, on local storage and on S3 (moto)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aicechunk.cli import main
from tests.servers import create_s3_bucket, next_bucket_name


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def demo_repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code, out, _ = run(capsys, "demo", str(tmp_path / "repo"))
    assert code == 0 and "history of main" in out
    return str(tmp_path / "repo")


def test_every_command_on_local(demo_repo: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", demo_repo)
    assert code == 0 and "Icechunk format v2" in out and "experiment" in out
    info = json.loads(run(capsys, "info", demo_repo, "--json")[1])
    assert set(info["branches"]) == {"main", "experiment"} and set(info["tags"]) == {"v1"}
    assert info["spec_version"] == 2  # the demo's repository is of the default version

    log = json.loads(run(capsys, "log", demo_repo, "--json")[1])
    assert [e["message"] for e in log] == [
        "8 stations written in parallel",
        "create temperature",
        "Repository initialized",
    ]
    text = run(capsys, "log", demo_repo, "--branch", "experiment")[1]
    assert text.splitlines()[0].endswith("an experiment on a branch")

    rows = json.loads(run(capsys, "ls", demo_repo, "--json")[1])
    array = next(r for r in rows if r["path"] == "/temperature")
    assert array["shape"] == [8, 100] and array["chunk_count"] == 8
    assert array["dtype"] == "float32" and array["dimension_names"] == ["station", "time"]
    assert "array" in run(capsys, "ls", demo_repo, "temperature", "--tag", "v1")[1]

    main_log = json.loads(run(capsys, "log", demo_repo, "--json")[1])
    diff = json.loads(run(capsys, "diff", demo_repo, main_log[1]["id"], "v1", "--json")[1])
    assert diff["updated_chunks"] == {"/temperature": 8}

    assert run(capsys, "branch", demo_repo, "create", "dev", "--from", "main")[0] == 0
    assert "dev" in run(capsys, "branch", demo_repo, "list")[1]
    assert run(capsys, "branch", demo_repo, "delete", "dev")[0] == 0
    assert run(capsys, "tag", demo_repo, "create", "v2")[0] == 0
    assert json.loads(run(capsys, "tag", demo_repo, "list", "--json")[1]).keys() == {"v1", "v2"}
    assert run(capsys, "tag", demo_repo, "delete", "v2")[0] == 0


def test_errors_are_one_line(
    tmp_path: Path, demo_repo: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["info", str(tmp_path / "missing")],
        ["tag", demo_repo, "create", "v1"],
        ["branch", demo_repo, "delete", "main"],
        ["branch", demo_repo, "create", "bad//name"],
        ["log", demo_repo, "--branch", "nope"],
        ["info", "ftp://example/x"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 1, argv
        assert err.startswith("aicechunk: error: ") and err.count("\n") == 1, err


def test_commands_on_s3(
    s3_endpoint: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import aicechunk as aic
    from tests.conftest import s3_test_storage
    from tests.test_remote_repos import write_sample

    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    repo = asyncio.run(aic.Repository.create(s3_test_storage(s3_endpoint, bucket, "cli")))
    asyncio.run(write_sample(repo))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    url = f"s3://{bucket}/cli"
    opts = ["--endpoint-url", s3_endpoint, "--region", "us-east-1", "--force-path-style"]
    info = json.loads(run(capsys, "info", url, *opts, "--json")[1])
    assert set(info["tags"]) == {"published"}
    assert "sample" in run(capsys, "log", url, *opts)[1]
    assert "/x" in run(capsys, "ls", url, *opts)[1]
    assert run(capsys, "branch", url, "create", "b2", *opts)[0] == 0
    assert "b2" in run(capsys, "branch", url, "list", *opts)[1]
    diff = json.loads(run(capsys, "diff", url, "1CECHNKREP0F1RSTCMT0", "main", *opts, "--json")[1])
    assert diff["new_arrays"] == ["/x"]


def test_python_dash_m_and_console_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aicechunk", "demo", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "forks" in done.stdout


def test_progress_only_on_a_terminal(
    demo_repo: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    code, out, err = run(capsys, "ls", demo_repo)
    assert code == 0 and err == ""  # not a terminal: no progress
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, out, err = run(capsys, "ls", demo_repo)
    assert code == 0 and "reading 2/2: /temperature" in err
    assert "/temperature" in out


def test_what_new_users_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(tmp_path / "new")
    code, out, _ = run(capsys, "init", repo)
    assert code == 0 and "created an empty repository" in out
    code, _, err = run(capsys, "create", repo)
    assert code == 1 and "already exists" in err
    assert "Repository initialized" in run(capsys, "log", repo)[1]

    demo = str(tmp_path / "demo")
    assert run(capsys, "demo", demo)[0] == 0
    # options between the URL and the path
    code, out, _ = run(capsys, "ls", demo, "--branch", "experiment", "temperature")
    assert code == 0 and "/temperature" in out and "array" in out
    code, out, err = run(capsys, "ls", demo, "nosuchpath")
    assert code == 1 and out == "" and "no group or array at /nosuchpath" in err

    code, _, err = run(capsys, "diff", demo, "nope", "main")
    assert code == 1 and "no branch, tag or snapshot is called 'nope'" in err
    code, _, err = run(capsys, "diff", demo, "1CECHNKREP0F1RSTCMT1", "main")
    assert code == 1 and "last character must be one of" in err

    code, _, err = run(capsys, "info", "ftp://host/repo")
    assert code == 1 and "s3://" in err and "gs://" in err and "file://" in err


def test_help_reads_well(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "tages" not in text and "delete tags" in text and "init" in text
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "kept in DIRECTORY" in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


@pytest.mark.attack("malformed config and metadata")
@pytest.mark.parametrize("metadata", [b"[1, 2]", b"[" * 100_000 + b"]" * 100_000, b"\xff"])
def test_ls_on_malformed_array_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], metadata: bytes
) -> None:
    """Array metadata written by another tool as a JSON list (or worse): one error line."""
    import asyncio

    import aicechunk as aic
    from aicechunk.changes.changeset import ArrayDefinition
    from aicechunk.format.ids import NodeId
    from aicechunk.format.snapshot import DimensionShape

    async def write() -> None:
        repo = await aic.Repository.create(aic.local_filesystem_storage(tmp_path / "r"))
        session = await repo.writable_session("main")
        definition = ArrayDefinition((DimensionShape(4, 2),), None, metadata)
        session.changes.add_array("/odd", NodeId.random(), definition)
        await session.commit("array metadata that is not a JSON object")

    asyncio.run(write())
    code, _, err = run(capsys, "ls", str(tmp_path / "r"))
    assert code == 1
    assert err.startswith("aicechunk: error: metadata for node '/odd'") and err.count("\n") == 1


# Names and messages that would move the cursor, recolour or rewrite the terminal if
# printed raw: C1 CSI (U+009B), NEL, line separator, zero-width and bidi characters (no
# ref holds C0 controls: those are refused even when looking a name up); the message holds
# an escape and a carriage return too.
HOSTILE_NAMES = ["x\u009b31mred", "x\u0085y", "x\u2028y", "x\u200by", "x\u202ey"]


def _made_by_another_tool(root: Path, names: list[str], message: str) -> None:
    """Refs with names aicechunk refuses to create, and a commit message with escapes,
    written as another tool could write them (the driver, under the ref layout)."""
    import asyncio

    import zarr.api.asynchronous as zas

    import aicechunk as aic
    from aicechunk.format.refs import branch_key, encode_ref, tag_key

    async def go() -> None:
        # spec v1: its ref files are where another tool writes the names
        repo = await aic.Repository.create(aic.local_filesystem_storage(root), spec_version=1)
        session = await repo.writable_session("main")
        await zas.open_group(store=session.store, mode="w")
        sid = await session.commit(message)
        driver = aic.local_filesystem_storage(root).driver()
        for name in names:
            await driver.put(branch_key(name), encode_ref(sid))
            await driver.put(tag_key(name), encode_ref(sid))
        await driver.close()

    asyncio.run(go())


@pytest.mark.attack("hostile names and keys")
def test_cli_never_prints_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repo"
    _made_by_another_tool(root, HOSTILE_NAMES, "msg \x1b[31mred\u009b0m\rgone\nnext")
    outputs = []
    for argv in (
        ["info", str(root)],
        ["branch", str(root), "list"],
        ["tag", str(root), "list"],
        ["log", str(root)],
        ["branch", str(root), "create", "new\u009bname"],  # refused: an error line
    ):
        _, out, err = run(capsys, *argv)
        outputs.append(out + err)
    for text in outputs:
        shown = text.replace("\n", "")
        assert shown.isprintable(), repr(text)
    assert "x\\x9b31mred" in outputs[0] and "x\\x9b31mred" in outputs[1]
    assert "msg \\x1b[31mred\\x9b0m\\rgone\\nnext" in outputs[3]
    # --json stays exact (and ASCII): names round-trip
    info = json.loads(run(capsys, "info", str(root), "--json")[1])
    assert set(info["branches"]) == {"main", *HOSTILE_NAMES}
