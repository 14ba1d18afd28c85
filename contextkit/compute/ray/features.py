"""Batch feature views on Ray: the local engine's SQL, per entity-hash partition, in Ray tasks.

A job is split into ``n`` partitions by a hash of the view's join keys. Each Ray task opens the
repo's sources itself (files local to the node or ``s3://``, database sources by range), keeps
the rows of its entities (the view's transformation output filtered to its bucket), and runs the
very queries the local engine runs (:mod:`contextkit.framework.transformations`): the offline
feature rows, an aggregate view's input rows, and the online latest values. Every window and
every latest value is per entity, so an entity's rows never span two partitions and windows that
cross any time edge stay exact: the union of the partitions is the local engine's result.

Tasks return Arrow tables through Ray's object store. The driver (the caller of
:func:`contextkit.compute.materialize.materialize_view`) streams them, one partition at a time,
into the same staged offline write and online replacement the local engine uses, and commits
once: a failed or cancelled job publishes nothing. The stores' staging API takes one query on
the driver's DuckDB connection, so rows pass through the driver; they are not collected into one
table there (each partition is read from the object store as DuckDB scans it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from contextkit.compute.ray.runtime import connect, partition_count, run_tasks, task_options
from contextkit.config import ComputeConfig
from contextkit.errors import ContextKitError, StoreError
from contextkit.framework import transformations
from contextkit.framework.specs import FeatureViewSpec, FileSourceSpec
from contextkit.framework.transformations import quote

OFFLINE, INPUTS, ONLINE = "offline", "inputs", "online"


class _PartitionWorkspace(transformations.Workspace):
    """A workspace whose view of interest yields only the rows of one entity-hash bucket
    (upstream views, read through it, stay whole: their keys may differ)."""

    def __init__(self, *args: Any, view: str, keys: list[str], bucket: int, buckets: int):
        super().__init__(*args)
        self._view, self._bucket, self._buckets = view, bucket, buckets
        self._hash = f"hash({', '.join(quote(k) for k in keys)})"

    def transformation_sql(self, view, start=None, end=None):
        sql = super().transformation_sql(view, start, end)
        if view.name != self._view or self._buckets == 1:
            return sql
        return f"SELECT * FROM ({sql}) WHERE {self._hash} % {self._buckets} = {self._bucket}"


def bucket_rows(
    root: Path,
    sources: dict[str, FileSourceSpec],
    views: dict[str, FeatureViewSpec],
    view: FeatureViewSpec,
    start: datetime | None,
    end: datetime,
    *,
    offline: str | None,
    online: str | None,
    bucket: int,
    buckets: int,
) -> dict[str, Any]:
    """One partition's rows as Arrow tables, typed as the stores keep them: ``offline`` (feature
    rows of ``[start, end)``), ``inputs`` (an aggregate view's input rows) and ``online`` (the
    latest values as of ``end``). ``offline``/``online``: the typed column list the local
    engine selects for that store (None: not wanted). What a Ray task runs; a pure function of
    its arguments, so a task run again after its worker died returns the same rows."""
    out: dict[str, Any] = {}
    con = transformations.connect_duckdb(threads=1)  # one task, one CPU
    try:
        ws = _PartitionWorkspace(
            con, root, sources, views, view=view.name, keys=view.join_key_names,
            bucket=bucket, buckets=buckets,
        )  # fmt: skip
        if offline is not None:
            rows = transformations.offline_features_sql(ws, view, start, end)
            out[OFFLINE] = con.sql(f"SELECT {offline} FROM ({rows})").to_arrow_table()
            if view.is_aggregate:
                out[INPUTS] = con.sql(
                    transformations.aggregate_inputs_sql(ws, view, start, end)
                ).to_arrow_table()
        if online is not None:
            rows = transformations.online_features_sql(ws, view, end)
            out[ONLINE] = con.sql(f"SELECT {online} FROM ({rows})").to_arrow_table()
    finally:
        con.close()
    return out


def _partition_task(view_name: str, bucket: int, buckets: int, args: dict[str, Any]):
    """The Ray task: :func:`bucket_rows`, with a data error named by view and partition.
    Returns ``(row counts, offline, inputs, online)``, four objects, so the driver can wait on
    the small first one and read the tables one at a time."""
    try:
        rows = bucket_rows(bucket=bucket, buckets=buckets, **args)
    except ContextKitError:
        raise
    except Exception as exc:
        raise partition_error(view_name, bucket, buckets, exc) from None
    counts = {name: table.num_rows for name, table in rows.items()}
    return counts, rows.get(OFFLINE), rows.get(INPUTS), rows.get(ONLINE)


def partition_error(view: str, bucket: int, buckets: int, exc: BaseException) -> StoreError:
    """A partition that failed for a data reason: the view, the partition and DuckDB's message,
    which names the first value it could not use (a string it could not cast, say)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return StoreError(
        f"materializing {view!r} failed in partition {bucket} of {buckets} (entities by join-key "
        f"hash) on the Ray engine: {type(exc).__name__}: {first}"[:800],
        hint="a row of the view's sources does not fit the view (a value that cannot be cast, a "
        "type error); fix the data or the view's SQL. Nothing was published.",
        details={"view": view, "partition": bucket, "partitions": buckets, "error": first},
    )


