"""Sources: files and database tables read in batch, push sources fed by the ingest API, request
sources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from contextkit.framework.definitions._base import Definition, caller_location, checked_arguments
from contextkit.framework.specs import (
    DatabaseSourceSpec,
    FieldSpec,
    FileSourceSpec,
    PushSourceSpec,
)
from contextkit.types import Field


class FileSource(Definition):
    """A Parquet, CSV or JSONL file (or glob) of rows, with the column holding each row's time.

    ``path`` is relative to the repo root unless absolute; ``format`` is guessed from the suffix.
    """

    kind = "file_source"

    @checked_arguments
    def __init__(
        self,
        name: str,
        path: str,
        timestamp_field: str | None = None,
        format: Literal["parquet", "csv", "jsonl"] | None = None,
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        self.path = str(path)
        self.timestamp_field = timestamp_field
        self.format = format or _guess_format(self.path)
        if self.format not in ("parquet", "csv", "jsonl"):
            raise self._error(
                f"source {name!r}: cannot tell the format of {self.path!r}",
                hint='pass format="parquet", "csv" or "jsonl"',
            )

    def to_spec(self, root: str | None = None) -> FileSourceSpec:
        return FileSourceSpec(
            path=self.path,
            format=self.format,
            timestamp_field=self.timestamp_field,
            **self._common(root),
        )


def _guess_format(path: str) -> str | None:
    lowered = path.lower()
    for suffix, fmt in ((".parquet", "parquet"), (".csv", "csv"), (".jsonl", "jsonl")):
        if lowered.endswith(suffix) or lowered.endswith(suffix + ".gz"):
            return fmt
    if lowered.endswith(".ndjson") or lowered.endswith(".json"):
        return "jsonl"
    return None


class DatabaseSource(Definition):
    """A table or a query of a database, read as Arrow through its ADBC driver.

    The base of :class:`PostgresSource`; a warehouse with an ADBC driver (Snowflake, BigQuery)
    is another subclass naming its ``dialect`` (see ``contextkit.stores.database_source``).
    Each materialization reads only the rows of its time range: the range on
    ``timestamp_field`` is part of the SQL sent to the database.
    """

    kind = "database_source"
    dialect = ""
    label = "database"

    @checked_arguments
    def __init__(
        self,
        name: str,
        connection: str,
        *,
        table: str | None = None,
        query: str | None = None,
        timestamp_field: str | None = None,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        if (table is None) == (query is None):
            raise self._error(
                f"source {name!r}: pass exactly one of table= or query=",
                hint='e.g. table="public.orders" or query="SELECT ... FROM orders"',
            )
        if not isinstance(connection, str) or not connection:
            raise self._error(
                f"source {name!r}: connection must be a {self.label} URL or env:VARIABLE",
                hint='e.g. connection="env:PG_URL"',
            )
        from contextkit.stores.database_source import has_password
        from contextkit.stores.errors import mask_url

        if has_password(connection):
            raise self._error(
                f"source {name!r}: the connection {mask_url(connection)} holds a password, "
                "which would be stored in the registry",
                hint='put the URL in an environment variable and pass connection="env:PG_URL" '
                "(or leave the password out and set PGPASSWORD / ~/.pgpass)",
            )
        if query is not None and query.strip().rstrip(";").strip() == "":
            raise self._error(f"source {name!r}: query is empty")
        self.connection = connection
        self.table = table
        self.query = query.strip().rstrip(";") if query is not None else None
        self.timestamp_field = timestamp_field

    def to_spec(self, root: str | None = None) -> DatabaseSourceSpec:
        return DatabaseSourceSpec(
            dialect=self.dialect,
            connection=self.connection,
            table=self.table,
            query=self.query,
            timestamp_field=self.timestamp_field,
            **self._common(root),
        )


class PostgresSource(DatabaseSource):
    """A PostgreSQL table or query::

        orders = PostgresSource(
            name="orders",
            connection="env:PG_URL",            # postgresql://user:password@host:5432/shop
            table="public.orders",              # or query="SELECT ... FROM orders JOIN ..."
            timestamp_field="created_at",
        )

    Read with ADBC's PostgreSQL driver (binary COPY decoded into Arrow, no row in Python) and
    registered into DuckDB under the source's name for the views' SQL. A URL holding a password
    is refused: give it as ``env:NAME`` (resolved when read, never stored) or through libpq's
    ``PGPASSWORD``/``~/.pgpass``.
    """

    dialect = "postgres"
    label = "postgresql://"


class PushSource(Definition):
    """Records pushed over the ingest API (``POST /v1/ingest``), with a declared schema.

    ::

        page_views = PushSource(
            name="page_views",
            schema=[Field("user_id", Int64), Field("product_id", Int64), Field("ts", Timestamp)],
            timestamp_field="ts",
        )

    Every record must carry every field of the schema (``None`` is allowed except for join keys
    and the timestamp). ``batch_source``: a FileSource with the same columns holding the events
    from before the push source existed; offline retrieval reads it with the ingest log.
    """

    kind = "push_source"

    @checked_arguments
    def __init__(
        self,
        name: str,
        schema: Sequence[Field],
        timestamp_field: str,
        *,
        batch_source: FileSource | str | None = None,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        if not schema or not all(isinstance(f, Field) for f in schema):
            raise self._error(
                f"push source {name!r}: schema must be a non-empty list of Field(name, dtype)",
                hint='e.g. schema=[Field("user_id", Int64), Field("ts", Timestamp)]',
            )
        names = [f.name for f in schema]
        if len(set(names)) != len(names):
            raise self._error(f"push source {name!r}: a field is listed twice in the schema")
        if timestamp_field not in names:
            raise self._error(
                f"push source {name!r}: timestamp_field {timestamp_field!r} is not in the schema",
                hint=f"fields: {', '.join(names)}",
            )
        if next(f for f in schema if f.name == timestamp_field).dtype != "timestamp":
            raise self._error(
                f"push source {name!r}: timestamp_field {timestamp_field!r} must be a Timestamp"
            )
        self.schema = list(schema)
        self.timestamp_field = timestamp_field
        self.batch_source = batch_source

    def to_spec(self, root: str | None = None) -> PushSourceSpec:
        batch = self.batch_source
        return PushSourceSpec(
            columns=[FieldSpec(name=f.name, dtype=f.dtype) for f in self.schema],
            timestamp_field=self.timestamp_field,
            batch_source=batch if isinstance(batch, str | None) else batch.name,
            **self._common(root),
        )


class RequestSource:
    """Values sent with each request (``request_context``), typed: the input of realtime views.

    ``RequestSource(schema=[Field("request_ts", Timestamp), Field("query", String)])``
    """

    def __init__(self, schema: Sequence[Field]) -> None:
        if not schema or not all(isinstance(f, Field) for f in schema):
            raise ValueError("RequestSource needs schema=[Field(name, dtype), ...]")
        self.schema = list(schema)
