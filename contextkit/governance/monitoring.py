"""Monitoring of materialized views: data-quality statistics, drift, freshness and alerts.

**Statistics.** Every materialization job measures the rows it wrote, in DuckDB, before it
commits them (:class:`JobMonitor`), and stores the numbers with the job in the registry. Which
rows (the *scope*):

* a feature view's job: its online snapshot, the latest value per entity as of the job's end
  (``"online"``); a job that writes no online values (an offline-only view, a backfill of a past
  range) measures the offline rows of its range instead (``"offline"``);
* an embedding view's job: its documents, one row per key with the text and metadata columns
  (``"documents"``), plus the vectors of the table after the write.

Per column: non-null count, nulls and null rate; numbers: min, max, mean, standard deviation,
quantiles (p01 .. p99, DuckDB's ``quantile_cont``, i.e. linear interpolation), an equal-width
histogram, and the counts in the column's own decile bins; strings and booleans: the number of
distinct values and the 20 most frequent ones; timestamps: min and max. Vectors: dimension,
norms, zero and non-finite vectors, the centroid of the unit vectors.

**Drift** compares a job with its *reference*: by default the view's previous job that wrote
its stores (succeeded or warning) with the same scope; :meth:`Monitoring.set_reference` pins one
job instead. Numbers and categories: the population stability index
``PSI = sum((p_i - q_i) * ln(p_i / q_i))`` over buckets: the reference's decile bins (numbers)
or its top values plus "other" (strings, booleans), and one bucket for nulls; ``q`` are the
reference's shares, ``p`` the job's, both smoothed with half a row per bucket so that an empty
bucket stays finite. Rule of thumb: < 0.1 stable, 0.1 to 0.25 a moderate shift, > 0.25 a
significant one. Embedding views: the centroid shift, ``1 - cos(c, c_ref)`` of the mean unit
vectors (0: same direction; 1: orthogonal).

**Freshness** (:func:`freshness`): the age of the newest value a view serves (now minus the
newest event time of its online snapshot; for embedding views the time since its newest
successful job), checked against the view's ``max_staleness``, its ``ttl`` and its
``batch_schedule``. An online snapshot with no entity is ``empty``, whatever its age: the view
serves nothing. Stream views are fresh as of their newest ingested record
(:func:`stream_freshness`); realtime views are computed at request time (``request_time``).

**Alerts**: expectations (:mod:`contextkit.framework.expectations`) a job's rows failed, open until a later
job of the view passes them; failed push-based encodes (:mod:`contextkit.compute.push_embeddings`), open
until a job of the view encodes what is missing; plus, computed when asked, views whose last job
failed, views that are stale, expired, empty or late, and views whose newest job shrank the online
table by more than ``monitoring.max_online_shrink`` (:func:`online_change_warning`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.push_embeddings import ALERT_KIND as PUSH_ALERT_KIND
from contextkit.errors import ContextKitError, NotFoundError
from contextkit.framework.expectations import Outcome, evaluate, format_age
from contextkit.framework.specs import (
    EmbeddingViewSpec,
    FeatureViewSpec,
    RealtimeFeatureViewSpec,
    StreamFeatureViewSpec,
)
from contextkit.stores.registry import (
    COMPLETED_STATUSES,
    AlertRecord,
    JobRecord,
    JobStatsRecord,
    RegistryStore,
)
from contextkit.types import Bool, Float64, Int64, String, Timestamp

if TYPE_CHECKING:
    import duckdb

    from contextkit.framework.workspace import Runtime

log = logging.getLogger("contextkit.governance.monitoring")

STATS_VERSION = 1
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
HISTOGRAM_BINS = 20
TOP_VALUES = 20
VECTOR_SAMPLE = 20_000  # vectors read back from a table to measure it
PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.25
_TEMP = "ck_monitored_rows"
_TEMP_DOCUMENTS = "ck_monitored_documents"
_REFERENCE_SETTING = "monitoring.reference:{workspace}:{view}"


class ExpectationFailedError(ContextKitError):
    """A job's rows failed an expectation of a view declared with on_expectation_failure="fail";
    the job is failed and the stores are left as they were."""

    code = "expectation_failed"
    http_status = 422


class MonitoringError(ContextKitError):
    """The quality statistics of a job could not be computed."""

    code = "monitoring_error"
    http_status = 500


# -- statistics of a set of rows -------------------------------------------------------------------
def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


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


def _iso(us: Any) -> str | None:
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


def psi(reference: Sequence[float], current: Sequence[float]) -> float | None:
    """Population stability index between two histograms over the same buckets (counts).

    Each bucket is smoothed with half a row, so an empty bucket costs a finite amount. None when
    either side is empty.
    """
    ref_total, cur_total = float(sum(reference)), float(sum(current))
    if ref_total <= 0 or cur_total <= 0 or len(reference) != len(current):
        return None
    k = len(reference)
    out = 0.0
    for r, c in zip(reference, current, strict=True):
        q = (r + 0.5) / (ref_total + 0.5 * k)
        p = (c + 0.5) / (cur_total + 0.5 * k)
        out += (p - q) * math.log(p / q)
    return max(0.0, out)


def centroid_shift(current: Sequence[float], reference: Sequence[float]) -> float | None:
    """``1 - cos`` of the angle between two centroids (0: same direction, 1: orthogonal)."""
    if len(current) != len(reference) or len(current) == 0:
        return None
    dot = sum(a * b for a, b in zip(current, reference, strict=True))
    na = math.sqrt(sum(a * a for a in current))
    nb = math.sqrt(sum(b * b for b in reference))
    if na == 0 or nb == 0:
        return None
    return max(0.0, 1.0 - dot / (na * nb))


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
        q = _quote(name)
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
        q = _quote(event_column)
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
            entry.update(min=_iso(v.get("min")), max=_iso(v.get("max")))
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
            listed = ", ".join(_literal(str(value)) for value, _n in ref["top"])
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
        _drift(stats, reference)
    return stats


def _drift(stats: dict[str, Any], reference: dict[str, Any]) -> None:
    """Fill each column's PSI against ``reference`` and the summary ``stats["drift"]``."""
    worst: tuple[float, str] | None = None
    ref_job = reference.get("job_id")
    for name, entry in stats["columns"].items():
        current = entry.pop("_reference_counts", None)
        ref = reference.get("columns", {}).get(name)
        if current is None or ref is None:
            continue
        if entry["kind"] in ("numeric", "text"):
            ref_counts = list(ref["bins"]["counts"])
        else:
            ref_counts = [n for _v, n in ref["top"]] + [ref.get("other", 0)]
            current = current + [entry["count"] - sum(current)]
        value = psi([*ref_counts, ref["nulls"]], [*current, entry["nulls"]])
        if value is None:
            continue
        entry["drift"] = {"psi": value, "reference_job": ref_job}
        if worst is None or value > worst[0]:
            worst = (value, name)
    stats["drift"] = {
        "reference_job": ref_job,
        "max_psi": worst[0] if worst else None,
        "column": worst[1] if worst else None,
    }


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


