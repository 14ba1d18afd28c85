"""The stream views' definitions as DuckDB SQL over the log, for offline (point-in-time) reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contextkit.compute.streaming.records import EVENT_TIMESTAMP, US
from contextkit.compute.streaming.tiles import retained_us
from contextkit.framework.specs import StreamFeatureViewSpec
from contextkit.framework.transformations import quote
from contextkit.types import Int64

if TYPE_CHECKING:
    pass


def stream_offline_sql(view: StreamFeatureViewSpec, events: str, log: str, row: str) -> str:
    """Per event row: the view's features as of the event's time ``__ts`` (see the module
    docstring), with the same tile-aligned windows as online. ``events`` holds ``row``, the join
    keys and ``__ts`` (TIMESTAMPTZ); ``log`` the source's events and ``__seq``. Output: ``row``,
    ``event_timestamp`` and one column per feature (all NULL when the entity is not served)."""
    keys = view.join_key_names
    ts = quote(view.timestamp_field)
    on = " AND ".join(f"l.{quote(k)} = e.{quote(k)}" for k in keys)
    if not view.is_aggregate:
        ttl = ""
        if view.ttl_seconds:
            ttl = f" AND epoch_us(l.{ts}) > epoch_us(e.__ts) - {view.ttl_seconds * US}"
        cols = ", ".join(f"l.{quote(f.name)}" for f in view.features)
        return (
            f"SELECT e.{row}, l.{ts} AS {EVENT_TIMESTAMP}, {cols} FROM {events} e "
            f"LEFT JOIN LATERAL (SELECT * FROM {log} l WHERE {on} AND l.{ts} <= e.__ts{ttl} "
            f"ORDER BY l.{ts} DESC, l.__seq DESC LIMIT 1) l ON TRUE"
        )
    step = view.aggregation_interval_seconds * US
    key_cols = ", ".join(quote(k) for k in keys)
    joined = (
        f"SELECT e.{row}, e.__t, e.__cur, l.*, epoch_us(l.{ts}) AS __lts FROM "
        f"(SELECT {row}, {key_cols}, epoch_us(__ts) AS __t, "
        f"(epoch_us(__ts) // {step}) * {step} AS __cur FROM {events}) e "
        f"LEFT JOIN {log} l ON {on} AND epoch_us(l.{ts}) <= e.__t "
        f"AND epoch_us(l.{ts}) >= e.__cur - {retained_us(view)} + {step}"
    )
    aggregates, lists = [], []
    for i, f in enumerate(view.features):
        lo = f"__lts >= __cur - {f.window_seconds * US} + {step}"
        c = quote(f.column) if f.column else None
        name = quote(f.name)
        if c is None:
            aggregates.append(f"count(__lts) FILTER (WHERE {lo}) AS {name}")
        elif f.function == "count":
            aggregates.append(f"count({c}) FILTER (WHERE {lo}) AS {name}")
        elif f.function == "sum":
            cast = "BIGINT" if f.dtype == Int64 else "DOUBLE"
            aggregates.append(f"CAST(sum({c}) FILTER (WHERE {lo}) AS {cast}) AS {name}")
        elif f.function == "mean":
            aggregates.append(f"avg({c}) FILTER (WHERE {lo}) AS {name}")
        elif f.function in ("min", "max"):
            aggregates.append(f"{f.function}({c}) FILTER (WHERE {lo}) AS {name}")
        elif f.function == "last":
            aggregates.append(
                f"arg_max({c}, {{'t': __lts, 's': __seq}}) FILTER (WHERE {lo} AND {c} IS NOT "
                f"NULL) AS {name}"
            )
        elif f.function == "count_distinct":
            aggregates.append(f"count(DISTINCT {c}) FILTER (WHERE {lo}) AS {name}")
        else:  # last_distinct: the n newest distinct values, newest first
            lists.append(
                f"d{i} AS (SELECT {row}, list(v ORDER BY k DESC)[1:{f.n}] AS {name} FROM "
                f"(SELECT {row}, {c} AS v, max({{'t': __lts, 's': __seq}}) AS k FROM j "
                f"WHERE {lo} AND {c} IS NOT NULL GROUP BY {row}, {c}) GROUP BY {row})"
            )
    ttl = (view.ttl_seconds or view.max_window_seconds) * US
    grouped = (
        f"SELECT {row}, any_value(__t) AS __t, max(__lts) AS __newest"
        + "".join(f", {a}" for a in aggregates)
        + f" FROM j GROUP BY {row}"
    )
    served = f"g.__newest IS NOT NULL AND g.__newest > g.__t - {ttl}"
    picks, joins = [], []
    for i, f in enumerate(view.features):
        source = f"d{i}.{quote(f.name)}" if f.function == "last_distinct" else f"g.{quote(f.name)}"
        if f.function == "last_distinct":
            joins.append(f"LEFT JOIN d{i} ON d{i}.{row} = g.{row}")
        picks.append(f"CASE WHEN {served} THEN {source} END AS {quote(f.name)}")
    ctes = ", ".join([f"j AS ({joined})", f"g AS ({grouped})", *lists])
    return (
        f"WITH {ctes} SELECT g.{row}, CASE WHEN {served} THEN "
        f"CAST(make_timestamp(g.__newest) AS TIMESTAMPTZ) END AS {EVENT_TIMESTAMP}, "
        f"{', '.join(picks)} FROM g {' '.join(joins)}"
    )
