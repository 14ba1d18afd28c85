"""The vector store: embedding-view chunks in LanceDB tables, written atomically, searched fast.

``LanceVectorStore(path)`` keeps one LanceDB table per name in a local folder or on object storage
(``s3://bucket/prefix``; the core names them ``f"{workspace}__{view}"``). A table holds one row
per chunk::

    id            string   chunk id (``doc-1#0``), unique
    <key columns>          the parent document's key (one or more columns, their source types)
    chunk_index   int32    position of the chunk in its document
    char_offset   int64    where the chunk starts in the document's text
    text          string   the chunk text (full-text indexed)
    content_hash  string   sha256(model, dimension, text): decides re-encoding
    row_hash      string   also covers key, offsets, metadata: decides rewriting
    vector        fixed_size_list<float32>[dim]
    <metadata columns>     for filters, returned with each hit
    updated_at    timestamp[us, UTC]   set by the store on every written row

The key column names live in the Arrow schema metadata (``contextkit.key_columns``).

Writes (:meth:`LanceVectorStore.apply_changes`) are one LanceDB commit: upserts stream into a
single ``merge_insert`` on ``id`` that also deletes the given ids
(``when_not_matched_by_source_delete``). Lance commits a new table version only when the whole
stream has been written, so a failure half-way (an encoder error raised from the upserts
iterator) commits nothing and readers keep seeing the previous version; as a second line of
defence the store restores the version it started from if the table moved anyway, and drops a
table it created in the failed call. Old versions stay restorable (:meth:`restore`) until
:meth:`ensure_indexes` prunes those older than a week.

Search (:meth:`LanceVectorStore.search`): ``mode="vector"`` (cosine similarity, score =
1 - cosine distance), ``"text"`` (BM25 over the full-text index on ``text``, score = BM25) or
``"hybrid"`` (both, fused by reciprocal rank fusion, score = sum of 1 / (60 + rank)). Filters are a
dict validated against the table's key and metadata columns and compiled to a LanceDB
``Expr`` (never a spliced SQL string), see :func:`compile_filter`.

Latency (measured on this 2-core machine while other jobs ran; 384-dim vectors, top 10): a
LanceDB query costs 8-12 ms whatever the size up to 20k rows (vector, filtered vector or BM25),
while the same exact search in numpy takes ~0.7 ms at 1k rows, ~2 ms at 5k and ~5 ms at 20k,
including the ~0.3 ms version check. So tables up to ``exact_search_max_rows`` (default 20,000)
are searched exactly in numpy, from a per-process copy of the table (about rows x dim x 4 bytes,
at most ``exact_cache_tables`` tables) keyed by table version, so another writer's commit is seen
on the next query. Its results are LanceDB's flat search's: same cosine distance (to float
rounding), filters evaluated with the same null semantics (pyarrow compute), ties ordered by id
in both paths; the Lance path is used when a filter touches a float column holding NaN (SQL and
IEEE order NaN differently). Hybrid queries still pay LanceDB's full-text query (~8 ms).
``exact_search_max_rows=0`` turns the copy off. Above the threshold the ANN index built by
:meth:`LanceVectorStore.ensure_indexes` serves vector queries.

On S3 (``s3://bucket/prefix``) LanceDB reads and writes the object store natively, with the
endpoint, region and credentials of the standard AWS variables
(:class:`~contextkit.stores.objectstore.S3Settings`, so MinIO, R2 and moto work) and bounded
timeouts and retries. What it costs: every LanceDB call is one or more object-store requests,
so a query LanceDB answers (full-text, hybrid's text leg, ANN above ``exact_search_max_rows``)
takes tens to hundreds of ms on AWS instead of ~10 ms on a local disk, and opening a table or
loading the exact-search copy downloads it. Small tables therefore keep being served from the
in-memory copy: a vector search costs the one version check a query makes (one request; pass
``read_consistency_interval=timedelta(seconds=1)`` to skip it between checks, so other nodes'
commits are seen within a second) plus the numpy search. Keep large, hot tables on a local disk
of the serving nodes if their latency matters. A missing bucket, refused credentials and an
unreachable endpoint are one :class:`~contextkit.stores.errors.ObjectStoreUnavailable` each,
checked with one request when the store opens. Nothing of the store is a local file on S3:
:attr:`LanceVectorStore.path` raises there (use :attr:`~LanceVectorStore.uri` and
:meth:`~LanceVectorStore.sample_vectors`).
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contextkit.stores.errors import MissingError, StoreFailure, StoreUnavailable
from contextkit.stores.objectstore import Location, S3Settings, is_s3, open_location, translate

SYSTEM_COLUMNS = (
    "id",
    "chunk_index",
    "char_offset",
    "text",
    "content_hash",
    "row_hash",
    "vector",
    "updated_at",
)
"""Columns every vector table has; the rest are key and metadata columns."""

KEY_COLUMNS_METADATA = b"contextkit.key_columns"
RRF_K = 60
MAX_TOP_K = 1000
MAX_IN_VALUES = 1000
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REQUIRED_TYPES = {
    "id": pa.string(),
    "chunk_index": pa.int32(),
    "char_offset": pa.int64(),
    "text": pa.string(),
    "content_hash": pa.string(),
    "row_hash": pa.string(),
}
_UPDATED_AT = pa.timestamp("us", tz="UTC")
_perf = time.perf_counter
_monotonic = time.monotonic
_STORE = "vector store"


# -- errors --------------------------------------------------------------------------------------


class VectorStoreError(StoreFailure):
    """The vector store cannot do what was asked."""

    code = "vector_store_error"
    http_status = 500


class VectorTableMissingError(MissingError):
    """The table does not exist (the view was never materialized, or was dropped)."""

    code = "vector_table_missing"
    http_status = 404


class VectorSchemaError(VectorStoreError):
    """The rows don't fit the table: another vector dimension, other columns."""

    code = "vector_schema_mismatch"
    http_status = 409


class InvalidFilterError(VectorStoreError):
    """A search filter names an unknown column, an unknown operator or a wrongly typed value."""

    code = "invalid_filter"
    http_status = 400


class InvalidSearchError(VectorStoreError):
    """A search request is malformed: mode, top_k, query vector or text."""

    code = "invalid_search"
    http_status = 400


class VectorTableUnreadableError(StoreUnavailable):
    """LanceDB cannot read the table's files (damaged, or removed by hand)."""

    code = "store_error"
    http_status = 503


class VectorTableLostError(VectorTableMissingError, VectorTableUnreadableError):
    """A table this process was reading has been deleted behind its back (not by
    :meth:`LanceVectorStore.drop_table`). Missing for a materialization, which rebuilds it;
    unreadable (503, not 404) for a search, until then."""

    code = "store_error"
    http_status = 503


def _object_store(doing: str):
    """On S3, turn the object store's failures in the method into one clear error (missing
    bucket, refused credentials, unreachable endpoint); other errors pass through."""

    def wrap(method):
        @functools.wraps(method)
        def run(self: LanceVectorStore, *args: Any, **kwargs: Any) -> Any:
            if self._loc is None:
                return method(self, *args, **kwargs)
            with self._loc.translating(_STORE, doing):
                return method(self, *args, **kwargs)

        return run

    return wrap


def _reads_table(method):
    """Turn LanceDB's own errors while reading ``table`` (the method's first argument) into a
    :class:`VectorTableUnreadableError`, or a :class:`VectorTableLostError` when the table has
    gone. LanceDB raises OSError, RuntimeError or ValueError for files it cannot find or read."""

    @functools.wraps(method)
    def reading(self: LanceVectorStore, table: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, table, *args, **kwargs)
        except StoreFailure:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            raise self._unreadable(table.split("@", 1)[0], exc) from exc

    return reading


def _lance_reason(exc: BaseException) -> str:
    """LanceDB's message without the Rust source location it appends."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r",\s*/\S+\.rs:\d+:\d+", "", text)[:300]


# -- values --------------------------------------------------------------------------------------


class ChunkHashes(NamedTuple):
    """What the pipeline compares per chunk id (``existing_hashes`` values)."""

    content_hash: str
    row_hash: str


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of one :meth:`LanceVectorStore.apply_changes` (one commit, or none)."""

    version: int | None
    previous_version: int | None
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    created: bool = False

    @property
    def committed(self) -> bool:
        return self.version != self.previous_version


