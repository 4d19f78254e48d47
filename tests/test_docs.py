"""Every ```python block in docs/ runs (top-level await allowed)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def blocks(page: Path) -> list[str]:
    return [b for b in BLOCK.findall(page.read_text()) if not b.startswith("# not run")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
async def test_doc_blocks_run(page: Path) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs.{page.stem}"}
    for i, source in enumerate(blocks(page)):
        code = compile(source, f"{page.name}[{i}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if result is not None:
            await result


def test_every_page_is_linked_and_has_code() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    for page in PAGES:
        if page.name != "index.md":
            assert f"({page.name})" in index, page.name
    runnable = sum(len(blocks(p)) for p in PAGES)
    assert runnable >= 8
