"""Database sources (``PostgresSource``) as tables of a DuckDB session, read by time range.

A view's SQL names a database source like a file (``FROM {orders}``). The session first
registers an empty table of the source's columns (what validation describes); when a view's rows
of ``[start, end)`` are asked for, :class:`DatabaseTables` reads the source's rows of that range
from the database (the range is in the SQL sent, see ``contextkit.stores.database_source``) as
Arrow and registers them under the source's name. A later, wider range in the same session reads
the union once; a range already covered reads nothing.

The range is on the source's ``timestamp_field``, as for python-mode views: a view's event time
is taken to be its source rows' time. A source without ``timestamp_field`` is read whole.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from contextkit.framework.specs import DatabaseSourceSpec, FieldSpec
from contextkit.stores.database_source import POSTGRES, DatabaseReader, Dialect
from contextkit.types import String, arrow_type

if TYPE_CHECKING:
    import duckdb

DIALECTS: dict[str, Dialect] = {"postgres": POSTGRES}


def reader(source: DatabaseSourceSpec) -> DatabaseReader:
    """The reader of ``source`` (its connection resolved now: ``env:NAME`` read here)."""
    return DatabaseReader(source.name, source.connection, DIALECTS[source.dialect])


def read_range(source: DatabaseSourceSpec, start: datetime | None, end: datetime | None):
    """The source's rows with ``start <= timestamp_field < end`` (None: open), as Arrow."""
    r = reader(source)
    return r.read(
        r.range_sql(
            table=source.table,
            query=source.query,
            timestamp_field=source.timestamp_field,
            start=start,
            end=end,
        )
    )


def pa_schema(columns: list[FieldSpec]):
    import pyarrow as pa

    return pa.schema([(c.name, arrow_type(c.dtype or String)) for c in columns])


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _key(value: datetime | None, low: bool) -> float:
    if value is None:
        return float("-inf") if low else float("inf")
    return value.timestamp()


class DatabaseTables:
    """The database sources of one DuckDB session, loaded by range on demand."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.loaded: dict[str, tuple[datetime | None, datetime | None]] = {}
        self.reads: list[str] = []  # the SQL sent, in order (for tests and job logs)

    def register_empty(self, source: DatabaseSourceSpec) -> None:
        """Register an empty table of the source's columns (known since validation)."""
        schema = pa_schema(source.columns)
        self._register(source, schema.empty_table())

    def register_schema(self, source: DatabaseSourceSpec) -> None:
        """Register an empty table of the columns the database reports (a ``LIMIT 0`` query:
        no row is read); validation describes it."""
        r = reader(source)
        sql = r.range_sql(
            table=source.table,
            query=source.query,
            timestamp_field=None,
            start=None,
            end=None,
            limit=0,
        )
        self._register(source, r.read(sql))

    def ensure(self, source: DatabaseSourceSpec, start: datetime | None, end: datetime | None):
        """Make the source's table hold at least its rows of ``[start, end)``."""
        if not source.timestamp_field:
            start = end = None
        have = self.loaded.get(source.name)
        if have is not None:
            lo, hi = have
            if _key(lo, True) <= _key(start, True) and _key(end, False) <= _key(hi, False):
                return
            start = start if _key(start, True) <= _key(lo, True) else lo
            end = end if _key(end, False) >= _key(hi, False) else hi
        r = reader(source)
        sql = r.range_sql(
            table=source.table,
            query=source.query,
            timestamp_field=source.timestamp_field,
            start=start,
            end=end,
        )
        table = r.read(sql)
        self.reads.append(sql)
        self._register(source, table)
        self.loaded[source.name] = (start, end)

    def _register(self, source: DatabaseSourceSpec, table) -> None:
        quote = _quote
        raw = f"__db__{source.name}"
        self.con.register(raw, table)
        select = "*"
        if source.timestamp_field and source.timestamp_field in table.schema.names:
            ts = quote(source.timestamp_field)
            select = f"* REPLACE (CAST({ts} AS TIMESTAMPTZ) AS {ts})"
        self.con.execute(
            f"CREATE OR REPLACE TEMP VIEW {quote(source.name)} AS SELECT {select} FROM {quote(raw)}"
        )
