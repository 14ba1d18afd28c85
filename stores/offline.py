"""The offline store: feature rows over time as Parquet, partitioned by day, per table.

Each table (one per workspace and view) is a folder of ``day=YYYY-MM-DD/part-*.parquet`` files
plus ``manifest.json``, the list of files that make up the table. Writers stage new files beside
the live ones and commit by replacing the manifest atomically (``os.replace``), so a reader sees
the table before or after a write, never half of it, and a crash mid-write changes nothing.
Writing a time range replaces the rows of that range (re-running a range is idempotent).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.stores.errors import StoreFailure

if TYPE_CHECKING:
    import duckdb

MANIFEST = "manifest.json"


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
        for path in sorted(self.staging.rglob("*.parquet")):
            target = table_dir / path.relative_to(self.staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        self.store._write_manifest(self.table, self.manifest)
        shutil.rmtree(self.staging, ignore_errors=True)
        for rel in self.obsolete:
            (table_dir / rel).unlink(missing_ok=True)

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
    ) -> StagedWrite:
        """Stage the rows of ``query`` as the table's content for ``[start, end)``.

        With ``replace_all`` the table becomes exactly the query's rows. Otherwise rows of the
        current table outside ``[start, end)`` are kept; partitions overlapping the range are
        rewritten and the rest are left untouched.
        """
        base = self.table_dir(table)
        staging = base / "_staging" / uuid.uuid4().hex
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
