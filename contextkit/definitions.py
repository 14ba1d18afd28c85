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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from contextkit.durations import format_seconds, to_seconds
from contextkit.errors import DefinitionError
from contextkit.specs import (
    AGGREGATE_FUNCTIONS,
    AggregateSpec,
    AttributeSpec,
    ContextServiceSpec,
    EntitySpec,
    FeatureRefSpec,
    FeatureViewSpec,
    FieldSpec,
    FileSourceSpec,
    Location,
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

    ``function`` is one of count, sum, mean, min, max, last, count_distinct; ``time_window`` a
    timedelta or a string (``"30m"``, ``"7d"``, ``"1y"``). The window ending at time ``t`` holds
    events with ``t - time_window < ts <= t``. The default name is ``<column>_<function>_<window>``
    (``amount_sum_7d``). ``count`` counts non-null values of ``column`` (all rows when ``column``
    is None).
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
    ) -> None:
        column = column if column is not None else input_column  # Tecton's keyword
        if isinstance(column, Field):
            column = column.name
        if function not in AGGREGATE_FUNCTIONS:
            raise ValueError(
                f"Aggregate over {column!r}: unknown function {function!r}; "
                f"use one of {', '.join(AGGREGATE_FUNCTIONS)}"
            )
        if column is None and function != "count":
            raise ValueError(f"Aggregate {function!r} needs a column")
        self.column = column
        self.function = function
        self.window_seconds = to_seconds(time_window, what="time_window")
        self.name = name or f"{column or 'row'}_{function}_{format_seconds(self.window_seconds)}"
        self.description = description

    def to_spec(self) -> AggregateSpec:
        return AggregateSpec(
            name=self.name,
            column=self.column,
            function=self.function,
            window_seconds=self.window_seconds,
            description=self.description,
        )


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

    def __getitem__(self, features: str | Sequence[str]) -> FeatureSelection:
        """Select some features for a service: ``view[["amount_sum_7d", "order_count_7d"]]``."""
        names = [features] if isinstance(features, str) else list(features)
        return FeatureSelection(self, names)

    def source_names(self) -> list[str]:
        return [s if isinstance(s, str) else s.name for s in self.sources]

    def _render_sql(self) -> str:
        params = list(inspect.signature(self.function).parameters)
        names = self.source_names()
        if len(params) != len(names):
            raise self._error(
                f"view {self.name!r}: the function takes {len(params)} argument(s) but the view "
                f"has {len(names)} source(s)",
                hint="give the function one parameter per source, in the order of sources=[...]",
            )
        sql = self.function(*[_TableRef(_quote(n)) for n in names])
        if not isinstance(sql, str) or not sql.strip():
            raise self._error(
                f"view {self.name!r}: a SQL-mode function must return the query as a string"
            )
        return sql

    def _python_source(self) -> str:
        try:
            lines = inspect.getsource(self.function)
        except OSError as exc:
            raise self._error(f"view {self.name!r}: cannot read the function's source") from exc
        source = textwrap.dedent(lines)
        # Drop decorator lines: the stored function is re-created from its own `def`.
        kept = source[source.index("def ") :] if not source.startswith("def ") else source
        return kept

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
            **self._common(root),
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying transformation (handy in unit tests of a repo)."""
        return self.function(*args, **kwargs)


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
            owner=owner,
            tags=tags,
        )

    return wrap


class FeatureSelection:
    """Some features of a view, for a service: made by ``view[["a", "b"]]``."""

    def __init__(self, view: BatchFeatureView, features: list[str]) -> None:
        self.view = view
        self.features = features


class ContextService(_Definition):
    """The unit of retrieval: a named bundle of feature views (later also searches and prompts).

    ``ContextService(name="support", features=[user_spend, products[["name", "price"]]])``
    """

    kind = "context_service"

    def __init__(
        self,
        name: str,
        features: Sequence[BatchFeatureView | FeatureSelection | str],
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, _caller_location())
        if not features:
            raise self._error(f"service {name!r} has no features", hint="pass features=[view]")
        self.features = list(features)

    def views(self) -> list[BatchFeatureView]:
        out = []
        for item in self.features:
            if isinstance(item, FeatureSelection):
                out.append(item.view)
            elif isinstance(item, BatchFeatureView):
                out.append(item)
        return out

    def to_spec(self, root: str | None = None) -> ContextServiceSpec:
        refs = []
        for item in self.features:
            if isinstance(item, FeatureSelection):
                refs.append(FeatureRefSpec(view=item.view.name, features=item.features))
            elif isinstance(item, BatchFeatureView):
                refs.append(FeatureRefSpec(view=item.name))
            elif isinstance(item, str):
                refs.append(FeatureRefSpec(view=item))
            else:
                raise self._error(f"service {self.name!r}: cannot use {item!r} as features")
        return ContextServiceSpec(features=refs, **self._common(root))


def utcnow() -> datetime:
    return datetime.now(UTC)
