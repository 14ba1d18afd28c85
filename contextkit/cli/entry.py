"""The entry point of the `contextkit` script."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from contextkit.cli.shell import app, err_console

if TYPE_CHECKING:
    pass


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
        err_console().print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", highlight=False
        )
        err_console().print(
            "[yellow]hint:[/] this is a bug in contextkit; re-run with CONTEXTKIT_DEBUG=1 and "
            "report the traceback"
        )
        sys.exit(1)
