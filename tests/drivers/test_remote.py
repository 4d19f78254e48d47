"""What the remote drivers promise beyond the conformance suite: retries, secrets,
portability of their configs, and the GCS precondition quirk."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from collections.abc import Iterator

import pytest
from aiohttp import web

import aicechunk as aic
from aicechunk.drivers.gcs import GCSDriver
from aicechunk.drivers.http import HTTPDriver
from aicechunk.drivers.s3 import S3Credentials, S3Driver
from aicechunk.errors import (
    InvalidLocation,
    ObjectNotFound,
    PreconditionFailed,
    ReadOnlyError,
    StorageError,
)
from tests.servers import create_gcs_bucket, free_port, serve_app


@contextlib.contextmanager
def flaky_server(
    failures: int, then: int = 404, body: bytes = b""
) -> Iterator[tuple[str, list[str]]]:
    """Answers 503 to the first ``failures`` requests, then ``then``; logs every request."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        if len(seen) <= failures:
            return web.Response(status=503, body=b"")
        return web.Response(status=then, body=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    with serve_app(app) as url:
        yield url, seen


async def test_http_retries_transient_errors() -> None:
    with flaky_server(failures=2) as (url, seen):
        async with HTTPDriver(url) as driver:
            with pytest.raises(ObjectNotFound):
                await driver.get("refs/branch.main/ref.json")
    assert seen == ["GET /refs/branch.main/ref.json"] * 3


@pytest.mark.parametrize("kind", ["http", "s3", "gcs"])
async def test_gives_up_after_max_attempts_naming_the_key(kind: str) -> None:
    with flaky_server(failures=100) as (url, seen):
        driver: HTTPDriver | S3Driver | GCSDriver
        if kind == "http":
            driver = HTTPDriver(url, max_attempts=3)
        elif kind == "s3":
            driver = S3Driver(
                "bucket",
                endpoint_url=url,
                allow_http=True,
                force_path_style=True,
                region="us-east-1",
                credentials=S3Credentials("k", "s"),
                max_attempts=3,
            )
        else:
            driver = GCSDriver("bucket", endpoint_url=url, max_attempts=3)
        async with driver:
            with pytest.raises(StorageError) as info:
                await driver.get("refs/branch.main/ref.json")
    assert info.value.key == "refs/branch.main/ref.json"
    assert "refs/branch.main/ref.json" in str(info.value)
    assert len(seen) == 3


async def test_s3_retries_transient_errors() -> None:
    with flaky_server(failures=2) as (url, seen):
        driver = S3Driver(
            "bucket",
            endpoint_url=url,
            allow_http=True,
            force_path_style=True,
            region="us-east-1",
            credentials=S3Credentials("k", "s"),
        )
        async with driver:
            with pytest.raises(ObjectNotFound):
                await driver.head("a/key")
    assert seen == ["HEAD /bucket/a/key"] * 3


async def test_gcs_retries_transient_errors() -> None:
    with flaky_server(failures=2) as (url, seen):
        async with GCSDriver("bucket", endpoint_url=url) as driver:
            with pytest.raises(ObjectNotFound):
                await driver.head("a/key")
    assert len(seen) == 3 and all("a%2Fkey" in s or "a/key" in s for s in seen)


async def test_http_is_read_only_and_cannot_list() -> None:
    driver = HTTPDriver("http://127.0.0.1:9")
    with pytest.raises(ReadOnlyError):
        await driver.put("k", b"x")
    with pytest.raises(StorageError, match="cannot list"):
        driver.list("refs/")


def test_secrets_never_shown() -> None:
    storage = aic.s3_storage(
        bucket="b",
        endpoint_url="http://127.0.0.1:9",
        allow_http=True,
        access_key_id="AKIAEXAMPLEKEY",
        secret_access_key="TOPSECRETVALUE",
        session_token="SESSIONTOKENVALUE",
    )
    driver = storage.driver()
    for text in (repr(storage), str(storage.config), repr(driver), repr(driver.describe())):
        for secret in ("AKIAEXAMPLEKEY", "TOPSECRETVALUE", "SESSIONTOKENVALUE"):
            assert secret not in text
    clone = pickle.loads(pickle.dumps(storage)).driver()
    assert isinstance(clone, S3Driver)
    assert clone.settings.credentials.secret_access_key == "TOPSECRETVALUE"


async def test_errors_do_not_carry_secrets(s3_endpoint: str) -> None:
    storage = aic.s3_storage(
        bucket="no-such-bucket",
        endpoint_url=s3_endpoint,
        allow_http=True,
        force_path_style=True,
        region="us-east-1",
        access_key_id="AKIAEXAMPLEKEY",
        secret_access_key="TOPSECRETVALUE",
    )
    driver = storage.driver()
    async with driver:
        with pytest.raises(StorageError) as info:
            await driver.put("k", b"x")
    assert "TOPSECRETVALUE" not in str(info.value)
    assert "no-such-bucket" in str(info.value)


def test_plain_http_endpoint_needs_allow_http() -> None:
    with pytest.raises(ValueError, match="allow_http"):
        aic.s3_storage(bucket="b", endpoint_url="http://127.0.0.1:9")


async def test_gcs_preconditions_hold_on_the_emulator(gcs_endpoint: str) -> None:
    """fake-gcs-server ignores preconditions on media uploads; ours must still hold."""
    create_gcs_bucket(gcs_endpoint, "precondition-bucket")
    async with GCSDriver("precondition-bucket", endpoint_url=gcs_endpoint) as driver:
        big = b"x" * 300_000
        first = await driver.put("ref", big, if_none_match=True)
        with pytest.raises(PreconditionFailed):
            await driver.put("ref", b"y" * 300_000, if_none_match=True)
        await driver.put("ref", b"z", if_match=first.version)
        with pytest.raises(PreconditionFailed):
            await driver.put("ref", b"w", if_match=first.version)
        assert await driver.get("ref") == b"z"


async def test_gcs_emulator_host_from_environment(
    gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_gcs_bucket(gcs_endpoint, "env-bucket")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    storage = aic.gcs_storage(bucket="env-bucket", prefix="p")
    driver = storage.driver()
    async with driver:
        await driver.put("k", b"v")
        assert await driver.get("k") == b"v"


async def test_s3_wrong_credentials_give_a_clear_error() -> None:
    denial = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidAccessKeyId</Code>"
        b"<Message>The AWS Access Key Id you provided does not exist.</Message></Error>"
    )
    with flaky_server(failures=0, then=403, body=denial) as (url, _):
        driver = S3Driver(
            "bucket",
            endpoint_url=url,
            allow_http=True,
            force_path_style=True,
            region="us-east-1",
            credentials=S3Credentials("WRONGKEY", "WRONGSECRET"),
        )
        async with driver:
            with pytest.raises(StorageError, match=r"access denied .*credentials") as info:
                await driver.get("refs/branch.main/ref.json")
    assert info.value.key == "refs/branch.main/ref.json"
    assert "WRONGSECRET" not in str(info.value)


@pytest.mark.parametrize("kind", ["s3", "gcs", "http"])
async def test_stopped_server_is_a_clear_error_not_a_hang(kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    driver: S3Driver | GCSDriver | HTTPDriver
    if kind == "s3":
        driver = S3Driver(
            "b",
            endpoint_url=url,
            allow_http=True,
            region="us-east-1",
            credentials=S3Credentials("k", "s"),
            max_attempts=2,
            connect_timeout=1,
            read_timeout=1,
        )
    elif kind == "gcs":
        driver = GCSDriver("b", endpoint_url=url, max_attempts=2, timeout=1)
    else:
        driver = HTTPDriver(url, max_attempts=2, timeout=1)
    async with driver:
        with pytest.raises(StorageError) as info:
            await asyncio.wait_for(driver.get("some/key"), 30)
    assert info.value.key == "some/key"


async def test_s3_without_credentials_says_how_to_give_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask the network
    with flaky_server(failures=0, then=200, body=b"") as (url, seen):
        driver = S3Driver(
            "bucket", endpoint_url=url, allow_http=True, force_path_style=True, region="us-east-1"
        )
        async with driver:
            with pytest.raises(StorageError, match="no AWS credentials found") as info:
                await driver.get("refs/branch.main/ref.json")
    assert "anonymous=True" in str(info.value) and "access_key_id" in str(info.value)
    assert seen == []  # refused before any request


@pytest.mark.attack("malformed config and metadata")
@pytest.mark.parametrize(
    "endpoint",
    [
        "notaurl",
        "127.0.0.1:9000",
        "ftp://127.0.0.1:9000",
        "http://",
        "http:///x",
        "https://h:99999",
    ],
)
def test_endpoints_that_are_not_http_urls_are_refused_at_construction(endpoint: str) -> None:
    for make in (
        lambda: aic.s3_storage(bucket="b", endpoint_url=endpoint, allow_http=True),
        lambda: aic.gcs_storage(bucket="b", endpoint_url=endpoint, anonymous=True),
    ):
        with pytest.raises(InvalidLocation) as info:
            make()
        assert isinstance(info.value, ValueError)
        assert "endpoint" in str(info.value) or "URL" in str(info.value)
    for make_bucket in (
        lambda: aic.s3_storage(bucket="B_/..", endpoint_url="http://127.0.0.1:9", allow_http=True),
        lambda: aic.gcs_storage(bucket="a/b", anonymous=True),
    ):
        with pytest.raises(InvalidLocation, match="bare bucket name"):
            make_bucket()


@pytest.mark.attack("transport faults")
async def test_client_construction_errors_are_storage_errors(tmp_path: object) -> None:
    s3 = S3Driver(
        "b",
        region="not a region!",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        allow_http=True,
        max_attempts=1,
    )
    gcs = GCSDriver("b", service_account_file="/nonexistent/sa.json", max_attempts=1)
    for driver, match in ((s3, "cannot create the S3 client"), (gcs, "cannot create the GCS")):
        async with driver:
            with pytest.raises(StorageError, match=match):
                await driver.get("x")
