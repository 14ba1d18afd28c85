"""The online store: the latest feature values per entity, for low-latency batched reads.

``OnlineStore`` and ``OnlineWriter`` list every call the core makes, so a backend can be written
from them alone (``redis_online.RedisOnlineStore`` is the second one). The core speaks of tables
(``<workspace>__<view>`` and friends) of typed key and value columns, in the store's native value
form: timestamps as microseconds since the epoch, bools as 0/1.

``SQLiteOnlineStore`` keeps one table per (workspace, view) in one SQLite file, keyed by the join
keys (``WITHOUT ROWID``, so a lookup is one B-tree probe). A materialization replaces a table
atomically (built as a staging table and renamed in the same transaction); readers in WAL mode
see either the old or the new table, never a mix.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from contextkit.stores.errors import StoreFailure, StoreUnavailable, WriteConflict

T = TypeVar("T")

_SQLITE_TYPES = {
    "string": "TEXT",
    "int64": "INTEGER",
    "bool": "INTEGER",
    "float64": "REAL",
    "timestamp": "INTEGER",  # microseconds since the epoch, UTC
}


# One lock per (file, log) for flushes, shared by every store object of the process.
_FLUSH_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_FLUSH_LOCKS_GUARD = threading.Lock()


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def retry_conflicts(
    transaction: Callable[[], AbstractContextManager[Any]], work: Callable[[Any], T], attempts: int
) -> T:
    """``work(writer)`` in ``transaction()``, again (up to ``attempts`` times in all) when it
    ends in a :class:`WriteConflict` (what every store's ``transact`` does)."""
    for attempt in range(attempts):
        try:
            with transaction() as writer:
                return work(writer)
        except WriteConflict:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class TableRead(NamedTuple):
    """One table's part of a batched read: the arguments of :meth:`OnlineStore.read`."""

    table: str
    keys: Sequence[str]
    columns: Sequence[str]
    key_rows: Sequence[tuple]


class OnlineWriter(ABC):
    """Writes inside one :meth:`OnlineStore.transaction`: all of them commit together at the end
    of the block, or none does. Reads through the writer see the rows it has upserted."""

    @abstractmethod
    def ensure_table(
        self,
        table: str,
        keys: Sequence[tuple[str, str]],
        columns: Sequence[tuple[str, str]],
        *,
        log: bool = False,
        ttl_seconds: int | None = None,
    ) -> None:
        """Create ``table`` if it does not exist (an existing one keeps its columns): keyed by
        ``keys`` (``(name, dtype)``), or, with ``log``, an append-only log with an increasing
        ``seq`` and a unique (nullable) ``ingest_id``. ``ttl_seconds``: see
        :meth:`OnlineStore.replace_table`."""

    @abstractmethod
    def existing(self, table: str, column: str, values: Sequence[Any]) -> set[Any]:
        """Which of ``values`` are already in ``column`` of ``table`` (ingest ids of a log)."""

    @abstractmethod
    def append_log(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], ingested_at: int
    ) -> tuple[int, int]:
        """Append rows (``ingest_id`` first, then ``columns``) to a log table, stamped with
        ``ingested_at`` (microseconds); returns the (first, last) ``seq`` given to them. Seqs
        increase in commit order."""

    @abstractmethod
    def get(
        self, table: str, keys: Sequence[str], key_rows: Sequence[tuple], columns: Sequence[str]
    ) -> dict[tuple, tuple]:
        """The rows for ``key_rows`` (values of all of the table's ``keys``) by key tuple, with
        the values of ``columns``; absent keys (and a missing table) are left out."""

    @abstractmethod
    def upsert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert or replace whole rows (key columns included in ``columns``; a column left out
        is NULL)."""

    @abstractmethod
    def delete_before(self, table: str, column: str, low: int) -> int:
        """Delete the rows with ``column < low`` (old tiles); returns how many."""


class OnlineStore(ABC):
    """What the core needs from an online store: the latest values per key for batched reads,
    and the streaming state (ingest log, latest values, aggregate tiles) written in
    transactions. Every method raises :class:`StoreFailure` (or a subclass) for store
    problems, with the store named and no secret in the message."""

    # -- materialized tables ----------------------------------------------------------------------

    @abstractmethod
    def replace_table(
        self,
        table: str,
        keys: Sequence[tuple[str, str]],
        columns: Sequence[tuple[str, str]],
        rows: Iterable[Sequence[Any]],
        *,
        ttl_seconds: int | None = None,
    ) -> int:
        """Replace ``table`` with ``rows`` (key values then column values), atomically: readers
        see the old rows or the new ones, never a mix, and nothing changes if iterating ``rows``
        raises. A key given twice keeps its last row; returns the number of keys.

        ``ttl_seconds`` allows the store to evict a row once its ``event_timestamp`` column is
        that old (Redis expires the key); a store may also keep it (SQLite does). Readers that
        serve with a ttl filter by it themselves (``retrieve`` does for stream views), so
        answers agree either way. Pass it only for such views: batch views serve what was
        materialized, however old."""

    @abstractmethod
    def read(
        self, table: str, keys: Sequence[str], columns: Sequence[str], key_rows: Sequence[tuple]
    ) -> list[tuple | None]:
        """Rows of ``columns`` for each key tuple in ``key_rows`` (None where absent), in
        request order, a key asked twice answered twice. Raises :class:`StoreFailure` when the
        table does not exist (not materialized yet)."""

    def read_many(self, reads: Sequence[TableRead]) -> list[list[tuple | None] | None]:
        """:meth:`read` for several tables at once (one service request: all of its views); a
        table that does not exist gives None in place of its rows. A networked store answers
        all of them in one round trip; this default reads them one by one."""
        out: list[list[tuple | None] | None] = []
        for r in reads:
            try:
                out.append(self.read(r.table, r.keys, r.columns, r.key_rows))
            except StoreFailure:
                if self.has_table(r.table):
                    raise
                out.append(None)
        return out

    @abstractmethod
    def drop_table(self, table: str) -> None:
        """Remove ``table`` and its rows (a no-op when it does not exist)."""

    @abstractmethod
    def has_table(self, table: str) -> bool:
        """Whether ``table`` exists."""

    def lost_tables(self, tables: Sequence[str]) -> list[str]:
        """Those of ``tables`` that exist but lost part of their rows since they were replaced
        (a Redis Cluster master restarted empty), to be replaced again. A store that keeps its
        tables whole, or loses them whole (:meth:`has_table` then says so), finds none."""
        return []

    # -- streaming: transactions and range reads over tiles and logs ------------------------------

    @abstractmethod
    def transaction(self) -> AbstractContextManager[OnlineWriter]:
        """A write transaction: everything done with the writer commits at the end of the
        block, or nothing does if it raises. May raise :class:`WriteConflict` at commit when a
        concurrent transaction changed what this one read (see :meth:`transact`)."""

    def transact(self, work: Callable[[OnlineWriter], T], attempts: int = 5) -> T:
        """Run ``work(writer)`` in a :meth:`transaction`, again (up to ``attempts`` times in
        all) when it ends in a :class:`WriteConflict`; ``work`` must have no other effects."""
        return retry_conflicts(self.transaction, work, attempts)

    @abstractmethod
    def read_range(
        self,
        table: str,
        keys: Sequence[str],
        key_rows: Sequence[tuple],
        range_column: str,
        low: int,
        columns: Sequence[str],
    ) -> dict[tuple, list[tuple]]:
        """Rows of ``columns`` with ``range_column >= low``, grouped by key tuple (ascending
        ``range_column``). ``keys`` are the table's keys but the last (``range_column``, e.g. a
        tile). Keys without rows, and a missing table, give nothing."""

    @abstractmethod
    def aggregate_range(
        self,
        table: str,
        keys: Sequence[str],
        key_rows: Sequence[tuple],
        range_column: str,
        high: int,
        aggregates: Sequence[tuple[str, str, int]],
    ) -> dict[tuple, tuple]:
        """Per key tuple with rows in ``[min(low), high]``, each ``(op, column, low)``
        aggregate (``op`` is sum, min or max; NULLs skipped; None when no value) over the rows
        with ``low <= range_column <= high``, in order. Keys without rows are absent."""

    @abstractmethod
    def max_by_key(
        self, table: str, keys: Sequence[str], key_rows: Sequence[tuple], column: str
    ) -> dict[tuple, Any]:
        """The largest ``column`` value per key tuple (e.g. the newest event time in a log);
        ``keys`` may be any columns of the table. Keys without rows are absent."""

    @abstractmethod
    def read_log(
        self, table: str, columns: Sequence[str], after_seq: int, limit: int
    ) -> list[tuple]:
        """Rows of a log table after sequence number ``after_seq`` (``seq`` first, then
        ``columns``), in seq order, at most ``limit``; a missing log gives none."""

    @abstractmethod
    def close(self) -> None:
        """Release connections (the store may be used again: it reconnects)."""


class SQLiteOnlineStore(OnlineStore):
    """The embedded online store (one SQLite file, WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._created: set[str] = set()  # stream tables known to exist (CREATE IF NOT EXISTS)

    def _connect(self, slot: str, synchronous: str) -> sqlite3.Connection:
        """This thread's connection of one kind: readers (NORMAL) or ingest writers (FULL)."""
        con = getattr(self._local, slot, None)
        if con is None:
            try:
                con = sqlite3.connect(
                    self.path, isolation_level=None, timeout=30, cached_statements=1024
                )
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(f"PRAGMA synchronous={synchronous}")
            except sqlite3.DatabaseError as exc:  # not a database, no permission, no folder
                raise self._unreadable(exc) from None
            setattr(self._local, slot, con)
        return con

    def _unreadable(self, exc: sqlite3.Error) -> StoreUnavailable:
        """SQLite's error reading the file, as a store failure naming it."""
        if "locked" in str(exc) or "busy" in str(exc):
            hint = "another process holds a write lock on it for too long; retry"
        else:
            hint = (
                "the file is damaged or is not a SQLite database: restore it, or move it away "
                "and re-materialize the views (`contextkit materialize`)"
            )
        return StoreUnavailable(
            f"the online store {str(self.path)!r} cannot be read: {exc}", hint=hint
        )

    def _con(self) -> sqlite3.Connection:
        return self._connect("con", "NORMAL")

    def close(self) -> None:
        for name in ("con", "writer"):
            con = getattr(self._local, name, None)
            if con is not None:
                con.close()
                setattr(self._local, name, None)

    def has_table(self, table: str) -> bool:
        row = (
            self._con()
            .execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
            .fetchone()
        )
        return row is not None

    def replace_table(
        self,
        table: str,
        keys: Sequence[tuple[str, str]],
        columns: Sequence[tuple[str, str]],
        rows: Iterable[Sequence[Any]],
        *,
        ttl_seconds: int | None = None,  # kept: readers filter by ttl (see OnlineStore)
    ) -> int:
        """Replace ``table`` with ``rows`` (key values then column values), atomically.

        Nothing changes if iterating ``rows`` raises: the transaction is rolled back.
        """
        staging = f"{table}__staging"
        defs = [f"{_q(n)} {_SQLITE_TYPES[t]}" for n, t in [*keys, *columns]]
        pk = ", ".join(_q(n) for n, _ in keys)
        placeholders = ", ".join("?" for _ in [*keys, *columns])
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute(f"DROP TABLE IF EXISTS {_q(staging)}")
            con.execute(
                f"CREATE TABLE {_q(staging)} ({', '.join(defs)}, PRIMARY KEY ({pk})) WITHOUT ROWID"
            )
            cursor = con.executemany(
                f"INSERT OR REPLACE INTO {_q(staging)} VALUES ({placeholders})", rows
            )
            count = con.execute(f"SELECT count(*) FROM {_q(staging)}").fetchone()[0]
            del cursor
            con.execute(f"DROP TABLE IF EXISTS {_q(table)}")
            con.execute(f"ALTER TABLE {_q(staging)} RENAME TO {_q(table)}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return count

    def drop_table(self, table: str) -> None:
        self._con().execute(f"DROP TABLE IF EXISTS {_q(table)}")
        self._created.discard(table)

    def read(
        self, table: str, keys: Sequence[str], columns: Sequence[str], key_rows: Sequence[tuple]
    ) -> list[tuple | None]:
        """Rows of ``columns`` for each key tuple in ``key_rows`` (None where absent), in order.

        One query for the whole batch: ``IN (...)`` on a single key, row values on a composite.
        """
        if not key_rows:
            return []
        cols = ", ".join(_q(c) for c in [*keys, *columns])
        n = len(key_rows)
        if len(keys) == 1:
            where = f"{_q(keys[0])} = ?" if n == 1 else f"{_q(keys[0])} IN ({','.join('?' * n)})"
            params: list[Any] = [k[0] for k in key_rows]
        else:
            one = "(" + ",".join("?" * len(keys)) + ")"
            key_list = ", ".join(_q(k) for k in keys)
            where = f"({key_list}) IN (VALUES {','.join([one] * n)})"
            params = [v for k in key_rows for v in k]
        try:
            found = self._con().execute(f"SELECT {cols} FROM {_q(table)} WHERE {where}", params)
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                raise StoreFailure(
                    f"online table {table!r} does not exist",
                    hint="materialize the view first with `contextkit materialize`",
                ) from None
            raise self._unreadable(exc) from None
        width = len(keys)
        by_key = {row[:width]: row[width:] for row in found}
        return [by_key.get(tuple(k)) for k in key_rows]

    # -- streaming: the ingest log, latest values and aggregate tiles --------------------------
    # Push sources and stream views keep their tables in this same file, so that one ingest
    # request is one SQLite transaction: the log append, the latest values and the tiles commit
    # together or not at all. Writers use their own connection with synchronous=FULL, so an
    # acknowledged write survives a crash of the process and of the machine.

    @contextmanager
    def transaction(self) -> Iterator[SQLiteOnlineWriter]:
        """A write transaction (``BEGIN IMMEDIATE``): everything done with the writer commits at
        the end of the block, or nothing does if it raises."""
        con = self._connect("writer", "FULL")
        con.execute("BEGIN IMMEDIATE")
        try:
            yield SQLiteOnlineWriter(con, self._created)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def read_range(
        self,
        table: str,
        keys: Sequence[str],
        key_rows: Sequence[tuple],
        range_column: str,
        low: int,
        columns: Sequence[str],
    ) -> dict[tuple, list[tuple]]:
        """Rows of ``columns`` with ``range_column >= low``, grouped by key tuple (ascending
        ``range_column``). Keys without rows are absent. One query for the batch."""
        if not key_rows:
            return {}
        cols = ", ".join(_q(c) for c in [*keys, *columns])
        key_list = ", ".join(_q(k) for k in keys)
        if len(keys) == 1:
            where = f"{_q(keys[0])} IN ({','.join('?' * len(key_rows))})"
        else:
            one = "(" + ",".join("?" * len(keys)) + ")"
            where = f"({key_list}) IN (VALUES {','.join([one] * len(key_rows))})"
        params = [v for k in key_rows for v in k]
        try:
            rows = self._con().execute(
                f"SELECT {cols} FROM {_q(table)} WHERE {where} AND {_q(range_column)} >= ? "
                f"ORDER BY {_q(range_column)}",
                [*params, low],
            )
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                return {}
            raise self._unreadable(exc) from None
        width = len(keys)
        out: dict[tuple, list[tuple]] = {}
        for row in rows:
            out.setdefault(row[:width], []).append(row[width:])
        return out

    def aggregate_range(
        self,
        table: str,
        keys: Sequence[str],
        key_rows: Sequence[tuple],
        range_column: str,
        high: int,
        aggregates: Sequence[tuple[str, str, int]],
    ) -> dict[tuple, tuple]:
        """Per key tuple, each ``(op, column, low)`` aggregate (``op`` is sum, min or max) over
        the rows with ``low <= range_column <= high``. One query for the batch; keys without
        rows are absent."""
        if not key_rows or not aggregates:
            return {}
        ops = {"sum": "SUM", "min": "MIN", "max": "MAX"}
        rng = _q(range_column)
        exprs = ", ".join(
            f"{ops[op]}(CASE WHEN {rng} >= ? THEN {_q(col)} END)" for op, col, _ in aggregates
        )
        key_list = ", ".join(_q(k) for k in keys)
        if len(keys) == 1:
            where = f"{_q(keys[0])} IN ({','.join('?' * len(key_rows))})"
        else:
            one = "(" + ",".join("?" * len(keys)) + ")"
            where = f"({key_list}) IN (VALUES {','.join([one] * len(key_rows))})"
        params = [
            *(low for _, _, low in aggregates),
            *(v for k in key_rows for v in k),
            min(low for _, _, low in aggregates),
            high,
        ]
        try:
            rows = self._con().execute(
                f"SELECT {key_list}, {exprs} FROM {_q(table)} WHERE {where} AND {rng} >= ? "
                f"AND {rng} <= ? GROUP BY {key_list}",
                params,
            )
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                return {}
            raise self._unreadable(exc) from None
        width = len(keys)
        return {row[:width]: row[width:] for row in rows}

    def max_by_key(
        self, table: str, keys: Sequence[str], key_rows: Sequence[tuple], column: str
    ) -> dict[tuple, Any]:
        """The largest ``column`` value per key tuple (e.g. the newest event time in a log)."""
        if not key_rows:
            return {}
        one = "(" + ",".join("?" * len(keys)) + ")"
        key_list = ", ".join(_q(k) for k in keys)
        try:
            rows = self._con().execute(
                f"SELECT {key_list}, max({_q(column)}) FROM {_q(table)} WHERE ({key_list}) IN "
                f"(VALUES {','.join([one] * len(key_rows))}) GROUP BY {key_list}",
                [v for k in key_rows for v in k],
            )
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                return {}
            raise self._unreadable(exc) from None
        return {row[:-1]: row[-1] for row in rows}

    def read_log(
        self, table: str, columns: Sequence[str], after_seq: int, limit: int
    ) -> list[tuple]:
        """Rows of an ingest log after sequence number ``after_seq`` (``seq`` first), in order."""
        cols = ", ".join(["seq", *(_q(c) for c in columns)])
        try:
            return (
                self._con()
                .execute(
                    f"SELECT {cols} FROM {_q(table)} WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after_seq, limit),
                )
                .fetchall()
            )
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                return []
            raise self._unreadable(exc) from None

    @contextmanager
    def exclusive(self, table: str) -> Iterator[None]:
        """Held while an ingest log is flushed to the offline store: one flusher at a time in
        this process (the file is one node's; a shared log is
        :class:`~contextkit.stores.ingest_log.PostgresIngestLog`)."""
        with _FLUSH_LOCKS_GUARD:
            lock = _FLUSH_LOCKS.setdefault((str(self.path.resolve()), table), threading.Lock())
        with lock:
            yield

    def last_ingested_at(self, table: str) -> int | None:
        """When the newest row of an ingest log arrived (``ingested_at``, epoch microseconds);
        None when the log is empty or does not exist. One index lookup (the last ``seq``)."""
        try:
            row = (
                self._con()
                .execute(f"SELECT ingested_at FROM {_q(table)} ORDER BY seq DESC LIMIT 1")
                .fetchone()
            )
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return None if row is None else int(row[0])


class SQLiteOnlineWriter(OnlineWriter):
    """Writes inside one :meth:`SQLiteOnlineStore.transaction`."""

    def __init__(self, con: sqlite3.Connection, created: set[str]) -> None:
        self._con = con
        self._created = created

    def ensure_table(
        self,
        table: str,
        keys: Sequence[tuple[str, str]],
        columns: Sequence[tuple[str, str]],
        *,
        log: bool = False,
        ttl_seconds: int | None = None,  # kept: readers filter by ttl (see OnlineStore)
    ) -> None:
        """Create ``table`` if needed: keyed by ``keys`` (``WITHOUT ROWID``), or, with ``log``, an
        append-only log with an increasing ``seq`` and a unique (nullable) ``ingest_id``."""
        if table in self._created:
            return
        defs = [f"{_q(n)} {_SQLITE_TYPES.get(t, 'TEXT')}" for n, t in [*keys, *columns]]
        if log:
            self._con.execute(
                f"CREATE TABLE IF NOT EXISTS {_q(table)} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                f"ingest_id TEXT UNIQUE, ingested_at INTEGER NOT NULL, {', '.join(defs)})"
            )
        else:
            pk = ", ".join(_q(n) for n, _ in keys)
            self._con.execute(
                f"CREATE TABLE IF NOT EXISTS {_q(table)} ({', '.join(defs)}, "
                f"PRIMARY KEY ({pk})) WITHOUT ROWID"
            )
        self._created.add(table)

    def existing(self, table: str, column: str, values: Sequence[Any]) -> set[Any]:
        """Which of ``values`` are already in ``column`` of ``table``."""
        found: set[Any] = set()
        for i in range(0, len(values), 500):
            part = list(values[i : i + 500])
            rows = self._con.execute(
                f"SELECT {_q(column)} FROM {_q(table)} WHERE {_q(column)} IN "
                f"({','.join('?' * len(part))})",
                part,
            )
            found.update(r[0] for r in rows)
        return found

    def append_log(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], ingested_at: int
    ) -> tuple[int, int]:
        """Append rows (``ingest_id`` first, then ``columns``); returns the (first, last) seq."""
        cols = ", ".join(["ingest_id", "ingested_at", *(_q(c) for c in columns)])
        marks = ", ".join("?" * (len(columns) + 2))
        first = None
        for row in rows:
            cursor = self._con.execute(
                f"INSERT INTO {_q(table)} ({cols}) VALUES ({marks})",
                (row[0], ingested_at, *row[1:]),
            )
            first = cursor.lastrowid if first is None else first
        last = self._con.execute("SELECT last_insert_rowid()").fetchone()[0]
        return (first or 0, last or 0)

    def get(
        self, table: str, keys: Sequence[str], key_rows: Sequence[tuple], columns: Sequence[str]
    ) -> dict[tuple, tuple]:
        """The rows for ``key_rows`` (absent keys are left out), by key tuple."""
        if not key_rows:
            return {}
        cols = ", ".join(_q(c) for c in [*keys, *columns])
        out: dict[tuple, tuple] = {}
        width = len(keys)
        one = "(" + ",".join("?" * width) + ")"
        key_list = ", ".join(_q(k) for k in keys)
        for i in range(0, len(key_rows), 200):
            part = key_rows[i : i + 200]
            rows = self._con.execute(
                f"SELECT {cols} FROM {_q(table)} WHERE ({key_list}) IN "
                f"(VALUES {','.join([one] * len(part))})",
                [v for k in part for v in k],
            )
            for row in rows:
                out[row[:width]] = row[width:]
        return out

    def upsert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert or replace whole rows (key columns included in ``columns``)."""
        if not rows:
            return
        cols = ", ".join(_q(c) for c in columns)
        marks = ", ".join("?" * len(columns))
        self._con.executemany(f"INSERT OR REPLACE INTO {_q(table)} ({cols}) VALUES ({marks})", rows)

    def delete_before(self, table: str, column: str, low: int) -> int:
        """Delete rows with ``column < low`` (old tiles); returns how many."""
        return self._con.execute(f"DELETE FROM {_q(table)} WHERE {_q(column)} < ?", (low,)).rowcount
