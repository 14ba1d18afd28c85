"""Feature computation in DuckDB: source scans, transformations and windowed aggregates.

One place builds every query that turns sources into feature rows, so validation, offline
materialization, online materialization and (later) offline retrieval agree exactly.

Time semantics (documented in docs/concepts.md):
- every timestamp is a microsecond ``TIMESTAMPTZ`` in UTC; naive source timestamps are read as UTC;
- the window of length ``w`` ending at ``t`` holds events with ``t - w < ts <= t``;
- offline, each (entity, event time) row carries the aggregates of the window ending at that time;
- online, each entity carries the aggregates of the windows ending at the materialization end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.errors import DefinitionError, StoreError
from contextkit.framework.database_sources import DatabaseTables
from contextkit.framework.specs import (
    AggregateSpec,
    DatabaseSourceSpec,
    EmbeddingViewSpec,
    FeatureViewSpec,
    FieldSpec,
    FileSourceSpec,
)
from contextkit.types import Float64, Int64, String, arrow_type, dtype_from_duckdb, list_dtype

if TYPE_CHECKING:
    import duckdb

EVENT_TIMESTAMP = "event_timestamp"


def quote(identifier: str) -> str:
    """A DuckDB/SQLite identifier, quoted."""
    return '"' + identifier.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def ts_literal(value: datetime) -> str:
    """A TIMESTAMPTZ literal for an aware datetime."""
    return f"TIMESTAMPTZ {literal(value.isoformat())}"


def connect_duckdb(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection with UTC as its time zone."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def source_scan_sql(
    source: FileSourceSpec, root: Path, con: duckdb.DuckDBPyConnection | None = None
) -> str:
    """A query reading the source's file(s), with its timestamp column as TIMESTAMPTZ.

    Local paths are read by DuckDB itself; an ``s3://`` path (DuckDB cannot reach S3 here) is
    resolved by the object store to a pyarrow dataset registered into ``con`` (required then)."""
    if is_s3_path(source.path):
        if con is None:
            raise ValueError("an s3:// source is scanned through a DuckDB connection")
        from contextkit.stores.source_files import source_dataset

        name = f"__source__{source.name}"
        con.register(name, source_dataset(source.path, source.format, root=root))
        scan = quote(name)
    else:
        path = Path(source.path)
        path = path if path.is_absolute() else root / path
        p = literal(str(path))
        if source.format == "parquet":
            scan = f"read_parquet({p})"
        elif source.format == "csv":
            scan = f"read_csv({p}, header = true, auto_detect = true)"
        else:
            scan = f"read_json({p}, format = 'newline_delimited')"
    if source.timestamp_field:
        ts = quote(source.timestamp_field)
        return f"SELECT * REPLACE (CAST({ts} AS TIMESTAMPTZ) AS {ts}) FROM {scan}"
    return f"SELECT * FROM {scan}"


def is_s3_path(path: str) -> bool:
    return path.startswith("s3://")


def source_file_exists(source: FileSourceSpec, root: Path) -> bool:
    if is_s3_path(source.path):  # listed through the object store (bounded; its errors say why)
        from contextkit.stores.source_files import resolve_source_files

        suffixes = {"parquet": (".parquet",), "csv": (".csv",)}.get(
            source.format, (".jsonl", ".json")
        )
        return bool(resolve_source_files(source.path, root=root, suffixes=suffixes)[1])
    path = Path(source.path)
    path = path if path.is_absolute() else root / path
    if any(ch in source.path for ch in "*?["):
        return any(path.parent.glob(path.name))
    return path.exists()


def describe(con: duckdb.DuckDBPyConnection, sql: str) -> list[FieldSpec]:
    """The output columns of ``sql`` (bound, not run) as contextkit fields."""
    rows = con.execute(f"DESCRIBE {sql}").fetchall()
    return [FieldSpec(name=r[0], dtype=dtype_from_duckdb(r[1]) or r[1]) for r in rows]


class Workspace:
    """Sources and views of one registry workspace, registered as tables in a DuckDB connection.

    ``transformation(view)`` is the SQL name of a view's transformation output (join keys,
    timestamp, columns); python-mode views are run lazily with the rows of the requested range.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        root: Path,
        sources: dict[str, FileSourceSpec],
        views: dict[str, FeatureViewSpec],
    ) -> None:
        self.con = con
        self.root = root
        self.sources = sources
        self.views = views
        self.databases = DatabaseTables(con)  # database sources, read by range on demand
        for source in sources.values():
            if isinstance(source, DatabaseSourceSpec):
                self.databases.register_empty(source)
                continue
            if not source_file_exists(source, root):
                raise StoreError(
                    f"source {source.name!r}: file not found: {source.path}",
                    hint="check the path in the FileSource (relative to the repo root) or "
                    "generate the data first",
                )
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW {quote(source.name)} AS "
                f"{source_scan_sql(source, root, con)}"
            )

    def transformation_sql(
        self, view: FeatureViewSpec, start: datetime | None = None, end: datetime | None = None
    ) -> str:
        """A query of the view's transformation output within ``[start, end)`` (open if None).

        Rows with a null join key or timestamp are dropped: they can never be served.
        """
        ts = quote(view.timestamp_field)
        if view.mode == "sql":
            self._register_upstream(view)
            self._load_databases(view, start, end)
            body = view.sql
        else:
            body = f"SELECT * FROM {quote(self._run_python(view, start, end))}"
        where = [f"{ts} IS NOT NULL"] + [f"{quote(k)} IS NOT NULL" for k in view.join_key_names]
        if start is not None:
            where.append(f"{ts} >= {ts_literal(start)}")
        if end is not None:
            where.append(f"{ts} < {ts_literal(end)}")
        return (
            f"SELECT * REPLACE (CAST({ts} AS TIMESTAMPTZ) AS {ts}) FROM ({body}) AS t "
            f"WHERE {' AND '.join(where)}"
        )

    def _load_databases(self, view: FeatureViewSpec, start, end) -> None:
        """Read the rows of ``[start, end)`` of the view's database sources (range pushed
        down; see contextkit.framework.database_sources)."""
        for name in view.sources:
            source = self.sources.get(name)
            if isinstance(source, DatabaseSourceSpec):
                self.databases.ensure(source, start, end)

    def _register_upstream(self, view: FeatureViewSpec) -> None:
        for name in view.sources:
            if name in self.views:
                upstream = self.views[name]
                self.con.execute(
                    f"CREATE OR REPLACE TEMP VIEW {quote(name)} AS "
                    f"{offline_features_sql(self, upstream)}"
                )

    def _source_frame(self, name: str, view: FeatureViewSpec, lo, hi, limit: int | None):
        if name in self.views:
            sql = offline_features_sql(self, self.views[name])
            ts = EVENT_TIMESTAMP
        else:
            source = self.sources[name]
            if isinstance(source, DatabaseSourceSpec):
                self.databases.ensure(source, lo, hi)
            sql = f"SELECT * FROM {quote(name)}"
            ts = source.timestamp_field
        clauses = []
        if ts and lo is not None:
            clauses.append(f"{quote(ts)} >= {ts_literal(lo)}")
        if ts and hi is not None:
            clauses.append(f"{quote(ts)} < {ts_literal(hi)}")
        if clauses:
            sql = f"SELECT * FROM ({sql}) WHERE {' AND '.join(clauses)}"
        if limit is not None:
            sql = f"SELECT * FROM ({sql}) LIMIT {int(limit)}"
        table = self.con.sql(sql).to_arrow_table()
        return table if view.mode == "arrow" else table.to_pandas()

    def _run_python(self, view: FeatureViewSpec, start, end, sample_rows: int | None = None) -> str:
        """Run a pandas/arrow view on its sources' rows; ``sample_rows`` caps each input."""
        function = compile_python_transformation(view)
        # Feed rows from (start - lookback) so windows near `start` are complete.
        lo = None
        if start is not None:
            from datetime import timedelta

            lo = start - timedelta(seconds=view.max_window_seconds)
        frames = [self._source_frame(name, view, lo, end, sample_rows) for name in view.sources]
        try:
            result = function(*frames)
        except Exception as exc:
            raise DefinitionError(
                f"view {view.name!r}: the {view.mode} transformation raised "
                f"{type(exc).__name__}: {exc}",
                location=str(view.location) if view.location else None,
                hint="run the function on the source data in a notebook to debug it",
            ) from exc
        name = f"__py_{view.name}"
        self.con.register(name, result)
        return name


