"""Which store holds the durable ingest log of push sources (see
:mod:`contextkit.stores.ingest_log`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contextkit.stores.online import SQLiteOnlineStore

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime
    from contextkit.stores.ingest_log import IngestLog


def ingest_log(ctx: Runtime) -> IngestLog:
    """The store holding push sources' ingest logs (see :mod:`contextkit.stores.ingest_log`):

    - the online store itself when it is the embedded SQLite file (one transaction writes the
      log and the values);
    - else the registry's shared log when the registry is PostgreSQL: every node appends to and
      applies from the same log, so ingest may go to any node;
    - else a SQLite file ``ingest_log.db`` next to the online store's path (``synchronous=
      FULL``), one node's.

    Redis may lose recent writes; this log is what an acknowledged ingest relies on, and what
    :func:`rebuild_stream_views` restores the online store from."""
    if isinstance(ctx.online, SQLiteOnlineStore):
        return ctx.online
    shared = ctx.registry.ingest_log()
    if shared is not None:
        return shared
    runtime = getattr(ctx, "runtime", ctx)  # the facade (tests, notebooks) holds a Runtime
    return runtime.shared(
        "ingest_log", lambda: SQLiteOnlineStore(ctx.config.online_path.with_name("ingest_log.db"))
    )
