"""``ingest_records``: validate pushed records and write them durably (the log, then the
views' online state), in one transaction with the embedded store or log-first with Redis."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.layout import log_table
from contextkit.compute.streaming.durable import ingest_log
from contextkit.compute.streaming.log import (
    apply_log,
    apply_records,
    consume_history,
    history_loaded,
    load_history,
    unseen,
)
from contextkit.compute.streaming.records import IngestResult, Record, check_records, stored_value
from contextkit.errors import (
    BadRequestError,
    BatchTooLargeError,
    IngestError,
    NotFoundError,
    StoreUnavailableError,
    WorkspaceError,
)
from contextkit.framework.specs import PushSourceSpec, StreamFeatureViewSpec
from contextkit.stores.errors import StoreServerUnavailable
from contextkit.types import String, epoch_micros

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime


def ingest_records(
    ctx: Runtime,
    source_name: str,
    records: Sequence[Any],
    *,
    dry_run: bool = False,
    partial: bool = False,
    now: datetime | None = None,
) -> IngestResult:
    """Validate and write records pushed to a push source (see the module docstring)."""
    began = time.perf_counter()
    specs = ctx.specs()
    workspace = specs.workspace.name
    source = specs.push_sources.get(source_name)
    if source is None:
        raise NotFoundError(
            f"unknown push source {source_name!r} in workspace {workspace!r}",
            hint="push sources: " + (", ".join(sorted(specs.push_sources)) or "none applied"),
        )
    if not specs.workspace.live and not dry_run:
        raise WorkspaceError(
            f"workspace {workspace!r} is a dev workspace: it takes no records",
            hint="ingest into a live workspace, or pass dry_run to only validate",
        )
    limits = ctx.config.ingest
    if not isinstance(records, Sequence) or isinstance(records, str | bytes):
        raise BadRequestError("records must be a list", details={"field": "records"})
    if len(records) > limits.max_records:
        raise BatchTooLargeError(
            f"{len(records)} records in one request; the limit is {limits.max_records}",
            hint="split the batch (ingest.max_records in contextkit.yaml sets the limit)",
        )
    views = [v for v in specs.stream_views.values() if v.source == source_name and v.online]
    keys = {k for v in views for k in v.join_key_names}
    now = now or datetime.now(UTC)
    good, errors = check_records(source, keys, records, now=now, max_future_s=limits.max_future_s)
    result = IngestResult(source_name, workspace, dry_run, 0, errors=errors)
    if errors and not partial:
        problems = "" if len(errors) == result.rejected else f" ({len(errors)} problems)"
        raise IngestError(
            f"{result.rejected} of {len(records)} record(s) do not fit push source "
            f"{source_name!r}{problems}; nothing was written",
            hint="fix the records listed in details.errors, or send partial=true to write the "
            "valid ones",
            details={"errors": errors[:100], "rejected": result.rejected},
        )
    result.timings_ms["validate"] = round((time.perf_counter() - began) * 1000, 3)
    if dry_run:  # what a real run would write: idempotency keys already logged are duplicates
        fresh = unseen(good, _logged_ids(ctx, workspace, source, good))
        kept = {r.index for r in fresh}
        result.duplicates = [r.index for r in good if r.index not in kept]
        result.accepted = len(fresh)
        return result
    if good:
        write_began = time.perf_counter()
        written = _write(ctx, workspace, source, views, good, now)
        result.duplicates = [r.index for r in good if r not in written]
        result.accepted = len(written)
        result.views_updated = [v.name for v in views]
        result.timings_ms["write"] = round((time.perf_counter() - write_began) * 1000, 3)
        if written:
            _after_commit(ctx, workspace, source, written)
    result.ingested_at = now.isoformat().replace("+00:00", "Z")
    result.timings_ms["total"] = round((time.perf_counter() - began) * 1000, 3)
    return result


def _write(
    ctx: Runtime,
    workspace: str,
    source: PushSourceSpec,
    views: list[StreamFeatureViewSpec],
    records: list[Record],
    now: datetime,
) -> list[Record]:
    """One transaction: log, latest values, tiles. Returns the records written (not dups).

    With an online store that is not durable (Redis), the log is committed first to the durable
    ingest log (:func:`ingest_log`), and then everything logged that the online store has not
    applied yet is applied to it (:func:`apply_log`)."""
    columns = [(c.name, c.dtype or String) for c in source.columns]
    log = log_table(workspace, source.name)
    durable = ingest_log(ctx)
    if durable is not ctx.online:

        def append(w) -> list[Record]:
            w.ensure_table(log, [], columns, log=True)
            ids = [r.ingest_id for r in records if r.ingest_id is not None]
            fresh = unseen(records, w.existing(log, "ingest_id", ids) if ids else set())
            if fresh:
                rows = [
                    [r.ingest_id, *(stored_value(t, r.values[n]) for n, t in columns)]
                    for r in fresh
                ]
                w.append_log(log, [n for n, _ in columns], rows, epoch_micros(now))
            return fresh

        fresh = durable.transact(append)  # durable from here on: the online store may lose it
        try:
            apply_log(ctx, workspace, source, views, now)
        except (StoreServerUnavailable, StoreUnavailableError) as exc:
            raise StoreUnavailableError(
                f"{len(fresh)} record(s) of {source.name!r} are in the durable ingest log, but "
                f"the online store cannot take them now: {exc.message}",
                hint="they are applied by the next ingest once it is back, or by `contextkit "
                "online rebuild`; resending with the same idempotency keys writes nothing twice",
            ) from None
        return fresh

    def work(w) -> list[Record]:
        # Run again from the start when a concurrent writer changed what it read (Redis WATCH).
        w.ensure_table(log, [], columns, log=True)
        ids = [r.ingest_id for r in records if r.ingest_id is not None]
        fresh = unseen(records, w.existing(log, "ingest_id", ids) if ids else set())
        if not fresh:
            return []
        rows = [[r.ingest_id, *(stored_value(t, r.values[n]) for n, t in columns)] for r in fresh]
        first_seq, _last = w.append_log(log, [n for n, _ in columns], rows, epoch_micros(now))
        seqs = {id(r): first_seq + i for i, r in enumerate(fresh)}
        applied = fresh
        if source.batch_source:  # the history first, read as committed (before this append)
            upto = history_loaded(w, workspace, source)
            if upto is None:
                load_history(ctx, w, workspace, source, views, now)
                upto = first_seq - 1
            applied = consume_history(w, workspace, source, fresh, seqs, upto)
        apply_records(w, workspace, views, applied, seqs, now)
        return fresh

    return ctx.online.transact(work)


def _logged_ids(ctx: Runtime, workspace: str, source: PushSourceSpec, records: list[Record]):
    """The records' idempotency keys already in the source's log, for a dry run: looked up as
    a real ingest does, in a transaction that writes nothing."""
    ids = [r.ingest_id for r in records if r.ingest_id is not None]
    log = log_table(workspace, source.name)
    durable = ingest_log(ctx)
    if not ids or not durable.has_table(log):
        return set()
    with durable.transaction() as w:
        return w.existing(log, "ingest_id", ids)


def _after_commit(ctx: Runtime, workspace: str, source: PushSourceSpec, records: list[Record]):
    """Work that follows a durable write: queue the records for the embedding views over the
    source (encoded in micro-batches by a background thread; see
    contextkit.compute.push_embeddings)."""
    views = [
        v for v in ctx.specs().embedding_views.values() if v.online and source.name in v.sources
    ]
    if not views:
        return
    from contextkit.compute.push_embeddings import push_encoder

    rows = [r.values for r in records]
    for view in views:
        push_encoder().submit(ctx, workspace, view, rows)
