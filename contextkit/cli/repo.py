"""`contextkit init`, `plan`, `apply`, `destroy` and `versions`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from contextkit.cli.shell import (
    RepoOpt,
    WorkspaceOpt,
    app,
    fmt_time,
    guard,
    open_context,
    out_console,
)

if TYPE_CHECKING:
    pass


# -- init ------------------------------------------------------------------------------------
@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Folder to create the repo in.")] = Path("."),
    name: Annotated[Optional[str], typer.Option(help="Project name.")] = None,  # noqa: UP045
) -> None:
    """Scaffold a context-as-code repo with sample data and a live `prod` workspace."""
    with guard:
        from contextkit.scaffold import scaffold

        created = scaffold(path, name)
        console = out_console()
        console.print(f"[green]Created a contextkit repo in {path}[/]")
        for file in created:
            console.print(f"  {file}")
        console.print("Next: [bold]contextkit plan[/] then [bold]contextkit apply[/]")


# -- plan / apply / destroy ------------------------------------------------------------------
@app.command()
def plan(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the plan as JSON (schema in docs/cli.md).")
    ] = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 0 when there is nothing to change, 2 when changes are pending, 1 on an "
            "error (for CI).",
        ),
    ] = False,
) -> None:
    """Validate the repo and show what `apply` would change in the workspace: each change with
    its consequences, and the steps `apply` (and then `materialize`) would run."""
    try:
        with guard:
            from contextkit.framework.plan import render_plan

            ctx = open_context(repo, workspace)
            the_plan = ctx.plan(repo)
            if json_out:
                import json

                print(json.dumps(the_plan.to_json(), indent=2, default=str))
            else:
                out_console().print(render_plan(the_plan))
    except typer.Exit as exc:
        if detailed_exitcode and exc.exit_code:
            raise typer.Exit(1) from None
        raise
    if detailed_exitcode and not the_plan.is_empty:
        raise typer.Exit(2)


@app.command()
def apply(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    remote: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            envvar="CONTEXTKIT_CONTROL_PLANE",
            help="Apply through this control plane's API (with an admin --key) instead of "
            "writing the registry from here (CI/CD).",
        ),
    ] = None,
    key: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="CONTEXTKIT_API_KEY", help="Admin API key for --remote."),
    ] = None,
) -> None:
    """Validate the repo and apply its changes to the workspace, atomically."""
    if remote:
        from contextkit.cli.control import apply_remote

        apply_remote(repo, workspace, remote, key, yes)
        return
    with guard:
        from contextkit.framework.plan import render_plan

        ctx = open_context(repo, workspace)
        the_plan = ctx.plan(repo)
        console = out_console()
        console.print(render_plan(the_plan))
        if the_plan.is_empty:
            return
        if not yes and not typer.confirm("Apply these changes?", default=False):
            console.print("Nothing applied.")
            raise typer.Exit(1)
        from contextkit.cli.access import local_audit

        with local_audit(ctx, "apply", the_plan.workspace) as entry:
            version = ctx.apply(the_plan)
            entry.details.update(applied=True, version=version)
        console.print(
            f"[green]Applied[/] workspace {the_plan.workspace!r} is at version {version}."
        )
        dropped = [s.name for s in the_plan.steps if s.action == "drop_data"]
        if dropped:
            console.print(f"Dropped the data of {', '.join(dropped)}.")
        pending = [s.name for s in the_plan.steps if s.run_by == "materialize"]
        if pending:
            console.print(
                f"Run [bold]contextkit materialize[/] to compute {', '.join(pending)}.",
                highlight=False,
            )


@app.command()
def destroy(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove every object (and its materialized data) from the workspace."""
    with guard:
        from contextkit.framework.plan import compute_plan, render_plan

        ctx = open_context(repo, workspace)
        the_plan = compute_plan(ctx.registry, ctx.workspace, [])
        console = out_console()
        console.print(render_plan(the_plan))
        if the_plan.is_empty:
            return
        if not yes and not typer.confirm("Destroy these objects?", default=False):
            raise typer.Exit(1)
        ctx.apply(the_plan)
        console.print(f"[green]Destroyed[/] all objects in {the_plan.workspace!r}.")


@app.command()
def versions(repo: RepoOpt = Path("."), workspace: WorkspaceOpt = None) -> None:
    """List the applied versions of the workspace (who, when, what changed)."""
    with guard:
        from rich.table import Table

        ctx = open_context(repo, workspace)
        table = Table("version", "applied at", "by", "create", "update", "delete", "changed")
        for record in ctx.registry.list_applies(ctx.workspace):
            s = record.summary
            changed = ", ".join(f"{c['action'][0]}:{c['name']}" for c in s.get("changes", []))
            table.add_row(
                str(record.version),
                fmt_time(record.applied_at),
                record.applied_by,
                str(s.get("create", 0)),
                str(s.get("update", 0)),
                str(s.get("delete", 0)),
                changed,
            )
        out_console().print(table)
