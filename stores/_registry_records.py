"""What both registries share (:mod:`contextkit.stores.registry`, SQLite, and
:mod:`contextkit.stores.postgres_registry`): the records they return, the column lists and row
converters of their queries, and job leases (who judges a running job abandoned, and the thread
that renews the leases of the jobs a registry object started).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from contextkit.stores.process import ProcessIdentity, owner_alive

log = logging.getLogger("contextkit.registry")


class _LeaseHolder(Protocol):
    """What :class:`LeaseKeeper` needs of a registry."""

    job_lease_s: float

    def renew_job_leases(self, job_ids: list[str]) -> int: ...
    def close(self) -> None: ...


# How long a running job's lease lasts without a heartbeat; its owner renews it every quarter of
# that. Only readers on another host (or pid namespace) rely on it: on the owner's host a job is
# abandoned as soon as its process is gone.
JOB_LEASE_S = 120.0


# The error of a job whose owner went away without finishing it starts with this word.
ABANDONED = "abandoned"


# Job statuses of a job that wrote the stores: ``warning`` is a success whose data failed an
# expectation declared with on_expectation_failure="warn".
COMPLETED_STATUSES = ("succeeded", "warning")


@dataclass(frozen=True)
class WorkspaceRecord:
    name: str
    live: bool
    created_at: float
    version: int


@dataclass(frozen=True)
class ObjectRecord:
    kind: str
    name: str
    spec: str
    version: int


@dataclass(frozen=True)
class ApplyRecord:
    workspace: str
    version: int
    applied_at: float
    applied_by: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class JobRecord:
    id: str
    workspace: str
    view: str
    status: str
    range_start: str | None
    range_end: str | None
    spec_hash: str | None
    rows_offline: int | None
    rows_online: int | None
    started_at: float
    finished_at: float | None
    error: str | None
    details: dict[str, Any]
    # The lease: who runs the job, and until when it counts as running without a heartbeat.
    owner_host: str | None = None
    owner_pid: int | None = None
    owner_start: str | None = None
    heartbeat_at: float | None = None
    lease_expires_at: float | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    @property
    def abandoned(self) -> bool:
        """Whether the job failed because its process went away without finishing it."""
        return self.status == "failed" and (self.error or "").startswith(ABANDONED)

    @property
    def display_status(self) -> str:
        """The status as people read it: ``failed (abandoned)`` for an abandoned job."""
        return f"failed ({ABANDONED})" if self.abandoned else self.status

    @property
    def owner(self) -> str | None:
        """``pid N on HOST``, or None for a job recorded without an owner."""
        if self.owner_host is None or self.owner_pid is None:
            return None
        return ProcessIdentity(self.owner_host, self.owner_pid, self.owner_start or "").label


@dataclass(frozen=True)
class ApiKeyRecord:
    """One API key as stored: its public id and the hash of the secret, never the secret."""

    id: str
    key_hash: str
    principal: str
    kind: str
    workspace: str
    role: str
    description: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True)
class JobStatsRecord:
    """The data-quality statistics a job computed over the rows it wrote (see
    :mod:`contextkit.governance.monitoring`); ``status`` is the job's, when read joined with it."""

    job_id: str
    workspace: str
    view: str
    created_at: float
    scope: str  # which rows: "online", "offline" or "documents"
    rows: int | None
    newest_event: float | None  # newest event time among the rows (Unix seconds)
    max_drift: float | None
    stats: dict[str, Any]
    status: str | None = None


@dataclass(frozen=True)
class AlertRecord:
    """An expectation a view's data failed; open until a later job passes it."""

    id: str
    workspace: str
    view: str
    kind: str
    subject: str
    severity: str  # "warning" or "error"
    message: str
    details: dict[str, Any]
    job_id: str | None
    created_at: float
    updated_at: float
    resolved_at: float | None = None
    resolved_by: str | None = None


JOB_COLUMNS = (
    "id, workspace, view, status, range_start, range_end, spec_hash, rows_offline, rows_online, "
    "started_at, finished_at, error, details, owner_host, owner_pid, owner_start, heartbeat_at, "
    "lease_expires_at"
)


def job_record(row) -> JobRecord:
    return JobRecord(*row[:12], json.loads(row[12] or "{}"), *row[13:])


STATS_COLUMNS = (
    "s.job_id, s.workspace, s.view, s.created_at, s.scope, s.rows, s.newest_event, s.max_drift, "
    "s.stats, j.status"
)


ALERT_COLUMNS = (
    "id, workspace, view, kind, subject, severity, message, details, job_id, created_at, "
    "updated_at, resolved_at, resolved_by"
)


def stats_record(row) -> JobStatsRecord:
    return JobStatsRecord(*row[:8], json.loads(row[8]), row[9])


def alert_record(row) -> AlertRecord:
    return AlertRecord(*row[:7], json.loads(row[7]), *row[8:])


KEY_COLUMNS = (
    "id, key_hash, principal, kind, workspace, role, description, created_at, expires_at, "
    "revoked_at"
)


def abandonment(
    host: str | None,
    pid: int | None,
    start: str | None,
    beat: float | None,
    expires: float | None,
    now: float,
) -> tuple[str, bool] | None:
    """``(error, judged by the lease)`` for a running job whose owner is gone; None while it may
    still run."""
    owner = None if host is None or pid is None else ProcessIdentity(host, pid, start or "")
    if owner is not None:
        alive = owner_alive(owner)
        if alive is True:
            return None
        if alive is False:
            return (
                f"{ABANDONED}: its process ({owner.label}) ended without finishing the job",
                False,
            )
    if expires is not None and expires < now:
        seen = "never" if beat is None else datetime.fromtimestamp(beat, UTC).isoformat()
        who = owner.label if owner is not None else "an unknown process"
        return (
            f"{ABANDONED}: no heartbeat from {who} since {seen}; its lease expired",
            True,
        )
    return None


class LeaseKeeper:
    """Renews the leases of the jobs a registry object started, from one daemon thread that
    runs while any of them is unfinished (and closes its own connection when it stops)."""

    def __init__(self, registry: _LeaseHolder) -> None:
        self._registry = registry
        self._jobs: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, job_id: str) -> None:
        with self._lock:
            self._jobs.add(job_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="contextkit-job-leases", daemon=True
                )
                self._thread.start()

    def release(self, job_id: str) -> None:
        with self._lock:
            self._jobs.discard(job_id)
            if not self._jobs:
                self._wake.set()

    def _run(self) -> None:
        interval = self._registry.job_lease_s / 4
        try:
            while True:
                self._wake.wait(interval)
                with self._lock:
                    self._wake.clear()
                    held = sorted(self._jobs)
                    if not held:
                        self._thread = None
                        return
                try:
                    self._registry.renew_job_leases(held)
                except Exception as exc:  # the next beat retries; the lease has slack
                    log.warning("could not renew the leases of jobs %s: %s", held, exc)
        finally:
            self._registry.close()
