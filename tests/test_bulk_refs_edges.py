"""Bulk virtual references given what a careless or hostile caller gives: columns of the
wrong length or shape for icechunk's dense form (``set_virtual_refs_arr``), compared
with what icechunk 2.3.0 does with the same call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import aicechunk as aic
from aicechunk.format.manifest import VirtualRef
from tests.test_bulk_refs import array_session

N = 4  # chunks of the (1, 4) block set below


@pytest.mark.parametrize(
    ("offsets", "lengths"),
    [
        (np.arange(N - 1, dtype=np.uint64), np.full(N, 4, np.uint64)),  # one offset short
        (np.arange(N + 1, dtype=np.uint64), np.full(N, 4, np.uint64)),  # one too many
        (np.arange(N, dtype=np.uint64), np.full(N + 2, 4, np.uint64)),  # lengths too long
        (np.arange(N, dtype=np.uint64).reshape(2, 2), np.full(N, 4, np.uint64)),  # 2-d
    ],
    ids=["short", "long", "long-lengths", "2d"],
)
async def test_dense_form_refuses_columns_of_another_length(
    tmp_path: Path, offsets: np.ndarray, lengths: np.ndarray
) -> None:
    # icechunk 2.3.0: "locations, offsets, and lengths must have the same length" (a
    # ValueError), and nothing set; a raw IndexError or a silently cut column is neither
    _, session, location = await array_session(tmp_path, (1, N))
    with pytest.raises(aic.InvalidInputError, match=r"offsets|lengths"):
        await session.store.set_virtual_refs_arr("v", (1, N), [location] * N, offsets, lengths)
    assert [await session.get_chunk_ref("/v", (0, j)) for j in range(N)] == [None] * N


async def test_dense_form_takes_one_value_for_every_chunk(tmp_path: Path) -> None:
    # as set_virtual_refs_columns does: a scalar is repeated
    _, session, location = await array_session(tmp_path, (1, N))
    assert await session.store.set_virtual_refs_arr("v", (1, N), [location] * N, 8, 4) is None
    ref = await session.get_chunk_ref("/v", (0, 3))
    assert isinstance(ref, VirtualRef) and (ref.offset, ref.length) == (8, 4)
