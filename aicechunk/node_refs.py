"""The chunk references of one array in one manifest file, kept decoded between commits.

A commit that changes a few chunks of an array whose references are stored rewrites the
array's manifest: every stored reference plus the changes. Decoding the stored ones, one
Python object each, was most of a small commit's work; the next commit on a branch reads
back the manifest the previous one wrote, so this process keeps the references it wrote
(or decoded) instead. Manifest files are immutable and named by a random id, so an entry
keyed by (manifest id, node id) can never go stale: no other content ever has that name.
"""

from __future__ import annotations

from aicechunk.format import Coords
from aicechunk.format.ids import ManifestId, NodeId
from aicechunk.format.manifest import ChunkRef
from aicechunk.lru import LRU

__all__ = ["MAX_KEPT_REFS", "NodeRefs"]

#: references kept at most, over all entries (some 25 MiB of native references; inline
#: ones hold their chunk's bytes too, at most 512 by default)
MAX_KEPT_REFS = 1 << 17


class NodeRefs:
    """Decoded references per (manifest id, node id), bounded LRU by reference count
    (``capacity``; an entry over a quarter of it is not kept). Callers get copies, so an
    entry never changes after it is put."""

    def __init__(self, capacity: int = MAX_KEPT_REFS) -> None:
        self._kept: LRU[tuple[ManifestId, NodeId], dict[Coords, ChunkRef]] = LRU(capacity, len)

    def get(self, manifest_id: ManifestId, node_id: NodeId) -> dict[Coords, ChunkRef] | None:
        """A copy of the references ``node_id`` has in ``manifest_id``, if kept."""
        found = self._kept.get((manifest_id, node_id))
        return None if found is None else dict(found)

    def put(
        self,
        manifest_id: ManifestId,
        node_id: NodeId,
        refs: dict[Coords, ChunkRef],
        *,
        owned: bool = False,
    ) -> None:
        """Keep every reference ``node_id`` has in the stored manifest ``manifest_id``:
        a copy of ``refs``, or (``owned=True``) the dict itself, which the caller then
        must never change. Only entries of at most a quarter of the capacity are kept
        (nor copied)."""
        if len(refs) <= self._kept.capacity // 4:
            self._kept.put((manifest_id, node_id), refs if owned else dict(refs))

    def kept(self, manifest_id: ManifestId, node_id: NodeId) -> bool:
        """Whether the references of ``node_id`` in ``manifest_id`` are kept."""
        return self._kept.get((manifest_id, node_id)) is not None
