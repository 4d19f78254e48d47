"""The two systems the benchmarks compare, behind one small interface.

``Ours`` is aicechunk; ``Theirs`` is whichever icechunk is importable: 1.1.21 (Python
3.11, spec version 1 only) or 2.x (Python >= 3.12, spec versions 1 and 2). Each system
is made for one spec version and creates its repositories of that version explicitly,
so a row compares like with like whatever either library's default is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import icechunk

import aicechunk as aic

__all__ = [
    "ICECHUNK_VERSION",
    "Ours",
    "System",
    "Theirs",
    "icechunk_spec_versions",
    "location",
]

icechunk.set_logs_filter("error")  # not the warning that local storage is not for concurrency

#: the version of the icechunk package the benchmarks compare with
ICECHUNK_VERSION: str = icechunk.__version__


def icechunk_spec_versions() -> tuple[int, ...]:
    """The spec versions the importable icechunk writes (2.x writes 1 and 2)."""
    return (1,) if int(ICECHUNK_VERSION.split(".")[0]) < 2 else (1, 2)


def location(kind: str, base: Any, tag: str, s3: dict[str, str] | None) -> str:
    """Where a repository lives: ``local:<dir>``, ``memory:<tag>`` or
    ``s3:<bucket>:<prefix>``."""
    return f"{kind}:{base / tag}" if kind != "s3" else f"s3:{s3['bucket']}:{tag}"  # type: ignore[index]


class System:
    """A library under test, making and using repositories of spec version ``spec``."""

    name = ""

    def __init__(self, s3: dict[str, str] | None, spec: int = 1) -> None:
        self.s3 = s3
        self.spec = spec
        self.memory: dict[str, Any] = {}

    async def create(self, where: str) -> Any: ...
    async def open(self, where: str, endpoint: str | None = None) -> Any: ...
    async def writable(self, repo: Any, branch: str = "main") -> Any: ...
    async def readonly(self, repo: Any) -> Any: ...
    async def commit(self, session: Any, message: str) -> str: ...
    async def create_branch(self, repo: Any, name: str, snapshot_id: str) -> None: ...
    async def list_branches(self, repo: Any) -> set[str]: ...
    async def ops_log(self, repo: Any) -> int:
        """How many entries the repository's operations log has (reading them all)."""
        ...


class Ours(System):
    name = "aicechunk"

    def storage(self, where: str, endpoint: str | None = None) -> aic.Storage:
        kind, _, rest = where.partition(":")
        if kind == "memory":
            found: aic.Storage = self.memory.setdefault(rest, aic.in_memory_storage())
            return found
        if kind == "local":
            return aic.local_filesystem_storage(rest)
        bucket, _, prefix = rest.partition(":")
        assert self.s3 is not None
        return aic.s3_storage(
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
        return await aic.Repository.create(self.storage(where), spec_version=self.spec)

    async def open(self, where: str, endpoint: str | None = None) -> Any:
        return await aic.Repository.open(self.storage(where, endpoint))

    async def writable(self, repo: Any, branch: str = "main") -> Any:
        return await repo.writable_session(branch)

    async def readonly(self, repo: Any) -> Any:
        return await repo.readonly_session(branch="main")

    async def commit(self, session: Any, message: str) -> str:
        return str(await session.commit(message))

    async def create_branch(self, repo: Any, name: str, snapshot_id: str) -> None:
        await repo.create_branch(name, snapshot_id)

    async def list_branches(self, repo: Any) -> set[str]:
        return set(await repo.list_branches())

    async def ops_log(self, repo: Any) -> int:
        return sum([1 async for _ in repo.ops_log()])


class Theirs(System):
    name = "icechunk"

    def __init__(self, s3: dict[str, str] | None, spec: int = 1) -> None:
        if spec not in icechunk_spec_versions():
            raise ValueError(f"icechunk {ICECHUNK_VERSION} does not write spec version {spec}")
        super().__init__(s3, spec)

    def storage(self, where: str, endpoint: str | None = None) -> Any:
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

    def create_options(self) -> dict[str, Any]:
        """``Repository.create``'s spec version argument (icechunk 1.x has none)."""
        return {"spec_version": self.spec} if icechunk_spec_versions() != (1,) else {}

    async def create(self, where: str) -> Any:
        return await asyncio.to_thread(
            icechunk.Repository.create, self.storage(where), **self.create_options()
        )

    async def open(self, where: str, endpoint: str | None = None) -> Any:
        return await asyncio.to_thread(icechunk.Repository.open, self.storage(where, endpoint))

    async def writable(self, repo: Any, branch: str = "main") -> Any:
        return repo.writable_session(branch)

    async def readonly(self, repo: Any) -> Any:
        return repo.readonly_session("main")

    async def commit(self, session: Any, message: str) -> str:
        return str(await asyncio.to_thread(session.commit, message))

    async def create_branch(self, repo: Any, name: str, snapshot_id: str) -> None:
        await asyncio.to_thread(repo.create_branch, name, snapshot_id)

    async def list_branches(self, repo: Any) -> set[str]:
        return set(await asyncio.to_thread(repo.list_branches))

    async def ops_log(self, repo: Any) -> int:
        return await asyncio.to_thread(lambda: sum(1 for _ in repo.ops_log()))
