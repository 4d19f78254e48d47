"""Fork/merge: 64 forks x 1,000 chunks each on local storage, merge + commit, and the
payload bytes per chunk ref.

aicechunk and icechunk (1.1.21, or 2.x) run the same workload in the same process,
alternating, on spec version 1 repositories.
Run: python benchmarks/bench_forks.py [--forks 64] [--chunks 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import numpy as np
import zarr
import zarr.api.asynchronous as zas


async def ours(forks: int, chunks: int, path: str) -> tuple[float, float]:
    import aicechunk as aic

    repo = await aic.Repository.create(aic.local_filesystem_storage(path), spec_version=1)
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array(
        "data", shape=(forks * chunks,), chunks=(1,), dtype="i8", compressors=None
    )
    await session.commit("array")
    session = await repo.writable_session("main")  # a committed session is read-only
    payloads = []
    for i in range(forks):
        fork = session.fork()
        arr = await zas.open_array(store=fork.store, path="data")
        await arr.setitem(slice(i * chunks, (i + 1) * chunks), np.arange(chunks) + i)
        payloads.append(fork.to_bytes())
    start = time.perf_counter()
    returned = [aic.ForkSession.from_bytes(p) for p in payloads]
    await session.merge(*returned)
    await session.commit("merged")
    elapsed = time.perf_counter() - start
    return elapsed, statistics.mean(len(p) for p in payloads) / chunks


def theirs(forks: int, chunks: int, path: str) -> tuple[float, float]:
    import pickle

    import icechunk

    # icechunk 2.x creates spec version 2 unless told; 1.x knows no other
    spec = {} if icechunk.__version__.startswith("1.") else {"spec_version": 1}
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(path), **spec)
    session = repo.writable_session("main")
    group = zarr.group(store=session.store)
    group.create_array("data", shape=(forks * chunks,), chunks=(1,), dtype="i8", compressors=None)
    session.commit("array")
    session = repo.writable_session("main")
    payloads = []
    for i in range(forks):
        fork = session.fork()
        arr = zarr.open_array(store=fork.store, path="data")
        arr[i * chunks : (i + 1) * chunks] = np.arange(chunks) + i
        payloads.append(pickle.dumps(fork))
    start = time.perf_counter()
    returned = [pickle.loads(p) for p in payloads]
    session.merge(*returned)
    session.commit("merged")
    elapsed = time.perf_counter() - start
    return elapsed, statistics.mean(len(p) for p in payloads) / chunks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forks", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    mine: list[tuple[float, float]] = []
    peer: list[tuple[float, float]] = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            mine.append(asyncio.run(ours(args.forks, args.chunks, f"{tmp}/ours")))
            peer.append(theirs(args.forks, args.chunks, f"{tmp}/theirs"))
    t_ours = statistics.median(m[0] for m in mine)
    t_peer = statistics.median(p[0] for p in peer)
    print(f"merge+commit {args.forks} forks x {args.chunks} chunks (median of {args.repeat})")
    print(f"  aicechunk  {t_ours * 1000:8.1f} ms   payload {mine[0][1]:6.1f} B/chunk ref")
    print(f"  icechunk   {t_peer * 1000:8.1f} ms   payload {peer[0][1]:6.1f} B/chunk ref")
    print(f"  ratio aicechunk/icechunk: time {t_ours / t_peer:.2f}")


if __name__ == "__main__":
    main()
