"""docs/migration.md's table has a row for every name of the public API of the icechunk
installed (2.3.0 on the baseline), and says "not yet" only of names the facade really
lacks (a row goes stale when the core gains a call: update it then)."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

import aicechunk.sync as facade

icechunk = pytest.importorskip("icechunk")

PAGE = (Path(__file__).parent.parent / "docs" / "migration.md").read_text()
ROWS = {
    name: why.strip() for name, why in re.findall(r"^\| `([\w.]+)` \| .*\|([^|]*)\|$", PAGE, re.M)
}
MODULES = ["", ".storage", ".credentials", ".xarray", ".dask", ".distributed"]
CLASSES = ["Repository", "Session", "ForkSession", "IcechunkStore"]


def _icechunk_names() -> dict[str, bool]:
    """icechunk's public names -> whether the facade has one of that name."""
    found: dict[str, bool] = {}
    for suffix in MODULES:
        theirs = importlib.import_module("icechunk" + suffix)
        ours = importlib.import_module("aicechunk.sync" + suffix)
        names = getattr(theirs, "__all__", None) or [
            n
            for n, v in vars(theirs).items()
            if not n.startswith("_")
            and (inspect.isfunction(v) or inspect.isclass(v))
            and getattr(v, "__module__", "").startswith("icechunk")
        ]
        for name in names:
            if name != "__version__":
                found[f"icechunk{suffix}.{name}"] = hasattr(ours, name)
    for cls in CLASSES:
        theirs, ours = getattr(icechunk, cls), getattr(facade, cls)
        for name in dir(theirs):
            if name.startswith("_") or (
                cls in ("IcechunkStore", "ForkSession") and name not in vars(theirs)
            ):
                continue
            if name.endswith("_async") and hasattr(theirs, name[: -len("_async")]):
                continue
            if name.startswith("async_") and hasattr(theirs, name[len("async_") :]):
                continue
            found[f"{cls}.{name}"] = hasattr(ours, name)
    return found


def test_every_icechunk_name_has_a_row() -> None:
    missing = sorted(set(_icechunk_names()) - set(ROWS))
    assert not missing, f"docs/migration.md has no row for {missing}"


def test_not_yet_only_where_the_facade_lacks_the_name() -> None:
    names = _icechunk_names()
    stale = sorted(n for n, has in names.items() if has and ROWS.get(n, "").startswith("not yet"))
    unmarked = sorted(
        n for n, has in names.items() if not has and not ROWS.get(n, "").startswith("not yet")
    )
    assert not stale, f"rows say 'not yet' of names the facade has: {stale}"
    assert not unmarked, f"rows do not say 'not yet' of names the facade lacks: {unmarked}"
