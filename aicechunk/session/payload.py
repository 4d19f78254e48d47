"""Fork payloads: a fork's state as a compact, versioned, checksummed byte string.

The payload holds the storage description, the cache bounds, the base snapshot, the branch,
the session settings, the pending changes and the virtual chunk authorizations; its size
grows with the changes, not with the repository. A fork made with changes whose parent
still uploads chunks those changes name also carries their bytes (format version 3; see
``carried.py``): at most the parent's write-behind buffer. Decoding checks everything in it as the
session API checks what it is given, before anything can be merged.

A storage description with refreshable credentials holds a callable: it travels pickled
inside the payload, and only a fork unpickled (``pickle`` trusts its input already)
unpickles it; ``ForkSession.from_bytes`` refuses it, so that decoding bytes never runs
code they carry.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from datetime import datetime
from typing import Any

import msgpack
import zstandard

from aicechunk.assets import AssetManager
from aicechunk.changes.changeset import ChangeSet
from aicechunk.changes.validate import check_changes
from aicechunk.config import CachingConfig, DecompressionLimits
from aicechunk.drivers.registry import driver_from_config
from aicechunk.errors import AicechunkError, ForkPayloadError, FormatError
from aicechunk.format.header import SPEC_VERSIONS, decompress_bounded
from aicechunk.format.ids import SnapshotId
from aicechunk.session.carried import carried_from_plain, carried_to_plain, pending_named
from aicechunk.session.state import SessionConfig, SessionState
from aicechunk.store.metadata import parse_metadata
from aicechunk.virtual import VirtualResolver

__all__ = ["decode_fork", "encode_fork"]

_MAGIC = b"AICFORK\x00"
_VERSION = 2  # 2: chunk changes stored column by column
# 3: also carries chunks still uploading in the parent (a reader of 2 must refuse those)
_VERSION_CARRIED = 3
_HEADER = struct.Struct("<8sHHI")  # magic, version, flags, crc32 of the body
# the cache bounds a payload carries, in this order
_CACHE_FIELDS = ("num_snapshot_nodes", "num_chunk_refs", "num_transaction_changes")
_EXT_PICKLED = 1  # a callable of the storage description (refreshable credentials)
_EXT_DATETIME = 2  # a datetime, ISO 8601


def _extension(value: Any) -> msgpack.ExtType:
    if isinstance(value, datetime):
        return msgpack.ExtType(_EXT_DATETIME, value.isoformat().encode())
    if callable(value):
        return msgpack.ExtType(_EXT_PICKLED, pickle.dumps(value))
    raise TypeError(f"cannot put a {type(value).__name__} in a fork payload")


def _ext_hook(trusted: bool) -> Any:
    def hook(code: int, data: bytes) -> Any:
        if code == _EXT_DATETIME:
            return datetime.fromisoformat(data.decode())
        if code == _EXT_PICKLED and trusted:
            return pickle.loads(data)
        if code == _EXT_PICKLED:
            raise ValueError(
                "the storage has refreshable credentials, whose callable comes back only "
                "when the fork is unpickled (pickle.loads), not from bytes"
            )
        raise ValueError(f"unknown extension type {code}")

    return hook


def encode_fork(state: SessionState) -> bytes:
    """``state`` (a fork's) as a payload."""
    caching = state.assets.caching
    virtual = state.virtual
    carried = pending_named(state)
    body: dict[str, Any] = {
        "storage": dict(state.assets.driver.describe()),
        "cache": [caching.resolved(name) for name in _CACHE_FIELDS],
        "snapshot": state.snapshot_id.bytes,
        "branch": state.branch,
        "inline": state.config.inline_chunk_threshold_bytes,
        "concurrency": state.config.read_concurrency,
        "changes": state.changes.to_plain(),
        "virtual": None if virtual is None else virtual.to_plain(),
        "spec": state.assets.format_version,
    }
    if carried:
        body["carried"] = carried_to_plain(carried)
    version = _VERSION_CARRIED if carried else _VERSION
    packed = zstandard.ZstdCompressor(level=3).compress(
        msgpack.packb(body, use_bin_type=True, default=_extension)
    )
    return _HEADER.pack(_MAGIC, version, 0, zlib.crc32(packed)) + packed


def decode_fork(payload: bytes, limits: DecompressionLimits, trusted: bool) -> SessionState:
    """The fork state in a payload; ``ForkPayloadError`` for anything wrong with it.
    ``trusted`` (only for payloads inside a pickle) lets a pickled callable through."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ForkPayloadError(f"a fork payload is bytes, not {type(payload).__name__}")
    if len(payload) < _HEADER.size:
        raise ForkPayloadError(f"fork payload truncated: {len(payload)} bytes")
    magic, version, _flags, crc = _HEADER.unpack_from(payload)
    if magic != _MAGIC:
        raise ForkPayloadError("not a fork payload (bad magic bytes)")
    if version not in (_VERSION, _VERSION_CARRIED):
        raise ForkPayloadError(
            f"fork payload format version {version}; this aicechunk reads "
            f"{_VERSION} and {_VERSION_CARRIED}"
        )
    packed = payload[_HEADER.size :]
    if zlib.crc32(packed) != crc:
        raise ForkPayloadError("fork payload corrupted or truncated (checksum mismatch)")
    try:
        raw = decompress_bounded(packed, limits.bound(len(packed)), "fork payload")
    except FormatError as err:
        raise ForkPayloadError(str(err)) from None
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=_ext_hook(trusted))
        state = _state(body, limits, version == _VERSION_CARRIED)
    except Exception as err:  # any decoding failure of a checksummed payload
        raise ForkPayloadError(f"fork payload unreadable: {type(err).__name__}: {err}") from None
    try:
        check_changes(state.changes, parse=parse_metadata)
    except (AicechunkError, ValueError) as err:
        raise ForkPayloadError(f"fork payload refused: {err}") from err
    return state


def _state(body: Any, limits: DecompressionLimits, carries: bool) -> SessionState:
    if not isinstance(body, dict):
        raise ValueError("the body is not a mapping")
    changes = ChangeSet.from_plain(body["changes"])
    if carries != ("carried" in body):
        raise ValueError("carried chunks belong in format version 3 payloads, and only there")
    carried = carried_from_plain(body["carried"], changes) if carries else None
    if carries and not carried:
        raise ValueError("a format version 3 payload has at least one carried chunk")
    driver = driver_from_config(body["storage"])
    cache = body["cache"]
    if not (isinstance(cache, list) and len(cache) == len(_CACHE_FIELDS)) or not all(
        map(_count, cache)
    ):
        raise ValueError(f"cache sizes must be {len(_CACHE_FIELDS)} non-negative integers")
    caching = CachingConfig(**dict(zip(_CACHE_FIELDS, cache, strict=True)))
    inline, concurrency = body["inline"], body["concurrency"]
    if not (_count(inline) and _count(concurrency) and concurrency > 0):
        raise ValueError(
            "the inline threshold must be a non-negative integer and the read "
            "concurrency a positive one"
        )
    branch = body["branch"]
    if branch is not None and not isinstance(branch, str):
        raise ValueError("the branch must be a string")
    virtual = body.get("virtual")
    spec = body.get("spec", 1)  # payloads made before spec v2 was supported have none
    if spec not in SPEC_VERSIONS or isinstance(spec, bool):
        raise ValueError(f"unknown spec version {spec!r}")
    return SessionState(
        AssetManager(driver, caching, limits, spec),
        SnapshotId(body["snapshot"]),
        branch=branch,
        read_only=False,
        config=SessionConfig(inline, concurrency),
        changes=changes,
        virtual=None if virtual is None else VirtualResolver.from_plain(virtual),
        from_payload=True,
        carried=carried,
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
