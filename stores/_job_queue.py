"""Orchestration state in the registry: queued jobs, cancellation, schedules and due intervals.

Written once for both registries (:class:`~contextkit.stores.registry.SQLiteRegistry` and
:class:`~contextkit.stores.postgres_registry.PostgresRegistry`) as a mixin over three hooks:
``_jq_transaction(action)`` (a context manager yielding ``run(sql, params)``), ``_jq_rows(sql,
params)`` and ``_jq_lock(run)`` (what serializes claims: SQLite's ``BEGIN IMMEDIATE`` already
does; PostgreSQL takes an advisory transaction lock). The SQL uses ``?`` placeholders, which the
PostgreSQL side turns into ``%s``.

- **Schedules**: one row per view, ``(spec_hash, cursor)``: how far the view's intervals were
  generated for its current definition. :meth:`advance_schedule` inserts the new intervals and
  moves the cursor in one transaction, only if the cursor is still what the caller read
  (compare-and-set), so two schedulers generate each interval once.
- **Intervals**: the primary key is ``(workspace, view, spec_hash, interval_start)``: an interval
  exists once, whoever generated it. :meth:`claim_interval` takes the oldest due interval of a
  view with nothing running, setting its owner and lease (``pending``, or ``running`` with an
  expired lease: its owner died); :meth:`finish_interval` only counts for the owner that still
  holds it.
- **Queued jobs**: the jobs API records a job ``queued`` (``request`` holds what to run) and
  returns its id at once; ``start_job(job_id=...)`` moves it to ``running``. A cancel request
  marks a queued job ``cancelled`` at once, and a running one ``cancel_requested_at`` (its worker
  stops at its next batch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from contextkit.stores.process import ProcessIdentity

# An interval's states: due (pending), claimed (running), and the three ends.
INTERVAL_STATES = ("pending", "running", "done", "failed", "superseded")
# Job states the jobs API adds to the materialization's own: waiting for a worker, and stopped.
ACTIVE_JOB_STATUSES = ("queued", "running")

_INTERVAL_COLUMNS = (
    "workspace, view, spec_hash, interval_start, interval_end, kind, full_run, status, attempts, "
    "next_attempt_at, job_id, error, owner_host, owner_pid, owner_start, lease_expires_at, "
    "created_at, finished_at"
)

_I_COLUMNS = ", ".join(f"i.{c}" for c in _INTERVAL_COLUMNS.split(", "))


@dataclass(frozen=True)
class IntervalRecord:
    """One due interval of a view's schedule (times are Unix seconds)."""

    workspace: str
    view: str
    spec_hash: str
    start: float
    end: float
    kind: str  # "batch" (a feature view's range) or "embedding" (an incremental encode)
    full: bool  # the first interval of a definition: recompute from the beginning
    status: str
    attempts: int
    next_attempt_at: float
    job_id: str | None
    error: str | None
    owner_host: str | None
    owner_pid: int | None
    owner_start: str | None
    lease_expires_at: float | None
    created_at: float
    finished_at: float | None

    @property
    def key(self) -> tuple[str, str, str, float]:
        return (self.workspace, self.view, self.spec_hash, self.start)


def _interval(row) -> IntervalRecord:
    values = list(row)
    values[6] = bool(values[6])
    return IntervalRecord(*values)


Run = Callable[[str, Any], Any]


