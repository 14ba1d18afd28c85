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


def _outcome(result) -> str:
    return "[bold yellow]warning[/]" if result.status == "warning" else "[green]ok[/]"


def _print_warning(console, result) -> None:
    if result.status == "warning" and result.error:
        console.print(f"  [yellow]! {result.error}[/]", highlight=False, soft_wrap=True)


@app.command()
def jobs(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    view: Annotated[Optional[str], typer.Option(help="Only this view.")] = None,  # noqa: UP045
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    status: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Only jobs with this status (succeeded, warning, failed, running, abandoned)."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """List materialization jobs, newest first (warnings: data that failed an expectation;
    failed (abandoned): its process was killed or died before the job finished)."""
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
