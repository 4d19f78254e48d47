"""Benchmarks: aicechunk against icechunk (and plain zarr stores), side by side.

Every workload runs for each system in the same process, alternating, several times;
the table shows medians and the aicechunk/icechunk ratio, and a JSON file keeps it all
(with the icechunk version and the machine's load average before and after each part).

    python benchmarks/run.py                 # full sizes (about 25 minutes)
    python benchmarks/run.py --quick         # small sizes, for a smoke run
    python benchmarks/run.py --only write,read --repeat 5 --json results.json
    python benchmarks/run.py --latency 20 --no-contention --only write,read,open
    python benchmarks/run.py --only write,read,open --storage local,tmpfs --no-memory

The local rows (disk, tmpfs, memory: ``local_rows.py``) settle the disk before every
timed workload and run ``--local-repeat`` times (5 by default); see that module for why.
The local ops-log rows do the same (``v2rows.py``); on S3 they run ``--repeat`` times.

icechunk is whichever is importable: 1.1.21 (Python 3.11) or 2.x (Python >= 3.12). Rows
without a tag compare spec version 1 repositories on both sides; rows tagged ``v2``
compare spec version 2 repositories, and run only when icechunk is 2.x.
S3 rows (``[s3 <delay>ms]``) reach an S3 server through a latency proxy, out of this
process as a remote S3 would be (``--s3-server``: ``fast``, the default, is an in-memory
S3 with the proxy built in, ``tests/bench_s3_server``; ``moto`` is moto's server behind
``tests/latency_proxy``, which caps every row at moto's 350-450 requests/s; the JSON
says which was used): the proxy adds ``--latency``
milliseconds to every request and counts requests for both libraries alike (open: also
the round trips made one after another); every ``--s3-sizes`` size runs at the largest
delay, the smallest at the others. ``--contention`` (on by default) runs the S3 rows of
the smallest size once more while one CPU-spinning process per core competes (labels say
``contended``). ``server capacity`` rows give the GETs of one 4 KiB chunk per second
the local S3 servers answer a bare client at 64 at once (until now the blob of the
virtual rows was fetched: 1 MiB at the full sizes, which measured bandwidth): a row
near it measures their CPU, not latency.
Workloads: write, read, open (+ one chunk), refs (1M and 10M chunk references, each in a
fresh process: bench_refs.py), forks
(64 forks x 1,000 chunks merged and committed), virtual (1,000 virtual chunks on S3),
oplog (v2: 100 branches with 2 commits each, then 10 commits on main (the median of
them), open, ops log).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_forks
import bench_refs
from local_rows import LOCAL_KINDS, local_rows, settle
from remote import S3_SERVERS, RemoteRows, busy_cores, capacity, cores, s3_chain
from systems import ICECHUNK_VERSION, Ours, System, Theirs, icechunk_spec_versions, location
from v2rows import ops_log_workload, parse_history
from workloads import CHUNK_BYTES, Result

#: the workloads with rows of each spec version
WORKLOADS = {
    1: ("write", "read", "open", "refs", "forks", "virtual"),
    2: ("write", "read", "open", "refs", "oplog"),
}
Record = Callable[[str, str, Result], None]
#: the kinds of storage rows run on (``--storage``)
STORAGE = ("s3", *LOCAL_KINDS)


class Rows:
    """The rows of one spec version: its systems, its kinds of storage, its labels."""

    def __init__(self, spec: int, s3: dict[str, str]):
        self.spec = spec
        self.systems: list[System] = [Ours(s3, spec), Theirs(s3, spec)]
        self.s3 = s3
        # local, tmpfs, memory: local_rows.py; S3: RemoteRows, through the latency proxy

    def label(self, what: str, kind: str) -> str:
        return f"{what} [{kind}]" if self.spec == 1 else f"{what} [{kind}, v2]"

    def where(self, kind: str, base: Path, system: System, tag: str = "") -> str:
        suffix = "" if self.spec == 1 else f"-v{self.spec}"
        return location(kind, base, f"{system.name}{tag}{suffix}", self.s3)


async def v1_only_rows(
    order: list[System],
    base: Path,
    s3: dict[str, str],
    args: argparse.Namespace,
    on: Callable[[str], bool],
    record: Record,
) -> None:
    """forks: spec version 1 only (virtual reads: ``RemoteRows``)."""
    if on("forks"):
        n_forks, per_fork = (8, 100) if args.quick else (64, 1_000)
        for system in order:
            gc.collect()
            where = str(base / f"{system.name}-forks")
            if isinstance(system, Ours):
                seconds, per_ref = await bench_forks.ours(n_forks, per_fork, where)
            else:
                seconds, per_ref = await asyncio.to_thread(
                    bench_forks.theirs, n_forks, per_fork, where
                )
            record(
                f"fork merge {n_forks}x{per_fork} [local]",
                system.name,
                {"seconds": seconds, "payload_bytes_per_ref": per_ref},
            )


async def ops_log_rows(
    rows: RemoteRows,
    order: list[System],
    kind: str,
    base: Path,
    history: tuple[int, int],
    record: Record,
) -> None:
    """One repetition of the ops-log rows on ``kind`` storage, each system in ``order``
    after ``settle`` (no system pays for another's write-back)."""
    for system in order:
        where = rows.where(kind, base, system, "-oplog")
        settle(kind)
        row = await ops_log_workload(system, where, *history)
        label = f"ops log of {history[0]}x{history[1]} commits"
        record(rows.label(label, kind), system.name, row)


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """The results (workload -> system -> one row per repeat), what was skipped, and the
    load average before and after each part."""
    from tests.servers import create_s3_bucket, put_s3_object

    results: dict[str, dict[str, list[Result]]] = {}
    loads: dict[str, Any] = {}

    def record(workload: str, system: str, row: Result) -> None:
        results.setdefault(workload, {}).setdefault(system, []).append(row)

    sizes = {"local": 500} if args.quick else {"local": 10_000}
    s3_sizes = tuple(
        int(n) for n in (args.s3_sizes or ("100,500" if args.quick else "1000,10000")).split(",")
    )
    latencies = [float(ms) for ms in args.latency.split(",") if ms]
    ref_sizes = [10_000, 100_000] if args.quick else [1_000_000, 10_000_000]
    lookups = 1_000 if args.quick else 10_000
    history = parse_history(args.history or ("10x2" if args.quick else "100x2"))
    wanted = set(args.only.split(",")) if args.only else set(WORKLOADS[1] + WORKLOADS[2])
    specs = [int(s) for s in args.specs.split(",")]
    storage = set(args.storage.split(","))
    skipped = []
    if 2 in specs and 2 not in icechunk_spec_versions():
        specs.remove(2)
        skipped.append(
            f"spec v2 rows: icechunk {ICECHUNK_VERSION} writes spec version 1 only "
            "(they need icechunk >= 2, on Python >= 3.12)"
        )

    with s3_chain(args.s3_server) as (endpoint, proxy):
        s3 = {"endpoint": endpoint, "vbucket": "virtual-data"}
        create_s3_bucket(endpoint, "virtual-data")
        blob = np.random.default_rng(1).bytes(1024 * s3_sizes[0])
        put_s3_object(endpoint, "virtual-data", "blob.bin", blob)
        # the capacity rows GET an object of one chunk's size (blob.bin grows with the sizes)
        put_s3_object(endpoint, "virtual-data", "capacity.bin", bytes(CHUNK_BYTES))
        by_spec = [Rows(spec, s3) for spec in specs]

        async def remote(rep: int, base: Path, contended: bool) -> None:
            if not wanted & {"write", "read", "open", "virtual"} or "s3" not in storage:
                return
            for spec in specs:
                rows = RemoteRows(spec, s3, proxy)
                order = rows.systems if rep % 2 == 0 else rows.systems[::-1]
                on = (wanted & set(WORKLOADS[spec])).__contains__
                for ms in latencies:
                    proxy.configure(delay=ms / 1000)
                    tag = f"s3 {ms:g}ms" + (", contended" if contended else "")
                    if spec == specs[0]:
                        seen = await capacity(proxy.url, "virtual-data/capacity.bin")
                        record(f"server capacity [{tag}]", "bare client", {"requests/s": seen})
                    # all sizes at the largest delay, uncontended; else the smallest only
                    # (the 20 ms targets name both sizes; the run stays within ~25 minutes)
                    full = not contended and ms == max(latencies)
                    sizes_here = s3_sizes if full else s3_sizes[:1]
                    await rows.run(order, sizes_here, tag, on, record, base)
            proxy.configure(delay=0)

        loads["main"] = {"before": os.getloadavg()}
        for rep in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                base = Path(tmp)
                s3["bucket"] = f"bench-{rep}"
                create_s3_bucket(endpoint, s3["bucket"])
                await remote(rep, base, contended=False)
                for rows in by_spec:
                    # alternate who goes first
                    order = rows.systems if rep % 2 == 0 else rows.systems[::-1]
                    on = (wanted & set(WORKLOADS[rows.spec])).__contains__
                    if on("oplog") and "s3" in storage:
                        await ops_log_rows(rows, order, "s3", base, history, record)
                    if rows.spec == 1 and "local" in storage:
                        await v1_only_rows(order, base, s3, args, on, record)
        # the local ops-log rows: as many repetitions as the local rows (one repetition
        # of a disk-bound row spreads 2x), each system from a settled disk
        for rep in range(args.local_repeat or max(5, args.repeat)) if "local" in storage else ():
            with tempfile.TemporaryDirectory() as tmp:
                for rows in by_spec:
                    if (wanted & set(WORKLOADS[rows.spec])).__contains__("oplog"):
                        order = rows.systems if rep % 2 == 0 else rows.systems[::-1]
                        await ops_log_rows(rows, order, "local", Path(tmp), history, record)
        loads["main"]["after"] = os.getloadavg()
        # write, read and open on local disk, tmpfs and in memory, each settled first
        loads["local"] = {"before": os.getloadavg()}
        await local_rows(
            by_spec,
            [kind for kind in LOCAL_KINDS if kind in storage],
            sizes["local"],
            args.local_repeat or max(5, args.repeat),
            lambda spec: (wanted & set(WORKLOADS[spec])).__contains__,
            record,
            args.local_dir or None,
        )
        loads["local"]["after"] = os.getloadavg()
        if args.contention:
            loads["contended"] = {"before": os.getloadavg(), "busy_processes": cores()}
            with busy_cores(cores()):
                for rep in range(args.repeat):
                    with tempfile.TemporaryDirectory() as tmp:
                        s3["bucket"] = f"bench-contended-{rep}"
                        create_s3_bucket(endpoint, s3["bucket"])
                        await remote(rep, Path(tmp), contended=True)
                loads["contended"]["during"] = os.getloadavg()
            loads["contended"]["after"] = os.getloadavg()
    if "refs" in wanted:  # each measurement in a fresh process (bench_refs.py)
        for label, per in bench_refs.run(ref_sizes, specs, args.repeat, lookups).items():
            for system, measured in per.items():
                for row in measured:
                    record(label, system, row)
    return results, skipped, loads


def median(rows: list[Result], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else float("nan")


def table(results: dict[str, Any]) -> str:
    # other: plain zarr stores, or the bare client probing the S3 servers' capacity
    head = f"{'workload':44} {'metric':16} {'aicechunk':>11} {'icechunk':>11} {'ratio':>7}"
    lines = [f"{head} {'other':>9}"]
    for workload, per in results.items():
        metrics = sorted({k for rows in per.values() for row in rows for k in row})
        for metric in metrics:
            ours = median(per.get("aicechunk", []), metric)
            theirs = median(per.get("icechunk", []), metric)
            floor = next(
                (median(v, metric) for k, v in per.items() if k not in ("aicechunk", "icechunk")),
                float("nan"),
            )
            ratio = ours / theirs if theirs else float("nan")
            lines.append(
                f"{workload:44} {metric:16} {ours:11.4g} {theirs:11.4g} {ratio:7.2f} {floor:9.4g}"
            )
    return "\n".join(lines)


def peak_memory(quick: bool) -> dict[str, float]:
    """Peak RSS (MiB) of the write workload (spec version 1) per system, each in a fresh
    process (the refs rows report their own, from bench_refs.py)."""
    out = {}
    for system in ("aicechunk", "icechunk"):
        for workload in ("write",):
            call = f"w.write_workload(s,'local:'+t+'/r',{500 if quick else 10_000})"
            code = (
                "import asyncio,sys,tempfile;"
                f"sys.path[:0]=[{str(Path(__file__).resolve().parent)!r},"
                f"{str(Path(__file__).resolve().parent.parent)!r}];"
                "import systems,workloads as w;"
                f"s={{'aicechunk':systems.Ours,'icechunk':systems.Theirs}}[{system!r}](None);"
                f"t=tempfile.mkdtemp();asyncio.run({call})"
                # VmHWM: this process's own peak (ru_maxrss would include the parent's)
                ";print([int(l.split()[1]) for l in open('/proc/self/status')"
                " if l.startswith('VmHWM')][0]/1024)"
            )
            done = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                env={**os.environ, "RUST_LOG": "error"},
            )
            out[f"{system} {workload}"] = (
                float(done.stdout.strip().splitlines()[-1])
                if done.returncode == 0
                else float("nan")
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="", help=",".join(WORKLOADS[1] + ("oplog",)))
    parser.add_argument("--specs", default="1,2", help="spec versions to compare: 1, 2 or 1,2")
    parser.add_argument("--history", default="", help="oplog: BRANCHESxCOMMITS (100x2)")
    parser.add_argument("--json", default="benchmarks/results/latest.json")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--latency", default="0,20", help="S3 rows: milliseconds added per request (0,20)"
    )
    parser.add_argument(
        "--s3-server",
        choices=S3_SERVERS,
        default="fast",
        help="S3 rows: the in-memory benchmark server (fast) or moto behind the proxy",
    )
    parser.add_argument(
        "--storage",
        default=",".join(STORAGE),
        help="kinds of storage to run rows on: " + ",".join(STORAGE),
    )
    parser.add_argument(
        "--local-repeat",
        type=int,
        default=0,
        help="repetitions of the local, tmpfs and memory rows (default: max(5, --repeat))",
    )
    parser.add_argument(
        "--local-dir", default="", help="where the local disk rows write (default: $TMPDIR)"
    )
    parser.add_argument("--s3-sizes", default="", help="S3 rows: chunk counts (1000,10000)")
    parser.add_argument(
        "--contention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the S3 rows again with one CPU-spinning process per core",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    results, skipped, loads = asyncio.run(run(args))
    load_after = os.getloadavg()
    print(
        f"aicechunk vs icechunk {ICECHUNK_VERSION}, Python {platform.python_version()}, "
        f"S3 server: {args.s3_server}"
    )
    print(table(results))
    for what in skipped:
        print(f"skipped: {what}")
    memory = {} if args.no_memory else peak_memory(args.quick)
    if memory:
        print("\npeak RSS (MiB), fresh process each:")
        for key, value in memory.items():
            print(f"  {key:24} {value:8.1f}")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    for part, seen in loads.items():
        print(f"  {part}: {seen}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "icechunk_version": ICECHUNK_VERSION,
        "python_version": platform.python_version(),
        "load_average": {"before": load_before, "after": load_after, **loads},
        "latencies_ms": args.latency,
        "s3_server": args.s3_server,
        "contention_processes": cores() if args.contention else 0,
        "skipped": skipped,
        "results": results,
        "peak_rss_mib": memory,
    }
    Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
