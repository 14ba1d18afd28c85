"""The offline store: feature rows over time as Parquet, partitioned by day, per table, in a local
folder or on S3 (``s3://bucket/prefix``), through a pyarrow filesystem.

Each table (one per workspace and view) is a folder of ``day=YYYY-MM-DD/*.parquet`` files plus
``manifest.json``: the list of files that make up the table and a version counted up by every
commit. Readers read only the files the manifest lists (:meth:`OfflineStore.dataset`, a pyarrow
dataset that DuckDB scans once registered), so the manifest is the commit: writers stage new
files in ``_staging/<job>.<uuid>/``, move them in beside the live ones (files no manifest lists
yet, which no reader opens), then replace the manifest. A reader sees the table before or after a
write, never half of it, and a crash before the manifest is replaced leaves the previous version
served. Writing a time range replaces the rows of that range (re-running a range is idempotent).

- In a local folder the manifest is replaced by a rename (``os.replace``), and moving in is a
  rename too.
- On S3, which has no rename, the manifest is replaced by one PUT of the manifest object: S3
  replaces an object whole and reads after a write see it, so that PUT is the atomic pointer
  swap. Moving in is a server-side copy and a delete per file. DuckDB cannot write to S3 here
  (its httpfs extension cannot be downloaded), so DuckDB writes a job's files to a local
  temporary folder that is uploaded to ``_staging`` before :meth:`stage_range` returns.

A commit checks that the table's version is still the one the write was staged from, and raises
:class:`WriteConflict` otherwise instead of overwriting another writer's version. The check and
the manifest write are two requests: this narrows the race between writers on two machines, it
does not close it (the core runs one job per view at a time).

Files are only ever removed by :meth:`ParquetOfflineStore.collect_garbage`, and only once no
reader can still use them: files a commit replaced are noted in ``_retired/`` and kept for a grace
period after the manifest swap (a reader may have read the previous manifest); files no manifest
lists (a write interrupted between moving its files in and swapping the manifest) are kept for the
grace period after they were moved in; a staging folder is named after the job that writes it
(``_staging/<job>.<uuid>``) and is removed once that job no longer runs, or, when its job is
unknown, once it is older than the grace period.

What S3 costs: reading a table is a GET of its manifest, one LIST per 1,000 files of the table
(to check that every listed file is there) and the ranged GETs of the Parquet reads; a commit is
a copy and a delete per new file plus two small PUTs. Missing bucket, refused credentials and an
unreachable endpoint are one :class:`StoreServerUnavailable` each, within the timeouts of
:class:`~contextkit.stores.objectstore.S3Settings`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

from contextkit.stores.errors import StoreFailure, StoreUnavailable, WriteConflict
from contextkit.stores.objectstore import Location, S3Settings, open_location

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as ds

MANIFEST = "manifest.json"
STAGING = "_staging"
RETIRED = "_retired"
SCRATCH = ".scratch"  # jobs' temporary files (scratch()): a table name never starts with "."
# How long a file that left the table (or was never listed) is kept before it may be removed:
# longer than any offline read is expected to take.
GC_GRACE_S = 15 * 60.0
_STORE = "offline store"


@dataclass(frozen=True)
class Garbage:
    """A file or folder of a table that no reader can use any more, and why. ``path`` is under
    the store's ``root``."""

    path: PurePath
    bytes: int
    reason: str


# -- the interface the core uses -----------------------------------------------------------------


class StagedWrite(ABC):
    """Files written but not yet visible: ``commit()`` publishes them, ``abort()`` drops them.

    ``rows``: how many rows the job wrote; ``staging``: where the files wait, under the store's
    root; ``local_dir``: the local folder DuckDB wrote them to (the same folder for a local
    store, a temporary one for S3), kept until commit or abort."""

    rows: int
    staging: PurePath
    local_dir: Path

    @abstractmethod
    def commit(self) -> None:
        """Publish: after this, readers see the staged rows (raises :class:`WriteConflict` when
        another writer published the table since it was staged; nothing is published then)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the staged files (best effort, never raises: garbage collection removes what
        is left)."""

    @abstractmethod
    def new_rows(self) -> ds.Dataset | None:
        """The job's own rows (not those kept from before) as a dataset DuckDB can scan, read
        from ``local_dir``; None when it wrote none. Valid until commit or abort."""


