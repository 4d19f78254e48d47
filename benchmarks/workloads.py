"""The workloads, each for one system (see ``systems.py``) and one repository location.

Both libraries go through zarr's async API on their store, so the zarr code is
identical. Every workload returns a ``Result``: metric name -> value.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import zarr
import zarr.api.asynchronous as zas
from systems import Ours, System, Theirs

import aicechunk as aic
from aicechunk.drivers import LocalDriver
from aicechunk.testing import CountingDriver

__all__ = [
    "CHUNK_BYTES",
    "Result",
    "many_refs",
    "open_row",
    "read_workload",
    "virtual_reads",
    "write_workload",
    "zarr_floor",
]

CHUNK_BYTES = 4096
Result = dict[str, float]


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


async def open_one_chunk(
    system: System, opener: Callable[[], Awaitable[Any]], counter: Callable[[], int]
) -> Result:
    start = time.perf_counter()
    before = counter()
    repo = await opener()
    session = await system.readonly(repo)
    arr = await zas.open_array(store=session.store, path="x", mode="r")
    await arr.getitem(slice(0, 1))
    return {"seconds": time.perf_counter() - start, "requests": counter() - before}


async def open_row(
    system: System, kind: str, where: str, proxy: str, proxy_count: Callable[[], int]
) -> Result:
    """Open the repository at ``where`` and read one chunk; on S3 also the number of
    requests (a counting driver for aicechunk, a counting proxy for icechunk)."""
    if isinstance(system, Ours):
        counting = CountingDriver(
            system.storage(where).driver() if kind == "s3" else LocalDriver(where.partition(":")[2])
        )
        storage = aic.storage_from_driver(counting)
        return await open_one_chunk(
            system, lambda: aic.Repository.open(storage), lambda: len(counting.calls)
        )
    if kind == "s3":
        return await open_one_chunk(system, lambda: system.open(where, proxy), proxy_count)
    row = await open_one_chunk(system, lambda: system.open(where), lambda: 0)
    row.pop("requests")
    return row


async def many_refs(system: System, where: str, n_refs: int, lookups: int) -> Result:
    """A commit with n_refs virtual chunk refs in one array, set in batches of 100,000
    through each library's public bulk call (``bench_refs.py`` runs this kind of row,
    each in a fresh process), then random lookups."""
    side = round(n_refs**0.5)
    n_refs = side * side
    repo = await system.create(where)
    session = await system.writable(repo)
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("v", shape=(side, side), chunks=(1, 1), dtype="u1", compressors=None)
    for first in range(0, n_refs, 100_000):
        flat = np.arange(first, min(n_refs, first + 100_000), dtype=np.int64)
        if isinstance(system, Ours):
            await session.store.set_virtual_refs_columns(
                "v",
                np.stack([flat // side, flat % side], axis=1),
                "s3://bucket/data.bin",
                flat,
                1,
                validate_containers=False,
            )
        else:
            specs = [
                icechunk.VirtualChunkSpec(
                    index=[i // side, i % side], location="s3://bucket/data.bin", offset=i, length=1
                )
                for i in flat.tolist()
            ]
            await asyncio.to_thread(
                session.store.set_virtual_refs, "v", specs, validate_containers=False
            )
    start = time.perf_counter()
    await system.commit(session, "many refs")
    encode = time.perf_counter() - start
    manifest_bytes = manifest_size(where)
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


def manifest_size(where: str) -> float:
    kind, _, rest = where.partition(":")
    if kind != "local":
        return float("nan")
    return float(sum(p.stat().st_size for p in Path(rest, "manifests").iterdir()))


async def virtual_reads(system: System, where: str, s3: dict[str, str], n: int) -> Result:
    """n virtual chunks from one object on the S3 server (spec version 1: aicechunk stores no
    configuration in a spec version 2 repository yet)."""
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
            config=config,
            authorize_virtual_chunk_access=creds,
            spec_version=1,
        )
    else:
        assert isinstance(system, Theirs)
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
            system.storage(where),
            config=config,
            authorize_virtual_chunk_access=creds,
            **system.create_options(),
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


async def zarr_floor(
    kind: str, base: Path, n_chunks: int, between: Callable[[], None] = lambda: None
) -> tuple[Result, Result]:
    """Plain zarr's write and read of the same array (``between`` runs untimed between
    them), in memory or on a ``LocalStore``."""
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
    between()
    start = time.perf_counter()
    arr = await zas.open_array(store=store, mode="r")
    await arr.getitem(slice(None))
    return {"seconds": write}, {"seconds": time.perf_counter() - start}
