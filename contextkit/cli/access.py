"""`contextkit access create-key|list|revoke` and `contextkit audit` (the audit log).

Key changes made here, on the registry directly, are recorded in the audit log as the local user
(``user@host``, ``via: cli``); through a control plane (``--remote``) the server records them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from contextkit.cli.shell import (
    RepoOpt,
    WorkspaceOpt,
    access_app,
    app,
    err_console,
    fmt_time,
    guard,
    open_context,
    out_console,
)

if TYPE_CHECKING:
    from contextkit.client import Context
    from contextkit.governance.audit import Entry


# -- access ----------------------------------------------------------------------------------
@access_app.command("create-key")
def access_create_key(
    name: Annotated[str, typer.Option("--name", "-n", help="The principal (app or user) name.")],
    workspace: Annotated[
        str, typer.Option("--workspace", "-w", help="Workspace the key is for ('*': all).")
    ],
    role: Annotated[str, typer.Option(help="reader, ingester or admin.")] = "reader",
    kind: Annotated[str, typer.Option(help="service (an app) or user.")] = "service",
    description: Annotated[str, typer.Option(help="A note shown by `access list`.")] = "",
    expires_in: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--expires-in", help="Lifetime, e.g. 90d (default: no expiry)."),
    ] = None,
    repo: RepoOpt = Path("."),
) -> None:
    """Create an API key; the key is printed once (stdout), the rest goes to stderr."""
    with guard:
        from contextkit.errors import BadRequestError
        from contextkit.framework.durations import to_seconds

        try:
            lifetime = to_seconds(expires_in, what="--expires-in") if expires_in else None
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        ctx = open_context(repo, None)
        details = {"principal": name, "role": role, "kind": kind}
        with local_audit(ctx, "keys.create", workspace, details=details) as entry:
            new = ctx.access.create_key(
                name,
                workspace=workspace,
                role=role,
                kind=kind,
                description=description,
                expires_in_s=lifetime,
            )
            entry.target = new.record.id
        k = new.record
        where = "every workspace" if k.workspace == "*" else f"workspace {k.workspace!r}"
        err = err_console()
        err.print(
            f"Created key [bold]{k.id}[/] for {k.kind} {k.principal!r}: {k.role} in {where}"
            + (f", expires {fmt_time(k.expires_at)} UTC" if k.expires_at else "")
            + ".",
            highlight=False,
        )
        err.print(
            "[yellow]The key is shown only now; store it (contextkit keeps only a hash):[/]",
            highlight=False,
        )
        print(new.key)


@access_app.command("list")
def access_list(
    workspace: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--workspace", "-w", help="Only keys for this workspace."),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", "-a", help="Include revoked and expired keys.")
    ] = False,
    repo: RepoOpt = Path("."),
) -> None:
    """List API keys (never the keys themselves: their ids, owners, roles and status)."""
    with guard:
        from rich.table import Table

        keys = open_context(repo, None).access.list_keys(workspace, include_inactive=show_all)
        table = Table()
        for column in ("id", "principal", "kind", "workspace", "role", "status", "created",
                       "expires", "description"):  # fmt: skip
            table.add_column(column, no_wrap=column in ("id", "status"))
        for k in keys:
            status = k.status()
            color = {"active": "green", "revoked": "red"}.get(status, "yellow")
            table.add_row(
                k.id,
                k.principal,
                k.kind,
                k.workspace,
                k.role,
                f"[{color}]{status}[/]",
                fmt_time(k.created_at),
                fmt_time(k.expires_at) if k.expires_at else "-",
                k.description,
            )
        out_console().print(table)


@access_app.command("revoke")
def access_revoke(
    key_id: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(help="The key's id (from `access list`)."),
    ] = None,
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--name", "-n", help="Revoke every active key of this principal instead."),
    ] = None,
    repo: RepoOpt = Path("."),
) -> None:
    """Revoke a key (or all of a principal's keys); servers refuse it from the next request."""
    with guard:
        from contextkit.errors import BadRequestError

        if (key_id is None) == (name is None):
            raise BadRequestError(
                "give a key id or --name, not both and not neither",
                hint="`contextkit access revoke KEY_ID` or `contextkit access revoke --name app`",
            )
        ctx = open_context(repo, None)
        record = ctx.registry.find_api_key(key_id) if key_id else None
        where = record.workspace if record is not None else None
        with local_audit(ctx, "keys.revoke", where, target=key_id or name) as entry:
            access = ctx.access
            revoked = [access.revoke(key_id)] if key_id else access.revoke_principal(name or "")
            entry.details["revoked"] = [k.id for k in revoked]
        for k in revoked:
            out_console().print(
                f"Revoked key {k.id} of {k.principal!r} ({k.role} in {k.workspace!r}).",
                highlight=False,
            )


@contextmanager
def local_audit(
    ctx: Context,
    action: str,
    workspace: str | None,
    *,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> Iterator[Entry]:
    """An admin action this CLI makes on the registry itself, recorded as the local user."""
    from contextkit.governance.audit import Actor, AuditLog

    log = AuditLog(ctx.registry)
    with log.action(
        Actor.local(), action, workspace=workspace, target=target, details=details
    ) as entry:
        yield entry


@app.command("audit")
def audit(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    action: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Only this action (apply, jobs.trigger, jobs.cancel, jobs.retry, "
            "keys.create, keys.revoke)."
        ),
    ] = None,  # fmt: skip
    actor: Annotated[Optional[str], typer.Option(help="Only this principal.")] = None,  # noqa: UP045
    limit: Annotated[int, typer.Option(help="How many.")] = 50,
    remote: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="CONTEXTKIT_CONTROL_PLANE", help="Read it from this control plane."),
    ] = None,
    key: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="CONTEXTKIT_API_KEY", help="Admin API key for --remote."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """The audit log of admin actions (apply, jobs, keys), newest first: who, what, when, where,
    through what (api, ui, cli) and the outcome."""
    with guard:
        if remote:
            from urllib.parse import urlencode

            from contextkit.cli.jobs import _remote

            query = {"workspace": workspace, "action": action, "actor": actor, "limit": limit}
            path = "/v1/audit?" + urlencode({k: v for k, v in query.items() if v is not None})
            found = _remote("GET", remote, path, key)
            where, entries = found["workspace"], found["entries"]
        else:
            from contextkit.governance.audit import AuditLog, audit_dict

            ctx = open_context(repo, workspace)
            rows = AuditLog(ctx.registry).list(ctx.workspace, action=action, actor=actor,
                                                limit=limit)  # fmt: skip
            where, entries = ctx.workspace, [audit_dict(r) for r in rows]
        if json_out:
            import json

            print(json.dumps({"workspace": where, "entries": entries}, indent=2, default=str))
            return
        from rich.table import Table

        table = Table("when (UTC)", "who", "key", "via", "action", "workspace", "target",
                      "outcome")  # fmt: skip
        for e in entries:
            color = "green" if e["outcome"] == "ok" else "red"
            table.add_row(
                fmt_time(e["at"]), e["actor"], e["key_id"] or "-", e["via"], e["action"],
                e["workspace"] or "-", e["target"] or "-", f"[{color}]{e['outcome']}[/]",
            )  # fmt: skip
        out_console().print(table)
