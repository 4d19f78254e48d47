"""The lean S3 path and settings left to the environment: where botocore addresses a
bucket (endpoint, region) is learnt once per process, but a driver opened after the
environment changed (``AWS_ENDPOINT_URL``, ``AWS_REGION`` ...) must follow it, as botocore's
own client and icechunk (which reads the environment when its storage is made) do."""

from __future__ import annotations

import pytest

from aicechunk.drivers.s3 import S3Credentials, S3Driver
from tests.drivers.test_s3_lean import access_key, by_botocore
from tests.servers import create_s3_bucket, fault_proxy, next_bucket_name

DATA = b"environment" * 10


def env_driver(bucket: str) -> S3Driver:
    return S3Driver(
        bucket,
        "repo",
        allow_http=True,
        force_path_style=True,
        region="us-east-1",
        credentials=S3Credentials("testing", "testing"),
    )


async def test_a_driver_opened_after_the_endpoint_changed_in_the_environment_follows_it(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    with fault_proxy(s3_endpoint) as (_, first), fault_proxy(s3_endpoint) as (_, second):
        monkeypatch.setenv("AWS_ENDPOINT_URL", first.url)
        async with env_driver(bucket) as s3:
            await s3.put("a", DATA)
        assert [m for m, h in first.seen if not by_botocore(h)] == ["PUT"]
        monkeypatch.setenv("AWS_ENDPOINT_URL", second.url)
        seen_first = len(first.seen)
        async with env_driver(bucket) as s3:
            await s3.put("b", DATA)
            assert await s3.get("a") == DATA
        assert len(first.seen) == seen_first  # nothing more went to the old endpoint
        assert [m for m, h in second.seen if not by_botocore(h)] == ["PUT", "GET"]


def env_chain_driver(endpoint: str, bucket: str) -> S3Driver:
    return S3Driver(
        bucket,
        "repo",
        endpoint_url=endpoint,
        allow_http=True,
        force_path_style=True,
        region="us-east-1",
    )


async def test_a_driver_opened_after_the_keys_changed_in_the_environment_signs_with_them(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with fault_proxy(s3_endpoint) as (_, proxy):
        for key in ("FIRSTKEY", "SECONDKEY"):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key.lower())
            del proxy.seen[:]
            async with env_chain_driver(proxy.url, bucket) as s3:
                await s3.put(key, DATA)
                assert [info.key async for info in s3.list()][-1:] != []
            assert {access_key(h) for _, h in proxy.seen} == {key}
