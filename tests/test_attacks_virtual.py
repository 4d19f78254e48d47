"""Attacks on what a reader authorized: URL spellings that reach outside a virtual chunk
container, redirects to other places, and credentials written into URLs.

Layout everywhere: ``<root>/public/`` is declared and authorized, ``<root>/public/private/``
is declared but not authorized; ``private/secret.bin`` holds ``SECRET``. No spelling of a
location, no symbolic link and no redirect may return those bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import pickle
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import aicechunk as aic
from aicechunk.cli import main
from aicechunk.drivers import _files as local_files
from aicechunk.drivers.base import RangeRequest
from aicechunk.drivers.gcs import GCSDriver
from aicechunk.drivers.http import MAX_REDIRECTS, HTTPDriver
from aicechunk.drivers.local import LocalDriver
from aicechunk.drivers.s3 import S3Driver
from aicechunk.drivers.urls import parse_location, redact_url
from aicechunk.errors import InvalidLocation, ObjectNotFound, StorageError, redact_credentials
from aicechunk.format.manifest import VirtualRef
from aicechunk.virtual import VirtualResolver
from tests.servers import create_s3_bucket, free_port, next_bucket_name, put_s3_object, serve_app

SECRET = b"SECRET-BYTES-0123"
PUBLIC = b"public-bytes-0123"
EVIL = b"evil!-bytes-01234"
assert len(SECRET) == len(PUBLIC) == len(EVIL)

# Spellings of a path that reach the unauthorized private/secret.bin, or try to. Every
# one must be refused: as not authorized (it is under private/), as an invalid URL, or as
# not found (a name decoded once is read literally).
BYPASSES = [
    "{root}/public/%70rivate/secret.bin",  # the probe: an encoded letter
    "{root}/public/private%2Fsecret.bin",  # the probe: an encoded slash
    "{root}/public/private%2fsecret.bin",
    "{root}/public/%70rivate%2Fsecret.bin",
    "{root}/public/priv%61te/secret.bin",
    "{root}/public/%2e%2e/public/private/secret.bin",
    "{root}/public/%2E%2E/public/private/secret.bin",
    "{root}/public/.%2e/public/private/secret.bin",
    "{root}/public/%2e/private/secret.bin",
    "{root}/public/../public/private/secret.bin",
    "{root}/public/./private/secret.bin",
    "{root}/public/private%5Csecret.bin",
    "{root}/public/private\\secret.bin",
    "{root}/public//private/secret.bin",
    "{root}/public/private/secret.bin?x=1",
    "{root}/public/data.bin?/../private/secret.bin",
    "{root}/public/data.bin#/../private/secret.bin",
    "{root}/public/private%252Fsecret.bin",  # double encoding: a literal '%2F' name
    "{root}/public/%252e%252e/public/private/secret.bin",
    "{root}/public/%ZZ/private/secret.bin",
    "{root}/public/private%00/secret.bin",
    "{root}/public/private/secret.bin",  # plainly under the unauthorized container
    "{ROOT}/public/private/secret.bin",  # scheme and host in upper case
    "{ROOT}/public/%70rivate/secret.bin",
]

# Other spellings of public/data.bin: they must read it.
SAME_OBJECT = [
    "{root}/public/data.bin",
    "{root}/public/data%2Ebin",
    "{root}/public/%64ata.bin",
    "{ROOT}/public/data.bin",
]


async def fetch(resolver: VirtualResolver, location: str) -> bytes:
    return await resolver.fetch(VirtualRef(location, 0, len(SECRET)), RangeRequest(0, 17))


def make_resolver(root: str, store: Any, creds: Any = None) -> VirtualResolver:
    public, private = f"{root}/public/", f"{root}/public/private/"
    containers = {p: aic.VirtualChunkContainer(p, store) for p in (public, private)}
    return VirtualResolver(containers, {public: creds})


async def refused(resolver: VirtualResolver, location: str) -> aic.VirtualChunkError:
    with pytest.raises(aic.VirtualChunkError) as info:
        data = await fetch(resolver, location)
        assert data != SECRET, f"{location} read the unauthorized object"
    return info.value


def upper_root(root: str) -> str:
    scheme, _, rest = root.partition("://")
    host, _, path = rest.partition("/")
    return f"{scheme.upper()}://{host.upper()}/{path}".rstrip("/")


# --- authorization bypasses: s3 and file ------------------------------------------------


@pytest.fixture(scope="module")
def s3_bucket(s3_endpoint: str) -> str:
    bucket = next_bucket_name()
    create_s3_bucket(s3_endpoint, bucket)
    put_s3_object(s3_endpoint, bucket, "public/data.bin", PUBLIC)
    put_s3_object(s3_endpoint, bucket, "public/private/secret.bin", SECRET)
    return bucket


@pytest.fixture
async def s3_resolver(s3_endpoint: str, s3_bucket: str) -> AsyncIterator[VirtualResolver]:
    store = aic.s3_store(
        region="us-east-1", endpoint_url=s3_endpoint, allow_http=True, force_path_style=True
    )
    creds = aic.s3_credentials(access_key_id="testing", secret_access_key="testing")
    resolver = make_resolver(f"s3://{s3_bucket}", store, creds)
    yield resolver
    await resolver.close()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "public" / "private").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (data / "public" / "data.bin").write_bytes(PUBLIC)
    (data / "public" / "private" / "secret.bin").write_bytes(SECRET)
    (tmp_path / "outside" / "secret.bin").write_bytes(SECRET)
    public = data / "public"
    (public / "ok.bin").symlink_to("data.bin")  # stays inside: allowed
    (public / "link.bin").symlink_to("private/secret.bin")  # into the private container
    (public / "out.bin").symlink_to(tmp_path / "outside" / "secret.bin")
    (public / "dirlink").symlink_to("private", target_is_directory=True)
    (public / "outdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    return data


@pytest.fixture
async def file_resolver(files: Path) -> AsyncIterator[VirtualResolver]:
    resolver = make_resolver(f"file://{files}", aic.local_filesystem_store(str(files)))
    yield resolver
    await resolver.close()


@pytest.mark.attack("authorization bypasses")
@pytest.mark.parametrize("template", BYPASSES)
async def test_s3_spellings_stay_in_their_container(
    s3_resolver: VirtualResolver, s3_bucket: str, template: str
) -> None:
    root = f"s3://{s3_bucket}"
    await refused(s3_resolver, template.format(root=root, ROOT=upper_root(root)))


@pytest.mark.attack("authorization bypasses")
@pytest.mark.parametrize("template", BYPASSES)
async def test_file_spellings_stay_in_their_container(
    file_resolver: VirtualResolver, files: Path, template: str
) -> None:
    root = f"file://{files}"
    await refused(file_resolver, template.format(root=root, ROOT=upper_root(root)))


@pytest.mark.attack("authorization bypasses")
@pytest.mark.parametrize("template", SAME_OBJECT)
async def test_other_spellings_of_an_authorized_object_read_it(
    s3_resolver: VirtualResolver,
    s3_bucket: str,
    file_resolver: VirtualResolver,
    files: Path,
    template: str,
) -> None:
    for resolver, root in ((s3_resolver, f"s3://{s3_bucket}"), (file_resolver, f"file://{files}")):
        location = template.format(root=root, ROOT=upper_root(root))
        assert await fetch(resolver, location) == PUBLIC
    assert await fetch(file_resolver, f"file://localhost{files}/public/data.bin") == PUBLIC


@pytest.mark.attack("authorization bypasses")
@pytest.mark.parametrize("name", ["link.bin", "out.bin", "dirlink/secret.bin", "outdir/secret.bin"])
async def test_file_container_follows_no_symlink_out(
    file_resolver: VirtualResolver, files: Path, name: str
) -> None:
    error = await refused(file_resolver, f"file://{files}/public/{name}")
    assert "symbolic link" in str(error) or "excluded" in str(error)
    # a link that stays inside the container is fine
    assert await fetch(file_resolver, f"file://{files}/public/ok.bin") == PUBLIC


@pytest.mark.attack("authorization bypasses")
async def test_file_container_names_with_escaped_characters(tmp_path: Path) -> None:
    odd = tmp_path / "50% a?b#c"
    (odd / "inner").mkdir(parents=True)
    (odd / "x y.bin").write_bytes(PUBLIC)
    (odd / "inner" / "s.bin").write_bytes(SECRET)
    (odd / "link.bin").symlink_to("inner/s.bin")
    root = f"file://{tmp_path}/50%25%20a%3Fb%23c"
    containers = {
        p: aic.VirtualChunkContainer(p, aic.local_filesystem_store(str(odd)))
        for p in (f"{root}/", f"{root}/inner/")
    }
    resolver = VirtualResolver(containers, {f"{root}/": None})
    try:
        assert await fetch(resolver, f"{root}/x%20y.bin") == PUBLIC
        await refused(resolver, f"{root}/link.bin")
        await refused(resolver, f"{root}/%69nner/s.bin")
    finally:
        await resolver.close()


@pytest.mark.attack("authorization bypasses")
async def test_the_probe_through_a_repository(tmp_path: Path, files: Path) -> None:
    """The reported attack end to end: refs written into a repository, read back."""
    import zarr.api.asynchronous as zas

    public, private = f"file://{files}/public/", f"file://{files}/public/private/"
    config = aic.RepositoryConfig.default()
    for prefix in (public, private):
        store = aic.local_filesystem_store(str(files))
        config.set_virtual_chunk_container(aic.VirtualChunkContainer(prefix, store))
    repo = await aic.Repository.create(
        aic.local_filesystem_storage(tmp_path / "repo"),
        config=config,
        authorize_virtual_chunk_access={public: None},
    )
    session = await repo.writable_session("main")
    group = await zas.open_group(store=session.store, mode="w")
    await group.create_array("v", shape=(3,), chunks=(1,), dtype="S17", compressors=None)
    locations = [f"{public}%70rivate/secret.bin", f"{public}private%2Fsecret.bin"]
    for i, location in enumerate(locations):
        await session.store.set_virtual_ref(
            f"v/c/{i}", location, offset=0, length=17, validate_container=False
        )
    await session.store.set_virtual_ref("v/c/2", f"{public}data.bin", offset=0, length=17)
    await session.commit("refs")
    ro = await repo.readonly_session(branch="main")
    for i in range(2):
        with pytest.raises(aic.VirtualChunkError):
            await ro.get_chunk("/v", (i,))
    assert await ro.get_chunk("/v", (2,)) == PUBLIC


# --- file containers: races, replaced and aliased directories ----------------------------


@pytest.fixture
def swap_tree(tmp_path: Path) -> Path:
    """``outer/real/f.bin`` holds PUBLIC; ``secret/f.bin`` (outside) holds SECRET."""
    (tmp_path / "outer" / "real").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "outer" / "real" / "f.bin").write_bytes(PUBLIC)
    (tmp_path / "secret" / "f.bin").write_bytes(SECRET)
    return tmp_path


def swap_in(tree: Path) -> None:
    """Replace ``outer/real`` by a symbolic link to the outside ``secret`` directory."""
    os.rename(tree / "outer" / "real", tree / "parked")
    os.symlink(tree / "secret", tree / "outer" / "real")


def swap_back(tree: Path) -> None:
    os.unlink(tree / "outer" / "real")
    os.rename(tree / "parked", tree / "outer" / "real")


def once(action: Any) -> Any:
    """``action`` on the first call only."""
    done: list[bool] = []

    def run(*args: Any) -> None:
        if not done:
            done.append(True)
            action(*args)

    return run


@pytest.mark.attack("authorization bypasses")
@pytest.mark.parametrize("when", ["after the path is resolved", "while the file is opened"])
@pytest.mark.parametrize("kernel_names", [True, False], ids=["proc", "portable"])
async def test_file_container_symlink_swap_between_check_and_read(
    swap_tree: Path, monkeypatch: pytest.MonkeyPatch, when: str, kernel_names: bool
) -> None:
    """The probe's race, made deterministic: a directory on the path becomes a symbolic
    link out of the root at the worst moment for the reader. The read returns the bytes
    of the file it checked, or is refused; never the outside file's."""
    if not kernel_names:  # no /proc: the portable check
        monkeypatch.setattr(local_files, "_HAS_FD_NAMES", False)
    swap = once(lambda: swap_in(swap_tree))
    if when == "after the path is resolved":  # the reader has looked at the name
        real_readlink, real_realpath = os.readlink, os.path.realpath

        def readlink(path: Any, *args: Any, **kwargs: Any) -> Any:
            target = real_readlink(path, *args, **kwargs)
            swap()
            return target

        def realpath(path: Any, *args: Any, **kwargs: Any) -> Any:
            target = real_realpath(path, *args, **kwargs)
            if str(path).endswith("f.bin"):
                swap()
            return target

        monkeypatch.setattr(os, "readlink", readlink)
        monkeypatch.setattr(os.path, "realpath", realpath)
    else:  # the link is there only while the reader opens the file
        real_open = os.open

        def open_(path: Any, *args: Any, **kwargs: Any) -> int:
            if not str(path).endswith("f.bin"):
                return real_open(path, *args, **kwargs)
            swap_in(swap_tree)
            try:
                return real_open(path, *args, **kwargs)
            finally:
                swap_back(swap_tree)

        monkeypatch.setattr(os, "open", open_)
    driver = LocalDriver(swap_tree / "outer", confine=True, encode_names=False)
    try:
        data = await driver.get("real/f.bin", RangeRequest(0, 17))
    except StorageError as err:  # refused: fine, as long as nothing else escapes
        assert "outside the root" in str(err) or "changed" in str(err), err
    else:
        assert data == PUBLIC
    finally:
        await driver.close()


