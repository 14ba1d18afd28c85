"""Restoring the online store (Redis lost its data) from what is durable.

* Batch feature views, at the view's watermark (the end of its last successful job of this
  definition): the latest row per entity within the ttl, computed by the same query a job's
  online step runs, and bulk-written to the online store. When the view has offline data, the
  query reads the offline store (the view's Parquet rows; an aggregate view's stored input rows,
  so its windows are recomputed exactly), not the sources, which may have changed or be slow to
  read. A view without offline data (``offline=False``, or never written offline) falls back to
  its sources: the online part of materialization is run again, adding nothing offline. The
  offline rows of a job's range end before its end, so a source row timestamped exactly at the
  watermark is served after a rebuild from sources but not from the offline store.
* Stream views: their push source's ``batch_source`` history (its rows, read as materialization
  reads a FileSource, less those equal to a logged record: one event counted once), then every
  row of the durable ingest log (rows pruned after their flush read back from the offline
  Parquet log), through the same tile and latest-value merges as ingest, in seq order
  (:func:`contextkit.compute.streaming.rebuild_stream_views`): the answers served before the
  online store was lost.

``contextkit online rebuild [VIEW]`` runs :func:`rebuild_online`; serving runs
:func:`rebuild_if_empty` at start-up, which rebuilds only the views the registry says were
materialized (or the log says were ingested) and the online store has no trace of, or lost a
slice of (on a Redis Cluster, a master that restarted empty: logged as a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from contextkit.compute.layout import inputs_table, offline_table, online_table
from contextkit.compute.materialize import (
    last_watermark,
    materialize_view,
    online_rows_sql,
    replace_online_table,
)
from contextkit.compute.streaming import (
    ingest_log,
    rebuild_stream_views,
    stream_views_to_rebuild,
)
from contextkit.compute.streaming.log import resume_history_loads
from contextkit.errors import NotFoundError, WorkspaceError
from contextkit.framework import transformations
from contextkit.framework.specs import FeatureViewSpec
from contextkit.framework.transformations import EVENT_TIMESTAMP, quote, ts_literal

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime

log = logging.getLogger("contextkit.compute.online_rebuild")


@dataclass
class RebuildResult:
    """What a rebuild did: rows written per batch view, log rows applied per push source, and
    the batch views skipped because they were never materialized."""

    batch_rows: dict[str, int] = field(default_factory=dict)
    log_rows: dict[str, int] = field(default_factory=dict)
    never_materialized: list[str] = field(default_factory=list)
    # Where each rebuilt batch view was read from: "offline" (the offline store) or "sources".
    read_from: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "batch_rows": self.batch_rows,
            "log_rows": self.log_rows,
            "never_materialized": self.never_materialized,
            "read_from": self.read_from,
        }


def rebuild_online(runtime: Runtime, views: Sequence[str] | None = None) -> RebuildResult:
    """Rebuild the online values of the live workspace's views (all, or those named)."""
    specs = runtime.specs()
    workspace = specs.workspace.name
    if not specs.workspace.live:
        raise WorkspaceError(
            f"workspace {workspace!r} is a dev workspace: it has no online values",
            hint="rebuild a live workspace (--workspace)",
        )
    batch = [v for v in specs.views.values() if v.online]
    streams = [v for v in specs.stream_views.values() if v.online]
    if views is not None:
        known = {v.name for v in [*batch, *streams]}
        unknown = [n for n in views if n not in known]
        if unknown:
            raise NotFoundError(
                f"no online feature view named {', '.join(map(repr, unknown))} in {workspace!r}",
                hint="online views: " + (", ".join(sorted(known)) or "none applied"),
            )
        batch = [v for v in batch if v.name in views]
        streams = [v for v in streams if v.name in views]
    result = RebuildResult()
    for view in batch:
        watermark = last_watermark(runtime.registry, workspace, view)
        if watermark is None:
            result.never_materialized.append(view.name)
            continue
        rows = _from_offline(runtime, workspace, view, watermark)
        if rows is not None:
            result.batch_rows[view.name], result.read_from[view.name] = rows, "offline"
            continue
        job = materialize_view(
            registry=runtime.registry,
            online=runtime.online,
            offline=runtime.offline,
            root=runtime.config.root.resolve(),
            workspace=workspace,
            view=view,
            sources=specs.sources,
            views=specs.views,
            start=watermark,
            end=watermark,
            monitoring=False,
            max_online_shrink=None,
        )
        result.batch_rows[view.name], result.read_from[view.name] = job.rows_online, "sources"
    if streams:
        result.log_rows = rebuild_stream_views(
            runtime, [v.name for v in streams], now=datetime.now(UTC)
        )
    return result


