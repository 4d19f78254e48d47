"""Timestamps as every file kind stores them: non-leap microseconds since 1970 (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aicechunk.format.flatbuf import Reader

__all__ = ["EPOCH", "MAX_MICROS", "from_micros", "to_micros"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The last microsecond Python's datetime holds (9999-12-31T23:59:59.999999).
MAX_MICROS = 253_402_300_799_999_999


def to_micros(when: datetime) -> int:
    """Microseconds since the epoch (a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int, reader: Reader) -> datetime:
    """The UTC datetime of a stored timestamp; one past year 9999 is a format error."""
    if micros > MAX_MICROS:
        raise reader.fail(f"timestamp {micros} is past year 9999")
    return EPOCH + timedelta(microseconds=micros)
