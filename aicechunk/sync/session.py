"""The synchronous ``Session`` and ``ForkSession``, generated from the core's.

Every async call of ``aicechunk.Session`` is here twice, blocking and ``*_async``;
``session.store`` is the real zarr store (``aicechunk.sync.IcechunkStore``). Sessions
pickle as the core's do: a read-only session pickles, a writable one refuses (use
``fork()``), and a fork pickles as its compact payload; each unpickles as this facade.
"""

from __future__ import annotations

import aicechunk.session as core
from aicechunk.errors import SessionStateError
from aicechunk.sync._facade import Facade

__all__ = ["ForkSession", "Session"]


class Session(Facade, core=core.Session):
    """A snapshot of a repository, read-only or with pending changes on a branch."""

    def allow_pickling(self) -> None:
        """Removed in Icechunk 1.0, as in icechunk: fork and merge instead."""
        raise SessionStateError(
            "Session.allow_pickling() was removed in Icechunk 1.0. Send "
            "`fork = session.fork()` to the workers (a ForkSession pickles), have each "
            "worker return its fork, then `session.merge(*forks)` and "
            "`session.commit(...)` (in async code: `await session.merge_async(*forks)`)."
        )


class ForkSession(Session, core=core.ForkSession):
    """A writable session for a worker; it pickles, and goes back to be merged."""
