"""OfflineFeatures: the lazy result of ``ctx.get_features_for_events``, built from the request's
per-view joins and run in Arrow batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.compute.offline.events import check_result_names, register_events
from contextkit.compute.offline.joins import aggregate_join, attribute_join, check_keys, stream_join
from contextkit.compute.offline.reserved import (
    BATCH_ROWS,
    EVENT_TS,
    EVENTS,
    HIDDEN,
    INGEST_LOG,
    LOG,
    REALTIME,
    RESERVED,
    ROW,
    AnyView,
    Prepared,
    ViewRequest,
)
from contextkit.compute.offline.sources import resolve
from contextkit.compute.streaming import log_arrow
from contextkit.errors import BadRequestError
from contextkit.framework import transformations
from contextkit.framework.realtime import run_realtime
from contextkit.framework.specs import (
    RealtimeFeatureViewSpec,
)
from contextkit.framework.transformations import (
    literal,
    quote,
)
from contextkit.types import (
    String,
    arrow_type,
    parse_value,
)

if TYPE_CHECKING:
    import duckdb

    from contextkit.framework.workspace import Runtime


class OfflineFeatures:
    """A lazy point-in-time feature set: computed by ``to_pandas``/``to_arrow``/``to_parquet``.

    Columns: the events' own columns, then ``<view>__<feature>`` per feature, in input row order.
    """

    def __init__(
        self,
        runtime: Runtime,
        events: Any,
        refs: list[tuple[AnyView, list[str]]],
        timestamp_key: str,
        from_source: bool | None,
    ) -> None:
        self._ctx = runtime
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
        """Per view, where its rows come from: ``"offline_store"`` or ``"source"`` (batch views),
        ``"ingest_log"`` (stream views) or ``"realtime"`` (computed per row).

        Decided from the events' time range (read on first use) and what was materialized.
        """
        if self._used is None:
            with self._session():
                pass
        assert self._used is not None
        return self._used

    @contextmanager
    def _session(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, Prepared]]:
        specs = self._ctx.specs()
        with transformations.workspace_session(
            self._ctx.config.root.resolve(), specs.sources, specs.views
        ) as ws:
            yield ws.con, self._prepare(ws, specs)

    def _prepare(self, ws: transformations.Workspace, specs) -> Prepared:
        columns = register_events(ws.con, self._events, self.timestamp_key)
        check_result_names(list(columns), self.feature_columns)
        needed = _needed_views(specs, self._refs)
        for view, _features in needed:
            check_keys(list(columns), view)
            if isinstance(view, RealtimeFeatureViewSpec):
                _check_request_columns(columns, view)
        lo, hi = ws.con.execute(
            f"SELECT min({EVENT_TS}), max({EVENT_TS}) FROM {EVENTS}"
        ).fetchall()[0]
        requests = [
            resolve(self._ctx, view, features, self._from_source, lo, hi)
            for view, features in needed
        ]
        self._used = {r.view.name: r.use for r in requests}
        outputs = {(view.name, f) for view, features in self._refs for f in features}
        where = {
            (r.view.name, f): (
                f"{r.view.name}__{f}"
                if (r.view.name, f) in outputs
                else f"{HIDDEN}{r.view.name}__{f}"
            )
            for r in requests
            if r.use != REALTIME
            for f in r.features
        }
        query = self._query(ws, specs, requests, columns, where)
        realtime = [r for r in requests if r.use == REALTIME]
        inputs = {name: specs.feature_views[name] for r in realtime for name in r.view.inputs}
        return Prepared(query, list(columns), self._refs, realtime, where, inputs)

    def _query(
        self,
        ws: transformations.Workspace,
        specs,
        requests: list[ViewRequest],
        columns: dict[str, str],
        where: dict[tuple[str, str], str],
    ) -> str:
        parts, selects = [], []
        logs: dict[str, str] = {}
        for i, request in enumerate(requests):
            if request.use == REALTIME:
                continue  # computed in Python from the query's result
            alias = f"{RESERVED}v{i}"
            if request.use == INGEST_LOG:
                source = request.view.source
                if source not in logs:
                    logs[source] = quote(f"{LOG}_{len(logs)}")
                    table = log_arrow(self._ctx, self._ctx.workspace, specs.push_sources[source])
                    ws.con.register(f"{LOG}_{len(logs) - 1}", table)
                join = stream_join(ws, request, columns, logs[source], alias)
            elif request.view.is_aggregate:
                join = aggregate_join(ws, request, columns)
            else:
                join = attribute_join(ws, request, columns)
            parts.append(f"LEFT JOIN ({join}) AS {alias} USING ({ROW})")
            name = request.view.name
            selects += [
                f"{alias}.{quote(f'{name}__{f}')} AS {quote(where[name, f])}"
                for f in request.features
            ]
        event_cols = ", ".join(f"e.{quote(c)}" for c in columns)
        return (
            f"SELECT {', '.join([event_cols, *selects])} FROM {EVENTS} AS e "
            f"{' '.join(parts)} ORDER BY e.{ROW}"
        )

    def sql(self) -> str:
        """The DuckDB query that computes the result (for inspection; realtime views' columns
        are added after it, in Python)."""
        with self._session() as (_con, prepared):
            return prepared.query

    def to_batches(self, batch_size: int = BATCH_ROWS) -> Iterator[Any]:
        """The result as ``pyarrow.RecordBatch``es of up to ``batch_size`` rows, in input order,
        streamed (the query runs once; only one batch is held at a time)."""
        with self._session() as (con, prepared):
            reader = con.sql(prepared.query).to_arrow_reader(batch_size)
            for batch in reader:
                yield _finish(prepared, batch) if prepared.realtime else batch

    def to_arrow(self):
        """The result as a ``pyarrow.Table``."""
        with self._session() as (con, prepared):
            return _arrow(con, prepared)

    def to_pandas(self):
        """The result as a pandas DataFrame (timestamps tz-aware UTC)."""
        with self._session() as (con, prepared):
            if not prepared.realtime:
                return con.sql(prepared.query).df()
            # Converted by DuckDB, as without realtime views, so the dtypes are the same.
            con.register(f"{RESERVED}result", _arrow(con, prepared))
            return con.sql(f"SELECT * FROM {RESERVED}result").df()

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
        with self._session() as (con, prepared):
            if not prepared.realtime:
                con.execute(f"COPY ({prepared.query}) TO {literal(str(target))} (FORMAT parquet)")
                return target
            import pyarrow.parquet as pq

            reader = con.sql(prepared.query).to_arrow_reader(BATCH_ROWS)
            schema = _finish(prepared, _empty_batch(reader.schema)).schema
            with pq.ParquetWriter(target, schema) as writer:
                for batch in reader:
                    writer.write_batch(_finish(prepared, batch))
        return target


def _arrow(con: duckdb.DuckDBPyConnection, prepared: Prepared):
    import pyarrow as pa

    if not prepared.realtime:
        return con.sql(prepared.query).to_arrow_table()
    reader = con.sql(prepared.query).to_arrow_reader(BATCH_ROWS)
    schema = _finish(prepared, _empty_batch(reader.schema)).schema
    return pa.Table.from_batches([_finish(prepared, b) for b in reader], schema=schema)


def _empty_batch(schema):
    import pyarrow as pa

    return pa.RecordBatch.from_pylist([], schema=schema)


def _needed_views(specs, refs: list[tuple[AnyView, list[str]]]) -> list[tuple[AnyView, list[str]]]:
    """The views to compute: the asked ones, then any view a realtime view reads (every feature
    of it, as the function gets them all), each once."""
    needed: dict[str, tuple[AnyView, list[str]]] = {}
    for view, features in refs:
        needed[view.name] = (view, list(features))
    for view, _features in refs:
        if not isinstance(view, RealtimeFeatureViewSpec):
            continue
        for name in view.inputs:
            upstream = specs.feature_views[name]
            _view, have = needed.setdefault(name, (upstream, []))
            have.extend(f.name for f in upstream.features if f.name not in have)
    return list(needed.values())


def _check_request_columns(columns: dict[str, str], view: RealtimeFeatureViewSpec) -> None:
    for field in view.request_schema:
        if field.name not in columns:
            raise BadRequestError(
                f"the events have no column {field.name!r}, a request-context field of realtime "
                f"view {view.name!r}",
                hint=f"add a {field.dtype or String} column {field.name!r} to the events: each "
                "row's value is the request context the view's function gets for that event",
            )


def _finish(prepared: Prepared, batch):
    """The result's columns for one batch of the query: realtime views' features computed per
    row from the batch (the events' request-context columns and the input views' features),
    hidden input columns left out."""
    import pyarrow as pa

    computed: dict[tuple[str, str], Any] = {}
    n = batch.num_rows
    for request in prepared.realtime:
        view = request.view
        assert isinstance(view, RealtimeFeatureViewSpec)
        request_cols = [
            (f.name, f.dtype or String, batch.column(f.name).to_pylist())
            for f in view.request_schema
        ]
        input_cols = []
        for name in view.inputs:
            upstream = prepared.inputs[name]
            input_cols.append(
                [
                    (f.name, batch.column(prepared.where[name, f.name]).to_pylist())
                    for f in upstream.features
                ]
            )
        values: dict[str, list[Any]] = {f: [] for f in request.features}
        for i in range(n):
            context = {
                name: _request_value(view, name, dtype, col[i]) for name, dtype, col in request_cols
            }
            features = [{name: col[i] for name, col in cols} for cols in input_cols]
            out = run_realtime(view, context, features)
            for f in request.features:
                values[f].append(out[f])
        for f in request.features:
            dtype = view.feature(f).dtype or String
            computed[view.name, f] = pa.array(values[f], arrow_type(dtype))
    arrays, names = [], []
    for c in prepared.columns:
        arrays.append(batch.column(c))
        names.append(c)
    for view, features in prepared.outputs:
        for f in features:
            name = f"{view.name}__{f}"
            arrays.append(
                computed[view.name, f] if (view.name, f) in computed else batch.column(name)
            )
            names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _request_value(view: RealtimeFeatureViewSpec, name: str, dtype: str, value: Any) -> Any:
    try:
        return parse_value(dtype, value)
    except ValueError as exc:
        raise BadRequestError(
            f"events column {name!r} holds {value!r}, but realtime view {view.name!r} reads "
            f"{name!r} as {dtype} ({exc})",
            hint=f"convert the events' {name} values to {dtype} first",
        ) from None
