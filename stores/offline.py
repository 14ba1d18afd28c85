"""The offline store: feature rows over time as Parquet, partitioned by day, per table.

Each table (one per workspace and view) is a folder of ``day=YYYY-MM-DD/part-*.parquet`` files
plus ``manifest.json``, the list of files that make up the table. Writers stage new files beside
the live ones and commit by replacing the manifest atomically (``os.replace``), so a reader sees
the table before or after a write, never half of it, and a crash mid-write changes nothing.
Writing a time range replaces the rows of that range (re-running a range is idempotent).

Files are only ever removed by :meth:`ParquetOfflineStore.collect_garbage`, and only once no
reader can still use them: files a commit replaced are noted in ``_retired/`` and kept for a grace
period after the manifest swap (a reader may have read the previous manifest); files no manifest
lists (a write interrupted between moving its files in and swapping the manifest) are kept for the
grace period after they were moved in; a staging folder is named after the job that writes it
(``_staging/<job>.<uuid>``) and is removed once that job no longer runs, or, when its job is
unknown, once it is older than the grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.stores.errors import StoreFailure

if TYPE_CHECKING:
    import duckdb

MANIFEST = "manifest.json"
STAGING = "_staging"
RETIRED = "_retired"
# How long a file that left the table (or was never listed) is kept before it may be removed:
# longer than any offline read is expected to take.
GC_GRACE_S = 15 * 60.0


@dataclass(frozen=True)
class Garbage:
    """A file or folder of a table that no reader can use any more, and why."""

    path: Path
    bytes: int
    reason: str


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


@dataclass
class StagedWrite:
    """Files written but not yet visible: ``commit()`` publishes them, ``abort()`` drops them."""

    store: ParquetOfflineStore
    table: str
    staging: Path
    manifest: list[str]
    obsolete: list[str] = field(default_factory=list)
    rows: int = 0

    def commit(self) -> None:
        table_dir = self.store.table_dir(self.table)
        now = time.time()
        for path in sorted(self.staging.rglob("*.parquet")):
            target = table_dir / path.relative_to(self.staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Until the manifest lists it, a moved file counts as unlisted: its grace period
            # must start now, not when it was staged.
            os.utime(path, (now, now))
            try:
                os.replace(path, target)
            except FileNotFoundError:  # garbage collection removed the empty day folder
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
        # Noted before the swap, so a crash in between leaves only a note of listed files.
        self.store._retire(self.table, self.obsolete, now)
        self.store._write_manifest(self.table, self.manifest)
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


class ParquetOfflineStore:
    """Offline feature tables as day-partitioned Parquet files under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def _read_manifest(self, table: str) -> list[str]:
        path = self.table_dir(table) / MANIFEST
        if not path.exists():
            return []
        try:
            return list(json.loads(path.read_text())["files"])
        except (ValueError, KeyError) as exc:
            raise StoreFailure(
                f"offline manifest {path} is corrupt ({exc})",
                hint="re-materialize the view with `contextkit materialize --full`",
            ) from None

    def _write_manifest(self, table: str, files: list[str]) -> None:
        path = self.table_dir(table) / MANIFEST
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"files": sorted(files)}, indent=0))
        os.replace(tmp, path)

    def files(self, table: str) -> list[Path]:
        """Absolute paths of the table's current files (empty when never written)."""
        base = self.table_dir(table)
        return [base / f for f in self._read_manifest(table)]

    def _retire(self, table: str, files: list[str], at: float) -> None:
        """Note that ``files`` leave the table at ``at`` (removed by ``collect_garbage`` once the
        grace period has passed)."""
        if not files:
            return
        folder = self.table_dir(table) / RETIRED
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{int(at * 1000):013d}-{uuid.uuid4().hex[:8]}.json"
        tmp = folder / f".{name}.tmp"
        tmp.write_text(json.dumps({"retired_at": at, "files": sorted(files)}))
        os.replace(tmp, folder / name)

    def drop_table(self, table: str) -> None:
        shutil.rmtree(self.table_dir(table), ignore_errors=True)

    def append(self, table: str, rows: Any) -> Path:
        """Add one Parquet file of ``rows`` (a pyarrow Table) to the table: the file is written
        first, then listed in the manifest by an atomic rename, so readers see all or nothing."""
        import pyarrow.parquet as pq

        base = self.table_dir(table)
        base.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = base / f".{name}.tmp"
        pq.write_table(rows, tmp)
        os.replace(tmp, base / name)
        self._write_manifest(table, [*self._read_manifest(table), name])
        return base / name

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
        base = self.table_dir(table)
        name = uuid.uuid4().hex if owner is None else f"{owner}.{uuid.uuid4().hex}"
        staging = base / STAGING / name
        staging.mkdir(parents=True, exist_ok=True)
        ts = '"' + ts_column.replace('"', '""') + '"'
        try:
            rows = self._copy_partitioned(con, query, ts, staging, "new")
            current = self._read_manifest(table)
            if replace_all or start is None or end is None:
                keep: list[str] = []
                obsolete = current
            else:
                touched = _days(start, end) | {
                    p.parent.name.removeprefix("day=") for p in staging.rglob("*.parquet")
                }
                keep = [
                    f for f in current if Path(f).parent.name.removeprefix("day=") not in touched
                ]
                rewrite = [f for f in current if f not in keep]
                obsolete = rewrite
                if rewrite:
                    files = "[" + ", ".join(_lit(str(base / f)) for f in rewrite) + "]"
                    lo = _lit(start.isoformat())
                    hi = _lit(end.isoformat())
                    kept_rows = (
                        f"SELECT * FROM read_parquet({files}) WHERE NOT ({ts} >= "
                        f"CAST({lo} AS TIMESTAMPTZ) AND {ts} < CAST({hi} AS TIMESTAMPTZ))"
                    )
                    self._copy_partitioned(con, kept_rows, ts, staging, "kept")
            new_files = [str(p.relative_to(staging)) for p in sorted(staging.rglob("*.parquet"))]
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return StagedWrite(
            store=self,
            table=table,
            staging=staging,
            manifest=keep + new_files,
            obsolete=obsolete,
            rows=rows,
        )

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

    # -- garbage collection -------------------------------------------------------------------
    def tables(self) -> list[str]:
        """Every table under the root (a folder with a manifest or a staging folder)."""
        found = []
        for folder, subfolders, files in os.walk(self.root):
            if MANIFEST in files or STAGING in subfolders or RETIRED in subfolders:
                found.append(Path(folder).relative_to(self.root).as_posix())
            subfolders[:] = [
                d for d in subfolders if d not in (STAGING, RETIRED) and not d.startswith("day=")
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
        base = self.table_dir(table)
        if not base.is_dir():
            return []
        cutoff = (time.time() if now is None else now) - grace_s
        found = self._stale_staging(base, cutoff, job_running)
        if (base / MANIFEST).exists():
            found += self._unlisted_files(table, base, cutoff)
        if not dry_run:
            for item in found:
                if item.path.is_dir():
                    shutil.rmtree(item.path, ignore_errors=True)
                else:
                    item.path.unlink(missing_ok=True)
            _remove_empty_folders(base)
        return found

    @staticmethod
    def _stale_staging(
        base: Path, cutoff: float, job_running: Callable[[str], bool | None]
    ) -> list[Garbage]:
        folder = base / STAGING
        found = []
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            owner = entry.name.split(".", 1)[0] if "." in entry.name else None
            running = job_running(owner) if owner else None
            if running is True:
                continue
            if running is None and _newest_change(entry) > cutoff:
                continue
            reason = (
                f"staged by job {owner}, which is no longer running"
                if running is False
                else "staged by an unknown writer, unchanged for the grace period"
            )
            found.append(Garbage(entry, _size(entry), reason))
        return found

    def _unlisted_files(self, table: str, base: Path, cutoff: float) -> list[Garbage]:
        notes: list[tuple[Path, float]] = []
        replaced: dict[str, float] = {}
        for note in sorted((base / RETIRED).glob("*.json")):
            try:
                data = json.loads(note.read_text())
                at = float(data["retired_at"])
            except (OSError, ValueError, KeyError, TypeError):
                at = note.stat().st_mtime  # unreadable: it protects nothing, and ages out
                data = {"files": []}
            notes.append((note, at))
            for rel in data.get("files", []):
                replaced[rel] = max(at, replaced.get(rel, at))
        listed = set(self._read_manifest(table))  # read last: a newer swap only adds young files
        found = []
        for path in _table_files(base):
            rel = path.relative_to(base).as_posix()
            if rel in listed:
                continue
            since = replaced.get(rel)
            reason = "replaced by a newer version of the table"
            if since is None:
                since = path.stat().st_mtime
                reason = "listed by no manifest (left by an interrupted write)"
            if since <= cutoff:
                found.append(Garbage(path, path.stat().st_size, reason))
        for note, at in notes:
            if at <= cutoff:
                found.append(Garbage(note, note.stat().st_size, "note of replaced files"))
        for tmp in (base / RETIRED).glob(".*.tmp"):
            if tmp.stat().st_mtime <= cutoff:
                found.append(Garbage(tmp, tmp.stat().st_size, "left by an interrupted write"))
        return found


def _table_files(base: Path) -> Iterator[Path]:
    """The table's own files besides its manifest: not staging, not notes, not nested tables."""
    for folder, subfolders, files in os.walk(base):
        here = Path(folder)
        subfolders[:] = [
            d
            for d in subfolders
            if d not in (STAGING, RETIRED) and not (here / d / MANIFEST).exists()
        ]
        for name in files:
            if not (here == base and name == MANIFEST):
                yield here / name


def _newest_change(path: Path) -> float:
    if path.is_file():
        return path.stat().st_mtime
    times = [path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")]
    return max(times)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove_empty_folders(base: Path) -> None:
    """Day partitions left empty (a commit that needs one again creates it again)."""
    for path in base.glob("day=*"):
        with contextlib.suppress(OSError):  # not empty
            path.rmdir()
