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
from aicechunk.drivers.local import LocalDriver
from aicechunk.drivers.memory import MemoryDriver
from aicechunk.drivers.registry import driver_from_config, driver_from_url, register_driver

__all__ = [
    "ByteRange",
    "Driver",
    "DriverConfig",
    "LocalDriver",
    "MemoryDriver",
    "ObjectInfo",
    "OffsetRange",
    "RangeRequest",
    "SuffixRange",
    "driver_from_config",
    "driver_from_url",
    "register_driver",
    "validate_key",
    "validate_prefix",
]
