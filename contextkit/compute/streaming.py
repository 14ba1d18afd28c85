"""Push sources and stream feature views: ingest, online tiles, reads, and the offline log.

**Ingest** (``ingest_records``): records are checked against the push source's schema, each error
reported by its index. Then one SQLite transaction (in the online store's file, ``synchronous=
FULL``) appends them to the source's ingest log, updates the latest values of attribute stream
views and merges them into the tiles of aggregate stream views. When the call returns, the write
is durable and the next read sees it. A record whose idempotency key was seen before is skipped.

**Tiles.** An aggregate stream view keeps one row per entity and ``aggregation_interval`` tile
with partial aggregates of the tile's events: counts, sums, min, max, the last value (by event
time, then arrival), the distinct values with their latest time, and the newest event time. A read
at time ``t`` combines the ``window / interval`` tiles ending with the tile that holds ``t``, so
it costs one row per tile, whatever the number of events. An event is counted in the tile of its
own timestamp, whenever it arrives (late and out-of-order events land in their past tile); tiles
older than the view's largest window (or ttl) are deleted as new events arrive.

**Offline**, the same definitions are computed from the log (``stream_offline_sql``), as of any
time ``t``: the tiles of the window ending with ``t``'s tile, and only events with a timestamp at
or before ``t``. Online and offline agree whenever no event is timestamped after the read time
(ingest refuses events more than ``ingest.max_future_s`` ahead of the server's clock).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from contextkit.compute.layout import log_table, online_table, tiles_table
from contextkit.errors import (
    BadRequestError,
    BatchTooLargeError,
    IngestError,
    NotFoundError,
    StoreUnavailableError,
    WorkspaceError,
)
from contextkit.framework.specs import AggregateSpec, PushSourceSpec, StreamFeatureViewSpec
from contextkit.framework.transformations import quote
from contextkit.stores.errors import StoreServerUnavailable
from contextkit.stores.online import OnlineStore, SQLiteOnlineStore
from contextkit.types import (
    Bool,
    Float64,
    Int64,
    String,
    Timestamp,
    arrow_type,
    epoch_micros,
    parse_value,
)

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime

US = 1_000_000
EVENT_TIMESTAMP = "event_timestamp"


# -- record validation ----------------------------------------------------------------------------


@dataclass
class Record:
    index: int
    values: dict[str, Any]  # typed Python values (timestamps as aware datetimes)
    ts: int  # event time, microseconds
    ingest_id: str | None


@dataclass
class IngestResult:
    """What an ingest call did (``to_response()`` is the HTTP body)."""

    source: str
    workspace: str
    dry_run: bool
    accepted: int
    duplicates: list[int] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    views_updated: list[str] = field(default_factory=list)
    ingested_at: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        """How many records were refused (a record with several errors counts once)."""
        return len({e["index"] for e in self.errors})

    def to_response(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "source": self.source,
            "dry_run": self.dry_run,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": self.errors,
            "views_updated": self.views_updated,
            "ingested_at": self.ingested_at,
            "metadata": {"timings_ms": self.timings_ms},
        }


def check_records(
    source: PushSourceSpec,
    key_columns: set[str],
    records: Sequence[Any],
    *,
    now: datetime,
    max_future_s: float,
) -> tuple[list[Record], list[dict[str, Any]]]:
    """Typed records and the per-record errors (``{"index", "field", "message"}``)."""
    schema = {c.name: c.dtype or String for c in source.columns}
    required = key_columns | {source.timestamp_field}
    horizon = now.timestamp() + max_future_s
    good: list[Record] = []
    errors: list[dict[str, Any]] = []

    def fail(index: int, name: str | None, message: str) -> None:
        errors.append({"index": index, "field": name, "message": message})

    for index, raw in enumerate(records):
        ingest_id = None
        if isinstance(raw, Mapping) and "record" in raw and isinstance(raw["record"], Mapping):
            ingest_id = raw.get("idempotency_key")
            if ingest_id is not None and not isinstance(ingest_id, str | int):
                fail(index, "idempotency_key", "must be a string")
                continue
            ingest_id = None if ingest_id is None else str(ingest_id)
            unknown_envelope = set(raw) - {"record", "idempotency_key"}
            if unknown_envelope:
                fail(index, None, f"unknown envelope key(s): {', '.join(sorted(unknown_envelope))}")
                continue
            raw = raw["record"]
        if not isinstance(raw, Mapping):
            fail(index, None, f"a record must be an object, got {type(raw).__name__}")
            continue
        before = len(errors)
        for name in raw:
            if name not in schema:
                fail(index, name, f"unknown field (the schema has: {', '.join(schema)})")
        values: dict[str, Any] = {}
        for name, dtype in schema.items():
            if name not in raw:
                fail(index, name, f"missing field ({dtype})")
                continue
            value = raw[name]
            if value is None:
                if name in required:
                    fail(index, name, "must not be null (a join key or the timestamp)")
                values[name] = None
                continue
            try:
                values[name] = parse_value(dtype, value)
            except ValueError as exc:
                fail(index, name, f"{exc}, got {value!r}")
        if len(errors) > before:
            continue
        moment = values[source.timestamp_field]
        if moment.timestamp() > horizon:
            fail(
                index,
                source.timestamp_field,
                f"{moment.isoformat()} is more than {max_future_s:g} s ahead of the server's clock",
            )
            continue
        good.append(Record(index, values, epoch_micros(moment), ingest_id))
    return good, errors


# -- tiles ---------------------------------------------------------------------------------------


_STATE_PARTS = {
    "count": ("n",),
    "sum": ("n", "sum"),
    "mean": ("n", "sum"),
    "min": ("min",),
    "max": ("max",),
    "last": ("last", "last_ts", "last_seq"),
    "count_distinct": ("distinct",),
    "last_distinct": ("distinct",),
}


def _state_columns(view: StreamFeatureViewSpec) -> list[tuple[str, str]]:
    """The partial-aggregate columns of a view's tiles, (name, dtype). Values are stored in the
    online store's native form (timestamps as microseconds, bools as 0/1), so min, max and
    sums are computed by SQLite itself at read time; ``distinct`` holds JSON
    ``{value: [event time, arrival seq]}``."""
    types = {f.column: f.dtype for f in view.features if isinstance(f, AggregateSpec)}
    inputs = _input_types(view)
    cols: dict[str, str] = {"__n": Int64, "__max_ts": Int64}
    for f in view.features:
        if not isinstance(f, AggregateSpec) or f.column is None:
            continue
        for part in _STATE_PARTS[f.function]:
            if part in ("min", "max", "last"):
                dtype = inputs.get(f.column, types.get(f.column) or String)
            else:
                dtype = {"n": Int64, "sum": Float64, "distinct": String}.get(part, Int64)
            cols[f"{f.column}__{part}"] = dtype
    return list(cols.items())


def _input_types(view: StreamFeatureViewSpec) -> dict[str, str]:
    """The dtype of each aggregated input column (an aggregate's own dtype says it for
    min/max/last, which keep the column's type)."""
    out: dict[str, str] = {}
    for f in view.features:
        if isinstance(f, AggregateSpec) and f.column and f.function in ("min", "max", "last"):
            out[f.column] = f.dtype or String
    return out


def _fold(state: dict[str, Any], columns: list[str], values: dict[str, Any], ts: int, seq: int):
    """Fold one event (values in stored form) into a tile's state, each column once."""
    state["__n"] = (state["__n"] or 0) + 1
    state["__max_ts"] = ts if state["__max_ts"] is None else max(state["__max_ts"], ts)
    for c in columns:
        v = values.get(c)
        if v is None:
            continue
        if f"{c}__n" in state:
            state[f"{c}__n"] = (state[f"{c}__n"] or 0) + 1
        if f"{c}__sum" in state:
            state[f"{c}__sum"] = (state[f"{c}__sum"] or 0) + v
        low, high = state.get(f"{c}__min"), state.get(f"{c}__max")
        if f"{c}__min" in state and (low is None or v < low):
            state[f"{c}__min"] = v
        if f"{c}__max" in state and (high is None or v > high):
            state[f"{c}__max"] = v
        if f"{c}__last" in state and (
            state[f"{c}__last_ts"] is None
            or (ts, seq) >= (state[f"{c}__last_ts"], state[f"{c}__last_seq"])
        ):
            state[f"{c}__last"], state[f"{c}__last_ts"], state[f"{c}__last_seq"] = v, ts, seq
        if f"{c}__distinct" in state:
            seen = state[f"{c}__distinct"]
            if isinstance(seen, str):
                seen = state[f"{c}__distinct"] = json.loads(seen)
            elif seen is None:
                seen = state[f"{c}__distinct"] = {}
            key = json.dumps(v)
            if key not in seen or [ts, seq] > seen[key]:
                seen[key] = [ts, seq]


def tile_of(ts: int, interval_s: int) -> int:
    step = interval_s * US
    return (ts // step) * step


def retained_us(view: StreamFeatureViewSpec) -> int:
    """How far back (from the current tile's end) a view needs tiles."""
    return max(view.max_window_seconds, view.ttl_seconds or 0) * US


# -- ingest ----------------------------------------------------------------------------------------


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
        fresh = _unseen(good, _logged_ids(ctx, workspace, source, good))
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


def _sqlite_value(dtype: str, value: Any) -> Any:
    if value is None:
        return None
    if dtype == Timestamp:
        return epoch_micros(value)
    if dtype == Bool:
        return int(value)
    return value


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
            fresh = _unseen(records, w.existing(log, "ingest_id", ids) if ids else set())
            if fresh:
                rows = [
                    [r.ingest_id, *(_sqlite_value(t, r.values[n]) for n, t in columns)]
                    for r in fresh
                ]
                w.append_log(log, [n for n, _ in columns], rows, epoch_micros(now))
            return fresh

        fresh = durable.transact(append)  # durable from here on: the online store may lose it
        try:
            apply_log(ctx, workspace, source, views, now)
        except StoreServerUnavailable as exc:
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
        fresh = _unseen(records, w.existing(log, "ingest_id", ids) if ids else set())
        if not fresh:
            return []
        rows = [[r.ingest_id, *(_sqlite_value(t, r.values[n]) for n, t in columns)] for r in fresh]
        first_seq, _last = w.append_log(log, [n for n, _ in columns], rows, epoch_micros(now))
        seqs = {id(r): first_seq + i for i, r in enumerate(fresh)}
        for view in views:
            if view.is_aggregate:
                _merge_tiles(w, workspace, view, fresh, seqs, now)
            else:
                _upsert_latest(w, workspace, view, fresh, seqs)
        return fresh

    return ctx.online.transact(work)


def _unseen(records: list[Record], seen: set[Any]) -> list[Record]:
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


# -- the durable ingest log, when the online store is not durable (Redis) -------------------------


def ingest_log(ctx: Runtime) -> OnlineStore:
    """The store holding push sources' ingest logs: the online store itself when it is the
    embedded SQLite file (one transaction writes the log and the values), else a durable store
    beside it: the SQLite file ``ingest_log.db`` next to the online store's path (``synchronous=
    FULL``). Redis may lose recent writes; this log is what an acknowledged ingest relies on,
    and what :func:`rebuild_stream_views` restores the online store from."""
    if isinstance(ctx.online, SQLiteOnlineStore):
        return ctx.online
    runtime = getattr(ctx, "runtime", ctx)  # the facade (tests, notebooks) holds a Runtime
    return runtime.shared(
        "ingest_log", lambda: SQLiteOnlineStore(ctx.config.online_path.with_name("ingest_log.db"))
    )


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
    whichever node or request does it. Returns how many rows were applied."""
    log = log_table(workspace, source.name)
    marker = applied_table(workspace, source.name)
    durable = ingest_log(ctx)
    names = [c.name for c in source.columns]
    total = 0

    def work(w) -> int:
        w.ensure_table(marker, [("log", String)], [("seq", Int64)])
        row = w.get(marker, ["log"], [(log,)], ["seq"]).get((log,))
        done = int(row[0]) if row and row[0] is not None else 0
        pending = durable.read_log(log, names, done, batch)
        if not pending:
            return 0
        records, seqs = [], {}
        for i, (seq, *values) in enumerate(pending):
            typed = {
                c.name: _typed_value(c.dtype or String, v)
                for c, v in zip(source.columns, values, strict=True)
            }
            record = Record(i, typed, values[names.index(source.timestamp_field)], None)
            records.append(record)
            seqs[id(record)] = seq
        for view in views:
            if view.is_aggregate:
                _merge_tiles(w, workspace, view, records, seqs, now)
            else:
                _upsert_latest(w, workspace, view, records, seqs)
        w.upsert(marker, ["log", "seq"], [[log, pending[-1][0]]])
        return len(pending)

    while True:
        applied = ctx.online.transact(work)
        total += applied
        if applied < batch:
            return total


def _typed_value(dtype: str, value: Any) -> Any:
    """A logged (stored) value as the typed value a record holds."""
    if value is None:
        return None
    if dtype == Timestamp:
        return _from_us(value)
    if dtype == Bool:
        return bool(value)
    return value


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


def _upsert_latest(w, workspace, view, records, seqs) -> None:
    # The layout of a batch view's online table, so the batch reader serves it unchanged.
    table = online_table(workspace, view.name)
    keys = [(k.name, k.dtype or String) for k in view.join_keys]
    features = [(f.name, f.dtype or String) for f in view.features]
    w.ensure_table(table, keys, [(EVENT_TIMESTAMP, Timestamp), *features])
    newest: dict[tuple, Record] = {}
    for r in records:  # the latest by event time; on a tie, the later arrival
        key = tuple(r.values[k] for k, _ in keys)
        old = newest.get(key)
        if old is None or (r.ts, seqs[id(r)]) >= (old.ts, seqs[id(old)]):
            newest[key] = r
    stored = w.get(table, [k for k, _ in keys], list(newest), [EVENT_TIMESTAMP])
    rows = []
    for key, r in newest.items():
        current = stored.get(key)
        if current is not None and current[0] > r.ts:
            continue  # a newer value is stored: this late record only goes to the log
        rows.append([*key, r.ts, *(_sqlite_value(t, r.values[n]) for n, t in features)])
    w.upsert(table, [k for k, _ in keys] + [EVENT_TIMESTAMP] + [n for n, _ in features], rows)


def _merge_tiles(w, workspace, view, records, seqs, now: datetime) -> None:
    table = tiles_table(workspace, view.name)
    keys = [(k.name, k.dtype or String) for k in view.join_keys]
    key_names = [k for k, _ in keys]
    state_cols = _state_columns(view)
    names = [n for n, _ in state_cols]
    w.ensure_table(table, [*keys, ("tile", Int64)], state_cols)
    horizon = tile_of(epoch_micros(now), view.aggregation_interval_seconds) - retained_us(view)
    inputs = sorted({f.column for f in view.features if f.column is not None})
    schema = _input_types(view)
    touched: dict[tuple, list[Record]] = {}
    for r in records:
        tile = tile_of(r.ts, view.aggregation_interval_seconds)
        if tile < horizon:
            continue  # too old to matter online; it stays in the log for offline reads
        touched.setdefault((*(r.values[k] for k in key_names), tile), []).append(r)
    if not touched:
        return
    stored = w.get(table, [*key_names, "tile"], list(touched), names)
    rows = []
    for pk, group in touched.items():
        old = stored.get(pk)
        state = dict(zip(names, old, strict=True)) if old else dict.fromkeys(names)
        for r in group:
            values = {c: _sqlite_value(schema.get(c, ""), r.values.get(c)) for c in inputs}
            _fold(state, inputs, values, r.ts, seqs[id(r)])
        for name in names:
            if name.endswith("__distinct") and isinstance(state[name], dict):
                state[name] = json.dumps(state[name], separators=(",", ":"))
        rows.append([*pk, *(state[n] for n in names)])
    w.upsert(table, [*key_names, "tile", *names], rows)
    w.delete_before(table, "tile", horizon)


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


def last_ingest_time(ctx: Runtime, workspace: str, source: str) -> float | None:
    """When the newest record pushed to ``source`` arrived (Unix seconds); None when nothing was
    ingested. What ``contextkit status`` reports as a stream view's freshness."""
    us = ingest_log(ctx).last_ingested_at(log_table(workspace, source))
    return None if us is None else us / US


# -- online reads ----------------------------------------------------------------------------------


def read_stream_aggregates(
    store: Any,
    workspace: str,
    view: StreamFeatureViewSpec,
    features: Sequence[str],
    key_rows: Sequence[tuple],
    now: datetime | None = None,
) -> list[tuple | None]:
    """``(event_timestamp_micros, *values)`` per key row (None when not served), for an
    aggregate stream view, as of ``now``. Counts, sums, min and max are aggregated by SQLite
    over the window's tiles (one query for the batch); ``last`` and the distinct sets are
    picked from the tiles' rows."""
    now_us = epoch_micros(now or datetime.now(UTC))
    step = view.aggregation_interval_seconds * US
    current = tile_of(now_us, view.aggregation_interval_seconds)
    table = tiles_table(workspace, view.name)
    keys = view.join_key_names
    key_rows = [tuple(k) for k in key_rows]
    selected = [view.feature(n) for n in features]

    def low(seconds: int) -> int:
        return current - seconds * US + step

    aggregates: list[tuple[str, str, int]] = [("max", "__max_ts", low(retained_us(view) // US))]
    slots: list[Any] = []
    picks: list[tuple[int, AggregateSpec]] = []
    for f in selected:
        c, lo = f.column, low(f.window_seconds)
        if c is None:
            slots.append(len(aggregates))
            aggregates.append(("sum", "__n", lo))
        elif f.function == "count":
            slots.append(len(aggregates))
            aggregates.append(("sum", f"{c}__n", lo))
        elif f.function in ("sum", "mean"):
            slots.append(len(aggregates))
            aggregates += [("sum", f"{c}__n", lo), ("sum", f"{c}__sum", lo)]
        elif f.function in ("min", "max"):
            slots.append(len(aggregates))
            aggregates.append((f.function, f"{c}__{f.function}", lo))
        else:  # last, count_distinct, last_distinct: from the rows
            slots.append(None)
            picks.append((len(slots) - 1, f))
    found = store.aggregate_range(table, keys, key_rows, "tile", current, aggregates)
    rows_needed = {f"{f.column}__{_STATE_PARTS[f.function][0]}" for _, f in picks}
    for _, f in picks:
        if f.function == "last":
            rows_needed |= {f"{f.column}__last_ts", f"{f.column}__last_seq"}
    extra_cols = sorted(rows_needed)
    tile_rows: dict[tuple, list[tuple]] = {}
    if picks:
        lowest = min(low(f.window_seconds) for _, f in picks)
        tile_rows = store.read_range(table, keys, key_rows, "tile", lowest, ["tile", *extra_cols])
    ttl = (view.ttl_seconds or view.max_window_seconds) * US
    out: list[tuple | None] = []
    for key in key_rows:
        agg = found.get(key)
        newest = agg[0] if agg else None
        if newest is None or newest <= now_us - ttl:
            out.append(None)
            continue
        values: list[Any] = []
        for i, f in enumerate(selected):
            slot = slots[i]
            if slot is None:
                lo = low(f.window_seconds)
                rows = [r for r in tile_rows.get(key, []) if lo <= r[0] <= current]
                values.append(_from_rows(f, rows, extra_cols))
            elif f.function in ("sum", "mean"):
                n, total = agg[slot], agg[slot + 1]
                if not n:
                    values.append(None)
                elif f.function == "mean":
                    values.append(total / n)
                else:
                    values.append(int(total) if f.dtype == Int64 else total)
            elif f.column is None or f.function == "count":
                values.append(agg[slot] or 0)
            else:
                values.append(agg[slot])
        out.append((newest, *values))
    return out


def _from_rows(feature: AggregateSpec, rows: list[tuple], columns: list[str]) -> Any:
    """last / count_distinct / last_distinct over the window's tile rows (``tile`` first)."""
    c = feature.column
    at = {name: i + 1 for i, name in enumerate(columns)}
    if feature.function == "last":
        best = None
        for r in rows:
            ts, seq = r[at[f"{c}__last_ts"]], r[at[f"{c}__last_seq"]]
            if ts is not None and (best is None or (ts, seq) >= best[0]):
                best = ((ts, seq), r[at[f"{c}__last"]])
        return None if best is None else best[1]
    seen: dict[str, list[int]] = {}
    for r in rows:
        text = r[at[f"{c}__distinct"]]
        for value, rank in (json.loads(text) if text else {}).items():
            if value not in seen or rank > seen[value]:
                seen[value] = rank
    if feature.function == "count_distinct":
        return len(seen)
    newest = sorted(seen.items(), key=lambda kv: kv[1], reverse=True)[: feature.n]
    return [json.loads(value) for value, _ in newest]


# -- offline ---------------------------------------------------------------------------------------


def log_arrow(ctx: Runtime, workspace: str, source: PushSourceSpec):
    """Every event of a push source as one Arrow table, with ``__seq`` (arrival order): the
    batch source's rows (negative seqs, in file order), the Parquet log (what
    :func:`flush_log` moved there) and the rows of the SQLite log not flushed yet. A row flushed
    twice (a crash between the Parquet write and the watermark) is read once."""
    import pyarrow as pa

    from contextkit.framework import transformations

    schema = _log_schema(source)
    parts = []
    if source.batch_source:
        batch = ctx.specs().sources[source.batch_source]
        con = transformations.connect_duckdb()
        try:
            cols = ", ".join(quote(c.name) for c in source.columns)
            scan = transformations.source_scan_sql(batch, ctx.config.root.resolve(), con)
            table = con.sql(f"SELECT {cols} FROM ({scan})").to_arrow_table()
        finally:
            con.close()
        seq = pa.array(range(-table.num_rows, 0), pa.int64())
        parts.append(table.append_column("__seq", seq).cast(schema))
    flushed = ctx.offline.dataset(log_table(workspace, source.name))  # local or S3
    if flushed is not None:
        parts.append(flushed.to_table(columns=schema.names).cast(schema))
    unflushed = _sqlite_log(ctx, workspace, source, _flushed_seq(ctx, workspace, source))
    if unflushed.num_rows:
        parts.append(unflushed)
    if not parts:
        return schema.empty_table()
    table = pa.concat_tables(parts)
    if len(parts) > 1:  # read each seq once
        con = transformations.connect_duckdb()
        try:
            con.register("__log", table)
            table = con.sql(
                "SELECT * FROM __log QUALIFY row_number() OVER (PARTITION BY __seq) = 1 "
                "ORDER BY __seq"
            ).to_arrow_table()
        finally:
            con.close()
    return table


def flush_log(ctx: Runtime, workspace: str, source: PushSourceSpec) -> int:
    """Append the SQLite log's rows not yet in the offline store to it, as one Parquet file of
    the offline table ``<workspace>__<source>__log``; returns how many rows. The rows stay in
    SQLite (their idempotency keys are checked there); readers take the SQLite rows after the
    flushed watermark. ``materialize`` runs it for every push source."""
    after = _flushed_seq(ctx, workspace, source)
    rows = _sqlite_log(ctx, workspace, source, after)
    if not rows.num_rows:
        return 0
    ctx.offline.append(log_table(workspace, source.name), rows)
    last = max(rows.column("__seq").to_pylist())
    ctx.registry.set_setting(_flushed_key(workspace, source), str(last))
    return rows.num_rows


def _flushed_key(workspace: str, source: PushSourceSpec) -> str:
    return f"ingest_flushed_seq:{workspace}:{source.name}"


def _flushed_seq(ctx: Runtime, workspace: str, source: PushSourceSpec) -> int:
    return int(ctx.registry.get_setting(_flushed_key(workspace, source)) or 0)


def _log_schema(source: PushSourceSpec):
    import pyarrow as pa

    return pa.schema(
        [(c.name, arrow_type(c.dtype or String)) for c in source.columns] + [("__seq", pa.int64())]
    )


def _sqlite_log(ctx: Runtime, workspace: str, source: PushSourceSpec, after_seq: int):
    """The SQLite log's rows after ``after_seq``, typed, as an Arrow table with ``__seq``."""
    import pyarrow as pa

    schema = _log_schema(source)
    rows = ingest_log(ctx).read_log(
        log_table(workspace, source.name), [c.name for c in source.columns], after_seq, 2**62
    )
    if not rows:
        return schema.empty_table()
    columns = list(zip(*rows, strict=True))
    arrays = []
    for i, c in enumerate(source.columns, start=1):
        values = columns[i]
        if c.dtype == Timestamp:
            values = [None if v is None else _from_us(v) for v in values]
        elif c.dtype == Bool:
            values = [None if v is None else bool(v) for v in values]
        arrays.append(pa.array(values, schema.field(c.name).type))
    arrays.append(pa.array(columns[0], pa.int64()))
    return pa.table(arrays, schema=schema)


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def stream_offline_sql(view: StreamFeatureViewSpec, events: str, log: str, row: str) -> str:
    """Per event row: the view's features as of the event's time ``__ts`` (see the module
    docstring), with the same tile-aligned windows as online. ``events`` holds ``row``, the join
    keys and ``__ts`` (TIMESTAMPTZ); ``log`` the source's events and ``__seq``. Output: ``row``,
    ``event_timestamp`` and one column per feature (all NULL when the entity is not served)."""
    keys = view.join_key_names
    ts = quote(view.timestamp_field)
    on = " AND ".join(f"l.{quote(k)} = e.{quote(k)}" for k in keys)
    if not view.is_aggregate:
        ttl = ""
        if view.ttl_seconds:
            ttl = f" AND epoch_us(l.{ts}) > epoch_us(e.__ts) - {view.ttl_seconds * US}"
        cols = ", ".join(f"l.{quote(f.name)}" for f in view.features)
        return (
            f"SELECT e.{row}, l.{ts} AS {EVENT_TIMESTAMP}, {cols} FROM {events} e "
            f"LEFT JOIN LATERAL (SELECT * FROM {log} l WHERE {on} AND l.{ts} <= e.__ts{ttl} "
            f"ORDER BY l.{ts} DESC, l.__seq DESC LIMIT 1) l ON TRUE"
        )
    step = view.aggregation_interval_seconds * US
    key_cols = ", ".join(quote(k) for k in keys)
    joined = (
        f"SELECT e.{row}, e.__t, e.__cur, l.*, epoch_us(l.{ts}) AS __lts FROM "
        f"(SELECT {row}, {key_cols}, epoch_us(__ts) AS __t, "
        f"(epoch_us(__ts) // {step}) * {step} AS __cur FROM {events}) e "
        f"LEFT JOIN {log} l ON {on} AND epoch_us(l.{ts}) <= e.__t "
        f"AND epoch_us(l.{ts}) >= e.__cur - {retained_us(view)} + {step}"
    )
    aggregates, lists = [], []
    for i, f in enumerate(view.features):
        lo = f"__lts >= __cur - {f.window_seconds * US} + {step}"
        c = quote(f.column) if f.column else None
        name = quote(f.name)
        if c is None:
            aggregates.append(f"count(__lts) FILTER (WHERE {lo}) AS {name}")
        elif f.function == "count":
            aggregates.append(f"count({c}) FILTER (WHERE {lo}) AS {name}")
        elif f.function == "sum":
            cast = "BIGINT" if f.dtype == Int64 else "DOUBLE"
            aggregates.append(f"CAST(sum({c}) FILTER (WHERE {lo}) AS {cast}) AS {name}")
        elif f.function == "mean":
            aggregates.append(f"avg({c}) FILTER (WHERE {lo}) AS {name}")
        elif f.function in ("min", "max"):
            aggregates.append(f"{f.function}({c}) FILTER (WHERE {lo}) AS {name}")
        elif f.function == "last":
            aggregates.append(
                f"arg_max({c}, {{'t': __lts, 's': __seq}}) FILTER (WHERE {lo} AND {c} IS NOT "
                f"NULL) AS {name}"
            )
        elif f.function == "count_distinct":
            aggregates.append(f"count(DISTINCT {c}) FILTER (WHERE {lo}) AS {name}")
        else:  # last_distinct: the n newest distinct values, newest first
            lists.append(
                f"d{i} AS (SELECT {row}, list(v ORDER BY k DESC)[1:{f.n}] AS {name} FROM "
                f"(SELECT {row}, {c} AS v, max({{'t': __lts, 's': __seq}}) AS k FROM j "
                f"WHERE {lo} AND {c} IS NOT NULL GROUP BY {row}, {c}) GROUP BY {row})"
            )
    ttl = (view.ttl_seconds or view.max_window_seconds) * US
    grouped = (
        f"SELECT {row}, any_value(__t) AS __t, max(__lts) AS __newest"
        + "".join(f", {a}" for a in aggregates)
        + f" FROM j GROUP BY {row}"
    )
    served = f"g.__newest IS NOT NULL AND g.__newest > g.__t - {ttl}"
    picks, joins = [], []
    for i, f in enumerate(view.features):
        source = f"d{i}.{quote(f.name)}" if f.function == "last_distinct" else f"g.{quote(f.name)}"
        if f.function == "last_distinct":
            joins.append(f"LEFT JOIN d{i} ON d{i}.{row} = g.{row}")
        picks.append(f"CASE WHEN {served} THEN {source} END AS {quote(f.name)}")
    ctes = ", ".join([f"j AS ({joined})", f"g AS ({grouped})", *lists])
    return (
        f"WITH {ctes} SELECT g.{row}, CASE WHEN {served} THEN "
        f"CAST(make_timestamp(g.__newest) AS TIMESTAMPTZ) END AS {EVENT_TIMESTAMP}, "
        f"{', '.join(picks)} FROM g {' '.join(joins)}"
    )
