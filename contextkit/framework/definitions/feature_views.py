"""Feature views: batch (SQL or pandas over sources), stream (over a push source) and realtime
(Python at request time)."""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from contextkit.framework.definitions._base import Definition, caller_location, checked_arguments
from contextkit.framework.definitions.entities import Entity
from contextkit.framework.definitions.features import Aggregate, Attribute
from contextkit.framework.definitions.sources import FileSource, PushSource, RequestSource
from contextkit.framework.durations import to_seconds
from contextkit.framework.expectations import expectations_spec
from contextkit.framework.specs import (
    FeatureViewSpec,
    FieldSpec,
    RealtimeFeatureViewSpec,
    StreamFeatureViewSpec,
)


class StreamFeatureView(Definition):
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

    @checked_arguments
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
        super().__init__(name, description, owner, tags, caller_location())
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


class RealtimeFeatureView(Definition):
    """Features computed at request time by a Python function; see
    :func:`realtime_feature_view`."""

    kind = "realtime_feature_view"

    @checked_arguments
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
        transform_server_group: Any = None,
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
        group = transform_server_group
        if group is not None and not (
            isinstance(group, str) or getattr(group, "kind", None) == "transform_server_group"
        ):
            raise self._error(
                f"realtime view {self.name!r}: transform_server_group must be a "
                f"TransformServerGroup or its name, got {group!r}",
                hint='e.g. transform_server_group="scoring"',
            )
        self.transform_server_group = group

    def views(self) -> list[Any]:
        return [s for s in self.sources if isinstance(s, BatchFeatureView | StreamFeatureView)]

    def group_object(self) -> Definition | None:
        """The TransformServerGroup object it names (None for a name, or no group)."""
        group = self.transform_server_group
        return group if isinstance(group, Definition) else None

    def to_spec(self, root: str | None = None) -> RealtimeFeatureViewSpec:
        inputs = [
            s if isinstance(s, str) else s.name
            for s in self.sources
            if not isinstance(s, RequestSource)
        ]
        schema = self.request.schema if self.request else []
        group = self.transform_server_group
        return RealtimeFeatureViewSpec(
            request_schema=[FieldSpec(name=f.name, dtype=f.dtype) for f in schema],
            inputs=inputs,
            features=[f.to_spec() for f in self.features],
            python_source=python_source(self, self.function),
            function_name=self.function.__name__,
            transform_server_group=getattr(group, "name", group),
            **self._common(root),
        )

    def __getitem__(self, features: str | Sequence[str]) -> FeatureSelection:
        names = [features] if isinstance(features, str) else list(features)
        return FeatureSelection(self, names)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function (handy in unit tests of a repo)."""
        return self.function(*args, **kwargs)


@checked_arguments
def realtime_feature_view(
    *,
    sources: Sequence[Any],
    features: Sequence[Attribute],
    name: str | None = None,
    description: str | None = None,
    owner: str | None = None,
    tags: dict[str, str] | None = None,
    transform_server_group: Any = None,
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
    ``transform_server_group=`` (a :class:`TransformServerGroup` or its name) runs it, when
    serving, in that group's worker processes instead of the serving process.
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
            transform_server_group=transform_server_group,
        )

    return wrap


Source = FileSource


class _TableRef(str):
    """What a SQL-mode transformation receives for each source: the quoted table name."""

    __slots__ = ()


class BatchFeatureView(Definition):
    """A feature view computed in batch from sources; build it with :func:`batch_feature_view`."""

    kind = "batch_feature_view"

    @checked_arguments
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

    def render_sql(self) -> str:
        return render_sql(self, self.function, self.source_names())

    def python_source(self) -> str:
        return python_source(self, self.function)

    def to_spec(self, root: str | None = None) -> FeatureViewSpec:
        sql = self.render_sql() if self.mode == "sql" else None
        python_source = None if self.mode == "sql" else self.python_source()
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


def render_sql(obj: Definition, function: Callable[..., Any], source_names: list[str]) -> str:
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


def python_source(obj: Definition, function: Callable[..., Any]) -> str:
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


@checked_arguments
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


FEATURE_VIEW_TYPES = (BatchFeatureView, StreamFeatureView, RealtimeFeatureView)


class FeatureSelection:
    """Some features of a view, for a service: made by ``view[["a", "b"]]``."""

    def __init__(self, view: Any, features: list[str]) -> None:
        self.view = view
        self.features = features
