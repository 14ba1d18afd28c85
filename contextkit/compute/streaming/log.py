"""Applying the durable ingest log to the online store: the per-source applied marker,
``apply_log`` (each logged row applied once, whichever node does it; rows the log no longer
holds, pruned after their flush, are read from the offline Parquet log), loading a batch
source's history first (``load_history``, ``consume_history``) and restoring stream views.

**A large history** loads in chunks of :data:`HISTORY_CHUNK_ROWS` rows, one transaction each
(``apply_log``: an online store beside a shared log, e.g. Redis), so a load holds one chunk's
Python rows and a Redis MULTI of one chunk's writes, whatever the batch source's size. Each
chunk's transaction also records how far the load got (the last history seq applied, and the
log seq the history was computed against), so an interrupted load (a crash, a store that went
away) resumes where it stopped at the next ``apply_log`` (the next ingest or materialize, or
serving's start-up: :func:`resume_history_loads`, never a start over, as another worker or
node may still be running it); a ``contextkit online rebuild`` starts it over. Until the load
finishes, readers see the stream views' values counting the history rows loaded so far (the
oldest in file order first) and no logged record yet (they are applied after the history, as
before), as they see nothing while ``rebuild_stream_views`` runs. The embedded SQLite store,
which holds its own log, loads a history in one transaction (that of the ingest or
materialize that needs it).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from contextkit.compute.layout import log_table, online_table, tiles_table
from contextkit.compute.streaming.durable import applied_table, ingest_log
from contextkit.compute.streaming.flush import flushed_log_rows, logged_events
from contextkit.compute.streaming.history import (
    batch_fingerprint,
    batch_rows,
    history,
    history_slice,
    row_digest,
)
from contextkit.compute.streaming.latest import upsert_latest
from contextkit.compute.streaming.records import US, Record, stored_value, typed_value
from contextkit.compute.streaming.tiles import merge_tiles, retained_us, tile_of
from contextkit.errors import StoreUnavailableError
from contextkit.framework.specs import PushSourceSpec, StreamFeatureViewSpec
from contextkit.stores.errors import WriteConflict
from contextkit.stores.online import SQLiteOnlineStore, TableRead
from contextkit.types import Int64, String, epoch_micros

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime


_log = logging.getLogger("contextkit.compute.streaming.log")
# StoreUnavailableError.details of a load that cannot resume: its batch_source changed.
_CHANGED = {"reason": "batch_source_changed"}

# How many conflicting rounds (each one another applier's commit) apply_log rides out.
_MAX_CONFLICTS = 200
# Batch source history rows per transaction when apply_log loads a history.
HISTORY_CHUNK_ROWS = 5_000


def history_table(workspace: str, source: str) -> str:
    """The online table counting, by digest, the batch source history rows the online store
    holds that a record logged later may turn out to be (see :func:`load_history`)."""
    return f"{log_table(workspace, source)}__history"


def _history_key(workspace: str, source: str) -> str:
    """The row of :func:`applied_table` saying the history is loaded, and against which seq."""
    return f"{log_table(workspace, source)}#history"


def _progress_keys(workspace: str, source: str) -> tuple[str, str, str]:
    """The rows of :func:`applied_table` of a history load under way: the log seq the history
    is computed against, the last history seq applied, and the batch source's fingerprint
    (:func:`~contextkit.compute.streaming.history.batch_fingerprint`) when the load began."""
    log = log_table(workspace, source)
    return f"{log}#history-upto", f"{log}#history-at", f"{log}#history-of"


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
    after their flush) come from the offline Parquet log. A source with a ``batch_source`` has
    its history loaded first (:func:`load_history`). Returns how many rows were applied."""
    log = log_table(workspace, source.name)
    marker = applied_table(workspace, source.name)
    mark = _history_key(workspace, source.name)
    durable = ingest_log(ctx)
    names = [c.name for c in source.columns]
    total = 0
    loader = HistoryLoad(ctx, workspace, source, views, now, HISTORY_CHUNK_ROWS)

    def work(w) -> tuple[int, bool]:
        """Rows applied, and whether to go on (more may be waiting)."""
        w.ensure_table(marker, [("log", String)], [("seq", Int64)])
        found = w.get(marker, ["log"], [(log,), (mark,)], ["seq"])
        if source.batch_source and (mark,) not in found:
            # One chunk per transaction (on Redis, reads do not see the transaction's writes).
            return loader.step(w), True
        row = found.get((log,))
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
            return 0, False
        records, seqs = log_records(source, pending)
        loaded_upto = found.get((mark,))
        if loaded_upto is not None:
            records = consume_history(w, workspace, source, records, seqs, int(loaded_upto[0]))
        apply_records(w, workspace, views, records, seqs, now)
        w.upsert(marker, ["log", "seq"], [[log, pending[-1][0]]])
        return len(pending), from_flushed or len(pending) == batch

    conflicts = 0
    while True:
        try:
            applied, more = ctx.online.transact(work)
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
        if not more:
            return total