class OfflineStore(ABC):
    """Every call the core makes on the offline store: a backend can be written from this.

    Tables are named by ``/``-separated paths (``workspace/view``; an aggregate view's inputs
    are the nested table ``workspace/view/inputs``)."""

    root: PurePath
    """Where the tables live (``Path`` locally; ``bucket/prefix`` on S3). For display."""
    url: str
    """The location for people and logs (a folder, or ``s3://bucket/prefix``)."""

    @abstractmethod
    def check(self) -> None:
        """Make sure the store can be used (for S3: the bucket exists, the credentials are
        accepted); raises :class:`StoreServerUnavailable` saying which is wrong."""

    def scratch(self, name: str) -> tuple[Any, str]:
        """A folder for one job's temporary files, apart from every table (``.scratch/<name>``:
        no table is named so): ``(pyarrow filesystem, path in it)``. Nodes of a compute
        cluster write there when the store is on shared storage. The caller removes it."""
        raise StoreFailure(f"offline store {self.url!r} has no scratch space for jobs")

    @abstractmethod
    def files(self, table: str) -> list[PurePath]:
        """The table's current files (empty when never written)."""

    @abstractmethod
    def dataset(self, table: str) -> ds.Dataset | None:
        """The table's current version as a pyarrow dataset, for ``duckdb.register``; None when
        it has no files. Raises :class:`StoreUnavailable` when a listed file is gone."""

    @abstractmethod
    def append(self, table: str, rows: pa.Table) -> PurePath:
        """Add one Parquet file of ``rows`` to the table, visible all at once."""

    @abstractmethod
    def stage_range(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        query: str,
        ts_column: str,
        start: datetime | None,
        end: datetime | None,
        replace_all: bool,
        owner: str | None = None,
    ) -> StagedWrite:
        """Stage the rows of ``query`` as the table's content for ``[start, end)``."""

    @abstractmethod
    def drop_table(self, table: str) -> None:
        """Remove a table and everything under it (nested tables too)."""

    @abstractmethod
    def tables(self) -> list[str]:
        """Every table in the store."""

    @abstractmethod
    def collect_garbage(
        self,
        table: str,
        *,
        grace_s: float = GC_GRACE_S,
        job_running: Callable[[str], bool | None] = lambda _job: None,
        dry_run: bool = False,
        now: float | None = None,
    ) -> list[Garbage]:
        """Find (and unless ``dry_run``, remove) the table's files no reader can use any more."""


# -- helpers -------------------------------------------------------------------------------------


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _days(start: datetime, end: datetime) -> set[str]:
    """Day partitions (UTC) that overlap ``[start, end)``."""
    if start >= end:
        return set()
    day = start.astimezone(UTC).date()
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    out = set()
    while day <= last:
        out.add(day.isoformat())
        day += timedelta(days=1)
    return out


def _day_of(rel: str) -> str:
    return PurePosixPath(rel).parent.name.removeprefix("day=")


def _check_table(table: str) -> None:
    parts = table.split("/")
    if not table or "\\" in table or any(p in ("", ".", "..") for p in parts):
        raise StoreFailure(
            f"offline table name {table!r} is not a relative path of plain names",
            hint="tables are named workspace/view",
        )
    if parts[-1] in (STAGING, RETIRED) or parts[-1].startswith("day="):
        raise StoreFailure(f"offline table name {table!r} ends in a reserved folder name")


def _mtime(info: Any) -> float | None:
    if info.mtime is None:
        return None
    ns = getattr(info, "mtime_ns", None)
    return ns / 1e9 if ns is not None else info.mtime.timestamp()