class JobQueueMixin:
    """The orchestration queries of a registry (see the module docstring)."""

    def _jq_transaction(self, action: str) -> AbstractContextManager[Run]:
        raise NotImplementedError

    def _jq_rows(self, sql: str, params: Any = ()) -> list[tuple]:
        raise NotImplementedError

    # The registry's job columns and row -> JobRecord (set by each registry class).
    _jq_job_columns: str = ""
    _jq_job_record: Callable[[Any], Any]

    def _jq_lock(self, run: Run) -> None:
        """Serialize claims (within the claim's transaction)."""

    # -- schedules ------------------------------------------------------------------------
    def list_schedules(self) -> dict[tuple[str, str], tuple[str, float]]:
        """``(workspace, view) -> (spec_hash, cursor)`` of every schedule: one query."""
        rows = self._jq_rows("SELECT workspace, view, spec_hash, cursor FROM schedules")
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    def advance_schedule(
        self,
        workspace: str,
        view: str,
        spec_hash: str,
        expected: tuple[str, float] | None,
        cursor: float,
        intervals: list[tuple[float, float, str, bool]],
        now: float,
    ) -> bool:
        """Insert ``intervals`` (start, end, kind, full) and set the view's schedule to
        ``(spec_hash, cursor)``, if it is still ``expected`` (None: no schedule yet); False,
        writing nothing, when another scheduler moved it first. A new definition supersedes the
        pending intervals of the old one."""
        with self._jq_transaction("advancing a schedule") as run:
            found = run(
                "SELECT spec_hash, cursor FROM schedules WHERE workspace = ? AND view = ?",
                (workspace, view),
            ).fetchone()
            if (tuple(found) if found else None) != (tuple(expected) if expected else None):
                return False
            # The write is the compare-and-set (the read above is not enough where two
            # transactions read at once: PostgreSQL's READ COMMITTED).
            if found is None:
                moved = run(
                    "INSERT INTO schedules VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (workspace, view, spec_hash, cursor, now),
                ).rowcount
            else:
                moved = run(
                    "UPDATE schedules SET spec_hash = ?, cursor = ?, updated_at = ? "
                    "WHERE workspace = ? AND view = ? AND spec_hash = ? AND cursor = ?",
                    (spec_hash, cursor, now, workspace, view, found[0], found[1]),
                ).rowcount
            if moved != 1:
                return False
            if found is not None and found[0] != spec_hash:
                run(
                    "UPDATE schedule_intervals SET status = 'superseded', finished_at = ? WHERE "
                    "workspace = ? AND view = ? AND spec_hash <> ? AND status = 'pending'",
                    (now, workspace, view, spec_hash),
                )
            for start, end, kind, full in intervals:
                run(
                    f"INSERT INTO schedule_intervals ({_INTERVAL_COLUMNS}) VALUES (?, ?, ?, ?, ?,"
                    " ?, ?, 'pending', 0, ?, NULL, NULL, NULL, NULL, NULL, NULL, ?, NULL) "
                    "ON CONFLICT DO NOTHING",
                    (workspace, view, spec_hash, start, end, kind, int(full), now, now),
                )
        return True

    def drop_schedule(self, workspace: str, view: str, now: float) -> None:
        """Forget a view's schedule (the view was deleted); its pending intervals are
        superseded."""
        with self._jq_transaction("dropping a schedule") as run:
            run("DELETE FROM schedules WHERE workspace = ? AND view = ?", (workspace, view))
            run(
                "UPDATE schedule_intervals SET status = 'superseded', finished_at = ? WHERE "
                "workspace = ? AND view = ? AND status = 'pending'",
                (now, workspace, view),
            )

    # -- intervals ------------------------------------------------------------------------
    _DUE = (
        "((i.status = 'pending' AND i.next_attempt_at <= ?) OR "
        "(i.status = 'running' AND i.lease_expires_at < ?)) "
        # the view's oldest interval still to do: a view's intervals run in order ...
        "AND NOT EXISTS (SELECT 1 FROM schedule_intervals o WHERE o.workspace = i.workspace AND "
        "o.view = i.view AND o.spec_hash = i.spec_hash AND o.status IN ('pending', 'running') "
        "AND o.interval_start < i.interval_start) "
        # ... and one at a time (whatever its definition)
        "AND NOT EXISTS (SELECT 1 FROM schedule_intervals r WHERE r.workspace = i.workspace AND "
        "r.view = i.view AND r.status = 'running' AND r.lease_expires_at >= ? AND NOT "
        "(r.spec_hash = i.spec_hash AND r.interval_start = i.interval_start))"
    )

    def due_intervals(self, now: float, limit: int = 1) -> list[IntervalRecord]:
        """Intervals a scheduler could claim now (read only; cheap when there are none)."""
        rows = self._jq_rows(
            f"SELECT {_I_COLUMNS} FROM schedule_intervals i WHERE {self._DUE} "
            "ORDER BY i.next_attempt_at, i.interval_start LIMIT ?",
            (now, now, now, limit),
        )
        return [_interval(r) for r in rows]

    def claim_interval(
        self, owner: ProcessIdentity, now: float, lease_s: float
    ) -> IntervalRecord | None:
        """Take the next due interval (see the module docstring) for ``owner`` with a lease
        until ``now + lease_s``; None when none is due. Taking over an expired lease counts as
        another attempt."""
        with self._jq_transaction("claiming an interval") as run:
            self._jq_lock(run)
            row = run(
                f"SELECT {_I_COLUMNS} FROM schedule_intervals i WHERE {self._DUE} "
                "ORDER BY i.next_attempt_at, i.interval_start LIMIT 1",
                (now, now, now),
            ).fetchone()
            if row is None:
                return None
            found = _interval(row)
            cur = run(
                "UPDATE schedule_intervals SET status = 'running', attempts = attempts + 1, "
                "owner_host = ?, owner_pid = ?, owner_start = ?, lease_expires_at = ?, "
                "error = COALESCE(error, ?) WHERE workspace = ? AND view = ? AND spec_hash = ? "
                "AND interval_start = ? AND (status = 'pending' OR (status = 'running' AND "
                "lease_expires_at < ?))",
                (
                    owner.host,
                    owner.pid,
                    owner.start,
                    now + lease_s,
                    "taken over: the previous owner's lease expired"
                    if found.status == "running"
                    else None,
                    *found.key,
                    now,
                ),
            )
            if cur.rowcount != 1:
                return None
        return self.get_interval(found.key)

    def get_interval(self, key: tuple[str, str, str, float]) -> IntervalRecord | None:
        rows = self._jq_rows(
            f"SELECT {_INTERVAL_COLUMNS} FROM schedule_intervals WHERE workspace = ? AND "
            "view = ? AND spec_hash = ? AND interval_start = ?",
            key,
        )
        return _interval(rows[0]) if rows else None

    def renew_interval_leases(
        self, keys: list[tuple[str, str, str, float]], owner: ProcessIdentity, until: float
    ) -> int:
        """Extend the leases of the intervals ``owner`` still holds; returns how many."""
        held = 0
        if not keys:
            return 0
        with self._jq_transaction("renewing interval leases") as run:
            for key in keys:
                held += run(
                    "UPDATE schedule_intervals SET lease_expires_at = ? WHERE workspace = ? AND "
                    "view = ? AND spec_hash = ? AND interval_start = ? AND status = 'running' "
                    "AND owner_host = ? AND owner_pid = ? AND owner_start = ?",
                    (until, *key, owner.host, owner.pid, owner.start),
                ).rowcount
        return held

    def finish_interval(
        self,
        key: tuple[str, str, str, float],
        owner: ProcessIdentity,
        status: str,
        now: float,
        *,
        job_id: str | None = None,
        error: str | None = None,
        next_attempt_at: float | None = None,
    ) -> bool:
        """End ``owner``'s claim: ``done``, ``failed`` (gave up), ``superseded``, or
        ``pending`` again (a retry at ``next_attempt_at``). False when ``owner`` no longer held
        it (its lease expired and another scheduler took it over)."""
        with self._jq_transaction("finishing an interval") as run:
            cur = run(
                "UPDATE schedule_intervals SET status = ?, job_id = COALESCE(?, job_id), "
                "error = ?, next_attempt_at = COALESCE(?, next_attempt_at), "
                "lease_expires_at = NULL, finished_at = ? WHERE workspace = ? AND view = ? AND "
                "spec_hash = ? AND interval_start = ? AND status = 'running' AND owner_host = ? "
                "AND owner_pid = ? AND owner_start = ?",
                (
                    status,
                    job_id,
                    error,
                    next_attempt_at,
                    None if status == "pending" else now,
                    *key,
                    owner.host,
                    owner.pid,
                    owner.start,
                ),
            )
        return cur.rowcount == 1

    def list_intervals(
        self,
        workspace: str | None = None,
        view: str | None = None,
        status: str | None = None,
        limit: int = 1000,
    ) -> list[IntervalRecord]:
        """Intervals, oldest first."""
        given = {c: v for c, v in (("workspace", workspace), ("view", view), ("status", status))}
        given = {c: v for c, v in given.items() if v is not None}
        where = ("WHERE " + " AND ".join(f"{c} = ?" for c in given)) if given else ""
        rows = self._jq_rows(
            f"SELECT {_INTERVAL_COLUMNS} FROM schedule_intervals {where} "
            "ORDER BY workspace, view, interval_start LIMIT ?",
            (*given.values(), limit),
        )
        return [_interval(r) for r in rows]

    # -- queued jobs and cancellation -----------------------------------------------------
    def queue_job(
        self,
        workspace: str,
        view: str,
        *,
        range_start: str | None,
        range_end: str | None,
        request: dict[str, Any],
    ) -> str:
        """Record a job that a worker will run (status ``queued``); returns its id."""
        import uuid

        job_id = uuid.uuid4().hex[:12]
        with self._jq_transaction("queueing a job") as run:
            run(
                "INSERT INTO jobs (id, workspace, view, status, range_start, range_end, "
                "started_at, details, request) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, workspace, view, range_start, range_end, time.time(),
                 json.dumps({"progress": "queued"}), json.dumps(request)),
            )  # fmt: skip
        return job_id

    def job_request(self, job_id: str) -> dict[str, Any] | None:
        """What a queued job was asked to run (None for a job not made by ``queue_job``)."""
        rows = self._jq_rows("SELECT request FROM jobs WHERE id = ?", (job_id,))
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    def active_jobs(self, workspace: str | None = None, view: str | None = None) -> list[JobRecord]:  # noqa: F821 - registry.JobRecord (importing it would be a circle)
        """Queued and running jobs (of one view), oldest first."""
        self.reap_abandoned_jobs()  # type: ignore[attr-defined]
        where = "status IN ('queued', 'running')"
        params: list[Any] = []
        for col, value in (("workspace", workspace), ("view", view)):
            if value is not None:
                where += f" AND {col} = ?"
                params.append(value)
        rows = self._jq_rows(
            f"SELECT {self._jq_job_columns} FROM jobs WHERE {where} ORDER BY started_at", params
        )
        return [self._jq_job_record(r) for r in rows]

    def request_cancel(self, job_id: str, now: float) -> str | None:
        """Ask a job to stop: a queued job is ``cancelled`` at once, a running one is flagged
        for its worker. Returns the job's status after the request (None: no such job)."""
        with self._jq_transaction("cancelling a job") as run:
            found = run("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if found is None:
                return None
            if found[0] == "queued":
                run(
                    "UPDATE jobs SET status = 'cancelled', finished_at = ?, cancel_requested_at = "
                    "?, error = 'cancelled before it started' WHERE id = ?",
                    (now, now, job_id),
                )
                return "cancelled"
            if found[0] == "running":
                run(
                    "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ?) "
                    "WHERE id = ?",
                    (now, job_id),
                )
            return found[0]

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked this job to stop (one indexed read: workers call it per
        batch)."""
        rows = self._jq_rows("SELECT cancel_requested_at FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0][0] is not None)

    def set_job_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Merge ``progress`` (stage, rows so far, log lines) into a running job's details."""
        with self._jq_transaction("recording job progress") as run:
            found = run("SELECT details FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if found is None:
                return
            details = json.loads(found[0] or "{}")
            details.update(progress)
            run("UPDATE jobs SET details = ? WHERE id = ?", (json.dumps(details), job_id))
