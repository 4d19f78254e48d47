"""Byte storage drivers behind one protocol (see ``base.Driver``)."""

from aicechunk.drivers.base import (
    ByteRange,
    Driver,
    DriverConfig,
    ObjectInfo,
    OffsetRange,
    RangeRequest,
    SuffixRange,
    validate_key,
    validate_prefix,
)
from aicechunk.drivers.local import LocalDriver, LocalSettings
from aicechunk.drivers.memory import MemoryDriver, MemorySettings
from aicechunk.drivers.registry import driver_from_config, register_driver
from aicechunk.drivers.settings import DriverSettings

__all__ = [
    "ByteRange",
    "Driver",
    "DriverConfig",
    "DriverSettings",
    "LocalDriver",
    "LocalSettings",
    "MemoryDriver",
    "MemorySettings",
    "ObjectInfo",
    "OffsetRange",
    "RangeRequest",
    "SuffixRange",
    "driver_from_config",
    "register_driver",
    "validate_key",
    "validate_prefix",
]
