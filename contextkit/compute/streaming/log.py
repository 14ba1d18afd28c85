"""Applying the durable ingest log to the online store: the per-source applied marker,
``apply_log`` (each logged row applied once, whichever node does it; rows the log no longer
holds, pruned after their flush, are read from the offline Parquet log) and restoring stream
views."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.layout import log_table, online_table, tiles_table
from contextkit.compute.streaming.durable import ingest_log
from contextkit.compute.streaming.flush import flushed_log_rows
from contextkit.compute.streaming.latest import upsert_latest
from contextkit.compute.streaming.records import US, Record, typed_value
from contextkit.compute.streaming.tiles import merge_tiles
from contextkit.framework.specs import PushSourceSpec, StreamFeatureViewSpec
from contextkit.stores.errors import WriteConflict
from contextkit.types import Int64, String

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime


# How many conflicting rounds (each one another applier's commit) apply_log rides out.
_MAX_CONFLICTS = 200


def applied_table(workspace: str, source: str) -> str:
    """The online table holding how far (which log seq) the online store applied a log."""
    return f"{log_table(workspace, source)}__applied"


def apply_log(
    ctx: Runtime,
    workspace: str,
    source: PushSourceSpec,
    views: list[StreamFeatureViewSpec],
    now: datetime,
    batch: int = 5_000,
) -> int:
    """Apply the durable log's rows the online store has not applied yet (after the seq kept in
    :func:`applied_table`), in seq order, in watched transactions: each row is applied once,
    whichever node or request does it. Rows the log no longer holds (pruned by the scheduler
    after their flush) come from the offline Parquet log. Returns how many rows were applied."""
    log = log_table(workspace, source.name)
    marker = applied_table(workspace, source.name)
    durable = ingest_log(ctx)
    names = [c.name for c in source.columns]
    total = 0
    from_flushed = False  # the last batch came from the offline Parquet log

    def work(w) -> int:
        nonlocal from_flushed
        w.ensure_table(marker, [("log", String)], [("seq", Int64)])
        row = w.get(marker, ["log"], [(log,)], ["seq"]).get((log,))
        done = int(row[0]) if row and row[0] is not None else 0
        pending = durable.read_log(log, names, done, batch)
        # Seqs have no holes: rows missing between the marker and the log's first row (or a
        # log emptied while nothing was applied: an online store that lost everything) were
        # pruned after their flush, and are read back from the offline Parquet log.
        from_flushed = False
        if (pending and pending[0][0] > done + 1) or (not pending and done == 0):
            before = pending[0][0] if pending else None
            older = flushed_log_rows(ctx, workspace, source, done, before, batch)
            if older:
                pending, from_flushed = older, True
        if not pending:
            return 0
        records, seqs = [], {}
        for i, (seq, *values) in enumerate(pending):
            typed = {
                c.name: typed_value(c.dtype or String, v)
                for c, v in zip(source.columns, values, strict=True)
            }
            record = Record(i, typed, values[names.index(source.timestamp_field)], None)
            records.append(record)
            seqs[id(record)] = seq
        for view in views:
            if view.is_aggregate:
                merge_tiles(w, workspace, view, records, seqs, now)
            else:
                upsert_latest(w, workspace, view, records, seqs)
        w.upsert(marker, ["log", "seq"], [[log, pending[-1][0]]])
        return len(pending)

    conflicts = 0
    while True:
        try:
            applied = ctx.online.transact(work)
        except WriteConflict:
            # Each conflict is another applier's commit (another request or node): progress.
            # Back off a little and read the marker again, so rows logged here are applied
            # before the ingest that logged them returns.
            conflicts += 1
            if conflicts >= _MAX_CONFLICTS:
                raise
            time.sleep(random.uniform(0, 0.002 * min(conflicts, 10)))
            continue
        total += applied
        if applied == 0 or (applied < batch and not from_flushed):
            return total


def rebuild_stream_views(
    ctx: Runtime, views: Sequence[str] | None = None, now: datetime | None = None
) -> dict[str, int]:
    """Restore the online values of stream views (all, or those named) from the durable log:
    their latest values and tiles are dropped and every logged row is applied again, in seq
    order. Returns the rows applied per push source."""
    specs = ctx.specs()
    workspace = specs.workspace.name
    now = now or datetime.now(UTC)
    out: dict[str, int] = {}
    for source in specs.push_sources.values():
        online_views = [
            v for v in specs.stream_views.values() if v.source == source.name and v.online
        ]
        if views is not None and not any(v.name in views for v in online_views):
            continue
        for view in online_views:  # every view of the source: they share one applied seq
            ctx.online.drop_table(
                tiles_table(workspace, view.name)
                if view.is_aggregate
                else online_table(workspace, view.name)
            )
        ctx.online.drop_table(applied_table(workspace, source.name))
        out[source.name] = apply_log(ctx, workspace, source, online_views, now)
    return out


def stream_views_to_rebuild(ctx: Runtime) -> list[str]:
    """Stream views whose push source has logged rows the online store has lost all trace of
    (its applied marker is gone: an emptied Redis); the SQLite online store holds its own log,
    so it has none."""
    durable = ingest_log(ctx)
    if durable is ctx.online:
        return []
    specs = ctx.specs()
    workspace = specs.workspace.name
    found = []
    for source in specs.push_sources.values():
        log = log_table(workspace, source.name)
        if not durable.read_log(log, [], 0, 1):
            continue
        if ctx.online.has_table(applied_table(workspace, source.name)):
            continue
        found += [
            v.name for v in specs.stream_views.values() if v.source == source.name and v.online
        ]
    return found


def last_ingest_time(ctx: Runtime, workspace: str, source: str) -> float | None:
    """When the newest record pushed to ``source`` arrived (Unix seconds); None when nothing was
    ingested. What ``contextkit status`` reports as a stream view's freshness."""
    us = ingest_log(ctx).last_ingested_at(log_table(workspace, source))
    return None if us is None else us / US


def unseen(records: list[Record], seen: set[Any]) -> list[Record]:
    """The records an ingest writes: those without an idempotency key, and the first record of
    each key that is not in ``seen`` (the keys already logged)."""
    seen = set(seen)
    fresh: list[Record] = []
    for r in records:
        if r.ingest_id is not None:
            if r.ingest_id in seen:
                continue
            seen.add(r.ingest_id)
        fresh.append(r)
    return fresh
