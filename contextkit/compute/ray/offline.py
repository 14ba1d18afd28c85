"""Point-in-time joins on Ray: the events split by entity hash, each partition joined in DuckDB
in a Ray task, the rows given back in the caller's order.

How one run goes (``OfflineFeatures`` with ``compute: ray``):

1. The driver registers the events exactly as the local engine does (the same row ids, the same
   UTC event times), checks them against the request and decides where each view is read from
   (:class:`~contextkit.compute.offline.reserved.JoinPlan`; stream views' ingest logs are read
   here, once).
2. It streams the events once, in Arrow batches, and deals each row to partition
   ``hash(join keys) % partitions`` (the keys of the first asked view; an entity's events all go
   to one partition). Each partition's rows are put in Ray's object store in pieces of at most
   :data:`PIECE_ROWS` rows, so the driver holds one batch and one piece per partition at a time.
3. One task per partition reads the same offline Parquet data (local path or ``s3://``) or the
   same sources as the local engine, runs the local engine's query over its events
   (:func:`~contextkit.compute.offline.features.prepare_query`, realtime views included) and
   returns its rows cut into row-id ranges of :data:`CHUNK_ROWS` (one Ray object per range).
4. The driver takes range 0 of every partition, sorts those rows by row id and hands them on,
   then range 1, and so on: the caller's order, with the driver holding one range at a time
   whatever the number of events.

A task that fails for a data reason fails the run with the partition and the first bad value
named; a task whose worker dies is run again by Ray (``task_options``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.compute.offline.events import register_events
from contextkit.compute.offline.query import arrow_result, finish, prepare_query
from contextkit.compute.offline.reserved import (
    BATCH_ROWS,
    EVENT_TS,
    EVENTS,
    RESERVED,
    ROW,
    JoinPlan,
    Prepared,
)
from contextkit.compute.ray.runtime import cancel, connect, partition_count, run_tasks, task_options
from contextkit.errors import BadRequestError, ContextKitError
from contextkit.framework import transformations
from contextkit.framework.specs import RealtimeFeatureViewSpec
from contextkit.framework.transformations import quote

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from contextkit.config import ComputeConfig

# Rows of one piece of a partition's events put in the object store by the driver.
PIECE_ROWS = 65_536
# Rows of one range of row ids: what the driver sorts and hands on at a time.
CHUNK_ROWS = 262_144
PART = f"{RESERVED}part"


def join_on_ray(
    features: Any, compute: ComputeConfig, chunk_rows: int | None = None
) -> Iterator[pa.Table]:
    """The result of ``features`` (an ``OfflineFeatures``) as Arrow tables in input order (at
    least one, maybe empty), computed by Ray tasks, one per entity-hash partition of the events;
    ``chunk_rows`` rows of the result at a time (default :data:`CHUNK_ROWS`)."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    ray = connect(compute)
    runtime = features._ctx
    specs = runtime.specs()
    root = runtime.config.root.resolve()
    with transformations.workspace_session(root, specs.sources, specs.views) as ws:
        columns = register_events(ws.con, features._events, features.timestamp_key)
        plan = features._plan(ws.con, specs, columns)
        total = ws.con.execute(f"SELECT count(*) FROM {EVENTS}").fetchall()[0][0]
        if total == 0:  # nothing to spread: the local query gives the empty result's schema
            prepared = prepare_query(ws, plan, columns)
            yield arrow_result(ws.con, prepared)
            return
        parts = partition_count(compute, ray, total)
        keys = _partition_keys(plan)
        pieces, schema = _scatter(ray, ws.con, keys, parts)
    chunks = -(-total // chunk_rows)
    plan_ref = ray.put(plan)
    task = ray.remote(_join_partition)
    outputs = []
    for index in range(parts):
        refs = task.options(**task_options(num_returns=chunks)).remote(
            index, parts, keys, pieces[index], schema, plan_ref, root, specs.sources,
            specs.views, chunk_rows, chunks,
        )  # fmt: skip
        outputs.append(refs if chunks > 1 else [refs])
    del pieces  # the tasks hold them now
    try:
        for chunk in range(chunks):
            wanted = [refs[chunk] for refs in outputs]
            tables = run_tasks(ray, wanted, what="point-in-time join")
            for refs in outputs:
                refs[chunk] = None  # let the object store free this range once handed on
            yield _in_order(tables)
            del tables, wanted
    finally:
        cancel(ray, [refs[-1] for refs in outputs if refs[-1] is not None])


def _partition_keys(plan: JoinPlan) -> list[str]:
    """The events' columns an entity is hashed on: the join keys of the first asked view that
    has any (a realtime view's: those of its first input)."""
    for request in plan.requests:
        view = request.view
        if isinstance(view, RealtimeFeatureViewSpec):
            continue
        if view.join_key_names:
            return list(view.join_key_names)
    return []


def _scatter(
    ray: Any, con: duckdb.DuckDBPyConnection, keys: list[str], parts: int
) -> tuple[list[list[Any]], pa.Schema]:
    """The events dealt to ``parts`` partitions by entity hash, as object-store pieces per
    partition (in row order), and the schema of the pieces."""
    import pyarrow as pa
    import pyarrow.compute as pc

    hashed = ", ".join(quote(k) for k in keys) if keys else ROW
    query = f"SELECT *, CAST(hash({hashed}) % {parts} AS INTEGER) AS {PART} FROM {EVENTS}"
    reader = con.sql(query).to_arrow_reader(PIECE_ROWS)
    schema = reader.schema.remove(reader.schema.get_field_index(PART))
    pieces: list[list[Any]] = [[] for _ in range(parts)]
    held: list[list[pa.RecordBatch]] = [[] for _ in range(parts)]
    rows = [0] * parts

    def flush(index: int) -> None:
        if rows[index]:
            pieces[index].append(ray.put(pa.Table.from_batches(held[index], schema=schema)))
            held[index], rows[index] = [], 0

    for batch in reader:
        part = batch.column(PART)
        batch = batch.drop_columns([PART])
        for index in range(parts):
            mine = batch.filter(pc.equal(part, index))
            if mine.num_rows:
                held[index].append(mine)
                rows[index] += mine.num_rows
                if rows[index] >= PIECE_ROWS:
                    flush(index)
    for index in range(parts):
        flush(index)
    return pieces, schema


def _in_order(tables: list[pa.Table]) -> pa.Table:
    """One range of row ids from every partition, sorted by row id, without it."""
    import pyarrow as pa

    table = pa.concat_tables(tables)
    order = table.column(ROW).to_numpy().argsort(kind="stable")
    return table.take(order).drop_columns([ROW])


def _join_partition(
    index: int,
    parts: int,
    keys: list[str],
    pieces: list[Any],
    schema: pa.Schema,
    plan: JoinPlan,
    root: Path,
    sources: dict[str, Any],
    views: dict[str, Any],
    chunk_rows: int,
    chunks: int,
) -> Any:
    """One partition's point-in-time join (runs in a Ray task): its rows cut into the
    ``chunks`` ranges of row ids, one return value each."""
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset  # noqa: F401 - DuckDB scans a dataset only once this is imported
    import ray

    events = pa.concat_tables(ray.get(list(pieces))) if pieces else schema.empty_table()
    where = f"partition {index + 1} of {parts} (events whose {', '.join(keys) or 'row'} hash to it)"
    try:
        with transformations.workspace_session(root, sources, views, threads=1) as ws:
            ws.con.register(EVENTS, events)
            described = ws.con.execute(f"DESCRIBE SELECT * FROM {EVENTS}").fetchall()
            columns = {r[0]: r[1] for r in described if r[0] not in (ROW, EVENT_TS)}
            prepared = prepare_query(ws, _bucketed(plan, keys, parts, index), columns, True)
            result = _with_row(ws.con, prepared)
    except ContextKitError as exc:
        raise _naming(exc, where) from None
    except duckdb.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadRequestError(
            f"{where}: the point-in-time join failed: {reason}",
            hint="check the events' values in that partition against the views' key and "
            "request-context types",
        ) from None
    rows = result.column(ROW).to_numpy()
    bounds = rows.searchsorted([chunk_rows * (c + 1) for c in range(chunks)], side="left")
    out, start = [], 0
    for end in bounds:
        out.append(result.slice(start, int(end) - start))
        start = int(end)
    return tuple(out) if chunks > 1 else out[0]


def _bucketed(plan: JoinPlan, keys: list[str], parts: int, index: int) -> JoinPlan:
    """The plan for one partition: views keyed like the partitions read only its entities."""
    requests = [
        replace(r, bucket=(tuple(keys), parts, index))
        if keys and list(getattr(r.view, "join_key_names", [])) == keys
        else r
        for r in plan.requests
    ]
    return replace(plan, requests=requests)


def _with_row(con: duckdb.DuckDBPyConnection, prepared: Prepared) -> pa.Table:
    """The query's result in row-id order, the row id last (realtime columns computed)."""
    import pyarrow as pa

    if not prepared.realtime:
        return con.sql(prepared.query).to_arrow_table()
    reader = con.sql(prepared.query).to_arrow_reader(BATCH_ROWS)
    batches = []
    for batch in reader:
        finished = finish(prepared, batch)
        batches.append(finished.append_column(ROW, batch.column(ROW)))
    if not batches:
        empty = pa.RecordBatch.from_pylist([], schema=reader.schema)
        finished = finish(prepared, empty)
        return pa.Table.from_batches([finished.append_column(ROW, empty.column(ROW))])
    return pa.Table.from_batches(batches)


def _naming(exc: ContextKitError, where: str) -> ContextKitError:
    """The same error, its message led by the partition it came from."""
    named = copy.copy(exc)
    named.message = f"{where}: {exc.message}"
    named.args = (named.message,)
    return named
