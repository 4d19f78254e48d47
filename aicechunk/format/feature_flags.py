"""Feature flags of a spec v2 repository: operations its owner turned off (or on).

The repo info file lists the ids of the flags set explicitly, enabled or disabled; a flag
in neither list is at its default. Which flags exist, their ids, names and defaults are
not stored: they are the table below, as Icechunk 2.3 has it (ids 1 and 2 are reserved
for flags to come). Ids this library does not know are kept as found.

``require_feature`` is the one check every operation guarded by a flag calls, on the
repo info it is about to change (inside the change given to ``RepoInfoStore.update``,
so that the check and the change see the same file).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from aicechunk.errors import FeatureFlagDisabledError, InvalidInputError
from aicechunk.format.repo_info import RepoInfo

__all__ = [
    "FEATURE_FLAGS",
    "FeatureFlag",
    "feature_flag_id",
    "feature_flags",
    "require_feature",
    "with_feature_flag",
]

#: name -> (id, enabled by default), as Icechunk 2.3 defines them
FEATURE_FLAGS: dict[str, tuple[int, bool]] = {
    "move_node": (3, True),
    "create_tag": (4, True),
    "delete_tag": (5, True),
}


@dataclass(frozen=True, slots=True)
class FeatureFlag:
    """One feature flag of a repository (icechunk's ``FeatureFlag``): its id and name,
    whether it is on by default, how it is set (``None``: not set, at its default) and
    whether it is on now."""

    id: int
    name: str
    default_enabled: bool
    setting: bool | None

    @property
    def enabled(self) -> bool:
        """Whether the operation the flag guards is allowed."""
        return self.default_enabled if self.setting is None else self.setting


def feature_flag_id(name: str) -> int:
    """The id of the flag called ``name``; ``InvalidInputError`` for a name that is no
    flag's (``TypeError`` for one that is not a str)."""
    if not isinstance(name, str):
        raise TypeError(f"a feature flag name is a str, not {type(name).__name__}")
    found = FEATURE_FLAGS.get(name)
    if found is None:
        known = ", ".join(sorted(FEATURE_FLAGS))
        raise InvalidInputError(f"invalid feature flag name: {name!r} (flags: {known})")
    return found[0]


def feature_flags(info: RepoInfo) -> list[FeatureFlag]:
    """Every flag and its state in ``info``, by id."""
    enabled = set(info.enabled_feature_flags or ())
    disabled = set(info.disabled_feature_flags or ())
    found = []
    for name, (flag_id, default) in FEATURE_FLAGS.items():
        setting = True if flag_id in enabled else False if flag_id in disabled else None
        found.append(FeatureFlag(flag_id, name, default, setting))
    return sorted(found, key=lambda f: f.id)


def with_feature_flag(info: RepoInfo, flag_id: int, setting: bool | None) -> RepoInfo:
    """``info`` with flag ``flag_id`` set on (``True``), off (``False``) or back to its
    default (``None``). As in Icechunk, a list the file does not have is written only
    once a flag goes into it, and one that empties stays, empty."""
    if setting is not None and not isinstance(setting, bool):
        raise TypeError(f"a feature flag setting is a bool or None, not {type(setting).__name__}")
    on, off = info.enabled_feature_flags, info.disabled_feature_flags

    def without(flags: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if flags is None else tuple(f for f in flags if f != flag_id)

    def adding(flags: tuple[int, ...] | None) -> tuple[int, ...]:
        return tuple(sorted({*(flags or ()), flag_id}))

    if setting is None:
        on, off = without(on), without(off)
    elif setting:
        on, off = adding(on), without(off)
    else:
        on, off = without(on), adding(off)
    return replace(info, enabled_feature_flags=on, disabled_feature_flags=off)


def require_feature(info: RepoInfo, name: str, what: str) -> None:
    """Raise ``FeatureFlagDisabledError`` if flag ``name`` is off in ``info``: ``what``
    says the operation refused, in icechunk's words ("tag creation", "tag delete",
    "create rearrange session", "commit rearrange session", "flush rearrange session").
    """
    flag_id = feature_flag_id(name)
    if info.enabled_feature_flags is not None and flag_id in info.enabled_feature_flags:
        return
    disabled = info.disabled_feature_flags is not None and flag_id in info.disabled_feature_flags
    if disabled or not FEATURE_FLAGS[name][1]:
        raise FeatureFlagDisabledError(what, name)