@dataclass
class _Listing:
    """One recursive listing of a table folder, by path relative to it (nested tables left
    out), so garbage collection costs one LIST per 1,000 objects on S3."""

    files: dict[str, Any] = field(default_factory=dict)
    dirs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, infos: list[Any], base: str) -> _Listing:
        from pyarrow import fs

        everything = {}
        for info in infos:
            rel = info.path[len(base) :].strip("/")
            if rel:
                everything[rel] = info
        # A nested table is a folder with a manifest, a staging or a notes folder of its own
        # (as in ``tables()``); the table's own staging and notes are at the top.
        nested = set()
        for rel in everything:
            parts = rel.split("/")
            if parts[0] in (STAGING, RETIRED):
                continue
            for i, part in enumerate(parts[1:], start=1):
                if part in (STAGING, RETIRED) or (part == MANIFEST and i == len(parts) - 1):
                    nested.add("/".join(parts[:i]))
                    break
        out = cls()
        for rel, info in everything.items():
            if any(rel == n or rel.startswith(n + "/") for n in nested):
                continue
            (out.files if info.type == fs.FileType.File else out.dirs)[rel] = info
        return out

    def under(self, folder: str) -> dict[str, Any]:
        prefix = folder + "/"
        members = {r: i for r, i in self.files.items() if r.startswith(prefix)}
        members.update({r: i for r, i in self.dirs.items() if r.startswith(prefix)})
        return members


# -- the Parquet store ---------------------------------------------------------------------------


@dataclass
class _StagedParquet(StagedWrite):
    store: ParquetOfflineStore
    table: str
    staging: PurePath
    local_dir: Path
    manifest: list[str]
    new_files: list[str]  # relative to the staging folder and to the table folder
    base_version: int
    fs_staging: str  # ``staging`` inside the filesystem
    obsolete: list[str] = field(default_factory=list)
    rows: int = 0

    def commit(self) -> None:
        self.store._publish(self)

    def abort(self) -> None:
        self.store._drop_staging(self)

    def new_rows(self) -> ds.Dataset | None:
        import pyarrow.dataset as ds

        files = sorted(str(p) for p in self.local_dir.rglob("new-*.parquet"))
        return ds.dataset(files, format="parquet") if files else None


