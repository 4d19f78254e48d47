"""Shared fixtures: repositories on memory and local storage; the attack tally.

Tests that attack the library (crafted inputs, faults, hostile servers) carry
``@pytest.mark.attack("category")``. Every such test case is counted per category with its
outcome; with ``AICECHUNK_ATTACK_REPORT=path`` set, the tally is written there as the
``category | cases | failures`` table of ``docs/reliability.md``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

import aicechunk as aic
from tests.servers import (
    create_gcs_bucket,
    create_s3_bucket,
    fake_gcs_server,
    moto_server,
    next_bucket_name,
)

# Property tests run the same examples on every run (CI must not go red by chance); a run
# that explores new ones: HYPOTHESIS_PROFILE=explore python -m pytest tests/format ...
settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

StorageFactory = Callable[[], "aic.Storage"]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the whole test session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """fake-gcs-server on 127.0.0.1 for the whole test session."""
    with fake_gcs_server(tmp_path_factory.mktemp("gcs")) as endpoint:
        yield endpoint


def s3_test_storage(endpoint: str, bucket: str | None = None, prefix: str = "repo") -> aic.Storage:
    """Storage in a fresh moto bucket."""
    if bucket is None:
        bucket = next_bucket_name()
        create_s3_bucket(endpoint, bucket)
    return aic.s3_storage(
        bucket=bucket,
        prefix=prefix,
        region="us-east-1",
        endpoint_url=endpoint,
        allow_http=True,
        force_path_style=True,
        access_key_id="testing",
        secret_access_key="testing",
    )


@pytest.fixture(params=["memory", "local", "s3", "gcs"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """A factory of fresh, empty storage of each kind (S3 and GCS on local servers)."""
    counter = iter(range(1000))
    kind = request.param
    endpoint = request.getfixturevalue(f"{kind}_endpoint") if kind in ("s3", "gcs") else ""

    def make() -> aic.Storage:
        if kind == "memory":
            return aic.in_memory_storage()
        if kind == "s3":
            return s3_test_storage(endpoint)
        if kind == "gcs":
            bucket = next_bucket_name()
            create_gcs_bucket(endpoint, bucket)
            return aic.gcs_storage(bucket=bucket, prefix="repo", endpoint_url=endpoint)
        return aic.local_filesystem_storage(tmp_path / f"repo{next(counter)}")

    return make


@pytest.fixture
async def repo(make_storage: StorageFactory) -> aic.Repository:
    return await aic.Repository.create(make_storage())


RepoFactory = Callable[[], Awaitable["aic.Repository"]]


_attack_cases: Counter[str] = Counter()
_attack_failures: Counter[str] = Counter()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "attack(category): a test that attacks the library, tallied by category"
    )
    # Marks of xarray's backend tests (tests/test_xarray_backend_suite.py), which xarray's own
    # repository conftest registers; the suite module implements skip_if_param itself.
    for mark in (
        "skip_if_param(reason, condition, **params): skip the case with these parameters",
        "flaky: a test xarray marks as flaky",
        "skip_with_dask_array: a test xarray skips for dask-array backed data",
        "network: a test of xarray's that needs the network",
    ):
        config.addinivalue_line("markers", mark)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    marker = item.get_closest_marker("attack")
    if marker is None or report.skipped:
        return
    category = str(marker.args[0])
    if report.when == "call":
        _attack_cases[category] += 1
    if report.failed:
        _attack_failures[category] += 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("AICECHUNK_ATTACK_REPORT")
    if not target or not _attack_cases:
        return
    lines = ["| category | cases | failures |", "| --- | ---: | ---: |"]
    for category in sorted(_attack_cases):
        lines.append(f"| {category} | {_attack_cases[category]} | {_attack_failures[category]} |")
    Path(target).write_text("\n".join(lines) + "\n")
