"""The ``contextkit`` command line: a thin shell over the SDK (:mod:`contextkit.client`).

One module per group of commands (:mod:`.repo`, :mod:`.workspaces`, :mod:`.jobs`,
:mod:`.monitoring`, :mod:`.datasets`, :mod:`.access`, :mod:`.serve`, :mod:`.online`);
:mod:`.shell` holds what they share. A new command goes in its group's module, or a new module
imported below.

Errors print as one line plus a hint and exit with 1 (runtime) or 2 (bad definitions/config);
no traceback reaches the user. Heavy libraries are imported inside commands so ``--help`` is fast.
"""

# Importing a command module registers its commands on the shared typer app, in this order
# (the order of `contextkit --help`).
# isort: off
from contextkit.cli import repo, workspaces, jobs, monitoring, datasets, access, serve  # noqa: F401
from contextkit.cli import control  # noqa: F401 - scheduler, control-plane
from contextkit.cli import online  # noqa: F401
from contextkit.cli import eval  # noqa: F401 - contextkit eval

# isort: on
from contextkit.cli.entry import main
from contextkit.cli.shell import app

__all__ = ["app", "main"]
