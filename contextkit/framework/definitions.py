"""The context-as-code objects users write in a repo.

Each is a thin, typed Python object that remembers where it was defined and produces a pydantic
spec (``to_spec()``). Names and keyword arguments follow Tecton's SDK where they fit::

    from datetime import timedelta
    from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

    user = Entity(name="user", join_keys=["user_id"])
    orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")

    @batch_feature_view(sources=[orders], entities=[user], mode="sql", features=[
        Aggregate(column="amount", function="sum", time_window=timedelta(days=7)),
    ])
    def user_spend(orders):
        return f"SELECT user_id, amount, ts FROM {orders}"

    support = ContextService(name="support", features=[user_spend])
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from contextkit.errors import DefinitionError
from contextkit.framework.durations import format_seconds, to_seconds
from contextkit.framework.expectations import expectations_spec
from contextkit.framework.specs import (
    SEARCH_MODES,
    STREAM_AGGREGATE_FUNCTIONS,
    AggregateSpec,
    AttributeSpec,
    ChunkingSpec,
    ContextServiceSpec,
    EmbeddingViewSpec,
    EntitySpec,
    FeatureRefSpec,
    FeatureViewSpec,
    FieldSpec,
    FileSourceSpec,
    Location,
    PromptViewSpec,
    PushSourceSpec,
    RealtimeFeatureViewSpec,
    RequestFieldSpec,
    SearchSpec,
    StreamFeatureViewSpec,
)
from contextkit.types import DTYPES, Field


def _caller_location(depth: int = 2) -> tuple[str, int]:
    frame = sys._getframe(depth)
    return frame.f_code.co_filename, frame.f_lineno


class _Definition:
    """Common parts of every repo object: name, metadata and where it was defined."""

    kind: str = ""

    def __init__(
        self,
        name: str,
        description: str | None,
        owner: str | None,
        tags: dict[str, str] | None,
        location: tuple[str, int],
    ) -> None:
        self._file, self._line = location
        if not isinstance(name, str) or not name.isidentifier():
            raise DefinitionError(
                f"{self.kind} name {name!r} is not valid",
                location=f"{self._file}:{self._line}",
                hint="use letters, digits and underscores, starting with a letter",
            )
        self.name = name
        self.description = description or ""
        self.owner = owner
        self.tags = dict(tags or {})

    def location(self, root: str | None = None) -> Location:
        """Where this object was defined; the file is made relative to ``root`` when given."""
        file = self._file
        if root is not None:
            with contextlib.suppress(ValueError):  # other drive on Windows
                file = os.path.relpath(file, root)
        return Location(file=file, line=self._line)

    def _error(self, message: str, hint: str | None = None) -> DefinitionError:
        return DefinitionError(message, location=f"{self._file}:{self._line}", hint=hint)

    def _common(self, root: str | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "tags": self.tags,
            "location": self.location(root),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Entity(_Definition):
    """What features describe: ``Entity(name="user", join_keys=["user_id"])``.

    Join keys are column names (their type comes from the views that use them) or ``Field``s.
    """

    kind = "entity"

    def __init__(
        self,
        name: str,
        join_keys: Sequence[str | Field],
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, _caller_location())
        if isinstance(join_keys, str | Field) or not join_keys:
            raise self._error(
                f"entity {name!r}: join_keys must be a non-empty list",
                hint='write join_keys=["user_id"]',
            )
        # (name, dtype) pairs; a plain name's dtype is taken from the views that output it.
        self.join_keys: list[tuple[str, str | None]] = [
            (k.name, k.dtype) if isinstance(k, Field) else (str(k), None) for k in join_keys
        ]

    def to_spec(self, root: str | None = None) -> EntitySpec:
        keys = [FieldSpec(name=name, dtype=dtype) for name, dtype in self.join_keys]
        return EntitySpec(join_keys=keys, **self._common(root))


class FileSource(_Definition):
    """A Parquet, CSV or JSONL file (or glob) of rows, with the column holding each row's time.

    ``path`` is relative to the repo root unless absolute; ``format`` is guessed from the suffix.
    """

    kind = "file_source"

    def __init__(
        self,
        name: str,
        path: str,
        timestamp_field: str | None = None,
        format: Literal["parquet", "csv", "jsonl"] | None = None,
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, _caller_location())
        self.path = str(path)
        self.timestamp_field = timestamp_field
        self.format = format or _guess_format(self.path)
        if self.format not in ("parquet", "csv", "jsonl"):
            raise self._error(
                f"source {name!r}: cannot tell the format of {self.path!r}",
                hint='pass format="parquet", "csv" or "jsonl"',
            )

    def to_spec(self, root: str | None = None) -> FileSourceSpec:
        return FileSourceSpec(
            path=self.path,
            format=self.format,
            timestamp_field=self.timestamp_field,
            **self._common(root),
        )


def _guess_format(path: str) -> str | None:
    lowered = path.lower()
    for suffix, fmt in ((".parquet", "parquet"), (".csv", "csv"), (".jsonl", "jsonl")):
        if lowered.endswith(suffix) or lowered.endswith(suffix + ".gz"):
            return fmt
    if lowered.endswith(".ndjson") or lowered.endswith(".json"):
        return "jsonl"
    return None


class Attribute:
    """A plain feature: a column of the transformation's output, served as its latest value."""

    def __init__(self, name: str, dtype: str | None = None, *, description: str = "") -> None:
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"Attribute {name!r}: unknown dtype {dtype!r}; use one of {DTYPES}")
        self.name = name
        self.dtype = dtype
        self.description = description

    def to_spec(self) -> AttributeSpec:
        return AttributeSpec(name=self.name, dtype=self.dtype, description=self.description)


