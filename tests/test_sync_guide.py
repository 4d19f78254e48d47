"""The Icechunk 1.0 migration guide's examples run with ``import aicechunk.sync as
icechunk`` (tests/sync_guide.py quotes them), S3 on moto: as a plain script with the
default start method (fork on Linux) and with spawn, from ``asyncio.run`` code on a worker
thread, and straight from a coroutine on a running loop (as a notebook cell)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import create_s3_bucket, next_bucket_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mode", ["plain", "spawn", "thread", "loop"])
def test_migration_guide_examples_run_unchanged(s3_endpoint: str, mode: str) -> None:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from tests.sync_guide import main; main({s3_endpoint!r}, {bucket!r}, {mode!r})",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"ok {mode}" in done.stdout
