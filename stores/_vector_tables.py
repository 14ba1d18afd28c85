"""Table access: listing, opening (cached handles), versions and checkouts, restore, schema facts,
and the reads the embedding pipeline makes (hashes, vectors). A mixin of
:class:`~contextkit.stores.vector.LanceVectorStore`, which holds the state it uses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from contextkit.stores._vector_common import (
    STORE_NAME,
    SYSTEM_COLUMNS,
    InvalidSearchError,
    VectorStoreError,
    VectorTableLostError,
    VectorTableMissingError,
    VectorTableUnreadableError,
    as_matrix,
    check_table_name,
    key_columns_of,
    lance_reason,
    object_store,
    reads_table,
)
from contextkit.stores.errors import StoreFailure
from contextkit.stores.objectstore import translate

# A file system stamps mtimes from a coarse clock (a few ms; whole seconds on ext3, 2 s on FAT),
# so two changes of one folder can carry the same mtime: a version learned less than this long
# after its folder last changed is checked with LanceDB again next time (as git treats "racily
# clean" index entries).
VERSIONS_SETTLED_NS = 2_000_000_000

# Local file systems whose folder mtimes move with every entry added, from any process on this
# machine. Network ones (NFS, SMB, FUSE mounts) cache attributes on the client for seconds, so a
# store there keeps LanceDB's own check.
LOCAL_FILE_SYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "bcachefs"}
)


def local_file_system(path: Path) -> bool:
    """Whether ``path`` lies on a file system of :data:`LOCAL_FILE_SYSTEMS` (the longest mount
    point above it in ``/proc/self/mounts``); False where that cannot be told."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        target = str(path.resolve())
    except OSError:
        return False
    best, kind = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind in LOCAL_FILE_SYSTEMS


class ChunkHashes(NamedTuple):
    """What the pipeline compares per chunk id (``existing_hashes`` values)."""

    content_hash: str
    row_hash: str


