"""The caller's events (a DataFrame, Arrow table, Parquet path or DuckDB relation) as a DuckDB
table with one UTC microsecond timestamp, in input order; and the checks of their column names.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.compute.offline.reserved import EVENT_TS, EVENTS, FILE, RESERVED, ROW
from contextkit.errors import BadRequestError
from contextkit.framework.transformations import (
    literal,
    quote,
)

if TYPE_CHECKING:
    import duckdb


@dataclass
class EventsInput:
    """How the events are read: ``base``, a query of their own columns and the row id, over
    either Parquet file(s) read in place (``path``) or an Arrow table with the row id
    (``table``, registered as ``__ck_events_raw``); ``types``, their own columns with their
    DuckDB types in order; ``time``, SQL for a row's UTC event time (microseconds)."""

    base: str
    types: dict[str, str]
    time: str
    path: str | None = None
    table: Any = None


def register_events(
    con: duckdb.DuckDBPyConnection, events: Any, timestamp_key: str
) -> dict[str, str]:
    """Register the events as ``__ck_events``: their columns, a row id and the UTC event time.

    Returns the events' own columns with their DuckDB types, in order.
    """
    read = events_input(con, events, timestamp_key)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {EVENTS} AS SELECT *, {read.time} AS {EVENT_TS} "
        f"FROM ({read.base})"
    )
    return read.types


def events_input(con: duckdb.DuckDBPyConnection, events: Any, timestamp_key: str) -> EventsInput:
    """Check the events' columns and say how to read them (nothing is scanned: a Parquet
    path's schema and row counts come from its metadata)."""
    import numpy as np
    import pyarrow as pa

    base = None
    path = table = None
    if isinstance(events, str | Path):
        with _reading_events(con, str(events)):
            base = _parquet_events(con, str(events))
            if base is None:
                events = _read_parquet_in_order(con, str(events))
            else:
                path = str(events)
    if base is None:
        table = _to_arrow(events, timestamp_key)
        _check_event_names(table.column_names)
        table = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
        con.register(f"{EVENTS}_raw", table)
        base = f"SELECT * FROM {EVENTS}_raw"
    described = con.execute(f"DESCRIBE {base}").fetchall()
    types = {r[0]: r[1] for r in described if r[0] != ROW}
    if timestamp_key not in types:
        raise BadRequestError(
            f"the events have no column {timestamp_key!r}",
            hint=f"pass timestamp_key=... (columns: {', '.join(types)})",
        )
    time = _utc_micros(quote(timestamp_key), types[timestamp_key])
    if time is None:
        raise BadRequestError(
            f"events column {timestamp_key!r} has type {types[timestamp_key]}, not a timestamp",
            hint="convert it first, e.g. pd.to_datetime(events['ts'], utc=True)",
        )
    return EventsInput(base, types, time, path, table)


def parquet_files(con: duckdb.DuckDBPyConnection, path: str) -> list[tuple[str, int, int]]:
    """The events' Parquet files in row-id order: (file, rows, row id of its first row), from
    the files' metadata (the same offsets :func:`register_events` gives the rows)."""
    query = (
        f"SELECT file_name, num_rows, sum(num_rows) OVER (ORDER BY file_name) - num_rows "
        f"FROM parquet_file_metadata({literal(path)}) ORDER BY file_name"
    )
    return [(r[0], int(r[1]), int(r[2])) for r in con.execute(query).fetchall()]


def parquet_rows(file: str, start: int, end: int, offset: int) -> str:
    """A query of rows ``[start, end)`` of one events file with their row ids (``offset``: the
    row id of the file's first row); DuckDB reads only the row groups that hold them."""
    return (
        f"SELECT * EXCLUDE (file_row_number), CAST({offset} + file_row_number AS BIGINT) AS {ROW} "
        f"FROM read_parquet({literal(file)}, file_row_number = true) "
        f"WHERE file_row_number >= {start} AND file_row_number < {end}"
    )


@contextmanager
def _reading_events(con: duckdb.DuckDBPyConnection, path: str) -> Iterator[None]:
    """DuckDB's errors reading the events' Parquet file(s) as a :class:`BadRequestError` that
    names them (DuckDB's own message quotes the SQL it ran)."""
    import duckdb

    hint = (
        "pass the path of a Parquet file, or a glob of them "
        f"(a relative path is read from {str(Path.cwd())!r})"
    )
    try:
        found = bool(_parquet_files(con, path))
    except duckdb.Error:
        found = True  # not a local path (DuckDB reads URLs too): let the read say what is wrong
    if not found:
        raise BadRequestError(f"no events file matches {path!r}", hint=hint)
    try:
        yield
    except duckdb.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadRequestError(
            f"cannot read the events in {path!r} as Parquet: {reason}", hint=hint
        ) from None


