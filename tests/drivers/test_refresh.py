"""When refreshable credentials are fetched again (``drivers._refresh.Refreshing``, which
the GCS driver's bearer token uses; the S3 driver gives botocore the same windows)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from aicechunk.drivers._refresh import REFRESH_BEFORE, Refreshing, refresh_windows


def _in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def test_fetched_once_by_many_waiting_callers_then_kept_until_due() -> None:
    calls: list[int] = []

    def fetch() -> tuple[str, datetime | None]:
        calls.append(threading.get_ident())
        time.sleep(0.05)  # a slow token service: the others wait for this call
        return f"v{len(calls)}", _in(3600)

    value = Refreshing(fetch)
    assert await asyncio.gather(*(value.get() for _ in range(10))) == ["v1"] * 10
    assert await value.get() == "v1"
    assert len(calls) == 1 and calls[0] != threading.get_ident()


async def test_due_within_refresh_before_of_expiry_and_never_without_one() -> None:
    advisory, _ = refresh_windows()
    assert advisory == REFRESH_BEFORE.total_seconds()
    fresh = iter([("new", None)])
    value = Refreshing(fresh.__next__, ("first", _in(advisory - 1)))
    assert await value.get() == "new"  # due: fetched again
    assert await value.get() == "new"  # never expires: never fetched again
    lasting = Refreshing(fresh.__next__, ("first", _in(advisory + 60)))
    assert await lasting.get() == "first"  # not due: the first value, no call


async def test_a_failed_refresh_keeps_the_value_only_while_it_has_time_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    advisory, mandatory = refresh_windows()

    def down() -> tuple[str, datetime | None]:
        raise ConnectionError("token service unreachable")

    early = Refreshing(down, ("old", _in((advisory + mandatory) / 2)))
    with caplog.at_level(logging.WARNING, logger="aicechunk.drivers._refresh"):
        assert await early.get() == "old"
    assert "ConnectionError" in caplog.text
    late = Refreshing(down, ("old", _in(mandatory / 2)))
    with pytest.raises(ConnectionError):
        await late.get()
    with pytest.raises(ConnectionError):
        await Refreshing(down).get()
