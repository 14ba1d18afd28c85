"""`contextkit online rebuild [VIEW...]`: restore the online store from what is durable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from contextkit.cli.shell import RepoOpt, WorkspaceOpt, app, guard, open_context, out_console

online_app = typer.Typer(
    help="Online store maintenance (restore it after Redis lost its data).", no_args_is_help=True
)
app.add_typer(online_app, name="online")


@online_app.command("rebuild")
def online_rebuild(
    views: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer needs Optional here
        typer.Argument(help="Views to rebuild (default: every online view)."),
    ] = None,
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Rebuild online values: batch views at their last materialized time (from the offline
    store, or their sources when they have no offline data), stream views from their push
    source's batch_source history and the durable ingest log (every acknowledged record)."""
    with guard:
        from contextkit.compute.online_rebuild import rebuild_online

        ctx = open_context(repo, workspace)
        result = rebuild_online(ctx.runtime, views or None)
        if as_json:
            out_console().print_json(json.dumps(result.to_dict()))
            return
        console = out_console()
        for name, rows in result.batch_rows.items():
            origin = {"offline": "the offline store", "sources": "its sources"}
            read = origin.get(result.read_from.get(name, ""), "")
            console.print(f"{name}: {rows} entities written" + (f" (from {read})" if read else ""))
        for name, rows in result.log_rows.items():
            console.print(f"push source {name}: {rows} records applied (history and log)")
        for name in result.never_materialized:
            console.print(f"{name}: never materialized, skipped (run `contextkit materialize`)")
