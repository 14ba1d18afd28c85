"""The error tree drawn at the top of contextkit/errors.py is the tree the code defines: every
ContextKitError subclass of the core is defined in errors.py, and each drawn row's parent, code
and HTTP status are the class's."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import contextkit.errors as errors

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^    ((?:    )*)(?:└── )?(\w+)\s+(\w+)\s+(\d{3})\b")


def _drawn() -> list[tuple[int, str, str, int]]:
    rows = []
    for line in (errors.__doc__ or "").splitlines():
        match = ROW.match(line)
        if match and match.group(2) != "class":
            depth = len(match.group(1)) // 4 + (1 if "└──" in line else 0)
            rows.append((depth, match.group(2), match.group(3), int(match.group(4))))
    return rows


def test_the_drawing_matches_the_classes():
    rows = _drawn()
    assert rows and rows[0][1] == "ContextKitError"
    parents: dict[int, str] = {}
    for depth, name, code, status in rows:
        cls = getattr(errors, name)
        assert (cls.code, cls.http_status) == (code, status), name
        if depth:
            assert cls.__bases__[0].__name__ == parents[depth - 1], name
        parents[depth] = name


def test_every_error_class_is_drawn():
    defined = {
        name
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.ContextKitError) and cls.__module__ == errors.__name__
    }
    assert defined == {name for _, name, _, _ in _drawn()}


def test_no_error_class_is_defined_outside_errors_py():
    error_names = {
        name
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.ContextKitError)
    }
    outside = []
    for path in sorted((ROOT / "contextkit").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "contextkit":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", None)) for b in node.bases}
                if bases & error_names:
                    outside.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not outside, "define these in contextkit/errors.py:\n" + "\n".join(outside)