@pytest.mark.attack("authorization bypasses")
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FileNotFoundError(errno.ENOENT, "gone"), ObjectNotFound),
        (OSError(errno.EIO, "i/o error"), StorageError),
    ],
)
async def test_file_container_check_errors_are_storage_errors(
    swap_tree: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, expected: type
) -> None:
    """The race's other outcome: the path vanishes while the reader resolves it. What
    the system says then is a StorageError (ObjectNotFound for a missing file), never a
    raw OSError."""

    def readlink(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(os, "readlink", readlink)
    driver = LocalDriver(swap_tree / "outer", confine=True, encode_names=False)
    try:
        for read in (
            driver.get("real/f.bin"),
            driver.get("real/f.bin", RangeRequest(0, 3)),
            driver.head("real/f.bin"),
        ):
            with pytest.raises(expected) as info:
                await read
            assert info.value.key == "real/f.bin"
    finally:
        await driver.close()


@pytest.mark.attack("authorization bypasses")
async def test_file_container_symlink_swap_race(swap_tree: Path) -> None:
    """The probe's race for real, bounded: a thread swaps a directory for a symbolic link
    out of the root as fast as it can while reads go on for a second."""
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            swap_in(swap_tree)
            swap_back(swap_tree)

    driver = LocalDriver(swap_tree / "outer", confine=True, encode_names=False)
    thread = threading.Thread(target=swapper)
    thread.start()
    outcomes: dict[object, int] = {}
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                found: object = await driver.get("real/f.bin", RangeRequest(0, 17))
            except StorageError as err:
                found = type(err)
            outcomes[found] = outcomes.get(found, 0) + 1
    finally:
        stop.set()
        thread.join()
        await driver.close()
    assert SECRET not in outcomes, outcomes
    assert sum(outcomes.values()) > 0


def nested_resolver(outer: str, others: list[str], root: Path) -> VirtualResolver:
    store = aic.local_filesystem_store(str(root))
    containers = {p: aic.VirtualChunkContainer(p, store) for p in [outer, *others]}
    return VirtualResolver(containers, {outer: None})


@pytest.mark.attack("authorization bypasses")
async def test_file_container_nested_directory_replaced(tmp_path: Path) -> None:
    """A nested container's directory renamed away and made anew is still the nested
    container's: a link from the outer one into it stays refused."""
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    inner.mkdir(parents=True)
    (outer / "pub.bin").write_bytes(PUBLIC)
    (inner / "secret.bin").write_bytes(SECRET)
    (outer / "link").symlink_to(inner, target_is_directory=True)
    resolver = nested_resolver(f"file://{outer}/", [f"file://{inner}/"], tmp_path)
    try:
        assert await fetch(resolver, f"file://{outer}/pub.bin") == PUBLIC
        assert "excluded" in str(await refused(resolver, f"file://{outer}/link/secret.bin"))
        inner.rename(outer / "inner_old")
        inner.mkdir()
        (inner / "secret.bin").write_bytes(SECRET)
        assert "excluded" in str(await refused(resolver, f"file://{outer}/link/secret.bin"))
        await refused(resolver, f"file://{outer}/inner/secret.bin")  # the inner container
        assert await fetch(resolver, f"file://{outer}/pub.bin") == PUBLIC
    finally:
        await resolver.close()


@pytest.mark.attack("authorization bypasses")
async def test_file_container_nested_under_another_spelling(tmp_path: Path) -> None:
    """A container declared through a symbolic link alias of the outer directory
    (``alias -> data``, inner = ``alias/inner/``) is excluded from ``data/`` all the same;
    containers at or above the outer directory exclude nothing."""
    data = tmp_path / "data"
    (data / "inner").mkdir(parents=True)
    (data / "pub.bin").write_bytes(PUBLIC)
    (data / "inner" / "secret.bin").write_bytes(SECRET)
    (tmp_path / "alias").symlink_to(data, target_is_directory=True)
    outer = f"file://{data}/"
    others = [f"file://{tmp_path}/alias/inner/", f"file://{tmp_path}/alias/", f"file://{tmp_path}/"]
    resolver = nested_resolver(outer, others, tmp_path)
    try:
        error = await refused(resolver, f"{outer}inner/secret.bin")
        assert "excluded" in str(error)
        assert await fetch(resolver, f"{outer}pub.bin") == PUBLIC
    finally:
        await resolver.close()


@pytest.mark.attack("hostile names and keys")
async def test_file_container_fifo_does_not_hang_the_reader(tmp_path: Path) -> None:
    """A FIFO planted where a chunk file should be: refused at once, not read forever."""
    os.mkfifo(tmp_path / "chunk.bin")
    driver = LocalDriver(tmp_path, confine=True, encode_names=False)
    try:
        with pytest.raises(ObjectNotFound, match="no regular file"):
            await asyncio.wait_for(driver.get("chunk.bin", RangeRequest(0, 4)), 5)
    finally:
        with contextlib.suppress(OSError):  # release a reader stuck on it, if any
            os.close(os.open(tmp_path / "chunk.bin", os.O_WRONLY | os.O_NONBLOCK))
        await driver.close()


@pytest.mark.attack("authorization bypasses")
def test_containers_and_authorizations_refuse_ambiguous_prefixes() -> None:
    store = aic.s3_store()
    for prefix in (
        "s3://bkt/a/%2e%2e/",
        "s3://bkt/a%2Fb/",
        "s3://bkt/a//",
        "s3://user:pw@bkt/a/",
        "s3://bkt/a/?x/",
    ):
        with pytest.raises(ValueError, match="container prefix") as info:
            aic.VirtualChunkContainer(prefix, store)
        assert "pw" not in str(info.value)
    container = aic.VirtualChunkContainer("s3://bkt/a/", store)
    with pytest.raises(ValueError, match="authorized container prefix"):
        VirtualResolver({"s3://bkt/a/": container}, {"s3://bkt/a/%2e%2e/": None})
    # an authorization spelled differently names the same container
    resolver = VirtualResolver({"s3://bkt/a/": container}, {"S3://BKT/%61/": None})
    assert resolver._credentials(container)[0]


@pytest.mark.attack("authorization bypasses")
@pytest.mark.parametrize(
    "url",
    [
        "http://good.example\\@evil.example/public/x",  # backslash-then-@ authority tricks
        "http://good.example\\evil.example/public/x",
        "http://evil.example#@good.example/public/x",
        "http://a%2eb/public/x",
        "http://good example/public/x",
        "http://user@good.example/public/x",
        "http://good.example:99999/public/x",
        "file://evil.example/etc/passwd",
        "s3:/bkt/public/x",
        "/public/x",
        "http://good.example/public/%C0%AE%C0%AE/x",  # overlong UTF-8 dots
        "http://good.example/public/x%",
    ],
)
def test_locations_that_do_not_parse_are_refused(url: str) -> None:
    with pytest.raises(InvalidLocation):
        parse_location(url)


@pytest.mark.attack("authorization bypasses")
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HTTP://Good.Example:80/public/x", "http://good.example/public/x"),
        ("https://good.example:443/p/%41", "https://good.example/p/A"),
        ("file://localhost/data/x", "file:///data/x"),
        ("s3://bkt/a%20b", "s3://bkt/a b"),
        ("gcs://bkt/a", "gs://bkt/a"),
    ],
)
def test_spellings_of_one_location_share_a_normal_form(a: str, b: str) -> None:
    assert parse_location(a) == parse_location(b)


