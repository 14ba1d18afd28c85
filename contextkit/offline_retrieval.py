"""Point-in-time-correct features for events: training and evaluation sets for notebooks.

``Context.get_features_for_events(events, "support_assistant")`` returns every event row exactly
once, in input order, with each feature's value as of the row's timestamp:

- attribute views: the latest feature row with feature time ``<=`` event time (an ``ASOF LEFT
  JOIN`` in DuckDB), null when that row is ``ttl`` or more older than the event;
- aggregate views: the windows ending at the event time (``t - w < ts <= t``), computed from the
  view's input rows, null when the entity has no input within ``ttl`` (default: largest window);
  exactly what the online path serves for a materialization ending at ``t``.

Timestamps: naive values are read as UTC, aware ones are converted to UTC; a column mixing both is
an error. Data comes from the offline store when it covers the events, else from the sources
(``from_source=True`` forces that); ``.sources_used`` says which was used per view. Nothing runs
until a ``to_*`` method is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit import compute
from contextkit.compute import EVENT_TIMESTAMP, _aggregate_expr, _window_clause, literal, quote
from contextkit.errors import BadRequestError, NotFoundError
from contextkit.specs import AggregateSpec, FeatureViewSpec
from contextkit.types import duckdb_type

if TYPE_CHECKING:
    import duckdb

    from contextkit.client import Context

ROW = "__ck_row"
EVENT_TS = "__ck_ts"
OFFLINE_STORE = "offline_store"
SOURCE = "source"


@dataclass(frozen=True)
class _ViewRequest:
    view: FeatureViewSpec
    features: list[str]
    use: str  # OFFLINE_STORE or SOURCE
    files: list[Path]


class OfflineFeatures:
    """A lazy point-in-time feature set: computed by ``to_pandas``/``to_arrow``/``to_parquet``.

    Columns: the events' own columns, then ``<view>__<feature>`` per feature, in input row order.
    """

    def __init__(
        self,
        ctx: Context,
        events: Any,
        refs: list[tuple[FeatureViewSpec, list[str]]],
        timestamp_key: str,
        from_source: bool | None,
    ) -> None:
        self._ctx = ctx
        self._events = events
        self._refs = refs
        self._from_source = from_source
        self.timestamp_key = timestamp_key
        self._used: dict[str, str] | None = None

    @property
    def feature_columns(self) -> list[str]:
        return [f"{view.name}__{f}" for view, features in self._refs for f in features]

    @property
    def sources_used(self) -> dict[str, str]:
        """Per view, where its rows come from: ``"offline_store"`` or ``"source"``.

        Decided from the events' time range (read on first use) and what was materialized.
        """
        if self._used is None:
            self._run(lambda _con, _query: None)
        assert self._used is not None
        return self._used

    def _run(self, consume):
        specs = self._ctx.specs()
        with compute.workspace_session(
            self._ctx.config.root.resolve(), specs.sources, specs.views
        ) as ws:
            event_columns = _register_events(ws.con, self._events, self.timestamp_key)
            for view, _features in self._refs:
                _check_keys(event_columns, view)
            lo, hi = ws.con.execute(
                f"SELECT min({EVENT_TS}), max({EVENT_TS}) FROM __ck_events"
            ).fetchall()[0]
            requests = [
                _resolve(self._ctx, view, features, self._from_source, lo, hi)
                for view, features in self._refs
            ]
            self._used = {r.view.name: r.use for r in requests}
            return consume(ws.con, self._query(ws, requests, event_columns))

    def _query(
        self, ws: compute.Workspace, requests: list[_ViewRequest], event_columns: list[str]
    ) -> str:
        parts, selects = [], []
        for i, request in enumerate(requests):
            alias = f"__v{i}"
            if request.view.is_aggregate:
                sql = _aggregate_join(ws, request)
            else:
                sql = _attribute_join(ws, request)
            parts.append(f"LEFT JOIN ({sql}) AS {alias} USING ({ROW})")
            selects += [f"{alias}.{quote(f'{request.view.name}__{f}')}" for f in request.features]
        event_cols = ", ".join(f"e.{quote(c)}" for c in event_columns)
        return (
            f"SELECT {', '.join([event_cols, *selects])} FROM __ck_events AS e "
            f"{' '.join(parts)} ORDER BY e.{ROW}"
        )

    def sql(self) -> str:
        """The DuckDB query that computes the result (for inspection)."""
        return self._run(lambda _con, query: query)

    def to_arrow(self):
        """The result as a ``pyarrow.Table``."""
        return self._run(lambda con, query: con.sql(query).to_arrow_table())

    def to_pandas(self):
        """The result as a pandas DataFrame (timestamps tz-aware UTC)."""
        return self._run(lambda con, query: con.sql(query).df())

    def to_polars(self):
        """The result as a polars DataFrame (needs ``polars`` installed)."""
        try:
            import polars as pl
        except ImportError:
            raise BadRequestError(
                "polars is not installed", hint="pip install polars, or use to_pandas()"
            ) from None
        return pl.from_arrow(self.to_arrow())

    def to_parquet(self, path: str | Path) -> Path:
        """Write the result to a Parquet file, streaming (nothing is held in memory)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)

        def write(con, query):
            con.execute(f"COPY ({query}) TO {literal(str(target))} (FORMAT parquet)")
            return target

        return self._run(write)