def sample_vectors(path: Any, table: str, limit: int = VECTOR_SAMPLE) -> Any:
    """Up to ``limit`` vectors of a LanceDB table (its first rows) as a numpy matrix."""
    import lancedb
    import numpy as np

    handle = lancedb.connect(str(path)).open_table(table)
    column = handle.search().select(["vector"]).limit(limit).to_arrow().column("vector")
    values = column.combine_chunks()
    flat = np.asarray(values.values.to_numpy(zero_copy_only=False))
    return flat.reshape(-1, values.type.list_size)


# -- one job's monitoring --------------------------------------------------------------------------
class JobMonitor:
    """Measures one materialization job's rows, checks the view's expectations, and records both.

    ``check(...)`` runs before the job commits; when an expectation fails and the view says
    ``on_expectation_failure="fail"``, it records the numbers and the alerts and raises
    :class:`ExpectationFailedError`, so the job's except-path leaves the stores as they were.
    ``finish()`` runs after the commit: it records, and returns the job's status.
    """

    def __init__(
        self,
        registry: RegistryStore,
        workspace: str,
        view: FeatureViewSpec | EmbeddingViewSpec,
        job_id: str,
        *,
        as_of: datetime,
        complete: bool,
    ) -> None:
        self.registry = registry
        self.workspace = workspace
        self.view = view
        self.job_id = job_id
        self.as_of = as_of
        self.complete = complete
        self.expectations = view.expectations
        self.stats: dict[str, Any] | None = None
        self.scope: str | None = None
        self.outcomes: list[Outcome] = []
        self._reference: dict[str, Any] | None = None

    @classmethod
    def start(
        cls,
        registry: RegistryStore,
        workspace: str,
        view: FeatureViewSpec | EmbeddingViewSpec,
        job_id: str,
        *,
        as_of: datetime,
        enabled: bool = True,
    ) -> JobMonitor | None:
        """A monitor for the job, or None when monitoring is off and the view expects nothing."""
        if not enabled and view.expectations is None:
            return None
        return cls(registry, workspace, view, job_id, as_of=as_of, complete=enabled)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def check(self, con: duckdb.DuckDBPyConnection, query: str, *, scope: str) -> str:
        """Keep ``query``'s rows in a temporary table, measure and check them; returns the query
        that reads them back (so they are computed once)."""
        began = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TEMP TABLE {_TEMP} AS {query}").fetchall()
        self._measure(con, _TEMP, scope, began=began)
        return f"SELECT * FROM {_TEMP}"

    def check_staged(self, con: duckdb.DuckDBPyConnection, write: Any) -> None:
        """Measure and check the rows of a staged offline write (a ``StagedWrite``): its files
        named ``new-*`` hold the job's rows (``kept-*`` ones, rows kept from before)."""
        self.check_files(con, sorted(str(p) for p in write.staging.rglob("new-*.parquet")))

    def check_files(self, con: duckdb.DuckDBPyConnection, files: Sequence[str]) -> None:
        """Measure and check the offline rows in Parquet ``files``."""
        listed = ", ".join(_literal(str(f)) for f in files)
        relation = f"(SELECT * FROM read_parquet([{listed}], hive_partitioning = false))"
        self._measure(con, relation if files else None, "offline")

    def watch_documents(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Pass an embedding view's document batches (Arrow) through, keeping what
        :meth:`check_documents` measures: each text's length and the metadata columns."""
        import pyarrow as pa
        import pyarrow.compute as pc

        assert isinstance(self.view, EmbeddingViewSpec)
        text, metadata = self.view.text_column, self.view.metadata
        self._documents: list[Any] = []
        for batch in batches:
            lengths = pc.utf8_length(batch.column(text))
            kept = [lengths, *(batch.column(m) for m in metadata)]
            self._documents.append(pa.RecordBatch.from_arrays(kept, names=[text, *metadata]))
            yield batch

    def check_documents(self, con: duckdb.DuckDBPyConnection, plan: Any) -> None:
        """Measure and check an embedding view's documents, read by :meth:`watch_documents`,
        before anything is encoded or written. ``plan`` is the encode plan's statistics: when it
        changes nothing, the previous job's numbers are reused (they are the same documents)."""
        import pyarrow as pa

        began = time.perf_counter()
        previous = reference_stats(
            self.registry, self.workspace, self.view.name, "documents", exclude=self.job_id
        )
        unchanged = not (plan.new or plan.changed or plan.refreshed or plan.deleted)
        if (
            unchanged
            and previous is not None
            and not previous.get("pinned")
            and previous.get("rows") == plan.documents
            and previous.get("complete") == self.complete
        ):
            self._measure(con, None, "documents", began=began, reuse=previous)
            return
        batches = getattr(self, "_documents", [])
        if not batches:
            self._measure(con, None, "documents", began=began)
            return
        con.register(_TEMP_DOCUMENTS, pa.Table.from_batches(batches))
        self._measure(con, _TEMP_DOCUMENTS, "documents", began=began)

    def add_vectors(self, sample: Callable[[], Any], *, table_version: int | None = None) -> None:
        """Measure the vectors of an embedding view's table: ``sample()`` reads some of them.

        When the table is at the version the reference job measured (nothing changed), its
        numbers are reused instead of reading the vectors again."""
        if self.stats is None or not self.complete:
            return
        assert isinstance(self.view, EmbeddingViewSpec)
        previous = (self._reference or {}).get("vectors")
        if (
            previous
            and table_version is not None
            and previous.get("table_version") == (table_version)
        ):
            reused = {k: v for k, v in previous.items() if k != "drift"}
            if "centroid" in reused:
                reused["drift"] = {
                    "centroid_shift": 0.0,
                    "reference_job": self._reference["job_id"],  # type: ignore[index]
                }
            self.stats["vectors"] = reused
        else:
            self.stats["vectors"] = measure_vectors(sample(), self.view.dimension, self._reference)
        self.stats["vectors"]["table_version"] = table_version
        shift = self.stats["vectors"].get("drift", {}).get("centroid_shift")
        if shift is not None:
            self.stats.setdefault("drift", {})["centroid_shift"] = shift

    def _columns(self) -> tuple[list, str | None, list[str]]:
        view = self.view
        if isinstance(view, EmbeddingViewSpec):
            dtypes = {m.name: m.dtype for m in view.metadata_schema}
            columns = [(view.text_column, String)] + [(m, dtypes.get(m)) for m in view.metadata]
            return columns, None, [view.text_column]
        columns = [(f.name, f.dtype) for f in view.features]
        return columns, "event_timestamp", []

    def _measure(
        self,
        con,
        relation: str | None,
        scope: str,
        *,
        began: float | None = None,
        reuse: dict[str, Any] | None = None,
    ) -> None:
        """Measure ``relation`` (None: no rows at all) and check the expectations.

        ``reuse``: the statistics of the previous job, when the rows are known to be the same
        (their drift is then zero). ``computed_ms`` in the statistics is the time since
        ``began`` (default: now): what monitoring added to the job, copying the rows included."""
        began = time.perf_counter() if began is None else began
        self.scope = scope
        self._reference = reference_stats(
            self.registry, self.workspace, self.view.name, scope, exclude=self.job_id
        )
        columns, event_column, text_columns = self._columns()
        if not self.complete:
            wanted = set(self.expectations.not_null) | set(self.expectations.between)
            columns = [c for c in columns if c[0] in wanted]
        if reuse is not None:
            self.stats = _same_as(reuse)
        elif relation is None:
            self.stats = {"version": STATS_VERSION, "rows": 0, "complete": self.complete,
                          "columns": {}}  # fmt: skip
        else:
            try:
                self.stats = measure(
                    con,
                    relation,
                    columns,
                    event_column=event_column,
                    text_columns=text_columns,
                    between=self.expectations.between if self.expectations else None,
                    reference=self._reference if self.complete else None,
                    complete=self.complete,
                )
            except ContextKitError:
                raise
            except Exception as exc:
                raise MonitoringError(
                    f"computing the quality statistics of {self.view.name!r} failed: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    hint="materialize without them (`monitoring: {enabled: false}` in "
                    "contextkit.yaml) and report this bug",
                ) from exc
        self.stats["scope"] = scope
        if self._reference is not None:
            drift = self.stats.setdefault("drift", {})
            drift["reference_job"] = self._reference["job_id"]
            drift["reference"] = "pinned" if self._reference.get("pinned") else "previous"
        as_of_us = int(self.as_of.timestamp() * 1e6)
        expectations = self.expectations
        if expectations is not None and isinstance(self.view, EmbeddingViewSpec):
            # An embedding view's staleness is the time since its last job: checked live.
            expectations = expectations.model_copy(update={"max_staleness_seconds": None})
        self.outcomes = evaluate(expectations, self.stats, as_of_us=as_of_us)
        self.stats["expectations"] = [o.to_dict() for o in self.outcomes]
        self.stats["computed_ms"] = round((time.perf_counter() - began) * 1000, 2)
        if self.failed and self.expectations is not None and self.expectations.on_failure == "fail":
            self._record("error")
            raise ExpectationFailedError(
                f"view {self.view.name!r} failed {len(self.failed)} expectation(s): "
                + "; ".join(o.message for o in self.failed),
                hint="the stores were left as they were; fix the data (or the expectation) and "
                "run `contextkit materialize` again; `contextkit quality "
                f"{self.view.name}` shows the numbers",
                details={"expectations": [o.to_dict() for o in self.failed]},
            )

    def finish(self) -> tuple[str, str | None]:
        """Record the job's numbers and alerts; ``(status, warning)`` for the job record."""
        if self.stats is None:
            return "succeeded", None
        self._record("warning")
        if self.failed:
            return "warning", "expectation failed: " + "; ".join(o.message for o in self.failed)
        return "succeeded", None

    def _record(self, severity: str) -> None:
        assert self.stats is not None
        drift = (self.stats.get("drift") or {}) if self.stats.get("complete") else {}
        # An embedding view's drift is its centroid's; a feature view's, its largest PSI.
        max_drift = drift.get("centroid_shift") if "centroid_shift" in drift else None
        if max_drift is None:
            max_drift = drift.get("max_psi")
        newest = self.stats.get("newest_event_us")
        if isinstance(self.view, EmbeddingViewSpec):
            newest = int(self.as_of.timestamp() * 1e6)
        record = JobStatsRecord(
            job_id=self.job_id,
            workspace=self.workspace,
            view=self.view.name,
            created_at=time.time(),
            scope=self.scope or "online",
            rows=self.stats.get("rows"),
            newest_event=None if newest is None else newest / 1e6,
            max_drift=max_drift,
            stats=self.stats,
        )
        now = time.time()
        raised = [
            AlertRecord(
                id=uuid.uuid4().hex[:12],
                workspace=self.workspace,
                view=self.view.name,
                kind=o.kind,
                subject=o.subject,
                severity=severity,
                message=o.message,
                details=o.to_dict(),
                job_id=self.job_id,
                created_at=now,
                updated_at=now,
            )
            for o in self.failed
        ]
        self.registry.save_job_monitoring(record, self.workspace, self.view.name, raised)


def _same_as(previous: dict[str, Any]) -> dict[str, Any]:
    """The previous job's statistics for rows known to be the same: no drift against it."""
    import copy

    stats = copy.deepcopy(
        {
            k: v
            for k, v in previous.items()
            if k not in ("job_id", "pinned", "expectations", "vectors")
        }
    )
    for entry in stats.get("columns", {}).values():
        if entry.get("kind") in ("numeric", "text", "categorical", "boolean"):
            entry["drift"] = {"psi": 0.0, "reference_job": previous["job_id"]}
    stats["drift"] = {"reference_job": previous["job_id"], "max_psi": 0.0, "column": None}
    stats["reused_from"] = previous["job_id"]
    return stats


def reference_stats(
    registry: RegistryStore, workspace: str, view: str, scope: str, *, exclude: str | None = None
) -> dict[str, Any] | None:
    """The statistics a new job of ``view`` is compared with: the pinned reference job when one
    is set (and has the scope), else the newest job that wrote the stores with that scope."""
    pinned = registry.get_setting(_REFERENCE_SETTING.format(workspace=workspace, view=view))
    if pinned:
        record = registry.get_job_stats(pinned)
        if record is not None and record.scope == scope and record.stats.get("complete"):
            return {**record.stats, "job_id": record.job_id, "pinned": True}
    for record in registry.list_job_stats(workspace, view, limit=20, completed_only=True):
        if record.job_id != exclude and record.scope == scope and record.stats.get("complete"):
            return {**record.stats, "job_id": record.job_id}
    return None


# -- freshness -------------------------------------------------------------------------------------
FRESHNESS_STATES = ("fresh", "late", "stale", "expired", "empty", "never", "request_time")

AnyView = FeatureViewSpec | EmbeddingViewSpec | StreamFeatureViewSpec | RealtimeFeatureViewSpec


@dataclass(frozen=True)
class Freshness:
    """How old a view's served data is, and whether that is within its declared limits.

    ``state``: ``never`` (no job ever wrote it; a stream view: no record ingested), ``empty``
    (its online table holds no entity: nothing is served), ``expired`` (the newest value is older
    than the view's ttl: nothing is served), ``stale`` (older than ``max_staleness``), ``late``
    (no successful job for more than twice the ``batch_schedule``: a run was missed),
    ``request_time`` (a realtime view: computed per request, nothing is stored), or ``fresh``.
    """

    state: str
    newest_event: float | None  # the newest event time served (Unix seconds)
    data_age_s: float | None  # now minus newest_event
    materialized_at: float | None  # the "as of" time of the newest successful job (its end)
    lag_s: float | None  # now minus materialized_at
    schedule_s: int | None
    ttl_s: int | None
    max_staleness_s: int | None
    reasons: list[str] = field(default_factory=list)
    online_rows: int | None = None  # entities in the online table (None: unknown or none kept)
    last_ingest: float | None = None  # stream views: when the newest record arrived

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["newest_event"] = _iso_s(self.newest_event)
        out["materialized_at"] = _iso_s(self.materialized_at)
        out["last_ingest"] = _iso_s(self.last_ingest)
        return out


@dataclass(frozen=True)
class OnlineSnapshot:
    """What the newest job that refreshed a view's online table left there, and what the job
    before it (that refreshed it) had left."""

    job: JobRecord
    rows: int
    previous_rows: int | None
    previous_job: str | None


def refreshed_online(job: JobRecord) -> bool:
    """Whether a completed job replaced its view's online table (a backfill of a past range or
    an offline-only view does not). Jobs recorded before this was kept count when they wrote
    entities."""
    if job.status not in COMPLETED_STATUSES:
        return False
    if "online" in job.details:
        return bool(job.details["online"])
    return bool(job.rows_online)


def online_snapshot(jobs: Iterable[JobRecord]) -> OnlineSnapshot | None:
    """The online snapshot of a view from its jobs (newest first); None when no job wrote it."""
    found = [j for j in jobs if refreshed_online(j)][:2]
    if not found:
        return None
    previous = found[1] if len(found) > 1 else None
    return OnlineSnapshot(
        found[0],
        int(found[0].rows_online or 0),
        None if previous is None else int(previous.rows_online or 0),
        None if previous is None else previous.id,
    )


def online_change_warning(
    view: FeatureViewSpec,
    rows: int,
    previous: int | None,
    max_shrink: float | None,
    *,
    end: str | None = None,
) -> str | None:
    """Why a job's online snapshot of ``rows`` entities (``previous`` before it) is suspicious,
    or None: it is empty (always), or it lost more than ``max_shrink`` (a share) of a populated
    table. The job's warning and the view's alert share this text."""
    where = f"online table of {view.name!r}"
    if rows == 0:
        before = f", the previous job left {previous:,}" if previous else ""
        why = (
            f"no entity has a value within the ttl ({format_age(view.ttl_seconds)}) before the "
            f"job's end{f' {end}' if end else ''}"
            if view.ttl_seconds
            else "the view's query returned no row as of the job's end"
        )
        return (
            f"the {where} is empty: this job left 0 entities{before}; the view serves nothing "
            f"({why}: check --end and the source's newest rows)"
        )
    if previous and max_shrink is not None and rows < previous * (1.0 - max_shrink):
        lost = 1.0 - rows / previous
        return (
            f"the {where} shrank by {lost:.0%}: {rows:,} entities, {previous:,} before "
            f"(monitoring.max_online_shrink is {max_shrink:.0%})"
        )
    return None


def _iso_s(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def freshness(
    view: FeatureViewSpec | EmbeddingViewSpec,
    completed: JobRecord | None,
    stats: JobStatsRecord | None,
    *,
    now: float | None = None,
    online: OnlineSnapshot | None = None,
) -> Freshness:
    """The freshness of ``view`` given its newest completed job, the statistics of its online
    snapshot (``stats``) and what that snapshot holds (``online``; None: not known)."""
    now = time.time() if now is None else now
    embedding = isinstance(view, EmbeddingViewSpec)
    schedule = None if embedding else view.batch_schedule_seconds
    ttl = None if embedding else (view.ttl_seconds or view.max_window_seconds or None)
    limit = view.expectations.max_staleness_seconds if view.expectations else None
    if completed is None:
        return Freshness(
            "never", None, None, None, None, schedule, ttl, limit, ["never materialized"]
        )
    materialized = _parse_time(completed.range_end) or completed.finished_at
    newest = materialized if embedding else (stats.newest_event if stats is not None else None)
    lag = None if materialized is None else max(0.0, now - materialized)
    age = None if newest is None else max(0.0, now - newest)
    reasons, state = [], "fresh"
    if schedule and lag is not None and lag > 2 * schedule:
        state = "late"
        reasons.append(
            f"last successful job {format_age(lag)} ago; scheduled every {format_age(schedule)}"
        )
    measured = age if age is not None else lag
    if limit and measured is not None and measured > limit:
        state = "stale"
        reasons.insert(
            0, f"newest value is {format_age(measured)} old; max_staleness {format_age(limit)}"
        )
    if ttl and age is not None and age > ttl and not embedding:
        state = "expired"
        reasons.insert(0, f"newest value is {format_age(age)} old, past the ttl {format_age(ttl)}")
    rows = None if online is None or embedding or not view.online else online.rows
    if rows == 0:
        state = "empty"
        before = (
            f" (the job before, {online.previous_job}, left {online.previous_rows:,})"
            if online.previous_rows
            else ""
        )
        reasons.insert(
            0,
            f"the online table is empty, the view serves nothing: job {online.job.id} left 0 "
            f"entities{before}",
        )
    return Freshness(
        state, newest, age, materialized, lag, schedule, ttl, limit, reasons, online_rows=rows
    )


def stream_freshness(
    view: StreamFeatureViewSpec, last_ingest: float | None, *, now: float | None = None
) -> Freshness:
    """A stream view's freshness: the time since its source's newest ingested record. Past the
    view's ttl (or its largest window) every value it served has aged out: ``expired``."""
    now = time.time() if now is None else now
    ttl = view.ttl_seconds or view.max_window_seconds or None
    if last_ingest is None:
        return Freshness(
            "never", None, None, None, None, None, ttl, None,
            [f"no record ingested into push source {view.source!r} yet"],
        )  # fmt: skip
    age = max(0.0, now - last_ingest)
    state, reasons = "fresh", [f"newest record ingested {format_age(age)} ago"]
    if ttl and age > ttl:
        state = "expired"
        reasons.insert(
            0, f"no record ingested for {format_age(age)}, past the ttl {format_age(ttl)}"
        )
    return Freshness(
        state, None, age, None, None, None, ttl, None, reasons, last_ingest=last_ingest
    )


def realtime_freshness(view: RealtimeFeatureViewSpec) -> Freshness:
    """A realtime view is computed at request time: nothing is materialized, nothing ages."""
    inputs = f" from {', '.join(view.inputs)} and the request" if view.inputs else ""
    return Freshness(
        "request_time", None, None, None, None, None, None, None,
        [f"computed at request time{inputs}; nothing is materialized"],
    )  # fmt: skip


# -- the facade: what the CLI, the server and the UI read ----------------------------------------
@dataclass(frozen=True)
class Alert:
    """An alert as users see it: stored (expectations) or computed now (freshness, failures)."""

    id: str
    workspace: str
    view: str
    source: str  # "expectation", "push", "freshness", "job" or "online"
    kind: str
    subject: str
    severity: str
    message: str
    job_id: str | None
    since: float
    updated_at: float
    resolved_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("since", "updated_at", "resolved_at"):
            out[key] = _iso_s(out[key])
        return out


@dataclass(frozen=True)
class ViewStatus:
    """One view's state: its newest job, its freshness, its numbers and its open alerts."""

    workspace: str
    name: str
    kind: str
    last_job: JobRecord | None
    last_completed: JobRecord | None
    stats: JobStatsRecord | None
    freshness: Freshness
    alerts: list[Alert]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "last_job": job_dict(self.last_job) if self.last_job else None,
            "rows": self.stats.rows if self.stats else None,
            "max_drift": self.stats.max_drift if self.stats else None,
            "freshness": self.freshness.to_dict(),
            "alerts": [a.to_dict() for a in self.alerts],
        }


def job_dict(job: JobRecord) -> dict[str, Any]:
    """A job record as JSON (times in ISO 8601)."""
    return {
        "id": job.id,
        "workspace": job.workspace,
        "view": job.view,
        "status": job.status,
        "range_start": job.range_start,
        "range_end": job.range_end,
        "rows_offline": job.rows_offline,
        "rows_online": job.rows_online,
        "started_at": _iso_s(job.started_at),
        "finished_at": _iso_s(job.finished_at),
        "duration_s": job.duration_s,
        "error": job.error,
        "kind": job.details.get("kind", "batch_feature_view"),
    }


class Monitoring:
    """Quality, drift, freshness and alerts of a workspace's views: ``ctx.monitoring``.

    ::

        ctx.monitoring.status()                  # one ViewStatus per view
        ctx.monitoring.quality("user_profile")   # the numbers of its newest job, and its history
        ctx.monitoring.alerts()                  # open alerts, newest first
    """

    def __init__(self, ctx: Runtime) -> None:
        self.ctx = ctx
        self.registry = ctx.registry

    def _views(self, workspace: str | None) -> dict[str, AnyView]:
        specs = self.ctx.specs(workspace)
        return {
            **specs.views,
            **specs.embedding_views,
            **specs.stream_views,
            **specs.realtime_views,
        }

    def status(self, workspace: str | None = None, *, now: float | None = None) -> list[ViewStatus]:
        """Every view of the workspace (batch, stream, realtime and embedding views) with its
        newest job, freshness and alerts."""
        name = workspace or self.ctx.workspace
        views = self._views(name)
        latest = {j.view: j for j in self.registry.latest_jobs(name)}
        completed = {j.view: j for j in self.registry.last_succeeded_jobs() if j.workspace == name}
        stats = {s.view: s for s in self.registry.latest_job_stats(name, with_stats=False)}
        stored: dict[str, list[Alert]] = {}
        for record in self.registry.list_alerts(name):
            stored.setdefault(record.view, []).append(_stored_alert(record))
        max_shrink = self.ctx.config.monitoring.max_online_shrink
        ingested: dict[str, float | None] = {}
        out = []
        for view_name in sorted(views):
            view = views[view_name]
            done = completed.get(view_name)
            view_stats = stats.get(view_name)
            snapshot = None
            if isinstance(view, StreamFeatureViewSpec):
                if view.source not in ingested:
                    from contextkit.compute.streaming import last_ingest_time

                    ingested[view.source] = last_ingest_time(self.ctx, name, view.source)
                fresh = stream_freshness(view, ingested[view.source], now=now)
            elif isinstance(view, RealtimeFeatureViewSpec):
                fresh = realtime_freshness(view)
            else:
                if isinstance(view, FeatureViewSpec) and view.online and done is not None:
                    snapshot = online_snapshot(self.registry.list_jobs(name, view_name, 50))
                fresh = freshness(
                    view, done, self._snapshot_stats(view_stats, snapshot), now=now,
                    online=snapshot,
                )  # fmt: skip
            alerts = [
                a for a in stored.get(view_name, []) if not _repaired(a, done)
            ] + _live_alerts(name, view, latest.get(view_name), fresh, snapshot, max_shrink)
            out.append(
                ViewStatus(
                    name,
                    view_name,
                    view.kind,
                    latest.get(view_name),
                    done,
                    view_stats,
                    fresh,
                    sorted(alerts, key=_alert_order),
                )
            )
        return out

    def _snapshot_stats(
        self, newest: JobStatsRecord | None, snapshot: OnlineSnapshot | None
    ) -> JobStatsRecord | None:
        """The statistics of the job that wrote the online snapshot: the newest measured job's,
        unless that one did not refresh it (a backfill), else the snapshot job's own."""
        if snapshot is None or (newest is not None and newest.job_id == snapshot.job.id):
            return newest
        record = self.registry.get_job_stats(snapshot.job.id)
        return record if record is not None and record.scope == "online" else None

    def alerts(
        self, workspace: str | None = None, *, include_resolved: bool = False
    ) -> list[Alert]:
        """Open alerts of the workspace's views (with ``include_resolved``, resolved ones too),
        errors first, then newest first."""
        name = workspace or self.ctx.workspace
        views = self._views(name)
        out: list[Alert] = []
        for status in self.status(name):
            out.extend(status.alerts)
        if include_resolved:
            out += [
                _stored_alert(r)
                for r in self.registry.list_alerts(name, open_only=False)
                if r.resolved_at is not None and r.view in views
            ]
        return sorted(out, key=_alert_order)

    def quality(self, view: str, *, job: str | None = None, runs: int = 30) -> dict[str, Any]:
        """The numbers of a view's newest measured job (or of ``job``), and its history.

        ``{"view", "kind", "job", "stats", "history": [{"job_id", "status", "at", "rows",
        "max_drift", "null_rates": {...}, "psi": {...}}, ...]}`` (history newest first).
        """
        spec = self._view(view)
        workspace = self.ctx.workspace
        records = self.registry.list_job_stats(workspace, view, limit=runs)
        chosen = None
        if job is not None:
            chosen = self.registry.get_job_stats(job)
            if chosen is None or chosen.view != view or chosen.workspace != workspace:
                raise NotFoundError(
                    f"job {job!r} of view {view!r} has no quality statistics",
                    hint=f"`contextkit jobs --view {view}` lists its jobs",
                )
        elif records:
            chosen = next((r for r in records if r.status in COMPLETED_STATUSES), records[0])
        history = [
            {
                "job_id": r.job_id,
                "status": r.status,
                "at": _iso_s(r.created_at),
                "scope": r.scope,
                "rows": r.rows,
                "max_drift": r.max_drift,
                "null_rates": {n: c.get("null_rate") for n, c in r.stats["columns"].items()},
                "psi": {
                    n: (c.get("drift") or {}).get("psi") for n, c in r.stats["columns"].items()
                },
                "centroid_shift": (r.stats.get("vectors") or {})
                .get("drift", {})
                .get("centroid_shift"),
                "failed": [e["message"] for e in r.stats.get("expectations", []) if not e["ok"]],
            }
            for r in records
        ]
        pinned = self.registry.get_setting(
            _REFERENCE_SETTING.format(workspace=workspace, view=view)
        )
        return {
            "workspace": workspace,
            "view": view,
            "kind": spec.kind,
            "job": chosen.job_id if chosen else None,
            "job_status": chosen.status if chosen else None,
            "scope": chosen.scope if chosen else None,
            "stats": chosen.stats if chosen else None,
            "reference": pinned or "previous",
            "history": history,
        }

    def set_reference(self, view: str, job: str | None) -> None:
        """Pin the job later jobs of ``view`` measure drift against (None: the previous job)."""
        self._view(view)
        key = _REFERENCE_SETTING.format(workspace=self.ctx.workspace, view=view)
        if job is None:
            self.registry.set_setting(key, "")
            return
        record = self.registry.get_job_stats(job)
        if record is None or record.view != view or record.workspace != self.ctx.workspace:
            raise NotFoundError(
                f"job {job!r} of view {view!r} has no quality statistics to compare with",
                hint=f"pick a job of {view} from `contextkit quality {view}`",
            )
        self.registry.set_setting(key, job)

    def _view(self, name: str) -> FeatureViewSpec | EmbeddingViewSpec:
        views = self._views(None)
        if name not in views:
            raise NotFoundError(
                f"unknown view {name!r} in workspace {self.ctx.workspace!r}",
                hint="views: " + (", ".join(sorted(views)) or "none applied"),
            )
        return views[name]


def _stored_alert(record: AlertRecord) -> Alert:
    return Alert(
        id=record.id,
        workspace=record.workspace,
        view=record.view,
        source="expectation",
        kind=record.kind,
        subject=record.subject,
        severity=record.severity,
        message=record.message,
        job_id=record.job_id,
        since=record.created_at,
        updated_at=record.updated_at,
        resolved_at=record.resolved_at,
    )


def _repaired(alert: Alert, completed: JobRecord | None) -> bool:
    """A failed push-based encode is repaired by a job of the view that started after it (a
    materialization encodes whatever the ingest log holds that the table lacks); with monitoring
    on, that job also resolves the stored alert."""
    return (
        alert.kind == PUSH_ALERT_KIND
        and completed is not None
        and completed.started_at > alert.updated_at
    )


def _live_alerts(
    workspace: str,
    view: AnyView,
    last_job: JobRecord | None,
    fresh: Freshness,
    snapshot: OnlineSnapshot | None = None,
    max_shrink: float | None = None,
) -> list[Alert]:
    out = []
    now = time.time()
    if last_job is not None and last_job.status == "failed":
        out.append(
            Alert(
                id=f"job:{workspace}:{view.name}",
                workspace=workspace,
                view=view.name,
                source="job",
                kind="job_failed",
                subject="",
                severity="error",
                message=f"last job {last_job.id} failed: {last_job.error or 'no error recorded'}",
                job_id=last_job.id,
                since=last_job.finished_at or last_job.started_at,
                updated_at=last_job.finished_at or last_job.started_at,
            )
        )
    if fresh.state in ("late", "stale", "expired", "empty"):
        expectations = getattr(view, "expectations", None)
        fail = expectations is not None and expectations.on_failure == "fail"
        error = fresh.state == "empty" or (fresh.state == "stale" and fail)
        out.append(
            Alert(
                id=f"freshness:{workspace}:{view.name}",
                workspace=workspace,
                view=view.name,
                source="freshness",
                kind=fresh.state,
                subject="",
                severity="error" if error else "warning",
                message="; ".join(fresh.reasons),
                job_id=snapshot.job.id if fresh.state == "empty" and snapshot else None,
                since=fresh.materialized_at or fresh.last_ingest or now,
                updated_at=now,
            )
        )
    if snapshot is not None and snapshot.rows > 0 and isinstance(view, FeatureViewSpec):
        shrank = online_change_warning(view, snapshot.rows, snapshot.previous_rows, max_shrink)
        if shrank is not None:
            job = snapshot.job
            out.append(
                Alert(
                    id=f"online:{workspace}:{view.name}",
                    workspace=workspace,
                    view=view.name,
                    source="online",
                    kind="online_shrink",
                    subject="",
                    severity="warning",
                    message=f"job {job.id}: {shrank}",
                    job_id=job.id,
                    since=job.finished_at or job.started_at,
                    updated_at=job.finished_at or job.started_at,
                )
            )
    return out


def _alert_order(alert: Alert) -> tuple:
    return (alert.severity != "error", -alert.updated_at, alert.view, alert.kind)


def summarize_alerts(alerts: Iterable[Alert]) -> dict[str, int]:
    """``{"error": n, "warning": m}``: how many alerts of each severity."""
    out = {"error": 0, "warning": 0}
    for alert in alerts:
        out[alert.severity] = out.get(alert.severity, 0) + 1
    return out


def stats_json(stats: dict[str, Any] | None) -> str:
    """Statistics as compact JSON (for logs and tests)."""
    return json.dumps(stats, separators=(",", ":"), default=str)
