"""Operations log entries read from a repo info file, decoded when first looked at.

A repo info file keeps up to 1,000 log entries, and ``Repository.ops_log()`` hands each
one over; most callers look at a few (the newest) or only count them. Decoding one
whole entry (its kind, a snapshot id, a branch name, a datetime) takes several
microseconds, so an entry read from a file is a ``StoredUpdate``: an ``Update`` that
holds only where it is in the file until one of its fields is read. Then the whole
entry is decoded at once, by the checking decoder (``decode_update``): a malformed
entry is a ``FormatError`` at that moment, naming the file. From then on it is an
``Update`` like any other (equal to, and hashing as, the same ``Update`` made directly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aicechunk.format.flatbuf import Reader, guarded
from aicechunk.format.repo_updates import Update, decode_update

__all__ = ["StoredUpdate", "stored_updates"]

_FIELDS = frozenset(("kind", "updated_at", "backup_path"))
_set = object.__setattr__


class StoredUpdate(Update):
    """An ``Update`` at ``_pos`` in the flatbuffer of ``_reader``, its fields decoded
    (all at once) on first access."""

    __slots__ = ("_pos", "_reader")

    def __getattr__(self, name: str) -> Any:
        # reached only for a slot not set yet: a field of an entry not decoded yet
        if name in _FIELDS:
            reader: Reader = self._reader
            pos: int = self._pos
            full = guarded(reader.name, lambda: decode_update(reader, pos))
            _set(self, "kind", full.kind)
            _set(self, "updated_at", full.updated_at)
            _set(self, "backup_path", full.backup_path)
            return getattr(full, name)
        if name == "_segment":  # no piece of a new file made from it yet
            return None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Update):
            return (self.kind, self.updated_at, self.backup_path) == (
                other.kind,
                other.updated_at,
                other.backup_path,
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.kind, self.updated_at, self.backup_path))

    def __repr__(self) -> str:  # what it is to its reader: an Update
        return (
            f"Update(kind={self.kind!r}, updated_at={self.updated_at!r}, "
            f"backup_path={self.backup_path!r})"
        )


_new = object.__new__
_set_reader = StoredUpdate._reader.__set__  # type: ignore[attr-defined]
_set_pos = StoredUpdate._pos.__set__  # type: ignore[attr-defined]


def stored_updates(reader: Reader, positions: Sequence[int]) -> tuple[Update, ...]:
    """One ``StoredUpdate`` per table position in ``positions`` (each a table of the
    operations log in ``reader``'s buffer), none decoded yet."""
    made: list[Update] = []
    append = made.append
    for pos in positions:
        update = _new(StoredUpdate)
        _set_reader(update, reader)
        _set_pos(update, pos)
        append(update)
    return tuple(made)
