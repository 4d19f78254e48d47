"""The ``aicechunk`` command line (also ``python -m aicechunk``).

Every command takes a storage URL: a path or ``file://``, ``s3://bucket/prefix``,
``gs://bucket/prefix``, ``https://...`` (read-only). S3 and GCS options come as flags or
environment variables. Errors print one line and exit with status 1; ``--json`` prints
machine-readable output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aicechunk as aic
from aicechunk.config import INLINE_CHUNK_THRESHOLD_BYTES
from aicechunk.drivers.urls import redact_url
from aicechunk.errors import AicechunkError, redact_credentials
from aicechunk.storage import storage_from_url, url_scheme
from aicechunk.store.metadata import metadata_document


def storage_for(url: str, args: argparse.Namespace) -> aic.Storage:
    """The storage a URL names, with S3/GCS options from flags or the environment."""
    scheme = url_scheme(url)
    options: dict[str, Any] = {}
    if scheme == "s3":
        endpoint = args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        key = args.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        options = {
            "region": args.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION"),
            "endpoint_url": endpoint,
            "allow_http": args.allow_http or bool(endpoint and endpoint.startswith("http://")),
            "force_path_style": args.force_path_style,
            "access_key_id": key if secret else None,
            "secret_access_key": secret if key else None,
            "session_token": os.environ.get("AWS_SESSION_TOKEN") if key and secret else None,
            "anonymous": args.anonymous,
        }
    elif scheme == "gs":
        options = {
            "endpoint_url": args.endpoint_url,
            "anonymous": args.anonymous,
            "service_account_file": os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"),
        }
    return storage_from_url(url, **options)


def printable(text: str) -> str:
    """``text`` with every character that is not printable (controls such as the terminal
    escape U+009B, format characters, separators, tabs and line breaks; not the space)
    escaped as Python escapes it (``\\x9b``): names and messages from a repository never
    reach the terminal raw."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def out(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON (ASCII, escaped) or ``text`` line by line, escaped."""
    if args.json:
        print(json.dumps(data, indent=1, default=str))
    else:
        print("\n".join(printable(line) for line in text.split("\n")))


async def resolve_session(repo: aic.Repository, args: argparse.Namespace) -> aic.Session:
    if getattr(args, "snapshot", None):
        return await repo.readonly_session(snapshot_id=args.snapshot)
    if getattr(args, "tag", None):
        return await repo.readonly_session(tag=args.tag)
    return await repo.readonly_session(branch=getattr(args, "branch", None) or "main")


async def cmd_info(repo: aic.Repository, args: argparse.Namespace) -> None:
    try:
        branches = {b: await repo.lookup_branch(b) for b in sorted(await repo.list_branches())}
        tags = {t: await repo.lookup_tag(t) for t in sorted(await repo.list_tags())}
    except aic.RepositoryError:  # storage that cannot list (HTTP)
        branches, tags = {"main": await repo.lookup_branch("main")}, {}
    config = repo.config
    data: dict[str, Any] = {
        "storage": repr(repo.storage),
        "spec_version": repo.spec_version,
        "branches": branches,
        "tags": tags,
        "inline_chunk_threshold_bytes": INLINE_CHUNK_THRESHOLD_BYTES
        if config.inline_chunk_threshold_bytes is None
        else config.inline_chunk_threshold_bytes,
        "virtual_chunk_containers": sorted(
            redact_url(prefix) for prefix in config.virtual_chunk_containers
        ),
    }
    lines = [f"repository  {data['storage']}", f"spec        Icechunk format v{repo.spec_version}"]
    lines += [f"branch      {printable(name):20} {sid}" for name, sid in branches.items()]
    lines += [f"tag         {printable(name):20} {sid}" for name, sid in tags.items()]
    lines.append(f"inline      chunks <= {data['inline_chunk_threshold_bytes']} bytes")
    for prefix in data["virtual_chunk_containers"]:
        lines.append(f"virtual     {prefix}")
    out(args, data, "\n".join(lines))


async def cmd_log(repo: aic.Repository, args: argparse.Namespace) -> None:
    kwargs = {"tag": args.tag} if args.tag else {"branch": args.branch or "main"}
    progress = Progress()
    entries = []
    async for info in repo.ancestry(**kwargs):
        entries.append(info)
        progress.show(f"reading history: {len(entries)} snapshots")
    progress.done()
    data = [
        {
            "id": e.id,
            "parent_id": e.parent_id,
            "written_at": e.written_at.isoformat(),
            "message": e.message,
            "metadata": e.metadata,
        }
        for e in entries
    ]
    text = "\n".join(
        f"{e.id} {e.written_at:%Y-%m-%d %H:%M:%S} {printable(e.message)}" for e in entries
    )
    out(args, data, text)


