"""The repository: create and open, branches and tags, history, and sessions."""

from aicechunk.format.feature_flags import FeatureFlag
from aicechunk.format.repo_updates import RepoAvailability, RepoStatus
from aicechunk.repository.history import SnapshotInfo
from aicechunk.repository.repository import Repository, spec_version
from aicechunk.repository.v2admin import ManifestFileInfo

__all__ = [
    "FeatureFlag",
    "ManifestFileInfo",
    "RepoAvailability",
    "RepoStatus",
    "Repository",
    "SnapshotInfo",
    "spec_version",
]