def log_records(source: PushSourceSpec, rows: Sequence[tuple]) -> tuple[list[Record], dict]:
    """Logged rows ``(seq, *values)`` (the stores' native form) as records, and their seqs (by
    the record's id), as ingest applies them."""
    names = [c.name for c in source.columns]
    at = names.index(source.timestamp_field)
    records, seqs = [], {}
    for i, (seq, *values) in enumerate(rows):
        typed = {
            c.name: typed_value(c.dtype or String, v)
            for c, v in zip(source.columns, values, strict=True)
        }
        record = Record(i, typed, values[at], None)
        records.append(record)
        seqs[id(record)] = seq
    return records, seqs


def apply_records(w, workspace: str, views, records: list[Record], seqs: dict, now) -> None:
    """Merge records into the stream views' online state: tiles or latest values."""
    if not records:
        return
    for view in views:
        if view.is_aggregate:
            merge_tiles(w, workspace, view, records, seqs, now)
        else:
            upsert_latest(w, workspace, view, records, seqs)


def history_loaded(w, workspace: str, source: PushSourceSpec) -> int | None:
    """The log seq the source's history was loaded against (None: not loaded), read in ``w``'s
    transaction."""
    marker = applied_table(workspace, source.name)
    w.ensure_table(marker, [("log", String)], [("seq", Int64)])
    key = _history_key(workspace, source.name)
    row = w.get(marker, ["log"], [(key,)], ["seq"]).get((key,))
    return None if row is None else int(row[0])


def load_history(
    ctx: Runtime,
    w,
    workspace: str,
    source: PushSourceSpec,
    views: list[StreamFeatureViewSpec],
    now: datetime,
) -> int:
    """Load the batch source history (:mod:`~contextkit.compute.streaming.history`) into the
    online state of the source's stream views, all in ``w``'s transaction (the embedded
    store's; ``apply_log`` loads a chunk per transaction: :class:`HistoryLoad`), and mark it
    loaded against the log's last seq ``S`` read now (the records the history was computed
    against). Returns the rows applied.

    A record logged later (seq after ``S``) may equal a history row (the batch file was
    exported after it was pushed): it is the same event, and :func:`consume_history` skips
    it. For that, the digests of the history rows that still count in an aggregate window are
    kept (table :func:`history_table`); older rows, and attribute views, need none: an equal
    record counted again changes no retained tile and no latest value."""
    logged = logged_events(ctx, workspace, source)
    upto = max(logged.column("__seq").to_pylist(), default=0)
    kept = _kept_history(source, batch_rows(ctx, source), logged, upto)
    applied = 0
    after = None
    while kept is not None:  # in slices: Python rows for one slice at a time
        part = history_slice(kept, after, HISTORY_CHUNK_ROWS)
        if not part.num_rows:
            break
        applied += _apply_history(w, workspace, source, views, now, part)
        after = part.column("__seq")[-1].as_py()
    _mark_loaded(w, workspace, source, upto)
    return applied


def _kept_history(source: PushSourceSpec, batch, logged, upto: int):
    """The history rows (:func:`history`) of the batch source's rows ``batch`` against the
    records logged up to ``upto``; None without any."""
    if batch is None or not batch.num_rows:
        return None
    return history(source, batch, logged, upto)


