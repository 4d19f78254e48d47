"""The local rows: write, read and open + one chunk of each system on local disk, on
tmpfs and in memory, measured under equal conditions.

The disk rows used to spread 3x between repetitions (2.4-7.5 s for one library, 3.8-8.1 s
for the other in one run) because a system's timed run paid for work that was not its
own: the kernel writing back the dirty pages of the rows before it (each write of 10,000
chunks leaves about 80 MB of new files and inodes dirty, flushed 5-30 s later, while
the next row runs), and deleting the previous repetition's directories. So each timed
workload here:

- starts from a settled disk: ``os.sync()`` first (untimed), so no system pays for
  another's write-back, nor for the deletion of directories left behind;
- finds no directory of an earlier repetition (each system's repository is removed as
  soon as its rows are done, before the next sync);
- runs in an order that alternates between repetitions, ``--local-repeat`` times (5 by
  default: the medians of disk-bound rows need more than 3).

The ``tmpfs`` rows (``/dev/shm``) measure the libraries without a disk. Every row also
records ``cpu_seconds``: the process's user and system CPU time over the workload (both
libraries run in this process, icechunk's Rust threads included). On a shared machine it
is far steadier than wall time, which the scheduler shares out per runnable thread; and,
on Linux, ``waited_seconds``: how long this process's threads stood ready to run while
other processes held the cores (run-queue delay from ``/proc/self/task/*/schedstat``;
threads that ended meanwhile are not counted), summed over threads. Near zero for our
process on a quiet machine: a row whose waits are a good part of its wall time measured
the machine's load, not the library. icechunk's sum is large even when quiet: its Tokio
runtime runs more threads than there are cores, which wait on each other.
"""

from __future__ import annotations

import gc
import os
import resource
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from systems import System
from workloads import Result, open_row, read_workload, write_workload, zarr_floor

__all__ = ["LOCAL_KINDS", "local_rows", "tmpfs_dir"]

#: kinds of storage of the local rows (``memory`` with spec version 1 only)
LOCAL_KINDS = ("local", "tmpfs", "memory")

Record = Callable[[str, str, Result], None]


def tmpfs_dir() -> str | None:
    """A directory on tmpfs (``/dev/shm``) if this machine has one."""
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "/dev/shm" and fields[2] == "tmpfs":
                    return "/dev/shm"
    except OSError:
        pass
    return None


def cpu_seconds() -> float:
    """User and system CPU time of this process so far (every thread)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def waits() -> dict[str, int]:
    """Run-queue delay (ns) so far of each live thread of this process (Linux; else none)."""
    found: dict[str, int] = {}
    for stats in Path("/proc/self/task").glob("*/schedstat"):
        try:
            found[stats.parent.name] = int(stats.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended while we looked
    return found


def waited_since(before: dict[str, int]) -> float:
    """Seconds the threads alive now waited since ``before``: a thread that ended
    meanwhile is not counted, one that started counts from its start (a plain difference
    of sums went negative when threads of the start ended)."""
    return sum(ns - before.get(tid, 0) for tid, ns in waits().items()) / 1e9


def settle(kind: str) -> None:
    """Write back every dirty page before a timed disk workload (not timed)."""
    if kind == "local":
        os.sync()
    gc.collect()


async def measured(kind: str, work: Awaitable[Any]) -> Any:
    """``work`` (returning a ``Result``, or a pair ending in one) after ``settle``, with
    the CPU time it took added as ``cpu_seconds`` and the run-queue delay of this
    process's threads as ``waited_seconds``."""
    settle(kind)
    start, waited = cpu_seconds(), waits()
    found = await work
    row = found[-1] if isinstance(found, tuple) else found
    row["cpu_seconds"] = cpu_seconds() - start
    row["waited_seconds"] = waited_since(waited)
    return found


@contextmanager
def scratch(kind: str, local_dir: str | None) -> Iterator[Path]:
    """A fresh directory for one repetition of ``kind`` (removed afterwards)."""
    parent = tmpfs_dir() if kind == "tmpfs" else local_dir
    with tempfile.TemporaryDirectory(dir=parent, prefix="aicechunk-bench-") as tmp:
        yield Path(tmp)


def remove(where: str) -> None:
    """Delete the repository directory of a ``local:`` location (memory: nothing)."""
    kind, _, rest = where.partition(":")
    if kind == "local":
        shutil.rmtree(rest, ignore_errors=True)


async def one_repetition(
    rows: Any,
    order: list[System],
    kind: str,
    base: Path,
    count: int,
    on: Callable[[str], bool],
    record: Record,
) -> None:
    """write, read and open + one chunk of each system in ``order``, then plain zarr's
    write and read (spec version 1 rows), each settled first."""
    where_kind = "memory" if kind == "memory" else "local"
    for system in order:
        where = rows.where(where_kind, base, system)
        repo, row = await measured(kind, write_workload(system, where, count))
        record(rows.label(f"write {count} chunks", kind), system.name, row)
        if on("read"):
            row = await measured(kind, read_workload(system, repo))
            record(rows.label(f"read {count} chunks", kind), system.name, row)
        if on("open") and kind != "memory":
            row = await measured(kind, open_row(system, where_kind, where, "", lambda: 0))
            record(rows.label("open + read 1 chunk", kind), system.name, row)
        del repo
        remove(where)
    if rows.spec == 1 and (on("write") or on("read")):
        settle(kind)
        write, read = await zarr_floor(where_kind, base, count, between=lambda: settle(kind))
        record(f"write {count} chunks [{kind}]", f"zarr {kind}", write)
        record(f"read {count} chunks [{kind}]", f"zarr {kind}", read)


async def local_rows(
    by_spec: list[Any],
    kinds: list[str],
    count: int,
    repeat: int,
    wanted: Callable[[int], Callable[[str], bool]],
    record: Record,
    local_dir: str | None = None,
) -> None:
    """Every local row of every spec version in ``by_spec``, ``repeat`` times, the
    systems' order alternating."""
    if "tmpfs" in kinds and tmpfs_dir() is None:
        kinds = [kind for kind in kinds if kind != "tmpfs"]
    for rep in range(repeat):
        for rows in by_spec:
            on = wanted(rows.spec)
            if not (on("write") or on("read") or on("open")):
                continue
            order = rows.systems if rep % 2 == 0 else rows.systems[::-1]
            for kind in kinds:
                if kind == "memory" and rows.spec != 1:
                    continue
                with scratch(kind, local_dir) as base:
                    await one_repetition(rows, order, kind, base, count, on, record)