class Aggregate:
    """A windowed aggregation of one column, e.g. a user's spend over the last 7 days.

    ``function`` is one of count, sum, mean, min, max, last, count_distinct (and, in stream
    feature views, ``last_distinct``: the ``n`` most recent distinct values, newest first);
    ``time_window`` a timedelta or a string (``"30m"``, ``"7d"``, ``"1y"``). The window ending at
    time ``t`` holds events with ``t - time_window < ts <= t``. The default name is
    ``<column>_<function>_<window>`` (``amount_sum_7d``). ``count`` counts non-null values of
    ``column`` (all rows when ``column`` is None).
    """

    def __init__(
        self,
        column: str | Field | None = None,
        function: str = "count",
        time_window: timedelta | str = "1d",
        *,
        name: str | None = None,
        description: str = "",
        input_column: str | Field | None = None,
        n: int | None = None,
    ) -> None:
        column = column if column is not None else input_column  # Tecton's keyword
        if isinstance(column, Field):
            column = column.name
        if function not in STREAM_AGGREGATE_FUNCTIONS:
            raise ValueError(
                f"Aggregate over {column!r}: unknown function {function!r}; "
                f"use one of {', '.join(STREAM_AGGREGATE_FUNCTIONS)}"
            )
        if column is None and function != "count":
            raise ValueError(f"Aggregate {function!r} needs a column")
        if function == "last_distinct":
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1000:
                raise ValueError(f"Aggregate last_distinct over {column!r} needs n=1..1000")
        elif n is not None:
            raise ValueError(f"Aggregate {function!r} takes no n (only last_distinct does)")
        self.column = column
        self.function = function
        self.n = n
        self.window_seconds = to_seconds(time_window, what="time_window")
        label = f"last_{n}_distinct" if function == "last_distinct" else function
        self.name = name or f"{column or 'row'}_{label}_{format_seconds(self.window_seconds)}"
        self.description = description

    def to_spec(self) -> AggregateSpec:
        return AggregateSpec(
            name=self.name,
            column=self.column,
            function=self.function,
            window_seconds=self.window_seconds,
            description=self.description,
            n=self.n,
        )


class PushSource(_Definition):
    """Records pushed over the ingest API (``POST /v1/ingest``), with a declared schema.

    ::

        page_views = PushSource(
            name="page_views",
            schema=[Field("user_id", Int64), Field("product_id", Int64), Field("ts", Timestamp)],
            timestamp_field="ts",
        )

    Every record must carry every field of the schema (``None`` is allowed except for join keys
    and the timestamp). ``batch_source``: a FileSource with the same columns holding the events
    from before the push source existed; offline retrieval reads it with the ingest log.
    """

    kind = "push_source"

    def __init__(
        self,
        name: str,
        schema: Sequence[Field],
        timestamp_field: str,
        *,
        batch_source: FileSource | str | None = None,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, _caller_location())
        if not schema or not all(isinstance(f, Field) for f in schema):
            raise self._error(
                f"push source {name!r}: schema must be a non-empty list of Field(name, dtype)",
                hint='e.g. schema=[Field("user_id", Int64), Field("ts", Timestamp)]',
            )
        names = [f.name for f in schema]
        if len(set(names)) != len(names):
            raise self._error(f"push source {name!r}: a field is listed twice in the schema")
        if timestamp_field not in names:
            raise self._error(
                f"push source {name!r}: timestamp_field {timestamp_field!r} is not in the schema",
                hint=f"fields: {', '.join(names)}",
            )
        if next(f for f in schema if f.name == timestamp_field).dtype != "timestamp":
            raise self._error(
                f"push source {name!r}: timestamp_field {timestamp_field!r} must be a Timestamp"
            )
        self.schema = list(schema)
        self.timestamp_field = timestamp_field
        self.batch_source = batch_source

    def to_spec(self, root: str | None = None) -> PushSourceSpec:
        batch = self.batch_source
        return PushSourceSpec(
            columns=[FieldSpec(name=f.name, dtype=f.dtype) for f in self.schema],
            timestamp_field=self.timestamp_field,
            batch_source=batch if isinstance(batch, str | None) else batch.name,
            **self._common(root),
        )


