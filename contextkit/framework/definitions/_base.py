"""Common parts of every repo object: its name, metadata and where it was defined."""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from contextkit.errors import DefinitionError
from contextkit.framework.specs import (
    Location,
)


def caller_location(depth: int = 2) -> tuple[str, int]:
    frame = sys._getframe(depth)
    while frame.f_back is not None and frame.f_code is _WRAPPER_CODE:
        frame = frame.f_back  # the argument check below sits between a definition and its user
    return frame.f_code.co_filename, frame.f_lineno


F = TypeVar("F", bound=Callable[..., Any])


def checked_arguments(func: F) -> F:
    """Check the keyword arguments of a definition (a decorator or ``__init__``) before it runs:
    an unknown one is a :class:`DefinitionError` at the user's file and line that names the
    closest known argument (``batch_schedul`` -> "did you mean batch_schedule?"), instead of a
    ``TypeError`` that points into contextkit."""
    signature = inspect.signature(func)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return func
    known = [
        n
        for n, p in signature.parameters.items()
        if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL
    ]
    what = func.__qualname__.removesuffix(".__init__")

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            name = what
            if func.__name__ == "__init__" and args:  # a subclass inheriting the check
                name = type(args[0]).__name__
            frame = sys._getframe(1)
            close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"{name} takes: {', '.join(known)}"
            raise DefinitionError(
                f"{name}() got an unknown argument {unknown[0]!r}",
                location=f"{_shown(frame.f_code.co_filename)}:{frame.f_lineno}",
                hint=hint,
            )
        return func(*args, **kwargs)

    return checked  # type: ignore[return-value]


_WRAPPER_CODE = checked_arguments(lambda: None).__code__


def _shown(file: str) -> str:
    """A file as the user named it: relative to the working folder when inside it."""
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(file)
        if not relative.startswith(".."):
            return relative
    return file


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