# --- http(s): encoding and redirects ------------------------------------------------------


@contextlib.contextmanager
def scripted_server(
    routes: dict[str, tuple[int, str | bytes]],
) -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """An aiohttp server answering each (decoded) path with ``(status, body)``, where a
    3xx status's body is the ``Location``; yields its URL and the log of (raw path,
    headers) it received."""
    seen: list[tuple[str, dict[str, str]]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.raw_path, dict(request.headers)))
        status, body = routes.get(request.path, (404, b""))
        if 300 <= status < 400 and isinstance(body, str):
            return web.Response(status=status, headers={"Location": body})
        data = body.encode() if isinstance(body, str) else body
        return web.Response(status=status, body=data)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    with serve_app(app) as url:
        yield url, seen


@pytest.fixture
def origin_b() -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    routes: dict[str, tuple[int, str | bytes]] = {
        "/evil.bin": (200, EVIL),
        "/steal": (200, EVIL),
        "/trusted/data.bin": (200, PUBLIC),
        "/untrusted/data.bin": (200, EVIL),
    }
    with scripted_server(routes) as server:
        yield server


@pytest.fixture
def origin_a(
    origin_b: tuple[str, list[Any]],
) -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    b = origin_b[0]
    routes: dict[str, tuple[int, str | bytes]] = {
        "/public/data.bin": (200, PUBLIC),
        "/public/a b.bin": (200, PUBLIC),
        "/public/private/secret.bin": (200, SECRET),
        "/public/to-b.bin": (302, f"{b}/evil.bin"),
        "/public/to-private.bin": (302, "/public/private/secret.bin"),
        "/public/to-dots.bin": (307, "/public/%2e%2e/public/private/secret.bin"),
        "/public/to-relative.bin": (302, "private/secret.bin"),
        "/public/to-file.bin": (302, "file:///etc/passwd"),
        "/public/to-trusted.bin": (302, f"{b}/trusted/data.bin"),
        "/public/to-untrusted.bin": (301, f"{b}/untrusted/data.bin"),
        "/public/same.bin": (302, "/public/data.bin"),
        "/public/loop.bin": (302, "/public/loop.bin"),
        "/repo/to-b": (302, f"{b}/steal"),
        "/repo/to-other-path": (302, "/other/x"),
        "/repo/to-sibling": (302, "/repository/x"),
        "/repo/to-relative-up": (302, "../other/x"),
        "/repo/to-dots": (302, "/repo/%2e%2e/other/x"),
        "/repo/to-userinfo": (302, "//u:p@127.0.0.1/repo/real"),
        "/repo/to-inside": (302, "/repo/real"),
        "/repo/no-location": (302, b"redirect body"),
        "/repo/multiple-choices": (300, b"choices body"),
        "/repo/real": (200, PUBLIC),
        "/repo/loop": (302, "/repo/loop"),
        "/other/x": (200, SECRET),
        "/repository/x": (200, SECRET),
    }
    with scripted_server(routes) as server:
        yield server


