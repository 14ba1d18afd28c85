"""Search: :meth:`VectorSearch.search` validates a request, picks the vector path the table's plan
chose (the in-memory exact copy, LanceDB flat, or the ANN index) and fuses hybrid legs; it caches
per table version what a search needs (:class:`Layout`, the exact copy). A mixin of
:class:`~contextkit.stores.vector.LanceVectorStore`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contextkit.stores._vector_common import (
    MAX_TOP_K,
    SYSTEM_COLUMNS,
    InvalidSearchError,
    as_matrix,
    key_columns_of,
    reads_table,
)
from contextkit.stores._vector_copies import copy_bytes
from contextkit.stores._vector_filters import Condition, parse_filter
from contextkit.stores._vector_fusion import as_hit, blend, parse_weights, rrf_fuse
from contextkit.stores._vector_plan import (
    CALIBRATION_K,
    SearchPlan,
    compact_bytes,
    copies_bytes,
    is_compact,
    scaled_params,
    scan_bits,
    with_projection,
)
from contextkit.stores._vector_query import (
    REFINE_LEVELS,
    ROW_LEVELS,
    SCAN_ROW_BYTES,
    CompactRows,
    ExactCache,
    ProjectedScan,
    SpilledVectors,
    code_scale,
    compact_search,
    encode,
    exact_search,
    int8_scan_available,
    lance_vector_search,
    projected_search,
    query_vector,
    text_leg,
)

_monotonic = time.monotonic


@dataclass
class Layout:
    """What a search needs to know about one version of a table."""

    version: int
    keys: list[str]
    filterable: dict[str, pa.DataType]
    dim: int
    columns: list[str]  # returned with each hit
    rows_over_exact_limit: bool = False
    vector_index: bool = False  # an ANN index answers vector queries
    plan: SearchPlan | None = None  # the table's calibrated search plan, if any


class VectorSearch:
    # -- search -----------------------------------------------------------------------------------

    @reads_table
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
            # The current version (other writers' commits included); everything else about the
            # table is cached per version.
            version = self._latest_version(table, handle)
        else:  # a checkout: its caches are its own (keyed table@version), never invalidated
            table, handle = self._open_version(table, version)
        layout = self._layout(table, handle, version)
        conditions = parse_filter(filter, layout.filterable)
        query = None
        if mode in ("vector", "hybrid"):
            query = query_vector(vector, layout.dim)
        if mode in ("text", "hybrid") and (not isinstance(text, str) or not text.strip()):
            raise InvalidSearchError(f"{mode} search needs a non-empty query text")
        if mode == "vector":
            rows = self._vector_leg(table, handle, version, layout, query, conditions, top_k)
            return [as_hit(row, 1.0 - row["_distance"], layout.keys) for row in rows]
        if mode == "text":
            rows = text_leg(handle, text, conditions, top_k, layout.columns)
            return [as_hit(row, row["_score"], layout.keys) for row in rows]
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
        wv, wt = parse_weights(weights)
        by_vector = self._vector_leg(table, handle, version, layout, query, conditions, depth)
        by_text = text_leg(handle, text, conditions, depth, layout.columns)
        if fusion == "blend":
            return blend(by_vector, by_text, top_k, layout.keys, wv, wt)
        return rrf_fuse(by_vector, by_text, top_k, layout.keys, weights=(wv, wt))

    @reads_table
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
        first = as_matrix(handle.search().select(["vector"]).limit(1).to_arrow().column("vector"))
        if first.any():
            self._vector_leg(table, handle, version, layout, first[0], [], CALIBRATION_K)

    def _layout(self, table: str, handle: Any, version: int) -> Layout:
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
        layout = Layout(
            version=version,
            keys=key_columns_of(schema),
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
        layout: Layout,
        query: np.ndarray,
        conditions: list[Condition],
        k: int,
    ) -> list[dict[str, Any]]:
        plan = layout.plan
        cache = self._exact_cache(table, handle, version, layout, plan)
        if cache is not None and cache.compact is not None:
            if not conditions:
                assert plan is not None
                limits = scaled_params(plan.params, k, plan.k)
                return compact_search(cache, query, k, limits["shortlist"], limits["rerank"])
            cache = None  # no float vectors in memory: filtered queries go to LanceDB
        if cache is not None and not any(c.column in cache.nan_columns for c in conditions):
            if plan is not None and plan.method == "projected" and not conditions:
                projected = self._projected_cache(table, cache, plan)
                if projected is not None:
                    shortlist = scaled_params(plan.params, k, plan.k)["shortlist"]
                    return projected_search(projected, query, k, shortlist)
            return exact_search(cache, query, conditions, k)
        # A flat (exact) Lance search orders its ties by id like the numpy path; an ANN
        # search's order at the cut is approximate anyway, so it asks for no extra rows.
        ann = layout.vector_index and (plan is None or plan.method == "ann")
        params = plan.params if ann and plan is not None else None
        if cache is None and layout.vector_index and not ann and plan is not None:
            # an in-memory plan without its copy (not let in by the memory bounds, or the
            # table grew past them): the ANN when its calibrated parameters reached the target
            params = _reached_ann_params(plan)
            ann = params is not None
        return lance_vector_search(
            handle,
            query,
            conditions,
            k,
            layout.columns,
            exact=not ann,
            params=scaled_params(params, k, plan.k) if params is not None else None,
            bypass_index=layout.vector_index and not ann,
        )

    def _projected_cache(
        self, table: str, cache: ExactCache, plan: SearchPlan
    ) -> ExactCache | None:
        """The in-memory copy with the projected rows of ``plan`` (built once per copy and
        plan from the projection stored with the plan); None when that file is unreadable, or
        when the exact and projected copies together would exceed ``exact_cache_max_bytes`` (the
        table grew since calibration) or not be let in within ``exact_cache_total_bytes``: the
        query is then answered exactly from the copy."""
        if cache.projected_for == plan.calibrated_at:
            return cache
        rows, dim = cache.matrix.shape
        need = copies_bytes(rows, dim, plan.params["dims"])
        if need > self.exact_cache_max_bytes:
            return None
        with self._lock:
            if not self._exact.fits(table, need, _monotonic()):
                return None
        projection = self._read_projection(table)
        if projection is None or projection.shape != (dim, plan.params["dims"]):
            return None
        projected = with_projection(cache, projection, plan.calibrated_at, scan_bits(plan.params))
        with self._lock:
            if self._exact.get(table) is not cache:
                return projected  # replaced meanwhile (a newer version): serve this query
            if not self._exact.keep(table, projected, _monotonic()):
                return None
        return projected

    def _exact_row_limit(self, layout: Layout, plan: SearchPlan | None) -> int:
        """How many rows the table may have to be served from the in-memory copy: the plan's
        choice when it is calibrated (exact up to the memory bound, never when ANN won), else
        the fixed ``exact_search_max_rows``."""
        if self.exact_search_max_rows <= 0:
            return 0
        if plan is None:
            return self.exact_search_max_rows
        if plan.method == "ann":
            return 0
        if _compact_plan(plan):
            per_row = layout.dim + plan.params["dims"] + SCAN_ROW_BYTES
            return max(self.exact_search_max_rows, self.exact_cache_max_bytes // per_row)
        return max(self.exact_search_max_rows, self.exact_cache_max_bytes // (4 * layout.dim))

    def _exact_cache(
        self, table: str, handle: Any, version: int, layout: Layout, plan: SearchPlan | None
    ) -> ExactCache | None:
        """The table's in-memory copy of ``version`` for ``plan`` (the layout's, read once by
        the caller: another thread may replace it meanwhile): kept, or loaded when the table is
        within the row limit and its copy is let in within ``exact_cache_total_bytes`` (None:
        the query goes to LanceDB, and a later one tries again). A compact plan's copy is a
        compact one (:meth:`_load_compact`), served only with the 8-bit scan it was counted
        with (a process without ONNX Runtime goes to LanceDB)."""
        limit = self._exact_row_limit(layout, plan)
        if limit <= 0 or layout.rows_over_exact_limit:
            return None
        with self._lock:
            cache = self._exact.use(table, _monotonic())
            if cache is not None:
                if cache.version == version and _copy_serves(cache, plan):
                    return cache
                # another version's or another plan's: of no more use, frees its room
                self._exact.pop(table)
        rows = handle.count_rows()
        if rows > limit:
            layout.rows_over_exact_limit = True
            return None
        need = copies_bytes(rows, layout.dim)
        if _compact_plan(plan):
            assert plan is not None
            if not int8_scan_available(rows * plan.params["dims"]):
                return None
            need = compact_bytes(rows, layout.dim, plan.params["dims"])
        with self._lock:
            if not self._exact.fits(table, need, _monotonic()):
                return None
        if _compact_plan(plan):
            assert plan is not None
            cache = self._load_compact(table, version, plan, layout.dim)
            if cache is None:
                return None
        else:
            cache = self._load_exact(table, version)
        self._keep_copy(table, cache)  # refused by a copy loaded meanwhile: serves this query
        return cache

    def _keep_copy(self, table: str, cache: ExactCache) -> bool:
        """Keep ``cache`` as the table's copy within the store's bounds (False: not kept)."""
        with self._lock:
            return self._exact.keep(table, cache, _monotonic())

    def memory(self) -> dict[str, Any]:
        """What the in-memory copies hold: per table its vectors' bytes, and the bounds."""
        with self._lock:
            tables = {t: copy_bytes(self._exact[t]) for t in self._exact}
        return {
            "tables": tables,
            "bytes": sum(tables.values()),
            "max_bytes": self.exact_cache_total_bytes,
            "max_tables": self._exact.max_tables,
            "table_max_bytes": self.exact_cache_max_bytes,
        }

    def _load_exact(self, table: str, version: int) -> ExactCache:
        # version=... pins the read, so a commit landing meanwhile cannot mix into the cache
        pinned = self._db.open_table(table.split("@", 1)[0], version=version)
        data = pinned.to_arrow()
        matrix = as_matrix(data.column("vector"))
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        rest = data.drop_columns(["vector", "content_hash", "row_hash"]).combine_chunks()
        return ExactCache(
            version=version,
            table=rest,
            matrix=np.ascontiguousarray(matrix / norms, dtype=np.float32),
            ids=np.asarray(rest.column("id").to_pylist(), dtype=object),
            nan_columns=_nan_columns(rest),
        )

    def _load_compact(
        self, table: str, version: int, plan: SearchPlan, dim: int
    ) -> ExactCache | None:
        """The compact copy of a compact projected plan (8-bit vectors and scan, see
        :func:`~contextkit.stores._vector_query.compact_search`), read from the table in
        batches so that the float vectors are never held whole: a first pass takes the other
        columns and each dimension's largest magnitude (the codes' scales), a second the codes.
        The codes are calibration's (``compact_copy`` over the float copy) to float rounding;
        the second pass checks that it reads the rows in the first's order (by id). None when
        the plan's projection file is unreadable or the table is empty (the query goes to
        LanceDB)."""
        projection = self._read_projection(table)
        if projection is None or projection.shape != (dim, plan.params["dims"]):
            return None
        pinned = self._db.open_table(table.split("@", 1)[0], version=version)
        columns = [f.name for f in pinned.schema if f.name not in ("content_hash", "row_hash")]

        def unit_batches(names: list[str]) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
            query = pinned.search().select(names).limit(None)
            for batch in query.to_batches(_COMPACT_BATCH_ROWS):
                matrix = as_matrix(batch.column("vector"))
                norms = np.linalg.norm(matrix, axis=1, keepdims=True)
                norms[norms == 0] = 1.0
                yield batch, np.ascontiguousarray(matrix / norms, dtype=np.float32)

        parts = []
        top = np.zeros(dim, dtype=np.float32)
        top_reduced = np.zeros(projection.shape[1], dtype=np.float32)
        for batch, unit in unit_batches(columns):
            parts.append(batch.drop_columns(["vector"]))
            top = np.maximum(top, np.abs(unit).max(axis=0, initial=0))
            top_reduced = np.maximum(top_reduced, np.abs(unit @ projection).max(axis=0, initial=0))
        if not parts:  # no rows (all deleted since calibration)
            return None
        rest = pa.Table.from_batches(parts).combine_chunks()
        if rest.num_rows == 0:
            return None
        ids = rest.column("id")
        scale = code_scale(top, REFINE_LEVELS)
        scan_scale = code_scale(top_reduced, ROW_LEVELS)
        codes = np.empty((rest.num_rows, dim), dtype=np.int8)
        scan_codes = np.empty((rest.num_rows, projection.shape[1]), dtype=np.int8)
        spill = SpilledVectors(rest.num_rows, dim, self._spill_folder(table.split("@", 1)[0]))
        at = 0
        for batch, unit in unit_batches(["id", "vector"]):
            if at + len(unit) > rest.num_rows:
                break
            if not batch.column("id").equals(ids.slice(at, len(unit)).combine_chunks()):
                raise RuntimeError(f"{table}@{version}: a second read gave the rows reordered")
            codes[at : at + len(unit)] = encode(unit, scale, REFINE_LEVELS)
            scan_codes[at : at + len(unit)] = encode(unit @ projection, scan_scale, ROW_LEVELS)
            spill.write(at, unit)
            at += len(unit)
        if at != rest.num_rows:
            raise RuntimeError(f"{table}@{version}: read {rest.num_rows} rows, then {at}")
        return ExactCache(
            version=version,
            table=rest,
            matrix=None,
            ids=np.asarray(rest.column("id").to_pylist(), dtype=object),
            nan_columns=frozenset(),  # filtered queries go to LanceDB anyway
            projected_for=plan.calibrated_at,
            projection=projection,
            scan=ProjectedScan.of_codes(scan_scale, scan_codes),
            compact=CompactRows(codes, scale, spill),
        )


_COMPACT_BATCH_ROWS = 65536


def _compact_plan(plan: SearchPlan | None) -> bool:
    return plan is not None and plan.method == "projected" and is_compact(plan.params)


def _copy_serves(cache: ExactCache, plan: SearchPlan | None) -> bool:
    """Whether a kept copy fits the plan: a compact copy serves only the plan it was made for,
    a float copy every plan but a compact one."""
    if cache.compact is not None:
        return plan is not None and cache.projected_for == plan.calibrated_at
    return not _compact_plan(plan)


def _nan_columns(rest: pa.Table) -> frozenset[str]:
    """The float columns holding NaN (filters on them go to LanceDB, see the module doc)."""
    return frozenset(
        f.name
        for f in rest.schema
        if pa.types.is_floating(f.type) and pc.any(pc.is_nan(rest.column(f.name))).as_py()
    )


def _reached_ann_params(plan: SearchPlan) -> dict[str, int] | None:
    """The ANN parameters the plan's calibration found at the target (None: not reached, or
    measured on another index than the plan's)."""
    for c in plan.candidates:
        if c.get("method") == "ann" and c.get("reached") and c.get("index") == plan.index:
            return dict(c["params"])
    return None
