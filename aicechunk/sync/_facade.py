"""The generator of the synchronous classes: each is made from its async core class.

``class Repository(Facade, core=aicechunk.Repository)`` wraps one core object and gets,
from the core class at import time (nothing is listed by hand):

- an async method ``m``: a blocking ``m`` (run on the facade's loop) and ``m_async``;
- an async iterator method ``m``: a plain iterator ``m`` and an async iterator ``async_m``;
- a property or a plain method: the same, passed through;
- the names of ``_names.MEMBER_SPELLINGS`` where icechunk spells one differently;
- for icechunk's members it lacks (``_names.NOT_YET``), an ``AttributeError`` saying why.

Results that are core objects come back as their facade (a core ``Session`` as the sync
``Session``), async context managers as ones usable with ``with`` too, and facade objects
passed as arguments reach the core unwrapped. A member written in the class body wins
over the generated one. Methods the core gains later appear without an edit here.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from aicechunk.sync._loop import iterate, run
from aicechunk.sync._names import MEMBER_SPELLINGS, NOT_YET, Kind

__all__ = ["Facade", "SyncContext", "register", "unwrap", "wrap"]

# core type -> how to turn one of its objects into its facade
_CONVERTERS: dict[type, Callable[[Any], Any]] = {}
_FACADE_TYPES: set[type] = set()


def register(core_type: type, facade_type: type, convert: Callable[[Any], Any]) -> None:
    """Results of ``core_type`` (or a subclass) become ``convert(result)``."""
    _CONVERTERS[core_type] = convert
    _FACADE_TYPES.add(facade_type)


def wrap(value: Any) -> Any:
    """A core result as the facade hands it out."""
    kind = type(value)
    if kind in _FACADE_TYPES:
        return value
    for klass in kind.__mro__:
        convert = _CONVERTERS.get(klass)
        if convert is not None:
            return convert(value)
    if hasattr(value, "__aenter__") and not hasattr(value, "__enter__"):
        return SyncContext(value)
    return value


def unwrap(value: Any) -> Any:
    """An argument as the core takes it: facades become their core object (also inside
    the lists and tuples ``merge_sessions`` takes)."""
    if isinstance(value, Facade):
        return value._core
    if isinstance(value, list | tuple) and any(isinstance(v, Facade | list | tuple) for v in value):
        return type(value)(unwrap(v) for v in value)
    return value


def _args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    if args:
        args = tuple(unwrap(a) for a in args)
    if kwargs:
        kwargs = {k: unwrap(v) for k, v in kwargs.items()}
    return args, kwargs


async def _await(awaitable: Any) -> Any:
    return await awaitable


class SyncContext:
    """An async context manager usable with ``with`` (blocking) and ``async with``."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager

    def __enter__(self) -> Any:
        return wrap(run(_await(self._manager.__aenter__())))

    def __exit__(self, *exc: Any) -> Any:
        return run(_await(self._manager.__aexit__(*exc)))

    async def __aenter__(self) -> Any:
        return wrap(await self._manager.__aenter__())

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._manager.__aexit__(*exc)