def compile_python_transformation(view: FeatureViewSpec) -> Callable[..., Any]:
    """Re-create a pandas/arrow-mode view's function from its stored source code."""
    from datetime import date, datetime, timedelta

    import numpy as np
    import pandas as pd
    import pyarrow as pa

    namespace: dict[str, Any] = {
        "pd": pd,
        "pa": pa,
        "np": np,
        "datetime": datetime,
        "timedelta": timedelta,
        "date": date,
    }
    assert view.python_source and view.function_name
    try:
        exec(compile(view.python_source, f"<view {view.name}>", "exec"), namespace)
    except Exception as exc:
        raise DefinitionError(
            f"view {view.name!r}: its function cannot be re-created from source: {exc}",
            location=str(view.location) if view.location else None,
            hint="pandas/arrow-mode functions must be self-contained (import inside the body)",
        ) from exc
    return namespace[view.function_name]


def aggregate_expr(
    feature: AggregateSpec,
    ts: str,
    dtype: str | None,
    where: str | None = None,
    over: str | None = None,
) -> str:
    """The SQL aggregate for ``feature`` over rows matching ``where``, as a window when ``over``."""
    col = quote(feature.column) if feature.column else None
    fn = feature.function
    conditions = [where] if where else []
    cast = None
    if fn == "count":
        call = f"COUNT({col or '*'})"
    elif fn == "count_distinct":
        call = f"COUNT(DISTINCT {col})"
    elif fn == "sum":
        call, cast = f"SUM({col})", "BIGINT" if dtype == Int64 else "DOUBLE"
    elif fn == "mean":
        call, cast = f"AVG({col})", "DOUBLE"
    elif fn in ("min", "max"):
        call = f"{fn.upper()}({col})"
    elif fn == "last":
        # Latest non-null value; ties on time go to the largest value, so results are stable.
        call = f"arg_max({col}, struct_pack(t := {ts}, v := {col}))"
        conditions.append(f"{col} IS NOT NULL")
    else:
        raise ValueError(f"unknown aggregate function {fn!r}")
    if conditions:
        call += f" FILTER (WHERE {' AND '.join(conditions)})"
    if over:
        call += f" OVER {over}"
    return f"CAST({call} AS {cast})" if cast else call


