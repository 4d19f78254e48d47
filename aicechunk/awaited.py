"""Calls whose effect is lost if never awaited say so: ``UnawaitedCallWarning``.

``session.commit("...")`` without ``await`` commits nothing. Python notices only when the
coroutine is garbage collected ("coroutine ... was never awaited", a ``RuntimeWarning``
pointing into asyncio, shown once per place and easy to miss). The coroutines of
``must_await`` calls warn instead with an ``UnawaitedCallWarning`` (an
``AicechunkWarning``, shown by default) that names the call, what was lost, and the line
that made it; ``warnings.simplefilter("error", UnawaitedCallWarning)`` makes it an error
(the test suite does).

The wrapper is a ``collections.abc.Coroutine``: ``await``, ``asyncio.run``,
``create_task`` and ``gather`` take it as they take the coroutine it wraps.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import warnings
from collections.abc import Callable, Coroutine, Generator
from typing import Any, ParamSpec, TypeVar

from aicechunk.errors import UnawaitedCallWarning

__all__ = ["WatchedCoroutine", "must_await"]

P = ParamSpec("P")
T = TypeVar("T")


class WatchedCoroutine(Coroutine[Any, Any, T]):
    """A coroutine that warns, naming its call, if it is dropped without being run."""

    __slots__ = ("_coro", "_effect", "_name", "_site", "_started")

    def __init__(
        self, coro: Coroutine[Any, Any, T], name: str, effect: str, site: tuple[str, int]
    ) -> None:
        self._coro = coro
        self._name = name
        self._effect = effect
        self._site = site
        self._started = False

    def __await__(self) -> Generator[Any, None, T]:
        self._started = True
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        """Run the coroutine one step (as a task does)."""
        self._started = True
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        """Raise into the coroutine (as a task's cancellation does)."""
        self._started = True
        return self._coro.throw(*args)

    def close(self) -> None:
        """Close the coroutine: closing on purpose is not forgetting."""
        self._started = True
        self._coro.close()

    def __repr__(self) -> str:
        return f"<{self._name} coroutine (aicechunk)>"

    def __del__(self) -> None:
        if self._started:
            return
        self._coro.close()  # never started: closing it silences Python's own warning
        filename, lineno = self._site
        warnings.warn_explicit(
            f"{self._name}(...) was never awaited: {self._effect}. Use 'await' "
            "(or aicechunk.sync for synchronous code).",
            UnawaitedCallWarning,
            filename,
            lineno,
            module="aicechunk",
        )


def must_await(
    effect: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate a coroutine function whose effect is lost if its coroutine is never
    awaited; ``effect`` says what is lost ("nothing was committed")."""

    def decorate(
        fn: Callable[P, Coroutine[Any, Any, T]],
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        name = fn.__qualname__
        method = "." in name and "<locals>" not in name

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
            caller = sys._getframe(1)  # the line the warning points at
            site = (caller.f_code.co_filename, caller.f_lineno)
            called = name
            if method and args:  # named by the object's class (a mixin's method too)
                owner = args[0] if isinstance(args[0], type) else type(args[0])
                called = f"{owner.__name__}.{fn.__name__}"
            return WatchedCoroutine(fn(*args, **kwargs), called, effect, site)

        # still a coroutine function to asyncio.iscoroutinefunction (``inspect``'s sees
        # through ``inspect.unwrap``); Python 3.12's inspect.markcoroutinefunction does both
        call._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]
        return call

    return decorate
