"""The synchronous ``Repository``, generated from ``aicechunk.Repository``.

Its sessions are the synchronous ``Session``; ``ancestry`` is a plain iterator and
``async_ancestry`` its async form, as in icechunk. ``status`` and ``metadata`` are
icechunk's properties that read storage (the async core has no such properties: there
they are ``await repo.get_status()`` and ``await repo.get_metadata()``).
"""

from __future__ import annotations

from typing import Any

import aicechunk.repository as core
from aicechunk.sync._facade import Facade

__all__ = ["Repository"]


class Repository(Facade, core=core.Repository):
    """A repository: its branches, tags, history and sessions, with blocking calls."""

    @property
    def status(self) -> core.RepoStatus:
        """The repository's status (``get_status()``, as icechunk's property: it reads
        storage)."""
        found: core.RepoStatus = self.get_status()
        return found

    @property
    def metadata(self) -> dict[str, Any]:
        """The repository metadata (``get_metadata()``, as icechunk's property: it reads
        storage)."""
        found: dict[str, Any] = self.get_metadata()
        return found