def aggregate_dtype(feature: AggregateSpec, column_dtype: str | None) -> str | None:
    """The dtype of an aggregate's values, given its input column's dtype."""
    if feature.function in ("count", "count_distinct"):
        return Int64
    if feature.function == "mean":
        return Float64
    if feature.function == "last_distinct":
        return list_dtype(column_dtype or String)
    return column_dtype


def window_clause(seconds: int) -> str:
    micros = seconds * 1_000_000 - 1
    return f"RANGE BETWEEN to_microseconds({micros}) PRECEDING AND CURRENT ROW"


def _column_dtypes(view: FeatureViewSpec) -> dict[str, str | None]:
    return {f.name: f.dtype for f in view.output_schema}


def tie_break(view: FeatureViewSpec) -> str:
    """ORDER BY terms choosing one of several attribute rows with the same key and time.

    The row with the largest feature values wins (compared in feature order, nulls last), so
    offline rows, online values and point-in-time joins all pick the same row.
    """
    return ", ".join(f"{quote(f.name)} DESC NULLS LAST" for f in view.features)


def aggregate_inputs_sql(
    ws: Workspace, view: FeatureViewSpec, start: datetime | None = None, end: datetime | None = None
) -> str:
    """The input rows of an aggregate view in ``[start, end)``: join keys, ``event_timestamp``
    and the aggregated columns. Stored offline so windows ending at any time can be recomputed.
    """
    keys = [quote(k) for k in view.join_key_names]
    columns = sorted({f.column for f in view.features if isinstance(f, AggregateSpec) and f.column})
    cols = "".join(f", {quote(c)}" for c in columns)
    inner = ws.transformation_sql(view, start, end)
    return (
        f"SELECT {', '.join(keys)}, {quote(view.timestamp_field)} AS {EVENT_TIMESTAMP}{cols} "
        f"FROM ({inner})"
    )


