"""The ``contextkit`` command line: a thin shell over the SDK (:mod:`contextkit.client`).

Errors print as one line plus a hint and exit with 1 (runtime) or 2 (bad definitions/config);
no traceback reaches the user. Heavy libraries are imported inside commands so ``--help`` is fast.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from contextkit.client import Context

app = typer.Typer(
    name="contextkit",
    help="Context as code: features, embeddings and prompts for LLM apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
workspace_app = typer.Typer(
    help="Create, list, select and delete workspaces.", no_args_is_help=True
)
app.add_typer(workspace_app, name="workspace")
access_app = typer.Typer(
    help="Create, list and revoke API keys (roles per workspace).", no_args_is_help=True
)
app.add_typer(access_app, name="access")

RepoOpt = Annotated[
    Path, typer.Option("--repo", "-r", help="Repo folder (holding contextkit.yaml).")
]
WorkspaceOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option("--workspace", "-w", help="Workspace (default: the selected one)."),
]


def _console():
    from rich.console import Console

    return Console()


def _err_console():
    from rich.console import Console

    return Console(stderr=True)


def _fail(exc: Exception) -> None:
    from contextkit.errors import ContextKitError, translate_store_errors
    from contextkit.stores.errors import StoreFailure

    if isinstance(exc, StoreFailure):
        exc = translate_store_errors(exc)
    assert isinstance(exc, ContextKitError)
    console = _err_console()
    console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
    if exc.hint:
        console.print(f"[yellow]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


class _Guard:
    """Turn contextkit errors into a clean message and exit code."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        from contextkit.errors import ContextKitError
        from contextkit.stores.errors import StoreFailure

        if exc is not None and isinstance(exc, ContextKitError | StoreFailure):
            _fail(exc)
        return False


guard = _Guard()


def _context(repo: Path, workspace: str | None) -> Context:
    from contextkit.client import connect

    return connect(repo, workspace)


