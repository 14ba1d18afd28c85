"""`contextkit dataset`: a prompt view rendered for each event."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from contextkit.cli.shell import (
    RepoOpt,
    WorkspaceOpt,
    app,
    err_console,
    guard,
    open_context,
    out_console,
)

if TYPE_CHECKING:
    pass


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
        ctx = open_context(repo, workspace)
        console = out_console()
        with Progress(
            TextColumn("rendering"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err_console(),
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
