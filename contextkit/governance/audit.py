"""The audit log: every admin action, who made it, when, where, and how it ended.

Admin actions are what needs the ``admin`` role: applying specs, triggering, cancelling and
retrying jobs, creating and revoking API keys. Each one, through the HTTP API, the web UI or the
CLI, is recorded in the registry (:mod:`contextkit.stores._audit_log`) as one row: *who* (the
API key's principal and public id; on the command line, the local user), *what* (the action and
what it acted on), *when*, *in which workspace*, *through what* (``api``, ``ui``, ``cli``) and
the *outcome*: ``ok``, ``denied`` (the key lacked the role), or the error code the action ended
with (``not_found``, ``job_conflict``, ...). Rows are only added, never changed::

    log = AuditLog(ctx.registry)
    with log.action(Actor.local(), "keys.create", workspace="prod") as entry:
        new = ctx.access.create_key("app", workspace="prod", role="reader")
        entry.target = new.record.id
    log.list("prod")   # newest first

Read it with ``GET /v1/audit``, ``contextkit audit`` or the UI's Audit page.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from contextkit.errors import ContextKitError, PermissionDeniedError
from contextkit.stores.registry import AuditRecord, RegistryStore

log = logging.getLogger("contextkit.audit")

# The actions recorded, as the log names them.
APPLY = "apply"
JOBS_TRIGGER, JOBS_CANCEL, JOBS_RETRY = "jobs.trigger", "jobs.cancel", "jobs.retry"
KEYS_CREATE, KEYS_REVOKE = "keys.create", "keys.revoke"
ACTIONS = (APPLY, JOBS_TRIGGER, JOBS_CANCEL, JOBS_RETRY, KEYS_CREATE, KEYS_REVOKE)
VIAS = ("api", "ui", "cli")


@dataclass(frozen=True)
class Actor:
    """Who acts: a key's principal and public id, or a local user (``key_id`` None)."""

    name: str
    key_id: str | None = None
    via: str = "api"

    @classmethod
    def local(cls, via: str = "cli") -> Actor:
        """The user running this process, as ``user@host`` (the CLI on a local registry)."""
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no login name (a container without one)
            user = "unknown"
        return cls(f"{user}@{socket.gethostname()}", None, via)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.key_id})" if self.key_id else self.name


@dataclass
class Entry:
    """What an action fills in while it runs (read when it is recorded)."""

    target: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def outcome_of(exc: BaseException) -> str:
    """How an action that raised ``exc`` ended, as the log says it."""
    if isinstance(exc, PermissionDeniedError):
        return "denied"
    if isinstance(exc, ContextKitError):
        return exc.code
    return "error"


class AuditLog:
    """Record and read admin actions in a registry."""

    def __init__(self, registry: RegistryStore) -> None:
        self.registry = registry

    def record(
        self,
        actor: Actor,
        action: str,
        *,
        workspace: str | None,
        target: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> None:
        """Add one row. A registry that cannot take it is logged, not raised: the action
        itself already happened (or failed) and answering otherwise would misreport it."""
        try:
            self.registry.record_audit(
                at=time.time(),
                actor=actor.name,
                key_id=actor.key_id,
                via=actor.via,
                action=action,
                workspace=workspace,
                target=target,
                outcome=outcome,
                details=details,
            )
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.error(
                "could not record the audit entry %s by %s in %s (%s): %s",
                action, actor.label, workspace, outcome, exc,
            )  # fmt: skip

    @contextmanager
    def action(
        self,
        actor: Actor,
        action: str,
        *,
        workspace: str | None,
        target: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Iterator[Entry]:
        """Run the body as one audited action: recorded ``ok`` when it returns, or with the
        outcome of what it raised (re-raised)."""
        entry = Entry(target, dict(details or {}))
        try:
            yield entry
        except BaseException as exc:
            error = exc.message if isinstance(exc, ContextKitError) else str(exc)
            self.record(
                actor, action, workspace=workspace, target=entry.target,
                outcome=outcome_of(exc), details={**entry.details, "error": error[:300]},
            )  # fmt: skip
            raise
        self.record(actor, action, workspace=workspace, target=entry.target, details=entry.details)

    def list(
        self,
        workspace: str | None = None,
        *,
        action: str | None = None,
        actor: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Rows, newest first (``workspace`` includes actions on every workspace, ``"*"``)."""
        return self.registry.list_audit(workspace, action=action, actor=actor, limit=limit)


def audit_dict(record: AuditRecord) -> dict[str, Any]:
    """A row as ``GET /v1/audit`` and ``contextkit audit --json`` show it."""
    return {
        "id": record.id,
        "at": record.at,
        "actor": record.actor,
        "key_id": record.key_id,
        "via": record.via,
        "action": record.action,
        "workspace": record.workspace,
        "target": record.target,
        "outcome": record.outcome,
        "details": record.details,
    }
