"""The durable ingest log of push sources, and its PostgreSQL backend shared by every node.

An acknowledged ingest is first committed to the ingest log; the online store is updated from
it. :class:`IngestLog` lists every call the core makes on a log. Two backends:

- :class:`PostgresIngestLog`, in the PostgreSQL registry's database, when a deployment has one,
  whatever its online store: every serving node appends to and reads from the same log, so
  records ingested on any node reach the online store(s) once, in one order, are flushed to the
  offline store once, and survive the loss of any node's disk;
- with the SQLite registry, the embedded SQLite online store
  (:class:`~contextkit.stores.online.SQLiteOnlineStore`) is its own log (one transaction writes
  a source's log table and the views' values), or, beside a Redis online store, a SQLite file
  ``ingest_log.db`` of one node.

**Order.** Seqs of one log increase in commit order, which ``apply_log`` and the offline flush
rely on (they remember the last seq they took, never look behind it). PostgreSQL sequences do
not give that (a transaction may commit after a later-numbered one), so each log has a counter
row; an append locks it (``UPDATE``) before it checks idempotency keys and numbers its rows, and
holds it until commit: appends to one log take turns, appends to different logs do not.

**Layout.** One table ``ingest_log`` (log name, seq, idempotency key, arrival time, the row as
JSONB by column name, in the stores' native value form) and one counter table
``ingest_log_seqs``, created on first use. A column added to a push source later reads as NULL
in older rows.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from contextkit.stores._postgres_connection import ADVISORY_LOCK_CLASS
from contextkit.stores.errors import WriteConflict
from contextkit.stores.online import retry_conflicts

if TYPE_CHECKING:
    import psycopg

    from contextkit.stores._postgres_connection import PostgresConnector

T = TypeVar("T")

# Advisory locks of the ingest log: (the registry's class, this) while creating the tables;
# (this class, a hash of the log's name) while a log is flushed (see ``exclusive``). The
# registry's own classes are ADVISORY_LOCK_CLASS and ADVISORY_LOCK_CLASS + 1 (alerts).
_CREATE_LOCK = 0x4C0
_FLUSH_LOCK_CLASS = ADVISORY_LOCK_CLASS + 2
_TABLES = """
CREATE TABLE IF NOT EXISTS ingest_log_seqs (
    log TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_log (
    log TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ingest_id TEXT,
    ingested_at BIGINT NOT NULL,
    row JSONB NOT NULL,
    PRIMARY KEY (log, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS ingest_log_ids ON ingest_log (log, ingest_id)
    WHERE ingest_id IS NOT NULL;
"""


class IngestLog(Protocol):
    """What the core needs from an ingest log (the methods of the same names on
    :class:`~contextkit.stores.online.OnlineStore` say what each does). Its ``transaction()``
    yields a writer with :class:`~contextkit.stores.online.OnlineWriter`'s log calls:
    ``ensure_table(..., log=True)``, ``existing``, ``append_log`` and ``delete_before``."""

    def transaction(self) -> AbstractContextManager[Any]: ...
    def transact(self, work: Callable[[Any], T], attempts: int = 5) -> T: ...
    def has_table(self, table: str) -> bool: ...
    def read_log(
        self, table: str, columns: Sequence[str], after_seq: int, limit: int
    ) -> list[tuple]: ...
    def last_ingested_at(self, table: str) -> int | None: ...
    def exclusive(self, table: str) -> AbstractContextManager[None]:
        """Held while a log is flushed to the offline store: one flusher at a time (per process
        for SQLite, per deployment for PostgreSQL)."""
        ...


class PostgresIngestLog:
    """Push sources' ingest logs in the PostgreSQL registry database (see the module doc)."""

    def __init__(self, db: PostgresConnector) -> None:
        self._db = db
        self._ready = False
        self._ready_lock = threading.Lock()
        self.url = db.masked_url

    def __repr__(self) -> str:
        return f"PostgresIngestLog({self.url!r})"

    def _ensure(self, con: psycopg.Connection) -> None:
        """Create the tables once (nodes starting together take turns on an advisory lock)."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            exists = con.execute("SELECT to_regclass('ingest_log') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                with con.transaction():
                    con.execute(
                        "SELECT pg_advisory_xact_lock(%s, %s)", (ADVISORY_LOCK_CLASS, _CREATE_LOCK)
                    )
                    con.execute(_TABLES)
            self._ready = True

    @contextmanager
    def transaction(self) -> Iterator[_PostgresLogWriter]:
        with self._db.connection("writing the ingest log") as con:
            self._ensure(con)
            with con.transaction():
                yield _PostgresLogWriter(con)

    def transact(self, work: Callable[[_PostgresLogWriter], T], attempts: int = 5) -> T:
        """``work(writer)`` in one transaction, again on a conflict (two appends of the same new
        idempotency key racing to the unique index)."""
        return retry_conflicts(self.transaction, work, attempts)

    def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        """A read; before the first ingest created the tables, nothing (a read creates nothing,
        so a read-only role may serve)."""
        import psycopg

        with self._db.connection("reading the ingest log") as con:
            try:
                return con.execute(sql, params).fetchall()
            except psycopg.errors.UndefinedTable:
                return []

    def has_table(self, table: str) -> bool:
        return bool(self._rows("SELECT 1 FROM ingest_log_seqs WHERE log = %s", (table,)))

    def read_log(
        self, table: str, columns: Sequence[str], after_seq: int, limit: int
    ) -> list[tuple]:
        """Rows after ``after_seq`` (``seq`` first, then ``columns``), in seq order."""
        found = self._rows(
            "SELECT seq, row FROM ingest_log WHERE log = %s AND seq > %s ORDER BY seq LIMIT %s",
            (table, after_seq, limit),
        )
        return [(seq, *(row.get(c) for c in columns)) for seq, row in found]

    def last_ingested_at(self, table: str) -> int | None:
        found = self._rows(
            "SELECT ingested_at FROM ingest_log WHERE log = %s ORDER BY seq DESC LIMIT 1", (table,)
        )
        return int(found[0][0]) if found else None

    def adopt(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bool:
        """Take over a log kept elsewhere (a node's SQLite online store, where versions before
        the log followed the registry kept it), its seqs, idempotency keys and arrival times
        kept, so the flushed watermark and the online store's state still match them. ``rows``:
        ``(seq, ingest_id, ingested_at, *columns)`` in seq order. True when the log is now here:
        it had no rows and took these, or it holds them already (an adoption that crashed
        before the node dropped its copy); False when it holds other rows (nothing written)."""
        if not rows:
            return True
        last = rows[-1]
        with self._db.connection("adopting a node's ingest log") as con:
            self._ensure(con)
            with con.transaction():
                writer = _PostgresLogWriter(con)
                writer.ensure_table(table, [], [], log=True)  # holds the counter row
                (current,) = con.execute(
                    "SELECT last_seq FROM ingest_log_seqs WHERE log = %s", (table,)
                ).fetchone()
                if current:
                    same = con.execute(
                        "SELECT 1 FROM ingest_log WHERE log = %s AND seq = %s AND ingested_at = %s",
                        (table, last[0], last[2]),
                    ).fetchone()
                    return same is not None
                with con.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO ingest_log (log, seq, ingest_id, ingested_at, row) "
                        "VALUES (%s, %s, %s, %s, %s::jsonb)",
                        [
                            (
                                table,
                                r[0],
                                r[1],
                                r[2],
                                json.dumps(dict(zip(columns, r[3:], strict=True))),
                            )
                            for r in rows
                        ],
                    )
                con.execute(
                    "UPDATE ingest_log_seqs SET last_seq = %s WHERE log = %s", (last[0], table)
                )
        return True

    @contextmanager
    def exclusive(self, table: str) -> Iterator[None]:
        """A transaction-level advisory lock on the log, held on one connection for the block:
        a second flusher (another node's scheduler) waits, then finds nothing left to flush.
        However the block ends, the transaction ends and the lock goes with it."""
        key = zlib.crc32(table.encode()) - 2**31  # an int4, stable across processes
        with self._db.connection("locking the ingest log for a flush") as con, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_FLUSH_LOCK_CLASS, key))
            yield


class _PostgresLogWriter:
    """Appends inside one PostgreSQL transaction, holding each touched log's counter row."""

    def __init__(self, con: psycopg.Connection) -> None:
        self._con = con
        self._locked: set[str] = set()

    def ensure_table(
        self,
        table: str,
        keys: Sequence[tuple[str, str]],
        columns: Sequence[tuple[str, str]],
        *,
        log: bool = False,
    ) -> None:
        """Start the log's counter (the rows all live in ``ingest_log``) and lock it."""
        if not log:
            raise ValueError("the PostgreSQL ingest log holds logs only")
        self._lock(table)

    def _lock(self, table: str) -> None:
        if table in self._locked:
            return
        self._con.execute(
            "INSERT INTO ingest_log_seqs VALUES (%s, 0) ON CONFLICT (log) DO NOTHING", (table,)
        )
        self._con.execute(
            "SELECT last_seq FROM ingest_log_seqs WHERE log = %s FOR UPDATE", (table,)
        )
        self._locked.add(table)

    def existing(self, table: str, column: str, values: Sequence[Any]) -> set[Any]:
        if column != "ingest_id":
            raise ValueError("the PostgreSQL ingest log looks up idempotency keys only")
        self._lock(table)
        found = self._con.execute(
            "SELECT ingest_id FROM ingest_log WHERE log = %s AND ingest_id = ANY(%s)",
            (table, [str(v) for v in values]),
        ).fetchall()
        return {r[0] for r in found}

    def append_log(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], ingested_at: int
    ) -> tuple[int, int]:
        """Append rows (``ingest_id`` first, then ``columns``); returns the (first, last) seq."""
        import psycopg

        self._lock(table)
        if not rows:
            return (0, 0)
        (last,) = self._con.execute(
            "UPDATE ingest_log_seqs SET last_seq = last_seq + %s WHERE log = %s RETURNING last_seq",
            (len(rows), table),
        ).fetchone()
        first = last - len(rows) + 1
        payload = [
            (
                table,
                first + i,
                row[0],
                ingested_at,
                json.dumps(dict(zip(columns, row[1:], strict=True))),
            )
            for i, row in enumerate(rows)
        ]
        try:
            with self._con.cursor() as cur:
                cur.executemany(
                    "INSERT INTO ingest_log (log, seq, ingest_id, ingested_at, row) "
                    "VALUES (%s, %s, %s, %s, %s::jsonb)",
                    payload,
                )
        except psycopg.errors.UniqueViolation:
            raise WriteConflict(
                f"an idempotency key of {table!r} was logged concurrently"
            ) from None
        return (first, last)

    def delete_before(self, table: str, column: str, low: int) -> int:
        """Delete the log's rows with ``seq < low`` (flushed and past retention)."""
        if column != "seq":
            raise ValueError("the PostgreSQL ingest log is pruned by seq only")
        return self._con.execute(
            "DELETE FROM ingest_log WHERE log = %s AND seq < %s", (table, low)
        ).rowcount