def _parse_time(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    from contextkit.errors import BadRequestError

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(
            f"{what} {value!r} is not an ISO 8601 time", hint="e.g. 2024-05-01 or 2024-05-01T12:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
        console = _console()
        console.print(f"[green]Created a contextkit repo in {path}[/]")
        for file in created:
            console.print(f"  {file}")
        console.print("Next: [bold]contextkit plan[/] then [bold]contextkit apply[/]")


# -- plan / apply / destroy ------------------------------------------------------------------
@app.command()
def plan(repo: RepoOpt = Path("."), workspace: WorkspaceOpt = None) -> None:
    """Validate the repo and show what `apply` would change in the workspace."""
    with guard:
        from contextkit.framework.plan import render_plan

        ctx = _context(repo, workspace)
        _console().print(render_plan(ctx.plan(repo)))


@app.command()
def apply(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Validate the repo and apply its changes to the workspace, atomically."""
    with guard:
        from contextkit.framework.plan import render_plan

        ctx = _context(repo, workspace)
        the_plan = ctx.plan(repo)
        console = _console()
        console.print(render_plan(the_plan))
        if the_plan.is_empty:
            return
        if not yes and not typer.confirm("Apply these changes?", default=False):
            console.print("Nothing applied.")
            raise typer.Exit(1)
        version = ctx.apply(the_plan)
        console.print(
            f"[green]Applied[/] workspace {the_plan.workspace!r} is at version {version}."
        )
        if the_plan.live and any(c.rematerialize for c in the_plan.changes):
            console.print(
                "Run [bold]contextkit materialize[/] to compute the new or changed views."
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

        ctx = _context(repo, workspace)
        the_plan = compute_plan(ctx.registry, ctx.workspace, [])
        console = _console()
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

        ctx = _context(repo, workspace)
        table = Table("version", "applied at", "by", "create", "update", "delete", "changed")
        for record in ctx.registry.list_applies(ctx.workspace):
            s = record.summary
            changed = ", ".join(f"{c['action'][0]}:{c['name']}" for c in s.get("changes", []))
            table.add_row(
                str(record.version),
                _fmt_time(record.applied_at),
                record.applied_by,
                str(s.get("create", 0)),
                str(s.get("update", 0)),
                str(s.get("delete", 0)),
                changed,
            )
        _console().print(table)


# -- workspaces ------------------------------------------------------------------------------
@workspace_app.command("create")
def workspace_create(
    name: str,
    live: Annotated[bool, typer.Option("--live", help="Materialize and serve (else dev).")] = False,
    repo: RepoOpt = Path("."),
) -> None:
    """Create a workspace (`--live` to materialize and serve; dev ones only validate)."""
    with guard:
        ctx = _context(repo, None)
        ctx.create_workspace(name, live)
        _console().print(f"Created {'live' if live else 'dev'} workspace {name!r}.")


@workspace_app.command("list")
def workspace_list(repo: RepoOpt = Path(".")) -> None:
    """List workspaces; the selected one is marked with *."""
    with guard:
        from rich.table import Table

        ctx = _context(repo, None)
        selected = ctx.registry.get_setting("selected_workspace")
        table = Table("", "workspace", "kind", "version", "created")
        for w in ctx.list_workspaces():
            table.add_row(
                "*" if w.name == selected else "",
                w.name,
                "live" if w.live else "dev",
                str(w.version),
                _fmt_time(w.created_at),
            )
        _console().print(table)


@workspace_app.command("select")
def workspace_select(name: str, repo: RepoOpt = Path(".")) -> None:
    """Make NAME the default workspace of later commands."""
    with guard:
        _context(repo, None).select_workspace(name)
        _console().print(f"Selected workspace {name!r}.")


@workspace_app.command("delete")
def workspace_delete(
    name: str,
    repo: RepoOpt = Path("."),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a workspace with its objects, jobs and materialized data."""
    with guard:
        ctx = _context(repo, None)
        ctx.workspace_record(name)
        if not yes and not typer.confirm(f"Delete workspace {name!r} and its data?", default=False):
            raise typer.Exit(1)
        ctx.delete_workspace(name)
        _console().print(f"Deleted workspace {name!r}.")


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

        ctx = _context(repo, workspace)
        start_t, end_t = _parse_time(start, "--start"), _parse_time(end, "--end")
        console = _console()
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
) -> None:
    """List materialization jobs, newest first (warnings: data that failed an expectation;
    failed (abandoned): its process was killed or died before the job finished)."""
    with guard:
        from rich.table import Table

        ctx = _context(repo, workspace)
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
                _fmt_time(j.started_at),
                j.error or "",
            )
        _console().print(table)


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
        ctx = _context(repo, None)
        found = collect_garbage(ctx.registry, ctx.offline, grace_s=grace_s, dry_run=dry_run)
        console = _console()
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


# -- monitoring ------------------------------------------------------------------------------
@app.command()
def status(
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """Show every view: its last job, rows, freshness, drift and alerts."""
    with guard:
        ctx = _context(repo, workspace)
        statuses = ctx.monitoring.status()
        alerts = [a for s in statuses for a in s.alerts]
        if json_out:
            import json

            payload = {"workspace": ctx.workspace, "views": [s.to_dict() for s in statuses]}
            print(json.dumps(payload, indent=2))
            return
        from contextkit.governance.quality_report import alerts_table, status_table

        console = _console()
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
        ctx = _context(repo, workspace)
        if set_reference or clear_reference:
            ctx.monitoring.set_reference(view, None if clear_reference else set_reference)
            which = "the previous job" if clear_reference else f"job {set_reference}"
            _console().print(f"Drift of {view!r} is now measured against {which}.")
            return
        report = ctx.monitoring.quality(view, job=job, runs=runs)
        if json_out:
            import json

            print(json.dumps(report, indent=2, default=str))
            return
        from contextkit.governance.quality_report import quality_tables

        console = _console()
        for part in quality_tables(report):
            console.print(part)


# -- dataset ---------------------------------------------------------------------------------
@app.command()
def dataset(
    events: Annotated[
        Path,
        typer.Option("--events", help="Events: a Parquet file (or glob) with join keys and times."),
    ],
    service: Annotated[str, typer.Option("--service", "-s", help="Service (or prompt view).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (.jsonl or .parquet).")],
    prompt: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Prompt view to render (default: the service's first)."),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help='chat: JSONL {"messages": [...]}; table: Parquet.')
    ] = "chat",
    label_column: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Events column with the expected answer (the assistant turn)."),
    ] = None,
    timestamp_key: Annotated[str, typer.Option(help="Events column with the event time.")] = "ts",
    documents: Annotated[
        bool, typer.Option("--documents", help="Render every search's documents as of each event.")
    ] = False,
    search: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--search", help="Render this search's documents (repeatable)."),
    ] = None,
    from_source: Annotated[
        bool, typer.Option("--from-source", help="Compute features from the sources.")
    ] = False,
    repo: RepoOpt = Path("."),
    workspace: WorkspaceOpt = None,
) -> None:
    """Render a prompt view for every event with point-in-time features: a fine-tuning or
    evaluation set (JSONL chat format, or a Parquet table with prompt, features, label)."""
    with guard:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from contextkit.errors import BadRequestError

        if format not in ("chat", "table"):
            raise BadRequestError(f"unknown --format {format!r}", hint="use chat or table")
        ctx = _context(repo, workspace)
        console = _console()
        with Progress(
            TextColumn("rendering"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=_err_console(),
            transient=True,
        ) as progress:
            task = progress.add_task("rendering", total=None, rate="")
            began = datetime.now(UTC)

            def on_progress(done: int, total: int | None) -> None:
                seconds = max((datetime.now(UTC) - began).total_seconds(), 1e-9)
                progress.update(
                    task, completed=done, total=total, rate=f"{done / seconds:,.0f} rows/s"
                )

            result = ctx.generate_dataset(
                str(events),
                service,
                prompt=prompt,
                timestamp_key=timestamp_key,
                documents=list(search) if search else documents,
                label_column=label_column,
                from_source=True if from_source else None,
                on_progress=on_progress,
            )
            report = result.to_jsonl(out) if format == "chat" else result.to_parquet(out)
        console.print(
            f"[green]wrote[/] {report.rows:,} rows to {out} ({format}) in {report.seconds:.2f}s "
            f"({report.rows_per_s:,.0f} rows/s)",
            highlight=False,
        )
        if report.truncated:
            console.print(f"  {report.truncated:,} prompts truncated to the token budget")
        if report.labels_missing:
            console.print(f"  {report.labels_missing:,} rows without a label")
        for name, counts in report.documents.items():
            line = f"  documents {name}: {counts['as_of']:,} searched as of the event"
            if counts["oldest_kept"]:
                line += (
                    f", {counts['oldest_kept']:,} older than the vector table's versions "
                    "(searched in the oldest kept)"
                )
            console.print(line, highlight=False)


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
        new = _context(repo, None).access.create_key(
            name,
            workspace=workspace,
            role=role,
            kind=kind,
            description=description,
            expires_in_s=lifetime,
        )
        k = new.record
        where = "every workspace" if k.workspace == "*" else f"workspace {k.workspace!r}"
        err = _err_console()
        err.print(
            f"Created key [bold]{k.id}[/] for {k.kind} {k.principal!r}: {k.role} in {where}"
            + (f", expires {_fmt_time(k.expires_at)} UTC" if k.expires_at else "")
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

        keys = _context(repo, None).access.list_keys(workspace, include_inactive=show_all)
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
                _fmt_time(k.created_at),
                _fmt_time(k.expires_at) if k.expires_at else "-",
                k.description,
            )
        _console().print(table)


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
        access = _context(repo, None).access
        revoked = [access.revoke(key_id)] if key_id else access.revoke_principal(name or "")
        for k in revoked:
            _console().print(
                f"Revoked key {k.id} of {k.principal!r} ({k.role} in {k.workspace!r}).",
                highlight=False,
            )


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
) -> None:
    """Serve the HTTP API with uvicorn (and MCP at /mcp); API keys are required unless
    --no-auth."""
    with guard:
        import os

        import uvicorn

        from contextkit.server.app import ServeSettings, app_from_settings

        ctx = _context(repo, workspace)
        # Resolve the default workspace once, now: fail at start-up, not on every request.
        record = ctx.workspace_record()
        err = _err_console()
        if not record.live:
            err.print(
                f"[yellow]warning:[/] workspace {record.name!r} is a dev workspace: it serves "
                "no features (apply to a live workspace)"
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
        ctx = _context(repo, workspace)
        ctx.workspace_record()  # an unknown workspace fails now, with its hint
        if key is not None:
            ctx.access.authenticate(key)  # so does a bad key
        warming = Readiness(ready=False).warm_in_background(ctx)  # while the host connects
        anyio.run(run_stdio, local_server(ctx, McpSettings(ingest=ingest), key))
        warming.join()  # exiting while a model loads in that thread would abort the process


def _fmt_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def main() -> None:
    """Entry point of the ``contextkit`` script. Set CONTEXTKIT_DEBUG=1 to see tracebacks."""
    import os

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("CONTEXTKIT_DEBUG"):
            raise
        _err_console().print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", highlight=False
        )
        _err_console().print(
            "[yellow]hint:[/] this is a bug in contextkit; re-run with CONTEXTKIT_DEBUG=1 and "
            "report the traceback"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
