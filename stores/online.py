"""The online store: the latest feature values per entity, for low-latency batched reads.

``SQLiteOnlineStore`` keeps one table per (workspace, view) in one SQLite file, keyed by the join
keys (``WITHOUT ROWID``, so a lookup is one B-tree probe). A materialization replaces a table
atomically (built as a staging table and renamed in the same transaction); readers in WAL mode
see either the old or the new table, never a mix. Redis will implement the same interface.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from contextkit.stores.errors import StoreFailure

_SQLITE_TYPES = {
    "string": "TEXT",
    "int64": "INTEGER",
    "bool": "INTEGER",
    "float64": "REAL",
    "timestamp": "INTEGER",  # microseconds since the epoch, UTC
}


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class OnlineStore(Protocol):
    """What the core needs from an online store."""

    def replace_table(
        self,
        table: str,
        keys: Sequence[tuple[str, str]],
        columns: Sequence[tuple[str, str]],
        rows: Iterable[Sequence[Any]],
    ) -> int: ...

    def read(
        self, table: str, keys: Sequence[str], columns: Sequence[str], key_rows: Sequence[tuple]
    ) -> list[tuple | None]: ...

    def drop_table(self, table: str) -> None: ...

    def has_table(self, table: str) -> bool: ...


class SQLiteOnlineStore:
    """The embedded online store (one SQLite file, WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, cached_statements=1024
            )
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

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
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise StoreFailure(
                    f"online table {table!r} does not exist",
                    hint="materialize the view first with `contextkit materialize`",
                ) from None
            raise
        width = len(keys)
        by_key = {row[:width]: row[width:] for row in found}
        return [by_key.get(tuple(k)) for k in key_rows]
