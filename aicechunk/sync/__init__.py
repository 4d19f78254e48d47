"""aicechunk with icechunk's synchronous API: ``import aicechunk.sync as icechunk``.

Laid out like the ``icechunk`` package (``Repository``, ``Session``, ``ForkSession``,
``IcechunkStore``, storage and credential constructors, configs, conflicts, errors, and the
submodules ``xarray``, ``dask``, ``distributed``, ``storage``, ``credentials``). Every call
that does I/O blocks and has an awaitable ``*_async`` twin, as icechunk's do. Nothing is
implemented twice: the classes are generated from the async core (``_facade``), and run it
on one event loop on a background thread (``_loop``: zarr's), so the facade works with or
without a running loop in the calling thread, from many threads, and in worker processes
after fork or spawn. Sessions pickle as the core's do.

A name of icechunk's that aicechunk does not have yet raises ``AttributeError`` saying why
(``_names.NOT_YET``); ``docs/migration.md`` has the whole table.
"""

from __future__ import annotations

import inspect
from typing import Any

import aicechunk as _core
from aicechunk.changes.conflicts import ConflictSolver
from aicechunk.errors import NodeNotFoundError
from aicechunk.sync._facade import unwrap as _unwrap
from aicechunk.sync._facade import wrap as _wrap
from aicechunk.sync._loop import run as _run
from aicechunk.sync._names import MODULE_SPELLINGS, NOT_YET
from aicechunk.sync.repository import Repository
from aicechunk.sync.session import ForkSession, Session
from aicechunk.sync.store import IcechunkStore

__version__ = _core.__version__

_FACADES: dict[str, Any] = {
    "Repository": Repository,
    "Session": Session,
    "ForkSession": ForkSession,
    "IcechunkStore": IcechunkStore,
}
# icechunk exports the solver protocol and (2.x) the missing-node error at the top; the
# core keeps them with the conflicts and the errors
_EXTRA: dict[str, Any] = {"ConflictSolver": ConflictSolver, "NodeNotFoundError": NodeNotFoundError}


def _unwrapped(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Arguments as the core takes them: a facade (``upgrade_icechunk_repository``'s
    repository) becomes its core object."""
    return tuple(_unwrap(a) for a in args), {k: _unwrap(v) for k, v in kwargs.items()}


def _blocking(name: str, func: Any) -> tuple[Any, Any]:
    def blocking(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _unwrapped(args, kwargs)
        return _wrap(_run(func(*args, **kwargs)))

    async def awaitable(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _unwrapped(args, kwargs)
        return _wrap(await func(*args, **kwargs))

    blocking.__name__, awaitable.__name__ = name, f"{name}_async"
    blocking.__doc__ = f"{func.__doc__ or ''}\n\nBlocking; ``{name}_async`` is its awaitable."
    awaitable.__doc__ = func.__doc__
    return blocking, awaitable


def _exports() -> dict[str, Any]:
    """The core's public names: facades for the wrapped classes, blocking functions (and
    ``*_async``) for coroutine functions, everything else (plain data, errors) as is."""
    names: dict[str, Any] = {}
    for name in _core.__all__:
        value = _FACADES.get(name, getattr(_core, name))
        if inspect.iscoroutinefunction(inspect.unwrap(value)):
            names[name], names[f"{name}_async"] = _blocking(name, value)
        else:
            names[name] = value
    names.update({k: v for k, v in _EXTRA.items() if k not in names})
    for theirs, ours in MODULE_SPELLINGS.items():
        if theirs not in names and ours in names:
            names[theirs] = names[ours]
    return names


_EXPORTED = _exports()
globals().update(_EXPORTED)
__all__ = sorted({*_EXPORTED, "__version__"})


def __getattr__(name: str) -> Any:
    if name in NOT_YET:
        raise AttributeError(f"icechunk.{name} has no aicechunk counterpart yet: {NOT_YET[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
