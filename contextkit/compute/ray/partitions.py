"""How a view's materialization is split on Ray, and what share of its source each task reads.

A job over ``[start, end)`` is split into time chunks (``compute.time_chunk``; one chunk when it is
unset; a range without a start is cut from the source's first timestamp when the view pushes its
time range, else it is one chunk) times entity-hash buckets (``compute.partitions``): one Ray task
per (chunk, bucket). Each task computes the offline rows of its chunk's range for the entities of
its bucket; the tasks of the last chunk also compute the online values as of ``end``.

**What a task reads.** When the view's SQL is *row-wise over one file source* (one ``FROM`` of a
``FileSource``; no join, subquery, aggregate, window, ``DISTINCT``, ``LIMIT`` or CTE), every output
row comes from one source row, with its join keys and timestamp passed through as plain columns.
Then :func:`analyse` maps the view's join keys and timestamp back to the source's columns, and a
task reads only the source rows with ``hash(keys) % buckets = bucket`` and a timestamp in its
:func:`read_range` (its chunk, plus the lookback its windows need, plus the ttl of the online
values), pushed into the DuckDB scan of the file(s) (local or ``s3://``) before the view's SQL
runs. Any other view (a join, a pandas function, a database source) reads as before: the whole
file source, the bucket filter applied to the view's output; a database source reads the task's
time range from the database (the range is in the SQL sent) and nothing less.

Exactness: a window ending at ``t`` holds rows of ``(t - w, t]`` of one entity; a task of chunk
``[c0, c1)`` reads ``[c0 - max window, c1)`` of its entities, so every window of every row in its
chunk is complete. Latest values as of ``end`` read ``(end - max(ttl, window), end]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from contextkit.framework.specs import DatabaseSourceSpec, FeatureViewSpec, FileSourceSpec

# Past the job's end: latest values as of ``end`` include rows at ``end`` (offline rows do not).
_THROUGH = timedelta(microseconds=1)


@dataclass(frozen=True)
class Pushdown:
    """The share of one file source a task reads: the source's columns the view's SQL uses
    (None: all), the source columns its join keys come from (None: no bucket filter pushed) and
    the one its timestamp comes from (None: no time range pushed)."""

    source: str
    columns: tuple[str, ...] | None
    keys: tuple[str, ...] | None
    timestamp: str | None

    def describe(self) -> str:
        pushed = [
            *(["entity bucket"] if self.keys else []),
            *(["time range"] if self.timestamp else []),
        ]
        return f"{' and '.join(pushed)} pushed into the scan of source {self.source!r}"


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyse` found: a :class:`Pushdown`, or why there is none."""

    pushdown: Pushdown | None
    reason: str

    def as_details(self) -> dict[str, Any]:
        return {"pushed": self.pushdown is not None, "why": self.reason}


def time_chunks(
    start: datetime | None,
    end: datetime,
    chunk: timedelta | None,
    first: datetime | None = None,
) -> list[tuple[datetime | None, datetime]]:
    """``[start, end)`` cut into consecutive ranges of ``chunk`` (the last one shorter); one
    range when ``chunk`` is None or the range is empty. A range without a start is cut from
    ``first`` (the data's first timestamp), its first chunk left open below (None); without
    ``first`` either, it is one range."""
    if chunk is None or (start is None and first is None) or (start or first) >= end:
        return [(start, end)]
    out: list[tuple[datetime | None, datetime]] = []
    lo = start if start is not None else first
    assert lo is not None
    while lo < end:
        hi = min(lo + chunk, end)
        out.append((lo, hi))
        lo = hi
    if start is None:
        out[0] = (None, out[0][1])
    return out


