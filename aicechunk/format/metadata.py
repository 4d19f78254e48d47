"""Snapshot metadata values: JSON values in MessagePack, as Icechunk stores them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack

from aicechunk.errors import FormatError, UnrepresentableValueError

__all__ = ["check_commit_properties", "check_value", "decode_value", "encode_value"]

#: Integers Icechunk reads back (serde_json numbers: i64 or u64).
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
#: Containers nested deeper than this are refused (msgpack's packer stops at 511).
MAX_DEPTH = 500


def check_value(value: Any, where: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse (``UnrepresentableValueError`` naming the path, e.g. ``metadata['x'][0]``) a
    value that is not JSON as Icechunk reads it back: maps with str keys, lists (or
    tuples), str (valid UTF-8), int within -2**63..2**64-1, finite float, bool, None.

    Anything else would be written but break or change on reading: bytes and non-str keys
    make Icechunk's ``ancestry`` fail, NaN and infinities come back as None."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > max_depth:
            raise UnrepresentableValueError(path, f"nested deeper than {max_depth} levels")
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise UnrepresentableValueError(
                    path, f"integer {item} is outside {MIN_INT}..{MAX_INT}"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnrepresentableValueError(path, f"{item} is not a finite number")
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
        elif isinstance(item, dict):
            for key, v in item.items():
                if not isinstance(key, str):
                    raise UnrepresentableValueError(
                        f"{path}[{key!r}]", f"keys must be str, not {type(key).__name__}"
                    )
                _check_text(key, f"{path} key {key!r}")
                stack.append((v, f"{path}[{key!r}]", depth + 1))
        else:
            raise UnrepresentableValueError(
                path,
                f"{type(item).__name__} is not JSON: use dict, list, str, int, float, bool or None",
            )


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UnrepresentableValueError(
            where, f"not encodable as UTF-8 ({err.reason} at position {err.start})"
        ) from None


def check_commit_properties(message: object, metadata: object) -> None:
    """Refuse a commit message that is not a UTF-8 encodable str, and commit metadata that
    is not a map of str keys to JSON values (``check_value``)."""
    if not isinstance(message, str):
        raise UnrepresentableValueError(
            "message", f"a commit message must be a str, not {type(message).__name__}"
        )
    _check_text(message, "message")
    if not isinstance(metadata, Mapping):
        raise UnrepresentableValueError(
            "metadata", f"commit metadata must be a dict, not {type(metadata).__name__}"
        )
    check_value(dict(metadata), "metadata")


def encode_value(value: Any, name: str = "<metadata>") -> bytes:
    """MessagePack of a JSON-compatible value (maps, lists, str, int, float, bool, None);
    ``UnrepresentableValueError`` for anything else (``check_value``)."""
    check_value(value, name)
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as err:
        raise FormatError(name, f"metadata value is not JSON-compatible: {err}") from None
    return packed


def decode_value(data: bytes, name: str = "<metadata>") -> Any:
    """The JSON value of a MessagePack-encoded metadata item."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as err:  # msgpack raises several unrelated types
        raise FormatError(name, f"bad metadata value: {err}") from None
