"""`contextkit access create-key|list|revoke`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from contextkit.cli.shell import (
    RepoOpt,
    access_app,
    err_console,
    fmt_time,
    guard,
    open_context,
    out_console,
)

if TYPE_CHECKING:
    pass


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
        new = open_context(repo, None).access.create_key(
            name,
            workspace=workspace,
            role=role,
            kind=kind,
            description=description,
            expires_in_s=lifetime,
        )
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
        access = open_context(repo, None).access
        revoked = [access.revoke(key_id)] if key_id else access.revoke_principal(name or "")
        for k in revoked:
            out_console().print(
                f"Revoked key {k.id} of {k.principal!r} ({k.role} in {k.workspace!r}).",
                highlight=False,
            )
