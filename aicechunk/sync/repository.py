"""The synchronous ``Repository``, generated from ``aicechunk.Repository``.

Its sessions are the synchronous ``Session``; ``ancestry`` is a plain iterator and
``async_ancestry`` its async form, as in icechunk.
"""

from __future__ import annotations

import aicechunk.repository as core
from aicechunk.sync._facade import Facade

__all__ = ["Repository"]


class Repository(Facade, core=core.Repository):
    """A repository: its branches, tags, history and sessions, with blocking calls."""
