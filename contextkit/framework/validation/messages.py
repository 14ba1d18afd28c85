"""How validation words a problem: the object and its location, and the gist of an engine error."""

from __future__ import annotations

from contextkit.errors import DefinitionError
from contextkit.framework.definitions import Definition


def object_error(obj: Definition, message: str, root: str) -> DefinitionError:
    return DefinitionError(f"{obj.kind} {obj.name!r}: {message}", location=str(obj.location(root)))


def first_line(exc: Exception) -> str:
    """The gist of a (DuckDB) error: its message lines, without the echoed query and caret."""
    lines = []
    for line in str(exc).strip().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("LINE ") or set(stripped) <= {"^"}:
            continue
        lines.append(stripped)
    return " ".join(lines[:3]) if lines else type(exc).__name__
