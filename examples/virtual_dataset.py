"""A virtual dataset: chunks stay inside an existing file; the repository only references
them. The file here is a tiny NetCDF-like blob: a header, then two float32 variables.

Run: python examples/virtual_dataset.py [DIRECTORY]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr.api.asynchronous as zas

import aicechunk as aic

HEADER = b"CDF-LIKE" + bytes(56)  # 64 bytes of "header"


def write_legacy_file(path: Path) -> dict[str, tuple[int, int]]:
    """Write the external file; returns each variable's (offset, length)."""
    temperature = np.linspace(-5, 30, 48, dtype="<f4")
    pressure = np.linspace(900, 1050, 48, dtype="<f4")
    layout = {}
    blob = bytearray(HEADER)
    for name, values in (("temperature", temperature), ("pressure", pressure)):
        layout[name] = (len(blob), values.nbytes)
        blob += values.tobytes()
    path.write_bytes(bytes(blob))
    return layout


async def main(directory: Path, data_dir: Path, layout: dict[str, tuple[int, int]]) -> None:
    prefix = f"file://{data_dir}/"

    # the repository declares where virtual chunks may live...
    config = aic.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        aic.VirtualChunkContainer(prefix, aic.local_filesystem_store(str(data_dir)))
    )
    # ...and a reader authorizes that container (None: the store's natural credentials)
    credentials = aic.containers_credentials({prefix: None})
    repo = await aic.Repository.create(
        aic.local_filesystem_storage(directory / "repo"),
        config=config,
        authorize_virtual_chunk_access=credentials,
    )
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w", attributes={"source": "obs.nc"})
    for name, (offset, length) in layout.items():
        await group.create_array(
            name,
            shape=(48,),
            chunks=(48,),
            dtype="<f4",
            compressors=None,
            dimension_names=("time",),
        )
        await session.store.set_virtual_ref(
            f"{name}/c/0", f"{prefix}obs.nc", offset=offset, length=length
        )
    sid = await session.commit("reference obs.nc virtually")

    ro = await repo.readonly_session(snapshot_id=sid)
    for name in layout:
        arr = await zas.open_array(store=ro.store, path=name, mode="r")
        values = await arr.getitem(slice(None))
        kind = (await ro.chunk_type("/" + name, (0,))).name.lower()
        print(f"{name:>12}: {values[:3]} ... {values[-1]:.1f}  ({kind})")
    print("virtual locations:", await ro.all_virtual_chunk_locations())


def run(directory: Path) -> None:
    # plain file work happens before the event loop starts
    data_dir = (directory / "legacy").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    layout = write_legacy_file(data_dir / "obs.nc")
    asyncio.run(main(directory, data_dir, layout))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp))