class StreamFeatureView(_Definition):
    """Features of a push source, updated online as each record arrives.

    ::

        recent_views = StreamFeatureView(
            name="recent_views",
            source=page_views,
            entities=[user],
            features=[
                Aggregate("product_id", "count", "1h"),
                Aggregate("product_id", "last_distinct", "1d", n=5),
            ],
            aggregation_interval="1m",
        )

    Aggregates are kept as partial aggregates per ``aggregation_interval`` tile and combined at
    read time, so a read costs one row per tile of the window, whatever the number of events.
    Every window must be a multiple of the interval; the window of a read at time ``t`` is the
    ``window / interval`` tiles ending with the tile holding ``t`` (see docs/streaming.md).
    Attributes are the latest value of a column (by event time). The same definitions are
    computed offline from the ingest log, with the same values.
    """

    kind = "stream_feature_view"

    def __init__(
        self,
        name: str,
        source: PushSource | str,
        entities: Sequence[Entity | str],
        features: Sequence[Attribute | Aggregate],
        *,
        aggregation_interval: timedelta | str = "1m",
        ttl: timedelta | str | None = None,
        online: bool = True,
        offline: bool = True,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, _caller_location())
        if not entities or isinstance(entities, str | Entity):
            raise self._error(f"stream view {name!r}: entities must be a non-empty list")
        if not features:
            raise self._error(
                f"stream view {name!r} has no features",
                hint="pass features=[Attribute(...)] or [Aggregate(...)]",
            )
        kinds = {type(f) for f in features}
        if not kinds <= {Attribute, Aggregate}:
            raise self._error(f"stream view {name!r}: features must be Attribute or Aggregate")
        if len(kinds) > 1:
            raise self._error(
                f"stream view {name!r} mixes Attribute and Aggregate features",
                hint="split them into two views: one for attributes, one for aggregates",
            )
        try:
            self.interval_seconds = to_seconds(aggregation_interval, what="aggregation_interval")
            self.ttl_seconds = to_seconds(ttl, what="ttl") if ttl is not None else None
        except ValueError as exc:
            raise self._error(f"stream view {name!r}: {exc}") from None
        self.source = source
        self.entities = list(entities)
        self.features = list(features)
        self.online = online
        self.offline = offline

    def __getitem__(self, features: str | Sequence[str]) -> FeatureSelection:
        names = [features] if isinstance(features, str) else list(features)
        return FeatureSelection(self, names)  # type: ignore[arg-type]

    def to_spec(self, root: str | None = None) -> StreamFeatureViewSpec:
        return StreamFeatureViewSpec(
            source=self.source if isinstance(self.source, str) else self.source.name,
            entities=[e if isinstance(e, str) else e.name for e in self.entities],
            features=[f.to_spec() for f in self.features],
            aggregation_interval_seconds=self.interval_seconds,
            ttl_seconds=self.ttl_seconds,
            online=self.online,
            offline=self.offline,
            **self._common(root),
        )


class RequestSource:
    """Values sent with each request (``request_context``), typed: the input of realtime views.

    ``RequestSource(schema=[Field("request_ts", Timestamp), Field("query", String)])``
    """

    def __init__(self, schema: Sequence[Field]) -> None:
        if not schema or not all(isinstance(f, Field) for f in schema):
            raise ValueError("RequestSource needs schema=[Field(name, dtype), ...]")
        self.schema = list(schema)