def first_timestamp(con, root, source: FileSourceSpec, push: Pushdown) -> datetime | None:
    """The first value of the source column the view's timestamp comes from (None: no rows):
    where a range without a start is cut into chunks. One scan of that column, on the
    driver."""
    from contextkit.framework.transformations import quote, source_scan_sql

    assert push.timestamp is not None
    ts = f"CAST({quote(push.timestamp)} AS TIMESTAMPTZ)"
    scan = source_scan_sql(source, root, con)
    [(value,)] = con.execute(f"SELECT min({ts}) FROM ({scan})").fetchall()
    return value


def read_range(
    view: FeatureViewSpec,
    start: datetime | None,
    end: datetime,
    *,
    offline: bool,
    online_as_of: datetime | None,
) -> tuple[datetime | None, datetime]:
    """The source rows a task needs, ``[lo, hi)`` on the view's timestamp (``lo`` None: from
    the first): its chunk ``[start, end)`` of offline rows with the windows' lookback, and the
    latest values as of ``online_as_of`` (None: not computed) with the ttl's lookback (an
    attribute view without a ttl reads back to the first row)."""
    window = timedelta(seconds=view.max_window_seconds) if view.is_aggregate else timedelta()
    lows: list[datetime | None] = []
    highs: list[datetime] = []
    if offline:
        lows.append(None if start is None else start - window)
        highs.append(end)
    if online_as_of is not None:
        if view.is_aggregate:
            ttl = view.ttl_seconds or view.max_window_seconds
            lows.append(online_as_of - timedelta(seconds=max(ttl, view.max_window_seconds)))
        else:
            ttl_s = view.ttl_seconds
            lows.append(online_as_of - timedelta(seconds=ttl_s) if ttl_s else None)
        highs.append(online_as_of + _THROUGH)
    if not highs:
        return start, end
    lo = None if any(x is None for x in lows) else min(x for x in lows if x is not None)
    return lo, max(highs)


def analyse(
    con, view: FeatureViewSpec, sources: dict[str, FileSourceSpec | DatabaseSourceSpec]
) -> Analysis:
    """Whether a task may read only its share of the view's source (see the module docstring),
    from the view's parsed SQL (DuckDB's ``json_serialize_sql``; nothing is read)."""
    if view.mode != "sql" or not view.sql:
        return Analysis(None, f"a {view.mode}-mode view's function may combine any rows")
    parsed = json.loads(con.execute("SELECT json_serialize_sql(?)", [view.sql]).fetchall()[0][0])
    if parsed.get("error"):
        return Analysis(None, "the view's SQL could not be parsed")
    statements = parsed.get("statements") or []
    if len(statements) != 1:
        return Analysis(None, "the view's SQL is not one SELECT")
    node = statements[0]["node"]
    why = _not_row_wise(node, _aggregate_names(con))
    if why:
        return Analysis(None, why)
    table = node["from_table"]
    name = table.get("table_name", "")
    source = next((s for s in sources.values() if s.name.lower() == name.lower()), None)
    if source is None or source.name not in view.sources:
        return Analysis(None, f"{name!r} is not one of the view's sources")
    if not isinstance(source, FileSourceSpec):
        return Analysis(None, f"source {source.name!r} is read from a database by time range only")
    output = _outputs(node["select_list"], {table.get("alias", "").lower(), name.lower()})
    if output is None:
        return Analysis(None, "the view's SELECT list is ambiguous (a column named twice)")
    keys = tuple(output(k) for k in view.join_key_names)
    timestamp = output(view.timestamp_field)
    keys_pushed = None if any(k is None for k in keys) else tuple(str(k) for k in keys)
    if keys_pushed is None and timestamp is None:
        return Analysis(None, "the view's join keys and timestamp are computed, not source columns")
    columns = _columns(node)
    pushdown = Pushdown(source.name, columns, keys_pushed, timestamp)
    return Analysis(pushdown, pushdown.describe())


def _aggregate_names(con) -> set[str]:
    rows = con.execute(
        "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
        "WHERE function_type = 'aggregate'"
    ).fetchall()
    return {r[0] for r in rows}


