"""Feature value types and schema fields, named as in Tecton (``Field("user_id", Int64)``).

A dtype is a plain string in specs (``"int64"``, ``"float64"``, ``"string"``, ``"bool"``,
``"timestamp"``); the constants below are those strings, so ``Int64 == "int64"``.
"""

from __future__ import annotations

from dataclasses import dataclass

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
