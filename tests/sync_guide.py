"""The Icechunk 1.0 migration guide's two examples, run with ``import aicechunk.sync as
icechunk``, in the ways a user runs a script (see tests/test_sync_guide.py).

Source: earth-mover/icechunk, ``docs/docs/icechunk-python/migration.md`` (the "After" tab
of "Parallel Writes", and "Virtual Datasets"); the set-up the "After" code assumes
(``repo``, ``ds``, ``write_timestamp``) is that of ``docs/docs/icechunk-python/parallel.md``,
with a small synthetic dataset instead of ``xr.tutorial`` (no network) and S3 on moto.
Only the examples' user-facing code is quoted; it runs unchanged but for the virtual
example's ``storage=...`` placeholder (a syntax error as written), which becomes
``storage=storage,``; that example's container prefix lacks its final ``/``, which
icechunk 1.1.21 refuses as the facade does (checked), so it then runs with the ``/``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from typing import Any

import numpy as np
import xarray as xr
import zarr

import aicechunk.sync as icechunk

PARALLEL_AFTER = """\
from concurrent.futures import ProcessPoolExecutor


session = repo.writable_session("main")
with ProcessPoolExecutor() as executor:
    # obtain a writable session that can be pickled.
    fork = session.fork()
    # submit the writes, distribute `fork`
    futures = [
        executor.submit(write_timestamp, itime=i, session=fork)
        for i in range(ds.sizes["time"])
    ]
    # grab the Session objects from each individual write task
    remote_sessions = [f.result() for f in futures]

# manually merge the remote sessions in to the local session
session.merge(*remote_sessions)
session.commit("finished writes")
"""

VIRTUAL = """\
# The store defines the type of Storage that will be used for the virtual chunks
# other options are gcs_store, local_filesystem_store and http_store
store_config = s3_store(region="us-east-1")

# we create a container by giving it the url prefix and the store config
container = VirtualChunkContainer("s3://testbucket", store_config)

# we add it to the repo config
config = RepositoryConfig.default()
config.set_virtual_chunk_container(container)

# we set credentials for the virtual chunk container
# repo readers will also need this to be able to resolve the virtual chunks
credentials = containers_credentials(
    {
        # we identify for which container we are passing credentials
        # by using its url_prefx
        # If the value in the map is None, Icechunk will use the "natural" credential
        # type, usually fetching them from the process environment
        "s3://testbucket": s3_credentials(
            access_key_id="abcd", secret_access_key="0123"
        )
    }
)

# When we create the repo, its configuration will be saved to disk
# including its virtual chunk containers
repo = Repository.create(
    storage=...
    config=config,
    authorize_virtual_chunk_access=credentials,
)
"""


def make_dataset() -> xr.Dataset:
    """A stand-in for ``xr.tutorial.open_dataset("rasm").isel(time=slice(24))``."""
    rng = np.random.default_rng(16)
    return xr.Dataset(
        {"Tair": (("time", "y", "x"), rng.normal(size=(6, 4, 5)))},
        coords={"time": np.arange(6), "y": np.arange(4), "x": np.arange(5)},
    )


def write_timestamp(*, itime: int, session: icechunk.Session) -> icechunk.Session:
    """parallel.md's write task (it returns the session), on the synthetic dataset."""
    # pass a list to isel to preserve the time dimension
    ds = make_dataset().isel(time=[itime])
    # region="auto" tells Xarray to infer which "region" of the output arrays to write to.
    ds.to_zarr(session.store, region="auto", consolidated=False)
    return session


def s3(endpoint: str, bucket: str, prefix: str) -> Any:
    return icechunk.s3_storage(
        bucket=bucket,
        prefix=prefix,
        region="us-east-1",
        endpoint_url=endpoint,
        allow_http=True,
        force_path_style=True,
        access_key_id="testing",
        secret_access_key="testing",
    )


