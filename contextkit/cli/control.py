"""`contextkit scheduler` and `contextkit control-plane` (see docs/control-plane.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from contextkit.cli.shell import RepoOpt, WorkspaceOpt, app, err_console, guard, open_context

ConcurrencyOpt = Annotated[int, typer.Option(min=1, help="Intervals run at once.")]
TickOpt = Annotated[float, typer.Option(min=0.01, help="Seconds between two ticks.")]
LeaseOpt = Annotated[
    float, typer.Option(min=1, help="Seconds a claim lasts without a heartbeat (taken over after).")
]
AttemptsOpt = Annotated[int, typer.Option(min=1, help="Tries of an interval before its alert.")]
ChunkOpt = Annotated[
    int, typer.Option(min=1, help="Longest backfill chunk, in seconds (default 30 days).")
]
BackoffOpt = Annotated[
    float, typer.Option(min=0, help="Seconds before the first retry (doubling after).")
]


def _settings(
    concurrency: int, tick: float, lease: float, attempts: int, backoff: float, chunk: int
):
    from contextkit.governance.scheduler import SchedulerSettings

    return SchedulerSettings(
        concurrency=concurrency,
        tick_s=tick,
        lease_s=lease,
        max_attempts=attempts,
        backoff_s=backoff,
        backfill_chunk_s=chunk,
    )


@app.command()
def scheduler(
    repo: RepoOpt = Path("."),
    once: Annotated[
        bool, typer.Option("--once", help="Run one tick to its end, then exit.")
    ] = False,
    now: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Pretend it is this time (ISO 8601), with --once: for tests and drills."),
    ] = None,
    concurrency: ConcurrencyOpt = 2,
    tick: TickOpt = 10.0,
    lease: LeaseOpt = 120.0,
    max_attempts: AttemptsOpt = 3,
    backoff: BackoffOpt = 60.0,
    backfill_chunk: ChunkOpt = 30 * 86400,
) -> None:
    """Materialize every view of every live workspace at its batch_schedule (backfills in
    chunks, leases in the registry, retries, alerts), flush and prune stream ingest logs. Any
    number of schedulers may share a registry: each interval runs once."""
    with guard:
        import logging
        import signal
        import threading

        from contextkit.cli.shell import parse_time
        from contextkit.governance.scheduler import Scheduler

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        ctx = open_context(repo, None)
        clock = None
        if now is not None:
            fixed = parse_time(now, "--now").timestamp()
            clock = lambda: fixed  # noqa: E731
        settings = _settings(concurrency, tick, lease, max_attempts, backoff, backfill_chunk)
        runner = Scheduler(ctx.runtime, settings=settings, **({"clock": clock} if clock else {}))
        if once:
            report = runner.tick(wait=True)
            runner.close()
            statuses = sorted(report.finished.values())
            typer.echo(
                f"planned {report.planned} interval(s), ran {len(report.claimed)}: "
                + (", ".join(statuses) if statuses else "nothing due")
            )
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        err_console().print(f"scheduler running (tick {tick}s, {concurrency} at once)")
        try:
            runner.run_forever(stop)
        except KeyboardInterrupt:
            stop.set()
            runner.close()


@app.command("control-plane")
def control_plane(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", envvar="PORT")] = 8100,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without API keys (local development only).")
    ] = False,
    no_scheduler: Annotated[
        bool, typer.Option("--no-scheduler", help="Serve the API and UI only.")
    ] = False,
    job_workers: Annotated[int, typer.Option(min=1, help="Triggered jobs run at once.")] = 2,
    concurrency: ConcurrencyOpt = 2,
    tick: TickOpt = 10.0,
    lease: LeaseOpt = 120.0,
    max_attempts: AttemptsOpt = 3,
    backoff: BackoffOpt = 60.0,
    backfill_chunk: ChunkOpt = 30 * 86400,
) -> None:
    """The control plane: the registry-facing API, the web UI, the jobs API (POST /v1/jobs,
    GET /v1/jobs/{id}, cancel, retry) and the scheduler, in one process. It needs write access
    to the registry and the stores; data plane nodes (`contextkit serve`) need only read."""
    with guard:
        import threading

        import uvicorn

        from contextkit.governance.jobs import JobService
        from contextkit.governance.scheduler import Scheduler
        from contextkit.server.app import create_app

        ctx = open_context(repo, workspace)
        ctx.workspace_record()  # an unknown default workspace fails now
        service = JobService(ctx.runtime, workers=job_workers)
        resumed = service.resume()
        err = err_console()
        if resumed:
            err.print(f"resumed {resumed} queued job(s)")
        if no_auth:
            err.print(
                "[bold white on red] WARNING: AUTHENTICATION IS OFF (--no-auth) [/] anyone who "
                f"can reach http://{host}:{port} can trigger jobs",
                highlight=False,
            )
        stop = threading.Event()
        thread = None
        if not no_scheduler:
            runner = Scheduler(
                ctx.runtime,
                settings=_settings(concurrency, tick, lease, max_attempts, backoff, backfill_chunk),
            )
            thread = threading.Thread(
                target=runner.run_forever, args=(stop,), name="contextkit-scheduler", daemon=True
            )
            thread.start()
        app_ = create_app(ctx, auth=not no_auth, jobs=service)
        try:
            uvicorn.run(app_, host=host, port=port, access_log=False, log_level="info")
        finally:
            stop.set()
            service.close(wait=True)
            if thread is not None:
                thread.join(timeout=60)


def apply_remote(repo: Path, workspace: str | None, url: str, key: str | None, yes: bool) -> None:
    """`contextkit apply --remote URL`: load and validate the repo here (with its data), show
    the control plane's plan, and apply it there if the workspace did not change meanwhile."""
    with guard:
        from contextkit.cli.jobs import _remote
        from contextkit.cli.shell import out_console
        from contextkit.framework.repo import load_repo
        from contextkit.framework.validation import build_specs, validate

        loaded = load_repo(repo)
        specs = validate(
            build_specs(loaded),
            loaded.config.root.resolve(),
            loaded.config.models,
            loaded.config.llm,
            render_limits=loaded.config.prompts.render_limits(),
        )
        body = {"workspace": workspace, "specs": [s.model_dump(mode="json") for s in specs]}
        planned = _remote("POST", url, "/v1/apply", key, {**body, "plan_only": True})
        plan = planned["plan"]
        console = out_console()
        console.print(
            f"Plan for workspace {planned['workspace']!r} at {url} (version "
            f"{planned['base_version']}):",
            highlight=False,
        )
        for change in plan["changes"]:
            console.print(f"  {change['action']:<7} {change['kind']} {change['name']}")
        for warning in plan["warnings"]:
            console.print(f"  [yellow]! {warning}[/]", highlight=False)
        if not plan["changes_pending"]:
            console.print("No changes.")
            return
        if not yes and not typer.confirm("Apply these changes?", default=False):
            console.print("Nothing applied.")
            raise typer.Exit(1)
        done = _remote(
            "POST", url, "/v1/apply", key, {**body, "base_version": planned["base_version"]}
        )
        console.print(
            f"[green]Applied[/] workspace {done['workspace']!r} is at version {done['version']}.",
            highlight=False,
        )
