"""``FastBuilder`` writes exactly what ``flatbuffers.Builder`` writes, for random tables,
strings, vectors and structs, and for whole repo info files."""

from __future__ import annotations

from typing import Any

import flatbuffers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicechunk.format import repo_info
from aicechunk.format.fastbuilder import FastBuilder
from aicechunk.format.flatbuf import FILE_IDENTIFIER, inline_struct, offset_vector, table
from aicechunk.format.repo_info import RepoInfo, encode_repo_info
from tests.format.strategies_v2 import repo_infos

_RANGES = {
    "u64": (0, 2**64 - 1),
    "u32": (0, 2**32 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "u16": (0, 2**16 - 1),
    "u8": (0, 255),
}

# one step of a program: a string, a vector of earlier objects, or a table whose fields
# are scalars, inline 12-byte structs and offsets to earlier objects
fields = st.lists(
    st.tuples(
        st.integers(0, 9),
        st.sampled_from([*_RANGES, "bool", "off", "s12"]),
        st.integers(0, 2**64 - 1),
    ),
    max_size=10,
    unique_by=lambda f: f[0],
)
steps = st.one_of(
    st.tuples(st.just("string"), st.text(max_size=30) | st.binary(max_size=30)),
    st.tuples(st.just("vector"), st.lists(st.integers(0, 2**16), max_size=6)),
    st.tuples(st.just("table"), fields),
)


def _build(builder: Any, program: list[tuple[str, Any]]) -> bytes:
    written: list[int] = []

    def earlier(pick: int) -> int | None:
        return written[pick % len(written)] if written else None

    for kind, arg in program:
        if kind == "string":
            written.append(builder.CreateString(arg))
        elif kind == "vector":
            offsets = [o for o in (earlier(p) for p in arg) if o is not None]
            written.append(offset_vector(builder, offsets))
        else:
            slots = [slot for slot, _, _ in arg]
            count = max(slots, default=-1) + 1
            chosen: list[tuple[int, str, object]] = []
            for slot, what, raw in arg:
                if what in _RANGES:
                    low, high = _RANGES[what]
                    chosen.append((slot, what, low + raw % (high - low + 1)))
                elif what == "bool":
                    chosen.append((slot, what, bool(raw % 2)))
                elif what == "off":
                    chosen.append((slot, what, earlier(raw)))
                else:
                    chosen.append((slot, what, raw.to_bytes(8, "little") + b"\x01\x02\x03\x04"))
            written.append(table(builder, count, chosen))
    root = written[-1] if written else table(builder, 1, [])
    builder.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=25), st.integers(1, 64))
def test_same_bytes_as_the_base_builder(program: list[tuple[str, Any]], size: int) -> None:
    # small initial sizes make both grow their buffers along the way
    assert _build(FastBuilder(size), program) == _build(flatbuffers.Builder(size), program)


@settings(max_examples=60, deadline=None)
@given(repo_infos())
def test_repo_info_files_are_the_same(info: RepoInfo) -> None:
    fast = encode_repo_info(info)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repo_info, "FastBuilder", flatbuffers.Builder)
        assert encode_repo_info(info) == fast


def test_struct_slots_and_misuse_are_refused_alike() -> None:
    for cls in (FastBuilder, flatbuffers.Builder):
        b = cls(16)
        b.StartObject(2)
        with pytest.raises(flatbuffers.builder.IsNestedError):
            b.CreateString("nested")
        b.EndObject()
        with pytest.raises(flatbuffers.builder.IsNotNestedError):
            b.EndObject()
        offset = inline_struct(b, bytes(12), 1)
        b.CreateString("moves the head")
        b.StartObject(1)
        with pytest.raises(flatbuffers.builder.StructIsNotInlineError):
            b.PrependStructSlot(0, offset, 0)
