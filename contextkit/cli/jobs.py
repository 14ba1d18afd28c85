"""`contextkit materialize`, `jobs` and `gc`."""

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
    parse_time,
)

if TYPE_CHECKING:
    pass


# -- materialize / jobs ----------------------------------------------------------------------
@app.command()
def materialize(
    views: Annotated[Optional[list[str]], typer.Argument(help="Views (default: all).")] = None,  # noqa: UP045
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    start: Annotated[Optional[str], typer.Option(help="Range start (ISO 8601).")] = None,  # noqa: UP045
    end: Annotated[Optional[str], typer.Option(help="Range end (default: now).")] = None,  # noqa: UP045
    full: Annotated[bool, typer.Option("--full", help="Recompute all history.")] = False,
) -> None:
    """Compute views: feature views into the offline (Parquet) and online (SQLite) stores,
    embedding views into the vector store (LanceDB; only new or changed text is encoded)."""
    with guard:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        ctx = open_context(repo, workspace)
        start_t, end_t = parse_time(start, "--start"), parse_time(end, "--end")
        console = out_console()
        names = views or ctx.specs().materialized_order()
        if not console.is_terminal:  # CI logs, a pipe: plain progress lines, no redrawn bars
            plain = PlainProgress(names)
            try:
                results = ctx.materialize(
                    names,
                    start=start_t,
                    end=end_t,
                    full=full,
                    on_stage=plain.stage,
                    on_progress=plain.progress,
                )
            finally:
                plain.close()
            _print_results(console, results)
            return
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            tasks = {n: progress.add_task(f"{n}: waiting", start=False, total=None) for n in names}

            def on_stage(view: str, stage: str) -> None:
                progress.start_task(tasks[view])
                progress.update(tasks[view], description=f"{view}: {stage}")

            def on_progress(view: str, p) -> None:  # an EncodeProgress of an embedding view
                progress.update(
                    tasks[view],
                    total=p.chunks_total,
                    completed=p.chunks_done,
                    description=f"{view}: encoding, {p.docs_per_s:.0f} docs/s",
                )

            results = ctx.materialize(
                names,
                start=start_t,
                end=end_t,
                full=full,
                on_stage=on_stage,
                on_progress=on_progress,
            )
        _print_results(console, results)


def _print_results(console, results) -> None:
    for r in results:
        if r.kind == "embedding_view":
            d = r.details
            console.print(
                f"{_outcome(r)} {r.view}: {d['documents']} documents, {r.rows_online} chunks "
                f"({d['new']} new, {d['changed']} changed, {d['deleted']} deleted, "
                f"{d['texts_encoded']} encoded) in {r.duration_s:.2f}s"
            )
            _print_warning(console, r)
            continue
        span = f"{r.start.isoformat() if r.start else 'beginning'} .. {r.end.isoformat()}"
        console.print(
            f"{_outcome(r)} {r.view}: {r.rows_offline} offline rows, {r.rows_online} online "
            f"entities ({span}) in {r.duration_s:.2f}s"
        )
        _print_warning(console, r)
    warned = [r.view for r in results if r.status == "warning"]
    if warned:
        console.print(
            f"[bold yellow]WARNING: {len(warned)} job(s) ended with warnings: "
            f"{', '.join(warned)}[/] (`contextkit status` lists the alerts)",
            highlight=False,
            soft_wrap=True,
        )


