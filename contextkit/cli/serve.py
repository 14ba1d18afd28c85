"""`contextkit serve` (the HTTP server) and `contextkit mcp` (MCP over stdio)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from contextkit.cli.shell import RepoOpt, WorkspaceOpt, app, err_console, guard, open_context

if TYPE_CHECKING:
    pass


# -- serve -----------------------------------------------------------------------------------
@app.command()
def serve(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", envvar="PORT")] = 8000,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without API keys (local development only).")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="JSON access log line per request.")] = True,
    max_body_bytes: Annotated[
        int, typer.Option(min=0, help="Largest request body accepted (else 413).")
    ] = 1024 * 1024,
    rate_limit: Annotated[
        float, typer.Option(min=0, help="Requests/s per key, 0 = no limit (else 429).")
    ] = 0.0,
    rate_burst: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Requests a key may send at once (default: 1 s worth)."),
    ] = None,
    mcp_allowed_host: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            help="A Host name[:port] MCP clients reach the server by (besides the loopback "
            "names and the bound address); repeatable; '*' turns the DNS-rebinding check off."
        ),
    ] = None,
    mcp_ingest: Annotated[
        bool, typer.Option("--mcp-ingest", help="Offer ingest tools over MCP (ingester keys).")
    ] = False,
    server_group: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--server-group",
            help="Serve only the services of this ServerGroup (others answer 404 naming the "
            "group that serves them).",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API with uvicorn (and MCP at /mcp); API keys are required unless
    --no-auth."""
    with guard:
        import os

        import uvicorn

        from contextkit.server.app import ServeSettings, app_from_settings

        ctx = open_context(repo, workspace)
        # Resolve the default workspace once, now: fail at start-up, not on every request.
        record = ctx.workspace_record()
        err = err_console()
        if not record.live:
            err.print(
                f"[yellow]warning:[/] workspace {record.name!r} is a dev workspace: it serves "
                "no features (apply to a live workspace)"
            )
        if server_group is not None:
            from contextkit.errors import NotFoundError
            from contextkit.server.common import SERVER_GROUP_ENV

            groups = ctx.specs(record.name).server_groups
            if server_group not in groups:
                raise NotFoundError(
                    f"unknown server group {server_group!r} in workspace {record.name!r}",
                    hint="server groups: "
                    + (
                        ", ".join(sorted(groups))
                        or "none (declare "
                        "ServerGroup(name, services=[...]) in the repo and apply it)"
                    ),
                )
            # Read by the app's ServerState, in this process and in every worker.
            os.environ[SERVER_GROUP_ENV] = server_group
            err.print(
                f"serving server group {server_group!r}: "
                + ", ".join(groups[server_group].services),
                highlight=False,
            )
        if no_auth:
            err.print(
                "[bold white on red] WARNING: AUTHENTICATION IS OFF (--no-auth) [/]\n"
                f"[bold red]Anyone who can reach http://{host}:{port} can read every workspace "
                "of this registry. Use --no-auth for local development only.[/]",
                highlight=False,
            )
        elif not ctx.access.list_keys():
            err.print(
                "[yellow]note:[/] auth is on and no API key exists yet: create one with "
                f"`contextkit access create-key --name app --workspace {record.name} "
                "--role reader`",
                highlight=False,
            )
        settings = ServeSettings(
            repo=str(ctx.config.root.resolve()),
            workspace=record.name,
            auth=not no_auth,
            max_body_bytes=max_body_bytes,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            access_log=access_log,
        )
        ctx.close()
        from contextkit.server.mcp.settings import McpSettings

        mcp_settings = McpSettings.for_bind(
            host, port, tuple(mcp_allowed_host or ()), ingest=mcp_ingest
        )
        os.environ.update(mcp_settings.to_env())  # read back by the app (and by every worker)
        common = {"host": host, "port": port, "access_log": False, "log_level": "info"}
        if workers == 1:
            uvicorn.run(app_from_settings(settings), **common)
        else:
            # Each worker is a new process: it builds its own app from these variables.
            os.environ.update(settings.to_env())
            uvicorn.run(
                "contextkit.server.app:app_from_env", factory=True, workers=workers, **common
            )


@app.command()
def mcp(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    key: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            envvar="CONTEXTKIT_API_KEY",
            help="Serve only what this API key may see (default: everything in the registry).",
        ),
    ] = None,
    ingest: Annotated[
        bool, typer.Option("--ingest", help="Offer ingest tools (to an ingester key).")
    ] = False,
) -> None:
    """Serve MCP over stdio for a local agent host (its services as tools, its prompt views as
    prompts); see docs/agents.md."""
    with guard:
        import logging

        import anyio

        from contextkit.server.mcp.server import local_server, run_stdio
        from contextkit.server.mcp.settings import McpSettings
        from contextkit.server.readiness import Readiness

        # stdout carries the protocol: logs go to stderr.
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
        ctx = open_context(repo, workspace)
        ctx.workspace_record()  # an unknown workspace fails now, with its hint
        if key is not None:
            ctx.access.authenticate(key)  # so does a bad key
        warming = Readiness(ready=False).warm_in_background(ctx)  # while the host connects
        anyio.run(run_stdio, local_server(ctx, McpSettings(ingest=ingest), key))
        warming.join()  # exiting while a model loads in that thread would abort the process
