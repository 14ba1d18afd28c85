"""Statistics of the rows a job writes, measured in DuckDB before it commits them.

Per column: non-null count, nulls and null rate; numbers: min, max, mean, standard deviation,
quantiles (p01 .. p99, DuckDB's ``quantile_cont``, i.e. linear interpolation), an equal-width
histogram, and the counts in the column's own decile bins; strings and booleans: the number of
distinct values and the 20 most frequent ones; timestamps: min and max. Vectors: dimension,
norms, zero and non-finite vectors, the centroid of the unit vectors.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.quality.drift import centroid_shift, drift
from contextkit.framework.transformations import literal, quote
from contextkit.types import Bool, Float64, Int64, String, Timestamp

if TYPE_CHECKING:
    import duckdb


log = logging.getLogger(__name__)

STATS_VERSION = 1
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
HISTOGRAM_BINS = 20
TOP_VALUES = 20
VECTOR_SAMPLE = 20_000  # vectors read back from a table to measure it
TEMP = "ck_monitored_rows"
TEMP_DOCUMENTS = "ck_monitored_documents"


# -- statistics of a set of rows -------------------------------------------------------------------
def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _kind(dtype: str | None, sql_type: str) -> str:
    sql = sql_type.upper()
    if dtype == Timestamp or sql.startswith(("TIMESTAMP", "DATE")):
        return "timestamp"
    if dtype in (Int64, Float64) or sql in ("BIGINT", "INTEGER", "DOUBLE", "FLOAT", "HUGEINT"):
        return "numeric"
    if dtype == Bool or sql == "BOOLEAN":
        return "boolean"
    if dtype == String or sql == "VARCHAR":
        return "categorical"
    return "other"


def iso_micros(us: Any) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(int(us) / 1e6, UTC).isoformat().replace("+00:00", "Z")


def _bins_case(x: str, edges: Sequence[float]) -> str:
    """Bin index of ``x`` among ``(-inf, e0], (e0, e1], ..., (e_k-1, inf)``."""
    whens = " ".join(
        f"WHEN {x} <= CAST({edge!r} AS DOUBLE) THEN {i}" for i, edge in enumerate(edges)
    )
    return f"CASE WHEN {x} IS NULL THEN NULL {whens} ELSE {len(edges)} END"


def _counts(histogram: dict | None, size: int) -> list[int]:
    counts = [0] * size
    for index, count in (histogram or {}).items():
        if index is not None and 0 <= int(index) < size:
            counts[int(index)] = int(count)
    return counts


def measure(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    columns: Sequence[tuple[str, str | None]],
    *,
    event_column: str | None = None,
    text_columns: Sequence[str] = (),
    between: dict[str, tuple[float | None, float | None]] | None = None,
    reference: dict[str, Any] | None = None,
    complete: bool = True,
) -> dict[str, Any]:
    """Statistics of the rows of ``relation`` (a table name or a parenthesised query).

    ``columns``: ``(name, dtype)`` of the columns to measure; ``event_column``: the event-time
    column (its newest and oldest values); ``text_columns``: measured by their length in
    characters; ``between``: ranges whose outside values are counted; ``reference``: the
    statistics of the drift reference. ``complete=False`` measures only counts, nulls, min, max
    and ranges (what expectations need).
    """
    between = between or {}
    described = {
        row[0]: str(row[1]).upper()
        for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    }
    specs = []
    for i, (name, dtype) in enumerate(columns):
        sql_type = described.get(name, "VARCHAR")
        kind = "text" if name in text_columns else _kind(dtype, sql_type)
        q = quote(name)
        if kind == "text":  # measured by its length (a column of lengths already, or the text)
            value = f"length({q})" if sql_type == "VARCHAR" else q
            empty = f"{q} = ''" if sql_type == "VARCHAR" else f"{q} = 0"
        elif kind == "numeric" and ("DOUBLE" in sql_type or "FLOAT" in sql_type):
            value, empty = f"CASE WHEN isfinite({q}) THEN CAST({q} AS DOUBLE) END", None
        elif kind == "timestamp" and sql_type.startswith(("TIMESTAMP", "DATE")):
            value, empty = f"epoch_us(CAST({q} AS TIMESTAMPTZ))", None
        else:
            value, empty = q, None
        x = f'"__x{i}"'  # the value, computed once per row in the base relation below
        specs.append({"name": name, "dtype": dtype, "kind": kind, "q": q, "value": value,
                      "x": x, "empty": empty, "sql_type": sql_type})  # fmt: skip
    computed = [
        f"CAST({s['value']} AS DOUBLE) AS {s['x']}" if s["kind"] != "timestamp"
        else f"{s['value']} AS {s['x']}"
        for s in specs
        if s["kind"] in ("numeric", "text", "timestamp")
    ]  # fmt: skip
    base = f"(SELECT *, {', '.join(computed)} FROM {relation})" if computed else relation

    # 1. One scan: counts, nulls, moments, quantiles, distinct values, ranges.
    select = ["count(*)"]
    slots: list[tuple[int, str]] = []  # (spec index, stat) of each expression after count(*)

    def add(i: int, stat: str, expression: str) -> None:
        slots.append((i, stat))
        select.append(expression)

    points = ", ".join(repr(q) for q in (*QUANTILES, *DECILES))
    for i, s in enumerate(specs):
        add(i, "count", f"count({s['q']})")
        numeric = s["kind"] in ("numeric", "text")
        if numeric or s["kind"] == "timestamp":
            add(i, "min", f"min({s['x']})")
            add(i, "max", f"max({s['x']})")
        if s["kind"] == "numeric" and s["value"].startswith("CASE"):
            add(i, "non_finite", f"count(*) FILTER (WHERE NOT isfinite({s['q']}))")
        if s["empty"]:
            add(i, "empty", f"count(*) FILTER (WHERE {s['empty']})")
        if s["name"] in between and s["kind"] == "numeric":
            low, high = between[s["name"]]
            tests = []
            if low is not None:
                tests.append(f"{s['x']} < CAST({low!r} AS DOUBLE)")
            if high is not None:
                tests.append(f"{s['x']} > CAST({high!r} AS DOUBLE)")
            add(i, "outside", f"count(*) FILTER (WHERE {' OR '.join(tests)})")
        if not complete:
            continue
        if numeric:
            add(i, "mean", f"avg({s['x']})")
            add(i, "std", f"stddev_samp({s['x']})")
            add(i, "quantiles", f"quantile_cont({s['x']}, [{points}])")
        elif s["kind"] in ("categorical", "boolean"):
            add(i, "distinct", f"count(DISTINCT {s['q']})")
            if s["kind"] == "boolean":
                add(i, "true", f"count(*) FILTER (WHERE {s['q']})")
    event = None
    if event_column is not None:
        q = quote(event_column)
        timestamp = described.get(event_column, "BIGINT").startswith("TIMESTAMP")
        event = f"epoch_us(CAST({q} AS TIMESTAMPTZ))" if timestamp else q
        select += [f"max({event})", f"min({event})"]
    row = con.execute(f"SELECT {', '.join(select)} FROM {base}").fetchall()[0]
    rows = int(row[0])
    values: list[dict[str, Any]] = [{} for _ in specs]
    for (i, stat), value in zip(slots, row[1 : 1 + len(slots)], strict=True):
        values[i][stat] = value
    stats: dict[str, Any] = {
        "version": STATS_VERSION,
        "rows": rows,
        "complete": complete,
        "columns": {},
    }
    if event is not None:
        stats["newest_event_us"] = None if row[-2] is None else int(row[-2])
        stats["oldest_event_us"] = None if row[-1] is None else int(row[-1])

    # 2. Histograms and bins (they need the min/max, deciles and the reference from step 1):
    # every bin index as a column, unpivoted and counted in one GROUP BY.
    bins: list[tuple[str, str, int, int, str]] = []  # (label, expression, spec, buckets, what)
    ref_columns = (reference or {}).get("columns", {})
    for i, s in enumerate(specs):
        v = values[i]
        count = int(v.get("count") or 0)
        entry: dict[str, Any] = {
            "dtype": s["dtype"],
            "kind": s["kind"],
            "count": count,
            "nulls": rows - count,
            "null_rate": (rows - count) / rows if rows else 0.0,
        }
        if s["kind"] in ("numeric", "text"):
            entry.update(min=_float(v.get("min")), max=_float(v.get("max")))
            for extra_stat in ("non_finite", "empty"):
                if extra_stat in v:
                    entry[extra_stat] = int(v[extra_stat] or 0)
        elif s["kind"] == "timestamp":
            entry.update(min=iso_micros(v.get("min")), max=iso_micros(v.get("max")))
        if "outside" in v:
            entry["outside"] = int(v["outside"] or 0)
        stats["columns"][s["name"]] = entry
        if not complete or s["kind"] not in ("numeric", "text"):
            continue
        points_found = v.get("quantiles") or []
        quantiles = [_float(p) for p in points_found[: len(QUANTILES)]]
        deciles = [_float(p) for p in points_found[len(QUANTILES) :]]
        entry.update(
            mean=_float(v.get("mean")),
            std=_float(v.get("std")),
            quantiles={
                f"p{round(q * 100):02d}": val for q, val in zip(QUANTILES, quantiles, strict=False)
            },
        )
        lo, hi = entry["min"], entry["max"]
        if lo is None or hi is None:
            continue
        width = (hi - lo) / HISTOGRAM_BINS if hi > lo else 0.0
        if width > 0:
            entry["histogram"] = {
                "edges": [lo + k * width for k in range(HISTOGRAM_BINS)] + [hi],
                "counts": [0] * HISTOGRAM_BINS,
            }
            bins.append(
                (f"h{i}", f"least({HISTOGRAM_BINS - 1}, CAST(floor(({s['x']} - "
                 f"CAST({lo!r} AS DOUBLE)) / CAST({width!r} AS DOUBLE)) AS INTEGER))",
                 i, HISTOGRAM_BINS, "histogram")
            )  # fmt: skip
        else:
            entry["histogram"] = {"edges": [lo, hi], "counts": [count]}
        edges = sorted({d for d in deciles if d is not None})
        entry["bins"] = {"edges": edges, "counts": [0] * (len(edges) + 1)}
        bins.append((f"d{i}", _bins_case(s["x"], edges), i, len(edges) + 1, "bins"))
        ref = ref_columns.get(s["name"])
        if ref and ref.get("kind") == s["kind"] and ref.get("bins"):
            ref_edges = ref["bins"]["edges"]
            entry["_reference_counts"] = [0] * (len(ref_edges) + 1)
            bins.append((f"r{i}", _bins_case(s["x"], ref_edges), i, len(ref_edges) + 1, "ref"))
    if bins:
        # least() skips nulls (least(19, NULL) is 19): null values are kept out first.
        exprs = ", ".join(
            f"CASE WHEN {specs[i]['x']} IS NOT NULL THEN {expr} END AS {label}"
            for label, expr, i, _n, _w in bins
        )
        labels = {label: (i, size, what) for label, _e, i, size, what in bins}
        counted = con.execute(
            f"SELECT name, value, count(*) FROM (UNPIVOT (SELECT {exprs} FROM {base}) "
            "ON COLUMNS(*) INTO NAME name VALUE value) GROUP BY ALL"
        ).fetchall()
        for label, index, n in counted:
            i, size, what = labels[label]
            entry = stats["columns"][specs[i]["name"]]
            target = entry["_reference_counts"] if what == "ref" else entry[what]["counts"]
            if index is not None and 0 <= int(index) < size:
                target[int(index)] = int(n)

    # 3. The most frequent values of strings and booleans (and the reference's top values).
    top_queries = []
    for i, s in enumerate(specs):
        if not complete or s["kind"] not in ("categorical", "boolean"):
            continue
        stats["columns"][s["name"]]["distinct"] = int(values[i].get("distinct") or 0)
        if s["kind"] == "boolean":
            count = stats["columns"][s["name"]]["count"]
            stats["columns"][s["name"]]["true_rate"] = (
                int(values[i].get("true") or 0) / count if count else None
            )
        ref = ref_columns.get(s["name"])
        wanted = ""
        if ref and ref.get("kind") == s["kind"] and ref.get("top"):
            listed = ", ".join(literal(str(value)) for value, _n in ref["top"])
            wanted = f" OR v IN ({listed})"
            s["reference_top"] = [str(value) for value, _n in ref["top"]]
        top_queries.append(
            f"SELECT {i} AS i, v, n, rk FROM (SELECT CAST({s['q']} AS VARCHAR) AS v, count(*) AS n,"
            f" row_number() OVER (ORDER BY count(*) DESC, CAST({s['q']} AS VARCHAR)) AS rk "
            f"FROM {relation} WHERE {s['q']} IS NOT NULL GROUP BY 1) "
            f"WHERE rk <= {TOP_VALUES}{wanted}"
        )
    if top_queries:
        found: dict[int, dict[str, tuple[int, int]]] = {}
        for i, value, n, rank in con.execute(" UNION ALL ".join(top_queries)).fetchall():
            found.setdefault(int(i), {})[value] = (int(n), int(rank))
        for i, s in enumerate(specs):
            if not complete or s["kind"] not in ("categorical", "boolean"):
                continue
            entry = stats["columns"][s["name"]]
            counts = found.get(i, {})
            top = sorted(
                ([v, n] for v, (n, rank) in counts.items() if rank <= TOP_VALUES),
                key=lambda t: (-t[1], t[0]),
            )
            entry["top"] = top
            entry["other"] = entry["count"] - sum(n for _v, n in top)
            if "reference_top" in s:
                entry["_reference_counts"] = [counts.get(v, (0, 0))[0] for v in s["reference_top"]]
    if complete and reference is not None:
        drift(stats, reference)
    return stats


def measure_vectors(
    vectors: Any, expected_dimension: int | None, reference: dict[str, Any] | None
) -> dict[str, Any]:
    """Norms, dimension and centroid of a matrix of vectors (numpy, one row per vector)."""
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float64)
    if matrix.ndim != 2:
        matrix = matrix.reshape(0, expected_dimension or 0)
    count, dimension = matrix.shape
    finite = np.isfinite(matrix).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(matrix), matrix, 0.0), axis=1)
    usable = finite & (norms > 0)
    out: dict[str, Any] = {
        "count": int(count),
        "dimension": int(dimension),
        "expected_dimension": expected_dimension,
        "dimension_ok": expected_dimension is None or dimension == expected_dimension,
        "non_finite": int((~finite).sum()),
        "zero": int((finite & (norms == 0)).sum()),
    }
    good = norms[finite]
    if good.size:
        points = np.quantile(good, QUANTILES)
        out["norm"] = {
            "min": float(good.min()),
            "max": float(good.max()),
            "mean": float(good.mean()),
            "std": float(good.std(ddof=1)) if good.size > 1 else None,
            "quantiles": {
                f"p{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, points, strict=True)
            },
        }
        out["non_unit"] = int((np.abs(good - 1.0) > 1e-3).sum())
        lo, hi = float(good.min()), float(good.max())
        if hi > lo:
            counts, edges = np.histogram(good, bins=HISTOGRAM_BINS, range=(lo, hi))
            out["norm_histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
        else:
            out["norm_histogram"] = {"edges": [lo, hi], "counts": [int(good.size)]}
    if usable.any():
        units = matrix[usable] / norms[usable][:, None]
        centroid = units.mean(axis=0)
        out["centroid"] = [round(float(v), 6) for v in centroid]
        out["centroid_norm"] = float(np.linalg.norm(centroid))
        ref = (reference or {}).get("vectors", {}).get("centroid")
        if ref is not None:
            shift = centroid_shift(out["centroid"], ref)
            if shift is not None:
                out["drift"] = {"centroid_shift": shift, "reference_job": reference.get("job_id")}
    return out
