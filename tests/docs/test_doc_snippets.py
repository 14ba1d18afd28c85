"""The docs' code cannot drift from the code (issue 18 item 8).

- Every ```python block of README.md and docs/*.md compiles (top-level ``await`` allowed, as in
  ``python -m asyncio``), and every name it imports from contextkit exists. A block that is only
  an illustration (a fragment that is not Python on its own) says so with the line
  ``<!-- illustration -->`` right above its fence; keep that list small. REPL sessions are
  ```pycon blocks.
- The modules' doctests run (``>>>`` examples in their docstrings).

Blocks are not executed against a repo here: most read the quickstart's materialized data
(embedding views included), which tests/stories/test_quickstart.py builds and checks.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ILLUSTRATION = "<!-- illustration -->"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOCTEST_MODULES = [
    "contextkit.prompts",
    "contextkit.prompts.llm",
    "contextkit.prompts.render",
    "contextkit.prompts.tokens",
    "contextkit.embeddings.chunking",
    "contextkit.embeddings.encoders",
    "contextkit.embeddings.query_cache",
    "contextkit.retrieval.chat",
]


def python_blocks() -> list[tuple[str, str]]:
    """``(file:line, code)`` of every python block that is not marked as an illustration."""
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            if before.strip() == ILLUSTRATION:
                continue
            line = text[: match.start()].count("\n") + 2  # the block's first line
            blocks.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_the_docs_have_python_blocks_and_few_illustrations():
    assert len(BLOCKS) > 40
    marked = sum(path.read_text().count(ILLUSTRATION) for path in DOCS)
    assert marked <= 5, "keep the illustrations few: make blocks real Python instead"


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_a_docs_python_block_compiles_and_its_contextkit_imports_exist(where, code):
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST
    try:
        tree = compile(code, where, "exec", flags=flags)
    except SyntaxError as exc:
        pytest.fail(f"{where}: the block is not Python ({exc.msg}, line {exc.lineno})")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("contextkit"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or _is_module(f"{node.module}.{alias.name}"), (
                    f"{where}: {node.module} has no {alias.name!r}"
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("contextkit"):
                    importlib.import_module(alias.name)


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_a_modules_doctests_pass(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True
    )
    assert result.attempted > 0, f"{name} has no doctest: take it off the list"
    assert result.failed == 0, f"{result.failed} doctest(s) of {name} failed (see the output)"