def _not_row_wise(node: dict, aggregates: set[str]) -> str | None:
    """Why the SELECT node may combine rows (None: each output row is one source row's)."""
    if node.get("type") != "SELECT_NODE":
        return "the view's SQL combines queries (UNION, INTERSECT, ...)"
    if node.get("cte_map", {}).get("map"):
        return "the view's SQL has a WITH clause"
    if any(m.get("type") != "ORDER_MODIFIER" for m in node.get("modifiers", [])):
        return "the view's SQL has DISTINCT or LIMIT"
    if node.get("group_expressions") or node.get("group_sets") or node.get("having"):
        return "the view's SQL groups rows"
    if node.get("qualify") or node.get("sample"):
        return "the view's SQL has QUALIFY or SAMPLE"
    if node.get("aggregate_handling") != "STANDARD_HANDLING":
        return "the view's SQL groups rows"
    table = node.get("from_table") or {}
    if table.get("type") != "BASE_TABLE" or table.get("sample") or table.get("at_clause"):
        return "the view's SQL reads more than one table (or a table function)"
    for expr in _expressions(node):
        kind = expr.get("class")
        if kind == "SUBQUERY":
            return "the view's SQL has a subquery"
        if kind == "WINDOW":
            return "the view's SQL has a window function"
        if kind == "FUNCTION" and (
            str(expr.get("function_name", "")).lower() in aggregates or expr.get("distinct")
        ):
            return f"the view's SQL aggregates ({expr.get('function_name')})"
    return None


def _expressions(node: Any):
    """Every expression (a dict with a ``class``) in a parsed SELECT node, nested ones too."""
    if isinstance(node, dict):
        if "class" in node:
            yield node
        for value in node.values():
            yield from _expressions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _expressions(value)


def _outputs(select: list[dict], tables: set[str]) -> Callable[[str], str | None] | None:
    """A function: output column -> the source column it passes through unchanged (None:
    computed, or not produced). None when the SELECT list is ambiguous (a name produced twice,
    two stars, a star of another relation or by pattern)."""
    named: dict[str, str | None] = {}
    star: dict | None = None
    for expr in select:
        kind = expr.get("class")
        if kind == "STAR":
            if star is not None or expr.get("columns") or expr.get("expr"):
                return None
            if expr.get("relation_name", "").lower() not in ("", *tables):
                return None
            star = expr
            continue
        alias = expr.get("alias") or ""
        source = None
        if kind == "COLUMN_REF":
            names = expr.get("column_names", [])
            if len(names) == 1 or (len(names) == 2 and names[0].lower() in tables):
                source = names[-1]
            alias = alias or names[-1]
        if not alias:
            continue  # an unnamed expression: never a key or the timestamp
        if alias.lower() in named:
            return None
        named[alias.lower()] = source
    if star is None:
        return lambda name: named.get(name.lower())
    if star.get("rename_list") or star.get("qualified_exclude_list"):
        return lambda name: None  # renamed columns: nothing is known to pass through
    changed = {str(x).lower() for x in star.get("exclude_list", [])}
    changed |= {str(r.get("key", "")).lower() for r in star.get("replace_list", [])}

    def through_star(name: str) -> str | None:
        # A name of the explicit list is produced twice with the star: left as computed.
        key = name.lower()
        return None if key in changed or key in named else name

    return through_star


def _columns(node: dict) -> tuple[str, ...] | None:
    """The columns the SELECT node refers to (None with ``*``: all); names that are no source
    column (aliases, table names, struct fields, lambda parameters) are dropped by the task."""
    names: set[str] = set()
    for expr in _expressions(node):
        if expr.get("class") == "STAR":
            return None
        if expr.get("class") == "COLUMN_REF":
            # Every part: ``e.amount`` is a table's column, ``payload.amount`` a struct's field.
            names.update(expr["column_names"])
    return tuple(sorted(names))