class PlainProgress:
    """Progress of a materialize run as plain lines, for output that is not a terminal: a line
    when a view starts a stage, and while a view encodes, a line every ``interval`` seconds
    (``CONTEXTKIT_PROGRESS_INTERVAL``, default 5) with done/total, rate and ETA. A line at most
    every interval while nothing else changes, so a CI log shows the run is alive."""

    def __init__(self, names: list[str], interval: float | None = None) -> None:
        import os
        import threading
        import time

        self.names = names
        self.interval = interval or float(os.environ.get("CONTEXTKIT_PROGRESS_INTERVAL", "5"))
        self.began = time.monotonic()
        self.current: str | None = None
        self.stage_name = "waiting"
        self.started_view = self.began
        self.done_views: list[str] = []
        self.last_line = 0.0
        self.encode: tuple[int, int, float] | None = None  # chunks done, total, docs/s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def _print(self, text: str) -> None:
        import sys
        import time

        elapsed = time.monotonic() - self.began
        sys.stdout.write(f"[{elapsed:7.1f}s] {text}\n")
        sys.stdout.flush()
        self.last_line = time.monotonic()

    def _views_done(self) -> str:
        return f"{len(self.done_views)}/{len(self.names)} views done"

    def stage(self, view: str, stage: str) -> None:
        import time

        with self._lock:
            if view != self.current:
                if self.current is not None:
                    self.done_views.append(self.current)
                self.current, self.started_view, self.encode = view, time.monotonic(), None
            self.stage_name = stage
            self._print(f"materialize {view}: {stage} ({self._views_done()})")

    def progress(self, view: str, p) -> None:  # an EncodeProgress of an embedding view
        import time

        with self._lock:
            self.encode = (p.chunks_done, p.chunks_total, p.docs_per_s)
            if time.monotonic() - self.last_line >= self.interval:
                self._print(self._status_line())

    def _status_line(self) -> str:
        import time

        view = self.current or "-"
        if self.encode is not None:
            done, total, docs_per_s = self.encode
            spent = time.monotonic() - self.started_view
            rate = done / spent if spent > 0 else 0.0
            eta = f"{(total - done) / rate:.0f}s" if rate > 0 and total >= done else "unknown"
            return (
                f"materialize {view}: encoding {done}/{total} chunks, {rate:.1f} chunks/s "
                f"({docs_per_s:.1f} docs/s), ETA {eta} ({self._views_done()})"
            )
        spent = time.monotonic() - self.started_view
        return f"materialize {view}: {self.stage_name} for {spent:.0f}s ({self._views_done()})"

    def _tick(self) -> None:
        import time

        while not self._stop.wait(min(self.interval, 1.0)):
            with self._lock:
                if self.current and time.monotonic() - self.last_line >= self.interval:
                    self._print(self._status_line())

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=2)


def _outcome(result) -> str:
    return "[bold yellow]warning[/]" if result.status == "warning" else "[green]ok[/]"


def _print_warning(console, result) -> None:
    if result.status == "warning" and result.error:
        console.print(f"  [yellow]! {result.error}[/]", highlight=False, soft_wrap=True)


jobs_app = typer.Typer(
    help="List jobs; run, cancel, retry or show one (`contextkit jobs --help`).",
    invoke_without_command=True,
)
app.add_typer(jobs_app, name="jobs")

RemoteOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--remote",
        envvar="CONTEXTKIT_CONTROL_PLANE",
        help="A control plane's URL: act through its jobs API (with --key) instead of this "
        "repo's registry.",
    ),
]
KeyOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--key", envvar="CONTEXTKIT_API_KEY", help="API key for --remote."),
]


