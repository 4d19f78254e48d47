"""What the S3 driver's requests carry and how they use connections, seen at a server.

The client is configured for little CPU per request (``drivers/s3_client.py``): no
checksums S3 does not require, a fixed User-Agent, connections kept and reused, at most
``max_concurrency`` of them. Each promise is checked where it shows: at an aiohttp proxy
in front of moto that records every request's headers and connection (moto itself closes
every connection; the proxy keeps its clients').
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from botocore.utils import parse_timestamp as botocore_parse_timestamp

from aicechunk.drivers.s3 import S3Credentials, S3Driver
from aicechunk.drivers.s3_client import parse_timestamp, user_agent
from tests.servers import FaultProxy

DATA = b"chunk bytes " * 300


def driver(proxy: FaultProxy, bucket: str, **options: int) -> S3Driver:
    return S3Driver(
        bucket,
        "repo",
        endpoint_url=proxy.url,
        allow_http=True,
        force_path_style=True,
        region="us-east-1",
        credentials=S3Credentials("testing", "testing"),
        **options,
    )


def checksum_headers(headers: dict[str, str]) -> list[str]:
    return [
        name
        for name in headers
        if name.lower().startswith("x-amz-checksum")
        or name.lower() in ("x-amz-sdk-checksum-algorithm", "x-amz-trailer", "content-md5")
    ]


async def test_puts_and_gets_carry_no_checksums_and_a_fixed_user_agent(
    proxied: tuple[FaultProxy, str],
) -> None:
    proxy, bucket = proxied
    async with driver(proxy, bucket) as s3:
        await s3.put("chunks/a", DATA, write_once=True)
        await s3.put("refs/b", DATA, if_none_match=True)
        info = await s3.put("refs/b", DATA + b"!", if_match=(await s3.head("refs/b")).version)
        assert info.version
        assert await s3.get("chunks/a") == DATA
        assert await s3.get("refs/b") == DATA + b"!"
    methods = [method for method, _ in proxy.seen]
    assert methods.count("PUT") == 3 and methods.count("GET") == 2
    for method, headers in proxy.seen:
        assert checksum_headers(headers) == [], method
        assert headers["User-Agent"].startswith(user_agent())  # botocore adds its extras
    assert user_agent().startswith("aicechunk ")


async def test_connections_are_kept_and_reused(proxied: tuple[FaultProxy, str]) -> None:
    proxy, bucket = proxied
    async with driver(proxy, bucket) as s3:
        for i in range(20):
            await s3.put(f"chunks/{i}", DATA, write_once=True)
        for i in range(20):
            assert await s3.get(f"chunks/{i}") == DATA
    assert proxy.requests == 40
    assert len(set(proxy.peers)) == 1  # one connection, one after another


async def test_requests_in_flight_and_connections_stay_within_max_concurrency(
    proxied: tuple[FaultProxy, str],
) -> None:
    proxy, bucket = proxied
    async with driver(proxy, bucket) as s3:
        await asyncio.gather(*(s3.put(f"chunks/{i}", DATA, write_once=True) for i in range(6)))
    proxy.peers.clear()
    proxy.most_in_flight = 0
    # every GET waits a little at the proxy, so many would be in flight if allowed
    proxy.hang_seconds = 0.05
    proxy.faults = ["hang"] * 30
    async with driver(proxy, bucket, max_concurrency=3) as s3:
        got = await asyncio.gather(*(s3.get(f"chunks/{i % 6}") for i in range(30)))
    assert got == [DATA] * 30
    assert proxy.most_in_flight == 3
    assert len(set(proxy.peers)) == 3


@pytest.mark.parametrize(
    "value",
    [
        "Mon, 07 Dec 2026 04:59:01 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "2026-12-07T04:59:01.000Z",
        "2026-12-07T04:59:01Z",
        "2026-12-07T04:59:01.123456+02:00",
        "2026-12-07T04:59:01",  # no zone: botocore's answer, whatever it is
        "1700000000",
        "1700000000.5",
    ],
)
def test_timestamps_parse_as_botocore_parses_them(value: str) -> None:
    ours, theirs = parse_timestamp(value), botocore_parse_timestamp(value)
    assert ours == theirs
    assert (ours.tzinfo is None) == (theirs.tzinfo is None)


async def test_object_times_are_aware_and_agree_between_head_and_list(
    proxied: tuple[FaultProxy, str],
) -> None:
    proxy, bucket = proxied
    before = datetime.now(UTC).replace(microsecond=0)
    async with driver(proxy, bucket) as s3:
        await s3.put("chunks/a", DATA)
        head = await s3.head("chunks/a")
        (listed,) = [info async for info in s3.list("chunks/")]
    assert head.last_modified is not None and listed.last_modified is not None
    assert head.last_modified.tzinfo is not None and listed.last_modified.tzinfo is not None
    assert head.last_modified == listed.last_modified.replace(microsecond=0)
    assert abs((head.last_modified - before).total_seconds()) < 120
