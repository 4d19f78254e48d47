"""Benchmarks: aicechunk against icechunk 1.1.21 and plain zarr stores, side by side.

Every workload runs for each system in the same process, alternating, several times;
the table shows medians and the aicechunk/icechunk ratio, and a JSON file keeps it all.

    python benchmarks/run.py                 # full sizes (a few minutes)
    python benchmarks/run.py --quick         # small sizes, for a smoke run
    python benchmarks/run.py --only write,read --repeat 5 --json results.json

Both libraries go through zarr's async API on their store, so the zarr code is identical.
Request counts (workload 3) come from a counting driver for aicechunk and, for icechunk,
from a counting HTTP proxy in front of moto. moto runs in a process of its own, as a
remote S3 would: in this process it would share the GIL with a Python client only.
Workloads: write, read, open (+ one chunk), refs (1,000,000 chunk references), forks
(64 forks x 1,000 chunks merged and committed), virtual (1,000 virtual chunks on moto).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous as zas

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aicechunk as aic
from aicechunk.drivers import LocalDriver
from aicechunk.testing import CountingDriver

CHUNK_BYTES = 4096
Result = dict[str, float]


# --- repositories for each system --------------------------------------------------------


class System:
    name = ""

    async def create(self, where: str) -> Any: ...
    async def writable(self, repo: Any) -> Any: ...
    async def readonly(self, repo: Any) -> Any: ...
    async def commit(self, session: Any, message: str) -> None: ...
    async def open(self, where: str) -> Any: ...


def location(kind: str, base: Path, tag: str, s3: dict[str, str] | None) -> str:
    return f"{kind}:{base / tag}" if kind != "s3" else f"s3:{s3['bucket']}:{tag}"  # type: ignore[index]


class Ours(System):
    name = "aicechunk"

    def __init__(self, s3: dict[str, str] | None) -> None:
        self.s3 = s3
        self.memory: dict[str, aic.Storage] = {}

    def storage(self, where: str) -> aic.Storage:
        kind, _, rest = where.partition(":")
        if kind == "memory":
            return self.memory.setdefault(rest, aic.in_memory_storage())
        if kind == "local":
            return aic.local_filesystem_storage(rest)
        bucket, _, prefix = rest.partition(":")
        assert self.s3 is not None
        return aic.s3_storage(
            bucket=bucket,
            prefix=prefix,
            region="us-east-1",
            endpoint_url=self.s3["endpoint"],
            allow_http=True,
            force_path_style=True,
            access_key_id="testing",
            secret_access_key="testing",
        )

    async def create(self, where: str) -> Any:
        # spec v1, like for like with icechunk 1.1.21 (spec v2 is aicechunk's default)
        return await aic.Repository.create(self.storage(where), spec_version=1)

    async def open(self, where: str) -> Any:
        return await aic.Repository.open(self.storage(where))

    async def writable(self, repo: Any) -> Any:
        return await repo.writable_session("main")

    async def readonly(self, repo: Any) -> Any:
        return await repo.readonly_session(branch="main")

    async def commit(self, session: Any, message: str) -> None:
        await session.commit(message)


class Theirs(System):
    name = "icechunk"

    def __init__(self, s3: dict[str, str] | None) -> None:
        self.s3 = s3
        self.memory: dict[str, Any] = {}

    def storage(self, where: str, endpoint: str | None = None) -> Any:
        import icechunk

        kind, _, rest = where.partition(":")
        if kind == "memory":
            return self.memory.setdefault(rest, icechunk.in_memory_storage())
        if kind == "local":
            return icechunk.local_filesystem_storage(rest)
        bucket, _, prefix = rest.partition(":")
        assert self.s3 is not None
        return icechunk.s3_storage(
            bucket=bucket,
            prefix=prefix,
            region="us-east-1",
            endpoint_url=endpoint or self.s3["endpoint"],
            allow_http=True,
            force_path_style=True,
            access_key_id="testing",
            secret_access_key="testing",
        )

    async def create(self, where: str) -> Any:
        import icechunk

        return await asyncio.to_thread(icechunk.Repository.create, self.storage(where))

    async def open(self, where: str, endpoint: str | None = None) -> Any:
        import icechunk

        return await asyncio.to_thread(icechunk.Repository.open, self.storage(where, endpoint))

    async def writable(self, repo: Any) -> Any:
        return repo.writable_session("main")

    async def readonly(self, repo: Any) -> Any:
        return repo.readonly_session("main")

    async def commit(self, session: Any, message: str) -> None:
        await asyncio.to_thread(session.commit, message)


# --- workloads ---------------------------------------------------------------------------


async def write_workload(system: System, where: str, n_chunks: int) -> tuple[Any, Result]:
    repo = await system.create(where)
    session = await system.writable(repo)
    values = np.random.default_rng(0).random(n_chunks * CHUNK_BYTES // 4, dtype="f4")
    start = time.perf_counter()
    group = await zas.open_group(store=session.store, mode="w")
    arr = await group.create_array(
        "x", shape=values.shape, chunks=(CHUNK_BYTES // 4,), dtype="f4", compressors=None
    )
    await arr.setitem(slice(None), values)
    await system.commit(session, "write")
    return repo, {"seconds": time.perf_counter() - start}


async def read_workload(system: System, repo: Any) -> Result:
    session = await system.readonly(repo)
    start = time.perf_counter()
    arr = await zas.open_array(store=session.store, path="x", mode="r")
    data = await arr.getitem(slice(None))
    assert data.shape[0] > 0
    return {"seconds": time.perf_counter() - start}


async def open_one_chunk(system: System, where: str, counter: Callable[[], int]) -> Result:
    start = time.perf_counter()
    before = counter()
    repo = await system.open(where)
    session = await system.readonly(repo)
    arr = await zas.open_array(store=session.store, path="x", mode="r")
    await arr.getitem(slice(0, 1))
    return {"seconds": time.perf_counter() - start, "requests": counter() - before}


async def many_refs(system: System, where: str, n_refs: int, lookups: int) -> Result:
    """A commit with n_refs virtual chunk refs in one array, then random lookups."""
    side = round(n_refs**0.5)
    n_refs = side * side
    repo = await system.create(where)
    session = await system.writable(repo)
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("v", shape=(side, side), chunks=(1, 1), dtype="u1", compressors=None)
    if isinstance(system, Ours):
        from aicechunk.format.manifest import VirtualRef

        node = await session.get_node("/v")
        refs = session.changes.chunks.setdefault(node.id, {})
        for i in range(side):
            for j in range(side):
                refs[(i, j)] = VirtualRef("s3://bucket/data.bin", i * side + j, 1)
    else:
        import icechunk

        specs = [
            icechunk.VirtualChunkSpec(
                index=[i, j], location="s3://bucket/data.bin", offset=i * side + j, length=1
            )
            for i in range(side)
            for j in range(side)
        ]
        await asyncio.to_thread(
            session.store.set_virtual_refs, "v", specs, validate_containers=False
        )
    start = time.perf_counter()
    await system.commit(session, "many refs")
    encode = time.perf_counter() - start
    manifest_bytes = manifest_size(system, where)
    ro = await system.readonly(repo)
    rng = random.Random(0)
    keys = [(rng.randrange(side), rng.randrange(side)) for _ in range(lookups)]
    start = time.perf_counter()
    if isinstance(system, Ours):
        for key in keys:
            await ro.get_chunk_ref("/v", key)
    else:
        store = ro.store
        for i, j in keys:
            await store.getsize(f"v/c/{i}/{j}")
    return {
        "commit_seconds": encode,
        "manifest_bytes": manifest_bytes,
        "lookup_seconds": time.perf_counter() - start,
    }


def manifest_size(system: System, where: str) -> float:
    kind, _, rest = where.partition(":")
    if kind != "local":
        return float("nan")
    return float(sum(p.stat().st_size for p in Path(rest, "manifests").iterdir()))


async def virtual_reads(system: System, where: str, s3: dict[str, str], n: int) -> Result:
    """n virtual chunks from one object on moto."""
    prefix = f"s3://{s3['vbucket']}/"
    if isinstance(system, Ours):
        config = aic.RepositoryConfig.default()
        config.set_virtual_chunk_container(
            aic.VirtualChunkContainer(
                prefix,
                aic.s3_store(
                    region="us-east-1",
                    endpoint_url=s3["endpoint"],
                    allow_http=True,
                    force_path_style=True,
                ),
            )
        )
        creds = {prefix: aic.s3_credentials(access_key_id="testing", secret_access_key="testing")}
        repo = await aic.Repository.create(
            system.storage(where),
            config=config,  # type: ignore[attr-defined]
            authorize_virtual_chunk_access=creds,
            spec_version=1,
        )
    else:
        import icechunk

        config = icechunk.RepositoryConfig.default()
        config.set_virtual_chunk_container(
            icechunk.VirtualChunkContainer(
                prefix,
                icechunk.s3_store(
                    region="us-east-1",
                    endpoint_url=s3["endpoint"],
                    allow_http=True,
                    force_path_style=True,
                ),
            )
        )
        creds = icechunk.containers_credentials(
            {prefix: icechunk.s3_credentials(access_key_id="testing", secret_access_key="testing")}
        )
        repo = await asyncio.to_thread(
            icechunk.Repository.create,
            system.storage(where),  # type: ignore[attr-defined]
            config=config,
            authorize_virtual_chunk_access=creds,
        )
    session = await system.writable(repo)
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("v", shape=(n * 256,), chunks=(256,), dtype="f4", compressors=None)
    for i in range(n):
        ret = session.store.set_virtual_ref(
            f"v/c/{i}", f"{prefix}blob.bin", offset=i * 1024, length=1024
        )
        if asyncio.iscoroutine(ret):
            await ret
    await system.commit(session, "virtual")
    ro = await system.readonly(repo)
    start = time.perf_counter()
    arr = await zas.open_array(store=ro.store, path="v", mode="r")
    data = await arr.getitem(slice(None))
    assert data.shape == (n * 256,)
    return {"seconds": time.perf_counter() - start}


async def zarr_floor(kind: str, base: Path, n_chunks: int) -> tuple[Result, Result]:
    store: Any = (
        zarr.storage.MemoryStore()
        if kind == "memory"
        else zarr.storage.LocalStore(str(base / "zarr"))
    )
    values = np.random.default_rng(0).random(n_chunks * CHUNK_BYTES // 4, dtype="f4")
    start = time.perf_counter()
    arr = await zas.create_array(
        store, shape=values.shape, chunks=(CHUNK_BYTES // 4,), dtype="f4", compressors=None
    )
    await arr.setitem(slice(None), values)
    write = time.perf_counter() - start
    start = time.perf_counter()
    arr = await zas.open_array(store=store, mode="r")
    await arr.getitem(slice(None))
    return {"seconds": write}, {"seconds": time.perf_counter() - start}


# --- the run -----------------------------------------------------------------------------


def median(rows: list[Result], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.servers import counting_proxy, create_s3_bucket, moto_server

    results: dict[str, dict[str, list[Result]]] = {}

    def record(workload: str, system: str, row: Result) -> None:
        results.setdefault(workload, {}).setdefault(system, []).append(row)

    n = 500 if args.quick else 10_000
    n_s3 = 100 if args.quick else 1_000
    n_refs = 10_000 if args.quick else 1_000_000
    lookups = 1_000 if args.quick else 10_000
    wanted = set(args.only.split(",")) if args.only else None

    def on(name: str) -> bool:
        return wanted is None or name in wanted

    with (
        moto_server(own_process=True) as endpoint,
        counting_proxy(endpoint) as (proxy, proxy_count),
    ):
        import boto3

        s3 = {"endpoint": endpoint}
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3["vbucket"] = "virtual-data"
        create_s3_bucket(endpoint, "virtual-data")
        client.put_object(
            Bucket="virtual-data", Key="blob.bin", Body=np.random.default_rng(1).bytes(1024 * n_s3)
        )
        systems: list[System] = [Ours(s3), Theirs(s3)]
        for rep in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                base = Path(tmp)
                bucket = f"bench-{rep}"
                create_s3_bucket(endpoint, bucket)
                s3["bucket"] = bucket
                order = systems if rep % 2 == 0 else systems[::-1]  # alternate who goes first
                for kind, count in (("local", n), ("memory", n), ("s3", n_s3)):
                    if not (on("write") or on("read") or on("open")):
                        continue
                    for system in order:
                        where = location(kind, base, system.name, s3)
                        gc.collect()
                        repo, row = await write_workload(system, where, count)
                        record(f"write {count} chunks [{kind}]", system.name, row)
                        if on("read"):
                            record(
                                f"read {count} chunks [{kind}]",
                                system.name,
                                await read_workload(system, repo),
                            )
                        if on("open") and kind in ("local", "s3"):
                            if isinstance(system, Ours):
                                counting = CountingDriver(
                                    system.storage(where).driver()
                                    if kind == "s3"
                                    else LocalDriver(where.partition(":")[2])
                                )
                                storage = aic.storage_from_driver(counting)

                                async def open_ours(_w: str, st: aic.Storage = storage) -> Any:
                                    return await aic.Repository.open(st)

                                system.open = open_ours  # type: ignore[method-assign]
                                row = await open_one_chunk(
                                    system, where, lambda c=counting: len(c.calls)
                                )
                                del system.open
                            elif kind == "s3":
                                theirs = system

                                async def open_theirs(w: str, t: Theirs = theirs) -> Any:  # type: ignore[misc]
                                    return await Theirs.open(t, w, proxy)

                                system.open = open_theirs  # type: ignore[method-assign,assignment]
                                row = await open_one_chunk(system, where, proxy_count)
                                del system.open
                            else:
                                row = await open_one_chunk(system, where, lambda: 0)
                                row.pop("requests")
                            record(f"open + read 1 chunk [{kind}]", system.name, row)
                    if kind != "s3" and (on("write") or on("read")):
                        w, r = await zarr_floor(kind, base, count)
                        record(f"write {count} chunks [{kind}]", f"zarr {kind}", w)
                        record(f"read {count} chunks [{kind}]", f"zarr {kind}", r)
                if on("refs"):
                    for system in order:
                        where = location("local", base, system.name + "-refs", s3)
                        gc.collect()
                        record(
                            f"{n_refs} chunk refs",
                            system.name,
                            await many_refs(system, where, n_refs, lookups),
                        )
                if on("forks"):
                    import bench_forks

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
                if on("virtual"):
                    for system in order:
                        where = location("local", base, system.name + "-virtual", s3)
                        record(
                            f"virtual reads {n_s3} [s3]",
                            system.name,
                            await virtual_reads(system, where, s3, n_s3),
                        )
    return {name: {sys_: rows for sys_, rows in per.items()} for name, per in results.items()}


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'workload':40} {'metric':16} {'aicechunk':>11} {'icechunk':>11} {'ratio':>7} {'zarr':>9}"
    ]
    for workload, per in results.items():
        metrics = sorted({k for rows in per.values() for row in rows for k in row})
        for metric in metrics:
            ours = median(per.get("aicechunk", []), metric)
            theirs = median(per.get("icechunk", []), metric)
            floor = next(
                (median(v, metric) for k, v in per.items() if k.startswith("zarr")), float("nan")
            )
            ratio = ours / theirs if theirs else float("nan")
            lines.append(
                f"{workload:40} {metric:16} {ours:11.4g} {theirs:11.4g} {ratio:7.2f} {floor:9.4g}"
            )
    return "\n".join(lines)


def peak_memory(quick: bool) -> dict[str, float]:
    """Peak RSS (MiB) of workloads 1 and 4 per system, each in a fresh process."""
    out = {}
    for system in ("aicechunk", "icechunk"):
        for workload in ("write", "refs"):
            code = (
                "import asyncio,resource,sys,tempfile,pathlib;"
                f"sys.path.insert(0,{str(Path(__file__).resolve().parent)!r});"
                f"sys.argv=['x'];import run as r;"
                "s={'aicechunk':r.Ours,'icechunk':r.Theirs}[" + repr(system) + "](None);"
                "t=tempfile.mkdtemp();"
                + (
                    "asyncio.run(r.write_workload(s,'local:'+t+'/r',"
                    + str(500 if quick else 10_000)
                    + "))"
                    if workload == "write"
                    else "asyncio.run(r.many_refs(s,'local:'+t+'/r',"
                    + str(10_000 if quick else 1_000_000)
                    + ",10))"
                )
                # VmHWM: this process's own peak (ru_maxrss would include the parent's)
                + ";print([int(l.split()[1]) for l in open('/proc/self/status')"
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
    parser.add_argument("--only", default="", help="write,read,open,refs,forks,virtual")
    parser.add_argument("--json", default="benchmarks/results/latest.json")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(table(results))
    memory = {} if args.no_memory else peak_memory(args.quick)
    if memory:
        print("\npeak RSS (MiB), fresh process each:")
        for key, value in memory.items():
            print(f"  {key:24} {value:8.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"results": results, "peak_rss_mib": memory}, indent=1))


if __name__ == "__main__":
    main()
