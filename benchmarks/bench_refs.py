"""Commits of many virtual chunk references: aicechunk against icechunk, each measurement
in a fresh process.

For each library, spec version and size ``n``, a child process creates a repository on
local disk with one array of ``n`` chunks (shape ``(side, side)``, chunks ``(1, 1)``),
sets its references in batches of 100,000 through each library's public bulk call
(icechunk: ``store.set_virtual_refs`` with a list of ``VirtualChunkSpec``; aicechunk:
``store.set_virtual_refs_columns`` with numpy columns), commits, and reports the commit's
seconds, the process's peak RSS after the commit (VmHWM: the batches are bounded, so
this is the commit's own memory plus the references held), the manifest's bytes, and
the seconds of 10,000 random lookups on a read-only session (aicechunk:
``get_chunk_ref``; icechunk: ``store.getsize``).

    python benchmarks/bench_refs.py                      # 1M and 10M, spec 1 and 2
    python benchmarks/bench_refs.py --sizes 100000 --specs 2 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BATCH = 100_000
LARGE = 5_000_000  # sizes from here on are measured once per library
LOCATION = "s3://bucket/data.bin"
nan = float("nan")
METRICS = ("set_seconds", "commit_seconds", "peak_rss_mib", "manifest_bytes", "lookup_seconds")


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def child(system_name: str, spec: int, n: int, lookups: int) -> dict[str, float]:
    """One measurement (runs in a process of its own)."""
    import icechunk
    import numpy as np
    import zarr.api.asynchronous as zas
    from systems import Ours, Theirs

    side = round(n**0.5)
    n = side * side
    system = (Ours if system_name == "aicechunk" else Theirs)(None, spec)
    where = Path(tempfile.mkdtemp(prefix="bench-refs-")) / "repo"
    repo = await system.create(f"local:{where}")
    session = await system.writable(repo)
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("v", shape=(side, side), chunks=(1, 1), dtype="u1", compressors=None)
    start = time.perf_counter()
    for first in range(0, n, BATCH):
        flat = np.arange(first, min(n, first + BATCH), dtype=np.int64)
        if system_name == "aicechunk":
            coords = np.stack([flat // side, flat % side], axis=1)
            await session.store.set_virtual_refs_columns(
                "v", coords, LOCATION, flat, 1, validate_containers=False
            )
        else:
            specs = [
                icechunk.VirtualChunkSpec(
                    index=[i // side, i % side], location=LOCATION, offset=i, length=1
                )
                for i in flat.tolist()
            ]
            await asyncio.to_thread(
                session.store.set_virtual_refs, "v", specs, validate_containers=False
            )
            del specs
    set_seconds = time.perf_counter() - start
    start = time.perf_counter()
    await system.commit(session, "many refs")
    commit_seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    manifests = sum(p.stat().st_size for p in (where / "manifests").iterdir())
    del session
    ro = await system.readonly(repo)
    rng = np.random.default_rng(0)
    keys = rng.integers(0, n, lookups).tolist()
    start = time.perf_counter()
    if system_name == "aicechunk":
        for k in keys:
            ref = await ro.get_chunk_ref("/v", (k // side, k % side))
            assert ref is not None and ref.offset == k
    else:
        store = ro.store
        for k in keys:
            assert await store.getsize(f"v/c/{k // side}/{k % side}") == 1
    return {
        "set_seconds": set_seconds,
        "commit_seconds": commit_seconds,
        "peak_rss_mib": peak,
        "manifest_bytes": float(manifests),
        "lookup_seconds": time.perf_counter() - start,
    }


def measure(system: str, spec: int, n: int, lookups: int) -> dict[str, float]:
    """Run ``child`` in a fresh interpreter and return its row (NaNs if it failed)."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", system, str(spec), str(n), str(lookups)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "RUST_LOG": "error",
            "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]),
        },
    )
    if done.returncode != 0:
        print(f"{system} spec {spec} n={n} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return dict.fromkeys(METRICS, float("nan"))
    row: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def run(
    sizes: list[int],
    specs: list[int],
    repeat: int,
    lookups: int,
    systems: tuple[str, ...] = ("aicechunk", "icechunk"),
) -> dict[str, Any]:
    """label -> system -> rows, alternating which library goes first."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for n in sizes:
        for spec in specs:
            label = f"{n} chunk refs [local{', v2' if spec == 2 else ''}]"
            # ten million references take minutes and gigabytes (icechunk): once each
            for rep in range(repeat if n < LARGE else min(repeat, 1)):
                order = systems if rep % 2 == 0 else systems[::-1]
                for system in order:
                    row = measure(system, spec, n, lookups)
                    results.setdefault(label, {}).setdefault(system, []).append(row)
                    print(f"  {label} {system}: {row}", file=sys.stderr, flush=True)
    return results


def table(results: dict[str, Any]) -> str:
    """Medians per metric and the aicechunk/icechunk ratio."""
    lines = [f"{'workload':30} {'metric':16} {'aicechunk':>11} {'icechunk':>11} {'ratio':>7}"]
    for label, per in results.items():
        for metric in METRICS:
            ours = statistics.median([r[metric] for r in per.get("aicechunk", [])] or [nan])
            theirs = statistics.median([r[metric] for r in per.get("icechunk", [])] or [nan])
            ratio = ours / theirs if theirs else float("nan")
            lines.append(f"{label:30} {metric:16} {ours:11.4g} {theirs:11.4g} {ratio:7.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--specs", default="1,2")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--systems", default="aicechunk,icechunk")
    parser.add_argument("--json", default="benchmarks/results/refs.json")
    parser.add_argument("--child", nargs=4, metavar=("SYSTEM", "SPEC", "N", "LOOKUPS"))
    args = parser.parse_args()
    if args.child:
        system, spec, n, lookups = args.child
        print(json.dumps(asyncio.run(child(system, int(spec), int(n), int(lookups)))))
        return
    import icechunk

    load_before = os.getloadavg()
    results = run(
        [int(s) for s in args.sizes.split(",")],
        [int(s) for s in args.specs.split(",")],
        args.repeat,
        args.lookups,
        tuple(args.systems.split(",")),
    )
    load_after = os.getloadavg()
    print(f"aicechunk vs icechunk {icechunk.__version__}, Python {platform.python_version()}")
    print(table(results))
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "icechunk_version": icechunk.__version__,
                "python_version": platform.python_version(),
                "load_average": {"before": load_before, "after": load_after},
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
