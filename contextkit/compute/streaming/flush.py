"""The ingest log's offline side: flushing logged rows to the offline store as Parquet, and
reading every event of a push source (batch source history, flushed Parquet, unflushed log) as
Arrow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contextkit.compute.layout import log_table
from contextkit.compute.streaming.durable import ingest_log
from contextkit.compute.streaming.history import batch_rows, history, log_schema
from contextkit.compute.streaming.records import from_us, stored_value
from contextkit.framework.specs import PushSourceSpec
from contextkit.types import Bool, String, Timestamp

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime


def log_arrow(ctx: Runtime, workspace: str, source: PushSourceSpec):
    """Every event of a push source as one Arrow table, with ``__seq`` (arrival order): the
    batch source's history (its rows no logged record cancels, negative seqs in file order: see
    :mod:`~contextkit.compute.streaming.history`) and every logged record (:func:`logged_events`).
    """
    import pyarrow as pa

    logged = logged_events(ctx, workspace, source)
    batch = batch_rows(ctx, source)
    if batch is None or not batch.num_rows:
        return logged
    return pa.concat_tables([history(source, batch, logged), logged])


def logged_events(ctx: Runtime, workspace: str, source: PushSourceSpec):
    """Every record logged for a push source, in seq order, as an Arrow table with ``__seq``:
    the Parquet log (what :func:`flush_log` moved there) and the rows of the ingest log not
    flushed yet. A row flushed twice (a crash between the Parquet write and the watermark) is
    read once."""
    import pyarrow as pa

    from contextkit.framework import transformations

    schema = log_schema(source)
    parts = []
    flushed = ctx.offline.dataset(log_table(workspace, source.name))  # local or S3
    if flushed is not None:
        parts.append(flushed.to_table(columns=schema.names).cast(schema))
    unflushed = _logged_rows(ctx, workspace, source, _flushed_seq(ctx, workspace, source))
    if unflushed.num_rows:
        parts.append(unflushed)
    if not parts:
        return schema.empty_table()
    if flushed is None:  # the ingest log alone: each seq once already
        return parts[0]
    table = pa.concat_tables(parts)
    con = transformations.connect_duckdb()
    try:  # each seq once, in order
        con.register("__log", table)
        return (
            con.sql(
                "SELECT * FROM __log QUALIFY row_number() OVER (PARTITION BY __seq) = 1 "
                "ORDER BY __seq"
            )
            .to_arrow_table()
            .cast(schema)
        )
    finally:
        con.close()


def flush_log(ctx: Runtime, workspace: str, source: PushSourceSpec) -> int:
    """Append the log's rows not yet in the offline store to it, as one Parquet file of the
    offline table ``<workspace>__<source>__log``; returns how many rows. The rows stay in the
    log (their idempotency keys are checked there); readers take the log's rows after the
    flushed watermark. ``materialize`` and the scheduler run it for every push source; one
    flusher at a time holds the log (on every node, for a shared PostgreSQL log), so a row is
    flushed once."""
    table = log_table(workspace, source.name)
    with ingest_log(ctx).exclusive(table):
        after = _flushed_seq(ctx, workspace, source)
        rows = _logged_rows(ctx, workspace, source, after)
        if not rows.num_rows:
            return 0
        ctx.offline.append(table, rows)
        last = max(rows.column("__seq").to_pylist())
        ctx.registry.set_setting(_flushed_key(workspace, source), str(last))
        return rows.num_rows


def flushed_log_rows(
    ctx: Runtime,
    workspace: str,
    source: PushSourceSpec,
    after: int,
    before: int | None,
    limit: int,
) -> list[tuple]:
    """Rows of the offline Parquet log with ``after < seq < before`` (``before`` None: up to
    the flushed watermark), in seq order, each seq once, at most ``limit``: ``(seq, *values)``
    in the stores' native form, as :meth:`IngestLog.read_log` gives them. For rows the ingest
    log no longer holds (pruned after their flush)."""
    import pyarrow.dataset as ds

    if before is None:
        before = _flushed_seq(ctx, workspace, source) + 1
    if before <= after + 1:
        return []
    data = ctx.offline.dataset(log_table(workspace, source.name))
    if data is None:
        return []
    seq = ds.field("__seq")
    names = [c.name for c in source.columns]
    # Seqs have no holes, so this window holds at most ``limit`` seqs (row-group statistics on
    # __seq let the scan skip the files outside it).
    window = (seq > after) & (seq < min(before, after + limit + 1))
    found = data.to_table(columns=["__seq", *names], filter=window)
    found = found.sort_by("__seq")
    out: list[tuple] = []
    last = None
    dtypes = [c.dtype or String for c in source.columns]
    for row in found.to_pylist():
        if row["__seq"] == last:  # flushed twice (a crash before the watermark): once
            continue
        last = row["__seq"]
        out.append((last, *(stored_value(t, row[n]) for t, n in zip(dtypes, names, strict=True))))
        if len(out) == limit:
            break
    return out


def _flushed_key(workspace: str, source: PushSourceSpec) -> str:
    return f"ingest_flushed_seq:{workspace}:{source.name}"


def _flushed_seq(ctx: Runtime, workspace: str, source: PushSourceSpec) -> int:
    return int(ctx.registry.get_setting(_flushed_key(workspace, source)) or 0)


def _logged_rows(ctx: Runtime, workspace: str, source: PushSourceSpec, after_seq: int):
    """The log's rows after ``after_seq``, typed, as an Arrow table with ``__seq``."""
    import pyarrow as pa

    schema = log_schema(source)
    rows = ingest_log(ctx).read_log(
        log_table(workspace, source.name), [c.name for c in source.columns], after_seq, 2**62
    )
    if not rows:
        return schema.empty_table()
    columns = list(zip(*rows, strict=True))
    arrays = []
    for i, c in enumerate(source.columns, start=1):
        values = columns[i]
        if c.dtype == Timestamp:
            values = [None if v is None else from_us(v) for v in values]
        elif c.dtype == Bool:
            values = [None if v is None else bool(v) for v in values]
        arrays.append(pa.array(values, schema.field(c.name).type))
    arrays.append(pa.array(columns[0], pa.int64()))
    return pa.table(arrays, schema=schema)
