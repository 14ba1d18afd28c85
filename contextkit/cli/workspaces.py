"""`contextkit workspace create|list|select|delete`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from contextkit.cli.shell import RepoOpt, fmt_time, guard, open_context, out_console, workspace_app

if TYPE_CHECKING:
    pass


# -- workspaces ------------------------------------------------------------------------------
@workspace_app.command("create")
def workspace_create(
    name: str,
    live: Annotated[bool, typer.Option("--live", help="Materialize and serve (else dev).")] = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Create a workspace (`--live` to materialize and serve; dev ones only validate)."""
    with guard:
        ctx = open_context(repo, None)
        ctx.create_workspace(name, live)
        out_console().print(f"Created {'live' if live else 'dev'} workspace {name!r}.")


@workspace_app.command("list")
def workspace_list(repo: RepoOpt = Path(".")) -> None:
    """List workspaces; the selected one is marked with *."""
    with guard:
        from rich.table import Table

        ctx = open_context(repo, None)
        selected = ctx.registry.get_setting("selected_workspace")
        table = Table("", "workspace", "kind", "version", "created")
        for w in ctx.list_workspaces():
            table.add_row(
                "*" if w.name == selected else "",
                w.name,
                "live" if w.live else "dev",
                str(w.version),
                fmt_time(w.created_at),
            )
        out_console().print(table)


@workspace_app.command("select")
def workspace_select(name: str, repo: RepoOpt = Path(".")) -> None:
    """Make NAME the default workspace of later commands."""
    with guard:
        open_context(repo, None).select_workspace(name)
        out_console().print(f"Selected workspace {name!r}.")


@workspace_app.command("delete")
def workspace_delete(
    name: str,
    repo: RepoOpt = Path("."),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a workspace with its objects, jobs and materialized data."""
    with guard:
        ctx = open_context(repo, None)
        ctx.workspace_record(name)
        if not yes and not typer.confirm(f"Delete workspace {name!r} and its data?", default=False):
            raise typer.Exit(1)
        ctx.delete_workspace(name)
        out_console().print(f"Deleted workspace {name!r}.")
