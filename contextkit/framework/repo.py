"""Loading a context-as-code repo: import every Python file and collect its objects.

Objects are discovered as module globals (as in Tecton); objects they reference (an entity used by
a view but not bound to a global name) are collected too. Files import each other by their path
relative to the repo root (``from entities import user``).
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from contextkit.config import RepoConfig, load_config
from contextkit.errors import DefinitionError, ValidationErrors
from contextkit.framework.definitions import (
    BatchFeatureView,
    ContextService,
    DatabaseSource,
    Definition,
    EmbeddingView,
    Entity,
    FileSource,
    PromptView,
    PushSource,
    RealtimeFeatureView,
    ServerGroup,
    StreamFeatureView,
    TransformServerGroup,
)

SKIP_DIRS = {".contextkit", ".venv", "venv", "__pycache__", "data", "node_modules", "tests"}

# Objects sharing a namespace: two of them may not have the same name.
# Sources and views share one namespace: both are tables in a view's SQL, and every kind of view
# is looked up by its name alone (in searches, prompts and the HTTP API).
NAMESPACES = {
    Entity: "entity",
    FileSource: "source or view",
    DatabaseSource: "source or view",
    PushSource: "source or view",
    BatchFeatureView: "source or view",
    StreamFeatureView: "source or view",
    RealtimeFeatureView: "source or view",
    EmbeddingView: "source or view",
    PromptView: "source or view",
    ContextService: "service",
    ServerGroup: "server group",
    TransformServerGroup: "server group",
}


@dataclass
class Repo:
    """A loaded repo: its config and its objects, in file and line order."""

    config: RepoConfig
    objects: list[Definition] = field(default_factory=list)

    def of_type(self, cls: type) -> list:
        return [o for o in self.objects if isinstance(o, cls)]


def python_files(root: Path, exclude: list[str] | None = None) -> list[Path]:
    """The repo's definition files: every ``.py`` file except tests, hidden/data folders and
    the config's ``exclude`` globs (matched against the path relative to the root)."""
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("test_") or rel.name == "setup.py":
            continue
        if any(fnmatch.fnmatch(rel.as_posix(), pattern) for pattern in exclude or []):
            continue
        files.append(path)
    return files


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _inside(root: Path) -> Callable[[str], bool]:
    """Whether a folder is ``root`` or under it once its links are resolved, each folder
    resolved once: a process holds thousands of modules (litellm alone ~2,800) in far fewer
    folders, and resolving every module's path took ~0.2 s of each repo load."""
    prefix = str(root).rstrip(os.sep) + os.sep

    @cache
    def inside(folder: str) -> bool:
        return (os.path.realpath(folder) + os.sep).startswith(prefix)

    return inside


def _import_files(root: Path, exclude: list[str]) -> list[object]:
    files = python_files(root, exclude)
    names = [_module_name(root, f) for f in files]
    # Forget modules from an earlier load of this repo, or of another repo with files of the
    # same names, so `from entities import user` finds this repo's file as it is now.
    tops = {n.split(".")[0] for n in names}
    inside = _inside(root)
    for name in list(sys.modules):
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        in_root = bool(module_file) and inside(os.path.dirname(module_file))
        if name != "__main__" and (in_root or name.split(".")[0] in tops):
            del sys.modules[name]
    importlib.invalidate_caches()
    sys.path.insert(0, str(root))
    # Compile from source every time: a cached .pyc can hide an edit made within the same
    # second that kept the file's size.
    saved_prefix = sys.pycache_prefix
    sys.pycache_prefix = tempfile.mkdtemp(prefix="contextkit-pyc-")
    modules = []
    try:
        for path, name in zip(files, names, strict=True):
            try:
                modules.append(importlib.import_module(name))
            except DefinitionError:
                raise
            except Exception as exc:
                frame = _last_frame_in(traceback.extract_tb(exc.__traceback__), root)
                if isinstance(exc, SyntaxError) and exc.filename:
                    where = f"{_relative(exc.filename, root)}:{exc.lineno}"
                elif frame:
                    where = f"{_relative(frame.filename, root)}:{frame.lineno}"
                else:
                    where = _relative(str(path), root)
                raise DefinitionError(
                    f"importing {path.relative_to(root)} failed: {type(exc).__name__}: {exc}",
                    location=where,
                    hint="fix the error in the file; repo files are imported like modules",
                ) from exc
    finally:
        sys.path.remove(str(root))
        shutil.rmtree(sys.pycache_prefix, ignore_errors=True)
        sys.pycache_prefix = saved_prefix
    return modules


def _relative(filename: str, root: Path) -> str:
    try:
        return str(Path(filename).resolve().relative_to(root))
    except ValueError:
        return filename


def _last_frame_in(frames: traceback.StackSummary, root: Path) -> traceback.FrameSummary | None:
    inside = [
        f
        for f in frames
        if Path(f.filename).is_absolute() and Path(f.filename).resolve().is_relative_to(root)
    ]
    return inside[-1] if inside else None


def _referenced(obj: Definition) -> list[Definition]:
    if isinstance(obj, BatchFeatureView | EmbeddingView):
        refs = [*obj.sources, *obj.entities]
    elif isinstance(obj, StreamFeatureView):
        refs = [obj.source, *obj.entities]
    elif isinstance(obj, RealtimeFeatureView):
        refs = [*obj.views(), obj.group_object()]
    elif isinstance(obj, PushSource):
        refs = [obj.batch_source]
    elif isinstance(obj, PromptView):
        refs = [*obj.views(), *obj.embedding_views()]
    elif isinstance(obj, ContextService):
        refs = [*obj.views(), *obj.embedding_views(), *obj.prompt_views()]
    elif isinstance(obj, ServerGroup):
        refs = obj.service_objects()
    elif isinstance(obj, TransformServerGroup):
        refs = obj.view_objects()
    else:
        refs = []
    return [o for o in refs if isinstance(o, Definition)]


def collect_objects(modules: list[object]) -> list[Definition]:
    """Every repo object reachable from the modules' globals, each once, in definition order."""
    seen: dict[int, Definition] = {}
    stack: list[Definition] = []
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Definition):
                stack.append(value)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        stack.extend(_referenced(obj))
    return sorted(seen.values(), key=lambda o: (o._file, o._line))


def check_unique_names(objects: list[Definition], root: Path | None = None) -> None:
    """Raise when two different objects of one namespace share a name (lists every clash)."""
    errors = []
    first: dict[tuple[str, str], Definition] = {}
    for obj in objects:
        namespace = next(ns for cls, ns in NAMESPACES.items() if isinstance(obj, cls))
        key = (namespace, obj.name)
        if key in first:
            other = first[key]
            errors.append(
                DefinitionError(
                    f"duplicate {namespace} name {obj.name!r} (also defined at "
                    f"{other.location(str(root) if root else None)})",
                    location=str(obj.location(str(root) if root else None)),
                    hint="rename one of the two",
                )
            )
        else:
            first[key] = obj
    if errors:
        raise ValidationErrors(errors)


def load_repo(path: str | Path = ".") -> Repo:
    """Load the repo at ``path``: read its config, import its files, collect its objects."""
    config = load_config(path)
    root = config.root.resolve()
    modules = _import_files(root, config.exclude)
    objects = collect_objects(modules)
    check_unique_names(objects, root)
    return Repo(config=config, objects=objects)
