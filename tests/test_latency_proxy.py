"""The benchmark's latency proxy: a delay per request (concurrent requests delayed side
by side, not one after another), bodies passed unchanged, a bandwidth cap, connections
kept alive and counted. Timings are checked on the proxy's own records (when each
request started and ended), not on this machine's wall clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from aicechunk.drivers.s3 import S3Credentials, S3Driver
from tests.latency_proxy import LatencyProxy, latency_proxy
from tests.servers import create_s3_bucket, next_bucket_name


@pytest.fixture(scope="module")
def proxy(s3_endpoint: str) -> Iterator[LatencyProxy]:
    with latency_proxy(s3_endpoint) as handle:
        yield handle


def _driver(url: str, bucket: str) -> S3Driver:
    return S3Driver(
        bucket,
        "lp",
        region="us-east-1",
        endpoint_url=url,
        allow_http=True,
        force_path_style=True,
        credentials=S3Credentials("testing", "testing"),
    )


async def _put_and_get(proxy: LatencyProxy, s3_endpoint: str, n: int, size: int) -> list[bytes]:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    driver = _driver(proxy.url, bucket)
    try:
        blobs = [bytes([i % 251]) * size + i.to_bytes(4, "big") for i in range(n)]
        proxy.reset()
        await asyncio.gather(*(driver.put(f"k{i}", b) for i, b in enumerate(blobs)))
        return list(await asyncio.gather(*(driver.get(f"k{i}") for i in range(n))))
    finally:
        await driver.close()


def test_delay_is_per_request_and_concurrent(proxy: LatencyProxy, s3_endpoint: str) -> None:
    proxy.configure(delay=0.1, bandwidth=0)
    try:
        asyncio.run(_put_and_get(proxy, s3_endpoint, 10, 100))
        records = proxy.stats()["records"]
    finally:
        proxy.configure(delay=0)
    records = [r for r in records if r[2] == "GET"]
    assert len(records) == 10
    # every request took at least the delay ...
    assert all(end - start >= 0.1 for start, end, *_ in records)
    # ... and they overlapped: one was still under way when the last one started
    last_start = max(start for start, *_ in records)
    first_end = min(end for _, end, *_ in records)
    assert first_end > last_start


def test_bodies_pass_unchanged_and_connections_are_reused(
    proxy: LatencyProxy, s3_endpoint: str
) -> None:
    proxy.configure(delay=0, bandwidth=0)
    got = asyncio.run(_put_and_get(proxy, s3_endpoint, 40, 70_000))
    assert got == [bytes([i % 251]) * 70_000 + i.to_bytes(4, "big") for i in range(40)]
    stats = proxy.stats()
    assert stats["requests"] == 80
    assert [r[4] for r in stats["records"] if r[2] == "PUT"] == [70_004] * 40
    assert [r[5] for r in stats["records"] if r[2] == "GET"] == [70_004] * 40
    # 40 GETs after 40 PUTs on the same client: connections were kept alive
    assert stats["connections"] <= 40


def test_bandwidth_cap_limits_each_body(proxy: LatencyProxy, s3_endpoint: str) -> None:
    proxy.configure(delay=0, bandwidth=1_000_000)
    try:
        got = asyncio.run(_put_and_get(proxy, s3_endpoint, 2, 300_000))
        records = [r for r in proxy.stats()["records"] if r[2] == "GET"]
    finally:
        proxy.configure(bandwidth=0)
    assert [len(g) for g in got] == [300_004, 300_004]
    # 300 kB at 1 MB/s: at least 0.3 s each (the cap is per request, so not 0.6 s)
    assert all(end - start >= 0.29 for start, end, *_ in records)
