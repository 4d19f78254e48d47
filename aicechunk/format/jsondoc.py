"""JSON documents read from storage (``ref.json``, ``zarr.json``): parsed with every
failure, too-deep nesting included, reported the same way, and nothing that two readers
could read differently.

A key given twice is refused in every document: one reader keeps the first value, another
the last (Python's ``json`` keeps the last, Icechunk's serde refuses), so the document has
no one meaning. ``strict=True`` is for documents Icechunk itself parses (``ref.json``): it
also refuses what serde_json refuses and Python accepts, a UTF-8 byte order mark and the
constants ``NaN``, ``Infinity`` and ``-Infinity``. Zarr writes those constants into
``zarr.json`` (float attributes and fill values), so they stay readable there.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_json"]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"the key {key!r} is given twice")
        doc[key] = value
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes | str, *, strict: bool = False) -> Any:
    """``json.loads`` that refuses duplicate keys (and, ``strict``, a byte order mark and
    ``NaN``/``Infinity``); every failure, too-deep nesting included, is ``ValueError``
    (never ``RecursionError``)."""
    if strict:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        if text.startswith("\ufeff"):
            raise ValueError("starts with a byte order mark")
        data = text
    try:
        return json.loads(
            data,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant if strict else None,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