def offline_features_sql(
    ws: Workspace, view: FeatureViewSpec, start: datetime | None = None, end: datetime | None = None
) -> str:
    """Offline feature rows of ``view`` with event time in ``[start, end)``.

    Columns: join keys, ``event_timestamp``, one column per feature. Aggregate views get one row
    per entity and distinct event time, holding the windows that end at that time.
    """
    keys = [quote(k) for k in view.join_key_names]
    ts = quote(view.timestamp_field)
    if not view.is_aggregate:
        cols = ", ".join(quote(f.name) for f in view.features)
        inner = ws.transformation_sql(view, start, end)
        return (
            f"SELECT {', '.join(keys)}, {ts} AS {EVENT_TIMESTAMP}, {cols} FROM ({inner}) "
            f"QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)}, {ts} "
            f"ORDER BY {tie_break(view)}) = 1"
        )

    from datetime import timedelta

    lookback_start = None if start is None else start - timedelta(seconds=view.max_window_seconds)
    inner = ws.transformation_sql(view, lookback_start, end)
    dtypes = _column_dtypes(view)
    windows = sorted({f.window_seconds for f in view.features if isinstance(f, AggregateSpec)})
    partition = ", ".join(keys)
    exprs = []
    for f in view.features:
        assert isinstance(f, AggregateSpec)
        column_dtype = dtypes.get(f.column) if f.column else None
        expr = aggregate_expr(f, ts, column_dtype, over=f"w{f.window_seconds}")
        exprs.append(f"{expr} AS {quote(f.name)}")
    window_defs = ", ".join(
        f"w{s} AS (PARTITION BY {partition} ORDER BY {ts} {window_clause(s)})" for s in windows
    )
    sql = (
        f"SELECT {', '.join(keys)}, {ts} AS {EVENT_TIMESTAMP}, {', '.join(exprs)} "
        f"FROM ({inner}) WINDOW {window_defs} "
        f"QUALIFY row_number() OVER (PARTITION BY {partition}, {ts}) = 1"
    )
    if start is not None:
        sql = f"SELECT * FROM ({sql}) WHERE {EVENT_TIMESTAMP} >= {ts_literal(start)}"
    return sql


def online_features_sql(ws: Workspace, view: FeatureViewSpec, as_of: datetime) -> str:
    """The latest value per entity as of ``as_of`` (inclusive), honouring the view's ttl.

    Attribute views: the entity's latest row no older than ttl. Aggregate views: the windows
    ending at ``as_of``, for entities with an event within ttl (default: the largest window).
    """
    from datetime import timedelta

    keys = [quote(k) for k in view.join_key_names]
    ts = quote(view.timestamp_field)
    end_lit = ts_literal(as_of)
    # Rows up to as_of (inclusive) are all that is read: a database source reads no later rows.
    through = as_of + timedelta(microseconds=1)
    if not view.is_aggregate:
        lo = as_of - timedelta(seconds=view.ttl_seconds) if view.ttl_seconds else None
        inner = ws.transformation_sql(view, lo, through)
        where = [f"{ts} <= {end_lit}"]
        if lo is not None:
            where.append(f"{ts} > {ts_literal(lo)}")
        cols = ", ".join(quote(f.name) for f in view.features)
        return (
            f"SELECT {', '.join(keys)}, {ts} AS {EVENT_TIMESTAMP}, {cols} FROM ({inner}) "
            f"WHERE {' AND '.join(where)} "
            f"QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)} "
            f"ORDER BY {ts} DESC, {tie_break(view)}) = 1"
        )
    ttl = view.ttl_seconds or view.max_window_seconds
    lookback = max(ttl, view.max_window_seconds)
    inner = ws.transformation_sql(view, as_of - timedelta(seconds=lookback), through)
    dtypes = _column_dtypes(view)
    exprs = []
    for f in view.features:
        assert isinstance(f, AggregateSpec)
        lo = ts_literal(as_of - timedelta(seconds=f.window_seconds))
        column_dtype = dtypes.get(f.column) if f.column else None
        expr = aggregate_expr(f, ts, column_dtype, where=f"{ts} > {lo}")
        exprs.append(f"{expr} AS {quote(f.name)}")
    ttl_lo = ts_literal(as_of - timedelta(seconds=ttl))
    return (
        f"SELECT {', '.join(keys)}, MAX({ts}) AS {EVENT_TIMESTAMP}, {', '.join(exprs)} "
        f"FROM ({inner}) WHERE {ts} <= {end_lit} GROUP BY {', '.join(keys)} "
        f"HAVING MAX({ts}) > {ttl_lo}"
    )


