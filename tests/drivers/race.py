"""A worker for the conditional read-modify-write race (run in processes or threads)."""

from __future__ import annotations

import asyncio
from typing import Any

from aicechunk.drivers import Driver, driver_from_config
from aicechunk.errors import PreconditionFailed


async def _increment(driver: Driver, key: str, rounds: int) -> list[int]:
    won: list[int] = []
    for _ in range(rounds):
        data, info = await driver.get_object(key)
        value = int(data) + 1
        try:
            await driver.put(key, str(value).encode(), if_match=info.version)
        except PreconditionFailed:
            continue
        won.append(value)
    return won


def increment_worker(config: dict[str, Any] | Driver, key: str, rounds: int) -> list[int]:
    """Try ``rounds`` conditional increments; return the counter values this worker wrote."""
    driver = config if isinstance(config, Driver) else driver_from_config(config)

    async def main() -> list[int]:
        try:
            return await _increment(driver, key, rounds)
        finally:
            if not isinstance(config, Driver):
                await driver.close()

    return asyncio.run(main())
