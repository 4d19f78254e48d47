"""From plain data to a driver, and the hook for third-party drivers.

Built-in types: ``memory``, ``local``; the S3, GCS and HTTP drivers register here too.
A package can add its own driver under the ``aicechunk.drivers`` entry-point group: the
entry point's name is the driver type, its object a callable taking the config dict
(as produced by that driver's ``describe()``) and returning a ``Driver``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points

from aicechunk.drivers.base import Driver, DriverConfig

__all__ = ["ENTRY_POINT_GROUP", "driver_from_config", "register_driver"]

ENTRY_POINT_GROUP = "aicechunk.drivers"

DriverFactory = Callable[[DriverConfig], Driver]

_FACTORIES: dict[str, DriverFactory] = {}

# type name -> "module:attribute" of a from_config callable, imported on first use so
# that optional dependencies (aiobotocore, gcloud-aio-storage) load only when needed
_BUILTIN: dict[str, str] = {
    "memory": "aicechunk.drivers.memory:MemoryDriver.from_config",
    "local": "aicechunk.drivers.local:LocalDriver.from_config",
    "s3": "aicechunk.drivers.s3:S3Driver.from_config",
    "gcs": "aicechunk.drivers.gcs:GCSDriver.from_config",
    "http": "aicechunk.drivers.http:HTTPDriver.from_config",
}


def register_driver(type_name: str, factory: DriverFactory) -> None:
    """Make ``driver_from_config({"type": type_name, ...})`` call ``factory``."""
    _FACTORIES[type_name] = factory


def _resolve(type_name: str) -> DriverFactory:
    if type_name in _FACTORIES:
        return _FACTORIES[type_name]
    target = _BUILTIN.get(type_name)
    if target is not None:
        module_name, _, attr_path = target.partition(":")
        obj: object = import_module(module_name)
        for attr in attr_path.split("."):
            obj = getattr(obj, attr)
        factory: DriverFactory = obj  # type: ignore[assignment]
        _FACTORIES[type_name] = factory
        return factory
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == type_name:
            loaded: DriverFactory = ep.load()
            _FACTORIES[type_name] = loaded
            return loaded
    known = sorted(
        {*_BUILTIN, *_FACTORIES, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))}
    )
    raise ValueError(f"unknown driver type {type_name!r}; known types: {', '.join(known)}")


def driver_from_config(config: DriverConfig) -> Driver:
    """Rebuild a driver from the plain data its ``describe()`` returned."""
    try:
        type_name = config["type"]
    except (KeyError, TypeError):
        raise ValueError(f"a driver config is a dict with a 'type' key, got {config!r}") from None
    return _resolve(str(type_name))(config)
