"""Search filters: a filter dict validated against a table's columns (:func:`parse_filter`),
compiled to a LanceDB ``Expr`` (:func:`compile_filter`) and evaluated over an in-memory Arrow
table with the same null semantics (:func:`filter_mask`).

Part of :mod:`contextkit.stores.vector`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contextkit.stores._vector_common import InvalidFilterError

MAX_IN_VALUES = 1000

FILTER_OPERATORS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "contains")
_KIND_OPERATORS = {
    "string": set(FILTER_OPERATORS),
    "int": set(FILTER_OPERATORS) - {"contains"},
    "float": set(FILTER_OPERATORS) - {"contains"},
    "bool": {"eq", "ne", "in", "not_in"},
    "timestamp": {"eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"},
    "date": {"eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"},
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Condition:
    """One validated filter condition; ``value`` is already coerced to the column's type."""

    column: str
    op: str
    value: Any


def _kind(dtype: pa.DataType) -> str | None:
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype):
        return "float"
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    if pa.types.is_date(dtype):
        return "date"
    return None


def parse_filter(
    spec: Mapping[str, Any] | None, columns: Mapping[str, pa.DataType]
) -> list[Condition]:
    """Validate a filter dict against the filterable ``columns`` (name -> Arrow type).

    ``{"category": "shoes", "price": {"lt": 50}, "brand": {"in": ["a", "b"]}}``: a bare scalar
    means ``eq``, a dict holds one or more operators, all conditions are ANDed. Operators:
    ``eq ne lt lte gt gte`` (scalars), ``in not_in`` (a non-empty list of at most 1,000
    scalars), ``contains`` (substring, string columns). Values must match the column's type:
    str for strings, int/float for numbers (no bools), bool, ``datetime``/``date`` or an ISO-8601
    string for timestamps/dates (naive means UTC). Null values are refused. Anything else raises
    :class:`InvalidFilterError` naming the column.
    """
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        raise InvalidFilterError(
            f"a filter must be an object of column conditions, got {type(spec).__name__}",
            hint='e.g. {"category": "shoes", "price": {"lt": 50}}',
        )
    conditions = []
    for column, condition in spec.items():
        if not isinstance(column, str) or column not in columns:
            raise InvalidFilterError(
                f"unknown filter column {column!r}",
                hint=f"filterable columns: {', '.join(sorted(columns)) or '(none)'}",
            )
        kind = _kind(columns[column])
        if kind is None:
            raise InvalidFilterError(
                f"column {column!r} ({columns[column]}) cannot be filtered on",
                hint="filters work on string, number, bool, date and timestamp columns",
            )
        ops = condition if isinstance(condition, Mapping) else {"eq": condition}
        if not ops:
            raise InvalidFilterError(f"filter on {column!r} has no operator")
        for op, value in ops.items():
            if op not in FILTER_OPERATORS:
                raise InvalidFilterError(
                    f"unknown filter operator {op!r} on column {column!r}",
                    hint=f"operators: {', '.join(FILTER_OPERATORS)}",
                )
            if op not in _KIND_OPERATORS[kind]:
                raise InvalidFilterError(
                    f"operator {op!r} does not apply to {kind} column {column!r}",
                    hint="use one of: "
                    + ", ".join(o for o in FILTER_OPERATORS if o in _KIND_OPERATORS[kind]),
                )
            if op in ("in", "not_in"):
                if not isinstance(value, list | tuple) or not 0 < len(value) <= MAX_IN_VALUES:
                    raise InvalidFilterError(
                        f"{op!r} on {column!r} needs a list of 1 to {MAX_IN_VALUES} values",
                        hint=f'e.g. {{"{column}": {{"{op}": ["a", "b"]}}}}',
                    )
                coerced: Any = tuple(_coerce(column, kind, columns[column], v) for v in value)
            else:
                if isinstance(value, list | tuple):
                    raise InvalidFilterError(
                        f"{op!r} on {column!r} needs a single value, got a list",
                        hint=f'to match any of several values use {{"{column}": {{"in": [...]}}}}',
                    )
                coerced = _coerce(column, kind, columns[column], value)
                if op == "contains" and coerced == "":
                    raise InvalidFilterError(f"'contains' on {column!r} needs a non-empty string")
            conditions.append(Condition(column, op, coerced))
    return conditions


