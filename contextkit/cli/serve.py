"""`contextkit serve` (the HTTP server) and `contextkit mcp` (MCP over stdio)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from contextkit.cli.shell import RepoOpt, WorkspaceOpt, app, err_console, guard, open_context

if TYPE_CHECKING:
    pass

log = logging.getLogger("contextkit.server")


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
    materialize_embeddings: Annotated[
        bool,
        typer.Option(
            "--materialize-embeddings",
            help="Materialize the workspace's embedding views in this process while it serves "
            "(incrementally): features are served at once, and a search of a view not built yet "
            "answers 503 view_warming until its job lands. Needs write access to the stores.",
        ),
    ] = False,
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
        background = None
        if materialize_embeddings and record.live:
            background = EmbeddingJobs.start(ctx, record.name)
        if background is None:  # else its jobs use ctx while the server runs
            ctx.close()
        from contextkit.server.mcp.settings import McpSettings

        mcp_settings = McpSettings.for_bind(
            host, port, tuple(mcp_allowed_host or ()), ingest=mcp_ingest
        )
        os.environ.update(mcp_settings.to_env())  # read back by the app (and by every worker)
        common = {"host": host, "port": port, "access_log": False, "log_level": "info"}
        try:
            if workers == 1:
                uvicorn.run(app_from_settings(settings), **common)
            else:
                # Each worker is a new process: it builds its own app from these variables.
                os.environ.update(settings.to_env())
                uvicorn.run(
                    "contextkit.server.app:app_from_env", factory=True, workers=workers, **common
                )
        finally:
            if background is not None:  # a running job stops at its next batch, recorded so
                background.close()
                ctx.close()


class EmbeddingJobs:
    """``serve --materialize-embeddings``: one job per embedding view of the workspace, run by a
    :class:`~contextkit.governance.jobs.JobService` of this process while it serves (searches of
    a view answer 503 ``view_warming`` until its job lands), and a thread that logs each job's
    progress every few seconds and how it ended."""

    EVERY_S = 5.0

    def __init__(self, ctx, workspace: str) -> None:
        from contextkit.governance.jobs import JobService

        self.service = JobService(ctx.runtime, workers=1)
        self.workspace = workspace
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, ctx, workspace: str) -> EmbeddingJobs | None:
        from contextkit.server import ops

        names = list(ctx.specs(workspace).embedding_views)
        if not names:
            return None
        ops.configure_logging()  # the server's JSON log lines, also with --workers N
        jobs = cls(ctx, workspace)
        triggered = jobs.service.trigger(workspace, names, requested_by="serve")
        ids = {t.job.id: t.job.view for t in triggered}
        log.info(
            "materializing embedding view(s) %s in the background (jobs %s): features are "
            "served now; a search of a view answers 503 view_warming until its job lands",
            ", ".join(map(repr, names)),
            ", ".join(ids),
            extra={"fields": {"jobs": ids}},
        )
        jobs._thread = threading.Thread(
            target=jobs._follow, args=(ids,), name="contextkit-embedding-jobs", daemon=True
        )
        jobs._thread.start()
        # uvicorn re-raises the SIGTERM it stopped on after shutting down; by default that ends
        # the process before `close` could stop the job (it would be reaped as abandoned).
        signal.signal(signal.SIGTERM, _exit_on_signal)
        return jobs

    def _follow(self, ids: dict[str, str]) -> None:
        from contextkit.governance.jobs import FINISHED_STATUSES

        pending = dict(ids)
        said: dict[str, str] = {}
        while pending and not self._stop.wait(1.0 if not said else self.EVERY_S):
            for job_id, view in list(pending.items()):
                try:
                    job = self.service.get(job_id)
                except Exception as exc:  # noqa: BLE001 - following is informative only
                    log.warning("could not read job %s: %s", job_id, exc)
                    continue
                if job.status in FINISHED_STATUSES:
                    del pending[job_id]
                    self._finished(job)
                    continue
                line = _progress_line(job)
                if line and line != said.get(job_id):
                    said[job_id] = line
                    log.info(line, extra={"fields": {"job": job_id, "view": view}})

    def _finished(self, job) -> None:
        fields = {"job": job.id, "view": job.view, "status": job.status}
        if job.status in ("succeeded", "warning"):
            details = job.details or {}
            log.info(
                f"embedding view {job.view!r} materialized in {job.duration_s or 0:.1f} s "
                f"(job {job.id}: {details.get('documents', '?')} documents, "
                f"{details.get('texts_encoded', '?')} texts encoded): its searches are served now",
                extra={"fields": fields},
            )
        else:
            log.error(
                f"embedding view {job.view!r}: job {job.id} {job.status}: {job.error}; its "
                f"searches answer 503 view_warming (retry: `contextkit jobs retry {job.id}`, or "
                f"`contextkit materialize {job.view}`)",
                extra={"fields": fields},
            )

    def close(self) -> None:
        self._stop.set()
        self.service.close(wait=True)
        if self._thread is not None:
            self._thread.join(timeout=10)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _progress_line(job) -> str | None:
    details = job.details or {}
    encoded = details.get("encoded") or {}
    where = f"embedding view {job.view!r} (job {job.id})"
    if encoded.get("chunks_total"):
        eta = encoded.get("eta_s")
        return (
            f"{where}: {encoded['chunks_done']:,}/{encoded['chunks_total']:,} chunks encoded, "
            f"{encoded.get('docs_per_s') or 0:.0f} docs/s"
            + (f", about {eta:.0f} s left" if eta is not None else "")
        )
    stage = details.get("progress")
    return f"{where}: {stage}" if stage else f"{where}: {job.status}"


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
