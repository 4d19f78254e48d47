"""The benchmark's S3 server (``tests.bench_s3_server``): both libraries create, commit and
read repositories on it; conditional writes are atomic; ranges, listing pages and error
answers are S3's; its latency port delays, paces and counts as the latency proxy does.

moto stays the S3 of every other test: this server exists so the benchmark's S3 rows
measure the clients rather than the server.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

import aicechunk as aic
from aicechunk.drivers.s3 import S3Credentials, S3Driver
from tests.bench_s3_server import bench_s3_server
from tests.conftest import s3_test_storage
from tests.latency_proxy import LatencyProxy
from tests.oracle import SPEC_VERSIONS
from tests.servers import create_s3_bucket, next_bucket_name, s3_client
from tests.test_remote_repos import icechunk_read_s3, icechunk_write_s3, write_sample


@pytest.fixture(scope="module")
def bench() -> Iterator[tuple[str, LatencyProxy]]:
    with bench_s3_server() as served:
        yield served


@pytest.fixture
def endpoint(bench: tuple[str, LatencyProxy]) -> str:
    return bench[0]


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = next_bucket_name()
    create_s3_bucket(endpoint, name)
    return name


def client(endpoint: str) -> Any:
    return s3_client(endpoint)


def error_of(call: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


# -- both clients ---------------------------------------------------------------------


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_both_libraries_create_commit_and_read_each_other(
    endpoint: str, bucket: str, spec_version: int
) -> None:
    import zarr.api.asynchronous as zas
    from numpy.testing import assert_allclose

    ours = await aic.Repository.create(
        s3_test_storage(endpoint, bucket, "ours"), spec_version=spec_version
    )
    await write_sample(ours)
    assert await asyncio.to_thread(icechunk_read_s3, endpoint, bucket) == list(range(30))
    sid = await asyncio.to_thread(icechunk_write_s3, endpoint, bucket, spec_version)
    theirs = await aic.Repository.open(s3_test_storage(endpoint, bucket, "theirs"))
    assert theirs.spec_version == spec_version
    assert await theirs.lookup_branch("main") == sid
    session = await theirs.readonly_session(branch="main")
    arr = await zas.open_array(store=session.store, path="y", mode="r")
    assert_allclose(await arr.getitem(slice(None)), [i / 11 for i in range(12)])
    # a second commit on top of icechunk's: conditional updates of its refs
    writer = await theirs.writable_session("main")
    arr = await zas.open_array(store=writer.store, path="y", mode="r+")
    await arr.setitem(slice(0, 1), [5.0])
    await writer.commit("ours on top")
    assert [s.message async for s in theirs.ancestry(branch="main")][:2] == [
        "ours on top",
        "icechunk on s3",
    ]
    await ours.close()
    await theirs.close()


# -- conditional writes ---------------------------------------------------------------


async def test_concurrent_conditional_puts_on_one_key_have_exactly_one_winner(
    endpoint: str, bucket: str
) -> None:
    url = f"{endpoint}/{bucket}/contended"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

        async def put(body: bytes, condition: dict[str, str]) -> int:
            async with http.put(url, data=body, headers=condition) as response:
                await response.read()
                return response.status

        for _ in range(5):  # create-if-absent, many at once, from many connections
            statuses = await asyncio.gather(
                *(put(b"first %d" % i, {"If-None-Match": "*"}) for i in range(64))
            )
            assert sorted(statuses) == [200] + [412] * 63
            async with http.head(url) as response:
                etag = response.headers["ETag"]
            # replace-if-unchanged, all against the same ETag: one wins, the rest see 412
            statuses = await asyncio.gather(
                *(put(b"second %d" % i, {"If-Match": etag}) for i in range(64))
            )
            assert sorted(statuses) == [200] + [412] * 63
            async with http.delete(url) as response:
                assert response.status == 204


async def test_the_drivers_conditional_increments_lose_nothing(endpoint: str, bucket: str) -> None:
    drivers = [
        S3Driver(
            bucket,
            "race",
            region="us-east-1",
            endpoint_url=endpoint,
            allow_http=True,
            force_path_style=True,
            credentials=S3Credentials("testing", "testing"),
        )
        for _ in range(4)
    ]
    await drivers[0].put("counter", b"0")

    async def worker(driver: S3Driver) -> list[int]:
        won = []
        for _ in range(30):
            data, info = await driver.get_object("counter")
            try:
                await driver.put("counter", b"%d" % (int(data) + 1), if_match=info.version)
            except aic.PreconditionFailed:
                continue
            won.append(int(data) + 1)
        return won

    results = await asyncio.gather(*(worker(d) for d in drivers))
    won = sorted(v for r in results for v in r)
    assert won == list(range(1, int(await drivers[0].get("counter")) + 1))
    for driver in drivers:
        await driver.close()


def test_conditional_write_errors_are_s3s(endpoint: str, bucket: str) -> None:
    s3 = client(endpoint)
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["ETag"]
    assert etag == '"f97c5d29941bfb1b2fdab0874906ab82"'  # MD5, as S3's single-part ETags
    assert error_of(s3.put_object, Bucket=bucket, Key="k", Body=b"x", IfNoneMatch="*") == (
        412,
        "PreconditionFailed",
    )
    assert error_of(s3.put_object, Bucket=bucket, Key="k", Body=b"x", IfMatch='"nope"') == (
        412,
        "PreconditionFailed",
    )
    # If-Match on a key that is not there: 404 NoSuchKey, as on S3
    assert error_of(s3.put_object, Bucket=bucket, Key="gone", Body=b"x", IfMatch=etag) == (
        404,
        "NoSuchKey",
    )
    assert s3.put_object(Bucket=bucket, Key="k", Body=b"two", IfMatch=etag)["ETag"] != etag
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two"


# -- reads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "status", "expected"),
    [
        ("bytes=2-5", 206, b"2345"),
        ("bytes=7-", 206, b"789"),
        ("bytes=-3", 206, b"789"),
        ("bytes=-100", 206, b"0123456789"),
        ("bytes=8-1000", 206, b"89"),
        ("bytes=5-2", 200, b"0123456789"),  # not a valid range: the whole object
        ("bytes=0-1,4-5", 200, b"0123456789"),  # several ranges: S3 sends it all
        ("pages=1-2", 200, b"0123456789"),
    ],
)
def test_ranges(endpoint: str, bucket: str, spec: str, status: int, expected: bytes) -> None:
    s3 = client(endpoint)
    s3.put_object(Bucket=bucket, Key="digits", Body=b"0123456789")
    response = s3.get_object(Bucket=bucket, Key="digits", Range=spec)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert response["Body"].read() == expected
    assert response["ContentLength"] == len(expected)
    if status == 206:
        assert response["ContentRange"].endswith("/10")


@pytest.mark.parametrize("spec", ["bytes=10-", "bytes=10-20", "bytes=-0"])
def test_unsatisfiable_ranges_are_416(endpoint: str, bucket: str, spec: str) -> None:
    s3 = client(endpoint)
    s3.put_object(Bucket=bucket, Key="digits", Body=b"0123456789")
    assert error_of(s3.get_object, Bucket=bucket, Key="digits", Range=spec) == (
        416,
        "InvalidRange",
    )
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert error_of(s3.get_object, Bucket=bucket, Key="empty", Range="bytes=0-") == (
        416,
        "InvalidRange",
    )


def test_read_errors_heads_and_conditional_gets(endpoint: str, bucket: str) -> None:
    s3 = client(endpoint)
    assert error_of(s3.get_object, Bucket=bucket, Key="missing") == (404, "NoSuchKey")
    assert error_of(s3.head_object, Bucket=bucket, Key="missing")[0] == 404
    assert error_of(s3.get_object, Bucket="no-such-bucket", Key="k") == (404, "NoSuchBucket")
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"hello")["ETag"]
    head = s3.head_object(Bucket=bucket, Key="k")
    assert (head["ContentLength"], head["ETag"]) == (5, etag)
    assert head["LastModified"] == s3.get_object(Bucket=bucket, Key="k")["LastModified"]
    assert error_of(s3.get_object, Bucket=bucket, Key="k", IfMatch='"other"') == (
        412,
        "PreconditionFailed",
    )
    assert error_of(s3.get_object, Bucket=bucket, Key="k", IfNoneMatch=etag)[0] == 304
    assert s3.get_object(Bucket=bucket, Key="k", IfMatch=etag)["Body"].read() == b"hello"


def test_unserved_calls_are_501(endpoint: str, bucket: str) -> None:
    s3 = client(endpoint)
    assert error_of(s3.get_bucket_versioning, Bucket=bucket) == (501, "NotImplemented")
    assert error_of(s3.create_multipart_upload, Bucket=bucket, Key="k")[1] == "NotImplemented"


def test_bad_requests_are_400(endpoint: str, bucket: str) -> None:
    s3 = client(endpoint)
    assert error_of(s3.list_objects_v2, Bucket=bucket, ContinuationToken="%%%") == (
        400,
        "InvalidArgument",
    )
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"this is not HTTP\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
        assert sock.recv(100) == b""  # and the connection is closed


# -- listing, deleting, copying -------------------------------------------------------

KEYS = [
    *(f"p/{i:04d}" for i in range(23)),
    "p/sub/a",
    "p/sub/b",
    "p/sub2/c",
    "p/é",
    "p/z",
    "p/\u00ff",
    "p/\U0001f600",
    "p/a b&c<d>",
    "q/other",
]


def test_listing_pages_in_utf8_byte_order(endpoint: str, bucket: str) -> None:
    s3 = client(endpoint)
    for key in reversed(KEYS):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="p/", PaginationConfig={"PageSize": 7}
        )
    )
    listed = [o["Key"] for page in pages for o in page.get("Contents", [])]
    expected = sorted((k for k in KEYS if k.startswith("p/")), key=str.encode)
    assert listed == expected
    assert [page["KeyCount"] for page in pages] == [7, 7, 7, 7, 3]
    assert all(page["IsTruncated"] for page in pages[:-1]) and not pages[-1]["IsTruncated"]
    first = pages[0]["Contents"][0]
    assert first["Size"] == 6 and first["ETag"].startswith('"')
    # delimiter: keys under p/sub/ and p/sub2/ roll up, each counted once toward a page
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="p/", Delimiter="/", PaginationConfig={"PageSize": 5}
        )
    )
    rolled = [c["Prefix"] for page in pages for c in page.get("CommonPrefixes", [])]
    direct = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert rolled == ["p/sub/", "p/sub2/"]
    assert direct == [k for k in expected if "/" not in k[2:]]
    after = s3.list_objects_v2(Bucket=bucket, StartAfter="p/sub/a")
    assert [o["Key"] for o in after["Contents"]][:2] == ["p/sub/b", "p/sub2/c"]


async def test_driver_lists_deletes_many_and_copies(endpoint: str, bucket: str) -> None:
    driver = S3Driver(
        bucket,
        "d",
        region="us-east-1",
        endpoint_url=endpoint,
        allow_http=True,
        force_path_style=True,
        credentials=S3Credentials("testing", "testing"),
    )
    keys = [f"k/{i:05d}" for i in range(2_345)]  # more than one page of 1,000
    await asyncio.gather(*(driver.put(k, k.encode()) for k in keys))
    assert [info.key async for info in driver.list("k/")] == keys
    await driver.delete_many(keys[:1_500])
    assert [info.key async for info in driver.list("k/")] == keys[1_500:]
    await driver.close()
    s3 = client(endpoint)
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "d/k/02000"})
    assert s3.get_object(Bucket=bucket, Key="copy")["Body"].read() == b"k/02000"
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "copy"}]})
    assert [d["Key"] for d in answer["Deleted"]] == ["copy"]
    assert error_of(s3.head_object, Bucket=bucket, Key="copy")[0] == 404


def test_chunked_bodies_and_expect_continue(endpoint: str, bucket: str) -> None:
    host, port = endpoint.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(
            "PUT",
            f"/{bucket}/chunked",
            body=iter([b"abc", b"", b"defgh", b"i" * 70_000]),
            headers={"Expect": "100-continue"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        assert response.status == 200
        response.read()
        # the same connection is kept for the next request
        connection.request("GET", f"/{bucket}/chunked")
        assert connection.getresponse().read() == b"abcdefgh" + b"i" * 70_000
    finally:
        connection.close()


# -- the latency port -----------------------------------------------------------------


async def test_latency_port_delays_side_by_side_and_counts(
    bench: tuple[str, LatencyProxy], bucket: str
) -> None:
    endpoint, proxy = bench
    client(endpoint).put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    proxy.configure(delay=0.1)
    proxy.reset()
    try:
        async with aiohttp.ClientSession() as http:

            async def get() -> bytes:
                async with http.get(f"{proxy.url}/{bucket}/k") as response:
                    return await response.read()

            assert await asyncio.gather(*(get() for _ in range(10))) == [b"x" * 1000] * 10
            stats = proxy.stats()
            # kept connections: another round reuses them
            await asyncio.gather(*(get() for _ in range(10)))
    finally:
        proxy.configure(delay=0)
    records = stats["records"]
    assert stats["requests"] == 10 and len(records) == 10
    assert all(end - start >= 0.1 for start, end, *_ in records)
    # they overlapped: one was still under way when the last one started
    assert min(end for _, end, *_ in records) > max(start for start, *_ in records)
    assert {tuple(r[2:]) for r in records} == {("GET", f"/{bucket}/k", 0, 1000)}
    assert proxy.stats()["connections"] == stats["connections"] <= 10
    # the direct port is neither delayed nor counted
    proxy.reset()
    client(endpoint).get_object(Bucket=bucket, Key="k")
    assert proxy.requests() == 0


async def test_latency_port_caps_bandwidth_per_request(
    bench: tuple[str, LatencyProxy], bucket: str
) -> None:
    proxy = bench[1]
    body = bytes(range(256)) * 1000  # 256,000 bytes
    proxy.configure(bandwidth=1_000_000)
    proxy.reset()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{proxy.url}/{bucket}/big", data=body) as response:
                assert response.status == 200
            async with http.get(f"{proxy.url}/{bucket}/big") as response:
                assert await response.read() == body
    finally:
        proxy.configure(bandwidth=0)
    (put, get) = proxy.stats()["records"]
    assert put[4:] == [len(body), 0] and get[4:] == [0, len(body)]
    # 256 kB at 1 MB/s each way
    assert put[1] - put[0] >= 0.25 and get[1] - get[0] >= 0.25


async def test_held_answers_without_a_body_cost_no_cpu_while_idle(
    bench: tuple[str, LatencyProxy], bucket: str
) -> None:
    """PUT answers have no body; handed to the transport as an empty buffer they made
    Python 3.12.1's event loop spin on every connection that had one (all CPU, forever)."""
    proxy = bench[1]
    proxy.configure(delay=0.01)
    try:
        async with aiohttp.ClientSession() as http:

            async def put(i: int) -> None:
                async with http.put(f"{proxy.url}/{bucket}/p{i}", data=b"x") as response:
                    assert response.status == 200

            await asyncio.gather(*(put(i) for i in range(200)))
            before = proxy.stats()["cpu_seconds"]
            await asyncio.sleep(0.5)  # connections kept, nothing asked
            assert proxy.stats()["cpu_seconds"] - before < 0.1
    finally:
        proxy.configure(delay=0)
