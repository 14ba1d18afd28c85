"""Materialization: compute a view's features in DuckDB into the offline and online stores.

A job for one view and a time range ``[start, end)``:
1. offline: feature rows with event time in the range (and, for aggregate views, the input rows,
   so point-in-time reads can evaluate any window) are staged as Parquet (not yet visible);
2. online: the latest value per entity as of ``end`` replaces the view's online table in one
   SQLite transaction;
3. the offline files are published by swapping the table's manifest.
A failure before step 3 leaves both stores as they were (staged files are dropped, the SQLite
transaction rolls back). Between 2 and 3 only a manifest rename remains; re-running the same range
is idempotent. Every job is recorded in the registry with its range, row counts and outcome.

Offline files nobody can read any more (replaced by a newer version, or left by a killed job) are
removed by :func:`collect_garbage`: after every successful job for the view's own tables, and by
``contextkit gc`` for the whole store, never while a job writes the table and never within the
grace period (see :mod:`contextkit.stores.offline`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path

from contextkit.compute.layout import inputs_table, offline_table, online_table
from contextkit.compute.quality.job_monitor import JobMonitor
from contextkit.compute.quality.online_change import online_change_warning, online_snapshot
from contextkit.config import ComputeConfig
from contextkit.errors import (
    ContextKitError,
    JobCancelledError,
    StoreError,
    translate_store_errors,
)
from contextkit.framework import transformations
from contextkit.framework.specs import METADATA_FIELDS, FeatureViewSpec, FileSourceSpec
from contextkit.framework.transformations import EVENT_TIMESTAMP, quote
from contextkit.stores.errors import StoreFailure, StoreServerUnavailable, StoreUnavailable
from contextkit.stores.offline import GC_GRACE_S, Garbage, ParquetOfflineStore
from contextkit.stores.online import OnlineStore
from contextkit.stores.registry import COMPLETED_STATUSES, RegistryStore
from contextkit.types import Timestamp, duckdb_type

log = logging.getLogger("contextkit.compute.materialize")


@dataclass(frozen=True)
class JobResult:
    """What a materialization job did."""

    job_id: str
    view: str
    status: str
    start: datetime | None
    end: datetime
    rows_offline: int
    rows_online: int
    duration_s: float
    error: str | None = None
    kind: str = "batch_feature_view"
    # Embedding views: the encode statistics (documents, chunks, new, changed, deleted, ...).
    details: dict = field(default_factory=dict)


def spec_hash(view: FeatureViewSpec) -> str:
    """A hash of everything that determines a view's values (not its description or tags)."""
    data = view.model_dump(mode="json", exclude=set(METADATA_FIELDS))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _typed_columns(view: FeatureViewSpec, *, epoch_timestamps: bool) -> str:
    """Join keys, event timestamp and features, each cast to the type of its dtype."""

    def cast(name: str, dtype: str | None) -> str:
        if dtype == Timestamp and epoch_timestamps:
            return f"epoch_us(CAST({quote(name)} AS TIMESTAMPTZ)) AS {quote(name)}"
        return f"CAST({quote(name)} AS {duckdb_type(dtype or 'string')}) AS {quote(name)}"

    cols = [cast(k.name, k.dtype) for k in view.join_keys]
    cols.append(cast(EVENT_TIMESTAMP, Timestamp))
    cols += [cast(f.name, f.dtype) for f in view.features]
    return ", ".join(cols)


def _batches(
    cursor, size: int = 10_000, check: Callable[[], None] | None = None
) -> Iterator[tuple]:
    """The cursor's rows, fetched ``size`` at a time (``check`` before each fetch); the rows of
    a batch are handed on by ``chain`` in C, not one generator step per row."""

    def fetch() -> Iterator[list[tuple]]:
        while True:
            if check is not None:
                check()  # raises JobCancelledError: the online transaction rolls back
            rows = cursor.fetchmany(size)
            if not rows:
                return
            yield rows

    return chain.from_iterable(fetch())


