"""Point-in-time joins on Ray: the driver only plans; Ray tasks read the events, split them by
entity hash, join each partition in DuckDB and write the rows to Parquet files in storage.

How one run goes (``OfflineFeatures`` with ``compute: ray``):

1. **Plan, on the driver.** It checks the events' columns against the request exactly as the
   local engine does, from metadata only: a Parquet path's schema and per-file row counts (the
   row ids are the local engine's: file-name order, then row order), or an in-memory table's
   schema. It cuts the events into *splits* of at most :data:`SPLIT_ROWS` rows (row ranges of
   one file; an in-memory table's slices go to the object store once). No event is read here.
2. **Deal, in Ray tasks.** One task per split reads its rows itself (DuckDB, only the row groups
   that hold them), adds the UTC event time, and returns them dealt to ``partitions`` shards by
   ``hash(join keys) % partitions`` (the keys of the first asked view; an entity's events all go
   to one partition), plus their count and time range.
3. **Join, in Ray tasks.** From the splits' time ranges the driver decides where each view is
   read from (offline store or sources; stream views' ingest logs are read here, once), as the
   local engine does. One task per partition takes its shard of every split, runs the local
   engine's query over them (:func:`~contextkit.compute.offline.query.prepare_query`, realtime
   views included; views keyed like the partitions read only its entities' rows), and writes
   its rows, cut into row-id ranges of :data:`CHUNK_ROWS`, as one Parquet file per range into
   the offline store's scratch folder (local or ``s3://``). It returns only the files' paths
   and row counts.
4. **Collect, on the driver or in Ray Data.** Range ``c``'s files (one per partition that has
   rows there) hold exactly the row ids of ``[c * CHUNK_ROWS, (c + 1) * CHUNK_ROWS)``: reading
   them and sorting by row id gives the caller's order, one range at a time
   (:func:`read_range`); the scratch folder is removed at the end.

**Cancelling.** ``OfflineFeatures.cancel()`` (from any thread) stops a run: the driver polls
it while tasks run and between ranges, cancels every outstanding task (``ray.cancel``, its
worker killed), removes the scratch folder and raises
:class:`~contextkit.errors.JobCancelledError`. A run that fails or is interrupted (Ctrl-C)
cleans up the same way.

**Stale scratch folders.** A driver killed mid-run leaves its folder behind. Each run's folder
holds ``owner.json`` (host, pid and start of the driver, creation time); every Ray read first
removes the ``join-*`` folders whose owner no longer runs (same host) or that are older than
:data:`STALE_SCRATCH_S` (any host), see :func:`remove_stale_scratch`.

So the driver's memory does not grow with the events: it holds the plan, a list of file paths
and one range of results. A task that fails for a data reason fails the run with the split or
partition and the first bad value named; a task whose worker dies is run again by Ray
(``task_options``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.compute.offline.events import (
    EventsInput,
    events_input,
    parquet_files,
    parquet_rows,
)
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
from contextkit.errors import BadRequestError, ContextKitError, JobCancelledError
from contextkit.framework import transformations
from contextkit.framework.specs import RealtimeFeatureViewSpec
from contextkit.framework.transformations import quote
from contextkit.stores.process import ProcessIdentity, current_process, owner_alive

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from contextkit.config import ComputeConfig

# Rows of one split of the events: what one dealing task reads.
SPLIT_ROWS = 1_048_576
# Rows of one range of row ids: one result file per partition, what is sorted at a time.
CHUNK_ROWS = 262_144
PART = f"{RESERVED}part"
# A scratch folder older than this is removed by the next Ray read, whoever owns it.
STALE_SCRATCH_S = 86_400.0
SCRATCH_PREFIX = "join-"
OWNER_FILE = "owner.json"
# How long a stopped run waits for its cancelled tasks to end before removing its folder.
CANCEL_WAIT_S = 30.0

log = logging.getLogger("contextkit.compute.ray")


@dataclass
class Split:
    """Rows of the events one dealing task reads: ``rows`` ``[start, end)`` of Parquet file
    ``file`` (row ids from ``offset``), or an in-memory slice in the object store (``ref``)."""

    file: str | None = None
    start: int = 0
    end: int = 0
    offset: int = 0
    ref: Any = None

    def where(self) -> str:
        if self.file is None:
            return f"rows {self.start}-{self.end - 1} of the events"
        return f"rows {self.start}-{self.end - 1} of {self.file}"


@dataclass
class RayJoin:
    """One point-in-time join on Ray (a context manager): entering runs it (steps 1-3 of the
    module docstring); then ``ranges`` lists, per range of row ids, the result files that hold
    it, ``tables()`` reads them back in order, and leaving removes them. ``local`` holds the
    result instead when there are no events (nothing to spread)."""

    features: Any  # OfflineFeatures
    compute: ComputeConfig
    chunk_rows: int = 0
    ranges: list[list[str]] = field(default_factory=list)
    filesystem: Any = None
    folder: str | None = None
    local: pa.Table | None = None
    total: int = 0
    columns: list[str] = field(default_factory=list)  # the events' own, in order
    _refs: list[Any] = field(default_factory=list)

    def __enter__(self) -> RayJoin:
        try:
            self._run()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._refs:
            with contextlib.suppress(Exception):  # Ray gone: nothing left to cancel
                ray = connect(self.compute)
                cancel(ray, self._refs)
                # Until the cancelled tasks are gone, none writes into the folder removed next.
                ray.wait(self._refs, num_returns=len(self._refs), timeout=CANCEL_WAIT_S)
            self._refs = []
        if self.folder is not None:
            with contextlib.suppress(Exception):  # best effort: gone already, or unreachable
                self.filesystem.delete_dir(self.folder)
            self.folder = None

    def tables(self) -> Iterator[pa.Table]:
        """The result as Arrow tables in input order (at least one, maybe empty), one range of
        row ids at a time."""
        if self.local is not None:
            yield self.local
            return
        for paths in self.ranges:
            self._check()
            yield read_range(self.filesystem, paths).drop_columns([ROW])

    def _stopped(self) -> bool:
        return bool(getattr(self.features, "cancelled", False))

    def _check(self) -> None:
        if self._stopped():
            raise JobCancelledError(
                "the point-in-time join on Ray was cancelled",
                hint="its tasks were stopped and its scratch files removed; run it again",
            )

    def _run(self) -> None:
        features, compute = self.features, self.compute
        self.chunk_rows = self.chunk_rows or CHUNK_ROWS
        self._check()
        ray = connect(compute)
        runtime = features._ctx
        with contextlib.suppress(Exception):  # housekeeping never fails a read
            remove_stale_scratch(runtime.offline)
        specs = runtime.specs()
        root = runtime.config.root.resolve()
        with transformations.workspace_session(root, specs.sources, specs.views) as ws:
            read = events_input(ws.con, features._events, features.timestamp_key)
            features._check(specs, read.types)
            self.columns = list(read.types)
            splits, total = _splits(ray, ws.con, read)
            self.total = total
            if total == 0:  # nothing to spread: the local query gives the empty result's schema
                ws.con.execute(
                    f"CREATE OR REPLACE TEMP VIEW {EVENTS} AS SELECT *, {read.time} AS {EVENT_TS} "
                    f"FROM ({read.base})"
                )
                plan = features._plan(ws.con, specs, read.types)
                self.local = arrow_result(ws.con, prepare_query(ws, plan, read.types))
                return
        read = replace(read, table=None)  # the driver's copy of in-memory events is not sent
        parts = partition_count(compute, ray, total)
        keys = _partition_keys(features, specs)
        deal = ray.remote(_deal_split)
        shards: list[list[Any]] = [[] for _ in range(parts)]
        stats = []
        for split in splits:
            refs = deal.options(**task_options(num_returns=parts + 1)).remote(
                split.ref, replace(split, ref=None), read, keys, parts
            )
            refs = list(refs)
            for index in range(parts):
                shards[index].append(refs[index])
            stats.append(refs[parts])
            self._refs += refs
        del splits, refs  # the tasks hold the in-memory slices now
        found = run_tasks(ray, stats, should_stop=self._stopped, what="point-in-time join")
        times = [t for _rows, lo, hi in found for t in (lo, hi) if t is not None]
        plan = features._plan_for(specs, min(times, default=None), max(times, default=None))
        self.filesystem, self.folder = runtime.offline.scratch(
            f"{SCRATCH_PREFIX}{uuid.uuid4().hex}"
        )
        self.filesystem.create_dir(self.folder, recursive=True)
        _write_owner(self.filesystem, self.folder)
        chunks = -(-total // self.chunk_rows)
        plan_ref = ray.put(plan)
        join = ray.remote(_join_partition)
        target = (self.filesystem, self.folder)
        outputs = [
            join.options(**task_options()).remote(
                index,
                parts,
                keys,
                shards[index],
                plan_ref,
                root,
                specs.sources,
                specs.views,
                target,
                self.chunk_rows,
                chunks,
            )  # fmt: skip
            for index in range(parts)
        ]
        del shards
        self._refs = outputs  # the dealt shards are freed as the joins finish
        written = run_tasks(ray, outputs, should_stop=self._stopped, what="point-in-time join")
        self._refs = []
        self.ranges = [[] for _ in range(chunks)]
        for files in written:  # partition order within a range: the same on every run
            for chunk, path in files:
                self.ranges[chunk].append(path)


def join_on_ray(
    features: Any, compute: ComputeConfig, chunk_rows: int | None = None
) -> Iterator[pa.Table]:
    """The result of ``features`` (an ``OfflineFeatures``) as Arrow tables in input order (at
    least one, maybe empty), computed by Ray tasks (see the module docstring); ``chunk_rows``
    rows of the result at a time (default :data:`CHUNK_ROWS`)."""
    with RayJoin(features, compute, chunk_rows or 0) as run:
        yield from run.tables()


def _write_owner(filesystem: Any, folder: str) -> None:
    """Record who owns a scratch folder and since when (read by :func:`remove_stale_scratch`)."""
    me = current_process()
    doc = {"host": me.host, "pid": me.pid, "start": me.start, "created": time.time()}
    with filesystem.open_output_stream(f"{folder}/{OWNER_FILE}") as out:
        out.write(json.dumps(doc).encode())


def remove_stale_scratch(
    offline: Any, *, max_age_s: float = STALE_SCRATCH_S, now: float | None = None
) -> list[str]:
    """Remove the point-in-time joins' scratch folders (``.scratch/join-*``) left by drivers
    that died: those whose owner (``owner.json``) no longer runs on this host, and those older
    than ``max_age_s`` (by ``owner.json``'s creation time, else the newest file's time), of any
    host. A folder whose owner runs and that is younger is kept (a join in progress), as is one
    whose age cannot be told. Returns the removed folders' paths. Each Ray read calls it."""
    from pyarrow import fs

    now = time.time() if now is None else now
    filesystem, probe = offline.scratch(f"{SCRATCH_PREFIX}probe")
    base = probe.rpartition("/")[0]
    if filesystem.get_file_info(base).type == fs.FileType.NotFound:
        return []
    removed = []
    for info in filesystem.get_file_info(fs.FileSelector(base, allow_not_found=True)):
        if info.type != fs.FileType.Directory or not info.base_name.startswith(SCRATCH_PREFIX):
            continue
        if _is_stale(filesystem, info.path, now, max_age_s):
            with contextlib.suppress(FileNotFoundError):  # removed by another reader meanwhile
                filesystem.delete_dir(info.path)
            log.info("removed stale scratch folder %s", info.path)
            removed.append(info.path)
    return removed