def _apply_history(w, workspace: str, source: PushSourceSpec, views, now, part) -> int:
    """Apply history rows (an Arrow slice of :func:`history`'s) in ``w``: tiles and latest
    values, and the digests of those still in an aggregate window added to
    :func:`history_table`'s counts. Returns the rows applied."""
    dtypes = [c.dtype or String for c in source.columns]
    names = [c.name for c in source.columns]
    rows = [
        (r["__seq"], *(stored_value(t, r[n]) for t, n in zip(dtypes, names, strict=True)))
        for r in part.to_pylist()
        if r[source.timestamp_field] is not None  # no tile, no latest value: offline only
    ]
    records, seqs = log_records(source, rows)
    apply_records(w, workspace, views, records, seqs, now)
    aggregates = [v for v in views if v.is_aggregate]
    counts: dict[str, int] = {}
    if aggregates and rows:
        now_us = epoch_micros(now)
        oldest = min(
            tile_of(now_us, v.aggregation_interval_seconds) - retained_us(v) for v in aggregates
        )
        ts = names.index(source.timestamp_field) + 1
        for row in rows:
            if row[ts] is not None and row[ts] >= oldest:
                digest = row_digest(dtypes, row[1:])
                counts[digest] = counts.get(digest, 0) + 1
    table = history_table(workspace, source.name)
    w.ensure_table(table, [("digest", String)], [("n", Int64)])
    if counts:  # added to the counts of earlier slices (an equal row may be in several)
        have = w.get(table, ["digest"], [(d,) for d in counts], ["n"])
        w.upsert(
            table,
            ["digest", "n"],
            [[d, n + int((have.get((d,)) or (0,))[0] or 0)] for d, n in counts.items()],
        )
    return len(records)


def _mark_loaded(w, workspace: str, source: PushSourceSpec, upto: int) -> None:
    marker = applied_table(workspace, source.name)
    w.ensure_table(marker, [("log", String)], [("seq", Int64)])
    w.upsert(marker, ["log", "seq"], [[_history_key(workspace, source.name), upto]])


class HistoryLoad:
    """A batch source history loaded by ``apply_log``, a chunk of ``chunk`` rows per
    transaction (see the module docstring). Each :meth:`step` reads the load's progress in
    the applied table, applies the next chunk and records the progress in the same
    transaction; the last chunk marks the history loaded as :func:`load_history` does. The
    history (the batch file against the log) is computed once per load, not per chunk."""

    def __init__(self, ctx: Runtime, workspace: str, source: PushSourceSpec, views, now, chunk):
        self.ctx, self.workspace, self.source = ctx, workspace, source
        self.views, self.now, self.chunk = views, now, chunk
        # (upto, the history rows or None, the batch source's fingerprint)
        self._kept: tuple[int, Any, int] | None = None

    def step(self, w) -> int:
        """Apply the next chunk in ``w``; returns its rows applied."""
        ctx, workspace, source = self.ctx, self.workspace, self.source
        marker = applied_table(workspace, source.name)
        begun, at, of = _progress_keys(workspace, source.name)
        w.ensure_table(marker, [("log", String)], [("seq", Int64)])
        found = w.get(marker, ["log"], [(begun,), (at,), (of,)], ["seq"])
        logged = None
        if (begun,) in found:  # a load under way: against the log seq it began with
            upto = int(found[(begun,)][0])
        else:
            logged = logged_events(ctx, workspace, source)
            upto = max(logged.column("__seq").to_pylist(), default=0)
        if self._kept is None or self._kept[0] != upto:
            if logged is None:
                logged = logged_events(ctx, workspace, source)
            batch = batch_rows(ctx, source)
            fingerprint = batch_fingerprint(ctx, source, batch)
            self._kept = (upto, _kept_history(source, batch, logged, upto), fingerprint)
        _, kept, fingerprint = self._kept
        if (of,) in found and int(found[(of,)][0]) != fingerprint:
            self._changed()
        after = int(found[(at,)][0]) if (at,) in found else None
        if kept is None:
            _mark_loaded(w, workspace, source, upto)
            return 0
        part = history_slice(kept, after, self.chunk)
        applied = _apply_history(w, workspace, source, self.views, self.now, part)
        last = part.column("__seq")[-1].as_py() if part.num_rows else after
        if not part.num_rows or last == kept.column("__seq")[-1].as_py():
            _mark_loaded(w, workspace, source, upto)
        else:
            w.upsert(marker, ["log", "seq"], [[begun, upto], [at, last], [of, fingerprint]])
        return applied

    def _changed(self) -> NoReturn:
        """The batch source changed since this load began: its history seqs (positions in the
        file) no longer name the rows the progress counts, so resuming would skip rows or
        count some twice. Refused until the views are rebuilt (which starts the load over)."""
        views = " ".join(v.name for v in self.views)
        raise StoreUnavailableError(
            f"batch_source {self.source.batch_source!r} of push source {self.source.name!r} "
            "changed while its history was loading into the online store: the stream views' "
            "online values cannot be finished from it",
            hint=f"run `contextkit online rebuild {views}` (while nothing ingests into "
            f"{self.source.name!r}): it loads the history again from the file as it is now",
            details=dict(_CHANGED),
        )


