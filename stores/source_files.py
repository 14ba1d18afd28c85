"""A ``FileSource``'s path, local or ``s3://``, as a pyarrow dataset that DuckDB can scan.

DuckDB reads local files itself, but cannot read S3 here (its httpfs extension cannot be
downloaded), so a source on S3 is resolved to its files through pyarrow's S3 filesystem (the same
settings and errors as the stores: :mod:`contextkit.stores.objectstore`) and handed to DuckDB as
a dataset: ``con.register("orders_files", source_dataset(...))``.

A path names one file, a glob (``*`` and ``?`` within one folder, ``**`` across folders, ``[...]``
sets), or a folder (every file under it with the format's suffix). Relative local paths are taken
from ``root``. Formats: ``parquet``, ``csv`` (a header row, types inferred by pyarrow, which may
differ from DuckDB's ``read_csv`` in edge cases: cast the columns you rely on) and ``jsonl``.
Files are read in path order; they share the first file's schema.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.stores.errors import MissingError, StoreFailure
from contextkit.stores.objectstore import Location, S3Settings, is_s3, open_location

if TYPE_CHECKING:
    import pyarrow.dataset as ds

_GLOB = re.compile(r"[*?\[]")
_SUFFIXES = {"parquet": (".parquet",), "csv": (".csv",), "jsonl": (".jsonl", ".json")}
_STORE = "source"


def resolve_source_files(
    path: str,
    *,
    root: str | os.PathLike[str] | None = None,
    s3: S3Settings | None = None,
    suffixes: tuple[str, ...] = (),
) -> tuple[Any, list[str]]:
    """``(filesystem, files)``: the pyarrow filesystem of ``path`` and the files it names, in
    order (empty when none match; of a folder, those ending in one of ``suffixes``, or all).
    Raises the object store's errors (missing bucket, refused credentials, unreachable
    endpoint) for ``s3://`` paths."""
    location, pattern = _split(path, root, s3)
    with location.translating(_STORE, f"listing {path}"):
        location.check(_STORE)
        return location.filesystem, _match(location, pattern, suffixes)


def source_dataset(
    path: str,
    format: str,
    *,
    root: str | os.PathLike[str] | None = None,
    s3: S3Settings | None = None,
) -> ds.Dataset:
    """The files ``path`` names as one dataset of ``format`` (``parquet``, ``csv``, ``jsonl``).

    Raises :class:`MissingError` when no file matches, and the object store's errors for
    ``s3://`` paths."""
    import pyarrow.dataset as ds

    if format not in _SUFFIXES:
        raise StoreFailure(
            f"source format {format!r} is not one of parquet, csv, jsonl",
            hint='pass format="parquet", "csv" or "jsonl"',
        )
    location, pattern = _split(path, root, s3)
    with location.translating(_STORE, f"reading {path}"):
        location.check(_STORE)
        files = _match(location, pattern, _SUFFIXES[format])
        if not files:
            raise MissingError(
                f"source file not found: no file matches {path}",
                hint="check the FileSource path (relative to the repo root, or "
                "s3://bucket/key) or generate the data first",
            )
        file_format: Any = {
            "parquet": ds.ParquetFileFormat,
            "csv": ds.CsvFileFormat,
            "jsonl": ds.JsonFileFormat,
        }[format]()
        return ds.dataset(files, filesystem=location.filesystem, format=file_format)


def _split(
    path: str, root: str | os.PathLike[str] | None, s3: S3Settings | None
) -> tuple[Location, str]:
    """The location to list (the path's part before any glob) and the rest as a pattern."""
    if is_s3(path):
        bucket, _, key = path[len("s3://") :].partition("/")
        location = open_location(f"s3://{bucket}", settings=s3)
        return location, key
    local = Path(path)
    if not local.is_absolute():
        local = Path(root or ".") / local
    location = open_location(local.anchor)
    return location, local.absolute().as_posix().lstrip("/")


def _match(location: Location, pattern: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files matching ``pattern`` (relative to the location's root): itself when it is a file,
    the files under it ending in ``suffixes`` when it is a folder, else a glob."""
    from pyarrow import fs

    pattern = pattern.strip("/")
    filesystem = location.filesystem
    if not _GLOB.search(pattern):
        target = location.join(pattern)
        info = filesystem.get_file_info(target)
        if info.type == fs.FileType.File:
            return [target]
        if info.type == fs.FileType.NotFound:
            return []
        selector = fs.FileSelector(target, recursive=True)
        infos = filesystem.get_file_info(selector)
        return sorted(i.path for i in infos if i.is_file and i.path.endswith(suffixes or ""))
    parts = pattern.split("/")
    fixed = next(i for i, p in enumerate(parts) if _GLOB.search(p))
    base = location.join("/".join(parts[:fixed]))
    regex = _glob_regex("/".join(parts[fixed:]))
    recursive = "**" in pattern or fixed < len(parts) - 1
    selector = fs.FileSelector(base, recursive=recursive, allow_not_found=True)
    found = []
    for info in filesystem.get_file_info(selector):
        rel = info.path[len(base) :].lstrip("/")
        if info.is_file and regex.fullmatch(rel):
            found.append(info.path)
    return sorted(found)


def _glob_regex(glob: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[":
            end = glob.find("]", i + 1)
            if end == -1:
                out.append(re.escape(glob[i]))
                i += 1
            else:
                body = glob[i + 1 : end].replace("\\", "\\\\")
                out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))
