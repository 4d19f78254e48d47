"""Logging helpers named as icechunk's: ``initialize_logs``, ``set_logs_filter`` and
``print_debug_info``.

aicechunk logs through Python's ``logging``, under the ``aicechunk`` logger hierarchy
(``aicechunk.session``, ``aicechunk.repository``, ...), so an application's logging
configuration applies as to any library. These helpers are for those who have none: a
filter in icechunk's form (``"debug"``, ``"aicechunk=debug,warn"``) sets the levels and,
when nothing else prints log records, a handler on stderr shows them.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import sys

__all__ = ["LOG_ENV", "initialize_logs", "print_debug_info", "set_logs_filter"]

#: The environment variable ``initialize_logs`` reads (icechunk reads ``ICECHUNK_LOG``,
#: which is read too when this one is not set).
LOG_ENV = "AICECHUNK_LOG"

ROOT = "aicechunk"
TRACE = 5  # icechunk's (Rust tracing's) level below debug
_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}
_DEFAULT_LEVEL = logging.WARNING  # icechunk's default shows warnings and errors
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_configured: set[str] = set()  # loggers whose level the last filter set
_handler: logging.Handler | None = None


def parse_filter(directive: str) -> dict[str, int]:
    """Logger name -> level for a filter in icechunk's form: comma-separated ``level``
    (for the whole ``aicechunk`` hierarchy) or ``target=level`` entries, a target winning
    over a bare level whatever their order (``"icechunk=debug,info"``: debug). A target
    ``icechunk...`` means the same module under ``aicechunk``, so icechunk's filters keep
    working. ``ValueError`` names an entry that is neither."""
    levels: dict[str, int] = {}
    targeted: dict[str, int] = {}  # a target is more specific than a bare level
    for raw in directive.split(","):
        entry = raw.strip()
        if not entry:
            continue
        target, sep, level = entry.rpartition("=")
        name = target.strip().replace("::", ".") if sep else ROOT
        if name == "icechunk" or name.startswith("icechunk."):
            name = "a" + name
        number = _LEVELS.get(level.strip().lower())
        if number is None or not name:
            raise ValueError(
                f"log filter entry {entry!r}: expected LEVEL or TARGET=LEVEL, with LEVEL one "
                f"of {', '.join(_LEVELS)}"
            )
        (targeted if sep else levels)[name] = number
    return {**levels, **targeted}


def set_logs_filter(log_filter_directive: str | None) -> None:
    """Set the log levels of aicechunk's loggers from a filter (see ``parse_filter``),
    replacing what the previous filter set; ``None`` reads ``AICECHUNK_LOG`` (or
    ``ICECHUNK_LOG``), and an empty filter means warnings and errors only.

    Examples: ``set_logs_filter("debug")``, ``set_logs_filter("aicechunk.session=debug,
    error")`` (debug for sessions, errors only elsewhere)."""
    if log_filter_directive is None:
        log_filter_directive = os.environ.get(LOG_ENV, os.environ.get("ICECHUNK_LOG", ""))
    levels = {ROOT: _DEFAULT_LEVEL, **parse_filter(log_filter_directive)}
    for name in _configured - set(levels):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    _configured.clear()
    _configured.update(levels)
    _install_handler()


def initialize_logs() -> None:
    """Set up logging as icechunk's ``initialize_logs`` does: the levels from
    ``AICECHUNK_LOG`` (or ``ICECHUNK_LOG``), and a handler on stderr if nothing else
    prints log records. Called on ``import aicechunk`` when either variable is set."""
    set_logs_filter(None)


def _install_handler() -> None:
    # an application that configured logging (a handler on the root logger, pytest's
    # capture) sees our records through propagation: a handler of ours would print twice
    global _handler
    if _handler is not None or logging.getLogger().handlers:
        return
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter(_FORMAT))
    logging.getLogger(ROOT).addHandler(_handler)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def debug_info() -> dict[str, str]:
    """Platform, Python and the versions of aicechunk and the packages it works with
    (those installed), for bug reports."""
    info = {"platform": platform.platform(), "python": platform.python_version()}
    for package in ("aicechunk", "zarr", "numpy", "numcodecs", "xarray", "dask", "aiobotocore"):
        version = _version(package)
        if version is not None:
            info[package] = version
    return info


def print_debug_info() -> None:
    """Print ``debug_info()``, one ``name:  version`` per line, as icechunk does."""
    for name, value in debug_info().items():
        print(f"{name}:  {value}")


if os.environ.get(LOG_ENV) or os.environ.get("ICECHUNK_LOG"):
    initialize_logs()