class RealtimeFeatureView(_Definition):
    """Features computed at request time by a Python function; see
    :func:`realtime_feature_view`."""

    kind = "realtime_feature_view"

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None,
        sources: Sequence[Any],
        features: Sequence[Attribute],
        description: str | None,
        owner: str | None,
        tags: dict[str, str] | None,
    ) -> None:
        code = function.__code__
        super().__init__(
            name or function.__name__,
            description or inspect.getdoc(function),
            owner,
            tags,
            (code.co_filename, code.co_firstlineno),
        )
        self.function = function
        requests = [s for s in sources if isinstance(s, RequestSource)]
        if len(requests) > 1:
            raise self._error(f"realtime view {self.name!r}: give at most one RequestSource")
        self.request = requests[0] if requests else None
        self.sources = list(sources)
        for source in self.sources:
            if not isinstance(source, RequestSource | BatchFeatureView | StreamFeatureView | str):
                raise self._error(
                    f"realtime view {self.name!r}: cannot read {source!r}",
                    hint="sources are one RequestSource and feature views (batch or stream)",
                )
        if not features or not all(isinstance(f, Attribute) and f.dtype for f in features):
            raise self._error(
                f"realtime view {self.name!r}: features must be Attribute(name, dtype)s",
                hint='e.g. features=[Attribute("days_since_last_order", Int64)]',
            )
        self.features = list(features)
        params = list(inspect.signature(function).parameters)
        if len(params) != len(self.sources):
            raise self._error(
                f"realtime view {self.name!r}: the function takes {len(params)} argument(s) but "
                f"there are {len(self.sources)} source(s)",
                hint="one parameter per source, in the order of sources=[...]",
            )

    def views(self) -> list[Any]:
        return [s for s in self.sources if isinstance(s, BatchFeatureView | StreamFeatureView)]

    def to_spec(self, root: str | None = None) -> RealtimeFeatureViewSpec:
        inputs = [
            s if isinstance(s, str) else s.name
            for s in self.sources
            if not isinstance(s, RequestSource)
        ]
        schema = self.request.schema if self.request else []
        return RealtimeFeatureViewSpec(
            request_schema=[FieldSpec(name=f.name, dtype=f.dtype) for f in schema],
            inputs=inputs,
            features=[f.to_spec() for f in self.features],
            python_source=_python_source(self, self.function),
            function_name=self.function.__name__,
            **self._common(root),
        )

    def __getitem__(self, features: str | Sequence[str]) -> FeatureSelection:
        names = [features] if isinstance(features, str) else list(features)
        return FeatureSelection(self, names)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function (handy in unit tests of a repo)."""
        return self.function(*args, **kwargs)


def realtime_feature_view(
    *,
    sources: Sequence[Any],
    features: Sequence[Attribute],
    name: str | None = None,
    description: str | None = None,
    owner: str | None = None,
    tags: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], RealtimeFeatureView]:
    """A feature computed at request time from request-context values and other views' features.

    The function gets one dict per source, in order: the request-context values for the
    ``RequestSource``, and ``{feature: value}`` of each feature view (values are None when the
    entity has none). It returns ``{feature: value}`` for every declared feature::

        @realtime_feature_view(
            sources=[RequestSource([Field("now", Timestamp)]), user_order_stats],
            features=[Attribute("spent_today_share", Float64)],
        )
        def spend_share(request, user_order_stats):
            total = user_order_stats["amount_sum_30d"] or 0.0
            today = user_order_stats["amount_sum_1d"] or 0.0
            return {"spent_today_share": today / total if total else 0.0}

    Like pandas-mode views, it is stored by its source code, so it must be self-contained
    (``datetime``, ``timedelta``, ``math`` and ``re`` are provided). It runs in the server for
    every request, and in ``get_features_for_events`` for every event, the same way.
    """

    def wrap(function: Callable[..., Any]) -> RealtimeFeatureView:
        return RealtimeFeatureView(
            function,
            name=name,
            sources=sources,
            features=features,
            description=description,
            owner=owner,
            tags=tags,
        )

    return wrap


Source = FileSource


class _TableRef(str):
    """What a SQL-mode transformation receives for each source: the quoted table name."""

    __slots__ = ()


class BatchFeatureView(_Definition):
    """A feature view computed in batch from sources; build it with :func:`batch_feature_view`."""

    kind = "batch_feature_view"

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None,
        sources: Sequence[FileSource | BatchFeatureView | str],
        entities: Sequence[Entity | str],
        mode: str,
        features: Sequence[Attribute | Aggregate] | None,
        timestamp_field: str | None,
        ttl: timedelta | str | None,
        online: bool,
        offline: bool,
        batch_schedule: timedelta | str,
        feature_start_time: datetime | None,
        description: str | None,
        owner: str | None,
        tags: dict[str, str] | None,
        expectations: Mapping[str, Any] | None = None,
    ) -> None:
        code = function.__code__
        super().__init__(
            name or function.__name__,
            description or inspect.getdoc(function),
            owner,
            tags,
            (code.co_filename, code.co_firstlineno),
        )
        self.function = function
        if mode not in ("sql", "pandas", "arrow"):
            raise self._error(
                f"view {self.name!r}: unknown mode {mode!r}", hint='use "sql", "pandas" or "arrow"'
            )
        if not sources:
            raise self._error(f"view {self.name!r} has no sources", hint="pass sources=[...]")
        if not entities:
            raise self._error(f"view {self.name!r} has no entities", hint="pass entities=[...]")
        self.mode = mode
        self.sources = list(sources)
        self.entities = list(entities)
        self.features = list(features or [])
        kinds = {type(f) for f in self.features}
        if Attribute in kinds and Aggregate in kinds:
            raise self._error(
                f"view {self.name!r} mixes Attribute and Aggregate features",
                hint="split them into two views (as in Tecton): one for attributes, one for "
                "aggregates",
            )
        for feature in self.features:
            if not isinstance(feature, Attribute | Aggregate):
                raise self._error(
                    f"view {self.name!r}: features must be Attribute or Aggregate, got {feature!r}"
                )
            if isinstance(feature, Aggregate) and feature.function == "last_distinct":
                raise self._error(
                    f"view {self.name!r}: last_distinct is for stream feature views",
                    hint="use it in a StreamFeatureView over a PushSource",
                )
        self.timestamp_field = timestamp_field
        try:
            self.ttl_seconds = to_seconds(ttl, what="ttl") if ttl is not None else None
            self.batch_schedule_seconds = to_seconds(batch_schedule, what="batch_schedule")
        except ValueError as exc:
            raise self._error(f"view {self.name!r}: {exc}") from None
        self.online = online
        self.offline = offline
        if feature_start_time is not None and feature_start_time.tzinfo is None:
            feature_start_time = feature_start_time.replace(tzinfo=UTC)
        self.feature_start_time = feature_start_time
        try:
            self.expectations = expectations_spec(**(expectations or {}))
        except ValueError as exc:
            raise self._error(f"view {self.name!r}: {exc}") from None

    def __getitem__(self, features: str | Sequence[str]) -> FeatureSelection:
        """Select some features for a service: ``view[["amount_sum_7d", "order_count_7d"]]``."""
        names = [features] if isinstance(features, str) else list(features)
        return FeatureSelection(self, names)

    def source_names(self) -> list[str]:
        return [s if isinstance(s, str) else s.name for s in self.sources]

    def _render_sql(self) -> str:
        return _render_sql(self, self.function, self.source_names())

    def _python_source(self) -> str:
        return _python_source(self, self.function)

    def to_spec(self, root: str | None = None) -> FeatureViewSpec:
        sql = self._render_sql() if self.mode == "sql" else None
        python_source = None if self.mode == "sql" else self._python_source()
        return FeatureViewSpec(
            sources=self.source_names(),
            entities=[e if isinstance(e, str) else e.name for e in self.entities],
            mode=self.mode,  # type: ignore[arg-type]
            sql=sql,
            python_source=python_source,
            function_name=self.function.__name__ if python_source else None,
            features=[f.to_spec() for f in self.features],
            timestamp_field=self.timestamp_field or "",
            ttl_seconds=self.ttl_seconds,
            online=self.online,
            offline=self.offline,
            batch_schedule_seconds=self.batch_schedule_seconds,
            feature_start_time=self.feature_start_time,
            expectations=self.expectations,
            **self._common(root),
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying transformation (handy in unit tests of a repo)."""
        return self.function(*args, **kwargs)


