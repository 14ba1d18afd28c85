"""Feature value types and schema fields, named as in Tecton (``Field("user_id", Int64)``).

A dtype is a plain string in specs (``"int64"``, ``"float64"``, ``"string"``, ``"bool"``,
``"timestamp"``); the constants below are those strings, so ``Int64 == "int64"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

String = "string"
Int64 = "int64"
Float64 = "float64"
Bool = "bool"
Timestamp = "timestamp"

DTYPES = (String, Int64, Float64, Bool, Timestamp)
NUMERIC_DTYPES = (Int64, Float64)

# DuckDB type names (as DESCRIBE prints them) -> contextkit dtype.
_DUCKDB_TO_DTYPE = {
    "VARCHAR": String,
    "BIGINT": Int64,
    "INTEGER": Int64,
    "SMALLINT": Int64,
    "TINYINT": Int64,
    "UBIGINT": Int64,
    "UINTEGER": Int64,
    "USMALLINT": Int64,
    "UTINYINT": Int64,
    "HUGEINT": Int64,
    "DOUBLE": Float64,
    "FLOAT": Float64,
    "REAL": Float64,
    "BOOLEAN": Bool,
    "TIMESTAMP": Timestamp,
    "TIMESTAMP WITH TIME ZONE": Timestamp,
    "TIMESTAMP_NS": Timestamp,
    "TIMESTAMP_MS": Timestamp,
    "TIMESTAMP_S": Timestamp,
    "DATE": Timestamp,
}

_DTYPE_TO_DUCKDB = {
    String: "VARCHAR",
    Int64: "BIGINT",
    Float64: "DOUBLE",
    Bool: "BOOLEAN",
    Timestamp: "TIMESTAMPTZ",
}


def list_dtype(item: str) -> str:
    """The dtype of a list of ``item`` values (``"array<string>"``): the values of a
    ``last_distinct`` aggregate."""
    return f"array<{item}>"


def list_item_dtype(dtype: str) -> str | None:
    """``"string"`` for ``"array<string>"``; None for a scalar dtype."""
    if dtype.startswith("array<") and dtype.endswith(">"):
        return dtype[6:-1]
    return None


def dtype_from_duckdb(type_name: str) -> str | None:
    """Map a DuckDB column type to a contextkit dtype; ``None`` when it has no equivalent."""
    name = type_name.upper()
    if name.startswith("DECIMAL"):
        return Float64
    return _DUCKDB_TO_DTYPE.get(name)


def duckdb_type(dtype: str) -> str:
    """The DuckDB type used to store values of ``dtype``."""
    return _DTYPE_TO_DUCKDB[dtype]


@dataclass(frozen=True)
class Field:
    """A named, typed column: ``Field("user_id", Int64)``."""

    name: str
    dtype: str = String

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"Field {self.name!r}: unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}"
            )


def parse_value(dtype: str, value: Any) -> Any:
    """``value`` (from JSON or Python) as a value of ``dtype``, or ValueError saying what was
    expected. None stays None. int64 takes integers and decimal strings (Tecton's wire format
    sends int64 as strings), float64 finite numbers, bool only true/false, timestamps ISO 8601
    strings or datetimes (naive means UTC; the result is an aware UTC datetime)."""
    import math
    import numbers
    from datetime import UTC, datetime

    if value is None:
        return None
    if dtype == String:
        if isinstance(value, str):
            return value
        raise ValueError("expected a string")
    if dtype == Int64:
        integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        decimal = isinstance(value, str) and value.strip().lstrip("-").isdigit()
        if not (integral or decimal):
            raise ValueError("expected an integer")
        number = int(value)
        if not -(2**63) <= number < 2**63:
            raise ValueError("out of the int64 range")
        return number
    if dtype == Float64:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                return float(value)
            raise ValueError("expected a finite number")
        raise ValueError("expected a number")
    if dtype == Bool:
        if isinstance(value, bool):
            return value
        raise ValueError("expected true or false")
    if dtype == Timestamp:
        if isinstance(value, datetime):
            moment = value
        elif isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("expected an ISO 8601 timestamp") from None
        else:
            raise ValueError("expected an ISO 8601 timestamp string")
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    raise ValueError(f"cannot read values of type {dtype}")


def arrow_type(dtype: str):
    """The Arrow type of ``dtype``'s values (timestamps: microseconds, UTC; lists of items)."""
    import pyarrow as pa

    item = list_item_dtype(dtype)
    if item is not None:
        return pa.list_(arrow_type(item))
    return {
        String: pa.string(),
        Int64: pa.int64(),
        Float64: pa.float64(),
        Bool: pa.bool_(),
        Timestamp: pa.timestamp("us", tz="UTC"),
    }[dtype]


def epoch_micros(moment: Any) -> int:
    """Microseconds since the epoch of an aware datetime (naive ones are read as UTC), exact."""
    from datetime import UTC, datetime

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
