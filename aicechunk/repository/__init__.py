"""The repository: create and open, branches and tags, history, and sessions."""

from aicechunk.repository.history import SnapshotInfo
from aicechunk.repository.repository import Repository, spec_version

__all__ = ["Repository", "SnapshotInfo", "spec_version"]