class TableAccess:
    # -- tables -----------------------------------------------------------------------------------

    @object_store("listing the tables")
    def tables(self) -> list[str]:
        """Names of the tables in the store."""
        names: list[str] = []
        token = None
        while True:
            page = self._db.list_tables(page_token=token)
            names.extend(page.tables)
            token = page.page_token
            if not token:
                return sorted(names)

    def has_table(self, table: str) -> bool:
        check_table_name(table)
        return table in self.tables()

    @object_store("dropping a table")
    def drop_table(self, table: str) -> None:
        """Delete a table and all its versions (no-op when it does not exist)."""
        check_table_name(table)
        with self._write_lock(table):
            self._forget(table)
            with self._lock:
                self._opened.discard(table)
            if table in self.tables():
                self._db.drop_table(table)
            self._delete_plan(table)

    def _forget(self, table: str) -> None:
        """Drop every cached handle, layout and exact-search copy of ``table``."""
        with self._lock:
            self._tables.pop(table, None)
            self._seen_versions.pop(table, None)
            self._exact.pop(table, None)
            self._layouts.pop(table, None)
            self._plans.pop(table, None)
            # Checkouts of its versions (a new table with this name restarts at version 1).
            for cached in (self._tables, self._exact, self._layouts):
                for key in [k for k in cached if k.startswith(f"{table}@")]:
                    cached.pop(key, None)

    def _unreadable(self, table: str, exc: BaseException) -> StoreFailure:
        """The error for a LanceDB failure reading ``table``; its cached state is dropped, so
        that a rebuilt table is opened afresh. On S3 an object-store failure (unreachable,
        refused, no bucket) is that, not a damaged table."""
        self._forget(table)
        if self._loc is not None and self._loc.s3 is not None:
            reading = f"reading table {table!r}"
            failure = translate(exc, STORE_NAME, self._loc.s3, self._loc.settings, reading)
            if failure is not None:
                return failure
        try:
            gone = table not in self.tables()
        except Exception:  # the store folder itself is unreadable
            gone = False
        if gone and table in self._opened:
            return self._lost_error(table)
        return VectorTableUnreadableError(
            f"vector table {table!r} in {self.uri!r} cannot be read: {lance_reason(exc)}",
            hint="its files are damaged; rebuild it with `contextkit materialize --full` "
            "(the embedding view)",
        )

    def _lost_error(self, table: str) -> VectorTableLostError:
        return VectorTableLostError(
            f"vector table {table!r} is gone from {self.uri!r}: its files were deleted "
            "after this process opened it",
            hint="re-materialize the embedding view (`contextkit materialize`) to rebuild it",
        )

    def _open(self, table: str) -> Any:
        check_table_name(table)
        with self._lock:
            handle = self._tables.get(table)
            if handle is None:
                try:
                    handle = self._db.open_table(table)
                except ValueError as exc:
                    if table in self.tables():
                        raise
                    if table in self._opened:
                        raise self._lost_error(table) from exc
                    raise VectorTableMissingError(
                        f"vector table {table!r} does not exist",
                        hint="materialize the embedding view first",
                    ) from exc
                self._tables[table] = handle
                self._opened.add(table)
            return handle

    @reads_table
    def count_rows(self, table: str) -> int:
        return self._open(table).count_rows()

    @reads_table
    def version(self, table: str) -> int:
        """The table's current version (each commit adds one)."""
        return int(self._open(table).version)

    def _latest_version(self, table: str, handle: Any) -> int:
        """The latest committed version of ``table`` (other processes' commits included), for a
        search. LanceDB learns it by reading the table's version files (~0.15 ms of CPU, more
        when the machine is loaded). On a local file system (:func:`local_file_system`), with
        every read checked (the default ``read_consistency_interval`` of 0), one ``stat`` of the
        table's ``_versions`` folder stands in for that while the folder is unchanged: every
        commit, from any process, adds a manifest file there, which moves the folder's mtime. A
        version learned within :data:`VERSIONS_SETTLED_NS` of the folder's last change is asked
        of LanceDB again."""
        if not self._stat_versions:
            return int(handle.version)
        assert self._local is not None
        try:
            changed = os.stat(self._local / f"{table}.lance" / "_versions").st_mtime_ns
        except OSError:  # gone or unreadable: LanceDB's own check raises what it is
            return int(handle.version)
        seen = self._seen_versions.get(table)
        if seen is not None and seen[0] == changed:
            return seen[1]
        asked = time.time_ns()
        version = int(handle.version)
        if asked - changed >= VERSIONS_SETTLED_NS:
            self._seen_versions[table] = (changed, version)
        else:
            self._seen_versions.pop(table, None)
        return version

    @reads_table
    def versions(self, table: str) -> list[int]:
        """The versions still on disk, oldest first."""
        return sorted(int(v["version"]) for v in self._open(table).list_versions())

    @reads_table
    def versions_at(self, table: str, moments: Sequence[datetime]) -> list[tuple[int, bool]]:
        """For each moment, the version whose rows the table held then: the newest one
        committed at or before it, moved on past later commits that changed only indexes (the
        same data and deletion files, so the same rows, searchable by the index built there).

        Each is ``(version, exact)``; ``exact`` is False when the moment precedes every version
        with rows still on disk (the table was not written yet, or the versions from then were
        pruned: :meth:`ensure_indexes` keeps a week), and the oldest one with rows is given
        instead. (A table's first version is its empty schema, committed just before the first
        rows; empty versions before the first rows never count.) Naive moments are UTC.
        """
        import bisect

        versions = sorted(self._open(table).list_versions(), key=lambda v: int(v["version"]))
        # LanceDB gives commit times as naive local times.
        times = [v["timestamp"].astimezone(UTC) for v in versions]

        def stat(v: Mapping[str, Any], name: str) -> int:
            return int((v.get("metadata") or {}).get(name) or 0)

        def content(v: Mapping[str, Any]) -> tuple:
            names = ("total_data_files", "total_deletion_files", "total_deletion_file_rows")
            return tuple(stat(v, n) for n in (*names, "total_rows"))

        # settled[i]: the last version from i on with version i's rows.
        settled = list(range(len(versions)))
        for i in range(len(versions) - 2, -1, -1):
            if content(versions[i + 1]) == content(versions[i]):
                settled[i] = settled[i + 1]
        first = next((i for i, v in enumerate(versions) if stat(v, "total_rows")), 0)
        out = []
        for moment in moments:
            at = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            i = bisect.bisect_right(times, at) - 1
            out.append((int(versions[settled[max(i, first)]]["version"]), i >= first))
        return out

    def _open_version(self, table: str, version: int) -> tuple[str, Any]:
        """A read-only checkout of one version, cached under ``table@version``."""
        key = f"{table}@{int(version)}"
        with self._lock:
            handle = self._tables.get(key)
        if handle is None:
            self._open(table)  # a missing table raises VectorTableMissingError
            try:
                handle = self._db.open_table(table, version=int(version))
            except Exception as exc:
                raise InvalidSearchError(
                    f"version {version} of vector table {table!r} is not on disk: {exc}",
                    hint=f"versions on disk: {self.versions(table)}",
                ) from exc
            with self._lock:
                self._tables[key] = handle
        return key, handle

    @object_store("restoring a version")
    def restore(self, table: str, version: int) -> int:
        """Make ``version``'s content current again (as a new version, which is returned)."""
        handle = self._open(table)
        with self._write_lock(table):
            try:
                handle.restore(version)
            except Exception as exc:
                raise VectorStoreError(
                    f"cannot restore {table!r} to version {version}: {exc}",
                    hint=f"versions on disk: {self.versions(table)}",
                ) from exc
            with self._lock:
                self._exact.pop(table, None)
            return int(handle.version)

    @reads_table
    def key_columns(self, table: str) -> list[str]:
        """The parent key columns the table was created with."""
        return key_columns_of(self._open(table).schema)

    @reads_table
    def filterable_columns(self, table: str) -> dict[str, pa.DataType]:
        """Key and metadata columns (what filters may name) with their Arrow types."""
        schema = self._open(table).schema
        return {f.name: f.type for f in schema if f.name not in SYSTEM_COLUMNS}

    @reads_table
    def dimension(self, table: str) -> int:
        return self._open(table).schema.field("vector").type.list_size

    # -- reads for the pipeline -------------------------------------------------------------------

    def existing_hashes(
        self, table: str, keys: Mapping[str, Sequence[Any]] | None = None
    ) -> dict[str, ChunkHashes]:
        """``chunk id -> (content_hash, row_hash)`` for every row; ``{}`` when no table yet.

        ``keys`` (key column -> values) narrows it to the chunks of those documents: a row
        qualifies when each key column holds one of its values (for a composite key this may
        include a few other documents, which is harmless for an incremental plan).
        """
        try:
            return self._hashes(table, keys)
        except VectorTableMissingError:  # also a table deleted behind this process's back
            return {}

    @reads_table
    def _hashes(
        self, table: str, keys: Mapping[str, Sequence[Any]] | None
    ) -> dict[str, ChunkHashes]:
        from lancedb.expr import col, lit

        handle = self._open(table)
        query = handle.search().select(["id", "content_hash", "row_hash"])
        if keys:
            where = None
            for column, values in keys.items():
                condition = col(column).isin([lit(v) for v in dict.fromkeys(values)])
                where = condition if where is None else where & condition
            query = query.where(where)
        data = query.limit(None).to_arrow()
        return {
            i: ChunkHashes(c, r)
            for i, c, r in zip(
                data.column("id").to_pylist(),
                data.column("content_hash").to_pylist(),
                data.column("row_hash").to_pylist(),
                strict=True,
            )
        }

    @reads_table
    def sample_vectors(self, table: str, limit: int = 1000) -> np.ndarray:
        """Up to ``limit`` vectors of the table (its first rows) as a float32 matrix: what
        monitoring measures, read through the store (local or S3)."""
        handle = self._open(table)
        data = handle.search().select(["vector"]).limit(limit).to_arrow()
        return as_matrix(data.column("vector"))

    @reads_table
    def fetch_vectors(self, table: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by chunk id (ids not in the table are left out)."""
        from lancedb.expr import col, lit

        handle = self._open(table)
        out: dict[str, np.ndarray] = {}
        ids = list(ids)
        for start in range(0, len(ids), 1000):
            part = ids[start : start + 1000]
            data = (
                handle.search()
                .where(col("id").isin([lit(i) for i in part]))
                .select(["id", "vector"])
                .limit(None)
                .to_arrow()
            )
            matrix = as_matrix(data.column("vector"))
            for i, chunk in enumerate(data.column("id").to_pylist()):
                out[chunk] = matrix[i]
        return out
