"""The audit log in the registry: one row per admin action, whoever made it and however it ended.

Written once for both registries as a mixin over the job queue's hooks (``_jq_transaction`` and
``_jq_rows``, see :mod:`contextkit.stores._job_queue`). Rows are only ever inserted; nothing here
updates or deletes one. What the columns mean is the governance layer's
(:mod:`contextkit.governance.audit`); here they are stored and read back, newest first.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

_AUDIT_COLUMNS = "id, at, actor, key_id, via, action, workspace, target, outcome, details"


@dataclass(frozen=True)
class AuditRecord:
    """One admin action (``at``: Unix seconds)."""

    id: str
    at: float
    actor: str  # who: a key's principal, or the local user of a CLI
    key_id: str | None  # the key's public id (never the key), None without a key
    via: str  # what it came through: "api", "ui", "cli"
    action: str  # e.g. "jobs.trigger", "apply", "keys.create"
    workspace: str | None
    target: str | None  # what it acted on: a job id, views, a key id
    outcome: str  # "ok", "denied", or the error code it ended with
    details: dict[str, Any]


def _audit(row) -> AuditRecord:
    values = list(row)
    values[9] = json.loads(values[9]) if values[9] else {}
    return AuditRecord(*values)


class AuditLogMixin:
    """Insert and list audit rows (see the module docstring)."""

    def _jq_transaction(self, action: str) -> Any:
        raise NotImplementedError

    def _jq_rows(self, sql: str, params: Any = ()) -> list[tuple]:
        raise NotImplementedError

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
    ) -> str:
        """Insert one row; returns its id."""
        row_id = uuid.uuid4().hex[:16]
        with self._jq_transaction("recording an audit entry") as run:
            run(
                f"INSERT INTO audit_log ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row_id, at, actor, key_id, via, action, workspace, target, outcome,
                 json.dumps(details or {}, default=str)),
            )  # fmt: skip
        return row_id

    def list_audit(
        self,
        workspace: str | None = None,
        *,
        action: str | None = None,
        actor: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Rows, newest first; ``workspace`` also matches the actions on every workspace
        (``"*"``, e.g. a key for all workspaces)."""
        where, params = [], []
        if workspace is not None:
            where.append("(workspace = ? OR workspace = '*')")
            params.append(workspace)
        for column, value in (("action", action), ("actor", actor)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self._jq_rows(
            f"SELECT {_AUDIT_COLUMNS} FROM audit_log {clause} ORDER BY at DESC, id LIMIT ?",
            (*params, limit),
        )
        return [_audit(r) for r in rows]
