"""What every command shares: the typer apps, the repo and workspace options, the consoles, and
the guard that turns errors into one line plus a hint.
"""

from __future__ import annotations

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


# Width of output that is not a terminal (a pipe, a CI log) when COLUMNS is not set: wide enough
# that tables are not cut at rich's default of 80 columns.
PIPE_WIDTH = 240


def out_console():
    import os
    import sys

    from rich.console import Console

    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        return Console()
    return Console(width=PIPE_WIDTH)


def err_console():
    from rich.console import Console

    return Console(stderr=True)


def fail(exc: Exception) -> None:
    from contextkit.errors import ContextKitError, translate_store_errors
    from contextkit.stores.errors import StoreFailure

    if isinstance(exc, StoreFailure):
        exc = translate_store_errors(exc)
    assert isinstance(exc, ContextKitError)
    console = err_console()
    console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
    if exc.hint:
        console.print(f"[yellow]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


class Guard:
    """Turn contextkit errors into a clean message and exit code."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        from contextkit.errors import ContextKitError
        from contextkit.stores.errors import StoreFailure

        if exc is not None and isinstance(exc, ContextKitError | StoreFailure):
            fail(exc)
        return False


guard = Guard()


def open_context(repo: Path, workspace: str | None) -> Context:
    from contextkit.client import connect

    return connect(repo, workspace)


def parse_time(value: str | None, what: str) -> datetime | None:
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


def fmt_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