class ParquetOfflineStore(OfflineStore):
    """Offline feature tables as day-partitioned Parquet files under ``root``: a local folder or
    ``s3://bucket/prefix`` (``s3``: the S3 settings, default from the AWS variables).

    ``staging_dir``: where DuckDB writes a job's files before they are uploaded to S3 (default
    the system's temporary folder; unused for a local store, which stages beside its tables).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        s3: S3Settings | None = None,
        staging_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._loc: Location = open_location(root, settings=s3)
        self._fs = self._loc.filesystem
        self.root = Path(root) if self._loc.is_local else PurePosixPath(self._loc.root)
        self.url = self._loc.url
        self._staging_dir = staging_dir

    def __repr__(self) -> str:
        return f"ParquetOfflineStore({self.url!r})"

    # -- paths ------------------------------------------------------------------------------------
    def table_dir(self, table: str) -> PurePath:
        _check_table(table)
        return self.root / table

    def _path(self, table: str, *parts: str) -> str:
        """A path inside the filesystem."""
        _check_table(table)
        return self._loc.join(table, *parts)

    def _out(self, fs_path: str) -> PurePath:
        """A filesystem path as handed out: under ``root``."""
        return self.root / PurePosixPath(fs_path).relative_to(self._loc.root)

    def _translating(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return self._loc.translating(_STORE, doing)

    def scratch(self, name: str) -> tuple[Any, str]:
        if not name or "/" in name or name.startswith("."):
            raise StoreFailure(f"scratch folder name {name!r} is not a plain name")
        return self._fs, self._loc.join(SCRATCH, name)

    def check(self) -> None:
        self._loc.check(_STORE)

    # -- manifest and notes -----------------------------------------------------------------------
    def _read_manifest(self, table: str) -> tuple[int, list[str]]:
        path = self._path(table, MANIFEST)
        try:
            with self._fs.open_input_stream(path) as stream:
                raw = stream.read()
        except FileNotFoundError:
            return 0, []
        try:
            doc = json.loads(raw)
            return int(doc.get("version", 0)), [str(f) for f in doc["files"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreFailure(
                f"offline manifest {self._out(path)} is corrupt ({exc})",
                hint="re-materialize the view with `contextkit materialize --full`",
            ) from None

    def _write_manifest(self, table: str, files: list[str], version: int) -> None:
        doc = {"version": version, "files": sorted(files)}
        self._put(self._path(table, MANIFEST), json.dumps(doc, indent=0).encode(), "manifest")

    def _put(self, path: str, data: bytes, kind: str) -> None:
        """Replace the object at ``path`` whole: a rename locally, one PUT on S3."""
        if not self._loc.is_local:
            with self._fs.open_output_stream(path) as out:
                out.write(data)
            return
        folder, name = path.rsplit("/", 1)
        self._fs.create_dir(folder, recursive=True)
        stem = name.removesuffix(".json")
        tmp = (
            f"{folder}/{stem}.{uuid.uuid4().hex}.tmp"
            if kind == "manifest"
            else (f"{folder}/.{name}.tmp")
        )
        with self._fs.open_output_stream(tmp) as out:
            out.write(data)
        self._fs.move(tmp, path)

    def _retire(self, table: str, files: list[str], at: float) -> None:
        """Note that ``files`` leave the table at ``at`` (removed by ``collect_garbage`` once the
        grace period has passed)."""
        if not files:
            return
        name = f"{int(at * 1000):013d}-{uuid.uuid4().hex[:8]}.json"
        note = json.dumps({"retired_at": at, "files": sorted(files)}).encode()
        self._put(self._path(table, RETIRED, name), note, "note")

    # -- reads ------------------------------------------------------------------------------------
    def files(self, table: str) -> list[PurePath]:
        """Paths of the table's current files (empty when never written)."""
        self.check()
        with self._translating(f"reading the manifest of {table!r}"):
            _, listed = self._read_manifest(table)
        return [self._out(self._path(table, f)) for f in listed]

    def dataset(self, table: str) -> ds.Dataset | None:
        self.check()
        with self._translating(f"reading table {table!r}"):
            _, listed = self._read_manifest(table)
            return self._dataset_of(table, listed) if listed else None

    def _dataset_of(self, table: str, rels: list[str]) -> ds.Dataset:
        """A dataset of the table's files ``rels``, each known to exist (their sizes, from one
        listing, spare a HEAD request per file on S3)."""
        import pyarrow.dataset as ds
        from pyarrow import fs

        base = self._path(table)
        infos = self._fs.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        sizes = {
            i.path[len(base) :].strip("/"): i.size for i in infos if i.type == fs.FileType.File
        }
        gone = [r for r in rels if r not in sizes]
        if gone:
            raise StoreUnavailable(
                f"{len(gone)} of the {len(rels)} file(s) of offline table {table!r} in "
                f"{self.url} are gone, such as {gone[0]!r}",
                hint="rebuild them with `contextkit materialize <view> --full`",
            )
        fmt = ds.ParquetFileFormat()
        fragments = [
            fmt.make_fragment(f"{base}/{r}", filesystem=self._fs, file_size=sizes[r]) for r in rels
        ]
        return ds.FileSystemDataset(fragments, fragments[0].physical_schema, fmt, self._fs)

    # -- writes -----------------------------------------------------------------------------------
    def drop_table(self, table: str) -> None:
        base = self._path(table)
        if self._loc.is_local:
            shutil.rmtree(base, ignore_errors=True)
            return
        self.check()
        with self._translating(f"dropping table {table!r}"), contextlib.suppress(FileNotFoundError):
            self._fs.delete_dir(base)

    def append(self, table: str, rows: pa.Table) -> PurePath:
        """Add one Parquet file of ``rows`` (a pyarrow Table) to the table: the file is written
        first, then listed in the manifest, so readers see all or nothing. Another writer's
        append landing at the same moment is detected by reading the manifest back, and the
        file is listed again."""
        import pyarrow.parquet as pq

        self.check()
        name = f"part-{uuid.uuid4().hex}.parquet"
        target = self._path(table, name)
        with self._translating(f"appending to table {table!r}"):
            if self._loc.is_local:
                self._fs.create_dir(self._path(table), recursive=True)
                tmp = self._path(table, f".{name}.tmp")
                pq.write_table(rows, tmp, filesystem=self._fs)
                self._fs.move(tmp, target)
            else:  # the object appears whole when the upload completes
                pq.write_table(rows, target, filesystem=self._fs)
            for _ in range(5):
                version, listed = self._read_manifest(table)
                if name in listed:
                    break
                self._write_manifest(table, [*listed, name], version + 1)
            else:
                raise WriteConflict(
                    f"offline table {table!r} kept changing while a file was appended to it",
                    hint="another process writes the same table; run it again",
                )
        return self._out(target)

    def stage_range(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        query: str,
        ts_column: str,
        start: datetime | None,
        end: datetime | None,
        replace_all: bool,
        owner: str | None = None,
    ) -> StagedWrite:
        """Stage the rows of ``query`` as the table's content for ``[start, end)``.

        With ``replace_all`` the table becomes exactly the query's rows. Otherwise rows of the
        current table outside ``[start, end)`` are kept; partitions overlapping the range are
        rewritten and the rest are left untouched. ``owner``: the id of the job that writes (it
        names the staging folder, so garbage collection can tell whether its writer still runs).
        """
        self.check()
        name = uuid.uuid4().hex if owner is None else f"{owner}.{uuid.uuid4().hex}"
        staging = self._path(table, STAGING, name)
        if self._loc.is_local:
            local = Path(staging)
        else:
            temp = self._staging_dir
            local = Path(tempfile.mkdtemp(prefix=f"contextkit-{name}-", dir=temp))
        local.mkdir(parents=True, exist_ok=True)
        ts = '"' + ts_column.replace('"', '""') + '"'
        try:
            with self._translating(f"staging table {table!r}"):
                rows = self._copy_partitioned(con, query, ts, local, "new")
                version, current = self._read_manifest(table)
                if replace_all or start is None or end is None:
                    keep: list[str] = []
                    obsolete = current
                else:
                    touched = _days(start, end) | {
                        p.parent.name.removeprefix("day=") for p in local.rglob("*.parquet")
                    }
                    keep = [f for f in current if _day_of(f) not in touched]
                    obsolete = [f for f in current if f not in keep]
                    if obsolete:
                        self._copy_kept(con, table, obsolete, ts, start, end, local)
                new_files = [
                    p.relative_to(local).as_posix() for p in sorted(local.rglob("*.parquet"))
                ]
                if not self._loc.is_local and new_files:
                    from pyarrow import fs

                    fs.copy_files(
                        str(local),
                        staging,
                        source_filesystem=fs.LocalFileSystem(),
                        destination_filesystem=self._fs,
                    )
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)
            if not self._loc.is_local:
                self._delete_quietly(staging)
            raise
        return _StagedParquet(
            store=self,
            table=table,
            staging=self._out(staging),
            local_dir=local,
            manifest=keep + new_files,
            new_files=new_files,
            base_version=version,
            fs_staging=staging,
            obsolete=obsolete,
            rows=rows,
        )

    def _copy_kept(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        files: list[str],
        ts: str,
        start: datetime,
        end: datetime,
        folder: Path,
    ) -> None:
        """Rewrite the rows of ``files`` outside ``[start, end)`` into ``folder`` (``kept-*``)."""
        name = f"__ck_kept_{uuid.uuid4().hex}"
        con.register(name, self._dataset_of(table, files))
        try:
            lo, hi = _lit(start.isoformat()), _lit(end.isoformat())
            kept_rows = (
                f"SELECT * FROM {name} WHERE NOT ({ts} >= "
                f"CAST({lo} AS TIMESTAMPTZ) AND {ts} < CAST({hi} AS TIMESTAMPTZ))"
            )
            self._copy_partitioned(con, kept_rows, ts, folder, "kept")
        finally:
            con.unregister(name)

    @staticmethod
    def _copy_partitioned(
        con: duckdb.DuckDBPyConnection, query: str, ts: str, folder: Path, prefix: str
    ) -> int:
        count = con.execute(
            f"COPY (SELECT *, strftime({ts}, '%Y-%m-%d') AS day FROM ({query})) "
            f"TO {_lit(str(folder))} (FORMAT parquet, PARTITION_BY (day), OVERWRITE_OR_IGNORE, "
            f"FILENAME_PATTERN '{prefix}-{{uuid}}')"
        ).fetchall()
        return int(count[0][0]) if count else 0

    def _publish(self, write: _StagedParquet) -> None:
        """Move the staged files in, note the replaced ones, then swap the manifest."""
        table, staging = write.table, write.fs_staging
        with self._translating(f"publishing table {table!r}"):
            self._check_version(write)
            now = time.time()
            for rel in write.new_files:
                self._move_in(f"{staging}/{rel}", self._path(table, rel), now)
            # Noted before the swap, so a crash in between leaves only a note of listed files.
            self._retire(table, write.obsolete, now)
            version = self._check_version(write)
            self._write_manifest(table, write.manifest, version + 1)
        self._drop_staging(write)

    def _check_version(self, write: _StagedParquet) -> int:
        version, _ = self._read_manifest(write.table)
        if version != write.base_version:
            raise WriteConflict(
                f"offline table {write.table!r} was published by another writer (version "
                f"{version}) since this write was staged from version {write.base_version}",
                hint="run the materialization again; only one job per view should run at a time",
            )
        return version

    def _move_in(self, source: str, target: str, now: float) -> None:
        if not self._loc.is_local:
            self._fs.move(source, target)  # a copy: its time is now, as a move-in's must be
            return
        # Until the manifest lists it, a moved file counts as unlisted: its grace period must
        # start now, not when it was staged.
        os.utime(source, (now, now))
        parent = target.rsplit("/", 1)[0]
        os.makedirs(parent, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:  # garbage collection removed the empty day folder
            os.makedirs(parent, exist_ok=True)
            os.replace(source, target)

    def _drop_staging(self, write: _StagedParquet) -> None:
        shutil.rmtree(write.local_dir, ignore_errors=True)
        if not self._loc.is_local:
            self._delete_quietly(write.fs_staging)

    def _delete_quietly(self, folder: str) -> None:
        """Best effort (in an error path, or after a commit): garbage collection removes what
        is left once its job no longer runs."""
        with contextlib.suppress(Exception):
            self._fs.delete_dir(folder)

    # -- garbage collection -----------------------------------------------------------------------
    def tables(self) -> list[str]:
        """Every table under the root (a folder with a manifest, a staging or a notes folder)."""
        from pyarrow import fs

        self.check()
        found = []
        todo = [""]
        with self._translating("listing the tables"):
            while todo:
                rel = todo.pop()
                folder = self._loc.join(rel)
                infos = self._fs.get_file_info(fs.FileSelector(folder, allow_not_found=True))
                names = {i.base_name for i in infos if i.type == fs.FileType.File}
                subs = [i.base_name for i in infos if i.type == fs.FileType.Directory]
                if rel and (MANIFEST in names or STAGING in subs or RETIRED in subs):
                    found.append(rel)
                todo += [
                    f"{rel}/{d}".strip("/")
                    for d in subs
                    if d not in (STAGING, RETIRED) and not d.startswith("day=")
                ]
        return sorted(found)

    def collect_garbage(
        self,
        table: str,
        *,
        grace_s: float = GC_GRACE_S,
        job_running: Callable[[str], bool | None] = lambda _job: None,
        dry_run: bool = False,
        now: float | None = None,
    ) -> list[Garbage]:
        """Find (and unless ``dry_run``, remove) the table's files no reader can use any more.

        Never a file the manifest lists. A replaced file once ``grace_s`` have passed since it
        was replaced; an unlisted file once ``grace_s`` have passed since it was written or moved
        in; a staging folder once ``job_running(owner)`` is False, or, when that is None (the job
        is unknown), once nothing in it changed for ``grace_s``. Nested tables (an aggregate
        view's ``inputs``) are left to their own call.
        """
        from pyarrow import fs

        self.check()
        base = self._path(table)
        cutoff = (time.time() if now is None else now) - grace_s
        with self._translating(f"collecting garbage of table {table!r}"):
            selector = fs.FileSelector(base, recursive=True, allow_not_found=True)
            listing = _Listing.of(self._fs.get_file_info(selector), base)
            found = self._stale_staging(base, listing, cutoff, job_running)
            if MANIFEST in listing.files:
                found += self._unlisted_files(table, base, listing, cutoff)
            if not dry_run:
                self._remove(base, found)
        return found

    def _stale_staging(
        self,
        base: str,
        listing: _Listing,
        cutoff: float,
        job_running: Callable[[str], bool | None],
    ) -> list[Garbage]:
        found = []
        entries = sorted(
            rel
            for rel in [*listing.dirs, *listing.files]
            if PurePosixPath(rel).parent.as_posix() == STAGING
        )
        for rel in entries:
            name = PurePosixPath(rel).name
            owner = name.split(".", 1)[0] if "." in name else None
            running = job_running(owner) if owner else None
            if running is True:
                continue
            members = listing.under(rel)
            own = listing.dirs.get(rel) or listing.files.get(rel)
            times = [t for t in map(_mtime, [own, *members.values()]) if t is not None]
            # On S3 a folder whose files were all moved out keeps only folder markers, which
            # carry no time: of unknown age, it waits for its job to be known as gone.
            if running is None and (not times or max(times) > cutoff):
                continue
            reason = (
                f"staged by job {owner}, which is no longer running"
                if running is False
                else "staged by an unknown writer, unchanged for the grace period"
            )
            size = sum(i.size or 0 for r, i in members.items() if r in listing.files)
            if rel in listing.files:  # a stray file, not a folder
                size += own.size or 0
            found.append(Garbage(self._out(f"{base}/{rel}"), size, reason))
        return found

    def _unlisted_files(
        self, table: str, base: str, listing: _Listing, cutoff: float
    ) -> list[Garbage]:
        notes: list[tuple[str, float]] = []
        replaced: dict[str, float] = {}
        for rel, info in sorted(listing.files.items()):
            if PurePosixPath(rel).parent.as_posix() != RETIRED or not rel.endswith(".json"):
                continue
            try:
                with self._fs.open_input_stream(f"{base}/{rel}") as stream:
                    data = json.loads(stream.read())
                at = float(data["retired_at"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                at = _mtime(info) or 0.0  # unreadable: it protects nothing, and ages out
                data = {"files": []}
            notes.append((rel, at))
            for name in data.get("files", []):
                replaced[name] = max(at, replaced.get(name, at))
        _, listed_files = self._read_manifest(table)  # read last: a newer swap adds young files
        listed = set(listed_files)
        found = []
        for rel, info in sorted(listing.files.items()):
            if rel == MANIFEST or rel.startswith((STAGING + "/", RETIRED + "/")) or rel in listed:
                continue
            since = replaced.get(rel)
            reason = "replaced by a newer version of the table"
            if since is None:
                since = _mtime(info) or 0.0
                reason = "listed by no manifest (left by an interrupted write)"
            if since <= cutoff:
                found.append(Garbage(self._out(f"{base}/{rel}"), info.size or 0, reason))
        for rel, at in notes:
            if at <= cutoff:
                info = listing.files[rel]
                found.append(
                    Garbage(self._out(f"{base}/{rel}"), info.size or 0, "note of replaced files")
                )
        for rel, info in sorted(listing.files.items()):
            leftover = PurePosixPath(rel)
            if (
                leftover.parent.as_posix() == RETIRED
                and leftover.name.startswith(".")
                and (leftover.name.endswith(".tmp") and (_mtime(info) or 0.0) <= cutoff)
            ):
                found.append(
                    Garbage(
                        self._out(f"{base}/{rel}"), info.size or 0, "left by an interrupted write"
                    )
                )
        return found

    def _remove(self, base: str, found: list[Garbage]) -> None:
        for item in found:
            path = self._loc.join(str(PurePosixPath(item.path).relative_to(self.root)))
            if self._loc.is_local and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif self._loc.is_local:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            elif PurePosixPath(item.path).parent.name == STAGING:
                self._delete_quietly(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self._fs.delete_file(path)
        if self._loc.is_local:
            _remove_empty_folders(Path(base))


def _remove_empty_folders(base: Path) -> None:
    """Day partitions left empty (a commit that needs one again creates it again). Only locally:
    on S3 a folder is no object, and deleting one deletes whatever a commit just put in it."""
    for path in base.glob("day=*"):
        with contextlib.suppress(OSError):  # not empty
            path.rmdir()
