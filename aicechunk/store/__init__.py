"""The zarr store over a session, with the zarr knowledge it owns: keys and metadata."""

from aicechunk.store.store import IcechunkStore

__all__ = ["IcechunkStore"]
