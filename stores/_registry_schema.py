"""The registry's schema and migrations, written once for every registry backend.

The statements are in SQLite's dialect, which ``SQLiteRegistry`` runs as they are;
:func:`postgres_statements` gives the same schema to PostgreSQL. Only what the two engines mean
differently is translated: SQLite's ``REAL`` is an 8-byte float and its ``INTEGER`` 8 bytes
(PostgreSQL's ``REAL`` is 4 bytes: Unix timestamps would lose minutes), and a migration that adds
a column may run twice (SQLite's side tolerates the duplicate-column error; PostgreSQL says
``IF NOT EXISTS``, since a failed statement would abort its transaction). Everything else
(``CREATE ... IF NOT EXISTS``, partial indexes, the data updates) means the same on both.
"""

from __future__ import annotations

import re

SCHEMA_VERSION = 6

# Version 1: the base schema a new registry starts from.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workspaces (
    name TEXT PRIMARY KEY, live INTEGER NOT NULL, created_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS objects (
    workspace TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
    version INTEGER NOT NULL, PRIMARY KEY (workspace, kind, name)
);
CREATE TABLE IF NOT EXISTS applies (
    workspace TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,
    applied_by TEXT NOT NULL, summary TEXT NOT NULL, PRIMARY KEY (workspace, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, workspace TEXT NOT NULL, view TEXT NOT NULL, status TEXT NOT NULL,
    range_start TEXT, range_end TEXT, spec_hash TEXT, rows_offline INTEGER, rows_online INTEGER,
    started_at REAL NOT NULL, finished_at REAL, error TEXT, details TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_view ON jobs (workspace, view, started_at);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Schema version -> the statements that bring a registry of the previous version up to it. A
# registry is migrated in place, in one transaction, when a newer contextkit opens it; every
# step is additive (new tables or columns), so nothing an older version wrote is rewritten.
MIGRATIONS: dict[int, str] = {
    2: """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, principal TEXT NOT NULL,
    kind TEXT NOT NULL, workspace TEXT NOT NULL, role TEXT NOT NULL, description TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL, revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_by_principal ON api_keys (principal);
""",
    3: """
CREATE TABLE IF NOT EXISTS job_stats (
    job_id TEXT PRIMARY KEY, workspace TEXT NOT NULL, view TEXT NOT NULL, created_at REAL NOT NULL,
    scope TEXT NOT NULL, rows INTEGER, newest_event REAL, max_drift REAL, stats TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_stats_by_view ON job_stats (workspace, view, created_at);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, workspace TEXT NOT NULL, view TEXT NOT NULL, kind TEXT NOT NULL,
    subject TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL, details TEXT NOT NULL,
    job_id TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, resolved_at REAL,
    resolved_by TEXT
);
CREATE INDEX IF NOT EXISTS alerts_by_view ON alerts (workspace, view, resolved_at);
""",
    # Job ownership and leases. Jobs left running by an older contextkit have no owner: they get
    # a one-day lease from their start, after which they count as abandoned.
    4: """
ALTER TABLE jobs ADD COLUMN owner_host TEXT;
ALTER TABLE jobs ADD COLUMN owner_pid INTEGER;
ALTER TABLE jobs ADD COLUMN owner_start TEXT;
ALTER TABLE jobs ADD COLUMN heartbeat_at REAL;
ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
UPDATE jobs SET heartbeat_at = started_at, lease_expires_at = started_at + 86400
    WHERE status = 'running' AND lease_expires_at IS NULL;
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (status) WHERE status = 'running';
""",
    # Orchestration (see contextkit.stores._job_queue): jobs queued by the jobs API and their
    # cancellation; per view the schedule's cursor, and every due interval once (its primary key
    # is the interval), claimed with a lease so two schedulers never run one interval twice.
    5: """
ALTER TABLE jobs ADD COLUMN cancel_requested_at REAL;
ALTER TABLE jobs ADD COLUMN request TEXT;
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (status) WHERE status IN ('running', 'queued');
CREATE TABLE IF NOT EXISTS schedules (
    workspace TEXT NOT NULL, view TEXT NOT NULL, spec_hash TEXT NOT NULL, cursor REAL NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (workspace, view)
);
CREATE TABLE IF NOT EXISTS schedule_intervals (
    workspace TEXT NOT NULL, view TEXT NOT NULL, spec_hash TEXT NOT NULL,
    interval_start REAL NOT NULL, interval_end REAL NOT NULL, kind TEXT NOT NULL,
    full_run INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL, job_id TEXT, error TEXT, owner_host TEXT, owner_pid INTEGER,
    owner_start TEXT, lease_expires_at REAL, created_at REAL NOT NULL, finished_at REAL,
    PRIMARY KEY (workspace, view, spec_hash, interval_start)
);
CREATE INDEX IF NOT EXISTS schedule_intervals_due ON schedule_intervals (status, next_attempt_at);
""",
    # The audit log of admin actions (see contextkit.stores._audit_log): who (the key's id and
    # principal), what, when, in which workspace, through what, and how it ended.
    6: """
CREATE TABLE IF NOT EXISTS audit_log (
    id TEXT PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, key_id TEXT, via TEXT NOT NULL,
    action TEXT NOT NULL, workspace TEXT, target TEXT, outcome TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_by_workspace ON audit_log (workspace, at);
CREATE INDEX IF NOT EXISTS audit_log_by_time ON audit_log (at);
""",
}

_POSTGRES_WORDS = [
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bADD COLUMN (?!IF NOT EXISTS)"), "ADD COLUMN IF NOT EXISTS "),
]


def statements(script: str) -> list[str]:
    """The statements of one of the scripts above (none holds a ``;`` inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def postgres_statements(script: str) -> list[str]:
    """The statements of ``script`` as PostgreSQL runs them (see the module's docstring)."""
    out = []
    for statement in statements(script):
        for pattern, replacement in _POSTGRES_WORDS:
            statement = pattern.sub(replacement, statement)
        out.append(statement)
    return out