def _parquet_events(con: duckdb.DuckDBPyConnection, path: str) -> str | None:
    """A query of the events in Parquet file(s) with a row id in file-name, then row, order.

    None when the files have a column named ``file_row_number``: DuckDB cannot then add the row
    numbers, and the events are read into Arrow instead.
    """
    scan = f"read_parquet({literal(path)})"
    names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
    _check_event_names(names)
    _check_event_names(_parquet_column_names(con, path))
    if "file_row_number" in {n.lower() for n in names}:
        return None
    # Row id = the rows of the files before (in name order) + the row's number in its file: a
    # join with one row per file, so the events stream (a window over them would hold them all).
    offsets = (
        f"SELECT file_name AS {FILE}, sum(num_rows) OVER (ORDER BY file_name) - num_rows AS "
        f"{RESERVED}offset FROM parquet_file_metadata({literal(path)})"
    )
    return (
        f"SELECT r.* EXCLUDE ({FILE}, file_row_number), "
        f"CAST(o.{RESERVED}offset + r.file_row_number AS BIGINT) AS {ROW} "
        f"FROM read_parquet({literal(path)}, filename = {literal(FILE)}, file_row_number = true) "
        f"AS r JOIN ({offsets}) AS o USING ({FILE})"
    )


def _parquet_files(con: duckdb.DuckDBPyConnection, path: str) -> list[str]:
    query = f"SELECT file FROM glob({literal(path)}) ORDER BY file"
    return [r[0] for r in con.execute(query).fetchall()]


def _parquet_column_names(con: duckdb.DuckDBPyConnection, path: str) -> list[str]:
    """The column names as written in the first file (DuckDB renames ``A`` and ``a`` apart)."""
    import pyarrow.parquet as pq

    files = _parquet_files(con, path)
    try:
        return pq.read_schema(files[0]).names if files else []
    except OSError:  # not a local file (DuckDB reads more than pyarrow does): DuckDB's names
        return []


def _read_parquet_in_order(con: duckdb.DuckDBPyConnection, path: str):
    """The events of Parquet file(s) as one Arrow table, files in name order."""
    import pyarrow as pa

    # A plain scan of one file keeps the file's row order.
    tables = [
        con.sql(f"SELECT * FROM read_parquet({literal(f)})").to_arrow_table()
        for f in _parquet_files(con, path)
    ]
    return pa.concat_tables(tables)


def _utc_micros(column: str, type_name: str) -> str | None:
    """SQL for the column's values as microsecond UTC instants; None if it holds no times."""
    name = type_name.upper()
    if name.endswith("_NS"):  # TIMESTAMP_NS, TIMESTAMPTZ_NS: floor, as a cast would round
        ns = f"epoch_ns({column})"
        return (
            f"CAST(make_timestamp({ns} // 1000 - CAST({ns} % 1000 < 0 AS BIGINT)) AS TIMESTAMPTZ)"
        )
    if name.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"CAST({column} AS TIMESTAMPTZ)"
    if name.startswith("TIMESTAMP") or name == "DATE":  # naive: read as UTC (the session zone)
        return f"CAST(CAST({column} AS TIMESTAMP) AS TIMESTAMPTZ)"
    return None


def _check_event_names(names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        folded = name.lower()
        if folded.startswith(RESERVED):
            raise BadRequestError(
                f"events column {name!r} starts with {RESERVED!r}, a prefix reserved for "
                "contextkit's own columns",
                hint=f"rename that column (any name not starting with {RESERVED})",
            )
        if folded in seen:
            raise BadRequestError(
                f"events columns {seen[folded]!r} and {name!r} have the same name to DuckDB, "
                "which compares names case-insensitively",
                hint="rename one of them",
            )
        seen[folded] = name


def check_result_names(event_columns: list[str], feature_columns: list[str]) -> None:
    """Every result column must have its own name (DuckDB would rename a clash silently)."""
    features: dict[str, str] = {}
    for name in feature_columns:
        if name.lower() in features:
            raise BadRequestError(
                f"feature columns {features[name.lower()]!r} and {name!r} have the same name "
                "to DuckDB",
                hint="ask for one of the two features only",
            )
        features[name.lower()] = name
    for name in event_columns:
        if name.lower() in features:
            raise BadRequestError(
                f"events column {name!r} has the name of the result's feature column "
                f"{features[name.lower()]!r}",
                hint="rename or drop that events column: the result adds one "
                "<view>__<feature> column per feature",
            )


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
        _check_event_names([str(c) for c in events.columns])  # before pyarrow's own ValueError
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
