"""JSON documents read from storage (``ref.json``, ``zarr.json``): parsed with every
failure, too-deep nesting included, reported the same way."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_json"]


def parse_json(data: bytes | str) -> Any:
    """``json.loads``; a document nested deeper than the interpreter can recurse raises
    ``ValueError`` like any other malformed JSON (never ``RecursionError``)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None