@jobs_app.callback(invoke_without_command=True)
def jobs(
    command: typer.Context,
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    view: Annotated[Optional[str], typer.Option(help="Only this view.")] = None,  # noqa: UP045
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    status: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Only jobs with this status (queued, running, succeeded, warning, failed, "
            "cancelled, abandoned)."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """List materialization jobs, newest first (warnings: data that failed an expectation;
    failed (abandoned): its process was killed or died before the job finished)."""
    if command.invoked_subcommand is not None:
        return
    with guard:
        from rich.table import Table

        ctx = open_context(repo, workspace)
        table = Table(
            "job",
            "view",
            "status",
            "range",
            "offline rows",
            "online rows",
            "took",
            "started",
            "error",
        )
        found = ctx.jobs(view, limit if status is None else max(limit, 500))
        wanted = [
            j
            for j in found
            if status in (None, j.status) or (status == "abandoned" and j.abandoned)
        ]
        if json_out:
            import json

            payload = {"workspace": ctx.workspace, "jobs": [_job_json(j) for j in wanted[:limit]]}
            print(json.dumps(payload, indent=2, default=str))
            return
        for j in wanted[:limit]:
            color = {"succeeded": "green", "failed": "red"}.get(j.status, "yellow")
            table.add_row(
                j.id,
                j.view,
                f"[{color}]{j.display_status}[/]",
                f"{j.range_start or '-'} .. {j.range_end or '-'}",
                str(j.rows_offline if j.rows_offline is not None else "-"),
                str(j.rows_online if j.rows_online is not None else "-"),
                f"{j.duration_s:.2f}s" if j.duration_s is not None else "-",
                fmt_time(j.started_at),
                j.error or "",
            )
        out_console().print(table)


def _job_json(job) -> dict:
    return {
        "id": job.id,
        "view": job.view,
        "status": job.status,
        "abandoned": job.abandoned,
        "range_start": job.range_start,
        "range_end": job.range_end,
        "rows_offline": job.rows_offline,
        "rows_online": job.rows_online,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "duration_s": job.duration_s,
        "error": job.error,
        "owner": job.owner,
    }


def _remote(method: str, url: str, path: str, key: str | None, body: dict | None = None) -> dict:
    """One request to a control plane's jobs API; its errors as ContextKitErrors."""
    import json
    import urllib.error
    import urllib.request

    from contextkit.errors import ContextKitError, StoreUnavailableError

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
        except Exception:  # noqa: BLE001 - not our error shape
            error = {"code": "error", "message": f"HTTP {exc.code} from {url}", "details": {}}
        err = ContextKitError(error["message"], hint=(error.get("details") or {}).get("hint"))
        err.code, err.http_status = error["code"], exc.code
        raise err from None
    except urllib.error.URLError as exc:
        raise StoreUnavailableError(
            f"cannot reach the control plane at {url} ({exc.reason})",
            hint="check --remote (or CONTEXTKIT_CONTROL_PLANE) and that `contextkit "
            "control-plane` runs there",
        ) from None


def _print_job(job: dict) -> None:
    console = out_console()
    color = {"succeeded": "green", "failed": "red", "cancelled": "red"}.get(job["status"], "yellow")
    rows = f"{job.get('rows_offline') or 0} offline rows, {job.get('rows_online') or 0} online"
    console.print(
        f"{job['id']}  {job['view']}  [{color}]{job['display_status']}[/]  "
        f"({job.get('progress') or '-'}; {rows})",
        highlight=False,
    )
    span = f"{job.get('range_start') or 'beginning'} .. {job.get('range_end') or 'now'}"
    console.print(f"  range: {span}", highlight=False)
    if job.get("error"):
        console.print(f"  error: {job['error']}", highlight=False, soft_wrap=True)
    for line in job.get("log") or []:
        console.print(f"  | {line}", highlight=False)


def _wait_local(ctx, job_ids: list[str]) -> list[dict]:
    import time

    from contextkit.governance.jobs import FINISHED_STATUSES, job_view

    while True:
        found = [ctx.registry.get_job(i) for i in job_ids]
        if all(j is not None and j.status in FINISHED_STATUSES for j in found):
            return [job_view(j) for j in found]
        time.sleep(0.2)


@jobs_app.command("run")
def jobs_run(
    views: Annotated[Optional[list[str]], typer.Argument(help="Views (default: all).")] = None,  # noqa: UP045
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    start: Annotated[Optional[str], typer.Option(help="Range start (ISO 8601).")] = None,  # noqa: UP045
    end: Annotated[Optional[str], typer.Option(help="Range end (default: now).")] = None,  # noqa: UP045
    full: Annotated[bool, typer.Option("--full", help="Recompute all history.")] = False,
    remote: RemoteOpt = None,
    key: KeyOpt = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for the jobs to finish (--no-wait: print their ids).")
    ] = True,
) -> None:
    """Trigger a materialization job per view. With --remote the control plane runs them;
    otherwise this process does (and always waits)."""
    with guard:
        start_t, end_t = parse_time(start, "--start"), parse_time(end, "--end")
        if remote:
            body = {"workspace": workspace, "views": views or None, "full": full,
                    "start": start_t.isoformat() if start_t else None,
                    "end": end_t.isoformat() if end_t else None}  # fmt: skip
            found = _remote("POST", remote, "/v1/jobs", key, body)["jobs"]
            while wait and any(j["status"] in ("queued", "running") for j in found):
                import time

                time.sleep(0.5)
                found = [_remote("GET", remote, f"/v1/jobs/{j['id']}", key) for j in found]
        else:
            from contextkit.governance.audit import Actor, AuditLog

            ctx = open_context(repo, workspace)
            target = ",".join(views or []) or None
            with AuditLog(ctx.registry).action(
                Actor.local(), "jobs.trigger", workspace=ctx.workspace, target=target
            ) as entry:
                triggered = ctx.job_service.trigger(
                    ctx.workspace, views, start=start_t, end=end_t, full=full, requested_by="cli"
                )
                entry.details["jobs"] = {t.job.view: t.job.id for t in triggered}
            found = _wait_local(ctx, [t.job.id for t in triggered])
        for job in found:
            _print_job(job)
        if any(j["status"] in ("failed", "cancelled") for j in found):
            raise typer.Exit(1)


def _on_job(
    job_id: str, repo: Path, remote: str | None, key: str | None, action: str | None
) -> tuple[dict, bool]:
    """``(job, here)`` after ``action`` (None: show, ``cancel``, ``retry``) on a job: by the
    control plane's jobs API with ``--remote``, else here, where cancel and retry are written to
    the audit log as ``jobs.<action>`` and a retried job is run to its end."""
    if remote:
        path = f"/v1/jobs/{job_id}" + (f"/{action}" if action else "")
        return _remote(
            "POST" if action else "GET", remote, path, key, {} if action else None
        ), False
    from contextkit.governance.jobs import job_view

    ctx = open_context(repo, None)
    if action is None:
        return job_view(ctx.job_service.get(job_id)), True
    from contextkit.governance.audit import Actor, AuditLog

    record = ctx.registry.get_job(job_id)
    where = record.workspace if record is not None else None
    with AuditLog(ctx.registry).action(
        Actor.local(), f"jobs.{action}", workspace=where, target=job_id
    ) as entry:
        if action == "cancel":
            return job_view(ctx.job_service.cancel(job_id)), True
        found = ctx.job_service.retry(job_id, requested_by="cli")
        entry.details["job"] = found.job.id
    (job,) = _wait_local(ctx, [found.job.id])
    return job, True


JobIdArg = Annotated[str, typer.Argument(help="The job's id.")]


@jobs_app.command("show")
def jobs_show(
    job_id: JobIdArg, repo: RepoOpt = Path("."), remote: RemoteOpt = None, key: KeyOpt = None
) -> None:
    """A job's status, progress, rows, error and log tail."""
    with guard:
        _print_job(_on_job(job_id, repo, remote, key, None)[0])


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: JobIdArg, repo: RepoOpt = Path("."), remote: RemoteOpt = None, key: KeyOpt = None
) -> None:
    """Cancel a job: a queued one at once, a running one at its next batch (whichever process
    runs it); it leaves the stores as they were. A finished job cannot be cancelled."""
    with guard:
        _print_job(_on_job(job_id, repo, remote, key, "cancel")[0])


