"""Local file I/O: the local driver's worker threads against aiofiles, and anyio's
primitives against asyncio's own.

Run ``python benchmarks/bench_local_io.py`` (``--quick`` for fewer repeats). It prints
one table of medians over several repeats:

- ``driver``: ``LocalDriver.put`` / ``get`` (atomic writes through a staging file and a
  rename; small operations batched on one thread, large ones on a pool);
- ``aiofiles``: the same work written with ``aiofiles`` (``aiofiles.open`` to a staging
  file, ``aiofiles.os.replace``; reads with ``aiofiles.open(...).read()``), which runs
  every call on the event loop's default executor;
- asyncio against anyio for what a driver needs: a concurrency bound (``Semaphore``
  against ``CapacityLimiter``), a deadline (``asyncio.timeout`` against
  ``anyio.fail_after``) and a task group.

Everything runs in a temporary directory on the machine's disk (``BENCH_DIR`` picks
another); nothing touches the network. aiofiles and anyio are not dependencies of
aicechunk (this measurement is why): ``pip install 'aicechunk[bench]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

try:  # not dependencies of aicechunk: measured here, and not kept (see the report)
    import aiofiles
    import aiofiles.os
    import anyio
except ImportError as err:  # pragma: no cover
    raise SystemExit(f"{err}: pip install 'aicechunk[bench]' (aiofiles, anyio)") from None
import anyio.lowlevel

from aicechunk.drivers import LocalDriver

KIB, MIB = 1 << 10, 1 << 20
# (label, object size, object count)
SIZES = [("4 KiB x 2000", 4 * KIB, 2000), ("64 MiB x 8", 64 * MIB, 8)]


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


# --- the two implementations under test ------------------------------------------------


async def driver_writes(driver: LocalDriver, keys: list[str], data: bytes) -> None:
    await asyncio.gather(*(driver.put(key, data) for key in keys))


async def driver_reads(driver: LocalDriver, keys: list[str]) -> None:
    await asyncio.gather(*(driver.get(key) for key in keys))


async def aiofiles_put(root: Path, key: str, data: bytes) -> None:
    # the same atomic protocol as the driver: a staging file renamed into place
    tmp = root / ".tmp" / uuid.uuid4().hex
    async with aiofiles.open(tmp, "wb") as f:
        await f.write(data)
    await aiofiles.os.replace(tmp, root / key)


async def aiofiles_get(root: Path, key: str) -> bytes:
    async with aiofiles.open(root / key, "rb") as f:
        return await f.read()


async def aiofiles_writes(root: Path, keys: list[str], data: bytes) -> None:
    await asyncio.gather(*(aiofiles_put(root, key, data) for key in keys))


async def aiofiles_reads(root: Path, keys: list[str]) -> None:
    await asyncio.gather(*(aiofiles_get(root, key) for key in keys))


async def one_round(root: Path, keys: list[str], data: bytes) -> dict[tuple[str, str], float]:
    """Write then read every object once with each implementation, in fresh directories."""
    driver_root, plain_root = root / "driver", root / "aiofiles"
    (plain_root / ".tmp").mkdir(parents=True)
    driver = LocalDriver(driver_root)
    try:
        times = {
            ("driver", "write"): await timed(lambda: driver_writes(driver, keys, data)),
            ("driver", "read"): await timed(lambda: driver_reads(driver, keys)),
        }
    finally:
        await driver.close()
    times["aiofiles", "write"] = await timed(lambda: aiofiles_writes(plain_root, keys, data))
    times["aiofiles", "read"] = await timed(lambda: aiofiles_reads(plain_root, keys))
    return times


async def file_io(repeats: int) -> list[tuple[str, str, str, float, float]]:
    rows = []
    for label, size, count in SIZES:
        data = os.urandom(size)
        keys = [f"o{i:05d}" for i in range(count)]
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(repeats):
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
                for where, seconds in (await one_round(Path(tmp), keys, data)).items():
                    times.setdefault(where, []).append(seconds)
        total = size * count
        for (impl, op), seconds_list in sorted(times.items(), key=lambda kv: kv[0][::-1]):
            median = statistics.median(seconds_list)
            rows.append((label, op, impl, median * 1e3, total / median / MIB))
    return rows


# --- asyncio against anyio -------------------------------------------------------------

TASKS = 20_000


async def asyncio_bounded() -> None:
    limit = asyncio.Semaphore(64)

    async def one() -> None:
        async with limit:
            await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(TASKS)))


async def anyio_bounded() -> None:
    limit = anyio.CapacityLimiter(64)

    async def one() -> None:
        async with limit:
            await anyio.lowlevel.checkpoint()

    await asyncio.gather(*(one() for _ in range(TASKS)))


async def asyncio_deadlines() -> None:
    for _ in range(TASKS):
        async with asyncio.timeout(60):
            await asyncio.sleep(0)


async def anyio_deadlines() -> None:
    for _ in range(TASKS):
        with anyio.fail_after(60):
            await anyio.lowlevel.checkpoint()


async def asyncio_task_group() -> None:
    async with asyncio.TaskGroup() as group:
        for _ in range(TASKS):
            group.create_task(asyncio.sleep(0))


async def anyio_task_group() -> None:
    async with anyio.create_task_group() as group:
        for _ in range(TASKS):
            group.start_soon(anyio.sleep, 0)


PRIMITIVES = [
    ("concurrency bound (64)", asyncio_bounded, anyio_bounded),
    ("deadline per call", asyncio_deadlines, anyio_deadlines),
    ("task group", asyncio_task_group, anyio_task_group),
]


async def primitives(repeats: int) -> list[tuple[str, str, str, float, float]]:
    rows = []
    for label, plain, other in PRIMITIVES:
        for impl, fn in (("asyncio", plain), ("anyio", other)):
            seconds = statistics.median([await timed(fn) for _ in range(repeats)])
            rows.append((f"{label}, {TASKS} tasks", "-", impl, seconds * 1e3, 0.0))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    rows = asyncio.run(file_io(repeats)) + asyncio.run(primitives(repeats))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, medians of {repeats} runs")
    print(f"{'workload':34} {'op':6} {'impl':9} {'ms':>10} {'MiB/s':>9}")
    for label, op, impl, ms, rate in rows:
        shown = f"{rate:9.0f}" if rate else f"{'':9}"
        print(f"{label:34} {op:6} {impl:9} {ms:10.1f} {shown}")


if __name__ == "__main__":
    main()
