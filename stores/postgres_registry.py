"""The registry on PostgreSQL: one registry shared by every serving node and job of a deployment.

``PostgresRegistry`` answers the ``RegistryStore`` interface as ``SQLiteRegistry`` does, on the
same schema and migrations (:mod:`contextkit.stores._registry_schema`), with the same records,
job leases and abandonment rule (shared with :mod:`contextkit.stores.registry`). The statements
are kept parallel to SQLite's rather than generated from them: placeholders, upserts, null-safe
comparisons, row locks and collations differ, and each side reads plainly as its engine's SQL.

**Transactions.** Every write is one transaction. ``apply`` locks the workspace's row
(``SELECT ... FOR UPDATE``) before it checks the base version, so of two concurrent applies
from the same base one commits and the other, once the first is done, finds the new version and
raises ``ApplyConflictError`` having written nothing. Deleting a workspace takes the same lock;
monitoring writes take a per-view advisory lock, so two jobs never open the same alert twice.

**Changes.** Every write transaction sends ``NOTIFY`` as it commits; ``data_version()`` is a
count of the notifications heard by a listener thread (see
:mod:`contextkit.stores._postgres_connection`), so it costs no round trip and a serving node
sees another node's apply a few milliseconds after its commit.

**Schema.** Opening an up-to-date registry only reads (a read-only role may serve from it); a
new database gets the schema and an older registry is migrated, once, whatever the number of
nodes starting; a newer one is refused (:mod:`contextkit.stores._postgres_schema`).

**Errors** are the stores' classes, naming the URL with its password masked, within the
connect timeout: see :class:`~contextkit.stores._postgres_connection.PostgresConnector`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from contextkit.stores._audit_log import AuditLogMixin
from contextkit.stores._job_queue import JobQueueMixin
from contextkit.stores._postgres_connection import (
    ADVISORY_LOCK_CLASS,
    CHANNEL,
    CONNECT_TIMEOUT_S,
    POOL_SIZE,
    ChangeListener,
    PostgresConnector,
)
from contextkit.stores._postgres_schema import open_schema
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
from contextkit.stores.errors import (
    ApplyConflictError,
    MissingError,
    StoreFailure,
    StoreServerUnavailable,
    WriteConflict,
)
from contextkit.stores.ingest_log import IngestLog, PostgresIngestLog
from contextkit.stores.process import current_process

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("contextkit.registry")

# The advisory locks (class, hashtext of workspace/view) that serialize a view's alert writes.
_MONITORING_LOCK_CLASS = ADVISORY_LOCK_CLASS + 1
# The advisory lock (ADVISORY_LOCK_CLASS, this) that serializes schedulers' interval claims.
_CLAIM_LOCK = 2
# How long an apply waits for another apply's lock on the same workspace.
APPLY_LOCK_TIMEOUT = "30s"
# Text sorts as SQLite's BINARY collation does, whatever the database's locale.
C = 'COLLATE "C"'


class PostgresRegistry(JobQueueMixin, AuditLogMixin):
    """The registry in a PostgreSQL database (``postgresql://user:password@host:port/db``)."""

    _jq_job_columns = JOB_COLUMNS
    _jq_job_record = staticmethod(job_record)

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        job_lease_s: float = JOB_LEASE_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self._db = PostgresConnector(url, connect_timeout_s=connect_timeout_s, pool_size=pool_size)
        self.url = self._db.masked_url  # the password masked: safe to show
        self.job_lease_s = job_lease_s
        self._leases = LeaseKeeper(_LeaseRenewal(self))  # type: ignore[arg-type]
        self._changes = ChangeListener(self._db)
        self._commits = 0  # commits made through this object
        self._ingest_log: PostgresIngestLog | None = None
        # A registry dropped without close() must not leave its listener running.
        weakref.finalize(self, _release, self._changes, self._db)
        open_schema(self._db, create=create)

    def __repr__(self) -> str:
        return f"PostgresRegistry({self.url!r})"

    # -- connections and transactions ----------------------------------------------------
    def close(self) -> None:
        """Stop listening for changes and close idle connections; the registry stays usable
        (the next call connects again)."""
        _release(self._changes, self._db)

    @contextmanager
    def _transaction(self, action: str) -> Iterator[psycopg.Connection]:
        """One transaction that tells every listener of the registry when it commits."""
        with self._db.connection(action) as con, con.transaction():
            yield con
            con.execute(f"NOTIFY {CHANNEL}")
        self._commits += 1
        self._changes.bump()

    @contextmanager
    def _jq_transaction(self, action: str) -> Iterator[Any]:
        with self._transaction(action) as con:
            yield lambda sql, params=(): con.execute(sql.replace("?", "%s"), params)

    def _jq_rows(self, sql: str, params: Any = ()) -> list[tuple]:
        return self._rows("reading the job queue", sql.replace("?", "%s"), params)

    def _jq_lock(self, run) -> None:
        run("SELECT pg_advisory_xact_lock(?, ?)", (ADVISORY_LOCK_CLASS, _CLAIM_LOCK))

    def _rows(self, action: str, sql: str, params: Any = ()) -> list[tuple]:
        with self._db.connection(action) as con:
            return con.execute(sql, params).fetchall()

    def _row(self, action: str, sql: str, params: Any = ()) -> tuple | None:
        with self._db.connection(action) as con:
            return con.execute(sql, params).fetchone()

    def data_version(self) -> int:
        """Changes once any registry object (any node) committed since the last call; free to
        call (no round trip), and changing on every call while changes cannot be heard."""
        return self._changes.count()

    def change_token(self) -> tuple[int, int]:
        """Differs from its last value once anyone committed (own commits included)."""
        return (self._changes.count(), self._commits)

    # -- workspaces ----------------------------------------------------------------------
    def list_workspaces(self) -> list[WorkspaceRecord]:
        rows = self._rows(
            "listing workspaces",
            f"SELECT name, live, created_at, version FROM workspaces ORDER BY name {C}",
        )
        return [WorkspaceRecord(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    def get_workspace(self, name: str) -> WorkspaceRecord:
        row = self._row(
            "reading a workspace",
            "SELECT name, live, created_at, version FROM workspaces WHERE name = %s",
            (name,),
        )
        if row is None:
            raise _missing_workspace(name)
        return WorkspaceRecord(row[0], bool(row[1]), row[2], row[3])

    def create_workspace(self, name: str, live: bool) -> WorkspaceRecord:
        with self._transaction("creating a workspace") as con:
            cur = con.execute(
                "INSERT INTO workspaces (name, live, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, int(live), time.time()),
            )
            if cur.rowcount == 0:
                raise ApplyConflictError(
                    f"workspace {name!r} already exists",
                    hint="pick another name, or `contextkit workspace select` it",
                )
        return self.get_workspace(name)

    def delete_workspace(self, name: str) -> None:
        with self._transaction("deleting a workspace") as con:
            locked = con.execute("SELECT 1 FROM workspaces WHERE name = %s FOR UPDATE", (name,))
            if locked.fetchone() is None:
                raise _missing_workspace(name)
            for table in (
                "objects", "applies", "jobs", "job_stats", "alerts", "schedules",
                "schedule_intervals",
            ):  # fmt: skip
                con.execute(f"DELETE FROM {table} WHERE workspace = %s", (name,))
            con.execute("DELETE FROM workspaces WHERE name = %s", (name,))
            # A workspace created later under the same name must not inherit these keys.
            con.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE workspace = %s AND revoked_at IS NULL",
                (time.time(), name),
            )

    # -- objects and applies -------------------------------------------------------------
    def list_objects(self, workspace: str) -> list[ObjectRecord]:
        rows = self._rows(
            "reading applied objects",
            "SELECT kind, name, spec, version FROM objects WHERE workspace = %s "
            f"ORDER BY kind {C}, name {C}",
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
        ``base_version``: someone applied since the plan was computed, or is applying now (this
        waits for that apply to end, then finds the version it wrote).
        """
        from psycopg import errors

        with self._transaction(f"applying to workspace {workspace!r}") as con:
            con.execute(f"SET LOCAL lock_timeout = '{APPLY_LOCK_TIMEOUT}'")
            try:
                row = con.execute(
                    "SELECT version FROM workspaces WHERE name = %s FOR UPDATE", (workspace,)
                ).fetchone()
            except errors.LockNotAvailable:
                raise ApplyConflictError(
                    f"workspace {workspace!r} is being applied to by another process (still "
                    f"after {APPLY_LOCK_TIMEOUT})",
                    hint="wait for that apply to finish, then run `contextkit plan` again",
                ) from None
            if row is None:
                raise MissingError(f"workspace {workspace!r} does not exist")
            if row[0] != base_version:
                raise ApplyConflictError(
                    f"workspace {workspace!r} changed since the plan was made "
                    f"(version {base_version} -> {row[0]})",
                    hint="run `contextkit plan` again and apply the new plan",
                )
            version = base_version + 1
            with con.cursor() as cur:
                if deletes:
                    cur.executemany(
                        "DELETE FROM objects WHERE workspace = %s AND kind = %s AND name = %s",
                        [(workspace, kind, name) for kind, name in deletes],
                    )
                if upserts:
                    cur.executemany(
                        "INSERT INTO objects (workspace, kind, name, spec, version) "
                        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (workspace, kind, name) "
                        "DO UPDATE SET spec = excluded.spec, version = excluded.version",
                        [(workspace, kind, name, spec, version) for kind, name, spec in upserts],
                    )
            con.execute(
                "INSERT INTO applies VALUES (%s, %s, %s, %s, %s)",
                (workspace, version, time.time(), applied_by, json.dumps(summary)),
            )
            con.execute("UPDATE workspaces SET version = %s WHERE name = %s", (version, workspace))
        return version

    def list_applies(self, workspace: str) -> list[ApplyRecord]:
        rows = self._rows(
            "reading the apply history",
            "SELECT workspace, version, applied_at, applied_by, summary FROM applies "
            "WHERE workspace = %s ORDER BY version",
            (workspace,),
        )
        return [ApplyRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # -- jobs ----------------------------------------------------------------------------
    def start_job(self, workspace: str, view: str, **fields: Any) -> str:
        """Record a running job owned by this process; its lease is renewed until
        :meth:`finish_job`. Jobs abandoned by other processes are marked first."""
        self.reap_abandoned_jobs()
        job_id = fields.get("job_id") or uuid.uuid4().hex[:12]
        owner = current_process()
        now = time.time()
        with self._transaction("starting a job") as con:
            if fields.get("job_id"):  # a queued job (see _job_queue): its worker starts it
                cur = con.execute(
                    "UPDATE jobs SET status = 'running', range_start = %s, range_end = %s, "
                    "spec_hash = %s, started_at = %s, details = %s, owner_host = %s, "
                    "owner_pid = %s, owner_start = %s, heartbeat_at = %s, lease_expires_at = %s "
                    "WHERE id = %s AND status = 'queued'",
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
                "lease_expires_at) VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s)",
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
        with self._transaction("finishing a job") as con:
            con.execute(
                "UPDATE jobs SET status = %s, rows_offline = %s, rows_online = %s, "
                "finished_at = %s, error = %s, details = COALESCE(%s, details), "
                "lease_expires_at = NULL WHERE id = %s",
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
        with self._transaction("renewing job leases") as con:
            cur = con.execute(
                "UPDATE jobs SET heartbeat_at = %s, lease_expires_at = %s WHERE id = ANY(%s) "
                "AND status = 'running'",
                (now, now + self.job_lease_s, list(job_ids)),
            )
        return cur.rowcount

    def reap_abandoned_jobs(self, now: float | None = None) -> list[str]:
        """Mark running jobs whose owner is gone ``failed`` (error ``abandoned: ...``); returns
        their ids. The rule is ``SQLiteRegistry.reap_abandoned_jobs``'s."""
        now = time.time() if now is None else now
        running = self._rows(
            "reading running jobs",
            "SELECT id, owner_host, owner_pid, owner_start, heartbeat_at, lease_expires_at "
            "FROM jobs WHERE status = 'running'",
        )
        gone = []
        for job_id, host, pid, start, beat, expires in running:
            reason = abandonment(host, pid, start, beat, expires, now)
            if reason is not None:
                gone.append((job_id, reason, expires))
        if not gone:
            return []
        reaped = []
        try:
            with self._transaction("marking abandoned jobs") as con:
                for job_id, (reason, by_lease), expires in gone:
                    # Only if nothing changed since it was read: finished, or (lease) renewed.
                    cur = con.execute(
                        "UPDATE jobs SET status = 'failed', error = %s, finished_at = "
                        "COALESCE(heartbeat_at, %s), lease_expires_at = NULL WHERE id = %s AND "
                        "status = 'running' AND (NOT %s OR lease_expires_at IS NOT DISTINCT "
                        "FROM %s::double precision)",
                        (reason, now, job_id, by_lease, expires),
                    )
                    if cur.rowcount:
                        reaped.append(job_id)
        except (StoreServerUnavailable, WriteConflict) as exc:
            # A read-only role or a busy registry: the read that called this still answers,
            # and the next reader tries again.
            log.warning("could not mark abandoned jobs %s: %s", [g[0] for g in gone], exc.message)
            return []
        for job_id in reaped:
            log.warning("job %s was abandoned by its process; marked failed", job_id)
        return reaped

    def get_job(self, job_id: str) -> JobRecord | None:
        """One job by id (None when unknown), after marking abandoned jobs."""
        self.reap_abandoned_jobs()
        row = self._row("reading a job", f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        return job_record(row) if row else None

    def running_jobs(self) -> list[JobRecord]:
        """Every job still running (after marking abandoned jobs), oldest first."""
        self.reap_abandoned_jobs()
        rows = self._rows(
            "reading running jobs",
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'running' ORDER BY started_at",
        )
        return [job_record(r) for r in rows]

    def list_jobs(
        self, workspace: str | None = None, view: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        self.reap_abandoned_jobs()
        where, params = _where(workspace=workspace, view=view)
        rows = self._rows(
            "listing jobs",
            f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY started_at DESC LIMIT %s",
            (*params, limit),
        )
        return [job_record(r) for r in rows]

    def job_summary(self) -> list[tuple[str, str, str, int]]:
        """``(workspace, view, status, number of jobs)`` over every recorded job."""
        self.reap_abandoned_jobs()
        rows = self._rows(
            "summarizing jobs",
            "SELECT workspace, view, status, count(*) FROM jobs GROUP BY workspace, view, status "
            f"ORDER BY workspace {C}, view {C}, status {C}",
        )
        return [tuple(r) for r in rows]

    def last_succeeded_jobs(self) -> list[JobRecord]:
        """The newest completed job (succeeded, or warning) of every (workspace, view)."""
        rows = self._rows(
            "reading completed jobs",
            f"SELECT {JOB_COLUMNS} FROM jobs j WHERE status IN "
            "('succeeded', 'warning') AND started_at = (SELECT max(started_at) FROM jobs WHERE "
            "workspace = j.workspace AND view = j.view AND status IN ('succeeded', 'warning')) "
            f"ORDER BY workspace {C}, view {C}",
        )
        return [job_record(r) for r in rows]

    def latest_jobs(self, workspace: str | None = None) -> list[JobRecord]:
        """The newest job, whatever its status, of every view (of one workspace, or all)."""
        self.reap_abandoned_jobs()
        where, params = ("AND workspace = %s", (workspace,)) if workspace else ("", ())
        rows = self._rows(
            "reading the latest jobs",
            f"SELECT {JOB_COLUMNS} FROM jobs j WHERE started_at = "
            "(SELECT max(started_at) FROM jobs WHERE workspace = j.workspace AND view = j.view) "
            f"{where} ORDER BY workspace {C}, view {C}",
            params,
        )
        return [job_record(r) for r in rows]

    # -- monitoring: job statistics and alerts -------------------------------------------
    def save_job_monitoring(
        self, stats: JobStatsRecord | None, workspace: str, view: str, raised: list[AlertRecord]
    ) -> None:
        """Store a job's statistics and the view's alerts as of that job, in one transaction
        (see ``SQLiteRegistry.save_job_monitoring``)."""
        now = time.time()
        job_id = stats.job_id if stats is not None else None
        with self._transaction("saving job monitoring") as con:
            _lock_view_alerts(con, workspace, view)
            if stats is not None:
                con.execute(
                    "INSERT INTO job_stats (job_id, workspace, view, created_at, scope, rows, "
                    "newest_event, max_drift, stats) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (job_id) DO UPDATE SET workspace = excluded.workspace, "
                    "view = excluded.view, created_at = excluded.created_at, "
                    "scope = excluded.scope, rows = excluded.rows, "
                    "newest_event = excluded.newest_event, max_drift = excluded.max_drift, "
                    "stats = excluded.stats",
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
                    "SELECT id, kind, subject FROM alerts WHERE workspace = %s AND view = %s AND "
                    "resolved_at IS NULL",
                    (workspace, view),
                ).fetchall()
            }
            for alert in raised:
                found = open_alerts.pop((alert.kind, alert.subject), None)
                _write_alert(con, alert, workspace, view, found, now)
            for alert_id in open_alerts.values():
                con.execute(
                    "UPDATE alerts SET resolved_at = %s, resolved_by = %s WHERE id = %s",
                    (now, job_id, alert_id),
                )

    def open_alert(self, alert: AlertRecord) -> None:
        """Raise an alert outside a job: updates the view's open alert of the same kind and
        subject, or opens one (see ``SQLiteRegistry.open_alert``)."""
        now = time.time()
        with self._transaction("opening an alert") as con:
            _lock_view_alerts(con, alert.workspace, alert.view)
            found = con.execute(
                "SELECT id FROM alerts WHERE workspace = %s AND view = %s AND kind = %s AND "
                "subject = %s AND resolved_at IS NULL",
                (alert.workspace, alert.view, alert.kind, alert.subject),
            ).fetchone()
            _write_alert(con, alert, alert.workspace, alert.view, found and found[0], now)

    def list_job_stats(
        self, workspace: str, view: str, limit: int = 50, *, completed_only: bool = False
    ) -> list[JobStatsRecord]:
        """A view's job statistics, newest first (``completed_only``: of jobs that wrote)."""
        status = "AND j.status IN ('succeeded', 'warning')" if completed_only else ""
        rows = self._rows(
            "reading job statistics",
            f"SELECT {STATS_COLUMNS} FROM job_stats s LEFT JOIN jobs j ON j.id = s.job_id "
            f"WHERE s.workspace = %s AND s.view = %s {status} ORDER BY s.created_at DESC "
            "LIMIT %s",
            (workspace, view, limit),
        )
        return [stats_record(r) for r in rows]

    def get_job_stats(self, job_id: str) -> JobStatsRecord | None:
        row = self._row(
            "reading job statistics",
            f"SELECT {STATS_COLUMNS} FROM job_stats s LEFT JOIN jobs j ON j.id = s.job_id "
            "WHERE s.job_id = %s",
            (job_id,),
        )
        return stats_record(row) if row else None

    def latest_job_stats(
        self, workspace: str | None = None, *, with_stats: bool = True
    ) -> list[JobStatsRecord]:
        """The newest statistics of a completed job of every view (of one workspace, or all);
        ``with_stats=False`` leaves out the statistics themselves (``stats`` is ``{}``)."""
        where, params = ("AND s.workspace = %s", (workspace,)) if workspace else ("", ())
        columns = STATS_COLUMNS if with_stats else STATS_COLUMNS.replace("s.stats", "'{}'")
        rows = self._rows(
            "reading job statistics",
            f"SELECT {columns} FROM job_stats s JOIN jobs j ON j.id = s.job_id WHERE "
            "j.status IN ('succeeded', 'warning') AND s.created_at = (SELECT max(t.created_at) "
            "FROM job_stats t JOIN jobs k ON k.id = t.job_id WHERE t.workspace = s.workspace AND "
            f"t.view = s.view AND k.status IN ('succeeded', 'warning')) {where} "
            f"ORDER BY s.workspace {C}, s.view {C}",
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
        rows = self._rows(
            "reading alerts",
            f"SELECT {ALERT_COLUMNS} FROM alerts {where} ORDER BY updated_at DESC LIMIT %s",
            (*params, limit),
        )
        return [alert_record(r) for r in rows]

    # -- API keys ------------------------------------------------------------------------
    def insert_api_key(self, record: ApiKeyRecord) -> None:
        with self._transaction("storing an API key") as con:
            con.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
        row = self._row(
            "reading an API key", f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = %s", (key_id,)
        )
        return ApiKeyRecord(*row) if row else None

    def list_api_keys(
        self, workspace: str | None = None, principal: str | None = None
    ) -> list[ApiKeyRecord]:
        where, params = _where(workspace=workspace, principal=principal)
        rows = self._rows(
            "listing API keys",
            f"SELECT {KEY_COLUMNS} FROM api_keys {where} ORDER BY principal {C}, created_at",
            params,
        )
        return [ApiKeyRecord(*r) for r in rows]

    def revoke_api_key(self, key_id: str, at: float) -> bool:
        """Mark a key revoked; False when no unrevoked key has this id."""
        with self._transaction("revoking an API key") as con:
            cur = con.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (at, key_id),
            )
        return cur.rowcount > 0

    # -- the ingest log ------------------------------------------------------------------
    def ingest_log(self) -> IngestLog | None:
        """The push sources' ingest log in this database, shared by every node (one object per
        registry, on its connection pool)."""
        if self._ingest_log is None:
            self._ingest_log = PostgresIngestLog(self._db)
        return self._ingest_log

    # -- settings ------------------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        row = self._row("reading a setting", "SELECT value FROM settings WHERE key = %s", (key,))
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self._transaction("writing a setting") as con:
            con.execute(
                "INSERT INTO settings VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value",
                (key, value),
            )


def _release(changes: ChangeListener, db: PostgresConnector) -> None:
    changes.close()
    db.close()


class _LeaseRenewal:
    """What the lease keeper needs of a registry. Pooled connections go back after every
    call, so there is nothing for its thread to close; a renewal that fails is logged and
    retried at the next beat (the lease has slack), as SQLite's keeper does."""

    def __init__(self, registry: PostgresRegistry) -> None:
        self._registry = registry

    @property
    def job_lease_s(self) -> float:
        return self._registry.job_lease_s

    def renew_job_leases(self, job_ids: list[str]) -> int:
        try:
            return self._registry.renew_job_leases(job_ids)
        except StoreFailure as exc:
            log.warning("could not renew the leases of jobs %s: %s", job_ids, exc.message)
            return 0

    def close(self) -> None:
        return None


def _missing_workspace(name: str) -> MissingError:
    return MissingError(
        f"workspace {name!r} does not exist",
        hint=f"create it with `contextkit workspace create {name} --live`, or list them with "
        "`contextkit workspace list`",
    )


def _lock_view_alerts(con: psycopg.Connection, workspace: str, view: str) -> None:
    """Serialize the alert writes of one view until the transaction ends, so that two writers
    never both find no open alert and open the same one twice."""
    con.execute(
        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
        (_MONITORING_LOCK_CLASS, f"{workspace}/{view}"),
    )


def _write_alert(
    con: psycopg.Connection,
    alert: AlertRecord,
    workspace: str,
    view: str,
    open_id: str | None,
    now: float,
) -> None:
    """Update the open alert ``open_id`` with ``alert``'s content, or insert ``alert``."""
    if open_id is not None:
        con.execute(
            "UPDATE alerts SET severity = %s, message = %s, details = %s, job_id = %s, "
            "updated_at = %s WHERE id = %s",
            (alert.severity, alert.message, json.dumps(alert.details), alert.job_id, now, open_id),
        )
        return
    con.execute(
        f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES "
        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL)",
        (alert.id, workspace, view, alert.kind, alert.subject, alert.severity, alert.message,
         json.dumps(alert.details), alert.job_id, now, now),
    )  # fmt: skip


def _where(**equals: Any) -> tuple[str, list[Any]]:
    """``WHERE col = %s AND ...`` for the columns given a value (None: no condition), with its
    parameters; ``("", [])`` when none is given. Column names come from code, never input."""
    given = {col: value for col, value in equals.items() if value is not None}
    if not given:
        return "", []
    return "WHERE " + " AND ".join(f"{col} = %s" for col in given), list(given.values())
