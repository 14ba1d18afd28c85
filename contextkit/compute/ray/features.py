"""Batch feature views on Ray: the local engine's SQL per (time chunk, entity bucket) in Ray tasks.

A job over ``[start, end)`` is split into time chunks (``compute.time_chunk``) times entity-hash
buckets (``compute.partitions``), one Ray task each (:func:`plan_parts`). Each task opens the
repo's sources itself (files local to the node or ``s3://``, database sources by range) and reads
its share: for a row-wise view over one file source, only its bucket's rows of its chunk and the
lookback its windows and ttl need, filtered in the scan (:mod:`contextkit.compute.ray.partitions`);
otherwise the whole source, the view's output filtered to its bucket. It then runs the very
queries the local engine runs (:mod:`contextkit.framework.transformations`): the offline feature
rows of its chunk, an aggregate view's input rows, and (the last chunk's tasks) the online latest
values. Every window and every latest value is per entity and each chunk reads its lookback, so
windows that cross any chunk or job edge stay exact: the union of the tasks is the local
engine's result. Each task reports the source rows it read (the job's ``details.ray``).

Tasks return Arrow tables through Ray's object store. The driver (the caller of
:func:`contextkit.compute.materialize.materialize_view`) streams them, one task at a time, into
the same staged offline write and online replacement the local engine uses, and commits once: a
failed or cancelled job publishes nothing. The stores' staging API takes one query on the
driver's DuckDB connection, so rows pass through the driver; they are not collected into one
table there (each task's table is read from the object store as DuckDB scans it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from contextkit.compute.ray.partitions import (
    Analysis,
    Pushdown,
    analyse,
    first_timestamp,
    read_range,
    time_chunks,
)
from contextkit.compute.ray.runtime import connect, partition_count, run_tasks, task_options
from contextkit.config import ComputeConfig
from contextkit.errors import ContextKitError, StoreError
from contextkit.framework import transformations
from contextkit.framework.specs import FeatureViewSpec, FileSourceSpec
from contextkit.framework.transformations import quote, ts_literal

OFFLINE, INPUTS, ONLINE, READ = "offline", "inputs", "online", "read"


class _PartitionWorkspace(transformations.Workspace):
    """A workspace that holds one partition's share of the view's input.

    With a :class:`~contextkit.compute.ray.partitions.Pushdown`, the view's file source is
    read once, filtered to the task's entity bucket and time range (and to the columns the
    view uses), into a temp table that takes the source's name: the view's SQL runs on that
    share only. Without one, the view's whole output is filtered to the bucket (upstream views,
    read through it, stay whole: their keys may differ). ``read`` counts the source rows the
    task's queries were given (None: the whole file source, not counted)."""

    def __init__(
        self,
        *args: Any,
        view: FeatureViewSpec,
        bucket: int,
        buckets: int,
        pushdown: Pushdown | None,
        read_range: tuple[datetime | None, datetime],
    ):
        super().__init__(*args)
        self._view, self._bucket, self._buckets = view.name, bucket, buckets
        self._hash = f"hash({', '.join(quote(k) for k in view.join_key_names)})"
        self._bucket_pushed = pushdown is not None and pushdown.keys is not None
        self.read: dict[str, int | None] = {
            name: None for name in view.sources if name in self.sources
        }
        if pushdown is not None:
            self.read[pushdown.source] = self._read_share(pushdown, *read_range)

    def _read_share(self, push: Pushdown, lo: datetime | None, hi: datetime) -> int:
        name = quote(push.source)
        have = {r[0].lower(): r[0] for r in self.con.execute(f"DESCRIBE {name}").fetchall()}
        if push.columns is None:
            columns = "*"
        else:
            wanted = {c.lower() for c in push.columns} | {k.lower() for k in push.keys or ()}
            wanted |= {push.timestamp.lower()} if push.timestamp else set()
            columns = ", ".join(quote(have[c]) for c in sorted(wanted) if c in have) or "*"
        where = []
        if push.keys and self._buckets > 1:
            keys = ", ".join(quote(k) for k in push.keys)
            where.append(f"hash({keys}) % {self._buckets} = {self._bucket}")
        if push.timestamp:
            ts = f"CAST({quote(push.timestamp)} AS TIMESTAMPTZ)"
            if lo is not None:
                where.append(f"{ts} >= {ts_literal(lo)}")
            where.append(f"{ts} < {ts_literal(hi)}")
        share = quote(f"__share__{push.source}")
        self.con.execute(
            f"CREATE TEMP TABLE {share} AS SELECT {columns} FROM {name}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
        )
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {share}")
        return int(self.con.execute(f"SELECT count(*) FROM {share}").fetchall()[0][0])

    def transformation_sql(self, view, start=None, end=None):
        sql = super().transformation_sql(view, start, end)
        if view.name != self._view or self._buckets == 1 or self._bucket_pushed:
            return sql
        return f"SELECT * FROM ({sql}) WHERE {self._hash} % {self._buckets} = {self._bucket}"

    def _source_frame(self, name, view, lo, hi, limit):
        frame = super()._source_frame(name, view, lo, hi, limit)
        if view.name == self._view:  # a pandas/arrow view: its function's input rows
            self.read[name] = (self.read.get(name) or 0) + len(frame)
        return frame

    def database_rows(self) -> None:
        """The rows each database source of the view read (its task's time range)."""
        for name in self.databases.loaded:
            if name in self.read:
                raw = quote(f"__db__{name}")
                self.read[name] = int(
                    self.con.execute(f"SELECT count(*) FROM {raw}").fetchall()[0][0]
                )


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
    pushdown: Pushdown | None = None,
) -> dict[str, Any]:
    """One partition's rows as Arrow tables, typed as the stores keep them: ``offline`` (feature
    rows of ``[start, end)``, one time chunk), ``inputs`` (an aggregate view's input rows) and
    ``online`` (the latest values as of ``end``), plus ``read``: the source rows the task read,
    by source (None: a whole file source). ``offline``/``online``: the typed column list the
    local engine selects for that store (None: not wanted). ``pushdown``: read only the
    partition's share of the source (see :mod:`contextkit.compute.ray.partitions`). What a Ray
    task runs; a pure function of its arguments, so a task run again after its worker died
    returns the same rows."""
    out: dict[str, Any] = {}
    con = transformations.connect_duckdb(threads=1)  # one task, one CPU
    try:
        needed = read_range(
            view, start, end, offline=offline is not None,
            online_as_of=end if online is not None else None,
        )  # fmt: skip
        ws = _PartitionWorkspace(
            con, root, sources, views, view=view, bucket=bucket, buckets=buckets,
            pushdown=pushdown, read_range=needed,
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
        ws.database_rows()
        out[READ] = ws.read
    finally:
        con.close()
    return out


@dataclass(frozen=True)
class Part:
    """One Ray task's share of a job: time chunk ``chunk`` of ``chunks`` (offline rows of
    ``[start, end)``) and entity bucket ``bucket`` of ``buckets``; ``online``: it computes the
    latest values too (the last chunk's tasks)."""

    chunk: int
    chunks: int
    bucket: int
    buckets: int
    start: datetime | None
    end: datetime
    offline: bool
    online: bool

    def describe(self) -> str:
        where = f"partition {self.bucket} of {self.buckets} (entities by join-key hash)"
        if self.chunks > 1:
            lo = self.start.isoformat() if self.start else "the first row"
            where += (
                f", time chunk {self.chunk + 1} of {self.chunks} [{lo}, {self.end.isoformat()})"
            )
        return where


def _partition_task(view_name: str, part: Part, args: dict[str, Any]):
    """The Ray task: :func:`bucket_rows`, with a data error named by view and partition.
    Returns ``(summary, offline, inputs, online)``, four objects, so the driver can wait on
    the small first one (row counts, rows read, seconds) and read the tables one at a time."""
    began = time.perf_counter()
    try:
        rows = bucket_rows(
            bucket=part.bucket, buckets=part.buckets, start=part.start, end=part.end,
            offline=args["offline"] if part.offline else None,
            online=args["online"] if part.online else None,
            **{k: v for k, v in args.items() if k not in ("offline", "online")},
        )  # fmt: skip
    except ContextKitError:
        raise
    except Exception as exc:
        raise partition_error(view_name, part, exc) from None
    read = rows.pop(READ)
    summary = {
        "rows": {name: table.num_rows for name, table in rows.items()},
        "read": read,
        "seconds": time.perf_counter() - began,
    }
    return summary, rows.get(OFFLINE), rows.get(INPUTS), rows.get(ONLINE)


def partition_error(view: str, part: Part, exc: BaseException) -> StoreError:
    """A partition that failed for a data reason: the view, the partition and DuckDB's message,
    which names the first value it could not use (a string it could not cast, say)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return StoreError(
        f"materializing {view!r} failed in {part.describe()} on the Ray engine: "
        f"{type(exc).__name__}: {first}"[:800],
        hint="a row of the view's sources does not fit the view (a value that cannot be cast, a "
        "type error); fix the data or the view's SQL. Nothing was published.",
        details={
            "view": view,
            "partition": part.bucket,
            "partitions": part.buckets,
            "chunk": part.chunk,
            "chunks": part.chunks,
            "error": first,
        },
    )


# Job details list each task's rows read up to this many tasks (then only the totals).
MAX_TASKS_LISTED = 512


@dataclass
class PartitionedRows:
    """The partitions' results, still in Ray's object store: each table kind is read back as
    one Arrow stream that DuckDB scans once (see :meth:`query`)."""

    ray: Any
    parts: list[Part]
    refs: dict[str, list[Any]]
    summaries: list[dict[str, Any]]
    analysis: Analysis
    chunk: timedelta | None = None
    _registered: list[str] = field(default_factory=list)

    @property
    def partitions(self) -> int:
        return self.parts[0].buckets if self.parts else 1

    def rows(self, kind: str) -> int:
        return sum(s["rows"].get(kind, 0) for s in self.summaries)

    def rows_read(self) -> list[int | None]:
        """Per task (in :attr:`parts` order): the source rows it read, all sources together
        (None: a whole file source, not counted)."""
        out: list[int | None] = []
        for summary in self.summaries:
            counts = list(summary["read"].values())
            out.append(None if any(c is None for c in counts) else sum(counts))
        return out

    def details(self) -> dict[str, Any]:
        """What the job record keeps of the split (``details.ray``)."""
        read = self.rows_read()
        counted = [r for r in read if r is not None]
        out: dict[str, Any] = {
            "tasks": len(self.parts),
            "buckets": self.partitions,
            "chunks": self.parts[0].chunks if self.parts else 1,
            "time_chunk_s": self.chunk.total_seconds() if self.chunk else None,
            "pushdown": self.analysis.as_details(),
            "task_s": {
                "total": round(sum(s["seconds"] for s in self.summaries), 3),
                "max": round(max((s["seconds"] for s in self.summaries), default=0.0), 3),
            },
            "rows_read": {
                "total": sum(counted) if len(counted) == len(read) else None,
                "max_task": max(counted) if counted else None,
                "min_task": min(counted) if counted else None,
            },
        }
        if len(read) <= MAX_TASKS_LISTED:
            out["rows_read_per_task"] = [
                [p.chunk, p.bucket, r] for p, r in zip(self.parts, read, strict=True)
            ]
        return out

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


def plan_parts(
    view: FeatureViewSpec,
    start: datetime | None,
    end: datetime,
    *,
    buckets: int,
    chunk: timedelta | None,
    offline: bool,
    online: bool,
    first: datetime | None = None,
) -> list[Part]:
    """The job's tasks: every time chunk of ``[start, end)`` times every entity bucket (only
    the last chunk when no offline rows are written: the latest values need only it).
    ``first``: the data's first timestamp, where a range without a start is cut from."""
    ranges = time_chunks(start, end, chunk, first)
    parts = []
    for i, (lo, hi) in enumerate(ranges):
        last = i == len(ranges) - 1
        if not offline and not last:
            continue
        for bucket in range(buckets):
            parts.append(Part(i, len(ranges), bucket, buckets, lo, hi, offline, online and last))
    return parts


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
    on_progress: Callable[[str], None] | None = None,
) -> PartitionedRows:
    """Run the view's partitions on Ray and wait for them (``check()`` raises once the job is
    cancelled: the tasks still running are cancelled). ``offline``/``online``: the typed
    columns of each store's rows (see :func:`bucket_rows`; None: that store is not written).
    ``on_progress(line)``: told the tasks done and the source rows they read, at every tenth
    of the tasks (the CLI shows it as the job's stage).
    Raises the first partition's data error, or :class:`~contextkit.errors.ComputeError` when
    the cluster cannot run the job."""
    con = transformations.connect_duckdb(threads=1)
    first = None
    try:
        analysis = analyse(con, view, sources)
        push = analysis.pushdown
        if start is None and config.time_chunk and push is not None and push.timestamp:
            # A full recompute without a start: chunks are cut from the data's first row.
            first = first_timestamp(con, root, sources[push.source], push)
    finally:
        con.close()
    ray = connect(config)
    buckets = partition_count(config, ray)
    parts = plan_parts(
        view, start, end, buckets=buckets, chunk=config.time_chunk,
        offline=offline is not None, online=online is not None, first=first,
    )  # fmt: skip
    args = {
        "root": root,
        "sources": sources,
        "views": views,
        "view": view,
        "offline": offline,
        "online": online,
        "pushdown": analysis.pushdown,
    }
    shared = ray.put(args)  # one copy of the specs in the object store, not one per task
    task = ray.remote(num_returns=4)(_partition_task)
    outputs = [task.options(**task_options()).remote(view.name, p, shared) for p in parts]

    def stop() -> bool:
        check()  # raises JobCancelledError: run_tasks cancels what still runs
        return False

    shape = f"{parts[0].chunks} chunk(s) x {buckets} bucket(s)" if parts else ""
    done = {"tasks": 0, "rows": 0, "tenth": -1}

    def progress(_index: int, summary: dict[str, Any]) -> None:
        done["tasks"] += 1
        done["rows"] += sum(n for n in summary["read"].values() if n is not None)
        tenth = done["tasks"] * 10 // len(parts)
        if on_progress is not None and tenth > done["tenth"]:
            done["tenth"] = tenth
            on_progress(
                f"ray: {done['tasks']}/{len(parts)} tasks ({shape}), "
                f"{done['rows']:,} source rows read"
            )

    try:
        summaries = run_tasks(
            ray, [o[0] for o in outputs], should_stop=stop, on_done=progress,
            what=f"job of {view.name}",
        )  # fmt: skip
    except BaseException:
        _collect_errors(ray, outputs)
        raise
    refs = {
        OFFLINE: [o[1] for o, p in zip(outputs, parts, strict=True) if p.offline],
        INPUTS: [o[2] for o, p in zip(outputs, parts, strict=True) if p.offline],
        ONLINE: [o[3] for o, p in zip(outputs, parts, strict=True) if p.online],
    }
    return PartitionedRows(ray, parts, refs, summaries, analysis, config.time_chunk)