class _OfflineRows:
    """Stands in for the sources' :class:`~contextkit.framework.transformations.Workspace` in
    ``online_features_sql``: the view's transformation output read back from the offline store
    (registered in DuckDB as ``name``), its ``event_timestamp`` named as the view's timestamp."""

    def __init__(self, name: str) -> None:
        self.name = name

    def transformation_sql(
        self, view: FeatureViewSpec, start: datetime | None = None, end: datetime | None = None
    ) -> str:
        ts = quote(view.timestamp_field)
        where = [f"{EVENT_TIMESTAMP} >= {ts_literal(start)}"] if start is not None else []
        if end is not None:
            where.append(f"{EVENT_TIMESTAMP} < {ts_literal(end)}")
        return (
            f"SELECT * EXCLUDE ({EVENT_TIMESTAMP}), {EVENT_TIMESTAMP} AS {ts} FROM {self.name}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
        )


def _from_offline(
    runtime: Runtime, workspace: str, view: FeatureViewSpec, watermark: datetime
) -> int | None:
    """Rewrite the view's online table from its offline data as of ``watermark`` (see the
    module docstring); None when it has none, and the sources must be read instead."""
    if not view.offline:
        return None
    table = (inputs_table if view.is_aggregate else offline_table)(workspace, view.name)
    rows = runtime.offline.dataset(table)
    if rows is None:
        return None
    con = transformations.connect_duckdb()
    try:
        con.register("__offline_rows", rows)
        features = transformations.online_features_sql(
            _OfflineRows("__offline_rows"),  # type: ignore[arg-type]
            view,
            watermark,
        )
        query = online_rows_sql(view, features)
        return replace_online_table(runtime.online, con, workspace, view, query)
    finally:
        con.close()


def views_to_rebuild(runtime: Runtime) -> list[str]:
    """Online views the registry says were materialized (or whose log has rows) whose online
    values are gone: the online store was emptied (a Redis restarted without its data), or a
    batch view lost a slice of its rows (a Redis Cluster master other than the workspace's
    restarted empty: ``OnlineStore.lost_tables``)."""
    specs = runtime.specs()
    if not specs.workspace.live:
        return []
    workspace = specs.workspace.name
    online = runtime.online
    views = {online_table(workspace, v.name): v for v in specs.views.values() if v.online}
    present = {table: online.has_table(table) for table in views}
    missing = [
        v.name
        for table, v in views.items()
        if not present[table] and last_watermark(runtime.registry, workspace, v) is not None
    ]
    lost = online.lost_tables([table for table in views if present[table]])
    if lost:
        log.warning(
            "online store %r lost rows of %s since they were materialized (a Redis Cluster "
            "master restarted empty?): rebuilding them",
            online,
            ", ".join(views[t].name for t in lost),
        )
    return missing + [views[t].name for t in lost] + stream_views_to_rebuild(runtime)


def rebuilds_on_start(runtime: Runtime) -> bool:
    """Whether serving start-up checks the online store for lost values: whenever the online
    store is not the durable ingest log itself (Redis; a node's SQLite file beside the
    PostgreSQL registry's log, which a node's new or lost disk empties). Not for the embedded
    SQLite store with a SQLite registry, which holds its own log (a missing or damaged file is
    reported, 503, not silently recomputed)."""
    return ingest_log(runtime) is not runtime.online


def rebuild_if_empty(runtime: Runtime) -> RebuildResult | None:
    """Rebuild what :func:`views_to_rebuild` finds (start-up of serving), after resuming the
    history loads that stopped half way (``resume_history_loads``); None when nothing is
    missing or the store is not one that loses values (:func:`rebuilds_on_start`)."""
    if not rebuilds_on_start(runtime):
        return None
    # A history load that stopped half way is resumed, never started over: another worker or
    # node may still be running it (a start over under it counts its next chunk twice).
    resumed = resume_history_loads(runtime)
    missing = views_to_rebuild(runtime)
    result = rebuild_online(runtime, missing) if missing else None
    if resumed:
        result = result or RebuildResult()
        result.log_rows = {**resumed, **result.log_rows}
    return result
