"""The helpers that decide when work leaves the event loop (``aicechunk.offload``)."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from aicechunk.offload import off_loop, start_now


async def test_small_work_stays_on_the_loop_and_big_work_goes_to_a_thread() -> None:
    loop_thread = threading.get_ident()
    assert await off_loop(False, threading.get_ident) == loop_thread
    assert await off_loop(True, threading.get_ident) != loop_thread


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are Python 3.12's")
async def test_start_now_runs_the_first_step_before_it_returns() -> None:
    steps: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def work() -> str:
        steps.append("handed over")  # e.g. a write given to a driver's thread
        await gate
        steps.append("done")
        return "result"

    task = start_now(work())
    assert steps == ["handed over"]  # before any turn of the loop
    gate.set_result(None)
    assert await task == "result"
    assert steps == ["handed over", "done"]


async def test_start_now_keeps_what_the_coroutine_raises() -> None:
    async def fails() -> None:
        raise ValueError("no")

    task = start_now(fails())
    with pytest.raises(ValueError, match="no"):
        await task