@jobs_app.command("retry")
def jobs_retry(
    job_id: JobIdArg, repo: RepoOpt = Path("."), remote: RemoteOpt = None, key: KeyOpt = None
) -> None:
    """Run a finished job again (same view, range and --full)."""
    with guard:
        job, here = _on_job(job_id, repo, remote, key, "retry")
        _print_job(job)
        if here and job["status"] in ("failed", "cancelled"):
            raise typer.Exit(1)


@app.command()
def gc(
    repo: RepoOpt = Path("."),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
    grace: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Keep files replaced or written less than this long ago, for readers that may "
            "still use them (e.g. 30m, 1h, 0; default 15m)."
        ),
    ] = None,
) -> None:
    """Remove offline files that no committed version references: files of replaced versions
    and what killed jobs left behind. Never a file of the current version, of a running job,
    or one replaced within the grace period."""
    with guard:
        from rich.table import Table

        from contextkit.compute.materialize import collect_garbage
        from contextkit.stores.offline import GC_GRACE_S

        grace_s = GC_GRACE_S if grace is None else _grace_seconds(grace)
        ctx = open_context(repo, None)
        found = collect_garbage(ctx.registry, ctx.offline, grace_s=grace_s, dry_run=dry_run)
        console = out_console()
        if not found:
            console.print("Nothing to remove.")
            return
        table = Table("path", "size", "why")
        root = ctx.offline.root
        for item in found:
            table.add_row(str(item.path.relative_to(root)), _fmt_bytes(item.bytes), item.reason)
        console.print(table)
        verb = "Would remove" if dry_run else "Removed"
        total = _fmt_bytes(sum(item.bytes for item in found))
        console.print(f"{verb} {len(found)} file(s) or folder(s), {total}.")


def _grace_seconds(value: str) -> float:
    import re

    from contextkit.errors import BadRequestError
    from contextkit.framework.durations import to_seconds

    if re.fullmatch(r"\s*0+\s*[smhdwy]?\s*", value):
        return 0.0
    try:
        return float(to_seconds(value, what="--grace"))
    except ValueError as exc:
        raise BadRequestError(str(exc), hint="e.g. --grace 30m, --grace 1h or --grace 0") from None


def _fmt_bytes(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KB", "MB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} GB"