@pytest.fixture
async def http_resolver(
    origin_a: tuple[str, list[Any]], origin_b: tuple[str, list[Any]]
) -> AsyncIterator[VirtualResolver]:
    a, b = origin_a[0], origin_b[0]
    prefixes = [f"{a}/public/", f"{a}/public/private/", f"{b}/trusted/", f"{b}/untrusted/"]
    containers = {p: aic.VirtualChunkContainer(p, aic.http_store()) for p in prefixes}
    resolver = VirtualResolver(containers, {f"{a}/public/": None, f"{b}/trusted/": None})
    yield resolver
    await resolver.close()


@pytest.mark.attack("redirects")
@pytest.mark.parametrize(
    "name",
    [
        "to-b.bin",
        "to-private.bin",
        "to-dots.bin",
        "to-relative.bin",
        "to-file.bin",
        "to-untrusted.bin",
        "loop.bin",
    ],
)
async def test_virtual_http_redirects_stay_in_authorized_containers(
    http_resolver: VirtualResolver,
    origin_a: tuple[str, list[Any]],
    origin_b: tuple[str, list[Any]],
    name: str,
) -> None:
    error = await refused(http_resolver, f"{origin_a[0]}/public/{name}")
    assert "redirect" in str(error)
    assert origin_b[1] == []  # nothing was even asked of the other origin
    assert all(not raw.startswith("/public/private") for raw, _ in origin_a[1])


