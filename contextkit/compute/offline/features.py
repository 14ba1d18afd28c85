"""OfflineFeatures: the lazy result of ``ctx.get_features_for_events``, built from the request's
per-view joins and run in Arrow batches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.compute.offline.events import check_result_names, register_events
from contextkit.compute.offline.joins import check_keys
from contextkit.compute.offline.query import arrow_result, empty_batch, finish, prepare_query
from contextkit.compute.offline.reserved import (
    BATCH_ROWS,
    EVENT_TS,
    EVENTS,
    HIDDEN,
    INGEST_LOG,
    REALTIME,
    RESERVED,
    AnyView,
    JoinPlan,
    Prepared,
)
from contextkit.compute.offline.sources import resolve
from contextkit.compute.streaming import log_arrow
from contextkit.errors import BadRequestError
from contextkit.framework import transformations
from contextkit.framework.specs import (
    RealtimeFeatureViewSpec,
)
from contextkit.framework.transformations import (
    literal,
)
from contextkit.types import (
    String,
)

if TYPE_CHECKING:
    import duckdb

    from contextkit.config import ComputeConfig
    from contextkit.framework.workspace import Runtime


class OfflineFeatures:
    """A lazy point-in-time feature set: computed by ``to_pandas``/``to_arrow``/``to_parquet``.

    Columns: the events' own columns, then ``<view>__<feature>`` per feature, in input row order.

    ``compute`` (the repo's ``compute:`` config; None: local) picks the engine: when it names
    Ray for any asked view, the join runs on Ray (:mod:`contextkit.compute.ray.offline`: events
    split by entity hash, one DuckDB task per partition, rows back in input order, the same
    columns and dtypes); otherwise in this process.
    """

    def __init__(
        self,
        runtime: Runtime,
        events: Any,
        refs: list[tuple[AnyView, list[str]]],
        timestamp_key: str,
        from_source: bool | None,
        compute: ComputeConfig | None = None,
    ) -> None:
        self._ctx = runtime
        self._compute = compute
        self._events = events
        self._refs = refs
        self._from_source = from_source
        self.timestamp_key = timestamp_key
        self._used: dict[str, str] | None = None
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop a run of this feature set on Ray (from any thread): its outstanding tasks are
        cancelled, its scratch files removed, and the run raises
        :class:`~contextkit.errors.JobCancelledError` (docs/compute.md). Later runs stop at
        once; the local engine does not poll it."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

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
        return prepare_query(ws, self._plan(ws.con, specs, columns), columns)

    def _plan(self, con: duckdb.DuckDBPyConnection, specs, columns: dict[str, str]) -> JoinPlan:
        """Check the registered events against the request and decide where each view is read
        from (from the events' time range); the ingest logs of stream views are read here."""
        self._check(specs, columns)
        lo, hi = con.execute(f"SELECT min({EVENT_TS}), max({EVENT_TS}) FROM {EVENTS}").fetchall()[0]
        return self._plan_for(specs, lo, hi)

    def _check(self, specs, columns: dict[str, str]) -> None:
        """The events' columns against the request (names, join keys, request fields)."""
        check_result_names(list(columns), self.feature_columns)
        for view, _features in _needed_views(specs, self._refs):
            check_keys(list(columns), view)
            if isinstance(view, RealtimeFeatureViewSpec):
                _check_request_columns(columns, view)

    def _plan_for(self, specs, lo: Any, hi: Any) -> JoinPlan:
        """The plan for events (checked) whose UTC times span ``[lo, hi]``: where each view is
        read from; the ingest logs of stream views are read here."""
        needed = _needed_views(specs, self._refs)
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
        logs: dict[str, Any] = {}
        for request in requests:
            if request.use == INGEST_LOG and request.view.source not in logs:
                source = specs.push_sources[request.view.source]
                logs[request.view.source] = log_arrow(self._ctx, self._ctx.workspace, source)
        inputs = {
            name: specs.feature_views[name]
            for r in requests
            if r.use == REALTIME
            for name in r.view.inputs
        }
        return JoinPlan(requests, self._refs, where, inputs, logs)

    def _on_ray(self) -> bool:
        """Whether the join runs on Ray: ``compute`` names Ray for any of the asked views."""
        compute = self._compute
        return compute is not None and any(
            compute.engine_for(view.name) == "ray" for view, _features in self._refs
        )

    def _ray_tables(self) -> Iterator[Any]:
        from contextkit.compute.ray.offline import join_on_ray

        assert self._compute is not None
        return join_on_ray(self, self._compute)

    def sql(self) -> str:
        """The DuckDB query that computes the result (for inspection; realtime views' columns
        are added after it, in Python)."""
        with self._session() as (_con, prepared):
            return prepared.query

    def to_batches(self, batch_size: int = BATCH_ROWS) -> Iterator[Any]:
        """The result as ``pyarrow.RecordBatch``es of up to ``batch_size`` rows, in input order,
        streamed (the query runs once; only one batch is held at a time; on Ray, one chunk of
        rows in order)."""
        if self._on_ray():
            for table in self._ray_tables():
                yield from table.to_batches(max_chunksize=batch_size)
            return
        with self._session() as (con, prepared):
            reader = con.sql(prepared.query).to_arrow_reader(batch_size)
            for batch in reader:
                yield finish(prepared, batch) if prepared.realtime else batch

    def to_arrow(self):
        """The result as a ``pyarrow.Table``."""
        if self._on_ray():
            import pyarrow as pa

            return pa.concat_tables(list(self._ray_tables()))
        with self._session() as (con, prepared):
            return arrow_result(con, prepared)

    def to_pandas(self):
        """The result as a pandas DataFrame (timestamps tz-aware UTC)."""
        if self._on_ray():
            with _duckdb() as con:  # converted by DuckDB, as locally, so the dtypes are the same
                con.register(f"{RESERVED}result", self.to_arrow())
                return con.sql(f"SELECT * FROM {RESERVED}result").df()
        with self._session() as (con, prepared):
            if not prepared.realtime:
                return con.sql(prepared.query).df()
            # Converted by DuckDB, as without realtime views, so the dtypes are the same.
            con.register(f"{RESERVED}result", arrow_result(con, prepared))
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
        """Write the result to a Parquet file, streaming (nothing is held in memory; on Ray,
        the partitions' rows are written chunk by chunk, in input order, as they come back)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self._on_ray():
            self._ray_parquet(target)
            return target
        with self._session() as (con, prepared):
            if not prepared.realtime:
                con.execute(f"COPY ({prepared.query}) TO {literal(str(target))} (FORMAT parquet)")
                return target
            import pyarrow.parquet as pq

            reader = con.sql(prepared.query).to_arrow_reader(BATCH_ROWS)
            schema = finish(prepared, empty_batch(reader.schema)).schema
            with pq.ParquetWriter(target, schema) as writer:
                for batch in reader:
                    writer.write_batch(finish(prepared, batch))
        return target

    def _ray_parquet(self, target: Path) -> None:
        """The Ray result written by the same writer as locally: DuckDB's ``COPY`` (reading the
        chunks as an Arrow stream), or pyarrow's with realtime views."""
        import itertools

        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = self._ray_tables()
        first = next(tables)
        rest = itertools.chain([first], tables)
        if any(isinstance(view, RealtimeFeatureViewSpec) for view, _features in self._refs):
            with pq.ParquetWriter(target, first.schema) as writer:
                for table in rest:
                    writer.write_table(table)
            return
        batches = (b for table in rest for b in table.to_batches())
        reader = pa.RecordBatchReader.from_batches(first.schema, batches)
        # One thread: with several, DuckDB's COPY buffers rows to keep their order, and its
        # memory grew with the result (1M to 4M events: +70%); with one it stays flat.
        with _duckdb(threads=1) as con:
            con.register(f"{RESERVED}result", reader)
            con.execute(
                f"COPY (SELECT * FROM {RESERVED}result) TO {literal(str(target))} (FORMAT parquet)"
            )


@contextmanager
def _duckdb(threads: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    con = transformations.connect_duckdb(threads)
    try:
        yield con
    finally:
        con.close()


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