def offline_rows_sql(view: FeatureViewSpec, features_sql: str) -> str:
    """``features_sql`` (offline feature rows) typed as the offline store keeps them."""
    return f"SELECT {_typed_columns(view, epoch_timestamps=False)} FROM ({features_sql})"


def online_rows_sql(view: FeatureViewSpec, features_sql: str) -> str:
    """``features_sql`` (latest values per entity) typed as the online table stores them."""
    return f"SELECT {_typed_columns(view, epoch_timestamps=True)} FROM ({features_sql})"


def replace_online_table(
    online: OnlineStore,
    con,
    workspace: str,
    view: FeatureViewSpec,
    query: str,
    check: Callable[[], None] | None = None,
) -> int:
    """Replace the view's online table with the rows of ``query`` (see :func:`online_rows_sql`),
    read in batches from DuckDB; returns the number of entities."""
    return online.replace_table(
        online_table(workspace, view.name),
        [(k.name, k.dtype or "string") for k in view.join_keys],
        [(EVENT_TIMESTAMP, Timestamp)] + [(f.name, f.dtype or "string") for f in view.features],
        _batches(con.execute(query), check=check),
    )


def cancellation_check(
    registry: RegistryStore, job_id: str, should_stop: Callable[[], bool] | None = None
) -> Callable[[], None]:
    """What a job calls between batches: raises :class:`JobCancelledError` once the job was
    cancelled (in the registry, or ``should_stop()``, e.g. a worker shutting down)."""

    def check() -> None:
        if (should_stop is not None and should_stop()) or registry.cancel_requested(job_id):
            raise JobCancelledError(
                f"job {job_id} was cancelled",
                hint="the stores are as they were before the job; retry it to run it again",
            )

    return check


def last_watermark(
    registry: RegistryStore, workspace: str, view: FeatureViewSpec
) -> datetime | None:
    """How far the offline store is computed for this exact definition of the view.

    The latest range end among successful jobs since (and including) the last full recompute;
    None when the view was never materialized in its current definition. A job of another
    definition that wrote anything (it may have replaced the store's rows) ends the search, so
    going from definition A to B and back to A recomputes A from scratch instead of continuing
    A's old runs over B's rows.
    """
    current = spec_hash(view)
    latest = None
    for job in registry.list_jobs(workspace, view.name, limit=500):
        if job.spec_hash != current and job.status != "failed":
            break
        if job.status not in COMPLETED_STATUSES or job.spec_hash != current or not job.range_end:
            continue
        end = datetime.fromisoformat(job.range_end)
        latest = end if latest is None else max(latest, end)
        if job.details.get("full"):
            break
    return latest


