"""Common parts of every repo object: its name, metadata and where it was defined."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from contextkit.errors import DefinitionError
from contextkit.framework.specs import (
    Location,
)


def caller_location(depth: int = 2) -> tuple[str, int]:
    frame = sys._getframe(depth)
    return frame.f_code.co_filename, frame.f_lineno


class Definition:
    """Common parts of every repo object: name, metadata and where it was defined."""

    kind: str = ""

    def __init__(
        self,
        name: str,
        description: str | None,
        owner: str | None,
        tags: dict[str, str] | None,
        location: tuple[str, int],
    ) -> None:
        self._file, self._line = location
        if not isinstance(name, str) or not name.isidentifier():
            raise DefinitionError(
                f"{self.kind} name {name!r} is not valid",
                location=f"{self._file}:{self._line}",
                hint="use letters, digits and underscores, starting with a letter",
            )
        self.name = name
        self.description = description or ""
        self.owner = owner
        self.tags = dict(tags or {})

    def location(self, root: str | None = None) -> Location:
        """Where this object was defined; the file is made relative to ``root`` when given."""
        file = self._file
        if root is not None:
            with contextlib.suppress(ValueError):  # other drive on Windows
                file = os.path.relpath(file, root)
        return Location(file=file, line=self._line)

    def _error(self, message: str, hint: str | None = None) -> DefinitionError:
        return DefinitionError(message, location=f"{self._file}:{self._line}", hint=hint)

    def _common(self, root: str | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "tags": self.tags,
            "location": self.location(root),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
