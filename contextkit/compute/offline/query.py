"""The query of one point-in-time run over the registered events, and the realtime views'
columns computed per Arrow batch of its result: shared by the local engine
(:class:`~contextkit.compute.offline.features.OfflineFeatures`) and each Ray task
(:mod:`contextkit.compute.ray.offline`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from contextkit.compute.offline.joins import aggregate_join, attribute_join, stream_join
from contextkit.compute.offline.reserved import (
    BATCH_ROWS,
    EVENTS,
    INGEST_LOG,
    LOG,
    REALTIME,
    RESERVED,
    ROW,
    JoinPlan,
    Prepared,
)
from contextkit.errors import BadRequestError
from contextkit.framework import transformations
from contextkit.framework.realtime import run_realtime
from contextkit.framework.specs import RealtimeFeatureViewSpec
from contextkit.framework.transformations import quote
from contextkit.types import String, arrow_type, parse_value

if TYPE_CHECKING:
    import duckdb


def prepare_query(
    ws: transformations.Workspace, plan: JoinPlan, columns: dict[str, str], with_row: bool = False
) -> Prepared:
    """The query of one run over the events registered as ``__ck_events`` (all of them, or one
    partition's on Ray), with the row id as its last column when ``with_row``."""
    parts, selects = [], []
    logs: dict[str, str] = {}
    for i, request in enumerate(plan.requests):
        if request.use == REALTIME:
            continue  # computed in Python from the query's result
        alias = f"{RESERVED}v{i}"
        if request.use == INGEST_LOG:
            source = request.view.source
            if source not in logs:
                logs[source] = quote(f"{LOG}_{len(logs)}")
                ws.con.register(f"{LOG}_{len(logs) - 1}", plan.logs[source])
            join = stream_join(ws, request, columns, logs[source], alias)
        elif request.view.is_aggregate:
            join = aggregate_join(ws, request, columns)
        else:
            join = attribute_join(ws, request, columns)
        parts.append(f"LEFT JOIN ({join}) AS {alias} USING ({ROW})")
        name = request.view.name
        selects += [
            f"{alias}.{quote(f'{name}__{f}')} AS {quote(plan.where[name, f])}"
            for f in request.features
        ]
    event_cols = [f"e.{quote(c)}" for c in columns]
    if with_row:
        selects.append(f"e.{ROW}")
    query = (
        f"SELECT {', '.join([*event_cols, *selects])} FROM {EVENTS} AS e "
        f"{' '.join(parts)} ORDER BY e.{ROW}"
    )
    realtime = [r for r in plan.requests if r.use == REALTIME]
    return Prepared(query, list(columns), plan.outputs, realtime, plan.where, plan.inputs)


def arrow_result(con: duckdb.DuckDBPyConnection, prepared: Prepared):
    import pyarrow as pa

    if not prepared.realtime:
        return con.sql(prepared.query).to_arrow_table()
    reader = con.sql(prepared.query).to_arrow_reader(BATCH_ROWS)
    schema = finish(prepared, empty_batch(reader.schema)).schema
    return pa.Table.from_batches([finish(prepared, b) for b in reader], schema=schema)


def empty_batch(schema):
    import pyarrow as pa

    return pa.RecordBatch.from_pylist([], schema=schema)


def finish(prepared: Prepared, batch):
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