def _coerce(column: str, kind: str, dtype: pa.DataType, value: Any) -> Any:
    def wrong(expected: str) -> InvalidFilterError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return InvalidFilterError(
            f"filter value {shown} for column {column!r} ({dtype}) must be {expected}"
        )

    if value is None:
        raise InvalidFilterError(
            f"null filter value for column {column!r}", hint="filters compare with non-null values"
        )
    if kind == "string":
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise wrong("a finite number")
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            raise wrong("a 64-bit integer")
        return float(value) if kind == "float" else value
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind == "date":
        if isinstance(value, datetime):
            raise wrong("a date (not a datetime)")
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise wrong("an ISO date like 2024-06-01") from None
        if isinstance(value, date):
            return value
        raise wrong("a date")
    # timestamp: compare as naive UTC, the form LanceDB literals take
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise wrong("an ISO-8601 timestamp like 2024-06-01T12:00:00Z") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise wrong("a timestamp")
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def compile_filter(conditions: Sequence[Condition]) -> Any:
    """The LanceDB ``Expr`` for the conditions (None when there are none).

    Built with ``lancedb.expr.col``/``lit``: LanceDB renders identifiers in backticks and string
    literals with quotes doubled, so no user text is ever spliced into SQL. Column names holding
    a backtick are refused when a table is created (LanceDB cannot reference them).
    """
    if not conditions:
        return None
    from lancedb.expr import col, lit

    expr = None
    for c in conditions:
        column = col(c.column)
        if c.op == "in":
            term = column.isin([lit(v) for v in c.value])
        elif c.op == "not_in":
            term = ~column.isin([lit(v) for v in c.value])
        elif c.op == "contains":
            term = column.contains(lit(c.value))
        else:
            method = {"eq": "eq", "ne": "ne", "lt": "lt", "lte": "lte", "gt": "gt", "gte": "gte"}
            term = getattr(column, method[c.op])(lit(c.value))
        expr = term if expr is None else expr & term
    return expr


def filter_mask(conditions: Sequence[Condition], table: pa.Table) -> np.ndarray:
    """The same filter over an in-memory Arrow table, with SQL's null semantics (a comparison
    with null is not true; ``not_in`` excludes nulls like ``NOT IN`` does)."""
    mask = None
    for c in conditions:
        column = table.column(c.column)
        if c.op in ("in", "not_in"):
            values = list(c.value)
            if pa.types.is_integer(column.type) and any(isinstance(v, float) for v in values):
                column = pc.cast(column, pa.float64())
                value_set = pa.array([float(v) for v in values], pa.float64())
            else:
                value_set = pa.array(values, type=_literal_type(column.type))
                if value_set.type != column.type:
                    value_set = value_set.cast(column.type)
            term = pc.is_in(column, value_set=value_set)
            if c.op == "not_in":
                term = pc.and_kleene(pc.is_valid(column), pc.invert(term))
        elif c.op == "contains":
            term = pc.match_substring(column, c.value)
        else:
            scalar = pa.scalar(c.value, type=_literal_type(column.type, c.value))
            fn = {
                "eq": pc.equal,
                "ne": pc.not_equal,
                "lt": pc.less,
                "lte": pc.less_equal,
                "gt": pc.greater,
                "gte": pc.greater_equal,
            }[c.op]
            term = fn(column, scalar)
        mask = term if mask is None else pc.and_kleene(mask, term)
    if mask is None:
        return np.ones(table.num_rows, dtype=bool)
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _literal_type(dtype: pa.DataType, value: Any = None) -> pa.DataType:
    if pa.types.is_integer(dtype) and isinstance(value, float):
        return pa.float64()
    if pa.types.is_timestamp(dtype):
        return dtype  # a naive datetime is read as UTC for tz-aware columns
    return dtype
