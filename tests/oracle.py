"""The icechunk package the tests import in-process, and what it can be asked.

On Python >= 3.12, the baseline, the test extra installs icechunk 2.3.0, which writes spec
v1 and v2; on Python 3.11 it installs icechunk 1.1.21, which writes spec v1 only (and
knows no ``spec_version`` argument). Tests about spec v1 repositories create them with
``**V1``; tests that need icechunk 2.x carry ``needs_icechunk2``.
"""

from __future__ import annotations

from typing import Any

import icechunk
import pytest

__all__ = ["ICECHUNK_2", "SPEC_VERSIONS", "V1", "create_kwargs", "needs_icechunk2"]

ICECHUNK_2 = int(icechunk.__version__.split(".")[0]) >= 2

needs_icechunk2 = pytest.mark.skipif(
    not ICECHUNK_2, reason=f"needs icechunk 2.x in-process (this is {icechunk.__version__})"
)

# the spec versions the in-process icechunk writes, for tests that run on each
SPEC_VERSIONS = [1, pytest.param(2, marks=needs_icechunk2)]


def create_kwargs(spec_version: int) -> dict[str, Any]:
    """``icechunk.Repository.create``'s keywords for a repository of ``spec_version``."""
    if not ICECHUNK_2:
        assert spec_version == 1, "icechunk 1.x writes spec v1 only"
        return {}
    return {"spec_version": spec_version}


V1 = create_kwargs(1)
