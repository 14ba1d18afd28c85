"""Database sources read as Arrow through ADBC: the rows of a table or query within a time range.

``DatabaseReader`` is the one class; a warehouse is a :class:`Dialect` (its ADBC driver module,
how it quotes names and writes a timestamp literal). PostgreSQL is the one built in
(``adbc-driver-postgresql``, which bundles libpq and decodes PostgreSQL's binary COPY into Arrow
in C++, so no row passes through Python); Snowflake or BigQuery plug in as another ``Dialect``
over their ADBC drivers, with the same reader.

The range is pushed into the query sent to the database (``WHERE ts >= $lo AND ts < $hi`` around
the table or the user's query), so a run reads the rows it needs, never the whole table.

**Connections.** ``connection`` is a URL, or ``env:NAME`` for a URL held in an environment
variable (resolved when the source is read, never stored). The URL appears only masked
(``postgresql://user:***@host/db``) in errors and reprs. Errors become
:class:`StoreServerUnavailable` naming the masked URL within ``connect_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contextkit.stores.errors import StoreFailure, StoreServerUnavailable, mask_url


@dataclass(frozen=True)
class Dialect:
    """How one warehouse is reached over ADBC and how its SQL names a column and a time."""

    name: str
    driver: str  # the ADBC DB-API module, e.g. adbc_driver_postgresql.dbapi
    package: str  # the pip package that provides it
    schemes: tuple[str, ...]

    def quote(self, identifier: str) -> str:
        return '"' + identifier.replace('"', '""') + '"'

    def quote_table(self, table: str) -> str:
        """``schema.table`` (each part quoted) or a bare table name."""
        return ".".join(self.quote(part) for part in table.split("."))

    def timestamp(self, value: datetime) -> str:
        text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"TIMESTAMPTZ '{text}+00'"

    def connect(self, url: str, connect_timeout: float) -> Any:
        import importlib

        module = importlib.import_module(self.driver)
        return module.connect(url)


POSTGRES = Dialect(
    name="postgres",
    driver="adbc_driver_postgresql.dbapi",
    package="adbc-driver-postgresql",
    schemes=("postgresql", "postgres"),
)


def resolve_connection(connection: str, *, source: str) -> str:
    """The URL of ``connection``: itself, or the value of the variable ``env:NAME`` names."""
    if connection.startswith("env:"):
        name = connection[4:]
        value = os.environ.get(name)
        if not value:
            raise StoreFailure(
                f"source {source!r}: environment variable {name} (its connection) is not set",
                hint=f"export {name}=postgresql://user:password@host:port/database",
            )
        return value
    return connection


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (then it must not be stored: use ``env:NAME``)."""
    from urllib.parse import urlsplit

    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


_CONNECT_TIMEOUT = re.compile(r"[?&]connect_timeout=")


class DatabaseReader:
    """Reads a table or a query of one database as Arrow, pushing a time range into the SQL."""

    def __init__(
        self, source: str, connection: str, dialect: Dialect = POSTGRES, connect_timeout: int = 5
    ) -> None:
        self.source = source
        self.dialect = dialect
        self._url = resolve_connection(connection, source=source)
        self.masked = mask_url(self._url)
        if not _CONNECT_TIMEOUT.search(self._url):  # libpq: give up on a silent server
            self._url += ("&" if "?" in self._url else "?") + f"connect_timeout={connect_timeout}"
        self._connect_timeout = connect_timeout
        self.last_sql: str | None = None

    def __repr__(self) -> str:
        return f"DatabaseReader({self.source!r}, {self.masked!r})"

    def range_sql(
        self,
        *,
        table: str | None,
        query: str | None,
        timestamp_field: str | None,
        start: datetime | None,
        end: datetime | None,
        limit: int | None = None,
    ) -> str:
        """The SQL sent to the database: the table or query, within ``[start, end)``."""
        d = self.dialect
        body = f"SELECT * FROM {d.quote_table(table)}" if table else f"SELECT * FROM ({query}) AS q"
        where = []
        if timestamp_field and start is not None:
            where.append(f"{d.quote(timestamp_field)} >= {d.timestamp(start)}")
        if timestamp_field and end is not None:
            where.append(f"{d.quote(timestamp_field)} < {d.timestamp(end)}")
        if where:
            body += " WHERE " + " AND ".join(where)
        if limit is not None:
            body += f" LIMIT {int(limit)}"
        return body

    def read(self, sql: str):
        """The rows of ``sql`` as a ``pyarrow.Table``."""
        try:
            __import__(self.dialect.driver)
        except ImportError:
            raise StoreFailure(
                f"source {self.source!r}: the ADBC driver for {self.dialect.name} is not installed",
                hint=f"pip install 'contextkit[postgres]' (or {self.dialect.package})",
            ) from None
        self.last_sql = sql
        try:
            con = self.dialect.connect(self._url, self._connect_timeout)
        except Exception as exc:  # driver errors carry the URL: never show it
            raise StoreServerUnavailable(
                f"source {self.source!r}: cannot connect to {self.masked}: "
                f"{_clean(exc, self._url, self.masked)}",
                hint="check that the database is up and the connection (user, password, "
                "host, database) is right",
            ) from None
        try:
            with con.cursor() as cur:
                cur.execute(sql)
                return cur.fetch_arrow_table()
        except Exception as exc:
            raise StoreFailure(
                f"source {self.source!r}: {self.dialect.name} at {self.masked} refused the "
                f"query: {_clean(exc, self._url, self.masked)}",
                hint="check the table or query and the timestamp_field of the source",
            ) from None
        finally:
            with contextlib.suppress(Exception):  # closing a broken connection
                con.close()


def _clean(exc: BaseException, url: str, masked: str) -> str:
    """The first line of a driver error, with the URL (and its password) replaced."""
    text = str(exc).replace(url, masked).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        line = line.replace(password, "***")
    return line[:300]