@pytest.mark.attack("redirects")
async def test_virtual_http_redirects_into_authorized_containers_are_followed(
    http_resolver: VirtualResolver, origin_a: tuple[str, list[Any]]
) -> None:
    assert await fetch(http_resolver, f"{origin_a[0]}/public/same.bin") == PUBLIC
    assert await fetch(http_resolver, f"{origin_a[0]}/public/to-trusted.bin") == PUBLIC


@pytest.mark.attack("authorization bypasses")
@pytest.mark.parametrize("template", BYPASSES)
async def test_http_spellings_stay_in_their_container(
    http_resolver: VirtualResolver, origin_a: tuple[str, list[Any]], template: str
) -> None:
    root = origin_a[0]
    await refused(http_resolver, template.format(root=root, ROOT=upper_root(root)))


@pytest.mark.attack("authorization bypasses")
async def test_percent_encoded_http_locations_are_encoded_once(
    http_resolver: VirtualResolver, origin_a: tuple[str, list[Any]]
) -> None:
    assert await fetch(http_resolver, f"{origin_a[0]}/public/a%20b.bin") == PUBLIC
    assert origin_a[1][-1][0] == "/public/a%20b.bin"
    assert await fetch(http_resolver, f"{origin_a[0]}/public/%64ata.bin") == PUBLIC