def _register_events(con: duckdb.DuckDBPyConnection, events: Any, timestamp_key: str) -> list[str]:
    """Register the events as ``__ck_events`` with a row id and a UTC timestamp column."""
    import pyarrow as pa

    if isinstance(events, str | Path):
        path = literal(str(events))
        base = (
            f"SELECT * EXCLUDE (filename, file_row_number), row_number() OVER "
            f"(ORDER BY filename, file_row_number) - 1 AS {ROW} "
            f"FROM read_parquet({path}, filename = true, file_row_number = true)"
        )
    else:
        table = _to_arrow(events, timestamp_key)
        table = table.append_column(ROW, pa.array(range(table.num_rows), pa.int64()))
        con.register("__ck_events_raw", table)
        base = "SELECT * FROM __ck_events_raw"
    described = con.execute(f"DESCRIBE {base}").fetchall()
    columns = [r[0] for r in described]
    types = {r[0]: r[1] for r in described}
    if timestamp_key not in types:
        raise BadRequestError(
            f"the events have no column {timestamp_key!r}",
            hint=f"pass timestamp_key=... (columns: {', '.join(c for c in columns if c != ROW)})",
        )
    ts_type = types[timestamp_key].upper()
    if not (ts_type.startswith("TIMESTAMP") or ts_type == "DATE"):
        raise BadRequestError(
            f"events column {timestamp_key!r} has type {types[timestamp_key]}, not a timestamp",
            hint="convert it first, e.g. pd.to_datetime(events['ts'], utc=True)",
        )
    ts = quote(timestamp_key)
    if ts_type.startswith("TIMESTAMP WITH TIME ZONE"):
        cast = f"CAST({ts} AS TIMESTAMPTZ)"
    else:  # naive: read as UTC (the session time zone)
        cast = f"CAST(CAST({ts} AS TIMESTAMP) AS TIMESTAMPTZ)"
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW __ck_events AS SELECT *, {cast} AS {EVENT_TS} FROM ({base})"
    )
    return [c for c in columns if c != ROW]


