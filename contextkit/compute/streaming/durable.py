"""Which store holds the durable ingest log of push sources (see
:mod:`contextkit.stores.ingest_log`): the log follows the registry."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from contextkit.compute.layout import log_table
from contextkit.stores.ingest_log import PostgresIngestLog
from contextkit.stores.online import SQLiteOnlineStore
from contextkit.types import Int64, String

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime
    from contextkit.stores.ingest_log import IngestLog

log = logging.getLogger("contextkit.ingest")


def applied_table(workspace: str, source: str) -> str:
    """The online table holding how far (which log seq) the online store applied a log."""
    return f"{log_table(workspace, source)}__applied"


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
        if isinstance(ctx.online, SQLiteOnlineStore) and isinstance(shared, PostgresIngestLog):
            _adopt_node_logs(ctx, shared)
        return shared
    if isinstance(ctx.online, SQLiteOnlineStore):
        return ctx.online
    runtime = getattr(ctx, "runtime", ctx)  # the facade (tests, notebooks) holds a Runtime
    return runtime.shared(
        "ingest_log", lambda: SQLiteOnlineStore(ctx.config.online_path.with_name("ingest_log.db"))
    )


def _adopt_node_logs(ctx: Runtime, shared: PostgresIngestLog) -> None:
    """Once per process and workspace: logs that this node's SQLite online store kept (before
    the log followed the registry, a PostgreSQL registry beside the embedded online store left
    the log in the online store's file) move into the shared log, their seqs kept, so that
    the flushed watermark still matches them; the online store is marked as having applied
    them (its values hold them already), and its copy is dropped. A shared log that holds other
    rows of the same name cannot take them: the table stays, and a warning says so."""
    runtime = getattr(ctx, "runtime", ctx)  # the facade (tests, notebooks) holds a Runtime
    done: set[str] = runtime.shared("ingest_log_adopted", set)
    specs = ctx.specs()
    workspace = specs.workspace.name
    if workspace in done:
        return
    online: SQLiteOnlineStore = ctx.online  # type: ignore[assignment]
    for source in specs.push_sources.values():
        table = log_table(workspace, source.name)
        if not online.has_table(table):
            continue
        names = [c.name for c in source.columns]
        rows = online.read_log(table, ["ingest_id", "ingested_at", *names], 0, 2**62)
        if not shared.adopt(table, names, rows):
            log.warning(
                "the ingest log %s in %s was not moved into the shared log %s, which holds "
                "other rows of that name: its records are not served or flushed from there",
                table,
                online.path,
                shared.url,
            )
            continue
        if rows:
            marker = applied_table(workspace, source.name)
            with online.transaction() as w:
                w.ensure_table(marker, [("log", String)], [("seq", Int64)])
                w.upsert(marker, ["log", "seq"], [[table, rows[-1][0]]])
        online.drop_table(table)
    done.add(workspace)