def materialize_view(
    *,
    registry: RegistryStore,
    online: OnlineStore,
    offline: ParquetOfflineStore,
    root: Path,
    workspace: str,
    view: FeatureViewSpec,
    sources: dict[str, FileSourceSpec],
    views: dict[str, FeatureViewSpec],
    start: datetime | None = None,
    end: datetime | None = None,
    full: bool = False,
    on_stage: Callable[[str], None] | None = None,
    monitoring: bool = True,
    max_online_shrink: float | None = 0.5,
    job_id: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    compute: ComputeConfig | None = None,
) -> JobResult:
    """Run one materialization job for ``view`` (see the module docstring).

    ``compute``: the engine (None: local). With ``compute.engine_for(view) == "ray"`` the rows
    are computed on Ray, partitioned by time chunk and entity hash
    (:mod:`contextkit.compute.ray.features`), and staged, checked and committed here exactly as
    the local engine's; the job's details (and ``JobResult.details``) say how it was split and
    how many source rows each task read (``ray``).

    ``job_id``: run the job the jobs API queued under this id (instead of recording a new one).
    Between batches the job checks whether it was cancelled (``registry.request_cancel``, or
    ``should_stop()``); a cancelled job raises :class:`JobCancelledError`, leaves the stores as
    they were and is recorded ``cancelled``.

    ``monitoring``: measure the rows (see :mod:`contextkit.compute.quality`); the view's
    expectations are checked either way, on the staged rows, before anything is committed. A job
    that leaves the online table empty, or with more than ``max_online_shrink`` (a share) fewer
    entities than the previous job left, ends with status ``warning`` and says why.
    """
    end = _utc(end or datetime.now(UTC))
    on_ray = compute is not None and compute.engine_for(view.name) == "ray"
    watermark = None if full else last_watermark(registry, workspace, view)
    replace_all = start is None and watermark is None
    if start is None:
        start = watermark if watermark is not None else view.feature_start_time
    if start is not None:
        start = _utc(start)
    if start is not None and start > end:
        start = end
    # A backfill of a past range leaves the (newer) online values alone.
    refresh_online = view.online and (watermark is None or end >= watermark)
    previous_online = (
        online_snapshot(registry.list_jobs(workspace, view.name, 50)) if refresh_online else None
    )
    details: dict = {
        "full": replace_all,
        "online": refresh_online,
        **({"engine": "ray"} if on_ray else {}),
    }
    job_id = registry.start_job(
        workspace,
        view.name,
        range_start=start.isoformat() if start else None,
        range_end=end.isoformat(),
        spec_hash=spec_hash(view),
        details=details,
        **({"job_id": job_id} if job_id else {}),
    )
    check = cancellation_check(registry, job_id, should_stop)
    monitor = JobMonitor.start(registry, workspace, view, job_id, as_of=end, enabled=monitoring)
    began = time.perf_counter()
    staged: list = []
    rows_offline = rows_online = 0
    stage = on_stage or (lambda _s: None)
    try:
        with transformations.workspace_session(root, sources, views) as ws:
            check()
            remote = None
            if on_ray:
                from contextkit.compute.ray.features import INPUTS, OFFLINE, ONLINE, run_partitions

                stage("ray")
                remote = run_partitions(
                    compute, root=root, sources=sources, views=views, view=view, start=start,
                    end=end, check=check, on_progress=stage,
                    offline=_typed_columns(view, epoch_timestamps=False) if view.offline else None,
                    online=_typed_columns(view, epoch_timestamps=True) if refresh_online else None,
                )  # fmt: skip
                # How the job was split and what each task read (docs/compute.md).
                details = {**details, "ray": remote.details()}
            if view.offline:
                stage("offline")
                query = (
                    remote.query(ws.con, OFFLINE)
                    if remote is not None
                    else offline_rows_sql(
                        view, transformations.offline_features_sql(ws, view, start, end)
                    )
                )
                table = offline_table(workspace, view.name)
                staged.append(
                    offline.stage_range(
                        ws.con, table, query, EVENT_TIMESTAMP, start, end, replace_all, job_id
                    )
                )
                rows_offline = staged[0].rows
                if view.is_aggregate:
                    # The inputs too, so point-in-time reads can compute any window exactly.
                    inputs = (
                        remote.query(ws.con, INPUTS)
                        if remote is not None
                        else transformations.aggregate_inputs_sql(ws, view, start, end)
                    )
                    staged.append(
                        offline.stage_range(
                            ws.con,
                            inputs_table(workspace, view.name),
                            inputs,
                            EVENT_TIMESTAMP,
                            start,
                            end,
                            replace_all,
                            job_id,
                        )
                    )
            check()
            if monitor is not None and not refresh_online and staged:
                monitor.check_staged(ws.con, staged[0])
            if refresh_online:
                stage("online")
                query = (
                    remote.query(ws.con, ONLINE)
                    if remote is not None
                    else online_rows_sql(view, transformations.online_features_sql(ws, view, end))
                )
                if monitor is not None:
                    query = monitor.check(ws.con, query, scope="online")
                rows_online = replace_online_table(online, ws.con, workspace, view, query, check)
            check()
            stage("commit")
            while staged:
                staged.pop(0).commit()
    except BaseException as exc:
        for write in staged:
            write.abort()
        if isinstance(exc, JobCancelledError):
            registry.finish_job(job_id, "cancelled", error=exc.message)
            raise
        message = _describe_failure(exc)
        registry.finish_job(job_id, "failed", error=message)
        if isinstance(exc, ContextKitError):
            raise
        if isinstance(exc, StoreServerUnavailable | StoreUnavailable):  # 503: down, refused
            raise translate_store_errors(exc) from exc
        if isinstance(exc, StoreFailure):
            raise StoreError(exc.message, hint=exc.hint) from exc
        if isinstance(exc, Exception):
            raise StoreError(
                f"materializing {view.name!r} failed: {message}",
                hint="check the source files (a corrupt or truncated file is a common cause) "
                "and run `contextkit plan` to re-validate the repo",
            ) from exc
        raise
    duration = time.perf_counter() - began
    status, warning = monitor.finish() if monitor is not None else ("succeeded", None)
    if refresh_online:
        before = previous_online.rows if previous_online is not None else None
        shrank = online_change_warning(
            view, rows_online, before, max_online_shrink, end=end.isoformat()
        )
        if shrank is not None:
            status, warning = "warning", "; ".join(w for w in (shrank, warning) if w)
    registry.finish_job(
        job_id, status, rows_offline=rows_offline, rows_online=rows_online, error=warning,
        **({"details": details} if "ray" in details else {}),
    )  # fmt: skip
    if view.offline:
        _collect_after_job(registry, offline, workspace, view)
    return JobResult(
        job_id, view.name, status, start, end, rows_offline, rows_online, duration, error=warning,
        details={"ray": details["ray"]} if "ray" in details else {},
    )  # fmt: skip


