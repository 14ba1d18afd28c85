"""Which store holds the durable ingest log of push sources (see
:mod:`contextkit.stores.ingest_log`): the log follows the registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contextkit.stores.online import SQLiteOnlineStore

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime
    from contextkit.stores.ingest_log import IngestLog


def ingest_log(ctx: Runtime) -> IngestLog:
    """The store holding push sources' ingest logs (see :mod:`contextkit.stores.ingest_log`).
    The log follows the registry, whatever the online store:

    - a PostgreSQL registry: the registry database's shared log. Every node appends to and
      applies from the same log, so ingest may go to any node, and a node that loses its disks
      (its SQLite online store included) loses no acknowledged record;
    - a SQLite registry and the embedded SQLite online store: the online store itself (one
      transaction writes the log and the values);
    - a SQLite registry and another online store (Redis): a SQLite file ``ingest_log.db`` next
      to the online store's path (``synchronous=FULL``), one node's.

    An online store that is not the log (Redis, or a node's SQLite file beside a PostgreSQL
    log) is applied from it (:func:`~contextkit.compute.streaming.apply_log`), and restored
    from it by :func:`~contextkit.compute.streaming.rebuild_stream_views`."""
    shared = ctx.registry.ingest_log()
    if shared is not None:
        return shared
    if isinstance(ctx.online, SQLiteOnlineStore):
        return ctx.online
    runtime = getattr(ctx, "runtime", ctx)  # the facade (tests, notebooks) holds a Runtime
    return runtime.shared(
        "ingest_log", lambda: SQLiteOnlineStore(ctx.config.online_path.with_name("ingest_log.db"))
    )