@pytest.mark.attack("redirects")
@pytest.mark.parametrize(
    "key",
    ["to-b", "to-other-path", "to-sibling", "to-relative-up", "to-dots", "to-userinfo"],
)
async def test_http_storage_follows_no_redirect_out_of_its_base(
    origin_a: tuple[str, list[Any]], origin_b: tuple[str, list[Any]], key: str
) -> None:
    a, seen = origin_a
    async with HTTPDriver(f"{a}/repo", headers={"X-Api-Key": "k3y-s3cret"}) as driver:
        for method in (driver.get, driver.head):
            with pytest.raises(StorageError, match="redirected") as info:
                await method(key)
            assert "k3y-s3cret" not in str(info.value)
    assert origin_b[1] == []  # the key never left for another origin
    assert [raw for raw, _ in seen] == [f"/repo/{key}"] * 2


@pytest.mark.attack("redirects")
async def test_http_storage_follows_redirects_inside_its_base(
    origin_a: tuple[str, list[Any]],
) -> None:
    a, seen = origin_a
    async with HTTPDriver(f"{a}/repo", headers={"X-Api-Key": "k3y"}) as driver:
        assert await driver.get("to-inside") == PUBLIC
        assert (await driver.head("to-inside")).size == len(PUBLIC)
        with pytest.raises(StorageError, match=f"more than {MAX_REDIRECTS} redirects"):
            await driver.get("loop")
        for key in ("no-location", "multiple-choices"):  # a 3xx body is no object
            with pytest.raises(StorageError, match="HTTP 30"):
                await driver.get(key)
    assert seen[1][0] == "/repo/real" and seen[1][1]["X-Api-Key"] == "k3y"


