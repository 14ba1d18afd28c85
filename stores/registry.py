"""The registry: workspaces, applied object specs (as JSON), apply history, jobs and API keys.

``SQLiteRegistry`` keeps everything in one SQLite file; every write is one transaction, so an apply
either lands whole or not at all. Specs are opaque JSON text here: the core owns their meaning.
The schema and its migrations are written once, in :mod:`contextkit.stores._registry_schema`,
for this registry and the PostgreSQL one (:mod:`contextkit.stores.postgres_registry`), and so are
the records both return and the job leases (:mod:`contextkit.stores._registry_records`; the
records are imported from here, their usual home).

Jobs are leased. A running job records its owner (host, pid and an opaque start token, see
:mod:`contextkit.stores.process`) and a lease (``heartbeat_at``, ``lease_expires_at``) that the
owning registry object renews from a background thread until ``finish_job``. A running job whose
owner is gone is *abandoned*: it is marked ``failed`` with an error starting with ``abandoned``
by whoever looks at the jobs next (``list_jobs``, ``latest_jobs``, ``job_summary``, ``start_job``
or ``reap_abandoned_jobs``). Gone means: on the owner's host, its pid no longer runs that process;
from anywhere else, the lease expired. A scheduler that claims queued jobs can reuse the same
columns: claim by setting the owner and ``lease_expires_at`` where the lease is free or expired.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from contextkit.stores._audit_log import AuditLogMixin, AuditRecord
from contextkit.stores._job_queue import ACTIVE_JOB_STATUSES as ACTIVE_JOB_STATUSES
from contextkit.stores._job_queue import IntervalRecord, JobQueueMixin
from contextkit.stores._registry_records import (  # re-exported: the records' usual home
    ABANDONED as ABANDONED,
)
from contextkit.stores._registry_records import (
    ALERT_COLUMNS,
    JOB_COLUMNS,
    JOB_LEASE_S,
    KEY_COLUMNS,
    STATS_COLUMNS,
    AlertRecord,
    ApiKeyRecord,
    ApplyRecord,
    JobRecord,
    JobStatsRecord,
    LeaseKeeper,
    ObjectRecord,
    WorkspaceRecord,
    abandonment,
    alert_record,
    job_record,
    stats_record,
)
from contextkit.stores._registry_records import (
    COMPLETED_STATUSES as COMPLETED_STATUSES,
)
from contextkit.stores._registry_schema import MIGRATIONS as _MIGRATIONS
from contextkit.stores._registry_schema import SCHEMA as _SCHEMA
from contextkit.stores._registry_schema import SCHEMA_VERSION
from contextkit.stores.errors import ApplyConflictError, MissingError, RegistryVersionError
from contextkit.stores.process import ProcessIdentity, current_process

if TYPE_CHECKING:
    from contextkit.stores.ingest_log import IngestLog

log = logging.getLogger("contextkit.registry")


class RegistryStore(Protocol):
    """What the core needs from a registry: every call it makes (``SQLiteRegistry`` here,
    ``postgres_registry.PostgresRegistry`` for several nodes).

    Writes are transactions: an ``apply`` lands whole or not at all, and raises
    ``ApplyConflictError`` (writing nothing) when the workspace is no longer at ``base_version``.
    ``data_version()`` and ``change_token()`` are cache keys, read on every request: cheap, and
    different from any earlier value once a commit the caller did not see may have happened
    (``data_version``: another process's or connection's; ``change_token``: anyone's). ``close()``
    releases connections; the registry stays usable and reconnects on its next call.
    """

    def data_version(self) -> int: ...
    def close(self) -> None: ...
    def list_workspaces(self) -> list[WorkspaceRecord]: ...
    def get_workspace(self, name: str) -> WorkspaceRecord: ...
    def create_workspace(self, name: str, live: bool) -> WorkspaceRecord: ...
    def delete_workspace(self, name: str) -> None: ...
    def list_objects(self, workspace: str) -> list[ObjectRecord]: ...
    def apply(
        self,
        workspace: str,
        base_version: int,
        upserts: list[tuple[str, str, str]],
        deletes: list[tuple[str, str]],
        applied_by: str,
        summary: dict[str, Any],
    ) -> int: ...
    def list_applies(self, workspace: str) -> list[ApplyRecord]: ...
    def start_job(self, workspace: str, view: str, **fields: Any) -> str: ...
    def finish_job(self, job_id: str, status: str, **fields: Any) -> None: ...
    def list_jobs(
        self, workspace: str | None = None, view: str | None = None, limit: int = 50
    ) -> list[JobRecord]: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def running_jobs(self) -> list[JobRecord]: ...
    def renew_job_leases(self, job_ids: list[str]) -> int: ...
    def reap_abandoned_jobs(self, now: float | None = None) -> list[str]: ...
    def get_setting(self, key: str) -> str | None: ...
    # The push sources' ingest log shared by every node (in the registry's database), or None:
    # the embedded registry leaves the log to each node's SQLite file (compute.streaming.log).
    def ingest_log(self) -> IngestLog | None: ...
    # Orchestration (stores/_job_queue.py): schedules, due intervals, queued jobs, cancellation.
    def list_schedules(self) -> dict[tuple[str, str], tuple[str, float]]: ...
    def advance_schedule(
        self,
        workspace: str,
        view: str,
        spec_hash: str,
        expected: tuple[str, float] | None,
        cursor: float,
        intervals: list[tuple[float, float, str, bool]],
        now: float,
    ) -> bool: ...
    def drop_schedule(self, workspace: str, view: str, now: float) -> None: ...
    def due_intervals(self, now: float, limit: int = 1) -> list[IntervalRecord]: ...
    def claim_interval(
        self, owner: ProcessIdentity, now: float, lease_s: float
    ) -> IntervalRecord | None: ...
    def get_interval(self, key: tuple[str, str, str, float]) -> IntervalRecord | None: ...
    def renew_interval_leases(
        self, keys: list[tuple[str, str, str, float]], owner: ProcessIdentity, until: float
    ) -> int: ...
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
    ) -> bool: ...
    def list_intervals(
        self,
        workspace: str | None = None,
        view: str | None = None,
        status: str | None = None,
        limit: int = 1000,
    ) -> list[IntervalRecord]: ...
    def queue_job(
        self,
        workspace: str,
        view: str,
        *,
        range_start: str | None,
        range_end: str | None,
        request: dict[str, Any],
    ) -> str: ...
    def job_request(self, job_id: str) -> dict[str, Any] | None: ...
    def active_jobs(
        self, workspace: str | None = None, view: str | None = None
    ) -> list[JobRecord]: ...
    def request_cancel(self, job_id: str, now: float) -> str | None: ...
    def cancel_requested(self, job_id: str) -> bool: ...
    def set_job_progress(self, job_id: str, progress: dict[str, Any]) -> None: ...
    def set_setting(self, key: str, value: str) -> None: ...
    def change_token(self) -> tuple[int, int]: ...
    def insert_api_key(self, record: ApiKeyRecord) -> None: ...
    def find_api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    def list_api_keys(
        self, workspace: str | None = None, principal: str | None = None
    ) -> list[ApiKeyRecord]: ...
    def revoke_api_key(self, key_id: str, at: float) -> bool: ...
    def job_summary(self) -> list[tuple[str, str, str, int]]: ...
    def last_succeeded_jobs(self) -> list[JobRecord]: ...
    def save_job_monitoring(
        self, stats: JobStatsRecord | None, workspace: str, view: str, raised: list[AlertRecord]
    ) -> None: ...
    def list_job_stats(
        self, workspace: str, view: str, limit: int = 50, *, completed_only: bool = False
    ) -> list[JobStatsRecord]: ...
    def get_job_stats(self, job_id: str) -> JobStatsRecord | None: ...
    def latest_job_stats(
        self, workspace: str | None = None, *, with_stats: bool = True
    ) -> list[JobStatsRecord]: ...
    def latest_jobs(self, workspace: str | None = None) -> list[JobRecord]: ...
    def open_alert(self, alert: AlertRecord) -> None: ...
    def list_alerts(
        self,
        workspace: str | None = None,
        view: str | None = None,
        *,
        open_only: bool = True,
        limit: int = 500,
    ) -> list[AlertRecord]: ...
    def record_audit(
        self,
        *,
        at: float,
        actor: str,
        key_id: str | None,
        via: str,
        action: str,
        workspace: str | None,
        target: str | None,
        outcome: str,
        details: dict[str, Any] | None = None,
    ) -> str: ...
    def list_audit(
        self,
        workspace: str | None = None,
        *,
        action: str | None = None,
        actor: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]: ...


class SQLiteRegistry(JobQueueMixin, AuditLogMixin):
    """The embedded registry: one SQLite file, WAL mode, one transaction per write."""

    _jq_job_columns = JOB_COLUMNS
    _jq_job_record = staticmethod(job_record)

    def __init__(
        self, path: str | Path, *, create: bool = True, job_lease_s: float = JOB_LEASE_S
    ) -> None:
        self.path = Path(path)
        self.job_lease_s = job_lease_s
        self._leases = LeaseKeeper(self)
        if not self.path.exists() and not create:
            raise MissingError(
                f"no registry at {self.path}",
                hint="run `contextkit apply` in the repo first, or check the registry path",
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._commits = 0  # commits made through this object, on any of its connections
        # SQLite numbers each connection's data_version on its own, and every thread has its own
        # connection: two threads' numbers cannot be compared, and a thread seen for the first
        # time (a pool's new worker) could only count as a change. So data_version is read on one
        # connection kept for that (any thread, under the lock), which sees every other
        # connection's commits; _seen counts the changes it noticed.
        self._watch: sqlite3.Connection | None = None
        self._watch_pid = 0
        self._watch_last: int | None = None
        self._seen = 0
        self._seen_lock = threading.Lock()
        self._check_schema()

    # -- connection handling -------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
        with self._seen_lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    def _transaction(self):
        return _Transaction(self._con(), self)

    @contextmanager
    def _jq_transaction(self, action: str) -> Iterator[Any]:
        with self._transaction() as con:
            yield con.execute

    def _jq_rows(self, sql: str, params: Any = ()) -> list[tuple]:
        return self._con().execute(sql, params).fetchall()

    def _check_schema(self) -> None:
        try:
            with self._transaction() as con:
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        con.execute(statement)
                row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    found = 1  # a new file: the base schema above is version 1
                    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
                elif not row[0].isdigit() or int(row[0]) > SCHEMA_VERSION:
                    raise RegistryVersionError(
                        f"the registry {self.path} was written by a newer contextkit "
                        f"(registry schema {row[0]}, this contextkit reads up to {SCHEMA_VERSION})",
                        hint="upgrade contextkit (pip install -U contextkit) to use this registry",
                    )
                else:
                    found = int(row[0])
                for version in range(found + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[version].strip().split(";"):
                        if statement.strip():
                            _migrate(con, statement)
                if found < SCHEMA_VERSION:
                    con.execute(
                        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                        (str(SCHEMA_VERSION),),
                    )
        except sqlite3.DatabaseError as exc:
            raise RegistryVersionError(
                f"{self.path} is not a contextkit registry ({exc})",
                hint="point the config's `registry:` at a registry file, or move this file away",
            ) from None

    def data_version(self) -> int:
        """Changes whenever a commit lands from another process or from any of this registry's
        threads: a cheap cache invalidation signal.

        Comparable across threads: SQLite numbers each connection's ``data_version`` on its
        own, so it is read on one connection kept for that (under a lock, whatever the calling
        thread), which sees every other connection's commits; a count of the changes it noticed
        is returned. A thread's first call does not count as a change (before, each thread read
        its own connection, and a pool's new worker moved every cache key once)."""
        with self._seen_lock:
            if self._watch is None or self._watch_pid != os.getpid():  # new, closed or forked
                self._watch = sqlite3.connect(
                    self.path, isolation_level=None, timeout=30, check_same_thread=False
                )
                # a new connection numbers its data_version afresh: the first read counts
                self._watch_pid, self._watch_last = os.getpid(), None
            version = self._watch.execute("PRAGMA data_version").fetchone()[0]
            if version != self._watch_last:
                self._watch_last = version
                self._seen += 1
            return self._seen

    def change_token(self) -> tuple[int, int]:
        """Differs from its last value once anyone committed: another process or any of this
        registry's connections (``data_version``, read on a connection of its own), and the
        count of commits made through this object beside it."""
        return (self.data_version(), self._commits)

    # -- workspaces ------------------------------------------------------------------------
    def list_workspaces(self) -> list[WorkspaceRecord]:
        rows = self._con().execute(
            "SELECT name, live, created_at, version FROM workspaces ORDER BY name"
        )
        return [WorkspaceRecord(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    def get_workspace(self, name: str) -> WorkspaceRecord:
        row = (
            self._con()
            .execute(
                "SELECT name, live, created_at, version FROM workspaces WHERE name = ?", (name,)
            )
            .fetchone()
        )
        if row is None:
            raise MissingError(
                f"workspace {name!r} does not exist",
                hint=f"create it with `contextkit workspace create {name} --live`, or list them "
                "with `contextkit workspace list`",
            )
        return WorkspaceRecord(row[0], bool(row[1]), row[2], row[3])

    def create_workspace(self, name: str, live: bool) -> WorkspaceRecord:
        with self._transaction() as con:
            exists = con.execute("SELECT 1 FROM workspaces WHERE name = ?", (name,)).fetchone()
            if exists:
                raise ApplyConflictError(
                    f"workspace {name!r} already exists",
                    hint="pick another name, or `contextkit workspace select` it",
                )
            con.execute(
                "INSERT INTO workspaces (name, live, created_at) VALUES (?, ?, ?)",
                (name, int(live), time.time()),
            )
        return self.get_workspace(name)

    def delete_workspace(self, name: str) -> None:
        self.get_workspace(name)
        with self._transaction() as con:
            for table in (
                "objects", "applies", "jobs", "job_stats", "alerts", "schedules",
                "schedule_intervals",
            ):  # fmt: skip
                con.execute(f"DELETE FROM {table} WHERE workspace = ?", (name,))
            con.execute("DELETE FROM workspaces WHERE name = ?", (name,))
            # A workspace created later under the same name must not inherit these keys.
            con.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE workspace = ? AND revoked_at IS NULL",
                (time.time(), name),
            )

    # -- objects and applies -----------------------------------------------------------------
    def list_objects(self, workspace: str) -> list[ObjectRecord]:
        rows = self._con().execute(
            "SELECT kind, name, spec, version FROM objects WHERE workspace = ? ORDER BY kind, name",
            (workspace,),
        )
        return [ObjectRecord(*r) for r in rows]

    def apply(
        self,
        workspace: str,
        base_version: int,
        upserts: list[tuple[str, str, str]],
        deletes: list[tuple[str, str]],
        applied_by: str,
        summary: dict[str, Any],
    ) -> int:
        """Write the changes as the workspace's next version, in one transaction.

        Fails with ``ApplyConflictError`` (and writes nothing) when the workspace is no longer at
        ``base_version``, i.e. someone applied since the plan was computed.
        """
        with self._transaction() as con:
            row = con.execute(
                "SELECT version FROM workspaces WHERE name = ?", (workspace,)
            ).fetchone()
            if row is None:
                raise MissingError(f"workspace {workspace!r} does not exist")
            if row[0] != base_version:
                raise ApplyConflictError(
                    f"workspace {workspace!r} changed since the plan was made "
                    f"(version {base_version} -> {row[0]})",
                    hint="run `contextkit plan` again and apply the new plan",
                )
            version = base_version + 1
            for kind, name in deletes:
                con.execute(
                    "DELETE FROM objects WHERE workspace = ? AND kind = ? AND name = ?",
                    (workspace, kind, name),
                )
            con.executemany(
                "INSERT INTO objects (workspace, kind, name, spec, version) VALUES (?,?,?,?,?) "
                "ON CONFLICT (workspace, kind, name) DO UPDATE SET spec = excluded.spec, "
                "version = excluded.version",
                [(workspace, kind, name, spec, version) for kind, name, spec in upserts],
            )
            con.execute(
                "INSERT INTO applies VALUES (?, ?, ?, ?, ?)",
                (workspace, version, time.time(), applied_by, json.dumps(summary)),
            )
            con.execute("UPDATE workspaces SET version = ? WHERE name = ?", (version, workspace))
        return version

    def list_applies(self, workspace: str) -> list[ApplyRecord]:
        rows = self._con().execute(
            "SELECT workspace, version, applied_at, applied_by, summary FROM applies "
            "WHERE workspace = ? ORDER BY version",
            (workspace,),
        )
        return [ApplyRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # -- jobs ------------------------------------------------------------------------------
    def start_job(self, workspace: str, view: str, **fields: Any) -> str:
        """Record a running job owned by this process; its lease is renewed until
        :meth:`finish_job`. Jobs abandoned by other processes are marked first."""
        self.reap_abandoned_jobs()
        job_id = fields.get("job_id") or uuid.uuid4().hex[:12]
        owner = current_process()
        now = time.time()
        with self._transaction() as con:
            if fields.get("job_id"):  # a queued job (see _job_queue): its worker starts it
                cur = con.execute(
                    "UPDATE jobs SET status = 'running', range_start = ?, range_end = ?, "
                    "spec_hash = ?, started_at = ?, details = ?, owner_host = ?, owner_pid = ?, "
                    "owner_start = ?, heartbeat_at = ?, lease_expires_at = ? WHERE id = ? AND "
                    "status = 'queued'",
                    (fields.get("range_start"), fields.get("range_end"), fields.get("spec_hash"),
                     now, json.dumps(fields.get("details") or {}), owner.host, owner.pid,
                     owner.start, now, now + self.job_lease_s, job_id),
                )  # fmt: skip
                if cur.rowcount != 1:
                    raise MissingError(
                        f"job {job_id} is no longer queued (cancelled, or started elsewhere)"
                    )
                self._leases.hold(job_id)
                return job_id
            con.execute(
                "INSERT INTO jobs (id, workspace, view, status, range_start, range_end, spec_hash,"
                " started_at, details, owner_host, owner_pid, owner_start, heartbeat_at, "
                "lease_expires_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    workspace,
                    view,
                    fields.get("range_start"),
                    fields.get("range_end"),
                    fields.get("spec_hash"),
                    now,
                    json.dumps(fields.get("details") or {}),
                    owner.host,
                    owner.pid,
                    owner.start,
                    now,
                    now + self.job_lease_s,
                ),
            )
        self._leases.hold(job_id)
        return job_id

    def finish_job(self, job_id: str, status: str, **fields: Any) -> None:
        self._leases.release(job_id)
        with self._transaction() as con:
            con.execute(
                "UPDATE jobs SET status = ?, rows_offline = ?, rows_online = ?, finished_at = ?, "
                "error = ?, details = COALESCE(?, details), lease_expires_at = NULL WHERE id = ?",
                (
                    status,
                    fields.get("rows_offline"),
                    fields.get("rows_online"),
                    time.time(),
                    fields.get("error"),
                    json.dumps(fields["details"]) if "details" in fields else None,
                    job_id,
                ),
            )

    def renew_job_leases(self, job_ids: list[str]) -> int:
        """Extend the leases of these running jobs by ``job_lease_s`` from now; returns how many
        are still running (a job marked abandoned meanwhile is not revived)."""
        if not job_ids:
            return 0
        now = time.time()
        marks = ",".join("?" * len(job_ids))
        with self._transaction() as con:
            cur = con.execute(
                f"UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ? WHERE id IN ({marks}) "
                "AND status = 'running'",
                (now, now + self.job_lease_s, *job_ids),
            )
        return cur.rowcount

    def reap_abandoned_jobs(self, now: float | None = None) -> list[str]:
        """Mark running jobs whose owner is gone ``failed`` (error ``abandoned: ...``); returns
        their ids. Gone: the owner's process no longer runs (judged on its own host), or, where
        that cannot be judged, its lease expired. ``finished_at`` is its last heartbeat."""
        now = time.time() if now is None else now
        running = self._con().execute(
            "SELECT id, owner_host, owner_pid, owner_start, heartbeat_at, lease_expires_at "
            "FROM jobs WHERE status = 'running'"
        )
        gone = []
        for job_id, host, pid, start, beat, expires in running.fetchall():
            reason = abandonment(host, pid, start, beat, expires, now)
            if reason is not None:
                gone.append((job_id, reason, expires))
        if not gone:
            return []
        reaped = []
        try:
            with self._transaction() as con:
                for job_id, (reason, by_lease), expires in gone:
                    # Only if nothing changed since it was read: finished, or (lease) renewed.
                    cur = con.execute(
                        "UPDATE jobs SET status = 'failed', error = ?, finished_at = "
                        "COALESCE(heartbeat_at, ?), lease_expires_at = NULL WHERE id = ? AND "
                        "status = 'running' AND (? = 0 OR lease_expires_at IS ?)",
                        (reason, now, job_id, int(by_lease), expires),
                    )
                    if cur.rowcount:
                        reaped.append(job_id)
        except sqlite3.OperationalError as exc:
            # A read-only or busy registry: the read that called this still answers, and the
            # next reader tries again.
            log.warning("could not mark abandoned jobs %s: %s", [g[0] for g in gone], exc)
            return []
        for job_id in reaped:
            log.warning("job %s was abandoned by its process; marked failed", job_id)
        return reaped

    def get_job(self, job_id: str) -> JobRecord | None:
        """One job by id (None when unknown), after marking abandoned jobs."""
        self.reap_abandoned_jobs()
        row = (
            self._con()
            .execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return job_record(row) if row else None

    def running_jobs(self) -> list[JobRecord]:
        """Every job still running (after marking abandoned jobs), oldest first."""
        self.reap_abandoned_jobs()
        rows = self._con().execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'running' ORDER BY started_at"
        )
        return [job_record(r) for r in rows]

    def list_jobs(
        self, workspace: str | None = None, view: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        self.reap_abandoned_jobs()
        where, params = _where(workspace=workspace, view=view)
        rows = self._con().execute(
            f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY started_at DESC LIMIT ?",
            (*params, limit),
        )
        return [job_record(r) for r in rows]

    def job_summary(self) -> list[tuple[str, str, str, int]]:
        """``(workspace, view, status, number of jobs)`` over every recorded job."""
        self.reap_abandoned_jobs()
        rows = self._con().execute(
            "SELECT workspace, view, status, count(*) FROM jobs GROUP BY workspace, view, status "
            "ORDER BY workspace, view, status"
        )
        return [tuple(r) for r in rows]

    def last_succeeded_jobs(self) -> list[JobRecord]:
        """The newest completed job (succeeded, or warning) of every (workspace, view)."""
        rows = self._con().execute(
            f"SELECT {JOB_COLUMNS} FROM jobs j WHERE status IN "
            "('succeeded', 'warning') AND started_at = (SELECT max(started_at) FROM jobs WHERE "
            "workspace = j.workspace AND view = j.view AND status IN ('succeeded', 'warning')) "
            "ORDER BY workspace, view"
        )
        return [job_record(r) for r in rows]

    def latest_jobs(self, workspace: str | None = None) -> list[JobRecord]:
        """The newest job, whatever its status, of every view (of one workspace, or all)."""
        self.reap_abandoned_jobs()
        where, params = ("AND workspace = ?", (workspace,)) if workspace else ("", ())
        rows = self._con().execute(
            f"SELECT {JOB_COLUMNS} FROM jobs j WHERE started_at = "
            "(SELECT max(started_at) FROM jobs WHERE workspace = j.workspace AND view = j.view) "
            f"{where} ORDER BY workspace, view",
            params,
        )
        return [job_record(r) for r in rows]

    # -- monitoring: job statistics and alerts ---------------------------------------------
    def save_job_monitoring(
        self, stats: JobStatsRecord | None, workspace: str, view: str, raised: list[AlertRecord]
    ) -> None:
        """Store a job's statistics and the view's alerts as of that job, in one transaction.

        Each of ``raised`` updates the view's open alert of the same kind and subject, or opens
        one; every other open alert of the view is resolved (by ``stats.job_id``).
        """
        now = time.time()
        job_id = stats.job_id if stats is not None else None
        with self._transaction() as con:
            if stats is not None:
                con.execute(
                    "INSERT OR REPLACE INTO job_stats (job_id, workspace, view, created_at, scope,"
                    " rows, newest_event, max_drift, stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        stats.job_id,
                        stats.workspace,
                        stats.view,
                        stats.created_at,
                        stats.scope,
                        stats.rows,
                        stats.newest_event,
                        stats.max_drift,
                        json.dumps(stats.stats),
                    ),
                )
            open_alerts = {
                (kind, subject): alert_id
                for alert_id, kind, subject in con.execute(
                    "SELECT id, kind, subject FROM alerts WHERE workspace = ? AND view = ? AND "
                    "resolved_at IS NULL",
                    (workspace, view),
                )
            }
            for alert in raised:
                found = open_alerts.pop((alert.kind, alert.subject), None)
                _write_alert(con, alert, workspace, view, found, now)
            for alert_id in open_alerts.values():
                con.execute(
                    "UPDATE alerts SET resolved_at = ?, resolved_by = ? WHERE id = ?",
                    (now, job_id, alert_id),
                )

    def open_alert(self, alert: AlertRecord) -> None:
        """Raise an alert outside a job (a failed push-based encode): it updates the view's open
        alert of the same kind and subject, or opens one. Other open alerts are left alone; the
        view's next job that records monitoring resolves it like any other."""
        now = time.time()
        with self._transaction() as con:
            found = con.execute(
                "SELECT id FROM alerts WHERE workspace = ? AND view = ? AND kind = ? AND "
                "subject = ? AND resolved_at IS NULL",
                (alert.workspace, alert.view, alert.kind, alert.subject),
            ).fetchone()
            _write_alert(con, alert, alert.workspace, alert.view, found and found[0], now)

    def list_job_stats(
        self, workspace: str, view: str, limit: int = 50, *, completed_only: bool = False
    ) -> list[JobStatsRecord]:
        """A view's job statistics, newest first (``completed_only``: of jobs that wrote)."""
        status = "AND j.status IN ('succeeded', 'warning')" if completed_only else ""
        rows = self._con().execute(
            f"SELECT {STATS_COLUMNS} FROM job_stats s LEFT JOIN jobs j ON j.id = s.job_id "
            f"WHERE s.workspace = ? AND s.view = ? {status} ORDER BY s.created_at DESC LIMIT ?",
            (workspace, view, limit),
        )
        return [stats_record(r) for r in rows]

    def get_job_stats(self, job_id: str) -> JobStatsRecord | None:
        row = (
            self._con()
            .execute(
                f"SELECT {STATS_COLUMNS} FROM job_stats s LEFT JOIN jobs j ON j.id = s.job_id "
                "WHERE s.job_id = ?",
                (job_id,),
            )
            .fetchone()
        )
        return stats_record(row) if row else None

    def latest_job_stats(
        self, workspace: str | None = None, *, with_stats: bool = True
    ) -> list[JobStatsRecord]:
        """The newest statistics of a completed job of every view (of one workspace, or all);
        ``with_stats=False`` leaves out the statistics themselves (``stats`` is ``{}``)."""
        where, params = ("AND s.workspace = ?", (workspace,)) if workspace else ("", ())
        columns = STATS_COLUMNS if with_stats else STATS_COLUMNS.replace("s.stats", "'{}'")
        rows = self._con().execute(
            f"SELECT {columns} FROM job_stats s JOIN jobs j ON j.id = s.job_id WHERE "
            "j.status IN ('succeeded', 'warning') AND s.created_at = (SELECT max(t.created_at) "
            "FROM job_stats t JOIN jobs k ON k.id = t.job_id WHERE t.workspace = s.workspace AND "
            f"t.view = s.view AND k.status IN ('succeeded', 'warning')) {where} "
            "ORDER BY s.workspace, s.view",
            params,
        )
        return [stats_record(r) for r in rows]

    def list_alerts(
        self,
        workspace: str | None = None,
        view: str | None = None,
        *,
        open_only: bool = True,
        limit: int = 500,
    ) -> list[AlertRecord]:
        """Alerts, newest first: open ones only, unless ``open_only=False``."""
        where, params = _where(workspace=workspace, view=view)
        if open_only:
            where = f"{where} AND resolved_at IS NULL" if where else "WHERE resolved_at IS NULL"
        rows = self._con().execute(
            f"SELECT {ALERT_COLUMNS} FROM alerts {where} ORDER BY updated_at DESC LIMIT ?",
            (*params, limit),
        )
        return [alert_record(r) for r in rows]

    # -- API keys --------------------------------------------------------------------------
    def insert_api_key(self, record: ApiKeyRecord) -> None:
        with self._transaction() as con:
            con.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.key_hash,
                    record.principal,
                    record.kind,
                    record.workspace,
                    record.role,
                    record.description,
                    record.created_at,
                    record.expires_at,
                    record.revoked_at,
                ),
            )

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = (
            self._con()
            .execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
            .fetchone()
        )
        return ApiKeyRecord(*row) if row else None

    def list_api_keys(
        self, workspace: str | None = None, principal: str | None = None
    ) -> list[ApiKeyRecord]:
        where, params = _where(workspace=workspace, principal=principal)
        rows = self._con().execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys {where} ORDER BY principal, created_at", params
        )
        return [ApiKeyRecord(*r) for r in rows]

    def revoke_api_key(self, key_id: str, at: float) -> bool:
        """Mark a key revoked; False when no unrevoked key has this id."""
        with self._transaction() as con:
            cur = con.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, key_id),
            )
        return cur.rowcount > 0

    def ingest_log(self) -> IngestLog | None:
        """None: with the embedded registry, each node keeps its ingest log in SQLite."""
        return None

    # -- settings --------------------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        row = self._con().execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self._transaction() as con:
            con.execute(
                "INSERT INTO settings VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value",
                (key, value),
            )


