"""Zarr v3 keys in an Icechunk store: ``<path>/zarr.json`` names a node's metadata and
``<path>/c/<i>/<j>...`` one of its chunks (the default chunk key encoding, ``/``)."""

from __future__ import annotations

from dataclasses import dataclass

from aicechunk.errors import InvalidStoreKeyError
from aicechunk.format import Coords

__all__ = ["ChunkKey", "MetadataKey", "chunk_key", "metadata_key", "parse_key"]

_V2_NAMES = frozenset({".zgroup", ".zarray", ".zattrs", ".zmetadata"})


@dataclass(frozen=True, slots=True)
class MetadataKey:
    """``<path>/zarr.json``."""

    path: str


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """``<path>/c/<i>/<j>...`` (``<path>/c`` for a zero-dimensional array)."""

    path: str
    coords: Coords


def _node_path(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def parse_key(key: str) -> MetadataKey | ChunkKey | None:
    """Classify a zarr key; ``None`` for zarr v2 keys, which we never store.

    Raises ``InvalidStoreKeyError`` for anything else that is not a metadata or chunk key.
    """
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidStoreKeyError(key, "empty, '.' or '..' path segment")
    if parts[-1] in _V2_NAMES:
        return None
    if parts[-1] == "zarr.json":
        return MetadataKey(_node_path(parts[:-1]))
    # the chunk prefix is the last "c" segment followed only by integers
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "c":
            tail = parts[i + 1 :]
            if all(t.isdigit() and t.isascii() for t in tail):
                return ChunkKey(_node_path(parts[:i]), tuple(int(t) for t in tail))
            break
        if not (parts[i].isdigit() and parts[i].isascii()):
            break
    raise InvalidStoreKeyError(key, "expected '<path>/zarr.json' or '<path>/c/<coords>'")


def _key_of_path(path: str, leaf: str) -> str:
    return f"{path[1:]}/{leaf}" if path != "/" else leaf


def chunk_key(path: str, coords: Coords) -> str:
    """The zarr key of a chunk (default chunk key encoding, ``/`` separator)."""
    leaf = "/".join(["c", *map(str, coords)])
    return _key_of_path(path, leaf)


def metadata_key(path: str) -> str:
    """The zarr key of a node's metadata."""
    return _key_of_path(path, "zarr.json")