def _render_sql(obj: _Definition, function: Callable[..., Any], source_names: list[str]) -> str:
    """Call a SQL-mode transformation with each source's quoted table name; check the result."""
    params = list(inspect.signature(function).parameters)
    if len(params) != len(source_names):
        raise obj._error(
            f"{obj.kind} {obj.name!r}: the function takes {len(params)} argument(s) but there "
            f"are {len(source_names)} source(s)",
            hint="give the function one parameter per source, in the order of sources=[...]",
        )
    sql = function(*[_TableRef(_quote(n)) for n in source_names])
    if not isinstance(sql, str) or not sql.strip():
        raise obj._error(
            f"{obj.kind} {obj.name!r}: a SQL-mode function must return the query as a string"
        )
    return sql


def _python_source(obj: _Definition, function: Callable[..., Any]) -> str:
    """A pandas/arrow-mode function's own source (without decorators), to store in the spec."""
    try:
        lines = inspect.getsource(function)
    except OSError as exc:
        raise obj._error(f"{obj.kind} {obj.name!r}: cannot read the function's source") from exc
    source = textwrap.dedent(lines)
    # Drop decorator lines: the stored function is re-created from its own `def`.
    return source[source.index("def ") :] if not source.startswith("def ") else source


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def batch_feature_view(
    *,
    sources: Sequence[FileSource | BatchFeatureView | str],
    entities: Sequence[Entity | str],
    mode: str = "sql",
    features: Sequence[Attribute | Aggregate] | None = None,
    timestamp_field: str | None = None,
    ttl: timedelta | str | None = None,
    online: bool = True,
    offline: bool = True,
    batch_schedule: timedelta | str = "1d",
    feature_start_time: datetime | None = None,
    expect_not_null: Sequence[str] | Mapping[str, float] | None = None,
    expect_between: Mapping[str, tuple[float | None, float | None]] | None = None,
    max_staleness: timedelta | str | None = None,
    max_drift: float | None = None,
    on_expectation_failure: str = "warn",
    name: str | None = None,
    description: str | None = None,
    owner: str | None = None,
    tags: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], BatchFeatureView]:
    """Declare a batch feature view over a transformation of its sources.

    - ``mode="sql"``: the function receives each source as a table name and returns a DuckDB SQL
      query (``return f"SELECT user_id, amount, ts FROM {orders}"``).
    - ``mode="pandas"`` / ``"arrow"``: the function receives each source as a DataFrame / Arrow
      table and returns one. It is stored by its source code and re-created at materialization,
      so it must be self-contained: import what it uses inside its body (``pd``, ``pa``, ``np``,
      ``datetime`` and ``timedelta`` are provided).

    The output must contain the entities' join keys and ``timestamp_field`` (default: the
    source's). ``features`` lists ``Attribute``s or ``Aggregate``s (not both); without it every
    other output column is an attribute. ``ttl``: values older than this are not served (default:
    none for attributes, the largest window for aggregates).

    Expectations, checked by every materialization job on the rows it computed (see
    docs/monitoring.md): ``expect_not_null`` (features; a list, or ``{feature: largest null
    rate}``), ``expect_between`` (``{feature: (low, high)}``, inclusive, ``None`` for an open
    side), ``max_staleness`` (the newest value's age at the job's end), ``max_drift`` (the largest
    population stability index against the drift reference). A failure marks the job
    ``warning`` (``on_expectation_failure="warn"``) or fails it and leaves the stores as they were
    (``"fail"``); either raises an alert.
    """

    def wrap(function: Callable[..., Any]) -> BatchFeatureView:
        return BatchFeatureView(
            function,
            name=name,
            sources=sources,
            entities=entities,
            mode=mode,
            features=features,
            timestamp_field=timestamp_field,
            ttl=ttl,
            online=online,
            offline=offline,
            batch_schedule=batch_schedule,
            feature_start_time=feature_start_time,
            description=description,
            expectations={
                "not_null": expect_not_null,
                "between": expect_between,
                "max_staleness": max_staleness,
                "max_drift": max_drift,
                "on_failure": on_expectation_failure,
            },
            owner=owner,
            tags=tags,
        )

    return wrap


_FEATURE_VIEWS = (BatchFeatureView, StreamFeatureView, RealtimeFeatureView)


class FeatureSelection:
    """Some features of a view, for a service: made by ``view[["a", "b"]]``."""

    def __init__(self, view: Any, features: list[str]) -> None:
        self.view = view
        self.features = features