def consume_history(
    w,
    workspace: str,
    source: PushSourceSpec,
    records: list[Record],
    seqs: dict,
    loaded_upto: int,
) -> list[Record]:
    """The records to apply: those logged after the history was loaded (seq after
    ``loaded_upto``) that equal a history row the online state counts are that row's event,
    already counted; each uses up one count of its digest and is left out."""
    later = [r for r in records if seqs[id(r)] > loaded_upto]
    if not later:
        return records
    dtypes = [c.dtype or String for c in source.columns]
    digests = {
        id(r): row_digest(
            dtypes,
            [
                stored_value(t, r.values[c.name])
                for t, c in zip(dtypes, source.columns, strict=True)
            ],
        )
        for r in later
    }
    table = history_table(workspace, source.name)
    w.ensure_table(table, [("digest", String)], [("n", Int64)])
    found = w.get(table, ["digest"], [(d,) for d in set(digests.values())], ["n"])
    left = {key[0]: int(row[0] or 0) for key, row in found.items()}
    if not any(left.values()):
        return records
    used: set[str] = set()
    kept = []
    for r in records:
        digest = digests.get(id(r))
        if digest is not None and left.get(digest, 0) > 0:
            left[digest] -= 1
            used.add(digest)
            continue
        kept.append(r)
    w.upsert(table, ["digest", "n"], [[d, left[d]] for d in used])
    return kept


def rebuild_stream_views(
    ctx: Runtime, views: Sequence[str] | None = None, now: datetime | None = None
) -> dict[str, int]:
    """Restore the online values of stream views (all, or those named) from their push source's
    events: their latest values and tiles are dropped, the batch source's history is loaded
    (:func:`load_history`) and every logged row is applied again, in seq order: the answers
    they gave before, a record in both the batch source and the log counted once. Returns the
    rows applied per push source (history and log)."""
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
        ctx.online.drop_table(history_table(workspace, source.name))
        out[source.name] = apply_log(ctx, workspace, source, online_views, now)
    return out


