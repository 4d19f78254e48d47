"""The ``aicechunk`` command line (``python -m aicechunk``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aicechunk.drivers import LocalDriver
from aicechunk.errors import AicechunkError, PreconditionFailed


async def _demo(directory: Path) -> None:
    """Exercise the local driver: atomic writes, conditional writes, sorted listing."""
    async with LocalDriver(directory) as driver:
        print(f"local driver at {driver.root}")
        first = await driver.put(
            "refs/branch.main/ref.json", b'{"snapshot":"A"}', if_none_match=True
        )
        print(f"created refs/branch.main/ref.json (version {first.version})")
        try:
            await driver.put("refs/branch.main/ref.json", b'{"snapshot":"X"}', if_none_match=True)
        except PreconditionFailed as err:
            print(f"second create refused, as it must be: {err}")
        second = await driver.put(
            "refs/branch.main/ref.json", b'{"snapshot":"B"}', if_match=first.version
        )
        print(f"moved the ref conditionally (version {second.version})")
        try:
            await driver.put(
                "refs/branch.main/ref.json", b'{"snapshot":"C"}', if_match=first.version
            )
        except PreconditionFailed:
            print("a stale writer lost the race and changed nothing")
        for i in range(3):
            await driver.put(f"chunks/{i:04}", bytes([i]) * 16)
        keys = [info.key async for info in driver.list("")]
        print("objects, in listing order:", ", ".join(keys))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aicechunk`` console script."""
    parser = argparse.ArgumentParser(prog="aicechunk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a short demonstration on local disk")
    demo.add_argument("directory", nargs="?", help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            if args.directory:
                asyncio.run(_demo(Path(args.directory)))
            else:
                with tempfile.TemporaryDirectory(prefix="aicechunk-demo-") as tmp:
                    asyncio.run(_demo(Path(tmp)))
    except AicechunkError as err:
        print(f"aicechunk: error: {err}", file=sys.stderr)
        return 1
    return 0
