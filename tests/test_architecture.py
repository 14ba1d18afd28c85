"""The allowed arrows between the core's parts (see docs/architecture.md), read from the syntax
tree of every module: imports inside functions and ``TYPE_CHECKING`` blocks count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Folder -> the import name it installs as (pyproject's package-dir).
PACKAGES = {
    "contextkit": "contextkit",
    "stores": "contextkit.stores",
    "embeddings": "contextkit.embeddings",
    "prompts": "contextkit.prompts",
    "server": "contextkit.server",
}
LEAVES = ("contextkit.stores", "contextkit.embeddings", "contextkit.prompts")

# The core's layers, lowest first: a module may import its own layer and the layers below it.
LAYERS = [
    ("base", ("contextkit.errors", "contextkit.types", "contextkit.config")),
    ("framework", ("contextkit.framework",)),
    ("compute", ("contextkit.compute",)),
    ("retrieval", ("contextkit.retrieval",)),
    ("governance", ("contextkit.governance",)),
    ("facade", ("contextkit.client", "contextkit.scaffold")),
    ("sdk", ("contextkit",)),
    ("server", ("contextkit.server",)),
    ("cli", ("contextkit.cli",)),
]


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every ``contextkit`` module ``name`` imports (anywhere in the file), resolved to a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index): the longest prefix wins
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _is_leaf(module: str) -> str | None:
    return next((leaf for leaf in LEAVES if module == leaf or module.startswith(leaf + ".")), None)


def test_leaves_import_nothing_of_the_core_or_of_each_other():
    wrong = []
    for module, targets in GRAPH.items():
        leaf = _is_leaf(module)
        if leaf is None:
            continue
        wrong += [f"{module} -> {t}" for t in sorted(targets) if _is_leaf(t) != leaf]
    assert not wrong, "a leaf imports outside itself:\n" + "\n".join(wrong)


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, targets in GRAPH.items():
        if _is_leaf(module):
            continue
        own = _layer(module)
        assert own is not None, f"{module} belongs to no layer: add it to LAYERS"
        for target in sorted(targets):
            if _is_leaf(target):
                continue
            if _layer(target) > own:
                upward.append(
                    f"{module} ({LAYERS[own][0]}) -> {target} ({LAYERS[_layer(target)][0]})"
                )
    assert not upward, "imports that point upward:\n" + "\n".join(upward)


def test_no_import_circles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(", ".join(c) for c in circles)


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        ("contextkit.compute.materialize", "contextkit.framework.specs", True),
        ("contextkit.framework.specs", "contextkit.compute.materialize", False),
        ("contextkit.compute.materialize", "contextkit.governance.monitoring", False),
        ("contextkit.governance.monitoring", "contextkit.retrieval.online", True),
        ("contextkit.retrieval.online", "contextkit.client", False),
    ],
)
def test_the_layer_rule_itself(module, target, allowed):
    assert (_layer(target) <= _layer(module)) is allowed
