"""The docs' code cannot drift from the code (issue 18 item 8).

- Every ```python block of README.md and docs/*.md compiles (top-level ``await`` allowed, as in
  ``python -m asyncio``), and every name it imports from contextkit exists. A block that is only
  an illustration (a fragment that is not Python on its own) says so with the line
  ``<!-- illustration -->`` right above its fence; keep that list small. REPL sessions are
  ```pycon blocks.
- Every block runs: per doc, its blocks in order in one namespace, against a quickstart repo
  (small generated data, applied and materialized, its ``minilm`` swapped for the ``hash`` model so
  nothing loads a model), the doc's own fresh copy. The namespace starts with ``contextkit``,
  ``ctx`` (the quickstart's ``prod`` workspace) and the objects the quickstart's files define (the
  definitions blocks use them), and the blocks run from a folder holding the repo at
  ``examples/quickstart``, or from the repo itself when the doc says
  ``<!-- run-from: examples/quickstart -->``. A block that cannot run here (it needs a server, a
  key, another repo) says why with ``<!-- not-run: reason -->`` right above its fence; it is still
  compiled, and the markers are counted.
- The modules' doctests run (``>>>`` examples in their docstrings).
"""

from __future__ import annotations

import ast
import asyncio
import doctest
import importlib
import inspect
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ILLUSTRATION = "<!-- illustration -->"
NOT_RUN = re.compile(r"^<!-- not-run: (.+) -->$")
RUN_FROM = re.compile(r"^<!-- run-from: (\S+) -->$", re.M)
QUICKSTART = ROOT / "examples" / "quickstart"
# The most blocks that may say they cannot run (a server, a key, another repo).
MAX_NOT_RUN = 20
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


def doc_blocks(path: Path) -> list[tuple[str, str, str | None]]:
    """``(file:line, code, not-run reason or None)`` of each python block of one doc that is
    not marked as an illustration, in order."""
    blocks = []
    text = path.read_text()
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        if before == ILLUSTRATION:
            continue
        reason = NOT_RUN.match(before)
        line = text[: match.start()].count("\n") + 2  # the block's first line
        where = f"{path.relative_to(ROOT)}:{line}"
        blocks.append((where, match.group(1), reason.group(1) if reason else None))
    return blocks


def python_blocks() -> list[tuple[str, str]]:
    """``(file:line, code)`` of every python block that is not marked as an illustration."""
    return [(where, code) for path in DOCS for where, code, _ in doc_blocks(path)]


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


# -- running the blocks ------------------------------------------------------------------------

RUN_DOCS = [path for path in DOCS if any(r is None for _, _, r in doc_blocks(path))]


def test_blocks_that_do_not_run_say_why_and_are_few():
    not_run = [(w, r) for path in DOCS for w, _, r in doc_blocks(path) if r is not None]
    assert all(len(reason) > 10 for _, reason in not_run), not_run
    assert len(not_run) <= MAX_NOT_RUN, f"{len(not_run)} blocks do not run: {not_run}"
    markers = sum(len(re.findall(r"<!-- not-run:", p.read_text())) for p in DOCS)
    assert markers == len(not_run), "a not-run marker must sit right above a ```python fence"


@pytest.fixture(scope="module")
def quickstart_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a served quickstart at ``examples/quickstart``: small data ending at the
    current hour (as ``make run`` makes it), applied and materialized in a live ``prod``
    workspace, with the ``hash`` model in place of ``minilm``."""
    import contextkit

    home = tmp_path_factory.mktemp("docs-home")
    repo = home / "examples" / "quickstart"
    shutil.copytree(
        QUICKSTART, repo, ignore=shutil.ignore_patterns("data", ".contextkit", "__pycache__")
    )
    config = yaml.safe_load((repo / "contextkit.yaml").read_text())
    config["models"] = {"minilm": {"type": "hash", "dimension": 384}}
    (repo / "contextkit.yaml").write_text(yaml.safe_dump(config))
    sys.path.insert(0, str(QUICKSTART))
    try:
        from generate_data import generate
    finally:
        sys.path.remove(str(QUICKSTART))
    generate(repo / "data", users=200, products=100, orders=4000, articles=20, seed=3)
    ctx = contextkit.connect(repo, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(repo))
    assert all(job.status == "succeeded" for job in ctx.materialize())
    ctx.close()
    return home


def quickstart_namespace(repo: Path) -> dict:
    """``contextkit``, ``ctx`` and the objects the quickstart's files define."""
    import contextkit
    from contextkit.framework.repo import load_repo

    load_repo(repo)  # imports the repo's files (fresh) as modules named after them
    namespace: dict = {"contextkit": contextkit}
    for path in sorted(repo.glob("*.py")):
        module = sys.modules.get(path.stem)
        if module is not None and getattr(module, "__file__", "").startswith(str(repo)):
            namespace.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    namespace["ctx"] = contextkit.connect(repo, workspace="prod")
    return namespace


@pytest.mark.parametrize("doc", RUN_DOCS, ids=[str(p.relative_to(ROOT)) for p in RUN_DOCS])
def test_a_docs_python_blocks_run_in_order(doc, quickstart_home, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(quickstart_home, home)  # each doc gets its own copy of the served repo
    repo = home / "examples" / "quickstart"
    run_from = RUN_FROM.search(doc.read_text())
    monkeypatch.chdir(home / run_from.group(1) if run_from else home)
    namespace = quickstart_namespace(repo)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    ran = 0
    try:
        for where, code, reason in doc_blocks(doc):
            if reason is not None:
                continue
            compiled = compile(code, where, "exec", flags=flags)
            try:
                result = eval(compiled, namespace)  # noqa: S307 - the docs' own code
                if inspect.iscoroutine(result):  # a block with top-level await
                    asyncio.run(result)
            except Exception as exc:
                pytest.fail(f"{where}: the block raised {type(exc).__name__}: {exc}")
            ran += 1
    finally:
        namespace["ctx"].close()
    assert ran > 0