class Progress:
    """One self-rewriting status line on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[2K" + printable(text)[:100])
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


async def cmd_ls(repo: aic.Repository, args: argparse.Namespace) -> None:
    session = await resolve_session(repo, args)
    prefix = "/" + args.path.strip("/") if args.path else "/"
    rows = []
    progress = Progress()
    nodes = await session.list_nodes()
    for position, node in enumerate(nodes, 1):
        progress.show(f"reading {position}/{len(nodes)}: {node.path}")
        if not (prefix == "/" or node.path == prefix or node.path.startswith(prefix + "/")):
            continue
        row: dict[str, Any] = {"path": node.path, "kind": "array" if node.is_array else "group"}
        if node.array is not None:
            meta = metadata_document(node.path, node.user_data)
            row["shape"] = [d.array_length for d in node.array.shape]
            row["chunks"] = [d.chunk_length for d in node.array.shape]
            row["dtype"] = meta.get("data_type")
            row["dimension_names"] = node.array.dimension_names
            row["chunk_count"] = sum([1 async for _ in session.chunk_coords(node.path)])
        rows.append(row)
    progress.done()
    if not rows and prefix != "/":
        raise AicechunkError(f"no group or array at {prefix} in this snapshot")
    lines = []
    for r in rows:
        if r["kind"] == "group":
            lines.append(f"{r['path']:30} group")
        else:
            lines.append(
                f"{r['path']:30} array  {tuple(r['shape'])} {r['dtype']} chunks "
                f"{tuple(r['chunks'])}  {r['chunk_count']} written"
            )
    out(args, rows, "\n".join(lines))


async def cmd_diff(repo: aic.Repository, args: argparse.Namespace) -> None:
    async def ref(name: str) -> str:
        for lookup in (repo.lookup_branch, repo.lookup_tag):
            try:
                return await lookup(name)
            except (aic.RefNotFoundError, aic.InvalidRefNameError):
                continue
        try:
            return (await repo.readonly_session(snapshot_id=name)).snapshot_id
        except aic.RefNotFoundError as err:
            hint = f" ({err})" if len(name) == 20 else ""  # the length of an id
            raise AicechunkError(f"no branch, tag or snapshot is called {name!r}{hint}") from None

    diff = await repo.diff(
        from_snapshot_id=await ref(args.from_ref), to_snapshot_id=await ref(args.to_ref)
    )
    data: dict[str, Any] = {
        "new_groups": sorted(diff.new_groups),
        "new_arrays": sorted(diff.new_arrays),
        "deleted_groups": sorted(diff.deleted_groups),
        "deleted_arrays": sorted(diff.deleted_arrays),
        "updated_groups": sorted(diff.updated_groups),
        "updated_arrays": sorted(diff.updated_arrays),
        "updated_chunks": {p: len(c) for p, c in sorted(diff.updated_chunks.items())},
    }
    lines = []
    for key, sign in (
        ("new_groups", "+ group"),
        ("new_arrays", "+ array"),
        ("deleted_groups", "- group"),
        ("deleted_arrays", "- array"),
        ("updated_groups", "~ group"),
        ("updated_arrays", "~ array"),
    ):
        lines += [f"{sign} {p}" for p in data[key]]
    lines += [f"~ chunks {p}: {n} chunk(s)" for p, n in data["updated_chunks"].items()]
    out(args, data, "\n".join(lines) or "no changes")


async def cmd_refs(repo: aic.Repository, args: argparse.Namespace, kind: str) -> None:
    create = getattr(repo, f"create_{kind}")
    delete = getattr(repo, f"delete_{kind}")
    listing = getattr(repo, f"list_{kind}es" if kind == "branch" else f"list_{kind}s")
    lookup = getattr(repo, f"lookup_{kind}")
    if args.action == "create":
        target = args.snapshot or await repo.lookup_branch(args.source or "main")
        await create(args.name, target)
        message = f"created {kind} {printable(args.name)} at {target}"
        out(args, {"created": args.name, "snapshot": target}, message)
    elif args.action == "delete":
        await delete(args.name)
        out(args, {"deleted": args.name}, f"deleted {kind} {printable(args.name)}")
    else:
        names = sorted(await listing())
        rows = {n: await lookup(n) for n in names}
        out(args, rows, "\n".join(f"{printable(n):20} {sid}" for n, sid in rows.items()))


async def demo(directory: Path) -> None:
    """Create a repository, write, commit, branch, fork and merge, and say what happened."""
    import numpy as np
    import zarr.api.asynchronous as zas

    repo = await aic.Repository.create(aic.local_filesystem_storage(directory))
    print(f"1. created a repository in {directory}")
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w", attributes={"title": "demo"})
    arr = await group.create_array(
        "temperature",
        shape=(8, 100),
        chunks=(1, 100),
        dtype="f4",
        dimension_names=("station", "time"),
    )
    await arr.setitem(slice(None), np.zeros((8, 100), dtype="f4"))
    first = await session.commit("create temperature", metadata={"by": "demo"})
    print(f"2. wrote an 8x100 array and committed {first}")
    session = await repo.writable_session("main")  # a committed session is read-only
    payloads = [session.fork().to_bytes() for _ in range(8)]

    async def station(i: int) -> aic.ForkSession:
        fork = aic.ForkSession.from_bytes(payloads[i])
        a = await zas.open_array(store=fork.store, path="temperature")
        await a.setitem(i, np.linspace(10 + i, 20 + i, 100, dtype="f4"))
        return fork

    forks = await asyncio.gather(*(station(i) for i in range(8)))
    await session.merge(*forks)
    second = await session.commit("8 stations written in parallel")
    print(f"3. 8 forks wrote one station each, merged, committed {second}")
    await repo.create_branch("experiment", first)
    exp = await repo.writable_session("experiment")
    a = await zas.open_array(store=exp.store, path="temperature")
    await a.setitem(0, np.full(100, -99, dtype="f4"))
    await exp.commit("an experiment on a branch")
    await repo.create_tag("v1", second)
    print("4. branch 'experiment' from the first commit; tag 'v1' on the second")
    views: list[tuple[str, dict[str, Any]]] = [
        ("v1", {"tag": "v1"}),
        ("experiment", {"branch": "experiment"}),
    ]
    for label, kwargs in views:
        ro = await repo.readonly_session(**kwargs)
        values: Any = await (
            await zas.open_array(store=ro.store, path="temperature", mode="r")
        ).getitem((0, slice(0, 3)))
        print(f"   {label:>10}: station 0 starts {values}")
    print("5. history of main:")
    async for info in repo.ancestry(branch="main"):
        print(f"   {info.id}  {info.message}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aicechunk", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("url", help="repository location: path, s3://, gs://, https://")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--region")
    common.add_argument("--endpoint-url")
    common.add_argument("--allow-http", action="store_true")
    common.add_argument("--force-path-style", action="store_true")
    common.add_argument("--anonymous", action="store_true")
    common.add_argument("--access-key-id", help="or AWS_ACCESS_KEY_ID (secret: env only)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "create",
        parents=[common],
        aliases=["init"],
        help="create an empty repository (the location must be empty)",
    )
    sub.add_parser("info", parents=[common], help="spec version, branches, tags, config")
    log = sub.add_parser("log", parents=[common], help="history, one line per snapshot")
    log.add_argument("--branch")
    log.add_argument("--tag")
    ls = sub.add_parser("ls", parents=[common], help="groups and arrays")
    ls.add_argument("path", nargs="?", default="")
    ls.add_argument("--branch")
    ls.add_argument("--tag")
    ls.add_argument("--snapshot")
    diff = sub.add_parser("diff", parents=[common], help="changes between two refs")
    diff.add_argument("from_ref")
    diff.add_argument("to_ref")
    for kind, plural in (("branch", "branches"), ("tag", "tags")):
        p = sub.add_parser(kind, parents=[common], help=f"create, list, delete {plural}")
        p.add_argument("action", choices=["list", "create", "delete"])
        p.add_argument("name", nargs="?")
        p.add_argument("--snapshot", help="create at this snapshot id")
        p.add_argument("--from", dest="source", help="create at this branch's tip")
    demo_help = (
        "a guided tour on local disk; the repository is kept in DIRECTORY if given, "
        "else deleted at the end"
    )
    d = sub.add_parser("demo", help=demo_help, description=demo_help)
    d.add_argument("directory", nargs="?")
    return parser


async def run(args: argparse.Namespace) -> None:
    if args.command == "demo":
        if args.directory:
            await demo(Path(args.directory))
        else:
            with tempfile.TemporaryDirectory(prefix="aicechunk-demo-") as tmp:
                await demo(Path(tmp) / "repo")
        return
    if args.command in ("branch", "tag") and args.action != "list" and not args.name:
        raise AicechunkError(f"{args.command} {args.action} needs a name")
    storage = storage_for(args.url, args)
    if args.command in ("create", "init"):
        created = await aic.Repository.create(storage)
        await created.close()
        where = redact_url(args.url)
        out(args, {"created": where}, f"created an empty repository at {where}")
        return
    repo = await aic.Repository.open(storage)
    try:
        if args.command == "info":
            await cmd_info(repo, args)
        elif args.command == "log":
            await cmd_log(repo, args)
        elif args.command == "ls":
            await cmd_ls(repo, args)
        elif args.command == "diff":
            await cmd_diff(repo, args)
        else:
            await cmd_refs(repo, args, args.command)
    finally:
        await storage.driver().close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aicechunk`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes positionals only up to the first option: ``ls URL --branch b PATH``
    if extra and args.command == "ls" and not args.path and len(extra) == 1:
        args.path, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        asyncio.run(run(args))
    except (AicechunkError, ValueError) as err:
        print(f"aicechunk: error: {printable(redact_credentials(str(err)))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