@pytest.mark.attack("redirects")
async def test_http_storage_redirect_to_another_host_name_is_another_origin() -> None:
    routes: dict[str, tuple[int, str | bytes]] = {}
    with scripted_server(routes) as (url, seen):
        port = url.rsplit(":", 1)[1]
        routes["/repo/x"] = (302, f"http://localhost:{port}/repo/y")
        routes["/repo/y"] = (200, PUBLIC)
        async with HTTPDriver(f"{url}/repo", headers={"X-Api-Key": "k3y"}) as driver:
            with pytest.raises(StorageError, match="redirected"):
                await driver.get("x")
    assert [raw for raw, _ in seen] == ["/repo/x"]


# --- credentials in URLs ---------------------------------------------------------------


@pytest.mark.attack("credentials in URLs")
def test_redaction_of_userinfo() -> None:
    text = "GET http://alice:hunter2@h/r\nhttps://tok@h:1/a\nhttps://u:p@ss@h/x\ns3://b/k"
    assert redact_credentials(text) == (
        "GET http://***@h/r\nhttps://***@h:1/a\nhttps://***@h/x\ns3://b/k"
    )
    # one line: everything from the first scheme to the last at sign is hidden
    assert redact_credentials("a http://u:p@h/r, s3://b/k@v") == "a http://***@v"
    assert redact_url("https://u:pw@h/x?X-Amz-Signature=abc") == "https://***@h/x?…"
    with pytest.raises(InvalidLocation) as info:
        parse_location("http://alice:hunter2@h/x")
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value)
    assert "hunter2" not in str(pickle.loads(pickle.dumps(info.value)))


@pytest.mark.attack("credentials in URLs")
async def test_http_storage_userinfo_is_basic_auth_and_never_shown(tmp_path: Path) -> None:
    routes: dict[str, tuple[int, str | bytes]] = {"/repo/x": (200, PUBLIC)}
    with scripted_server(routes) as (url, seen):
        base = url.replace("http://", "http://alice:hunter2@") + "/repo"
        storage = aic.http_storage(base, headers={"X-Api-Key": "k3y-s3cret"})
        driver = storage.driver()
        assert await driver.get("x") == PUBLIC
        with pytest.raises(aic.ObjectNotFound) as info:
            await driver.get("missing")
        await driver.close()
        rebuilt = pickle.loads(pickle.dumps(storage)).driver()
        assert await rebuilt.get("x") == PUBLIC
        await rebuilt.close()
    expected = "Basic " + base64.b64encode(b"alice:hunter2").decode()
    assert {headers["Authorization"] for _, headers in seen} == {expected}
    shown = [
        str(info.value),
        repr(info.value),
        repr(storage),
        repr(storage.config),
        repr(driver),
        driver.label,
        repr(driver.describe()),
    ]
    for text in shown:
        assert "hunter2" not in text and "k3y-s3cret" not in text, text
    assert "127.0.0.1" in repr(storage) and "127.0.0.1" in driver.label
    with pytest.raises(ValueError, match="both") as err:
        HTTPDriver(base, headers={"authorization": "Bearer x"})
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError) as err:
        HTTPDriver("ftp://alice:hunter2@h/x")
    assert "hunter2" not in str(err.value)


@pytest.mark.attack("credentials in URLs")
async def test_connection_errors_never_show_url_credentials() -> None:
    port = free_port()  # nothing listens there
    http = HTTPDriver(f"http://alice:hunter2@127.0.0.1:{port}/repo", max_attempts=1)
    async with http:
        with pytest.raises(StorageError) as info:
            await http.get("x")
    for text in (str(info.value), repr(info.value), repr(http), repr(http.describe())):
        assert "hunter2" not in text, text
    assert "hunter2" not in str(info.value.__cause__)  # not even in the traceback


@pytest.mark.attack("credentials in URLs")
async def test_endpoints_carrying_credentials_are_refused(tmp_path: Path) -> None:
    endpoint = "http://alice:hunter2@127.0.0.1:9000"
    for make in (
        lambda: S3Driver("bkt", endpoint_url=endpoint, allow_http=True),
        lambda: S3Driver("bkt", endpoint_url=endpoint),
        lambda: GCSDriver("bkt", endpoint_url=endpoint),
        lambda: aic.s3_storage(bucket="bkt", endpoint_url=endpoint, allow_http=True),
        lambda: aic.gcs_storage(bucket="bkt", endpoint_url=endpoint),
    ):
        with pytest.raises(ValueError) as err:
            make()
        assert "hunter2" not in str(err.value) and "127.0.0.1:9000" in str(err.value)
    # a virtual container's store config with one: a VirtualChunkError, not a ValueError
    store = aic.s3_store(endpoint_url=endpoint, allow_http=True)
    resolver = VirtualResolver(
        {"s3://bkt/": aic.VirtualChunkContainer("s3://bkt/", store)}, {"s3://bkt/": None}
    )
    error = await refused(resolver, "s3://bkt/x")
    assert "hunter2" not in str(error) and "credentials" in str(error)