class EmbeddingView(_Definition):
    """Text of a source, one document per entity key, chunked and encoded into a vector table.

    ::

        product_docs = EmbeddingView(
            name="product_docs", source=products, entities=[product], text="description",
            model="minilm", chunking={"by": "tokens", "size": 128, "overlap": 16},
            metadata=["name", "category", "price"],
        )

    ``model`` is a key of the repo config's ``models:`` (``minilm``, the packaged
    all-MiniLM-L6-v2, is always there). ``chunking`` is None (one chunk per document) or
    ``{"by": "chars" | "tokens", "size": n, "overlap": m}``. ``metadata`` columns are stored next
    to each vector, for filters and display. When the source holds several rows per key, the
    latest by ``timestamp_field`` (default: the source's) is the document. To build the text
    with a transformation, use the :func:`embedding_view` decorator.

    Expectations (checked on the documents before anything is encoded; see docs/monitoring.md):
    ``expect_not_null`` and ``expect_between`` over the text and metadata columns (a range over
    numeric ones), ``max_staleness`` (the time since the last successful job), and
    ``on_expectation_failure`` (``"warn"`` or ``"fail"``), as for feature views.
    """

    kind = "embedding_view"

    def __init__(
        self,
        name: str,
        source: FileSource | BatchFeatureView | str,
        entities: Sequence[Entity | str],
        text: str,
        *,
        model: str = "minilm",
        chunking: Mapping[str, Any] | None = None,
        metadata: Sequence[str] = (),
        timestamp_field: str | None = None,
        online: bool = True,
        expect_not_null: Sequence[str] | Mapping[str, float] | None = None,
        expect_between: Mapping[str, tuple[float | None, float | None]] | None = None,
        max_staleness: timedelta | str | None = None,
        on_expectation_failure: str = "warn",
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
        _function: Callable[..., Any] | None = None,
        _mode: str = "column",
        _sources: Sequence[FileSource | BatchFeatureView | str] | None = None,
        _location: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, _location or _caller_location())
        self.sources = list(_sources) if _sources is not None else [source]
        if not self.sources or any(s is None for s in self.sources):
            raise self._error(f"embedding view {name!r} has no source", hint="pass source=...")
        if not entities or isinstance(entities, str | Entity):
            raise self._error(
                f"embedding view {name!r}: entities must be a non-empty list",
                hint="pass entities=[document_entity]: its join keys identify each document",
            )
        if not isinstance(text, str) or not text:
            raise self._error(
                f"embedding view {name!r}: text must name the column holding the text",
                hint='e.g. text="description"',
            )
        if isinstance(metadata, str):
            raise self._error(
                f"embedding view {name!r}: metadata must be a list of column names",
                hint=f'write metadata=["{metadata}"]',
            )
        if _mode not in ("column", "sql", "pandas", "arrow"):
            raise self._error(
                f"embedding view {name!r}: unknown mode {_mode!r}",
                hint='use "sql", "pandas" or "arrow"',
            )
        self.entities = list(entities)
        self.text = text
        self.model = model
        self.chunking = dict(chunking) if chunking is not None else None
        self.metadata = list(metadata)
        self.timestamp_field = timestamp_field
        self.online = online
        self.function = _function
        self.mode = _mode
        try:
            self.expectations = expectations_spec(
                not_null=expect_not_null,
                between=expect_between,
                max_staleness=max_staleness,
                on_failure=on_expectation_failure,
            )
        except ValueError as exc:
            raise self._error(f"embedding view {name!r}: {exc}") from None

    def source_names(self) -> list[str]:
        return [s if isinstance(s, str) else s.name for s in self.sources]

    def to_spec(self, root: str | None = None) -> EmbeddingViewSpec:
        sql = python_source = function_name = None
        if self.mode == "sql":
            sql = _render_sql(self, self.function, self.source_names())
        elif self.mode != "column":
            python_source = _python_source(self, self.function)
            function_name = self.function.__name__
        chunking = None
        if self.chunking is not None:
            options = dict(self.chunking)
            by = options.pop("by", options.pop("unit", "chars"))
            if by != "none":
                unknown = sorted(set(options) - {"size", "overlap"})
                if unknown or by not in ("chars", "tokens"):
                    raise self._error(
                        f"embedding view {self.name!r}: chunking {self.chunking!r} is not valid",
                        hint='use {"by": "chars" | "tokens" | "none", "size": n, "overlap": m}',
                    )
                size = options.get("size", 1000 if by == "chars" else 200)
                overlap = options.get("overlap", 0)
                if not (isinstance(size, int) and isinstance(overlap, int) and 0 <= overlap < size):
                    raise self._error(
                        f"embedding view {self.name!r}: chunking needs integers "
                        f"0 <= overlap < size, got size={size!r}, overlap={overlap!r}",
                        hint="overlap is how many units consecutive chunks share",
                    )
                chunking = ChunkingSpec(by=by, size=size, overlap=overlap)
        return EmbeddingViewSpec(
            sources=self.source_names(),
            entities=[e if isinstance(e, str) else e.name for e in self.entities],
            mode=self.mode,  # type: ignore[arg-type]
            sql=sql,
            python_source=python_source,
            function_name=function_name,
            text_column=self.text,
            model=self.model,
            chunking=chunking,
            metadata=self.metadata,
            timestamp_field=self.timestamp_field,
            online=self.online,
            expectations=self.expectations,
            **self._common(root),
        )


def embedding_view(
    *,
    sources: Sequence[FileSource | BatchFeatureView | str],
    entities: Sequence[Entity | str],
    text: str = "text",
    mode: str = "sql",
    model: str = "minilm",
    chunking: Mapping[str, Any] | None = None,
    metadata: Sequence[str] = (),
    timestamp_field: str | None = None,
    online: bool = True,
    expect_not_null: Sequence[str] | Mapping[str, float] | None = None,
    expect_between: Mapping[str, tuple[float | None, float | None]] | None = None,
    max_staleness: timedelta | str | None = None,
    on_expectation_failure: str = "warn",
    name: str | None = None,
    description: str | None = None,
    owner: str | None = None,
    tags: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], EmbeddingView]:
    """An embedding view over a transformation that produces the text (and metadata) columns.

    Same modes as :func:`batch_feature_view`::

        @embedding_view(sources=[articles], entities=[article], text="doc", metadata=["category"])
        def help_docs(articles):
            return f"SELECT article_id, title || '. ' || body AS doc, category FROM {articles}"
    """

    def wrap(function: Callable[..., Any]) -> EmbeddingView:
        code = function.__code__
        return EmbeddingView(
            name or function.__name__,
            None,  # type: ignore[arg-type]
            entities,
            text,
            model=model,
            chunking=chunking,
            metadata=metadata,
            timestamp_field=timestamp_field,
            online=online,
            expect_not_null=expect_not_null,
            expect_between=expect_between,
            max_staleness=max_staleness,
            on_expectation_failure=on_expectation_failure,
            description=description or inspect.getdoc(function),
            owner=owner,
            tags=tags,
            _function=function,
            _mode=mode,
            _sources=sources,
            _location=(code.co_filename, code.co_firstlineno),
        )

    return wrap


