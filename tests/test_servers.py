"""The test servers keep the promises of the stores they stand for.

S3 and GCS apply a conditional write atomically: of several writes conditional on one
version, exactly one wins. The concurrency tests (the driver race, concurrent committers)
are evidence only if the servers they run on keep that promise under a race.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aicechunk.drivers.gcs import GCSDriver
from aicechunk.drivers.s3 import S3Credentials, S3Driver
from aicechunk.errors import PreconditionFailed
from tests.drivers.race import increment_worker
from tests.servers import (
    bare_moto_server,
    create_gcs_bucket,
    create_s3_bucket,
    moto_server,
    next_bucket_name,
    s3_client,
)

RACERS, ROUNDS = 8, 5


def _boto(endpoint: str) -> Any:
    from botocore.config import Config

    return s3_client(endpoint, Config(max_pool_connections=RACERS, retries={"max_attempts": 1}))


def _race(n: int, attempt: Callable[[int], bool]) -> int:
    """Run ``attempt(i)`` in ``n`` threads released at once; how many returned True."""
    barrier = threading.Barrier(n)
    wins: list[bool] = []

    def run(i: int) -> None:
        barrier.wait()
        wins.append(attempt(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return sum(wins)


def _conditional_put_winners(endpoint: str, condition: str) -> list[int]:
    """Per round: how many of RACERS simultaneous conditional PUTs on one key succeeded."""
    from botocore.exceptions import ClientError

    client = _boto(endpoint)
    bucket = next_bucket_name()
    client.create_bucket(Bucket=bucket)
    winners = []
    for round_ in range(ROUNDS):
        key = f"k{round_}"
        kwargs: dict[str, str] = {"IfNoneMatch": "*"}
        if condition == "if-match":
            kwargs = {"IfMatch": client.put_object(Bucket=bucket, Key=key, Body=b"0")["ETag"]}

        def attempt(i: int, key: str = key, kwargs: dict[str, str] = kwargs) -> bool:
            try:
                client.put_object(Bucket=bucket, Key=key, Body=f"racer {i}".encode(), **kwargs)
            except ClientError as err:
                assert err.response["Error"]["Code"] in ("PreconditionFailed", "412")
                return False
            return True

        winners.append(_race(RACERS, attempt))
    return winners


@pytest.fixture
def slow_moto_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the window between moto's precondition check and its write (as a loaded
    machine does), so that the race is lost every time rather than now and then."""
    from moto.s3.models import S3Backend

    original = S3Backend.put_object

    def slow(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", slow)


@pytest.fixture
def bare_moto() -> Iterator[str]:
    with bare_moto_server() as endpoint:
        yield endpoint


@pytest.mark.parametrize("condition", ["if-match", "if-none-match"])
def test_bare_moto_lets_racing_conditional_puts_all_win(
    bare_moto: str, slow_moto_writes: None, condition: str
) -> None:
    """Why the layer exists: moto alone checks, then writes, without a lock."""
    winners = _conditional_put_winners(bare_moto, condition)
    assert max(winners) > 1, winners


@pytest.mark.attack("conditional-write races (test servers)")
@pytest.mark.parametrize("own_process", [False, True], ids=["thread", "process"])
@pytest.mark.parametrize("condition", ["if-match", "if-none-match"])
def test_moto_server_keeps_conditional_writes_atomic(
    slow_moto_writes: None, condition: str, own_process: bool
) -> None:
    """Behind the tests' layer, exactly one of the racing conditional PUTs wins."""
    with moto_server(own_process=own_process) as endpoint:
        assert _conditional_put_winners(endpoint, condition) == [1] * ROUNDS


@pytest.mark.attack("conditional-write races (test servers)")
@pytest.mark.parametrize("condition", ["if-match", "if-none-match"])
async def test_fake_gcs_server_keeps_if_generation_match_atomic(
    gcs_endpoint: str, condition: str
) -> None:
    """fake-gcs-server checks ifGenerationMatch atomically on its own: no layer needed."""
    bucket = next_bucket_name()
    create_gcs_bucket(gcs_endpoint, bucket)
    driver = GCSDriver(bucket, "race", endpoint_url=gcs_endpoint)
    racers = 16
    try:
        for round_ in range(20):
            key = f"k{round_}"
            version = (await driver.put(key, b"0")).version if condition == "if-match" else None

            async def attempt(i: int, key: str = key, version: str | None = version) -> bool:
                try:
                    await driver.put(
                        key, f"racer {i}".encode(), if_match=version, if_none_match=version is None
                    )
                except PreconditionFailed:
                    return False
                return True

            assert sum(await asyncio.gather(*(attempt(i) for i in range(racers)))) == 1
    finally:
        await driver.close()


def _increments(endpoint: str) -> tuple[int, list[int]]:
    """Conditional read-modify-write increments racing in threads: (final, values won)."""
    bucket = next_bucket_name()
    create_s3_bucket(endpoint, bucket)
    driver = S3Driver(
        bucket,
        region="us-east-1",
        endpoint_url=endpoint,
        allow_http=True,
        force_path_style=True,
        credentials=S3Credentials("testing", "testing"),
    )
    asyncio.run(driver.put("counter", b"0"))
    workers, rounds = 6, 4
    results: list[list[int]] = [[] for _ in range(workers)]
    barrier = threading.Barrier(workers)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = increment_worker(driver, "counter", rounds)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    final = int(asyncio.run(driver.get("counter")))
    return final, sorted(v for result in results for v in result)


def test_increments_lose_updates_on_bare_moto(bare_moto: str, slow_moto_writes: None) -> None:
    """Without the layer, racing increments that each "won" overwrite each other."""
    final, won = _increments(bare_moto)
    assert won != list(range(1, final + 1))


@pytest.mark.attack("conditional-write races (test servers)")
def test_increments_lose_nothing_behind_the_layer(slow_moto_writes: None) -> None:
    """Behind the layer, every increment reported as won is counted, once."""
    with moto_server() as endpoint:
        final, won = _increments(endpoint)
    assert won == list(range(1, final + 1))
    assert final >= 4