def parallel_writes(endpoint: str, bucket: str, prefix: str) -> None:
    """parallel.md's set-up, the guide's "After" code verbatim, then parallel.md's check."""
    ds = make_dataset()
    repo = icechunk.Repository.create(s3(endpoint, bucket, prefix))
    session = repo.writable_session("main")
    chunks = tuple(1 if dim == "time" else ds.sizes[dim] for dim in ds.Tair.dims)
    ds.to_zarr(session.store, compute=False, encoding={"Tair": {"chunks": chunks}}, mode="w")
    session.commit("initialize store")

    namespace = {"repo": repo, "ds": ds, "write_timestamp": write_timestamp}
    exec(compile(PARALLEL_AFTER, "migration.md[After]", "exec"), namespace)

    ondisk = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    xr.testing.assert_identical(ds, ondisk)
    messages = [info.message for info in repo.ancestry(branch="main")]
    assert messages[:2] == ["finished writes", "initialize store"], messages


def _run_virtual(module: Any, storage: Any, source: str) -> dict[str, Any]:
    names = ("s3_store", "VirtualChunkContainer", "RepositoryConfig")
    names += ("containers_credentials", "s3_credentials", "Repository")
    namespace: dict[str, Any] = {name: getattr(module, name) for name in names}
    namespace["storage"] = storage
    exec(compile(source, "migration.md[Virtual]", "exec"), namespace)
    return namespace


def virtual_container(endpoint: str, bucket: str, prefix: str) -> None:
    """The guide's virtual example: as written, icechunk 1.1.21 refuses its container
    prefix (``"s3://testbucket"`` lacks the final ``/``) and so does the facade, both with
    ``ValueError``; with the ``/`` it runs, then a virtual chunk is written through the
    store and the container is read back from the stored config."""
    storage = s3(endpoint, bucket, prefix)
    source = VIRTUAL.replace("storage=...\n", "storage=storage,\n")
    refusals = []
    for module, where in ((icechunk, storage), (_icechunk_itself(), None)):
        if module is None:
            continue
        try:
            _run_virtual(module, where or module.in_memory_storage(), source)
        except ValueError as err:
            refusals.append(str(err))
    assert len(refusals) == (2 if _icechunk_itself() else 1), refusals
    assert all("/" in why for why in refusals), refusals

    fixed = source.replace('"s3://testbucket"', '"s3://testbucket/"')
    repo = _run_virtual(icechunk, storage, fixed)["repo"]
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="v", shape=(4,), chunks=(2,), dtype="u1")
    session.store.set_virtual_ref("v/c/0", "s3://testbucket/file.bin", offset=0, length=2)
    session.commit("a virtual chunk")
    again = icechunk.Repository.open(storage)
    prefixes = [c.url_prefix for c in again.config.virtual_chunk_containers.values()]
    assert prefixes == ["s3://testbucket/"], prefixes
    assert again.readonly_session("main").chunk_type("/v", (0,)) is icechunk.ChunkType.VIRTUAL


def _icechunk_itself() -> Any:
    try:
        import icechunk as real
    except ImportError:  # pragma: no cover - icechunk is a test dependency
        return None
    return real


def main(endpoint: str, bucket: str, mode: str) -> None:
    """Both examples, run as ``mode`` says: ``plain`` (a script), ``spawn`` (workers
    spawned), ``thread`` (from ``asyncio.run`` code, on a worker thread), ``loop``
    (called straight from a coroutine, as a notebook cell does)."""

    def both() -> None:
        parallel_writes(endpoint, bucket, f"{mode}-parallel")
        virtual_container(endpoint, bucket, f"{mode}-virtual")

    if mode == "spawn":
        multiprocessing.set_start_method("spawn", force=True)
    if mode in ("plain", "spawn"):
        both()
    elif mode == "thread":

        async def from_thread() -> None:
            await asyncio.to_thread(both)

        asyncio.run(from_thread())
    elif mode == "loop":

        async def in_loop() -> None:
            both()

        asyncio.run(in_loop())
    else:
        raise ValueError(mode)
    print("ok", mode)


if __name__ == "__main__":
    main(*sys.argv[1:])
