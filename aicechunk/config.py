"""The repository configuration users build and persist in ``config.yaml``."""

from __future__ import annotations

import copy
from typing import Any

from aicechunk.format.config import decode_config_yaml, encode_config_yaml

__all__ = ["RepositoryConfig"]


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is not None:
                out[key] = _merge(base.get(key), value)
        return out
    return override if override is not None else base


class RepositoryConfig:
    """Repository settings; every field unset (``None``) means "the default".

    Stored as the mapping Icechunk writes, so settings this class does not model yet
    survive a load and save unchanged.
    """

    DEFAULT_INLINE_THRESHOLD = 512

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = copy.deepcopy(data) if data else {}

    @classmethod
    def default(cls) -> RepositoryConfig:
        """A configuration with nothing set."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (Icechunk's shape)."""
        return copy.deepcopy(self._data)

    def is_default(self) -> bool:
        """Whether nothing is set."""

        def empty(v: Any) -> bool:
            return v is None or (isinstance(v, dict) and all(empty(x) for x in v.values()))

        return all(empty(v) for v in self._data.values())

    def merge(self, other: RepositoryConfig) -> RepositoryConfig:
        """This configuration with everything ``other`` sets on top."""
        return RepositoryConfig(_merge(self._data, other._data))

    def to_yaml(self) -> bytes:
        """``config.yaml`` bytes, as Icechunk writes them."""
        return encode_config_yaml(self._data)

    @classmethod
    def from_yaml(cls, data: bytes, name: str = "config.yaml") -> RepositoryConfig:
        """Parse ``config.yaml`` bytes."""
        return cls(decode_config_yaml(data, name))

    @property
    def inline_chunk_threshold_bytes(self) -> int | None:
        """Chunks of at most this many bytes are stored inside manifests (default 512)."""
        value = self._data.get("inline_chunk_threshold_bytes")
        return None if value is None else int(value)

    @inline_chunk_threshold_bytes.setter
    def inline_chunk_threshold_bytes(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError("inline_chunk_threshold_bytes must be a non-negative integer")
        self._data["inline_chunk_threshold_bytes"] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RepositoryConfig) and _merge({}, self._data) == _merge(
            {}, other._data
        )

    def __repr__(self) -> str:
        return f"RepositoryConfig({self._data!r})"
