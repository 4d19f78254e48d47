"""The zarr store of the synchronous facade: the core's ``IcechunkStore``, plus icechunk's
blocking forms of the store's own calls.

It *is* the core store (a subclass: zarr reads and writes through the same async methods,
at the same cost), with what icechunk adds on top: ``set_virtual_ref`` and
``set_virtual_refs`` block (``*_async`` are their awaitables) and ``store.session`` is the
synchronous ``Session``. The methods of zarr's ``Store`` interface stay as zarr calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store

import aicechunk.store as core
from aicechunk.sync._facade import members_of, register, wrap
from aicechunk.sync._names import NOT_YET

__all__ = ["IcechunkStore"]


def _zarr_interface(name: str) -> bool:
    return hasattr(Store, name)


class IcechunkStore(core.IcechunkStore):
    """A zarr store reading and writing through a session (see the module docstring)."""

    @property
    def session(self) -> Any:
        """The synchronous ``Session`` this store reads and writes through."""
        return wrap(self._session)

    def with_read_only(self, read_only: bool = False) -> IcechunkStore:
        """The same session through a store with another read-only flag."""
        plain = super().with_read_only(read_only)
        return IcechunkStore(plain.session, read_only=plain.read_only)

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # only names normal lookup did not find: say why, where icechunk has one
            reason = NOT_YET.get(f"IcechunkStore.{name}")
            if reason is not None:
                raise AttributeError(
                    f"icechunk's IcechunkStore.{name} has no aicechunk counterpart yet: {reason}"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _of(store: core.IcechunkStore) -> IcechunkStore:
    return IcechunkStore(store.session, read_only=store.read_only)


# the store's own calls (those zarr's interface does not have), made from the core's
_written = set(vars(IcechunkStore))
for _name, _member in members_of(
    core.IcechunkStore,
    lambda store: super(IcechunkStore, store),  # the core's members, not these
    lambda name: _zarr_interface(name) or name in _written,
).items():
    if _name not in _written:
        setattr(IcechunkStore, _name, _member)
register(core.IcechunkStore, IcechunkStore, _of)