async def _wrapped_items(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for item in items:
        yield wrap(item)


def _sync_items(items: AsyncIterator[Any]) -> Iterator[Any]:
    for item in iterate(items):
        yield wrap(item)


def _returns_async_iterator(func: Callable[..., Any]) -> bool:
    if inspect.isasyncgenfunction(func):
        return True
    if inspect.unwrap(func) is not func:  # decorated, e.g. an asynccontextmanager
        return False
    returns = str(getattr(func, "__annotations__", {}).get("return", ""))
    return "AsyncIterator" in returns or "AsyncGenerator" in returns


def _named(func: Callable[..., Any], name: str, source: Any, note: str) -> Callable[..., Any]:
    func.__name__ = func.__qualname__ = name
    func.__doc__ = f"{inspect.getdoc(source) or ''}\n\n{note}".strip()
    func.__wrapped__ = source  # type: ignore[attr-defined]  # so inspect.signature shows the core's
    return func


Target = Callable[[Any], Any]  # the object a member acts on: the core object behind a facade


def _method_members(name: str, func: Callable[..., Any], target: Target) -> dict[str, Any]:
    if inspect.iscoroutinefunction(inspect.unwrap(func)):  # must_await wraps some

        def blocking(self: Any, *args: Any, **kwargs: Any) -> Any:
            args, kwargs = _args(args, kwargs)
            return wrap(run(getattr(target(self), name)(*args, **kwargs)))

        async def awaitable(self: Any, *args: Any, **kwargs: Any) -> Any:
            args, kwargs = _args(args, kwargs)
            return wrap(await getattr(target(self), name)(*args, **kwargs))

        return {
            name: _named(blocking, name, func, f"Blocking; ``{name}_async`` is its awaitable."),
            f"{name}_async": _named(awaitable, f"{name}_async", func, f"Awaitable ``{name}``."),
        }
    if _returns_async_iterator(func):

        def items(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            args, kwargs = _args(args, kwargs)
            return _sync_items(getattr(target(self), name)(*args, **kwargs))

        def async_items(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            args, kwargs = _args(args, kwargs)
            return _wrapped_items(getattr(target(self), name)(*args, **kwargs))

        return {
            name: _named(items, name, func, f"An iterator; ``async_{name}`` iterates async."),
            f"async_{name}": _named(async_items, f"async_{name}", func, f"Async ``{name}``."),
        }

    def plain(self: Any, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _args(args, kwargs)
        return wrap(getattr(target(self), name)(*args, **kwargs))

    return {name: _named(plain, name, func, "")}


def _class_members(name: str, func: Callable[..., Any], core: type) -> dict[str, Any]:
    # classmethods and staticmethods of the core act on the core class itself
    members = _method_members(name, func, lambda cls: cls._core_type)
    return {key: classmethod(member) for key, member in members.items()}


def _property(name: str, prop: property, target: Target) -> property:
    def get(self: Any) -> Any:
        return wrap(getattr(target(self), name))

    def put(self: Any, value: Any) -> None:
        setattr(target(self), name, unwrap(value))

    return property(get, put if prop.fset is not None else None, doc=prop.__doc__)


def members_of(core: type, target: Target, skip: Callable[[str], bool]) -> dict[str, Any]:
    """The generated members of a facade of ``core``; ``skip(name)`` leaves a name out."""
    members: dict[str, Any] = {}
    for name in dir(core):
        if name.startswith("_") or skip(name):
            continue
        if name.startswith("async_") and hasattr(core, name.removeprefix("async_")):
            continue  # the core's alias of an async iterator: generated as its twin
        raw = inspect.getattr_static(core, name)
        if isinstance(raw, property):
            members[name] = _property(name, raw, target)
        elif isinstance(raw, classmethod | staticmethod):
            members.update(_class_members(name, raw.__func__, core))
        elif inspect.isfunction(raw):
            members.update(_method_members(name, raw, target))
    return members


def _spelled(name: str, source: str, kind: Kind, core: type, target: Target) -> Any:
    raw = inspect.getattr_static(core, source)
    if kind == "async-iterator":

        def async_items(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            args, kwargs = _args(args, kwargs)
            return _wrapped_items(getattr(target(self), source)(*args, **kwargs))

        return _named(async_items, name, raw, f"icechunk's name: async ``{source}``.")
    if kind == "keys":
        return property(lambda self: set(getattr(target(self), source)), doc=raw.__doc__)
    return members_of(core, target, lambda n: n != source)[source]


def spellings_of(class_name: str, core: type, target: Target) -> dict[str, Any]:
    """The members icechunk spells differently, for the facade named ``class_name``."""
    members: dict[str, Any] = {}
    for (owner, name), (core_name, kind) in MEMBER_SPELLINGS.items():
        source = name if hasattr(core, name) else core_name
        if owner == class_name and hasattr(core, source):
            members[name] = _spelled(name, source, kind, core, target)
    return members


def _rebuild(facade: type[Facade], core: Any) -> Facade:
    return facade(core)


def _core(self: Any) -> Any:
    return self._core


class Facade:
    """Base of the classes that wrap one core object (see the module docstring)."""

    __slots__ = ("_core",)
    _core_type: ClassVar[type]
    _generated: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, core: Any) -> None:
        if not isinstance(core, self._core_type):
            raise TypeError(
                f"{type(self).__name__} wraps a {self._core_type.__module__}."
                f"{self._core_type.__name__}, got {type(core).__name__}"
            )
        self._core = core

    def __init_subclass__(cls, core: type | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if core is None:
            return
        cls._core_type = core
        written = {
            name
            for klass in cls.__mro__
            if issubclass(klass, Facade)
            for name in vars(klass)
            if name not in vars(klass).get("_generated", ())
        }
        members = members_of(core, _core, lambda name: name in written)
        members.update(spellings_of(cls.__name__, core, _core))
        for name, member in members.items():
            if name not in written:
                setattr(cls, name, member)
        cls._generated = frozenset(members)
        register(core, cls, cls)

    @property
    def core(self) -> Any:
        """The async core object behind this facade (``aicechunk.Session``, ...)."""
        return self._core

    def __reduce__(self) -> tuple[object, ...]:
        # pickled as the core object pickles (a fork as its payload), rebuilt as the facade
        return (_rebuild, (type(self), self._core))

    def __repr__(self) -> str:
        return repr(self._core)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Facade) and bool(self._core == other._core)

    def __hash__(self) -> int:
        return hash(self._core)

    if TYPE_CHECKING:  # the generated members, for type checkers

        def __getattr__(self, name: str) -> Any: ...

    else:

        def __getattr__(self, name: str) -> Any:
            # only names normal lookup did not find: say why, where icechunk has one
            for klass in type(self).__mro__:
                reason = NOT_YET.get(f"{klass.__name__}.{name}")
                if reason is not None:
                    raise AttributeError(
                        f"icechunk's {klass.__name__}.{name} has no aicechunk counterpart "
                        f"yet: {reason}"
                    )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