@dataclass
class PartitionedRows:
    """The partitions' results, still in Ray's object store: each table kind is read back as
    one Arrow stream that DuckDB scans once (see :meth:`query`)."""

    ray: Any
    refs: dict[str, list[Any]]
    counts: list[dict[str, int]]
    partitions: int
    _registered: list[str] = field(default_factory=list)

    def rows(self, kind: str) -> int:
        return sum(c.get(kind, 0) for c in self.counts)

    def query(self, con, kind: str) -> str:
        """A query over every partition's ``kind`` rows, registered in ``con`` as a stream that
        fetches one partition at a time (DuckDB reads it once, as stage_range and the online
        replacement do)."""
        import pyarrow as pa

        refs = self.refs[kind]
        first = self.ray.get(refs[0])
        schema = first.schema

        def batches() -> Iterator[Any]:
            for i, ref in enumerate(refs):
                table = first if i == 0 else self.ray.get(ref)
                if table.schema != schema:
                    table = table.cast(schema)
                yield from table.to_batches()
                del table

        name = f"__ray_{kind}_rows"
        con.register(name, pa.RecordBatchReader.from_batches(schema, batches()))
        self._registered.append(name)
        return f"SELECT * FROM {quote(name)}"


def _collect_errors(ray: Any, outputs: list[Any]) -> None:
    """Read the errors of a failed task's other results (its tables), so Ray does not log each
    one as an unhandled error; the tables of tasks that succeeded are left unread."""
    for refs in outputs:
        try:
            ray.get(refs[0], timeout=0)
            continue  # succeeded: its tables are left unread (and freed)
        except Exception:  # noqa: BLE001 - failed, cancelled or still pending
            pass
        for ref in refs[1:]:  # the same error (a pending one times out at once)
            with contextlib.suppress(Exception):
                ray.get(ref, timeout=0)


def run_partitions(
    config: ComputeConfig,
    *,
    root: Path,
    sources: dict[str, FileSourceSpec],
    views: dict[str, FeatureViewSpec],
    view: FeatureViewSpec,
    start: datetime | None,
    end: datetime,
    offline: str | None,
    online: str | None,
    check: Callable[[], None],
) -> PartitionedRows:
    """Run the view's partitions on Ray and wait for them (``check()`` raises once the job is
    cancelled: the tasks still running are cancelled). ``offline``/``online``: the typed
    columns of each store's rows (see :func:`bucket_rows`; None: that store is not written).
    Raises the first partition's data error, or :class:`~contextkit.errors.ComputeError` when
    the cluster cannot run the job."""
    ray = connect(config)
    buckets = partition_count(config, ray)
    args = {
        "root": root,
        "sources": sources,
        "views": views,
        "view": view,
        "start": start,
        "end": end,
        "offline": offline,
        "online": online,
    }
    shared = ray.put(args)  # one copy of the specs in the object store, not one per task
    task = ray.remote(num_returns=4)(_partition_task)
    outputs = [
        task.options(**task_options()).remote(view.name, bucket, buckets, shared)
        for bucket in range(buckets)
    ]

    def stop() -> bool:
        check()  # raises JobCancelledError: run_tasks cancels what still runs
        return False

    try:
        counts = run_tasks(
            ray, [o[0] for o in outputs], should_stop=stop, what=f"job of {view.name}"
        )
    except BaseException:
        _collect_errors(ray, outputs)
        raise
    refs = {OFFLINE: [o[1] for o in outputs], INPUTS: [o[2] for o in outputs]}
    refs[ONLINE] = [o[3] for o in outputs]
    return PartitionedRows(ray, refs, counts, buckets)