def _write_alert(
    con: sqlite3.Connection,
    alert: AlertRecord,
    workspace: str,
    view: str,
    open_id: str | None,
    now: float,
) -> None:
    """Update the open alert ``open_id`` with ``alert``'s content, or insert ``alert``."""
    if open_id is not None:
        con.execute(
            "UPDATE alerts SET severity = ?, message = ?, details = ?, job_id = ?, updated_at = ? "
            "WHERE id = ?",
            (alert.severity, alert.message, json.dumps(alert.details), alert.job_id, now, open_id),
        )
        return
    con.execute(
        f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
        (alert.id, workspace, view, alert.kind, alert.subject, alert.severity, alert.message,
         json.dumps(alert.details), alert.job_id, now, now),
    )  # fmt: skip


def _migrate(con: sqlite3.Connection, statement: str) -> None:
    """Run one migration statement; a column it adds that exists already is left as it is (every
    step can run twice, as ``CREATE ... IF NOT EXISTS`` can)."""
    try:
        con.execute(statement)
    except sqlite3.OperationalError as exc:
        if not ("ADD COLUMN" in statement and "duplicate column name" in str(exc)):
            raise


def _where(**equals: Any) -> tuple[str, list[Any]]:
    """``WHERE col = ? AND ...`` for the columns given a value (None: no condition), with its
    parameters; ``("", [])`` when none is given. Column names come from code, never input."""
    given = {col: value for col, value in equals.items() if value is not None}
    if not given:
        return "", []
    return "WHERE " + " AND ".join(f"{col} = ?" for col in given), list(given.values())


class _Transaction:
    """``with _Transaction(con):`` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""

    def __init__(self, con: sqlite3.Connection, registry: SQLiteRegistry | None = None) -> None:
        self.con = con
        self.registry = registry

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.con.execute("COMMIT")
            if self.registry is not None:
                self.registry._commits += 1
        else:
            self.con.execute("ROLLBACK")
