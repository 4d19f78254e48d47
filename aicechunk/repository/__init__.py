"""The repository: create and open, branches and tags, history, and sessions."""

from aicechunk.repository.repository import Repository, SnapshotInfo

__all__ = ["Repository", "SnapshotInfo"]