def _to_arrow(events: Any, timestamp_key: str):
    import pyarrow as pa

    if isinstance(events, pa.Table):
        return events
    if hasattr(events, "to_arrow_table") and hasattr(events, "columns"):  # a DuckDB relation
        return events.to_arrow_table()
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(events, pd.DataFrame):
        if timestamp_key in events.columns and events[timestamp_key].dtype == object:
            values = [v for v in events[timestamp_key] if v is not None and v == v]
            aware = {getattr(v, "tzinfo", None) is not None for v in values}
            if len(aware) > 1:
                raise BadRequestError(
                    f"events column {timestamp_key!r} mixes timezone-aware and naive timestamps",
                    hint="make them all aware or all naive (naive timestamps are read as UTC)",
                )
        try:
            return pa.Table.from_pandas(events, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise BadRequestError(
                f"cannot read the events DataFrame: {exc}",
                hint="give each column one type; timestamps as datetime64 (naive = UTC) or "
                "tz-aware datetimes",
            ) from None
    raise BadRequestError(
        f"events must be a pandas DataFrame, a pyarrow Table, a Parquet path or a DuckDB "
        f"relation, got {type(events).__name__}",
    )


def _check_keys(event_columns: list[str], view: FeatureViewSpec) -> None:
    for key in view.join_key_names:
        if key not in event_columns:
            raise BadRequestError(
                f"the events have no column {key!r}, a join key of view {view.name!r}",
                hint=f"add {key} to the events (columns: {', '.join(event_columns)})",
            )


def _key_match(view: FeatureViewSpec, left: str, right: str) -> list[str]:
    return [
        f"CAST({left}.{quote(k.name)} AS {duckdb_type(k.dtype or 'string')}) = "
        f"{right}.{quote(k.name)}"
        for k in view.join_keys
    ]


def _rows_sql(files: list[Path]) -> str:
    listed = ", ".join(literal(str(f)) for f in files)
    return f"SELECT * FROM read_parquet([{listed}])"


def _attribute_join(ws: compute.Workspace, request: _ViewRequest) -> str:
    view = request.view
    if request.use == OFFLINE_STORE:
        rows = _rows_sql(request.files)
    else:
        rows = compute.offline_features_sql(ws, view)
    on = " AND ".join([*_key_match(view, "e", "f"), f"e.{EVENT_TS} >= f.{EVENT_TIMESTAMP}"])
    fresh = "TRUE"
    if view.ttl_seconds:
        fresh = (
            f"f.{EVENT_TIMESTAMP} > e.{EVENT_TS} - to_microseconds({view.ttl_seconds * 1_000_000})"
        )
    cols = ", ".join(
        f"CASE WHEN {fresh} THEN f.{quote(n)} END AS {quote(f'{view.name}__{n}')}"
        for n in request.features
    )
    return f"SELECT e.{ROW}, {cols} FROM __ck_events AS e ASOF LEFT JOIN ({rows}) AS f ON {on}"


def _aggregate_join(ws: compute.Workspace, request: _ViewRequest) -> str:
    view = request.view
    if request.use == OFFLINE_STORE:
        inputs = _rows_sql(request.files)
    else:
        inputs = compute.aggregate_inputs_sql(ws, view)
    keys = [quote(k.name) for k in view.join_keys]
    event_keys = ", ".join(
        f"CAST(e.{quote(k.name)} AS {duckdb_type(k.dtype or 'string')}) AS {quote(k.name)}"
        for k in view.join_keys
    )
    combined = (
        f"SELECT *, TRUE AS __input, NULL::BIGINT AS {ROW} FROM ("
        f"SELECT * RENAME ({EVENT_TIMESTAMP} AS __t) FROM ({inputs})) "
        f"UNION ALL BY NAME "
        f"SELECT {event_keys}, e.{EVENT_TS} AS __t, FALSE AS __input, e.{ROW} "
        f"FROM __ck_events AS e"
    )
    dtypes = {f.name: f.dtype for f in view.output_schema}
    ttl = view.ttl_seconds or view.max_window_seconds
    partition = ", ".join(keys)
    windows = sorted({f.window_seconds for f in view.features if isinstance(f, AggregateSpec)})
    window_defs = [
        f"w{s} AS (PARTITION BY {partition} ORDER BY __t {_window_clause(s)})"
        for s in sorted({*windows, ttl})
    ]
    present = f"COUNT(*) FILTER (WHERE __input) OVER w{ttl} > 0"
    exprs = []
    for name in request.features:
        feature = view.feature(name)
        assert isinstance(feature, AggregateSpec)
        column_dtype = dtypes.get(feature.column) if feature.column else None
        expr = _aggregate_expr(
            feature, "__t", column_dtype, where="__input", over=f"w{feature.window_seconds}"
        )
        exprs.append(f"CASE WHEN {present} THEN {expr} END AS {quote(f'{view.name}__{name}')}")
    return (
        f"SELECT {ROW}, {', '.join(exprs)} FROM ({combined}) "
        f"WINDOW {', '.join(window_defs)} QUALIFY NOT __input"
    )


def resolve_refs(
    ctx: Context, service_or_views: str | Sequence[str]
) -> list[tuple[FeatureViewSpec, list[str]]]:
    """The views and features of a service, or of the named views (all their features)."""
    specs = ctx.specs()
    if isinstance(service_or_views, str) and service_or_views in specs.services:
        refs = [(r.view, r.features) for r in specs.services[service_or_views].features]
    else:
        names = [service_or_views] if isinstance(service_or_views, str) else service_or_views
        refs = [(n, None) for n in names]
    out = []
    for name, selected in refs:
        view = specs.views.get(name)
        if view is None:
            raise NotFoundError(
                f"no service or feature view named {name!r} in workspace {ctx.workspace!r}",
                hint="services: "
                + (", ".join(sorted(specs.services)) or "none")
                + "; views: "
                + (", ".join(sorted(specs.views)) or "none"),
            )
        out.append((view, list(selected or [f.name for f in view.features])))
    return out


def _resolve(
    ctx: Context,
    view: FeatureViewSpec,
    features: list[str],
    from_source: bool | None,
    earliest: datetime | None,
    latest: datetime | None,
) -> _ViewRequest:
    from contextkit.materialize import inputs_table, offline_table

    table = inputs_table if view.is_aggregate else offline_table
    files = ctx.offline.files(table(ctx.workspace, view.name))
    if from_source:
        return _ViewRequest(view, features, SOURCE, files)
    if from_source is False:
        if not files:
            raise NotFoundError(
                f"view {view.name!r} has no offline data",
                hint="materialize it first, or pass from_source=True",
            )
        return _ViewRequest(view, features, OFFLINE_STORE, files)
    covered = bool(files) and earliest is not None and _covered(ctx, view, earliest, latest)
    return _ViewRequest(view, features, OFFLINE_STORE if covered else SOURCE, files)


def _covered(ctx: Context, view: FeatureViewSpec, earliest: datetime, latest: datetime) -> bool:
    """Whether the offline store holds every row the events need for this view."""
    from contextkit.materialize import last_watermark, spec_hash

    watermark = last_watermark(ctx.registry, ctx.workspace, view)
    if watermark is None or latest >= watermark:
        return False
    current = spec_hash(view)
    for job in ctx.registry.list_jobs(ctx.workspace, view.name, limit=500):
        if job.status == "succeeded" and job.spec_hash == current and job.details.get("full"):
            if job.range_start is None:
                return True
            lookback = max(view.max_window_seconds, view.ttl_seconds or 0)
            return datetime.fromisoformat(job.range_start) <= earliest - timedelta(seconds=lookback)
    return False
