"""Features of a view: plain attributes and windowed aggregates."""

from __future__ import annotations

from datetime import timedelta

from contextkit.framework.definitions._base import checked_arguments
from contextkit.framework.durations import format_seconds, to_seconds
from contextkit.framework.specs import (
    STREAM_AGGREGATE_FUNCTIONS,
    AggregateSpec,
    AttributeSpec,
)
from contextkit.types import DTYPES, Field


class Attribute:
    """A plain feature: a column of the transformation's output, served as its latest value."""

    @checked_arguments
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

    @checked_arguments
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