def _is_stale(filesystem: Any, folder: str, now: float, max_age_s: float) -> bool:
    from pyarrow import fs

    owner: dict[str, Any] = {}
    path = f"{folder}/{OWNER_FILE}"
    # None yet, or damaged: judged by age.
    with contextlib.suppress(OSError, ValueError), filesystem.open_input_stream(path) as stream:
        owner = json.loads(stream.read())
    if owner.get("host") and owner.get("pid"):
        identity = ProcessIdentity(str(owner["host"]), int(owner["pid"]), str(owner["start"]))
        if owner_alive(identity) is False:
            return True
    created = owner.get("created")
    if not isinstance(created, (int, float)):
        infos = filesystem.get_file_info(fs.FileSelector(folder, recursive=True))
        times = [i.mtime.timestamp() for i in infos if i.mtime is not None]
        created = max(times, default=None)
    return created is not None and now - created > max_age_s


def read_range(filesystem: Any, paths: list[str]) -> pa.Table:
    """One range of row ids from its partitions' files, sorted by row id (kept, last)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p, filesystem=filesystem) for p in paths])
    order = table.column(ROW).to_numpy().argsort(kind="stable")
    return table.take(order)


def _splits(ray: Any, con: duckdb.DuckDBPyConnection, read: EventsInput) -> tuple[list[Split], int]:
    """The events cut into splits of at most :data:`SPLIT_ROWS` rows, and their number."""
    splits = []
    if read.path is not None:
        total = 0
        for file, rows, offset in parquet_files(con, read.path):
            total += rows
            for start in range(0, rows, SPLIT_ROWS):
                end = min(rows, start + SPLIT_ROWS)
                splits.append(Split(file, start, end, offset))
        return splits, total
    table = read.table
    for start in range(0, table.num_rows, SPLIT_ROWS):
        piece = table.slice(start, SPLIT_ROWS)
        splits.append(Split(None, start, start + piece.num_rows, 0, ray.put(piece)))
    return splits, table.num_rows


def _partition_keys(features: Any, specs: Any) -> list[str]:
    """The events' columns an entity is hashed on: the join keys of the first asked view that
    has any (realtime views are skipped: their inputs come after them)."""
    for view, _features in features._refs:
        if isinstance(view, RealtimeFeatureViewSpec):
            continue
        if view.join_key_names:
            return list(view.join_key_names)
    for view, _features in features._refs:  # only realtime views: the first input's keys
        for name in getattr(view, "inputs", []):
            keys = specs.feature_views[name].join_key_names
            if keys:
                return list(keys)
    return []


def _deal_split(
    piece: pa.Table | None, split: Split, read: EventsInput, keys: list[str], parts: int
) -> Any:
    """One split of the events (runs in a Ray task): its rows with the row id and the UTC
    event time, dealt to ``parts`` shards by entity hash; last, (rows, first time, last time)."""
    import duckdb
    import pyarrow.compute as pc

    con = transformations.connect_duckdb(1)
    try:
        if piece is not None:
            con.register(f"{EVENTS}_raw", piece)
            base = read.base
        else:
            assert split.file is not None
            rows = parquet_rows(split.file, split.start, split.end, split.offset)
            base = _conformed(con, rows, read.types)
        hashed = ", ".join(quote(k) for k in keys) if keys else ROW
        query = (
            f"SELECT *, {read.time} AS {EVENT_TS}, CAST(hash({hashed}) % {parts} AS INTEGER) "
            f"AS {PART} FROM ({base})"
        )
        table = con.sql(query).to_arrow_table()
        con.register(f"{RESERVED}split", table)
        lo, hi = con.execute(
            f"SELECT min({EVENT_TS}), max({EVENT_TS}) FROM {RESERVED}split"
        ).fetchall()[0]
    except duckdb.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadRequestError(
            f"cannot read {split.where()}: {reason}",
            hint="check that every events file has the first file's columns and types",
        ) from None
    finally:
        con.close()
    part = table.column(PART)
    table = table.drop_columns([PART])
    shards = [table.filter(pc.equal(part, index)) for index in range(parts)]
    return (*shards, (table.num_rows, lo, hi))


def _conformed(con: duckdb.DuckDBPyConnection, base: str, types: dict[str, str]) -> str:
    """``base`` with its columns cast to ``types`` where one file's types differ from the
    first file's (which DuckDB reads a glob of files as)."""
    described = {r[0]: r[1] for r in con.execute(f"DESCRIBE {base}").fetchall()}
    if all(described.get(c) == t for c, t in types.items()):
        return base
    columns = [
        quote(c) if described.get(c) == t else f"CAST({quote(c)} AS {t}) AS {quote(c)}"
        for c, t in types.items()
    ]
    return f"SELECT {', '.join(columns)}, {ROW} FROM ({base})"


def _join_partition(
    index: int,
    parts: int,
    keys: list[str],
    shards: list[Any],
    plan: JoinPlan,
    root: Path,
    sources: dict[str, Any],
    views: dict[str, Any],
    out: tuple[Any, str],
    chunk_rows: int,
    chunks: int,
) -> list[tuple[int, str]]:
    """One partition's point-in-time join (runs in a Ray task): its rows written as one
    Parquet file per range of row ids that holds any; returns ``(range, path)`` of each."""
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset  # noqa: F401 - DuckDB scans a dataset only once this is imported
    import pyarrow.parquet as pq
    import ray

    events = pa.concat_tables(ray.get(list(shards)))
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
    del events
    filesystem, folder = out
    rows = result.column(ROW).to_numpy()
    bounds = rows.searchsorted([chunk_rows * (c + 1) for c in range(chunks)], side="left")
    written, start = [], 0
    for chunk, end in enumerate(bounds):
        if end > start:
            path = f"{folder}/r{chunk:06d}-p{index:05d}.parquet"
            pq.write_table(result.slice(start, int(end) - start), path, filesystem=filesystem)
            written.append((chunk, path))
        start = int(end)
    return written


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
