"""Point-in-time-correct features for events: training and evaluation sets for notebooks.

``Context.get_features_for_events(events, "support_assistant")`` returns every event row exactly
once, in input order, with each feature's value as of the row's timestamp:

- attribute views: the latest feature row with feature time ``<=`` event time (an ``ASOF LEFT
  JOIN`` in DuckDB), null when that row is ``ttl`` or more older than the event;
- aggregate views: the windows ending at the event time (``t - w < ts <= t``), computed from the
  view's input rows, null when the entity has no input within ``ttl`` (default: largest window);
  exactly what the online path serves for a materialization ending at ``t``.

Timestamps: naive values are read as UTC, aware ones are converted to UTC; a column mixing both is
an error; finer than microseconds is floored (an event 1 ns before a row stays before it). Keys
match only an equal value of the view's key type (``1.0`` matches ``1``, ``1.5`` nothing). Event
columns named like a result column, or with the reserved prefix ``__ck_``, are refused. Data comes
from the offline store when it covers the events, else from the sources (``from_source=True``
forces that); ``.sources_used`` says which was used per view. Nothing runs until a ``to_*``
method is called.

Stream feature views are computed from their push source's events (the ingest log and the
source's ``batch_source``) with ``streaming.stream_offline_sql``: the same tile-aligned windows and
latest values the online path serves at the event's time. Realtime views run their function per
event row, in Arrow batches, over the request-context values (taken from the events' columns named
like the request fields) and their input views' point-in-time features (computed alongside, in the
same query, whether or not the result shows them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.compute.streaming import log_arrow, stream_offline_sql
from contextkit.errors import BadRequestError, NotFoundError, StoreUnavailableError
from contextkit.framework import transformations
from contextkit.framework.realtime import run_realtime
from contextkit.framework.specs import (
    AggregateSpec,
    FeatureViewSpec,
    RealtimeFeatureViewSpec,
    StreamFeatureViewSpec,
)
from contextkit.framework.transformations import (
    EVENT_TIMESTAMP,
    _aggregate_expr,
    _window_clause,
    literal,
    quote,
)
from contextkit.types import (
    String,
    arrow_type,
    dtype_from_duckdb,
    parse_value,
)

if TYPE_CHECKING:
    import duckdb

    from contextkit.framework.workspace import Runtime

# Internal names all start with RESERVED; events columns with that prefix are refused, so an
# internal column can never be confused with one of the events' own.
RESERVED = "__ck_"
ROW = "__ck_row"
EVENT_TS = "__ck_ts"
EVENTS = "__ck_events"
FILE = "__ck_file"
TIME = "__ck_t"
INPUT = "__ck_input"
LOG = "__ck_log"
HIDDEN = "__ck_in__"  # a realtime view's input feature that the result does not show
OFFLINE_STORE = "offline_store"
SOURCE = "source"
INGEST_LOG = "ingest_log"
REALTIME = "realtime"
BATCH_ROWS = 65_536

# Any feature view: batch, stream or realtime.
AnyView = FeatureViewSpec | StreamFeatureViewSpec | RealtimeFeatureViewSpec


@dataclass(frozen=True)
class _ViewRequest:
    view: AnyView
    features: list[str]  # what is computed: the selected features, or all for a realtime input
    use: str  # OFFLINE_STORE, SOURCE, INGEST_LOG or REALTIME
    files: list[Path]


@dataclass
class _Prepared:
    """One run's plan: the query of every SQL-computed column, and what Python adds after."""

    query: str
    columns: list[str]  # the events' own columns, in order
    outputs: list[tuple[AnyView, list[str]]]
    realtime: list[_ViewRequest]
    # (view, feature) -> its column in the query's result (hidden realtime inputs included)
    where: dict[tuple[str, str], str]
    inputs: dict[str, AnyView]  # every view a realtime view reads, by name


