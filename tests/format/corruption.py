"""Ways to damage a file, shared by the decode-error tests of every spec version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import strategies as st

from aicechunk.errors import FormatError
from aicechunk.format.header import HEADER_SIZE

#: flatbuffer payloads that are no file of any kind
MALFORMED_PAYLOADS = (b"", b"\x00" * 3, b"\xff" * 64, b"\x08\x00\x00\x00Ichk" + b"\x00" * 8)


def check_header_problems(
    decode: Callable[[bytes, str], Any], good: bytes, kind: str, unknown_version: int
) -> None:
    """Every damaged header of ``good`` is a FormatError naming the file and the problem."""
    decode(good, "f")
    cases = {
        "truncated": good[:10],
        "bad magic": b"X" + good[1:],
        "unknown spec version": good[: HEADER_SIZE - 3]
        + bytes([unknown_version])
        + good[HEADER_SIZE - 2 :],
        "expected a": good[: HEADER_SIZE - 2] + b"\x05" + good[HEADER_SIZE - 1 :],
        "unknown compression": good[: HEADER_SIZE - 1] + b"\x07" + good[HEADER_SIZE:],
        "zstd": good[:HEADER_SIZE] + b"\x00garbage-not-zstd",
        "truncated zstd": good[: len(good) - 5],
    }
    for problem, data in cases.items():
        with pytest.raises(FormatError) as info:
            decode(data, f"some/{kind}")
        message = str(info.value)
        assert message.startswith(f"some/{kind}: "), message
        assert problem.split()[0] in message, (problem, message)


def mutate(data: st.DataObject, original: bytes) -> bytes:
    """``original`` with 1 to 8 bytes flipped, set, cut off or inserted, as drawn."""
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        if not blob:
            break
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            blob[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del blob[at:]
        else:
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    return bytes(blob)
