"""Driver settings: one frozen dataclass per driver, the single source of its options.

A driver's settings hold every option with its default, written once. ``describe()``
(plain data, JSON-ready), the registry's rebuilding from that data, pickling and the
public storage constructors all derive from these fields, so they cannot disagree: a
fork in another process rebuilds exactly the driver it was described from.

Credentials inside settings are ``Secret`` strings and endpoints ``RedactedURL``s: still
``str`` (usable by clients, JSON-serializable, picklable), but their ``repr`` (and so
logs and messages that format settings or configs) never shows them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from aicechunk.drivers.urls import parse_location
from aicechunk.errors import InvalidLocation, redact_credentials

__all__ = [
    "SECRET",
    "URL",
    "DriverConfig",
    "DriverSettings",
    "RedactedURL",
    "Secret",
    "check_endpoint",
]

#: Plain-data description of a driver: ``{"type": "local", "root": "/data"}``. It holds no
#: live client and no event loop, so it pickles and rebuilds the driver in another process.
DriverConfig = dict[str, Any]


class Secret(str):
    """A string that never shows itself in ``repr``: credentials inside driver settings.

    It is still a ``str`` (JSON-serializable, picklable, usable by clients); only its
    representation, and so logs and error messages that format configs, hide it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"

    def __reduce__(self) -> tuple[object, ...]:
        return (Secret, (str(self),))


class RedactedURL(str):
    """A URL (an endpoint) whose ``repr`` hides any ``user:password@`` written into it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_credentials(str(self)))

    def __reduce__(self) -> tuple[object, ...]:
        return (RedactedURL, (str(self),))


#: field metadata: the value (or each value of a mapping) is kept as a ``Secret``
SECRET: Mapping[str, Any] = types.MappingProxyType({"wrap": Secret})
#: field metadata: the value is kept as a ``RedactedURL``
URL: Mapping[str, Any] = types.MappingProxyType({"wrap": RedactedURL})


def check_endpoint(url: str | None, driver: str) -> None:
    """Check an endpoint URL: ``http(s)://host[:port][/path]``, else ``InvalidLocation``
    (also a ``ValueError``).

    An ``@`` anywhere is refused: S3 and GCS clients sign requests with the credentials
    they are given, so ``user:password@`` in an endpoint could only leak them, and written
    unencoded a password may hold ``/``, ``?``, ``#``, quotes or spaces that no parser can
    tell from the rest of the URL."""
    if url is None:
        return
    if not isinstance(url, str):
        raise InvalidLocation(repr(url), f"a {driver} endpoint must be a str URL")
    if "@" in url:
        raise InvalidLocation(
            url,
            f"the {driver} endpoint carries credentials (user:password and an at sign): "
            "pass them as the driver's credentials, not in the URL",
        )
    try:
        location = parse_location(url)
    except InvalidLocation as err:
        raise InvalidLocation(
            url, f"a {driver} endpoint must be an http:// or https:// URL: {err.problem}"
        ) from None
    if location.scheme not in ("http", "https"):
        raise InvalidLocation(url, f"a {driver} endpoint must be an http:// or https:// URL")


# --- plain data <-> dataclasses ---------------------------------------------------------


def _wrap(value: Any, wrap: Any) -> Any:
    if value is None or wrap is None:
        return value
    if isinstance(value, Mapping):
        return {name: wrap(item) for name, item in value.items()}
    return wrap(value)


def wrap_fields(obj: Any) -> None:
    """Keep each field marked ``SECRET`` or ``URL`` as that type (in ``__post_init__``)."""
    for f in dataclasses.fields(obj):
        wrap = f.metadata.get("wrap")
        if wrap is not None:
            object.__setattr__(obj, f.name, _wrap(getattr(obj, f.name), wrap))


def to_plain(obj: Any) -> Any:
    """A settings value as JSON-ready data: dataclasses as dicts, tuples as lists. A
    callable (refreshable credentials' ``get_credentials``, which may be a dataclass
    instance) is kept as it is."""
    if callable(obj):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(item) for item in obj]
    if isinstance(obj, Mapping):
        return {name: to_plain(item) for name, item in obj.items()}
    return obj


def _typed(hint: Any, value: Any, where: str) -> Any:
    """``value`` (from plain data) as the field type ``hint`` expects."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]
        args = typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    try:
        if isinstance(origin, type) and dataclasses.is_dataclass(origin):
            if not isinstance(value, Mapping):
                raise TypeError(f"expected a mapping, got {type(value).__name__}")
            return from_plain(origin, value, where)
        if origin is tuple:
            return tuple(value)
        if origin in (dict, Mapping):
            return dict(value)
        if origin in (bool, int, float, str):
            return origin(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
    return value


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    # the field types of a settings class: evaluated once (every open of a repository
    # rebuilds its driver's settings from plain data; evaluating took ~0.3 ms a time)
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def from_plain(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    """Build the dataclass ``cls`` from plain data (``to_plain``'s output). Unknown keys
    are ignored; a missing (or ``None``) field takes its default; a missing field
    without one is a ``ValueError`` naming it."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = data.get(f.name)
        if value is None and type(None) not in typing.get_args(hints[f.name]):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where} needs {f.name!r}: got {sorted(data)}")
            continue
        kwargs[f.name] = _typed(hints[f.name], value, f"{where}, {f.name!r}")
    return cls(**kwargs)


class DriverSettings:
    """Base of the drivers' settings dataclasses (each a frozen ``@dataclass``).

    ``to_config()`` is the driver's ``describe()``; ``from_config()`` rebuilds the
    settings from it (the registry's factory does, and so does unpickling a driver).
    """

    #: the driver type in configs: ``{"type": type_name, ...}``
    type_name: ClassVar[str] = "abstract"

    def __post_init__(self) -> None:
        wrap_fields(self)

    def to_config(self) -> DriverConfig:
        """Plain data: ``{"type": ..., <every field>}``; secrets stay ``Secret``."""
        plain: DriverConfig = to_plain(self)
        return {"type": self.type_name, **plain}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The settings ``to_config()`` described."""
        if not isinstance(config, Mapping):
            raise ValueError(f"a {cls.type_name} driver config is a dict, got {config!r}")
        built: Self = from_plain(cls, config, f"{cls.type_name} driver config")
        return built
