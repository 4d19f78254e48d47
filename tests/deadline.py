"""Deadlines for attack tests: a hang is a failure, never a stuck suite."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TypeVar

T = TypeVar("T")
#: seconds an attack may take
DEADLINE = 20.0


class Hang(Exception):
    """The attack ran past its deadline."""


@contextlib.contextmanager
def deadline(seconds: float = DEADLINE) -> Iterator[None]:
    """Fail (``Hang``) what runs past ``seconds``, also a loop that never awaits: an alarm
    interrupts pure Python code where ``asyncio.wait_for`` cannot."""

    def expired(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def bounded(work: Awaitable[T], seconds: float = DEADLINE) -> T:
    """``work`` under ``asyncio.wait_for`` (a hang that awaits), with an alarm behind it
    (a hang that spins)."""
    with deadline(seconds + 5):
        try:
            return await asyncio.wait_for(work, seconds)
        except TimeoutError:
            raise Hang(f"still waiting after {seconds} s") from None


async def collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]
