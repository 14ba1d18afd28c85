"""`contextkit status` and `quality`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from contextkit.cli.shell import RepoOpt, WorkspaceOpt, app, guard, open_context, out_console

if TYPE_CHECKING:
    pass


# -- monitoring ------------------------------------------------------------------------------
@app.command()
def status(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """Show every view: its last job, rows, freshness, drift and alerts."""
    with guard:
        ctx = open_context(repo, workspace)
        statuses = ctx.monitoring.status()
        alerts = [a for s in statuses for a in s.alerts]
        if json_out:
            import json

            payload = {"workspace": ctx.workspace, "views": [s.to_dict() for s in statuses]}
            print(json.dumps(payload, indent=2))
            return
        from contextkit.governance.quality_report import alerts_table, status_table

        console = out_console()
        console.print(status_table(statuses, ctx.workspace))
        if alerts:
            console.print(alerts_table(sorted(alerts, key=lambda a: a.severity != "error")))
        else:
            console.print("[green]No alerts.[/]")


@app.command()
def quality(
    view: Annotated[str, typer.Argument(help="A feature or embedding view.")],
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    job: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Show this job's numbers (default: the newest measured job)."),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="How many recent runs to list.")] = 10,
    set_reference: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Pin the job later jobs measure drift against."),
    ] = None,
    clear_reference: Annotated[
        bool, typer.Option(help="Measure drift against the previous job again.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """Show a view's data-quality numbers: nulls, ranges, quantiles, top values, drift."""
    with guard:
        ctx = open_context(repo, workspace)
        if set_reference or clear_reference:
            ctx.monitoring.set_reference(view, None if clear_reference else set_reference)
            which = "the previous job" if clear_reference else f"job {set_reference}"
            out_console().print(f"Drift of {view!r} is now measured against {which}.")
            return
        report = ctx.monitoring.quality(view, job=job, runs=runs)
        if json_out:
            import json

            print(json.dumps(report, indent=2, default=str))
            return
        from contextkit.governance.quality_report import quality_tables

        console = out_console()
        for part in quality_tables(report):
            console.print(part)