class Search:
    """A similarity search over an embedding view, run for each context request.

    ``Search(product_docs, top_k=5, mode="hybrid", filter={"category": "shoes"})``. The query
    text is the request's ``query``, or the request-context field named by ``query_from``.
    ``name`` (default: the view's) is how templates and responses refer to its documents.
    """

    def __init__(
        self,
        view: EmbeddingView | str,
        *,
        top_k: int = 5,
        mode: str = "vector",
        filter: Mapping[str, Any] | None = None,
        query_from: str = "query",
        name: str | None = None,
    ) -> None:
        self.view = view
        view_name = view if isinstance(view, str) else view.name
        self.name = name or view_name
        if mode not in SEARCH_MODES:
            raise ValueError(f"Search over {view_name!r}: mode must be one of {SEARCH_MODES}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 1000:
            raise ValueError(f"Search over {view_name!r}: top_k must be an integer in 1..1000")
        self.top_k = top_k
        self.mode = mode
        self.filter = dict(filter) if filter is not None else None
        self.query_from = query_from

    def to_spec(self) -> SearchSpec:
        return SearchSpec(
            name=self.name,
            view=self.view if isinstance(self.view, str) else self.view.name,
            top_k=self.top_k,
            mode=self.mode,  # type: ignore[arg-type]
            filter=self.filter,
            query_from=self.query_from,
        )


def _search_specs(obj: _Definition, items: Sequence[Search | EmbeddingView | str]) -> list:
    out = []
    for item in items:
        if isinstance(item, Search):
            out.append(item.to_spec())
        elif isinstance(item, EmbeddingView | str):
            out.append(Search(item).to_spec())
        else:
            raise obj._error(
                f"{obj.kind} {obj.name!r}: cannot search {item!r}",
                hint="pass embedding views or Search(view, ...) objects in searches=[...]",
            )
    return out


def _feature_refs(obj: _Definition, items: Sequence[Any]) -> list[FeatureRefSpec]:
    refs = []
    for item in items:
        if isinstance(item, FeatureSelection):
            refs.append(FeatureRefSpec(view=item.view.name, features=item.features))
        elif isinstance(item, _FEATURE_VIEWS):
            refs.append(FeatureRefSpec(view=item.name))
        elif isinstance(item, str):
            refs.append(FeatureRefSpec(view=item))
        else:
            raise obj._error(f"{obj.kind} {obj.name!r}: cannot use {item!r} as features")
    return refs


class RequestField:
    """A value the caller sends with each request (``request_context``), typed.

    ``RequestField("question", String)``; with ``default=...`` the field is optional.
    """

    _REQUIRED = object()

    def __init__(
        self, name: str, dtype: str = "string", *, default: Any = _REQUIRED, description: str = ""
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"RequestField {name!r}: unknown dtype {dtype!r}; use one of {DTYPES}")
        self.name = name
        self.dtype = dtype
        self.required = default is RequestField._REQUIRED
        self.default = None if self.required else default
        self.description = description

    def to_spec(self) -> RequestFieldSpec:
        return RequestFieldSpec(
            name=self.name,
            dtype=self.dtype,
            required=self.required,
            default=self.default,
            description=self.description,
        )


class TemplateFile:
    """A Jinja template kept in a file of the repo (path relative to the repo root).

    Use it for ``PromptView(template=...)`` or in ``messages=[("system", TemplateFile(...))]``.
    Its text is read when the repo is planned, so ``contextkit plan`` shows an edit to the file
    and the server never reads repo files.
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def read(self, owner: _Definition, root: str | None) -> str:
        base = Path(root) if root is not None else Path(owner._file).parent
        file = (base / self.path).resolve()
        if not file.is_relative_to(base.resolve()) or not file.is_file():
            raise owner._error(
                f"prompt {owner.name!r}: template file not found: {self.path}",
                hint="give a path relative to the repo root, inside the repo",
            )
        return file.read_text()

    def __repr__(self) -> str:
        return f"TemplateFile({self.path!r})"


class PromptView(_Definition):
    """A Jinja template plus what it reads: features, searches and request-context fields.

    ::

        support_prompt = PromptView(
            name="support_prompt",
            format="messages",
            messages=[("system", "You help {{ request.user_name }}..."), ("user", "{{ query }}")],
            features=[user_order_stats],
            searches=[Search(product_docs, top_k=5)],
            request_context=[RequestField("user_name", String, default="there")],
            max_tokens=1500,
            model="openai/gpt-4o-mini",
        )

    Templates see ``features.<view>.<feature>``, ``documents.<search name>`` (a list of
    ``{id, text, score, metadata, key}``, best first), ``request.<field>``, ``query`` and
    ``entities.<join key>``. ``template`` is an inline string or a :class:`TemplateFile`
    (``template_file="prompts/x.jinja"`` is short for it); ``format="messages"`` takes
    ``messages`` as ``(role, template)`` pairs, each template a string or a ``TemplateFile``.
    ``max_tokens`` is the prompt's token budget; ``model`` the default LLM (a litellm model
    name) and ``params`` its completion parameters.
    """

    kind = "prompt_view"

    def __init__(
        self,
        name: str,
        template: str | TemplateFile | None = None,
        *,
        template_file: str | None = None,
        format: str = "text",
        messages: Sequence[tuple[str, str | TemplateFile]] | None = None,
        features: Sequence[BatchFeatureView | FeatureSelection | str] = (),
        searches: Sequence[Search | EmbeddingView | str] = (),
        request_context: Sequence[RequestField | Field] = (),
        max_tokens: int | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, _caller_location())
        if format not in ("text", "messages"):
            raise self._error(
                f"prompt {name!r}: unknown format {format!r}", hint='use "text" or "messages"'
            )
        given = [x for x in (template, template_file, messages) if x]
        if len(given) != 1:
            raise self._error(
                f"prompt {name!r}: give exactly one of template=, template_file= or messages=",
                hint='inline: template="...", a file: template_file="prompts/support.jinja", '
                'chat turns: format="messages", messages=[("system", "..."), ("user", "...")]',
            )
        if messages and format != "messages":
            raise self._error(
                f'prompt {name!r}: messages= needs format="messages"',
                hint='pass format="messages"',
            )
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise self._error(f"prompt {name!r}: max_tokens must be a positive integer")
        if template_file is not None:
            template = TemplateFile(template_file)
        self.template = template
        self.format = format
        self.messages = [tuple(m) for m in messages or []]
        self.features = list(features)
        self.searches = list(searches)
        self.request_context = [
            f if isinstance(f, RequestField) else RequestField(f.name, f.dtype)
            for f in request_context
        ]
        self.max_tokens = max_tokens
        self.model = model
        self.params = dict(params or {})

    def views(self) -> list[BatchFeatureView]:
        return _views_of(self.features)

    def embedding_views(self) -> list[EmbeddingView]:
        return _embedding_views_of(self.searches)

    def to_spec(self, root: str | None = None) -> PromptViewSpec:
        messages, files = [], []
        for turn in self.messages:
            if len(turn) != 2 or not isinstance(turn[0], str):
                raise self._error(
                    f"prompt {self.name!r}: each message must be a (role, template) pair",
                    hint='e.g. ("system", "You are a helpful assistant.")',
                )
            role, source = turn
            messages.append((role, self._source(source, root)))
            files.append(source.path if isinstance(source, TemplateFile) else None)
        template = self._source(self.template, root) if self.template is not None else None
        return PromptViewSpec(
            format=self.format,  # type: ignore[arg-type]
            template=template,
            messages=messages,
            template_file=self.template.path if isinstance(self.template, TemplateFile) else None,
            message_files=files if any(files) else [],
            features=_feature_refs(self, self.features),
            searches=_search_specs(self, self.searches),
            request_context=[f.to_spec() for f in self.request_context],
            max_tokens=self.max_tokens,
            model=self.model,
            params=self.params,
            **self._common(root),
        )

    def _source(self, source: str | TemplateFile, root: str | None) -> str:
        if isinstance(source, TemplateFile):
            return source.read(self, root)
        if not isinstance(source, str):
            raise self._error(
                f"prompt {self.name!r}: a template is a string or a TemplateFile, got {source!r}"
            )
        return source


def _views_of(items: Sequence[Any]) -> list[Any]:
    """The feature views (batch, stream or realtime) among a service's or prompt's items."""
    return [
        item.view if isinstance(item, FeatureSelection) else item
        for item in items
        if isinstance(item, (*_FEATURE_VIEWS, FeatureSelection))
    ]


def _embedding_views_of(items: Sequence[Any]) -> list[EmbeddingView]:
    out = []
    for item in items:
        view = item.view if isinstance(item, Search) else item
        if isinstance(view, EmbeddingView):
            out.append(view)
    return out


class ContextService(_Definition):
    """The unit of retrieval: a named bundle of feature views, searches and prompts.

    ``ContextService(name="support", features=[user_spend, products[["name", "price"]]],
    searches=[Search(product_docs, top_k=5)], prompts=[support_prompt])``. One request to it
    returns all of its features, the documents of its searches and, rendered, one of its
    prompts (the first by default). A prompt's own features and searches join the service's.
    """

    kind = "context_service"

    def __init__(
        self,
        name: str,
        features: Sequence[BatchFeatureView | FeatureSelection | str] = (),
        *,
        searches: Sequence[Search | EmbeddingView | str] = (),
        prompts: Sequence[PromptView | str] = (),
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, _caller_location())
        if not features and not searches and not prompts:
            raise self._error(
                f"service {name!r} has nothing to serve",
                hint="pass features=[view], searches=[embedding_view] or prompts=[prompt_view]",
            )
        self.features = list(features)
        self.searches = list(searches)
        self.prompts = list(prompts)

    def views(self) -> list[BatchFeatureView]:
        return _views_of(self.features)

    def embedding_views(self) -> list[EmbeddingView]:
        return _embedding_views_of(self.searches)

    def prompt_views(self) -> list[PromptView]:
        return [p for p in self.prompts if isinstance(p, PromptView)]

    def to_spec(self, root: str | None = None) -> ContextServiceSpec:
        prompts = []
        for item in self.prompts:
            if not isinstance(item, PromptView | str):
                raise self._error(f"service {self.name!r}: {item!r} is not a prompt view")
            prompts.append(item if isinstance(item, str) else item.name)
        return ContextServiceSpec(
            features=_feature_refs(self, self.features),
            searches=_search_specs(self, self.searches),
            prompts=prompts,
            **self._common(root),
        )


def utcnow() -> datetime:
    return datetime.now(UTC)
