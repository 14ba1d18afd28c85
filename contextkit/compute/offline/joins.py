"""The point-in-time SQL per view kind: attribute views (ASOF join within the ttl), aggregate
views (windows ending at each event) and stream views (their source's events).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contextkit.compute.offline.reserved import (
    EVENT_TS,
    EVENTS,
    INPUT,
    OFFLINE_STORE,
    ROW,
    TIME,
    ViewRequest,
)
from contextkit.compute.streaming import stream_offline_sql
from contextkit.errors import BadRequestError
from contextkit.framework import transformations
from contextkit.framework.specs import (
    AggregateSpec,
    FeatureViewSpec,
    StreamFeatureViewSpec,
)
from contextkit.framework.transformations import (
    EVENT_TIMESTAMP,
    aggregate_expr,
    quote,
    window_clause,
)
from contextkit.types import (
    dtype_from_duckdb,
)

if TYPE_CHECKING:
    import duckdb


def check_keys(event_columns: list[str], view: FeatureViewSpec) -> None:
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


def _rows_sql(ws: transformations.Workspace, request: ViewRequest) -> str:
    """A query of the view's offline rows: its dataset (local files or S3 objects, listed by
    the store's manifest) registered into the job's DuckDB connection."""
    name = f"__offline__{request.view.name}"
    ws.con.register(name, request.dataset)
    return f"SELECT * FROM {quote(name)}"


def _bucketed(
    request: ViewRequest, rows: str, events: dict[str, str], key_types: dict[str, str]
) -> str:
    """``rows`` less the entities of other partitions (Ray: ``request.bucket``), when the
    events' keys have the rows' key types: the same values then hash the same."""
    if request.bucket is None:
        return rows
    keys, parts, index = request.bucket
    if any(events.get(k) != key_types.get(k) for k in keys):
        return rows
    hashed = ", ".join(quote(k) for k in keys)
    return f"SELECT * FROM ({rows}) WHERE hash({hashed}) % {parts} = {index}"


def attribute_join(
    ws: transformations.Workspace, request: ViewRequest, events: dict[str, str]
) -> str:
    view = request.view
    if request.use == OFFLINE_STORE:
        rows = _rows_sql(ws, request)
    else:
        rows = transformations.offline_features_sql(ws, view)
    key_types = _column_types(ws.con, rows)
    rows = _bucketed(request, rows, events, key_types)
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


def aggregate_join(
    ws: transformations.Workspace, request: ViewRequest, events: dict[str, str]
) -> str:
    view = request.view
    if request.use == OFFLINE_STORE:
        inputs = _rows_sql(ws, request)
    else:
        inputs = transformations.aggregate_inputs_sql(ws, view)
    key_types = _column_types(ws.con, inputs)
    inputs = _bucketed(request, inputs, events, key_types)
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
        f"w{s} AS (PARTITION BY {partition} ORDER BY {TIME} {window_clause(s)})"
        for s in sorted({*windows, ttl})
    ]
    present = f"COUNT(*) FILTER (WHERE {INPUT}) OVER w{ttl} > 0"
    exprs = []
    for name in request.features:
        feature = view.feature(name)
        assert isinstance(feature, AggregateSpec)
        column_dtype = dtypes.get(feature.column) if feature.column else None
        expr = aggregate_expr(
            feature, TIME, column_dtype, where=INPUT, over=f"w{feature.window_seconds}"
        )
        exprs.append(f"CASE WHEN {present} THEN {expr} END AS {quote(f'{view.name}__{name}')}")
    return (
        f"SELECT {ROW}, {', '.join(exprs)} FROM ({combined}) "
        f"WINDOW {', '.join(window_defs)} QUALIFY NOT {INPUT}"
    )


def stream_join(
    ws: transformations.Workspace,
    request: ViewRequest,
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