def load_histories(ctx: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Load the ``batch_source`` history of every push source whose online store has not loaded
    it yet (:func:`load_history`); returns the rows applied per source. ``materialize`` runs
    it, so stream views count their history before the first record is pushed. An online store
    that is not the log catches up with the log as well (:func:`apply_log`)."""
    specs = ctx.specs()
    workspace = specs.workspace.name
    now = now or datetime.now(UTC)
    embedded = ingest_log(ctx) is ctx.online
    out: dict[str, int] = {}
    for source in specs.push_sources.values():
        views = [v for v in specs.stream_views.values() if v.source == source.name and v.online]
        if not source.batch_source or not views:
            continue
        if not embedded:
            out[source.name] = apply_log(ctx, workspace, source, views, now)
            continue

        def work(w, source=source, views=views) -> int:
            if history_loaded(w, workspace, source) is not None:
                return 0
            return load_history(ctx, w, workspace, source, views, now)

        out[source.name] = ctx.online.transact(work)
    return out


def needs_catch_up(ctx: Runtime) -> bool:
    """Whether reads of stream views catch the online store up with the log first
    (:func:`catch_up`): only for a node's own SQLite online store beside a shared PostgreSQL
    log. Decided once per process."""
    runtime = getattr(ctx, "runtime", ctx)  # the facade (tests, notebooks) holds a Runtime
    return runtime.shared(
        "stream_catch_up",
        lambda: isinstance(ctx.online, SQLiteOnlineStore) and ingest_log(ctx) is not ctx.online,
    )


def catch_up(ctx: Runtime, workspace: str, sources: Iterable[str]) -> None:
    """Apply to this node's SQLite online store what other nodes logged in the shared log since
    it last applied it (:func:`apply_log`), so that a read sees every acknowledged record: one
    local read of the applied marker and one query of the log per push source when nothing is
    new. The log is in the registry's database, which every read needs anyway: when it is out
    of reach the read is a 503 ``store_error`` as it would be without this."""
    specs = ctx.specs(workspace)
    durable = ingest_log(ctx)
    for name in sources:
        source = specs.push_sources.get(name)
        if source is None:
            continue
        log = log_table(workspace, name)
        (found,) = ctx.online.read_many(
            [TableRead(applied_table(workspace, name), ("log",), ("seq",), [(log,)])]
        )
        row = found[0] if found else None
        done = int(row[0]) if row and row[0] is not None else 0
        if not durable.read_log(log, [], done, 1):
            continue
        views = [v for v in specs.stream_views.values() if v.source == name and v.online]
        apply_log(ctx, workspace, source, views, datetime.now(UTC))


def stream_views_to_rebuild(ctx: Runtime) -> list[str]:
    """Stream views whose push source has logged rows or a batch source, of which the online
    store has no trace (its applied marker is gone: an emptied Redis, a node's new or lost
    SQLite file); the SQLite online store that holds its own log has none. A history load
    that stopped half way is not listed: another worker or node may still be running it, and
    starting it over under that loader would count its next chunk twice; serving's start-up
    resumes it instead (:func:`resume_history_loads`)."""
    durable = ingest_log(ctx)
    if durable is ctx.online:
        return []
    specs = ctx.specs()
    workspace = specs.workspace.name
    found = []
    for source in specs.push_sources.values():
        log = log_table(workspace, source.name)
        # A log that ever took a record (its rows may all be pruned after their flush since).
        if not source.batch_source and not durable.has_table(log):
            continue
        if ctx.online.has_table(applied_table(workspace, source.name)):
            continue
        found += [
            v.name for v in specs.stream_views.values() if v.source == source.name and v.online
        ]
    return found


def resume_history_loads(ctx: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Finish the batch source history loads that stopped half way (a crash, a store that went
    away) and then the log, as the next ingest would (:func:`apply_log`: each chunk's
    transaction checks the progress it read, so this is safe beside a loader still running on
    another worker or node). Serving's start-up runs it; returns the rows applied per source
    whose load was unfinished. A load whose batch_source changed is left as it is, logged as a
    warning: serving goes on, its ingests say so (:meth:`HistoryLoad.step`)."""
    durable = ingest_log(ctx)
    if durable is ctx.online:
        return {}
    specs = ctx.specs()
    workspace = specs.workspace.name
    now = now or datetime.now(UTC)
    out: dict[str, int] = {}
    for source in specs.push_sources.values():
        views = [v for v in specs.stream_views.values() if v.source == source.name and v.online]
        if not source.batch_source or not views:
            continue
        if not ctx.online.has_table(applied_table(workspace, source.name)):
            continue  # no trace: stream_views_to_rebuild lists it
        if _history_finished(ctx, workspace, source.name):
            continue
        try:
            out[source.name] = apply_log(ctx, workspace, source, views, now)
        except StoreUnavailableError as exc:
            if exc.details != _CHANGED:
                raise
            # Serving goes on with the values loaded so far (as before this start); each
            # ingest into the source answers this error until the views are rebuilt.
            _log.warning("%s (%s)", exc, exc.hint)
    return out


def _history_finished(ctx: Runtime, workspace: str, source: str) -> bool:
    """Whether the online store marks the source's history loaded (not a load that stopped
    half way: see the module docstring)."""
    key = _history_key(workspace, source)
    (found,) = ctx.online.read_many(
        [TableRead(applied_table(workspace, source), ("log",), ("seq",), [(key,)])]
    )
    return bool(found) and found[0] is not None


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