@dataclass
class IndexReport:
    """What :meth:`LanceVectorStore.ensure_indexes` did."""

    rows: int
    created: list[str] = field(default_factory=list)
    optimized: bool = False
    plan: SearchPlan | None = None  # how vector queries are answered now
    calibrated: bool = False  # the plan was measured in this call (not only carried on)


# -- filters -------------------------------------------------------------------------------------

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


# -- the store -----------------------------------------------------------------------------------


def _ann_config(rows: int, dim: int) -> Any:
    """The ANN index for a table of ``rows`` vectors.

    IVF_HNSW_SQ (a graph over 8-bit scalar-quantized vectors) keeps recall ~1.0 at the sizes an
    embedding view usually has, where IVF_PQ loses a lot without a refine step (measured here on
    5k-20k x 384 random unit vectors: recall@10 1.0 vs 0.2-0.3). Partitions follow LanceDB's
    target of ~1M rows each. Past 10M rows, IVF_PQ with sqrt(rows) partitions and dim/16 (or /8,
    /4) sub-vectors keeps the index in memory; queries then refine the top candidates.
    """
    from lancedb.index import HnswSq, IvfPq

    if rows <= 10_000_000:
        return HnswSq(distance_type="cosine", num_partitions=max(1, round(rows / 1_000_000)))
    sub = next((dim // d for d in (16, 8, 4, 2) if dim % d == 0), 1)
    return IvfPq(distance_type="cosine", num_partitions=int(math.sqrt(rows)), num_sub_vectors=sub)


CALIBRATION_TARGET = 0.99
"""The share of exact search's top-k that a calibrated ANN query must find."""
CALIBRATION_K = 10
CALIBRATION_SAMPLE = 200
RECALIBRATE_GROWTH = 0.10
"""A plan is measured again once the table's row count moved this much (or an index changed)."""
_PLAN_FOLDER = "_contextkit_search"
_PLAN_REREAD_S = 2.0
# Query parameters tried in order of cost until one reaches the target recall. HNSW over 8-bit
# scalar-quantized vectors ranks by approximate distances: without a refine step (re-scoring
# ``refine_factor`` x k candidates with the stored float vectors) its recall@10 stalled at ~0.97
# here whatever ``ef``; with refine_factor 2 it reached 1.0 at ef 32 (30k clustered vectors).
_HNSW_GRID: tuple[dict[str, int], ...] = (
    {"ef": 16},
    {"ef": 32},
    {"ef": 32, "refine_factor": 2},
    {"ef": 64, "refine_factor": 2},
    {"ef": 64, "refine_factor": 4},
    {"ef": 128, "refine_factor": 4},
    {"ef": 256, "refine_factor": 4},
    {"ef": 256, "refine_factor": 8},
    {"ef": 512, "refine_factor": 8},
    {"ef": 1024, "refine_factor": 16},
)
_IVF_GRID: tuple[dict[str, int], ...] = tuple(
    {"nprobes": n, "refine_factor": r} for n in (16, 32, 64, 128, 256, 512) for r in (5, 10, 20)
)


def _scaled(params: Mapping[str, int], limit: int, k: int) -> dict[str, int]:
    """Calibrated parameters for a query of ``limit`` rows: ``ef`` grows with the depth asked
    (calibrated for ``k``) and stays at least ``limit x refine_factor``, as LanceDB requires."""
    out = dict(params)
    if "ef" in out:
        refine = out.get("refine_factor", 1)
        out["ef"] = max(out["ef"], math.ceil(out["ef"] * limit / max(k, 1)), limit * refine)
    return out


@dataclass(frozen=True)
class SearchPlan:
    """How vector queries on one table are answered, chosen by :meth:`LanceVectorStore.calibrate`
    from measurements on the table's own vectors (kept next to the tables, read by every process
    that serves it).

    ``method`` is ``"exact"`` (cosine over an in-memory copy, numpy) or ``"ann"`` (LanceDB's
    index with ``params``: ``ef`` for HNSW, ``nprobes``/``refine_factor`` for IVF_PQ). ``recall``
    is the ANN's recall@``k`` against exact search over ``sample`` queries made from the table's
    rows (half rows with their own row left out, half midpoints of two rows), at ``params``;
    None when the table has no ANN index.
    ``exact_p50_ms`` / ``ann_p50_ms``: the measured query times (None: not measured, e.g. exact
    search over a table too large for the in-memory copy).
    """

    method: str
    rows: int
    version: int
    k: int
    sample: int
    target: float
    recall: float | None
    params: dict[str, int]
    index: str | None
    exact_p50_ms: float | None
    ann_p50_ms: float | None
    calibrated_at: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "rows": self.rows,
            "version": self.version,
            "k": self.k,
            "sample": self.sample,
            "target": self.target,
            "recall": self.recall,
            "params": dict(self.params),
            "index": self.index,
            "exact_p50_ms": self.exact_p50_ms,
            "ann_p50_ms": self.ann_p50_ms,
            "calibrated_at": self.calibrated_at,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchPlan:
        fields = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclass
class _Layout:
    """What a search needs to know about one version of a table."""

    version: int
    keys: list[str]
    filterable: dict[str, pa.DataType]
    dim: int
    columns: list[str]  # returned with each hit
    rows_over_exact_limit: bool = False
    vector_index: bool = False  # an ANN index answers vector queries
    plan: SearchPlan | None = None  # the table's calibrated search plan, if any


@dataclass
class _ExactCache:
    version: int
    table: pa.Table  # every column but the vector
    matrix: np.ndarray  # (n, dim) float32, rows L2-normalized
    ids: np.ndarray
    nan_columns: frozenset[str]


class LanceVectorStore:
    """Embedding-view tables in a LanceDB folder: local, or ``s3://bucket/prefix`` (``s3``: the
    S3 settings, default from the AWS variables; see the module docstring for what S3 costs).

    ``read_consistency_interval`` (default 0: every read checks for a newer version, ~0.3 ms)
    makes writes from other processes visible. ``exact_search_max_rows`` bounds the numpy
    exact-search cache (0 disables it); ``ann_min_rows`` is where :meth:`ensure_indexes` starts
    building an ANN index. Thread-safe.

    >>> store = LanceVectorStore(tmp_path / "vectors")                       # doctest: +SKIP
    >>> store.apply_changes("dev__docs", plan.batches(), plan.delete_ids,
    ...                     dim=384, key_columns=["doc_id"])                 # doctest: +SKIP
    >>> store.search("dev__docs", vector=q, text="SKU-QJW-2363", mode="hybrid",
    ...              filter={"price": {"lt": 50}})                           # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        *,
        s3: S3Settings | None = None,
        read_consistency_interval: timedelta | None = timedelta(0),
        exact_search_max_rows: int = 20_000,
        ann_min_rows: int = 20_000,
        exact_cache_tables: int = 8,
        exact_cache_max_bytes: int = 512 * 2**20,
    ) -> None:
        import lancedb

        self.exact_search_max_rows = exact_search_max_rows
        self.exact_cache_max_bytes = exact_cache_max_bytes
        self.ann_min_rows = ann_min_rows
        self._loc: Location | None = None
        self._local: Path | None = None
        if is_s3(path):
            self._loc = open_location(path, settings=s3)
            self.uri = self._loc.url
            # One bounded request names the problem within seconds; LanceDB's own listing
            # retries a failing endpoint for a long while before it gives up.
            self._loc.check(_STORE)
            assert self._loc.settings is not None
            with self._loc.translating(_STORE, "opening the LanceDB database"):
                self._db = lancedb.connect(
                    self.uri,
                    storage_options=self._loc.settings.lance_storage_options(),
                    read_consistency_interval=read_consistency_interval,
                )
        else:
            self._local = Path(path)
            self._local.mkdir(parents=True, exist_ok=True)
            self.uri = str(self._local)
            self._db = lancedb.connect(
                self.uri, read_consistency_interval=read_consistency_interval
            )
        self._tables: dict[str, Any] = {}
        self._exact: OrderedDict[str, _ExactCache] = OrderedDict()
        self._layouts: dict[str, _Layout] = {}
        self._plans: dict[str, tuple[SearchPlan | None, float]] = {}  # table -> (plan, read at)
        self._exact_cap = exact_cache_tables
        self._lock = threading.RLock()  # guards the dicts only; never held across I/O-heavy work
        self._write_locks: dict[str, threading.Lock] = {}
        # Tables this process opened or created and did not drop: if one is missing later, its
        # files were deleted behind this process's back (VectorTableLostError, not "missing").
        self._opened: set[str] = set()

    def _write_lock(self, table: str) -> threading.Lock:
        """Serializes writes to one table in this process (searches never wait on it)."""
        with self._lock:
            return self._write_locks.setdefault(table, threading.Lock())

    def __repr__(self) -> str:
        return f"LanceVectorStore({self.uri!r})"

    @property
    def path(self) -> Path:
        """The local folder of the store; a store on S3 has none (this raises: use :attr:`uri`,
        and :meth:`sample_vectors` instead of opening the folder)."""
        if self._local is None:
            raise VectorStoreError(
                f"vector store {self.uri} is on object storage: it has no local path",
                hint="use LanceVectorStore.uri, and LanceVectorStore.sample_vectors() to read "
                "vectors",
            )
        return self._local

    # -- tables -----------------------------------------------------------------------------------

    @_object_store("listing the tables")
    def tables(self) -> list[str]:
        """Names of the tables in the store."""
        names: list[str] = []
        token = None
        while True:
            page = self._db.list_tables(page_token=token)
            names.extend(page.tables)
            token = page.page_token
            if not token:
                return sorted(names)

    def has_table(self, table: str) -> bool:
        _check_table_name(table)
        return table in self.tables()

    @_object_store("dropping a table")
    def drop_table(self, table: str) -> None:
        """Delete a table and all its versions (no-op when it does not exist)."""
        _check_table_name(table)
        with self._write_lock(table):
            self._forget(table)
            with self._lock:
                self._opened.discard(table)
            if table in self.tables():
                self._db.drop_table(table)
            self._delete_plan(table)

    def _forget(self, table: str) -> None:
        """Drop every cached handle, layout and exact-search copy of ``table``."""
        with self._lock:
            self._tables.pop(table, None)
            self._exact.pop(table, None)
            self._layouts.pop(table, None)
            self._plans.pop(table, None)
            # Checkouts of its versions (a new table with this name restarts at version 1).
            for cached in (self._tables, self._exact, self._layouts):
                for key in [k for k in cached if k.startswith(f"{table}@")]:
                    cached.pop(key, None)

    def _unreadable(self, table: str, exc: BaseException) -> StoreFailure:
        """The error for a LanceDB failure reading ``table``; its cached state is dropped, so
        that a rebuilt table is opened afresh. On S3 an object-store failure (unreachable,
        refused, no bucket) is that, not a damaged table."""
        self._forget(table)
        if self._loc is not None and self._loc.s3 is not None:
            reading = f"reading table {table!r}"
            failure = translate(exc, _STORE, self._loc.s3, self._loc.settings, reading)
            if failure is not None:
                return failure
        try:
            gone = table not in self.tables()
        except Exception:  # the store folder itself is unreadable
            gone = False
        if gone and table in self._opened:
            return self._lost_error(table)
        return VectorTableUnreadableError(
            f"vector table {table!r} in {self.uri!r} cannot be read: {_lance_reason(exc)}",
            hint="its files are damaged; rebuild it with `contextkit materialize --full` "
            "(the embedding view)",
        )

    def _lost_error(self, table: str) -> VectorTableLostError:
        return VectorTableLostError(
            f"vector table {table!r} is gone from {self.uri!r}: its files were deleted "
            "after this process opened it",
            hint="re-materialize the embedding view (`contextkit materialize`) to rebuild it",
        )

    def _open(self, table: str) -> Any:
        _check_table_name(table)
        with self._lock:
            handle = self._tables.get(table)
            if handle is None:
                try:
                    handle = self._db.open_table(table)
                except ValueError as exc:
                    if table in self.tables():
                        raise
                    if table in self._opened:
                        raise self._lost_error(table) from exc
                    raise VectorTableMissingError(
                        f"vector table {table!r} does not exist",
                        hint="materialize the embedding view first",
                    ) from exc
                self._tables[table] = handle
                self._opened.add(table)
            return handle

    @_reads_table
    def count_rows(self, table: str) -> int:
        return self._open(table).count_rows()

    @_reads_table
    def version(self, table: str) -> int:
        """The table's current version (each commit adds one)."""
        return int(self._open(table).version)

    @_reads_table
    def versions(self, table: str) -> list[int]:
        """The versions still on disk, oldest first."""
        return sorted(int(v["version"]) for v in self._open(table).list_versions())

    @_reads_table
    def versions_at(self, table: str, moments: Sequence[datetime]) -> list[tuple[int, bool]]:
        """For each moment, the version whose rows the table held then: the newest one
        committed at or before it, moved on past later commits that changed only indexes (the
        same data and deletion files, so the same rows, searchable by the index built there).

        Each is ``(version, exact)``; ``exact`` is False when the moment precedes every version
        with rows still on disk (the table was not written yet, or the versions from then were
        pruned: :meth:`ensure_indexes` keeps a week), and the oldest one with rows is given
        instead. (A table's first version is its empty schema, committed just before the first
        rows; empty versions before the first rows never count.) Naive moments are UTC.
        """
        import bisect

        versions = sorted(self._open(table).list_versions(), key=lambda v: int(v["version"]))
        # LanceDB gives commit times as naive local times.
        times = [v["timestamp"].astimezone(UTC) for v in versions]

        def stat(v: Mapping[str, Any], name: str) -> int:
            return int((v.get("metadata") or {}).get(name) or 0)

        def content(v: Mapping[str, Any]) -> tuple:
            names = ("total_data_files", "total_deletion_files", "total_deletion_file_rows")
            return tuple(stat(v, n) for n in (*names, "total_rows"))

        # settled[i]: the last version from i on with version i's rows.
        settled = list(range(len(versions)))
        for i in range(len(versions) - 2, -1, -1):
            if content(versions[i + 1]) == content(versions[i]):
                settled[i] = settled[i + 1]
        first = next((i for i, v in enumerate(versions) if stat(v, "total_rows")), 0)
        out = []
        for moment in moments:
            at = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            i = bisect.bisect_right(times, at) - 1
            out.append((int(versions[settled[max(i, first)]]["version"]), i >= first))
        return out

    def _open_version(self, table: str, version: int) -> tuple[str, Any]:
        """A read-only checkout of one version, cached under ``table@version``."""
        key = f"{table}@{int(version)}"
        with self._lock:
            handle = self._tables.get(key)
        if handle is None:
            self._open(table)  # a missing table raises VectorTableMissingError
            try:
                handle = self._db.open_table(table, version=int(version))
            except Exception as exc:
                raise InvalidSearchError(
                    f"version {version} of vector table {table!r} is not on disk: {exc}",
                    hint=f"versions on disk: {self.versions(table)}",
                ) from exc
            with self._lock:
                self._tables[key] = handle
        return key, handle

    @_object_store("restoring a version")
    def restore(self, table: str, version: int) -> int:
        """Make ``version``'s content current again (as a new version, which is returned)."""
        handle = self._open(table)
        with self._write_lock(table):
            try:
                handle.restore(version)
            except Exception as exc:
                raise VectorStoreError(
                    f"cannot restore {table!r} to version {version}: {exc}",
                    hint=f"versions on disk: {self.versions(table)}",
                ) from exc
            with self._lock:
                self._exact.pop(table, None)
            return int(handle.version)

    @_reads_table
    def key_columns(self, table: str) -> list[str]:
        """The parent key columns the table was created with."""
        return _key_columns(self._open(table).schema)

    @_reads_table
    def filterable_columns(self, table: str) -> dict[str, pa.DataType]:
        """Key and metadata columns (what filters may name) with their Arrow types."""
        schema = self._open(table).schema
        return {f.name: f.type for f in schema if f.name not in SYSTEM_COLUMNS}

    @_reads_table
    def dimension(self, table: str) -> int:
        return self._open(table).schema.field("vector").type.list_size

    # -- reads for the pipeline -------------------------------------------------------------------

    def existing_hashes(
        self, table: str, keys: Mapping[str, Sequence[Any]] | None = None
    ) -> dict[str, ChunkHashes]:
        """``chunk id -> (content_hash, row_hash)`` for every row; ``{}`` when no table yet.

        ``keys`` (key column -> values) narrows it to the chunks of those documents: a row
        qualifies when each key column holds one of its values (for a composite key this may
        include a few other documents, which is harmless for an incremental plan).
        """
        try:
            return self._hashes(table, keys)
        except VectorTableMissingError:  # also a table deleted behind this process's back
            return {}

    @_reads_table
    def _hashes(
        self, table: str, keys: Mapping[str, Sequence[Any]] | None
    ) -> dict[str, ChunkHashes]:
        from lancedb.expr import col, lit

        handle = self._open(table)
        query = handle.search().select(["id", "content_hash", "row_hash"])
        if keys:
            where = None
            for column, values in keys.items():
                condition = col(column).isin([lit(v) for v in dict.fromkeys(values)])
                where = condition if where is None else where & condition
            query = query.where(where)
        data = query.limit(None).to_arrow()
        return {
            i: ChunkHashes(c, r)
            for i, c, r in zip(
                data.column("id").to_pylist(),
                data.column("content_hash").to_pylist(),
                data.column("row_hash").to_pylist(),
                strict=True,
            )
        }

    @_reads_table
    def sample_vectors(self, table: str, limit: int = 1000) -> np.ndarray:
        """Up to ``limit`` vectors of the table (its first rows) as a float32 matrix: what
        monitoring measures, read through the store (local or S3)."""
        handle = self._open(table)
        data = handle.search().select(["vector"]).limit(limit).to_arrow()
        return _vectors(data.column("vector"))

    @_reads_table
    def fetch_vectors(self, table: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by chunk id (ids not in the table are left out)."""
        from lancedb.expr import col, lit

        handle = self._open(table)
        out: dict[str, np.ndarray] = {}
        ids = list(ids)
        for start in range(0, len(ids), 1000):
            part = ids[start : start + 1000]
            data = (
                handle.search()
                .where(col("id").isin([lit(i) for i in part]))
                .select(["id", "vector"])
                .limit(None)
                .to_arrow()
            )
            matrix = _vectors(data.column("vector"))
            for i, chunk in enumerate(data.column("id").to_pylist()):
                out[chunk] = matrix[i]
        return out

    # -- writes -----------------------------------------------------------------------------------

    @_object_store("writing a table")
    def apply_changes(
        self,
        table: str,
        upserts: Iterable[pa.RecordBatch] | pa.RecordBatchReader,
        delete_ids: Iterable[str] = (),
        *,
        dim: int,
        key_columns: Sequence[str] | None = None,
        replace: bool = False,
    ) -> ApplyResult:
        """Upsert the chunks in ``upserts`` (by ``id``) and delete ``delete_ids``, in one commit.

        ``upserts`` is consumed lazily (an iterator of record batches in the pipeline's layout,
        see the module doc; ``updated_at`` is added here). The table is created on first use
        (``key_columns`` is then required and stored). ``replace=True`` overwrites the whole table
        with ``upserts`` in one commit (``delete_ids`` ignored): the path for a rebuild after the
        model, the dimension or the metadata columns changed. Without it, rows of another
        dimension or another column set raise :class:`VectorSchemaError` before anything is
        written.

        All or nothing: if ``upserts`` raises half-way, nothing is committed, the error propagates
        and the previous version stays current (a table created by this call is dropped again).
        Returns the new version (``committed`` is False when there was nothing to do).
        """
        _check_table_name(table)
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise VectorSchemaError(f"dim must be a positive integer, got {dim!r}")
        delete_ids = list(dict.fromkeys(delete_ids))
        batches = iter(upserts)
        with self._write_lock(table):
            handle = self._open(table) if self.has_table(table) else None
            previous = int(handle.version) if handle is not None else None
            if handle is not None and not replace:
                schema = handle.schema
                _check_dimension(table, schema, dim)
                stored_keys = _key_columns(schema)
                if key_columns is not None and list(key_columns) != stored_keys:
                    raise VectorSchemaError(
                        f"vector table {table!r} is keyed by {stored_keys}, "
                        f"not {list(key_columns)}",
                        hint="the view's keys changed: rebuild (apply_changes(..., replace=True))",
                    )
            first = next(batches, None)  # may run the first encoder batch
            if handle is not None and not replace:
                if first is not None:
                    _check_columns(table, schema, first.schema)
                elif not delete_ids:
                    return ApplyResult(version=previous, previous_version=previous)
            elif first is not None:
                keys = list(key_columns) if key_columns is not None else None
                if keys is None and handle is not None:
                    keys = _key_columns(handle.schema)
                if keys is None:
                    raise VectorSchemaError(
                        f"creating vector table {table!r} needs key_columns",
                        hint="pass the view's entity key columns, e.g. key_columns=['doc_id']",
                    )
                schema = _table_schema(table, first.schema, dim, keys)
            elif handle is not None:
                schema = handle.schema  # replace with nothing: an empty table, same layout
            else:
                return ApplyResult(version=None, previous_version=None)

            source = _Source(first, batches, schema, dim, datetime.now(UTC))
            reader = pa.RecordBatchReader.from_batches(schema, source)
            created = handle is None
            if created:
                self._forget(table)  # a table deleted behind this process's back: stale caches
                handle = self._db.create_table(table, schema=schema)
                with self._lock:
                    self._tables[table] = handle
                    self._opened.add(table)
            start_version = int(handle.version)
            try:
                if replace or created:
                    handle.add(reader, mode="overwrite" if replace else "append")
                    inserted, updated, deleted = source.rows, 0, 0
                else:
                    from lancedb.expr import col, lit

                    merge = (
                        handle.merge_insert("id")
                        .when_matched_update_all()
                        .when_not_matched_insert_all()
                    )
                    if delete_ids:
                        merge = merge.when_not_matched_by_source_delete(
                            col("id").isin([lit(i) for i in delete_ids])
                        )
                    res = merge.execute(reader)
                    inserted = int(res.num_inserted_rows)
                    updated = int(res.num_updated_rows)
                    deleted = int(res.num_deleted_rows)
            except BaseException as exc:
                problem = self._undo(table, handle, created, start_version)
                if problem:
                    (source.error or exc).add_note(problem)
                # LanceDB reports an error raised inside the upserts iterator as a RuntimeError
                # of the Arrow C stream: re-raise the original (an EncoderFailure, ...) instead.
                if source.error is not None and source.error is not exc:
                    raise source.error from exc
                raise
            finally:
                with self._lock:
                    self._exact.pop(table, None)
            return ApplyResult(
                version=int(handle.version),
                previous_version=previous,
                inserted=inserted,
                updated=updated,
                deleted=deleted,
                created=created,
            )

    def _undo(self, table: str, handle: Any, created: bool, start_version: int) -> str | None:
        """Put the table back as it was after a failed write; say what went wrong, if anything
        (the write's own error is the one raised, this becomes a note on it)."""
        try:
            if created:
                with self._lock:
                    self._tables.pop(table, None)
                self._db.drop_table(table)
            elif int(handle.version) != start_version:
                handle.restore(start_version)
        except Exception as exc:
            return (
                f"contextkit could not undo the failed write to vector table {table!r}: {exc}; "
                f"restore version {start_version} by hand (LanceVectorStore.restore)"
            )
        return None

    @_object_store("building indexes")
    def ensure_indexes(
        self, table: str, *, optimize_after: int = 1000, calibrate: bool = True
    ) -> IndexReport:
        """Create the missing indexes, and fold new rows into existing ones.

        - a full-text index on ``text`` (BM25; English stemming, stop words, lower-casing);
        - from ``ann_min_rows`` rows: the ANN index on ``vector`` (:func:`_ann_config`, cosine)
          and a BTree on ``id`` (speeds up the ``merge_insert`` join and ``fetch_vectors``);
        - when an index lags more than ``optimize_after`` rows (or 10%) behind: ``optimize()``,
          which also compacts files and prunes versions older than 7 days.

        Rows not yet indexed are still found (LanceDB searches them flat), only slower. Call it
        after :meth:`apply_changes`; building an ANN index takes seconds to minutes. Then
        (``calibrate``) the table's search plan is measured when it is new or stale
        (:meth:`ensure_search_plan`): exact or ANN, and the ANN's query parameters.
        """
        from lancedb.index import FTS, BTree

        handle = self._open(table)
        with self._write_lock(table):
            rows = handle.count_rows()
            report = IndexReport(rows=rows)
            indexed = {tuple(i.columns): i for i in handle.list_indices()}
            if ("text",) not in indexed:
                handle.create_index("text", config=FTS(with_position=False))
                report.created.append("fts:text")
            if rows >= self.ann_min_rows and ("vector",) not in indexed:
                config = _ann_config(rows, self.dimension(table))
                handle.create_index("vector", config=config)
                report.created.append(f"{type(config).__name__}:vector")
            if rows >= self.ann_min_rows and ("id",) not in indexed:
                handle.create_index("id", config=BTree())
                report.created.append("btree:id")
            lag = 0
            for index in handle.list_indices():
                stats = handle.index_stats(index.name)
                if stats is not None:
                    lag = max(lag, int(stats.num_unindexed_rows))
            if lag > max(optimize_after, rows // 10):
                handle.optimize()
                report.optimized = True
        if calibrate and rows:
            report.plan, report.calibrated = self.ensure_search_plan(table)
        return report

    # -- calibration ------------------------------------------------------------------------------

    def _plan_location(self, table: str) -> str:
        name = f"{table}.json"
        if self._local is not None:
            return str(self._local / _PLAN_FOLDER / name)
        assert self._loc is not None
        return self._loc.join(_PLAN_FOLDER, name)

    def _read_plan(self, table: str) -> SearchPlan | None:
        where = self._plan_location(table)
        try:
            if self._local is not None:
                raw = Path(where).read_text()
            else:
                assert self._loc is not None
                with self._loc.filesystem.open_input_stream(where) as f:
                    raw = f.read().decode()
            return SearchPlan.from_dict(json.loads(raw))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return None  # unreadable or from another release: searched as if uncalibrated

    def _write_plan(self, table: str, plan: SearchPlan) -> None:
        where = self._plan_location(table)
        raw = json.dumps(plan.as_dict(), indent=1)
        if self._local is not None:
            target = Path(where)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{threading.get_ident()}.tmp")
            partial.write_text(raw)
            partial.replace(target)  # readers see the old plan or the new one, never half
        else:
            assert self._loc is not None
            with self._loc.filesystem.open_output_stream(where) as f:  # one PUT
                f.write(raw.encode())
        with self._lock:
            self._plans[table] = (plan, _monotonic())

    def _delete_plan(self, table: str) -> None:
        where = self._plan_location(table)
        try:
            if self._local is not None:
                Path(where).unlink(missing_ok=True)
            else:
                assert self._loc is not None
                self._loc.filesystem.delete_file(where)
        except (FileNotFoundError, OSError):
            pass
        with self._lock:
            self._plans.pop(table, None)

    def _current_plan(self, table: str) -> SearchPlan | None:
        """The table's plan, re-read at most every two seconds while it is missing or older
        than the table (another process calibrates after its commit)."""
        if "@" in table:
            return None  # a checkout of an old version: searched as before calibration
        now = _monotonic()
        with self._lock:
            cached = self._plans.get(table)
        if cached is not None and now - cached[1] < _PLAN_REREAD_S:
            return cached[0]
        plan = self._read_plan(table)
        with self._lock:
            self._plans[table] = (plan, now)
        return plan

    @_reads_table
    def search_plan(self, table: str) -> SearchPlan | None:
        """The table's calibrated search plan (None before :meth:`calibrate` ran on it)."""
        self._open(table)
        return self._read_plan(table)

    @_object_store("calibrating a table")
    @_reads_table
    def ensure_search_plan(
        self, table: str, *, growth: float = RECALIBRATE_GROWTH, force: bool = False
    ) -> tuple[SearchPlan, bool]:
        """The table's search plan, calibrated again when there is none, when the ANN index
        appeared, went or changed kind, or when the row count moved by ``growth`` (10%) since it
        was measured; otherwise the plan is only moved on to the current version. Returns the
        plan and whether it was measured now. Call it after :meth:`ensure_indexes`."""
        handle = self._open(table)
        rows = handle.count_rows()
        version = int(handle.version)
        index = _vector_index_type(handle)
        plan = self._read_plan(table)
        stale = (
            force
            or plan is None
            or plan.index != index
            or abs(rows - plan.rows) > growth * max(plan.rows, 1)
        )
        if stale:
            return self.calibrate(table), True
        assert plan is not None
        if plan.version != version:
            plan = SearchPlan.from_dict({**plan.as_dict(), "version": version})
            self._write_plan(table, plan)
        return plan, False

    @_object_store("calibrating a table")
    @_reads_table
    def calibrate(
        self,
        table: str,
        *,
        k: int = CALIBRATION_K,
        sample: int = CALIBRATION_SAMPLE,
        target: float = CALIBRATION_TARGET,
        seed: int = 0,
    ) -> SearchPlan:
        """Measure exact and ANN search on ``sample`` of the table's own vectors and store the
        plan every process then follows (see :class:`SearchPlan`).

        Half the sampled rows are queries themselves (their own row left out of both
        rankings); the other half are paired up and their normalised midpoints are queries. The
        truth is exact cosine search (numpy over the in-memory copy when the table fits
        ``exact_cache_max_bytes``, else LanceDB's flat search). With an ANN index, the query
        parameters are raised step by step (``ef`` for HNSW; ``nprobes`` x ``refine_factor``
        for IVF_PQ) until recall@k reaches ``target``. Exact search wins when it is measured no
        slower than the ANN at those parameters, or when no parameters reach the target and the
        table fits in memory.
        """
        handle = self._open(table)
        version = int(handle.version)
        layout = self._layout(table, handle, version)
        rows = handle.count_rows()
        index = _vector_index_type(handle)
        now = datetime.now(UTC).isoformat()
        base = {"rows": rows, "version": version, "k": k, "target": target, "index": index}
        if rows <= k + 1 or self.exact_search_max_rows <= 0 and index is None:
            plan = SearchPlan(
                method="exact", sample=0, recall=None, params={}, exact_p50_ms=None,
                ann_p50_ms=None, calibrated_at=now, reason="too few rows to measure",
                **base,
            )  # fmt: skip
            self._write_plan(table, plan)
            return plan
        fits = rows * layout.dim * 4 <= self.exact_cache_max_bytes
        cache = self._load_exact(table, version) if fits else None
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(rows, size=min(sample, rows), replace=False))
        if cache is not None:
            picked, picked_ids = cache.matrix[picks], [cache.ids[i] for i in picks]
        else:
            got = handle.take_offsets(picks.tolist()).select(["id", "vector"]).to_arrow()
            picked, picked_ids = _vectors(got.column("vector")), got.column("id").to_pylist()
        picked = picked / np.maximum(np.linalg.norm(picked, axis=1, keepdims=True), 1e-12)
        # Half the queries are rows themselves (their own row left out), half the midpoints of
        # two rows: a query lies between documents, not on one, and rows alone made the ANN
        # look better than it is (on MiniLM vectors of real passages, ef 16 reached 0.995 on
        # rows but 0.87 on real queries; midpoints gave 0.85, a conservative stand-in).
        half = len(picked) // 2
        partner = picked[half:][rng.permutation(len(picked) - half)]
        between = picked[half:] + partner
        between /= np.maximum(np.linalg.norm(between, axis=1, keepdims=True), 1e-12)
        queries = np.concatenate([picked[:half], between]).astype(np.float32)
        query_ids: list[str | None] = [*picked_ids[:half], *([None] * len(between))]
        queries_ok = np.linalg.norm(queries, axis=1) > 0.5  # two opposite rows cancel out
        queries = queries[queries_ok]
        query_ids = [q for q, ok in zip(query_ids, queries_ok, strict=True) if ok]

        def top(rows_: list[dict[str, Any]], own: str | None) -> list[str]:
            return [r["id"] for r in rows_ if r["id"] != own][:k]

        truth, exact_ms = [], []
        for q, own in zip(queries, query_ids, strict=True):
            began = _perf()
            if cache is not None:
                found = _exact_search(cache, q, [], k + 1)
            else:
                found = _lance_vector_search(
                    handle, q, [], k + 1, ["id"], bypass_index=index is not None
                )
            exact_ms.append((_perf() - began) * 1000)
            truth.append(set(top(found, own)))
        exact_p50 = float(np.median(exact_ms)) if cache is not None else None

        recall, params, ann_p50 = None, {}, None
        reached = False
        if index is not None:
            grid = _IVF_GRID if index.startswith("IvfPq") else _HNSW_GRID
            wanted = max(1, sum(len(t) for t in truth))
            allowed = math.floor((1.0 - target) * wanted + 1e-9)
            for candidate in grid:
                hits, misses, took = 0, 0, []
                for q, own, want in zip(queries, query_ids, truth, strict=True):
                    began = _perf()
                    found = _lance_vector_search(
                        handle, q, [], k + 1, ["id"], exact=False,
                        params=_scaled(candidate, k + 1, k + 1),
                    )  # fmt: skip
                    took.append((_perf() - began) * 1000)
                    got = len(want & set(top(found, own)))
                    hits, misses = hits + got, misses + len(want) - got
                    if misses > allowed and candidate is not grid[-1]:
                        break  # cannot reach the target: try the next parameters
                recall = hits / max(1, hits + misses) if misses > allowed else hits / wanted
                params, ann_p50 = dict(candidate), float(np.median(took))
                if misses <= allowed:
                    reached = True
                    break
        if index is None:
            method, reason = "exact", "no ANN index"
        elif reached and exact_p50 is not None and exact_p50 <= ann_p50:
            method, reason = "exact", "exact search measured no slower than the ANN"
        elif reached:
            method, reason = "ann", f"ANN reached recall {recall:.3f} faster than exact search"
        elif fits:
            method, reason = "exact", f"no ANN parameters reached recall {target}"
        else:
            method = "ann"
            reason = (
                f"no ANN parameters reached recall {target} and the table is too large for "
                "exact search in memory"
            )
        plan = SearchPlan(
            method=method,
            sample=len(query_ids),
            recall=None if recall is None else round(recall, 4),
            params=params,
            exact_p50_ms=None if exact_p50 is None else round(exact_p50, 3),
            ann_p50_ms=None if ann_p50 is None else round(ann_p50, 3),
            calibrated_at=now,
            reason=reason,
            **base,
        )
        self._write_plan(table, plan)
        with self._lock:  # searches pick the plan up with the next layout check
            self._layouts.pop(table, None)
            if method == "exact" and cache is not None:
                self._exact[table] = cache
                self._exact.move_to_end(table)
                while len(self._exact) > self._exact_cap:
                    self._exact.popitem(last=False)
        return plan

    # -- search -----------------------------------------------------------------------------------

    @_reads_table
    def search(
        self,
        table: str,
        *,
        vector: Sequence[float] | np.ndarray | None = None,
        text: str | None = None,
        mode: Literal["vector", "text", "hybrid"] = "vector",
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        version: int | None = None,
        fusion: Literal["rrf", "blend"] = "rrf",
        depth: int | None = None,
        weights: tuple[float, float] | None = None,
    ) -> list[dict[str, Any]]:
        """The ``top_k`` best chunks, best first (of the table's ``version``, default the current
        one; see :meth:`version_at`).

        Each hit: ``{"id", "text", "score", "key": {key columns}, "metadata": {metadata
        columns}, "chunk_index", "char_offset"}``; hybrid hits add ``"scores": {"vector": cosine
        similarity or None, "text": BM25 or None}``. ``vector`` (the encoded query, same model as
        the table) is needed for ``vector`` and ``hybrid``, ``text`` for ``text`` and ``hybrid``.
        Hybrid runs both searches (each ``max(2 * top_k, 20)`` deep, same filter) and fuses the
        two rankings with reciprocal rank fusion: score = sum over lists of 1 / (60 + rank),
        ties broken by best rank then id. Hybrid options: ``depth`` (candidates per list,
        default ``max(2 * top_k, 20)``), ``weights`` (vector, text; default ``(1, 1)``) and
        ``fusion``: ``"rrf"`` (score = sum of weight / (60 + rank)) or ``"blend"`` (each list's
        scores min-max normalised over its candidates, score = the weighted sum, a chunk missing
        from a list counting 0 there). Bad input raises :class:`InvalidSearchError` or
        :class:`InvalidFilterError`; a missing table :class:`VectorTableMissingError`.
        """
        if mode not in ("vector", "text", "hybrid"):
            raise InvalidSearchError(
                f"unknown search mode {mode!r}", hint="use 'vector', 'text' or 'hybrid'"
            )
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidSearchError(
                f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}"
            )
        if version is None:
            handle = self._open(table)
            # One round trip to learn the current version (it also picks up other writers'
            # commits); everything else about the table is cached per version.
            version = int(handle.version)
        else:  # a checkout: its caches are its own (keyed table@version), never invalidated
            table, handle = self._open_version(table, version)
        layout = self._layout(table, handle, version)
        conditions = parse_filter(filter, layout.filterable)
        query = None
        if mode in ("vector", "hybrid"):
            query = _query_vector(vector, layout.dim)
        if mode in ("text", "hybrid") and (not isinstance(text, str) or not text.strip()):
            raise InvalidSearchError(f"{mode} search needs a non-empty query text")
        if mode == "vector":
            rows = self._vector_leg(table, handle, version, layout, query, conditions, top_k)
            return [_hit(row, 1.0 - row["_distance"], layout.keys) for row in rows]
        if mode == "text":
            rows = _text_leg(handle, text, conditions, top_k, layout.columns)
            return [_hit(row, row["_score"], layout.keys) for row in rows]
        if fusion not in ("rrf", "blend"):
            raise InvalidSearchError(
                f"unknown fusion {fusion!r}", hint="use 'rrf' (rank fusion) or 'blend' (scores)"
            )
        if depth is None:
            depth = max(2 * top_k, 20)
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_TOP_K:
            raise InvalidSearchError(
                f"depth must be an integer from 1 to {MAX_TOP_K}, got {depth!r}"
            )
        depth = max(depth, top_k)
        wv, wt = _weights(weights)
        by_vector = self._vector_leg(table, handle, version, layout, query, conditions, depth)
        by_text = _text_leg(handle, text, conditions, depth, layout.columns)
        if fusion == "blend":
            return _blend(by_vector, by_text, top_k, layout.keys, wv, wt)
        return _fuse(by_vector, by_text, top_k, layout.keys, weights=(wv, wt))

    @_reads_table
    def warm(self, table: str) -> None:
        """Load what the first search would (table handle, layout, exact-search cache) now,
        e.g. at server start, so that no request pays for it."""
        handle = self._open(table)
        version = int(handle.version)
        layout = self._layout(table, handle, version)
        if handle.count_rows() == 0:
            return
        # One real query with a stored vector: loads the exact copy, or the ANN index's files
        # (whatever the table's size; a large table's first query no longer pays for it).
        first = _vectors(handle.search().select(["vector"]).limit(1).to_arrow().column("vector"))
        if first.any():
            self._vector_leg(table, handle, version, layout, first[0], [], CALIBRATION_K)

    def _layout(self, table: str, handle: Any, version: int) -> _Layout:
        with self._lock:
            layout = self._layouts.get(table)
        if layout is not None and layout.version == version:
            if layout.plan is None or layout.plan.version != version:
                # calibration may land just after the commit that this layout was built for
                plan = self._current_plan(table)
                if plan is not layout.plan:
                    layout.plan, layout.rows_over_exact_limit = plan, False
            return layout
        schema = handle.schema
        layout = _Layout(
            version=version,
            keys=_key_columns(schema),
            filterable={f.name: f.type for f in schema if f.name not in SYSTEM_COLUMNS},
            dim=schema.field("vector").type.list_size,
            columns=[
                f.name for f in schema if f.name not in ("vector", "content_hash", "row_hash")
            ],
            vector_index=any(tuple(i.columns) == ("vector",) for i in handle.list_indices()),
            plan=self._current_plan(table),
        )
        with self._lock:
            self._layouts[table] = layout
        return layout

    def _vector_leg(
        self,
        table: str,
        handle: Any,
        version: int,
        layout: _Layout,
        query: np.ndarray,
        conditions: list[Condition],
        k: int,
    ) -> list[dict[str, Any]]:
        plan = layout.plan
        cache = self._exact_cache(table, handle, version, layout)
        if cache is not None and not any(c.column in cache.nan_columns for c in conditions):
            return _exact_search(cache, query, conditions, k)
        # A flat (exact) Lance search orders its ties by id like the numpy path; an ANN
        # search's order at the cut is approximate anyway, so it asks for no extra rows.
        ann = layout.vector_index and (plan is None or plan.method == "ann")
        return _lance_vector_search(
            handle,
            query,
            conditions,
            k,
            layout.columns,
            exact=not ann,
            params=_scaled(plan.params, k, plan.k) if ann and plan is not None else None,
            bypass_index=layout.vector_index and not ann,
        )

    def _exact_row_limit(self, layout: _Layout) -> int:
        """How many rows the table may have to be served from the in-memory copy: the plan's
        choice when it is calibrated (exact up to the memory bound, never when ANN won), else
        the fixed ``exact_search_max_rows``."""
        if self.exact_search_max_rows <= 0:
            return 0
        plan = layout.plan
        if plan is None:
            return self.exact_search_max_rows
        if plan.method == "ann":
            return 0
        return max(self.exact_search_max_rows, self.exact_cache_max_bytes // (4 * layout.dim))

    def _exact_cache(
        self, table: str, handle: Any, version: int, layout: _Layout
    ) -> _ExactCache | None:
        limit = self._exact_row_limit(layout)
        if limit <= 0 or layout.rows_over_exact_limit:
            return None
        with self._lock:
            cache = self._exact.get(table)
            if cache is not None and cache.version == version:
                self._exact.move_to_end(table)
                return cache
        if handle.count_rows() > limit:
            layout.rows_over_exact_limit = True
            return None
        return self._load_exact(table, version)

    def _load_exact(self, table: str, version: int) -> _ExactCache:
        # version=... pins the read, so a commit landing meanwhile cannot mix into the cache
        pinned = self._db.open_table(table.split("@", 1)[0], version=version)
        data = pinned.to_arrow()
        matrix = _vectors(data.column("vector"))
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        rest = data.drop_columns(["vector", "content_hash", "row_hash"]).combine_chunks()
        nan_columns = frozenset(
            f.name
            for f in rest.schema
            if pa.types.is_floating(f.type) and pc.any(pc.is_nan(rest.column(f.name))).as_py()
        )
        cache = _ExactCache(
            version=version,
            table=rest,
            matrix=np.ascontiguousarray(matrix / norms, dtype=np.float32),
            ids=np.asarray(rest.column("id").to_pylist(), dtype=object),
            nan_columns=nan_columns,
        )
        with self._lock:
            self._exact[table] = cache
            self._exact.move_to_end(table)
            while len(self._exact) > self._exact_cap:
                self._exact.popitem(last=False)
        return cache


# -- helpers -------------------------------------------------------------------------------------


def _vector_index_type(handle: Any) -> str | None:
    """The kind of the ANN index on ``vector`` (``IvfHnswSq``, ``IvfPq``, ...), None if none."""
    for index in handle.list_indices():
        if tuple(index.columns) == ("vector",):
            return str(index.index_type)
    return None


def _check_table_name(table: str) -> None:
    if not isinstance(table, str) or not _TABLE_NAME.match(table) or ".." in table:
        raise VectorStoreError(
            f"invalid vector table name {table!r}",
            hint="use letters, digits, '_', '-' and '.', e.g. 'dev__product_docs'",
        )


def _key_columns(schema: pa.Schema) -> list[str]:
    raw = (schema.metadata or {}).get(KEY_COLUMNS_METADATA)
    return list(json.loads(raw)) if raw else []


def _check_dimension(table: str, schema: pa.Schema, dim: int) -> None:
    stored = schema.field("vector").type.list_size
    if stored != dim:
        raise VectorSchemaError(
            f"vector table {table!r} stores {stored}-dimensional vectors, the rows have {dim}",
            hint="the view's model changed: rebuild the table (apply_changes(..., replace=True))",
        )


def _check_columns(table: str, schema: pa.Schema, incoming: pa.Schema) -> None:
    have = [n for n in schema.names if n != "updated_at"]
    got = [n for n in incoming.names if n != "updated_at"]
    if set(have) != set(got):
        missing = sorted(set(have) - set(got))
        extra = sorted(set(got) - set(have))
        raise VectorSchemaError(
            f"the rows don't match vector table {table!r}: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"new {', '.join(extra)}" if extra else "",
                )
                if part
            ),
            hint="the view's columns changed: rebuild the table (apply_changes(..., replace=True))",
        )


def _table_schema(table: str, incoming: pa.Schema, dim: int, keys: Sequence[str]) -> pa.Schema:
    names = incoming.names
    for name, dtype in _REQUIRED_TYPES.items():
        if name not in names:
            raise VectorSchemaError(f"rows for {table!r} have no {name!r} column")
        if not incoming.field(name).type.equals(dtype) and not (
            pa.types.is_integer(incoming.field(name).type) and pa.types.is_integer(dtype)
        ):
            raise VectorSchemaError(
                f"column {name!r} of rows for {table!r} is {incoming.field(name).type}, not {dtype}"
            )
    if "vector" not in names:
        raise VectorSchemaError(f"rows for {table!r} have no 'vector' column")
    for key in keys:
        if key not in names or key in SYSTEM_COLUMNS:
            raise VectorSchemaError(
                f"key column {key!r} is not a key/metadata column of the rows for {table!r}"
            )
    for name in names:
        if not name or "." in name or "`" in name:
            raise VectorSchemaError(
                f"column name {name!r} cannot be stored in LanceDB",
                hint="column names must be non-empty and contain no '.' or '`'",
            )
    fields = []
    for f in incoming:
        if f.name == "updated_at":
            continue
        if f.name == "vector":
            f = pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)
        elif f.name in _REQUIRED_TYPES:
            f = pa.field(f.name, _REQUIRED_TYPES[f.name], nullable=False)
        fields.append(f)
    fields.append(pa.field("updated_at", _UPDATED_AT, nullable=False))
    return pa.schema(fields, metadata={KEY_COLUMNS_METADATA: json.dumps(list(keys)).encode()})


class _Source:
    """The upserts as conformed record batches (table column order, ``updated_at`` stamped),
    remembering an error raised upstream so it can be re-raised as itself."""

    def __init__(
        self,
        first: pa.RecordBatch | None,
        rest: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        dim: int,
        now: datetime,
    ) -> None:
        self.first, self.rest, self.schema, self.dim, self.now = first, rest, schema, dim, now
        self.rows = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self.first is None:
            return
        try:
            yield from self._conform(self.first)
            for batch in self.rest:
                yield from self._conform(batch)
        except GeneratorExit:  # the writer stopped reading: its own error is the one to raise
            raise
        except BaseException as exc:
            self.error = exc
            raise

    def _conform(self, batch: pa.RecordBatch | pa.Table) -> Iterator[pa.RecordBatch]:
        parts = batch.to_batches() if isinstance(batch, pa.Table) else [batch]
        for part in parts:
            if part.num_rows == 0:
                continue
            names = part.schema.names
            vtype = part.schema.field("vector").type if "vector" in names else None
            if vtype is None or getattr(vtype, "list_size", None) != self.dim:
                raise VectorSchemaError(
                    f"a batch has vectors of type {vtype}, expected {self.dim} float32 values"
                )
            arrays = []
            for f in self.schema:
                if f.name == "updated_at":
                    arrays.append(pa.array([self.now] * part.num_rows, _UPDATED_AT))
                    continue
                if f.name not in names:
                    raise VectorSchemaError(f"a batch has no column {f.name!r}")
                column = part.column(f.name)
                arrays.append(column if column.type.equals(f.type) else column.cast(f.type))
            self.rows += part.num_rows
            yield pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = array.type.list_size
    if len(array) == 0:
        return np.empty((0, dim), dtype=np.float32)
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(len(array), dim)


def _query_vector(vector: Any, dim: int) -> np.ndarray:
    if vector is None:
        raise InvalidSearchError("a vector search needs the query vector (encode the query text)")
    try:
        query = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidSearchError(f"the query vector is not a list of numbers: {exc}") from None
    if query.ndim != 1 or query.shape[0] != dim:
        raise InvalidSearchError(
            f"the query vector has shape {query.shape}, the table stores {dim} dimensions",
            hint="encode the query with the view's model",
        )
    if not np.isfinite(query).all():
        raise InvalidSearchError("the query vector holds NaN or infinite values")
    if not query.any():
        raise InvalidSearchError("the query vector is all zeros (cosine similarity is undefined)")
    return query


def _exact_search(
    cache: _ExactCache, query: np.ndarray, conditions: list[Condition], k: int
) -> list[dict[str, Any]]:
    # einsum, not ``matrix @ q``: BLAS runs a matrix-vector product on a thread pool, and on a
    # busy 2-core machine that took 8 ms at 5k x 384 against 0.4 ms single-threaded here.
    similarity = np.einsum("ij,j->i", cache.matrix, query / np.linalg.norm(query))
    if conditions:
        mask = filter_mask(conditions, cache.table)
        similarity = np.where(mask, similarity, -np.inf)
        available = int(mask.sum())
    else:
        available = len(similarity)
    k = min(k, available)
    if k == 0:
        return []
    # Candidates: the k most similar rows plus any within rounding of the k-th, so that rows
    # whose distances tie once computed as 1 - similarity are all there to be ordered by id.
    kth = np.partition(similarity, len(similarity) - k)[len(similarity) - k]
    candidates = np.flatnonzero(similarity >= kth - 1e-6)
    distances = (np.float32(1.0) - similarity[candidates]).astype(np.float32)
    order = sorted(range(len(candidates)), key=lambda i: (distances[i], cache.ids[candidates[i]]))
    chosen = [int(candidates[i]) for i in order[:k]]
    rows = cache.table.take(pa.array(chosen, pa.int64())).to_pylist()
    for row, i in zip(rows, order[:k], strict=True):
        row["_distance"] = float(distances[i])
    return rows


def _lance_vector_search(
    handle: Any,
    query: np.ndarray,
    conditions: list[Condition],
    k: int,
    columns: list[str],
    exact: bool = True,
    params: Mapping[str, int] | None = None,
    bypass_index: bool = False,
) -> list[dict[str, Any]]:
    expr = compile_filter(conditions)
    # Exact searches fetch a few extra rows so that ties at the cut are ordered by id, as in
    # the numpy path; that costs the ANN index real work (~0.6 ms at 200k), for nothing.
    builder = (
        handle.search(query, vector_column_name="vector")
        .distance_type("cosine")
        .limit(k + 8 if exact else k)
        .select([*columns, "_distance"])
    )
    for name, value in (params or {}).items():
        builder = getattr(builder, name)(int(value))  # ef, nprobes, refine_factor
    if bypass_index:
        builder = builder.bypass_vector_index()
    if expr is not None:
        builder = builder.where(expr, prefilter=True)
    rows = builder.to_arrow().to_pylist()
    rows.sort(key=lambda r: (r["_distance"], r["id"]))
    return rows[:k]


def _text_leg(
    handle: Any, text: str, conditions: list[Condition], k: int, columns: list[str]
) -> list[dict[str, Any]]:
    from lancedb.query import MatchQuery

    expr = compile_filter(conditions)
    # MatchQuery: the text is tokenized as-is (no query syntax to inject), terms are ORed.
    builder = handle.search(MatchQuery(text, "text")).limit(k + 8).select([*columns, "_score"])
    if expr is not None:
        builder = builder.where(expr, prefilter=True)
    rows = builder.to_arrow().to_pylist()
    rows.sort(key=lambda r: (-r["_score"], r["id"]))
    return rows[:k]


def _hit(row: Mapping[str, Any], score: float, keys: Sequence[str]) -> dict[str, Any]:
    skip = {"id", "text", "chunk_index", "char_offset", "updated_at", "_distance", "_score", *keys}
    return {
        "id": row["id"],
        "text": row["text"],
        "score": float(score),
        "key": {k: row[k] for k in keys},
        "metadata": {n: v for n, v in row.items() if n not in skip},
        "chunk_index": row["chunk_index"],
        "char_offset": row["char_offset"],
    }


def _fuse(
    by_vector: list[dict[str, Any]],
    by_text: list[dict[str, Any]],
    top_k: int,
    keys: Sequence[str],
    k: int = RRF_K,
    weights: tuple[float, float] = (1.0, 1.0),
) -> list[dict[str, Any]]:
    """Reciprocal rank fusion of two ranked lists (ranks from 1), each list weighted."""
    fused: dict[str, dict[str, Any]] = {}
    for rank, row in enumerate(by_vector, start=1):
        entry = fused.setdefault(row["id"], {"row": row, "rrf": 0.0, "best": rank})
        entry["rrf"] += weights[0] / (k + rank)
        entry["vector"] = 1.0 - row["_distance"]
    for rank, row in enumerate(by_text, start=1):
        entry = fused.setdefault(row["id"], {"row": row, "rrf": 0.0, "best": rank})
        entry["rrf"] += weights[1] / (k + rank)
        entry["best"] = min(entry["best"], rank)
        entry["text"] = row["_score"]
    ranked = sorted(fused.items(), key=lambda item: (-item[1]["rrf"], item[1]["best"], item[0]))
    hits = []
    for _, entry in ranked[:top_k]:
        hit = _hit(entry["row"], entry["rrf"], keys)
        hit["scores"] = {"vector": entry.get("vector"), "text": entry.get("text")}
        hits.append(hit)
    return hits


def _weights(weights: Any) -> tuple[float, float]:
    if weights is None:
        return 1.0, 1.0
    try:
        wv, wt = (float(w) for w in weights)
    except (TypeError, ValueError):
        raise InvalidSearchError(
            f"weights must be two numbers (vector, text), got {weights!r}"
        ) from None
    if not (math.isfinite(wv) and math.isfinite(wt)) or wv < 0 or wt < 0 or wv + wt == 0:
        raise InvalidSearchError(
            f"weights must be finite, non-negative and not both 0, got {weights!r}"
        )
    return wv, wt


def _normalised(values: list[float]) -> list[float]:
    if not values:
        return []
    low, high = min(values), max(values)
    if high - low <= 1e-12:
        return [1.0] * len(values)
    return [(v - low) / (high - low) for v in values]


def _blend(
    by_vector: list[dict[str, Any]],
    by_text: list[dict[str, Any]],
    top_k: int,
    keys: Sequence[str],
    wv: float,
    wt: float,
) -> list[dict[str, Any]]:
    """Normalised-score fusion: each list's scores min-max scaled to [0, 1] over its
    candidates, then weighted and summed (0 for a list a chunk is not in)."""
    fused: dict[str, dict[str, Any]] = {}
    vector_scores = [1.0 - r["_distance"] for r in by_vector]
    for rank, (row, norm) in enumerate(zip(by_vector, _normalised(vector_scores), strict=True)):
        entry = fused.setdefault(row["id"], {"row": row, "score": 0.0, "best": rank})
        entry["score"] += wv * norm
        entry["vector"] = 1.0 - row["_distance"]
    text_scores = [float(r["_score"]) for r in by_text]
    for rank, (row, norm) in enumerate(zip(by_text, _normalised(text_scores), strict=True)):
        entry = fused.setdefault(row["id"], {"row": row, "score": 0.0, "best": rank})
        entry["score"] += wt * norm
        entry["best"] = min(entry["best"], rank)
        entry["text"] = row["_score"]
    ranked = sorted(fused.items(), key=lambda item: (-item[1]["score"], item[1]["best"], item[0]))
    hits = []
    for _, entry in ranked[:top_k]:
        hit = _hit(entry["row"], entry["score"], keys)
        hit["scores"] = {"vector": entry.get("vector"), "text": entry.get("text")}
        hits.append(hit)
    return hits
