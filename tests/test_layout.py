"""The house stays in order: every module imports on its own, in a fresh interpreter, and
no module grows past the size a reader can hold in mind (the import layers are checked by
``lint-imports`` in CI, from the contracts in pyproject.toml)."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aicechunk

PACKAGE = Path(aicechunk.__file__).parent
MAX_LINES = 520  # "no module over ~500 lines"


def _modules() -> list[str]:
    found = ["aicechunk"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="aicechunk."):
        if info.name != "aicechunk.__main__":  # runs the CLI when imported, by design
            found.append(info.name)
    return sorted(found)


def test_every_module_is_found() -> None:
    names = _modules()
    assert "aicechunk.session.flush" in names and "aicechunk.drivers.base" in names
    assert len(names) > 40


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    # an import that works only after another module was imported (an order-dependent
    # cycle) fails here, in the interpreter that imports that module first
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}

    def load(name: str) -> tuple[str, int, str]:
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        return name, done.returncode, done.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failures = [r for r in pool.map(load, _modules()) if r[1] != 0]
    assert not failures, "\n".join(f"{n}: {err}" for n, _, err in failures)


def test_no_module_is_too_long() -> None:
    sizes = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"


def test_every_exception_is_defined_in_errors_and_listed_in_its_tree() -> None:
    import ast

    import aicechunk.errors as errors

    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception", "Fault"))
                for b in node.bases
            ):
                elsewhere.append(f"{path.name}:{node.name}")
    assert not elsewhere, f"exceptions defined outside errors.py: {elsewhere}"
    defined = [
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, Exception | Warning)
        and value.__module__ == errors.__name__
    ]
    assert errors.__doc__ is not None
    missing = [name for name in defined if name not in errors.__doc__]
    assert not missing, f"errors.py's docstring tree does not list {missing}"


def test_readme_layout_is_the_real_tree() -> None:
    import re

    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("<!-- layout -->", 1)[1].split("<!-- /layout -->", 1)[0]
    listed = set(re.findall(r"(?<![\w/.])(\w+\.py|\w+/)(?=\s)", block)) - {"aicechunk/"}
    real = {
        p.name + ("/" if p.is_dir() else "")
        for p in PACKAGE.rglob("*")
        if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"
    } - {"__init__.py", "__main__.py"}
    assert listed == real, (
        f"README lists what does not exist: {sorted(listed - real)}; "
        f"misses: {sorted(real - listed)}"
    )


def test_importing_aicechunk_loads_no_network_client() -> None:
    # clients load with the first driver that needs them: a fork's worker, the CLI and
    # every import pay nothing for the backends they do not use
    code = (
        "import sys, aicechunk, aicechunk.sync; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'aiohttp', 'aiobotocore', 'botocore', 'gcloud', 'dask', 'xarray'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