class OfflineFeatures:
    """A lazy point-in-time feature set: computed by ``to_pandas``/``to_arrow``/``to_parquet``.

    Columns: the events' own columns, then ``<view>__<feature>`` per feature, in input row order.
    """

    def __init__(
        self,
        ctx: Runtime,
        events: Any,
        refs: list[tuple[AnyView, list[str]]],
        timestamp_key: str,
        from_source: bool | None,
    ) -> None:
        self._ctx = ctx
        self._events = events
        self._refs = refs
        self._from_source = from_source
        self.timestamp_key = timestamp_key
        self._used: dict[str, str] | None = None

    @property
    def feature_columns(self) -> list[str]:
        return [f"{view.name}__{f}" for view, features in self._refs for f in features]

    @property
    def sources_used(self) -> dict[str, str]:
        """Per view, where its rows come from: ``"offline_store"`` or ``"source"`` (batch views),
        ``"ingest_log"`` (stream views) or ``"realtime"`` (computed per row).

        Decided from the events' time range (read on first use) and what was materialized.
        """
        if self._used is None:
            with self._session():
                pass
        assert self._used is not None
        return self._used

    @contextmanager
    def _session(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, _Prepared]]:
        specs = self._ctx.specs()
        with transformations.workspace_session(
            self._ctx.config.root.resolve(), specs.sources, specs.views
        ) as ws:
            yield ws.con, self._prepare(ws, specs)

    def _prepare(self, ws: transformations.Workspace, specs) -> _Prepared:
        columns = _register_events(ws.con, self._events, self.timestamp_key)
        _check_result_names(list(columns), self.feature_columns)
        needed = _needed_views(specs, self._refs)
        for view, _features in needed:
            _check_keys(list(columns), view)
            if isinstance(view, RealtimeFeatureViewSpec):
                _check_request_columns(columns, view)
        lo, hi = ws.con.execute(
            f"SELECT min({EVENT_TS}), max({EVENT_TS}) FROM {EVENTS}"
        ).fetchall()[0]
        requests = [
            _resolve(self._ctx, view, features, self._from_source, lo, hi)
            for view, features in needed
        ]
        self._used = {r.view.name: r.use for r in requests}
        outputs = {(view.name, f) for view, features in self._refs for f in features}
        where = {
            (r.view.name, f): (
                f"{r.view.name}__{f}"
                if (r.view.name, f) in outputs
                else f"{HIDDEN}{r.view.name}__{f}"
            )
            for r in requests
            if r.use != REALTIME
            for f in r.features
        }
        query = self._query(ws, specs, requests, columns, where)
        realtime = [r for r in requests if r.use == REALTIME]
        inputs = {name: specs.feature_views[name] for r in realtime for name in r.view.inputs}
        return _Prepared(query, list(columns), self._refs, realtime, where, inputs)

    def _query(
        self,
        ws: transformations.Workspace,
        specs,
        requests: list[_ViewRequest],
        columns: dict[str, str],
        where: dict[tuple[str, str], str],
    ) -> str:
        parts, selects = [], []
        logs: dict[str, str] = {}
        for i, request in enumerate(requests):
            if request.use == REALTIME:
                continue  # computed in Python from the query's result
            alias = f"{RESERVED}v{i}"
            if request.use == INGEST_LOG:
                source = request.view.source
                if source not in logs:
                    logs[source] = quote(f"{LOG}_{len(logs)}")
                    table = log_arrow(self._ctx, self._ctx.workspace, specs.push_sources[source])
                    ws.con.register(f"{LOG}_{len(logs) - 1}", table)
                join = _stream_join(ws, request, columns, logs[source], alias)
            elif request.view.is_aggregate:
                join = _aggregate_join(ws, request, columns)
            else:
                join = _attribute_join(ws, request, columns)
            parts.append(f"LEFT JOIN ({join}) AS {alias} USING ({ROW})")
            name = request.view.name
            selects += [
                f"{alias}.{quote(f'{name}__{f}')} AS {quote(where[name, f])}"
                for f in request.features
            ]
        event_cols = ", ".join(f"e.{quote(c)}" for c in columns)
        return (
            f"SELECT {', '.join([event_cols, *selects])} FROM {EVENTS} AS e "
            f"{' '.join(parts)} ORDER BY e.{ROW}"
        )

    def sql(self) -> str:
        """The DuckDB query that computes the result (for inspection; realtime views' columns
        are added after it, in Python)."""
        with self._session() as (_con, prepared):
            return prepared.query

    def to_batches(self, batch_size: int = BATCH_ROWS) -> Iterator[Any]:
        """The result as ``pyarrow.RecordBatch``es of up to ``batch_size`` rows, in input order,
        streamed (the query runs once; only one batch is held at a time)."""
        with self._session() as (con, prepared):
            reader = con.sql(prepared.query).to_arrow_reader(batch_size)
            for batch in reader:
                yield _finish(prepared, batch) if prepared.realtime else batch

    def to_arrow(self):
        """The result as a ``pyarrow.Table``."""
        with self._session() as (con, prepared):
            return _arrow(con, prepared)

    def to_pandas(self):
        """The result as a pandas DataFrame (timestamps tz-aware UTC)."""
        with self._session() as (con, prepared):
            if not prepared.realtime:
                return con.sql(prepared.query).df()
            # Converted by DuckDB, as without realtime views, so the dtypes are the same.
            con.register(f"{RESERVED}result", _arrow(con, prepared))
            return con.sql(f"SELECT * FROM {RESERVED}result").df()

    def to_polars(self):
        """The result as a polars DataFrame (needs ``polars`` installed)."""
        try:
            import polars as pl
        except ImportError:
            raise BadRequestError(
                "polars is not installed", hint="pip install polars, or use to_pandas()"
            ) from None
        return pl.from_arrow(self.to_arrow())

    def to_parquet(self, path: str | Path) -> Path:
        """Write the result to a Parquet file, streaming (nothing is held in memory)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._session() as (con, prepared):
            if not prepared.realtime:
                con.execute(f"COPY ({prepared.query}) TO {literal(str(target))} (FORMAT parquet)")
                return target
            import pyarrow.parquet as pq

            reader = con.sql(prepared.query).to_arrow_reader(BATCH_ROWS)
            schema = _finish(prepared, _empty_batch(reader.schema)).schema
            with pq.ParquetWriter(target, schema) as writer:
                for batch in reader:
                    writer.write_batch(_finish(prepared, batch))
        return target


def _arrow(con: duckdb.DuckDBPyConnection, prepared: _Prepared):
    import pyarrow as pa

    if not prepared.realtime:
        return con.sql(prepared.query).to_arrow_table()
    reader = con.sql(prepared.query).to_arrow_reader(BATCH_ROWS)
    schema = _finish(prepared, _empty_batch(reader.schema)).schema
    return pa.Table.from_batches([_finish(prepared, b) for b in reader], schema=schema)


def _empty_batch(schema):
    import pyarrow as pa

    return pa.RecordBatch.from_pylist([], schema=schema)


def _needed_views(specs, refs: list[tuple[AnyView, list[str]]]) -> list[tuple[AnyView, list[str]]]:
    """The views to compute: the asked ones, then any view a realtime view reads (every feature
    of it, as the function gets them all), each once."""
    needed: dict[str, tuple[AnyView, list[str]]] = {}
    for view, features in refs:
        needed[view.name] = (view, list(features))
    for view, _features in refs:
        if not isinstance(view, RealtimeFeatureViewSpec):
            continue
        for name in view.inputs:
            upstream = specs.feature_views[name]
            _view, have = needed.setdefault(name, (upstream, []))
            have.extend(f.name for f in upstream.features if f.name not in have)
    return list(needed.values())


def _check_request_columns(columns: dict[str, str], view: RealtimeFeatureViewSpec) -> None:
    for field in view.request_schema:
        if field.name not in columns:
            raise BadRequestError(
                f"the events have no column {field.name!r}, a request-context field of realtime "
                f"view {view.name!r}",
                hint=f"add a {field.dtype or String} column {field.name!r} to the events: each "
                "row's value is the request context the view's function gets for that event",
            )


def _finish(prepared: _Prepared, batch):
    """The result's columns for one batch of the query: realtime views' features computed per
    row from the batch (the events' request-context columns and the input views' features),
    hidden input columns left out."""
    import pyarrow as pa

    computed: dict[tuple[str, str], Any] = {}
    n = batch.num_rows
    for request in prepared.realtime:
        view = request.view
        assert isinstance(view, RealtimeFeatureViewSpec)
        request_cols = [
            (f.name, f.dtype or String, batch.column(f.name).to_pylist())
            for f in view.request_schema
        ]
        input_cols = []
        for name in view.inputs:
            upstream = prepared.inputs[name]
            input_cols.append(
                [
                    (f.name, batch.column(prepared.where[name, f.name]).to_pylist())
                    for f in upstream.features
                ]
            )
        values: dict[str, list[Any]] = {f: [] for f in request.features}
        for i in range(n):
            context = {
                name: _request_value(view, name, dtype, col[i]) for name, dtype, col in request_cols
            }
            features = [{name: col[i] for name, col in cols} for cols in input_cols]
            out = run_realtime(view, context, features)
            for f in request.features:
                values[f].append(out[f])
        for f in request.features:
            dtype = view.feature(f).dtype or String
            computed[view.name, f] = pa.array(values[f], arrow_type(dtype))
    arrays, names = [], []
    for c in prepared.columns:
        arrays.append(batch.column(c))
        names.append(c)
    for view, features in prepared.outputs:
        for f in features:
            name = f"{view.name}__{f}"
            arrays.append(
                computed[view.name, f] if (view.name, f) in computed else batch.column(name)
            )
            names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _request_value(view: RealtimeFeatureViewSpec, name: str, dtype: str, value: Any) -> Any:
    try:
        return parse_value(dtype, value)
    except ValueError as exc:
        raise BadRequestError(
            f"events column {name!r} holds {value!r}, but realtime view {view.name!r} reads "
            f"{name!r} as {dtype} ({exc})",
            hint=f"convert the events' {name} values to {dtype} first",
        ) from None


def _register_events(
    con: duckdb.DuckDBPyConnection, events: Any, timestamp_key: str
) -> dict[str, str]:
    """Register the events as ``__ck_events``: their columns, a row id and the UTC event time.

    Returns the events' own columns with their DuckDB types, in order.
    """
    import numpy as np
    import pyarrow as pa

    base = None
    if isinstance(events, str | Path):
        with _reading_events(con, str(events)):
            base = _parquet_events(con, str(events))
            if base is None:
                events = _read_parquet_in_order(con, str(events))
    if base is None:
        table = _to_arrow(events, timestamp_key)
        _check_event_names(table.column_names)
        table = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
        con.register(f"{EVENTS}_raw", table)
        base = f"SELECT * FROM {EVENTS}_raw"
    described = con.execute(f"DESCRIBE {base}").fetchall()
    types = {r[0]: r[1] for r in described if r[0] != ROW}
    if timestamp_key not in types:
        raise BadRequestError(
            f"the events have no column {timestamp_key!r}",
            hint=f"pass timestamp_key=... (columns: {', '.join(types)})",
        )
    time = _utc_micros(quote(timestamp_key), types[timestamp_key])
    if time is None:
        raise BadRequestError(
            f"events column {timestamp_key!r} has type {types[timestamp_key]}, not a timestamp",
            hint="convert it first, e.g. pd.to_datetime(events['ts'], utc=True)",
        )
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {EVENTS} AS SELECT *, {time} AS {EVENT_TS} FROM ({base})"
    )
    return types


@contextmanager
def _reading_events(con: duckdb.DuckDBPyConnection, path: str) -> Iterator[None]:
    """DuckDB's errors reading the events' Parquet file(s) as a :class:`BadRequestError` that
    names them (DuckDB's own message quotes the SQL it ran)."""
    import duckdb

    hint = (
        "pass the path of a Parquet file, or a glob of them "
        f"(a relative path is read from {str(Path.cwd())!r})"
    )
    try:
        found = bool(_parquet_files(con, path))
    except duckdb.Error:
        found = True  # not a local path (DuckDB reads URLs too): let the read say what is wrong
    if not found:
        raise BadRequestError(f"no events file matches {path!r}", hint=hint)
    try:
        yield
    except duckdb.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadRequestError(
            f"cannot read the events in {path!r} as Parquet: {reason}", hint=hint
        ) from None


def _parquet_events(con: duckdb.DuckDBPyConnection, path: str) -> str | None:
    """A query of the events in Parquet file(s) with a row id in file-name, then row, order.

    None when the files have a column named ``file_row_number``: DuckDB cannot then add the row
    numbers, and the events are read into Arrow instead.
    """
    scan = f"read_parquet({literal(path)})"
    names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
    _check_event_names(names)
    _check_event_names(_parquet_column_names(con, path))
    if "file_row_number" in {n.lower() for n in names}:
        return None
    return (
        f"SELECT * EXCLUDE ({FILE}, file_row_number), "
        f"row_number() OVER (ORDER BY {FILE}, file_row_number) - 1 AS {ROW} "
        f"FROM read_parquet({literal(path)}, filename = {literal(FILE)}, file_row_number = true)"
    )


def _parquet_files(con: duckdb.DuckDBPyConnection, path: str) -> list[str]:
    query = f"SELECT file FROM glob({literal(path)}) ORDER BY file"
    return [r[0] for r in con.execute(query).fetchall()]


def _parquet_column_names(con: duckdb.DuckDBPyConnection, path: str) -> list[str]:
    """The column names as written in the first file (DuckDB renames ``A`` and ``a`` apart)."""
    import pyarrow.parquet as pq

    files = _parquet_files(con, path)
    try:
        return pq.read_schema(files[0]).names if files else []
    except OSError:  # not a local file (DuckDB reads more than pyarrow does): DuckDB's names
        return []


def _read_parquet_in_order(con: duckdb.DuckDBPyConnection, path: str):
    """The events of Parquet file(s) as one Arrow table, files in name order."""
    import pyarrow as pa

    # A plain scan of one file keeps the file's row order.
    tables = [
        con.sql(f"SELECT * FROM read_parquet({literal(f)})").to_arrow_table()
        for f in _parquet_files(con, path)
    ]
    return pa.concat_tables(tables)


def _utc_micros(column: str, type_name: str) -> str | None:
    """SQL for the column's values as microsecond UTC instants; None if it holds no times."""
    name = type_name.upper()
    if name.endswith("_NS"):  # TIMESTAMP_NS, TIMESTAMPTZ_NS: floor, as a cast would round
        ns = f"epoch_ns({column})"
        return (
            f"CAST(make_timestamp({ns} // 1000 - CAST({ns} % 1000 < 0 AS BIGINT)) AS TIMESTAMPTZ)"
        )
    if name.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"CAST({column} AS TIMESTAMPTZ)"
    if name.startswith("TIMESTAMP") or name == "DATE":  # naive: read as UTC (the session zone)
        return f"CAST(CAST({column} AS TIMESTAMP) AS TIMESTAMPTZ)"
    return None


def _check_event_names(names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        folded = name.lower()
        if folded.startswith(RESERVED):
            raise BadRequestError(
                f"events column {name!r} starts with {RESERVED!r}, a prefix reserved for "
                "contextkit's own columns",
                hint=f"rename that column (any name not starting with {RESERVED})",
            )
        if folded in seen:
            raise BadRequestError(
                f"events columns {seen[folded]!r} and {name!r} have the same name to DuckDB, "
                "which compares names case-insensitively",
                hint="rename one of them",
            )
        seen[folded] = name


def _check_result_names(event_columns: list[str], feature_columns: list[str]) -> None:
    """Every result column must have its own name (DuckDB would rename a clash silently)."""
    features: dict[str, str] = {}
    for name in feature_columns:
        if name.lower() in features:
            raise BadRequestError(
                f"feature columns {features[name.lower()]!r} and {name!r} have the same name "
                "to DuckDB",
                hint="ask for one of the two features only",
            )
        features[name.lower()] = name
    for name in event_columns:
        if name.lower() in features:
            raise BadRequestError(
                f"events column {name!r} has the name of the result's feature column "
                f"{features[name.lower()]!r}",
                hint="rename or drop that events column: the result adds one "
                "<view>__<feature> column per feature",
            )


def _to_arrow(events: Any, timestamp_key: str):
    import pyarrow as pa

    if isinstance(events, pa.Table):
        return events
    if hasattr(events, "to_arrow_table") and hasattr(events, "columns"):  # a DuckDB relation
        return events.to_arrow_table()
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(events, pd.DataFrame):
        _check_event_names([str(c) for c in events.columns])  # before pyarrow's own ValueError
        if timestamp_key in events.columns and events[timestamp_key].dtype == object:
            values = [v for v in events[timestamp_key] if v is not None and v == v]
            aware = {getattr(v, "tzinfo", None) is not None for v in values}
            if len(aware) > 1:
                raise BadRequestError(
                    f"events column {timestamp_key!r} mixes timezone-aware and naive timestamps",
                    hint="make them all aware or all naive (naive timestamps are read as UTC)",
                )
        try:
            return pa.Table.from_pandas(events, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise BadRequestError(
                f"cannot read the events DataFrame: {exc}",
                hint="give each column one type; timestamps as datetime64 (naive = UTC) or "
                "tz-aware datetimes",
            ) from None
    raise BadRequestError(
        f"events must be a pandas DataFrame, a pyarrow Table, a Parquet path or a DuckDB "
        f"relation, got {type(events).__name__}",
    )


def _check_keys(event_columns: list[str], view: FeatureViewSpec) -> None:
    for key in view.join_key_names:
        if key not in event_columns:
            raise BadRequestError(
                f"the events have no column {key!r}, a join key of view {view.name!r}",
                hint=f"add {key} to the events (columns: {', '.join(event_columns)})",
            )


_INTEGER_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}  # fmt: skip


def _is_number(type_name: str) -> bool:
    name = type_name.upper()
    return name in _INTEGER_TYPES or name in ("FLOAT", "DOUBLE") or name.startswith("DECIMAL")


def _event_key(view: FeatureViewSpec, key: str, event_type: str, key_type: str) -> str:
    """The events' ``key`` as a value of the view's key type: the equal value, else NULL.

    A plain CAST would round (1.5 becomes 2: another entity's features) or raise (NaN, out of
    range); converting and back and comparing keeps only exact matches.
    """
    column = f"e.{quote(key)}"
    if event_type == key_type:
        return column
    if event_type == '"NULL"':  # a column of nulls only (e.g. pandas objects, all None)
        return f"CAST(NULL AS {key_type})"
    if _is_number(event_type) and _is_number(key_type):
        converted = f"TRY_CAST({column} AS {key_type})"
        return f"CASE WHEN TRY_CAST({converted} AS {event_type}) = {column} THEN {converted} END"
    dtype = dtype_from_duckdb(key_type) or key_type
    raise BadRequestError(
        f"events column {key!r} has type {event_type}, but view {view.name!r} has {key!r} as a "
        f"{key_type} key",
        hint=f"convert the events' {key} values to {dtype} first",
    )


def _column_types(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE {sql}").fetchall()}


def _rows_sql(files: list[Path]) -> str:
    listed = ", ".join(literal(str(f)) for f in files)
    # The day=... folders are the store's layout, not columns.
    return f"SELECT * FROM read_parquet([{listed}], hive_partitioning = false)"


def _attribute_join(
    ws: transformations.Workspace, request: _ViewRequest, events: dict[str, str]
) -> str:
    view = request.view
    if request.use == OFFLINE_STORE:
        rows = _rows_sql(request.files)
    else:
        rows = transformations.offline_features_sql(ws, view)
    key_types = _column_types(ws.con, rows)
    on = [
        f"{_event_key(view, k, events[k], key_types[k])} = f.{quote(k)}"
        for k in view.join_key_names
    ]
    on.append(f"e.{EVENT_TS} >= f.{EVENT_TIMESTAMP}")
    fresh = "TRUE"
    if view.ttl_seconds:
        fresh = (
            f"f.{EVENT_TIMESTAMP} > e.{EVENT_TS} - to_microseconds({view.ttl_seconds * 1_000_000})"
        )
    cols = ", ".join(
        f"CASE WHEN {fresh} THEN f.{quote(n)} END AS {quote(f'{view.name}__{n}')}"
        for n in request.features
    )
    return (
        f"SELECT e.{ROW}, {cols} FROM {EVENTS} AS e ASOF LEFT JOIN ({rows}) AS f "
        f"ON {' AND '.join(on)}"
    )


def _aggregate_join(
    ws: transformations.Workspace, request: _ViewRequest, events: dict[str, str]
) -> str:
    view = request.view
    if request.use == OFFLINE_STORE:
        inputs = _rows_sql(request.files)
    else:
        inputs = transformations.aggregate_inputs_sql(ws, view)
    key_types = _column_types(ws.con, inputs)
    keys = [quote(k) for k in view.join_key_names]
    event_keys = ", ".join(
        f"{_event_key(view, k, events[k], key_types[k])} AS {quote(k)}" for k in view.join_key_names
    )
    combined = (
        f"SELECT *, TRUE AS {INPUT}, NULL::BIGINT AS {ROW} FROM ("
        f"SELECT * RENAME ({EVENT_TIMESTAMP} AS {TIME}) FROM ({inputs})) "
        f"UNION ALL BY NAME "
        f"SELECT {event_keys}, e.{EVENT_TS} AS {TIME}, FALSE AS {INPUT}, e.{ROW} "
        f"FROM {EVENTS} AS e"
    )
    dtypes = {f.name: f.dtype for f in view.output_schema}
    ttl = view.ttl_seconds or view.max_window_seconds
    partition = ", ".join(keys)
    windows = sorted({f.window_seconds for f in view.features if isinstance(f, AggregateSpec)})
    window_defs = [
        f"w{s} AS (PARTITION BY {partition} ORDER BY {TIME} {_window_clause(s)})"
        for s in sorted({*windows, ttl})
    ]
    present = f"COUNT(*) FILTER (WHERE {INPUT}) OVER w{ttl} > 0"
    exprs = []
    for name in request.features:
        feature = view.feature(name)
        assert isinstance(feature, AggregateSpec)
        column_dtype = dtypes.get(feature.column) if feature.column else None
        expr = _aggregate_expr(
            feature, TIME, column_dtype, where=INPUT, over=f"w{feature.window_seconds}"
        )
        exprs.append(f"CASE WHEN {present} THEN {expr} END AS {quote(f'{view.name}__{name}')}")
    return (
        f"SELECT {ROW}, {', '.join(exprs)} FROM ({combined}) "
        f"WINDOW {', '.join(window_defs)} QUALIFY NOT {INPUT}"
    )


def _stream_join(
    ws: transformations.Workspace,
    request: _ViewRequest,
    events: dict[str, str],
    log: str,
    alias: str,
) -> str:
    """A stream view's features per event row, from its source's events (``log``)."""
    view = request.view
    assert isinstance(view, StreamFeatureViewSpec)
    key_types = _column_types(ws.con, f"SELECT * FROM {log}")
    keys = "".join(
        f", {_event_key(view, k, events[k], key_types[k])} AS {quote(k)}"
        for k in view.join_key_names
    )
    keyed = f"{alias}_events"
    ws.con.execute(
        f"CREATE OR REPLACE TEMP VIEW {keyed} AS "
        f"SELECT e.{ROW}{keys}, e.{EVENT_TS} AS __ts FROM {EVENTS} AS e"
    )
    cols = ", ".join(f"{quote(f)} AS {quote(f'{view.name}__{f}')}" for f in request.features)
    return f"SELECT {ROW}, {cols} FROM ({stream_offline_sql(view, keyed, log, ROW)})"


def resolve_refs(
    ctx: Runtime, service_or_views: str | Sequence[str]
) -> list[tuple[AnyView, list[str]]]:
    """The views and features of a service, or of the named views (all their features)."""
    specs = ctx.specs()
    if isinstance(service_or_views, str) and service_or_views in specs.services:
        refs = [(r.view, r.features) for r in specs.services[service_or_views].features]
    else:
        names = [service_or_views] if isinstance(service_or_views, str) else service_or_views
        refs = [(n, None) for n in names]
    return select_features(ctx, refs)


def select_features(
    ctx: Runtime, refs: Sequence[tuple[str, Sequence[str] | None]]
) -> list[tuple[AnyView, list[str]]]:
    """``(view name, features or None for all)`` pairs as specs and feature lists, each view once
    (the first time it is named, with the union of the features asked for)."""
    views = ctx.specs().feature_views
    out: dict[str, tuple[AnyView, list[str]]] = {}
    for name, selected in refs:
        view = views.get(name)
        if view is None:
            specs = ctx.specs()
            raise NotFoundError(
                f"no service or feature view named {name!r} in workspace {ctx.workspace!r}",
                hint="services: "
                + (", ".join(sorted(specs.services)) or "none")
                + "; views: "
                + (", ".join(sorted(views)) or "none"),
            )
        _view, features = out.setdefault(name, (view, []))
        for feature in selected or [f.name for f in view.features]:
            if feature not in features:
                features.append(feature)
    return list(out.values())


def _resolve(
    ctx: Runtime,
    view: AnyView,
    features: list[str],
    from_source: bool | None,
    earliest: datetime | None,
    latest: datetime | None,
) -> _ViewRequest:
    from contextkit.compute.layout import inputs_table, offline_table

    if isinstance(view, StreamFeatureViewSpec):
        return _ViewRequest(view, features, INGEST_LOG, [])
    if isinstance(view, RealtimeFeatureViewSpec):
        return _ViewRequest(view, features, REALTIME, [])
    table = inputs_table if view.is_aggregate else offline_table
    files = ctx.offline.files(table(ctx.workspace, view.name))
    if from_source:
        return _ViewRequest(view, features, SOURCE, files)
    if from_source is False:
        if not files:
            raise NotFoundError(
                f"view {view.name!r} has no offline data",
                hint="materialize it first, or pass from_source=True",
            )
        return _ViewRequest(view, features, OFFLINE_STORE, _present(view, files))
    covered = bool(files) and earliest is not None and _covered(ctx, view, earliest, latest)
    if not covered:
        return _ViewRequest(view, features, SOURCE, files)
    return _ViewRequest(view, features, OFFLINE_STORE, _present(view, files))


def _present(view: AnyView, files: list[Path]) -> list[Path]:
    """``files``, once each is known to be on disk: the offline store lists them, and one
    deleted by hand must be an error that says so, not DuckDB's, and never a silent gap."""
    gone = [f for f in files if not f.exists()]
    if gone:
        raise StoreUnavailableError(
            f"{len(gone)} of the {len(files)} offline file(s) of view {view.name!r} are gone, "
            f"such as {str(gone[0])!r}",
            hint=f"rebuild them with `contextkit materialize {view.name} --full`, or pass "
            "from_source=True to compute the features from the sources",
        )
    return files


def _covered(ctx: Runtime, view: FeatureViewSpec, earliest: datetime, latest: datetime) -> bool:
    """Whether the offline store holds every row the events need for this view.

    Needed: the view's rows from ``earliest`` less its lookback (the largest window or ttl; for
    an attribute view without ttl its whole history, as the latest row may be of any age) up to
    ``latest``. Held: the ranges of the successful jobs since the last full one, provided no job
    of another definition ran since (it wrote its own rows).
    """
    from contextkit.compute.materialize import spec_hash
    from contextkit.stores.registry import COMPLETED_STATUSES

    current = spec_hash(view)
    ranges: list[tuple[datetime | None, datetime]] = []
    for job in ctx.registry.list_jobs(ctx.workspace, view.name, limit=500):
        if job.status == "failed":  # it published nothing that is read here
            continue
        if job.spec_hash != current:  # also one still running (or that crashed while writing)
            return False
        if job.status not in COMPLETED_STATUSES or not job.range_end:
            continue  # "warning" jobs (an expectation failed, data written) count as completed
        start = datetime.fromisoformat(job.range_start) if job.range_start else None
        ranges.append((start, datetime.fromisoformat(job.range_end)))
        if job.details.get("full"):
            break
    else:
        return False  # no full job (among the last 500): what came before is unknown
    needed = None
    if view.is_aggregate or view.ttl_seconds:
        lookback = max(view.max_window_seconds, view.ttl_seconds or 0)
        try:
            needed = earliest - timedelta(seconds=lookback)
        except OverflowError:  # before datetime.min: the whole history is needed
            needed = None
    return _holds(ranges, needed, latest)


def _holds(ranges: list[tuple[datetime | None, datetime]], start: datetime | None, last) -> bool:
    """Whether the ranges ``[s, e)`` (``s`` None: from the beginning) hold all of ``[start, last]``
    (``start`` None: from the beginning) without a gap."""
    spans: list[list] = []
    for s, e in sorted(ranges, key=lambda r: (r[0] is not None, r[0])):
        if spans and (s is None or s <= spans[-1][1]):
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    return any((s is None or (start is not None and s <= start)) and last < e for s, e in spans)
