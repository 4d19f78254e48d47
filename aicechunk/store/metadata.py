"""Zarr v3 metadata as an Icechunk repository stores it: the store parses each
``zarr.json`` into the typed node definition the session records (shape and chunk shape
per dimension, dimension names) and keeps the document itself as the node's user data.

Zarr knowledge stays here, on the store's side: the session and everything below it
see ``ArrayDefinition`` objects and opaque metadata bytes.
"""

from __future__ import annotations

import json
from typing import Any

from aicechunk.changes.changeset import ArrayDefinition
from aicechunk.changes.validate import encodable, is_length
from aicechunk.errors import InvalidMetadataError, UnrepresentableValueError
from aicechunk.format.jsondoc import parse_json
from aicechunk.format.manifest import MAX_U64
from aicechunk.format.snapshot import DimensionShape

__all__ = ["metadata_document", "parse_metadata", "without_consolidated_metadata"]


def metadata_document(path: str, data: bytes) -> dict[str, Any]:
    """The JSON object of a node's ``zarr.json`` (as written, or as stored in a snapshot)."""
    try:
        doc = parse_json(data)
    except ValueError as err:  # UnicodeDecodeError and too-deep nesting included
        raise InvalidMetadataError(path, f"not JSON ({err})") from None
    if not isinstance(doc, dict):
        raise InvalidMetadataError(path, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _check_chunk_key_encoding(path: str, encoding: Any) -> None:
    """Refuse a chunk key encoding other than ``default`` with the ``/`` separator.

    An Icechunk store addresses chunks only as ``<path>/c/<i>/<j>`` (icechunk refuses
    other chunk keys too); an array declaring ``v2`` keys (``<path>/0/0``) or ``.``
    separators would be created but could never take a chunk.
    """
    if encoding is None or encoding == "default":  # absent, or the name alone: the default
        return
    if isinstance(encoding, dict) and encoding.get("name") == "default":
        config = encoding.get("configuration")
        if config is None or (isinstance(config, dict) and config.get("separator", "/") == "/"):
            return
    raise UnrepresentableValueError(
        f"metadata for node {path!r}",
        f"chunk_key_encoding {encoding!r}: an Icechunk store names chunks '<path>/c/<i>/<j>' "
        "only (the 'default' encoding with separator '/')",
    )


def parse_metadata(path: str, data: bytes) -> ArrayDefinition | None:
    """Parse zarr v3 ``zarr.json``: an ``ArrayDefinition`` for arrays, ``None`` for groups.

    ``InvalidMetadataError`` for a document zarr could not read,
    ``UnrepresentableValueError`` for a shape the format cannot hold (beyond uint64) or
    chunk keys an Icechunk store cannot address (a chunk key encoding other than the default).
    """
    doc = metadata_document(path, data)
    node_type = doc.get("node_type")
    if node_type == "group":
        return None
    if node_type != "array":
        raise InvalidMetadataError(path, f"node_type must be 'group' or 'array', got {node_type!r}")
    shape = doc.get("shape")
    grid = doc.get("chunk_grid")
    if not isinstance(shape, list) or not all(map(is_length, shape)):
        raise InvalidMetadataError(path, "shape must be a list of non-negative integers")
    chunk_shape: Any = None
    if isinstance(grid, dict) and grid.get("name") == "regular":
        chunk_shape = (grid.get("configuration") or {}).get("chunk_shape")
    if not isinstance(chunk_shape, list) or len(chunk_shape) != len(shape):
        raise InvalidMetadataError(
            path, "chunk_grid must be a regular grid with one chunk length per dimension"
        )
    if not all(map(is_length, chunk_shape)):
        raise InvalidMetadataError(path, "chunk lengths must be non-negative integers")
    if any(n > MAX_U64 for n in (*shape, *chunk_shape)):
        raise UnrepresentableValueError(
            f"metadata for node {path!r}",
            f"shape {shape} / chunk shape {chunk_shape}: lengths are uint64, at most {MAX_U64}",
        )
    _check_chunk_key_encoding(path, doc.get("chunk_key_encoding"))
    names = doc.get("dimension_names")
    dimension_names: tuple[str | None, ...] | None = None
    if names is not None:
        if not isinstance(names, list) or not all(n is None or isinstance(n, str) for n in names):
            raise InvalidMetadataError(path, "dimension_names must be a list of strings or nulls")
        if not all(n is None or encodable(n) for n in names):
            raise InvalidMetadataError(path, "dimension_names must be valid UTF-8")
        dimension_names = tuple(names)
    dims = tuple(DimensionShape(a, c) for a, c in zip(shape, chunk_shape, strict=True))
    return ArrayDefinition(dims, dimension_names, bytes(data))


def without_consolidated_metadata(data: bytes) -> bytes:
    """A group's ``zarr.json`` without its ``consolidated_metadata`` field.

    The repository is the index of its nodes: a consolidated copy written by zarr or xarray
    (or left in a repository by an older aicechunk) goes stale with the next commit that
    adds a node, and readers that trust it miss that node. Arrays and documents without
    the field come back unchanged.
    """
    if b'"consolidated_metadata"' not in data:
        return data
    try:
        doc = parse_json(data)
    except ValueError:  # not JSON: the session refuses it (or it was never ours to fix)
        return data
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return data
    if doc.pop("consolidated_metadata", None) is None:
        return data
    return json.dumps(doc, indent=2).encode()