def _utc(value: datetime) -> datetime:
    """Aware datetimes converted to UTC; naive ones read as UTC (as everywhere in contextkit)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _describe_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def collect_garbage(
    registry: RegistryStore,
    offline: ParquetOfflineStore,
    *,
    tables: list[str] | None = None,
    grace_s: float = GC_GRACE_S,
    dry_run: bool = False,
) -> list[Garbage]:
    """Remove (or with ``dry_run`` only list) offline files no committed version references and
    no reader can still use: of ``tables``, default every table in the store.

    Jobs whose process is gone are marked abandoned first; tables a running job writes are
    skipped whole; staging folders of jobs that no longer run go at once, everything else only
    after ``grace_s`` (see :meth:`ParquetOfflineStore.collect_garbage`).
    """
    registry.reap_abandoned_jobs()
    busy = set()
    for job in registry.running_jobs():
        busy |= {offline_table(job.workspace, job.view), inputs_table(job.workspace, job.view)}

    def job_running(job_id: str) -> bool | None:
        job = registry.get_job(job_id)
        return None if job is None else job.status == "running"

    found: list[Garbage] = []
    for table in offline.tables() if tables is None else tables:
        if table in busy:
            continue
        found += offline.collect_garbage(
            table, grace_s=grace_s, job_running=job_running, dry_run=dry_run
        )
    return found


def _collect_after_job(
    registry: RegistryStore, offline: ParquetOfflineStore, workspace: str, view: FeatureViewSpec
) -> None:
    """What earlier (replaced, or killed) jobs of this view left: the job succeeded whatever
    happens here, so a failure is logged, not raised."""
    tables = [offline_table(workspace, view.name)]
    if view.is_aggregate:
        tables.append(inputs_table(workspace, view.name))
    try:
        removed = collect_garbage(registry, offline, tables=tables)
    except Exception as exc:  # noqa: BLE001 - the data is committed; the next run retries
        log.warning("could not remove unused offline files of %s: %s", view.name, exc)
        return
    if removed:
        log.info(
            "removed %d unused offline file(s) of %s (%d bytes)",
            len(removed),
            view.name,
            sum(g.bytes for g in removed),
        )


def drop_view_data(
    online: OnlineStore, offline: ParquetOfflineStore, workspace: str, view: str
) -> None:
    """Remove a deleted view's online table and offline files."""
    online.drop_table(online_table(workspace, view))
    offline.drop_table(offline_table(workspace, view))
