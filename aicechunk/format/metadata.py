"""Snapshot metadata values: JSON values in MessagePack, as Icechunk stores them."""

from __future__ import annotations

from typing import Any

import msgpack

from aicechunk.errors import FormatError

__all__ = ["decode_value", "encode_value"]


def encode_value(value: Any, name: str = "<metadata>") -> bytes:
    """MessagePack of a JSON-compatible value (maps, lists, str, int, float, bool, None)."""
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