@contextmanager
def workspace_session(
    root: Path,
    sources: dict[str, FileSourceSpec],
    views: dict[str, FeatureViewSpec],
    threads: int | None = None,
) -> Iterator[Workspace]:
    con = connect_duckdb(threads)
    try:
        yield Workspace(con, root, sources, views)
    finally:
        con.close()


def empty_table(columns: list[FieldSpec]):
    """An empty Arrow table with these columns (what a push source looks like to a query)."""
    import pyarrow as pa

    return pa.schema([(c.name, arrow_type(c.dtype or String)) for c in columns]).empty_table()


# -- embedding views ------------------------------------------------------------------------------


def embedding_transformation(view: EmbeddingViewSpec) -> FeatureViewSpec:
    """An embedding view's transformation as a (feature-less) feature view spec, so sources,
    upstream views and python-mode functions run exactly as they do for feature views."""
    sql = view.sql
    if view.mode == "column":
        sql = f"SELECT * FROM {quote(view.sources[0])}"
    return FeatureViewSpec(
        name=view.name,
        sources=view.sources,
        entities=view.entities,
        mode="sql" if view.mode == "column" else view.mode,
        sql=sql,
        python_source=view.python_source,
        function_name=view.function_name,
        features=[],
        timestamp_field=view.timestamp_field or "",
        join_keys=view.join_keys,
        location=view.location,
    )


def output_sql(ws: Workspace, view: FeatureViewSpec, sample_rows: int | None = None) -> str:
    """The raw output of a view's transformation (every column; a python-mode function is run
    on at most ``sample_rows`` rows of each source when given)."""
    if view.mode == "sql":
        ws._register_upstream(view)
        return view.sql or ""
    sample = view.model_copy(update={"features": []})
    return f"SELECT * FROM {quote(ws._run_python(sample, None, None, sample_rows))}"


def embedding_output_sql(ws: Workspace, view: EmbeddingViewSpec, sample_rows: int | None = None):
    """The raw output of an embedding view's transformation (every column, every row)."""
    return output_sql(ws, embedding_transformation(view), sample_rows)


def embedding_documents_sql(ws: Workspace, view: EmbeddingViewSpec) -> str:
    """One row per document: key columns, the text and the metadata columns.

    Rows with a null key are dropped (a document must be addressable). With a timestamp field,
    the latest row of each key is the document (ties: the larger text wins, for determinism).
    """
    keys = [quote(k) for k in view.join_key_names]
    text = quote(view.text_column)
    columns = ", ".join([*keys, text, *(quote(m) for m in view.metadata)])
    body = embedding_output_sql(ws, view)
    where = " AND ".join(f"{k} IS NOT NULL" for k in keys)
    latest = ""
    if view.timestamp_field:
        ts = quote(view.timestamp_field)
        latest = (
            f" QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)} "
            f"ORDER BY {ts} DESC NULLS LAST, {text} DESC NULLS LAST) = 1"
        )
    return f"SELECT {columns} FROM ({body}) AS t WHERE {where}{latest}"