@pytest.mark.attack("credentials in URLs")
def test_repository_config_never_shows_url_credentials() -> None:
    config = aic.RepositoryConfig.default()
    store = aic.s3_store(endpoint_url="https://minio:hunter2@127.0.0.1:9000")
    config.set_virtual_chunk_container(aic.VirtualChunkContainer("s3://bkt/", store))
    assert "hunter2" not in repr(config) and "127.0.0.1:9000" in repr(config)


@pytest.mark.attack("credentials in URLs")
async def test_virtual_errors_never_show_url_credentials(
    http_resolver: VirtualResolver, origin_a: tuple[str, list[Any]]
) -> None:
    location = origin_a[0].replace("http://", "http://alice:hunter2@") + "/public/data.bin"
    error = await refused(http_resolver, location)
    assert "hunter2" not in str(error) and "credentials" in str(error)


@pytest.mark.attack("credentials in URLs")
def test_cli_never_shows_url_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.servers import http_file_server

    assert main(["demo", str(tmp_path / "repo")]) == 0
    capsys.readouterr()
    with http_file_server(tmp_path / "repo") as url:
        authed = url.replace("http://", "http://alice:hunter2@")
        for argv in (["info", authed], ["info", authed, "--json"], ["log", authed]):
            code = main(argv)
            out, err = capsys.readouterr()
            assert code == 0, err
            assert "hunter2" not in out + err
        assert "127.0.0.1" in main_output(capsys, ["info", authed])
    port = free_port()
    code = main(["info", f"http://alice:hunter2@127.0.0.1:{port}/repo"])
    out, err = capsys.readouterr()
    assert code == 1 and "hunter2" not in out + err and "127.0.0.1" in err


# Passwords written unencoded: each holds a character that ends userinfo for a naive
# parser. SECRET_HEAD and SECRET_TAIL surround it; neither may be shown.
UNENCODED = ["'", " ", "/", "?", "#", "%40", "@", "@x@", '"', "a://b", "\t"]


def unencoded_secrets() -> list[str]:
    return [f"S3CR{c}ZZ9" for c in UNENCODED]


def assert_hidden(text: str) -> None:
    assert "S3CR" not in text and "ZZ9" not in text, text


@pytest.mark.attack("credentials in URLs")
@pytest.mark.parametrize("password", unencoded_secrets())
def test_unencoded_userinfo_is_never_shown(password: str) -> None:
    url = f"http://user:{password}@127.0.0.1:1/repo"
    shown = redact_credentials(f"failed '{url}': refused")
    assert_hidden(shown)
    assert "127.0.0.1:1/repo" in shown
    assert_hidden(redact_url(url))
    for make in (lambda: parse_location(url), lambda: aic.http_storage(url)):
        try:
            made = make()
        except InvalidLocation as err:
            assert_hidden(str(err))
            assert_hidden(repr(err))
            assert_hidden(str(pickle.loads(pickle.dumps(err))))
        else:  # userinfo that parses: basic auth, never shown
            assert_hidden(repr(made))


@pytest.mark.attack("credentials in URLs")
@pytest.mark.parametrize("password", unencoded_secrets())
def test_endpoints_with_unencoded_credentials_are_refused(password: str) -> None:
    for endpoint in (
        f"http://user:{password}@127.0.0.1:9000",
        f"http://{password}@127.0.0.1:9000",
        f"http://127.0.0.1:9000/{password}@x",  # an at sign anywhere
    ):
        for make in (
            lambda e: aic.s3_storage(bucket="bkt", endpoint_url=e, allow_http=True),
            lambda e: aic.gcs_storage(bucket="bkt", endpoint_url=e, anonymous=True),
            lambda e: S3Driver("bkt", endpoint_url=e, allow_http=True),
            lambda e: GCSDriver("bkt", endpoint_url=e),
        ):
            with pytest.raises(InvalidLocation) as err:
                make(endpoint)
            assert isinstance(err.value, ValueError)
            assert_hidden(str(err.value))
            assert "credentials" in str(err.value)


@pytest.mark.attack("credentials in URLs")
@pytest.mark.parametrize("password", unencoded_secrets())
def test_cli_never_shows_unencoded_credentials(
    password: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    for argv in (
        ["info", f"http://user:{password}@127.0.0.1:{port}/repo"],
        ["info", "s3://bkt/p", "--endpoint-url", f"http://u:{password}@127.0.0.1:{port}"],
        ["info", "gs://bkt/p", "--endpoint-url", f"http://u:{password}@127.0.0.1:{port}"],
    ):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert_hidden(out + err)


def main_output(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out
