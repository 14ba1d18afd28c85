"""The scheduler: materializes every view of every live workspace at its schedule.

Every tick (:meth:`Scheduler.tick`, every ``tick_s`` in :meth:`Scheduler.run_forever`):

1. **Plan**: for each batch feature view, the periods of its ``batch_schedule`` that ended since
   the view's schedule cursor become *due intervals* in the registry; history since
   ``feature_start_time`` (a backfill) is split into chunks of at most ``backfill_chunk_s``
   (aligned to the schedule), and the first interval of a definition recomputes from the
   beginning (``full``). A changed definition starts again from ``feature_start_time``. Embedding
   views get one incremental run every ``embedding_every_s``. Intervals and cursors live in the
   registry (see :mod:`contextkit.stores._job_queue`): a restarted scheduler continues where the
   last one stopped, and a cursor moves by compare-and-set, so two schedulers plan an interval
   once.
2. **Streams**: every ``flush_every_s`` each push source's ingest log is flushed to the offline
   store, and log rows flushed more than ``log_retention_s`` ago are pruned (newer ones stay, so
   recent idempotency keys are still recognized). Every ``scratch_every_s`` the offline
   store's stale scratch folders of Ray joins (driver dead, or older than a day) are removed.
3. **Claim and run**: up to ``concurrency`` intervals at once, each claimed with a lease in the
   registry (owner host/pid/start, expiry), renewed every tick. A view's intervals run in order,
   one at a time. A scheduler that died leaves its claims; another takes them over once the lease
   expired. A failed interval is retried after ``backoff_s * 2**(attempt-1)`` (at most
   ``backoff_max_s``), ``max_attempts`` times; then it is marked ``failed`` and an alert
   (kind ``scheduled_job_failed``) is raised on the view.

Dev workspaces never materialize. Time is injected (``clock``), so tests move it instead of
sleeping; :meth:`tick` with ``wait=True`` runs the claimed intervals to the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime

from contextkit.compute.materialize import spec_hash
from contextkit.errors import ContextKitError, JobCancelledError
from contextkit.framework.workspace import Runtime
from contextkit.governance.jobs import run_view
from contextkit.stores.process import ProcessIdentity, current_process
from contextkit.stores.registry import AlertRecord, IntervalRecord

log = logging.getLogger("contextkit.scheduler")

ALERT_KIND = "scheduled_job_failed"
MAX_NEW_INTERVALS = 1000  # per view and tick: a very long backfill is planned over a few ticks


@dataclass(frozen=True)
class SchedulerSettings:
    concurrency: int = 2  # intervals this scheduler runs at once
    tick_s: float = 10.0
    lease_s: float = 120.0  # a claim's lease, renewed every tick
    max_attempts: int = 3
    backoff_s: float = 60.0
    backoff_max_s: float = 3600.0
    backfill_chunk_s: int = 30 * 86400
    embedding_every_s: int = 3600
    flush_every_s: int = 300
    log_retention_s: int = 86400
    scratch_every_s: int = 3600  # stale Ray join scratch folders removed this often


@dataclass
class TickReport:
    """What one tick did."""

    planned: int = 0  # new due intervals
    claimed: list[IntervalRecord] = field(default_factory=list)
    finished: dict[tuple, str] = field(default_factory=dict)  # interval key -> its new status
    flushed: dict[str, int] = field(default_factory=dict)  # "workspace/source" -> rows
    pruned: dict[str, int] = field(default_factory=dict)
    scratch_removed: list[str] = field(default_factory=list)  # stale scratch folders


def _align(t: float, period: int) -> float:
    return math.floor(t / period) * period


def _iso(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class Scheduler:
    """Plans, claims and runs due intervals (see the module docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        clock: Callable[[], float] = time.time,
        settings: SchedulerSettings | None = None,
        owner: ProcessIdentity | None = None,
        run: Callable[[Runtime, IntervalRecord, Callable[[], bool]], str | None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.registry = runtime.registry
        self.clock = clock
        self.settings = settings or SchedulerSettings()
        self.owner = owner or current_process()
        self._run = run or run_interval
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.concurrency, thread_name_prefix="contextkit-scheduled"
        )
        self._running: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._scratch_at: float | None = None

    # -- one tick -------------------------------------------------------------------------
    def tick(self, *, wait: bool = False) -> TickReport:
        """Plan, flush streams, renew leases, and claim what is due (``wait``: and run it to
        the end before returning)."""
        report = TickReport()
        now = self.clock()
        live = [w.name for w in self.registry.list_workspaces() if w.live]
        schedules = self.registry.list_schedules() if live else {}
        for workspace in live:
            report.planned += self._plan(workspace, now, schedules)
            self._streams(workspace, now, report)
        if self._scratch_at is None or now - self._scratch_at >= self.settings.scratch_every_s:
            self._scratch_at = now
            report.scratch_removed = self._sweep_scratch(now)
        self._renew(now)
        report.claimed = self._claim(now)
        futures = []
        for interval in report.claimed:
            future = self._pool.submit(self._execute, interval)
            with self._lock:
                self._running[interval.key] = future
            futures.append((interval, future))
        if wait:
            for interval, future in futures:
                while True:  # keep the claims' leases alive while waiting
                    try:
                        report.finished[interval.key] = future.result(self.settings.lease_s / 4)
                        break
                    except FutureTimeout:
                        self._renew(self.clock())
        return report

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Tick every ``tick_s`` until ``stop`` is set; then let running intervals stop at their
        next batch (they are retried later, by this scheduler or another)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a registry hiccup: the next tick retries
                log.warning("scheduler tick failed: %s", exc)
            stop.wait(self.settings.tick_s)
        self.close()

    def close(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _sweep_scratch(self, now: float) -> list[str]:
        """Housekeeping: the offline store's scratch folders left by Ray point-in-time joins
        whose driver died (or older than a day) are removed (docs/compute.md)."""
        from contextkit.compute.ray.offline import remove_stale_scratch

        try:
            return remove_stale_scratch(self.runtime.offline, now=now)
        except Exception as exc:  # noqa: BLE001 - housekeeping: the next sweep retries
            log.warning("removing stale scratch folders failed: %s", exc)
            return []

    # -- planning -------------------------------------------------------------------------
    def _plan(self, workspace: str, now: float, schedules: dict) -> int:
        planned = 0
        for name, kind, digest, period, first in self._schedulable(workspace):
            found = schedules.get((workspace, name))
            boundary = _align(now, period)
            if found is not None and found[0] == digest:
                cursor, fresh = found[1], False
                if cursor >= boundary:
                    continue  # nothing new: the idle path, no query
            else:
                fresh = True
                cursor = _align(first, period) if first is not None else boundary - period
            intervals = []
            chunk = max(period, self.settings.backfill_chunk_s // period * period)
            while cursor < boundary and len(intervals) < MAX_NEW_INTERVALS:
                if kind == "embedding":
                    end = boundary  # incremental: one run catches up
                elif boundary - cursor > period:
                    end = min(cursor + chunk, boundary)
                else:
                    end = cursor + period
                intervals.append((cursor, end, kind, fresh and not intervals))
                cursor = end
            if self.registry.advance_schedule(
                workspace, name, digest, found, cursor, intervals, now
            ):
                planned += len(intervals)
        return planned

    def _schedulable(self, workspace: str) -> list[tuple[str, str, str, int, float | None]]:
        """``(view, kind, definition hash, period_s, first time)`` of the views to schedule,
        cached until the registry changes."""

        def build():
            specs = self.runtime.specs(workspace)
            out = []
            for name, view in specs.views.items():
                if not (view.online or view.offline):
                    continue
                first = view.feature_start_time
                out.append((
                    name, "batch", spec_hash(view), int(view.batch_schedule_seconds),
                    first.timestamp() if first is not None else None,
                ))  # fmt: skip
            for name, view in specs.embedding_views.items():
                data = view.model_dump(mode="json", exclude={"description", "tags", "owner"})
                digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
                out.append((name, "embedding", digest[:16], self.settings.embedding_every_s, None))
            return out

        return self.runtime.cached(("scheduler.views", workspace), build)

    # -- streams --------------------------------------------------------------------------
    def _streams(self, workspace: str, now: float, report: TickReport) -> None:
        specs = self.runtime.specs(workspace)
        if not specs.push_sources:
            return
        from contextkit.compute.layout import log_table
        from contextkit.compute.streaming import flush_log, ingest_log

        scoped = self.runtime.use(workspace)
        for name, source in specs.push_sources.items():
            key = f"scheduler.flushed:{workspace}:{name}"
            state = json.loads(self.registry.get_setting(key) or '{"at": null, "marks": []}')
            if state["at"] is not None and now - state["at"] < self.settings.flush_every_s:
                continue
            report.flushed[f"{workspace}/{name}"] = flush_log(scoped, workspace, source)
            seq_key = f"ingest_flushed_seq:{workspace}:{name}"
            flushed_seq = int(self.registry.get_setting(seq_key) or 0)
            marks = state["marks"]  # (when, flushed seq): the first time each seq was flushed
            if flushed_seq and all(m[1] < flushed_seq for m in marks):
                marks = [*marks, [now, flushed_seq]]
            old = [m for m in marks if now - m[0] >= self.settings.log_retention_s]
            if old:
                upto = max(m[1] for m in old)
                table, durable = log_table(workspace, name), ingest_log(scoped)
                if durable.has_table(table):
                    with durable.transaction() as writer:
                        report.pruned[f"{workspace}/{name}"] = writer.delete_before(
                            table, "seq", upto + 1
                        )
                marks = [m for m in marks if m[1] > upto]
            self.registry.set_setting(key, json.dumps({"at": now, "marks": marks}))

    # -- claiming and running -------------------------------------------------------------
    def _renew(self, now: float) -> None:
        with self._lock:
            for key in [k for k, f in self._running.items() if f.done()]:
                del self._running[key]
            held = list(self._running)
        if held:
            self.registry.renew_interval_leases(held, self.owner, now + self.settings.lease_s)

    def _claim(self, now: float) -> list[IntervalRecord]:
        with self._lock:
            free = self.settings.concurrency - len(self._running)
        claimed: list[IntervalRecord] = []
        # A read first: an idle scheduler claims nothing and takes no write lock.
        while free > 0 and self.registry.due_intervals(now, 1):
            found = self.registry.claim_interval(self.owner, now, self.settings.lease_s)
            if found is None:
                break
            claimed.append(found)
            free -= 1
        return claimed

    def _execute(self, interval: IntervalRecord) -> str:
        """Run one claimed interval and record its outcome; returns the interval's status."""
        stopping = self._stopping.is_set
        error: str | None = None
        job_id: str | None = None
        try:
            if not self._still_scheduled(interval):
                status = "superseded"
            else:
                job_id = self._run(self.runtime, interval, stopping)
                status = "done"
        except JobCancelledError as exc:
            status, error = ("pending", None) if stopping() else ("failed", exc.message)
        except Exception as exc:  # noqa: BLE001 - recorded, retried, alerted
            error = (
                exc.message if isinstance(exc, ContextKitError) else f"{type(exc).__name__}: {exc}"
            )
            status = "pending" if interval.attempts < self.settings.max_attempts else "failed"
        now = self.clock()
        retry_at = None
        if status == "pending":
            delay = self.settings.backoff_s * 2 ** max(interval.attempts - 1, 0)
            retry_at = now + min(delay, self.settings.backoff_max_s) if error else now
        held = self.registry.finish_interval(
            interval.key,
            self.owner,
            status,
            now,
            job_id=job_id,
            error=error[:500] if error else None,
            next_attempt_at=retry_at,
        )
        if not held:
            log.warning("lost the claim on %s before it finished", interval.key)
        elif status == "failed" and error is not None:
            self._alert(interval, error, now)
        if error:
            log.warning(
                "%s/%s [%s, %s): attempt %d failed: %s", interval.workspace, interval.view,
                _iso(interval.start), _iso(interval.end), interval.attempts, error,
            )  # fmt: skip
        self.runtime.wrote()
        return status

    def _still_scheduled(self, interval: IntervalRecord) -> bool:
        try:
            live = self.runtime.workspace_record(interval.workspace).live
        except ContextKitError:
            return False
        if not live:
            return False
        return any(
            name == interval.view and digest == interval.spec_hash
            for name, _k, digest, _p, _f in self._schedulable(interval.workspace)
        )

    def _alert(self, interval: IntervalRecord, error: str, now: float) -> None:
        self.registry.open_alert(
            AlertRecord(
                id=uuid.uuid4().hex[:12],
                workspace=interval.workspace,
                view=interval.view,
                kind=ALERT_KIND,
                subject="",
                severity="error",
                message=f"the scheduled run of {interval.view} for "
                f"[{_iso(interval.start).isoformat()}, {_iso(interval.end).isoformat()}) failed "
                f"{interval.attempts} times; the last error: {error}",
                details={
                    "interval_start": interval.start,
                    "interval_end": interval.end,
                    "attempts": interval.attempts,
                    "last_error": error,
                },
                job_id=None,
                created_at=now,
                updated_at=now,
            )
        )


def run_interval(
    runtime: Runtime, interval: IntervalRecord, should_stop: Callable[[], bool]
) -> str | None:
    """The job of one interval: a feature view's range (the first one of a definition from the
    beginning), or an embedding view's incremental run. Returns the job's id."""
    if interval.kind == "embedding":
        result = run_view(runtime, interval.workspace, interval.view, should_stop=should_stop)
    else:
        result = run_view(
            runtime,
            interval.workspace,
            interval.view,
            start=None if interval.full else _iso(interval.start),
            end=_iso(interval.end),
            full=interval.full,
            should_stop=should_stop,
        )
    return result.job_id
