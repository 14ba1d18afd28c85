"""Indexes and the search plan: which indexes a table gets (:func:`ann_config`), and how its vector
queries are answered (:class:`SearchPlan`: exact or ANN, and the ANN's query parameters), measured
on the table's own vectors by :meth:`SearchPlanning.calibrate` and stored next to the tables for
every process. A mixin of :class:`~contextkit.stores.vector.LanceVectorStore`.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from contextkit.stores._vector_common import (
    as_matrix,
    object_store,
    reads_table,
)
from contextkit.stores._vector_query import (
    SCAN_ROW_BYTES,
    CompactRows,
    ExactCache,
    ProjectedScan,
    SpilledVectors,
    compact_search,
    exact_search,
    int8_scan_available,
    lance_vector_search,
    projected_search,
    projection_of,
    quantize_vectors,
)
from contextkit.stores._vector_timing import (
    TIE_BAND,
    interleaved_rounds,
    overall_p50,
    paired_ratio,
    pick,
    round_medians,
)

_perf = time.perf_counter
_monotonic = time.monotonic


def ann_config(rows: int, dim: int) -> Any:
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


CALIBRATION_TARGET = 0.995
"""The share of exact search's top-k that a calibrated approximate search must find (on each
kind of calibration query). Real questions got about what calibration measured, not more: on 50k
MiniLM passages the projected search calibrated to 0.990 gave 0.992 on real questions, to 0.995
gave 0.999; so the target is the recall wanted, 0.005 within exact search."""
CALIBRATION_K = 10
CALIBRATION_SAMPLE = 400
RECALIBRATE_GROWTH = 0.10
"""A plan is measured again once the table's row count moved this much (or an index changed)."""
QUERY_KINDS = 4
METHODS = ("exact", "projected", "ann")
"""The configurations calibration chooses from (see :class:`SearchPlan`)."""
EXACT_MARGIN = TIE_BAND
"""An approximate configuration replaces exact search only when its paired ratio against exact
search, timed in the same rounds, is below this (the median round 10% faster; exact search gives
recall 1). See :mod:`~contextkit.stores._vector_timing`."""
PREFERENCE = ("exact", "projected", "ann")
"""Within the band, the configuration kept: exact (recall 1), then the projected search (no
LanceDB call: in the bench its p99 was half the ANN's at the same p50 class)."""
KIND_SPREAD = 1.5
"""How far apart the two HNSW kinds measured on the same table (real passages, 20k and 50k:
0.7x to 1.5x of each other). The second kind is built only when the first came close enough to
the fastest in-memory configuration that a kind this much faster could beat it."""
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
# HNSW over the float vectors themselves ranks by exact distances: only ``ef`` to raise.
_HNSW_FLAT_GRID: tuple[dict[str, int], ...] = tuple(
    {"ef": ef} for ef in (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
)
_IVF_GRID: tuple[dict[str, int], ...] = tuple(
    {"nprobes": n, "refine_factor": r} for n in (16, 32, 64, 128, 256, 512) for r in (5, 10, 20)
)
# The projected search over the in-memory copy (see projected_search): directions kept, and how
# many rows the projection shortlists for the exact cosine.
_PROJECTED_DIMS = (2, 3, 4, 6, 8, 12)  # in 24ths of the dimension: 32 ... 192 of 384
_PROJECTED_SHORTLIST = (50, 100, 200, 400, 800, 1600, 3200, 6400)


def index_candidates(rows: int, dim: int, max_rows: int) -> list[Any]:
    """The ANN index kinds :meth:`~SearchPlanning.ensure_indexes` builds and compares for a new
    index: up to ``max_rows`` rows both HNSW kinds (over the float vectors, and over 8-bit
    scalar-quantized ones, :func:`ann_config`), above only :func:`ann_config`'s.

    IVF_FLAT and IVF_PQ are not candidates below 10M rows: on 20k real MiniLM passages (issue 19
    bench) IVF_FLAT scanned its few partitions slower than either HNSW and, like any IVF, missed
    out-of-distribution queries (real questions) far more than the calibration queries showed;
    IVF_PQ took 7x HNSW_SQ's build time and needed refine 10 for 0.99 at a higher p50.
    """
    from lancedb.index import HnswFlat

    default = ann_config(rows, dim)
    if rows > max_rows or type(default).__name__ != "HnswSq":
        return [default]
    parts = default.num_partitions
    return [default, HnswFlat(distance_type="cosine", num_partitions=parts)]


def _kind(config: Any) -> str:
    """The index type LanceDB lists for an index built with ``config`` (HnswSq -> IvfHnswSq)."""
    name = type(config).__name__
    return f"Ivf{name}" if name.startswith("Hnsw") else name


def _grid_for(index: str) -> tuple[dict[str, int], ...]:
    if index.startswith("IvfPq"):
        return _IVF_GRID
    if index in ("IvfHnswFlat", "HnswFlat"):
        return _HNSW_FLAT_GRID
    return _HNSW_GRID


def projected_grid(
    rows: int, dim: int, max_bytes: int | None = None, compact: bool = False
) -> list[tuple[int, list[int]]]:
    """``(dims, shortlists)`` to try for the projected search of a ``rows`` x ``dim`` table:
    projections well below the full dimension, shortlists at most a quarter of the rows; with
    ``max_bytes``, only projections whose copy (rows x dims float32) fits next to the exact copy
    (rows x dim) within that bound, or with ``compact`` whose compact copy fits
    (:func:`compact_bytes`)."""
    shortlists = [c for c in _PROJECTED_SHORTLIST if c <= rows // 4]
    dims = sorted({max(2, dim * part // 24) for part in _PROJECTED_DIMS})
    if max_bytes is not None:
        size = compact_bytes if compact else copies_bytes
        dims = [d for d in dims if size(rows, dim, d) <= max_bytes]
    return [(d, shortlists) for d in dims] if shortlists else []


def copies_bytes(rows: int, dim: int, dims: int = 0) -> int:
    """The memory of what a store keeps for a ``rows`` x ``dim`` table searched in memory: the
    exact copy (float32) and, for a projected plan, the projected one (``dims`` per row, counted
    as float32: an upper bound for the 8-bit scan, which holds about a quarter of that)."""
    return rows * (dim + dims) * 4


def compact_bytes(rows: int, dim: int, dims: int) -> int:
    """The memory of a compact copy (:class:`~contextkit.stores._vector_query.CompactRows`):
    the vectors as 8-bit codes and the 8-bit projected scan (1M x 384 with 128 directions:
    496 MiB, against 1.9 GiB for the float copy and its projected one)."""
    return rows * dim + rows * (dims + SCAN_ROW_BYTES)


COMPACT_RERANKS = (2, 4, 8, 16)
"""A compact copy's final step reads the float vectors of ``rerank`` rows (the best by their
8-bit vectors) from its spilled file: calibration tries these multiples of ``k``. On 1M real MiniLM
passages (300 real questions) the 8-bit vectors alone kept 0.993 of the exact top 10 within a
6,400-row shortlist; the exact cosine over their best 20 kept all of it (issue 19 bench).
Tight clusters need more (near ties the rounding reorders)."""

REREAD_COST = 256
"""What reading one row's float vector from the spilled file costs in the walk's units (rows x
dimensions scanned), per dimension: on 1M x 384 rows 20 rows took 0.12 ms (a ``pread`` each,
cached), ~6 us a row, while the 8-bit scan went through ~18 values a ns (issue 19 bench)."""


def scaled_params(params: Mapping[str, int], limit: int, k: int) -> dict[str, int]:
    """Calibrated parameters for a query of ``limit`` rows: ``ef`` (and the projected search's
    ``shortlist``) grow with the depth asked (calibrated for ``k``); ``ef`` stays at least
    ``limit x refine_factor``, as LanceDB requires."""
    out = dict(params)
    for name in ("shortlist", "rerank"):
        if name in out:
            out[name] = max(out[name], math.ceil(out[name] * limit / max(k, 1)))
    if "ef" in out:
        refine = out.get("refine_factor", 1)
        out["ef"] = max(out["ef"], math.ceil(out["ef"] * limit / max(k, 1)), limit * refine)
    return out


@dataclass(frozen=True)
class SearchPlan:
    """How vector queries on one table are answered, chosen by :meth:`LanceVectorStore.calibrate`
    from measurements on the table's own vectors (kept next to the tables, read by every process
    that serves it).

    ``method`` is the configuration that measured cheapest at the target recall:

    - ``"exact"``: cosine over an in-memory copy (numpy); recall 1 by construction;
    - ``"projected"``: over the same copy, the ``shortlist`` rows best by a projection onto
      ``dims`` directions, then the exact cosine over those (``params``: ``dims``,
      ``shortlist``, and ``bits``, the scan calibration measured: 8 or 32, absent in plans
      from before the 8-bit scan, which are served at 32); filtered queries are answered
      exactly. When the table's float copy does not fit ``exact_cache_max_bytes`` but a
      compact one does (:func:`compact_bytes`), the copy keeps the vectors in 8 bits and
      ``params`` add ``refine_bits`` (8) and ``rerank``: the shortlist is ranked by the 8-bit
      vectors and the ``rerank`` best by their float vectors (spilled to a file)
      (:func:`~contextkit.stores._vector_query.compact_search`); filtered queries then go to
      LanceDB, as for a table without a copy;
    - ``"ann"``: LanceDB's index (``index``) with ``params``: ``ef`` for HNSW (and
      ``refine_factor`` over 8-bit quantized vectors), ``nprobes``/``refine_factor`` for IVF_PQ.

    ``recall`` is the chosen approximate configuration's recall@``k`` against exact search over
    ``sample`` queries made from the table's rows (a quarter each: rows with their own row left
    out, midpoints of two rows, Gaussian draws with the rows' mean and covariance, whitened
    rows; the lowest recall of the four kinds); None for
    exact. ``p50_ms`` is the
    chosen configuration's measured p50; ``exact_p50_ms`` / ``ann_p50_ms`` those of exact
    search and the ANN (None: not measured). ``candidates``: every configuration measured
    (``method``, ``params``, ``recall``, ``reached``, ``p50_ms``, and ``vs_exact``: the paired
    ratio against exact search, the median over rounds of its time over exact search's in the
    same round), timed in interleaved rounds; the choice reads the paired ratios
    (:func:`~contextkit.stores._vector_timing.pick`).
    ``index_builds``: when the ANN index was created, the index kinds built and compared
    (``index``, ``build_s``, their calibrated ``params``, ``recall``; ``p50_ms`` and the
    per-round ``round_p50_ms``, all kinds timed with exact search in the same interleaved
    rounds: ``timed_with`` names the others, ``reference_p50_ms`` is exact search's p50 there;
    ``chosen``; the first build's ``floor_check``, when the floor was measured before it).
    ``index_skipped``: the index kinds :meth:`~SearchPlanning.ensure_indexes`
    did not build because they could not win (``index``, ``reason``, and the timings the
    decision read: ``floor_p50_ms``, LanceDB's per-query floor on the table, or the first
    kind's ``vs_best``; ``best`` and ``best_p50_ms``, the in-memory configuration it lost to).
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
    p50_ms: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    index_builds: list[dict[str, Any]] = field(default_factory=list)
    index_skipped: list[dict[str, Any]] = field(default_factory=list)

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
            "p50_ms": self.p50_ms,
            "exact_p50_ms": self.exact_p50_ms,
            "ann_p50_ms": self.ann_p50_ms,
            "calibrated_at": self.calibrated_at,
            "reason": self.reason,
            "candidates": [dict(c) for c in self.candidates],
            "index_builds": [dict(b) for b in self.index_builds],
            "index_skipped": [dict(b) for b in self.index_skipped],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchPlan:
        fields = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclass
class _Probe:
    """Calibration queries made from a table's rows, of four kinds (rows, midpoints, draws, whitened
    rows;
    see :meth:`SearchPlanning._probe`), and their exact top-k (ids)."""

    queries: np.ndarray  # (m, dim) float32, unit length
    own: list[str | None]  # the row a query was made from (left out of its ranking), or None
    kinds: np.ndarray  # (m,) the kind of each query: 0 row, 1 midpoint, 2 draw, 3 whitened row
    truth: list[set[str]]
    k: int
    target: float
    cache: ExactCache | None  # the in-memory copy when the table fits in memory
    columns: list[str]  # what a search returns (for timing the way serving searches)

    def wanted(self) -> np.ndarray:
        """Per kind: how many true top-k rows its queries have."""
        out = np.zeros(QUERY_KINDS, dtype=np.int64)
        for kind, want in zip(self.kinds, self.truth, strict=True):
            out[kind] += len(want)
        return out

    def allowed(self) -> np.ndarray:
        """Per kind: how many of them may be missed at the target recall."""
        return np.floor((1.0 - self.target) * self.wanted() + 1e-9).astype(np.int64)

    def recall(self, misses: np.ndarray) -> float:
        """The lowest recall over the kinds of queries, given the misses per kind."""
        wanted = self.wanted()
        return float(min(1 - m / w for m, w in zip(misses, wanted, strict=True) if w))

    def top(self, ids: Sequence[str], own: str | None) -> list[str]:
        return [i for i in ids if i != own][: self.k]


@dataclass
class IndexReport:
    """What :meth:`LanceVectorStore.ensure_indexes` did."""

    rows: int
    created: list[str] = field(default_factory=list)
    optimized: bool = False
    plan: SearchPlan | None = None  # how vector queries are answered now
    calibrated: bool = False  # the plan was measured in this call (not only carried on)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # index kinds not built, why


def vector_index_type(handle: Any) -> str | None:
    """The kind of the ANN index on ``vector`` (``IvfHnswSq``, ``IvfPq``, ...), None if none."""
    for index in handle.list_indices():
        if tuple(index.columns) == ("vector",):
            return str(index.index_type)
    return None


class SearchPlanning:
    @object_store("building indexes")
    def ensure_indexes(
        self, table: str, *, optimize_after: int = 1000, calibrate: bool = True
    ) -> IndexReport:
        """Create the missing indexes, and fold new rows into existing ones.

        - a full-text index on ``text`` (BM25; English stemming, stop words, lower-casing);
        - from ``ann_min_rows`` rows: the ANN index on ``vector`` (:func:`index_candidates`,
          cosine) and a BTree on ``id`` (speeds up the ``merge_insert`` join and
          ``fetch_vectors``). Up to ``index_candidates_max_rows`` rows only the index kinds
          that can win are built (:meth:`_choose_index`): none when the table's in-memory
          search already answers under LanceDB's per-query floor, the second HNSW kind only
          when the first came close; what was skipped and why is in the plan's
          ``index_skipped`` (and the report's ``skipped``), and is not measured again until
          the table grew by ``RECALIBRATE_GROWTH``;
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
            builds: list[dict[str, Any]] | None = None
            if rows >= self.ann_min_rows and ("vector",) not in indexed:
                report.skipped = self._skipped_before(table, rows)
                if not report.skipped:
                    configs = index_candidates(
                        rows, self.dimension(table), self.index_candidates_max_rows
                    )
                    chosen, builds, report.skipped = self._choose_index(table, handle, configs)
                    if chosen is not None:
                        report.created.append(f"{type(chosen).__name__}:vector")
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
        if calibrate and rows and builds is not None:
            plan = self.calibrate(
                table,
                index_builds=builds,
                index_skipped=report.skipped,
                sample=self.calibration_sample,
            )
            report.plan, report.calibrated = plan, True
        elif calibrate and rows:
            report.plan, report.calibrated = self.ensure_search_plan(table)
        return report

    def _skipped_before(self, table: str, rows: int) -> list[dict[str, Any]]:
        """The index kinds the table's plan records as skipped, while that still holds: the
        table is still searched in memory, no index was built since, and it grew less than
        ``RECALIBRATE_GROWTH`` since it was measured."""
        if not self.skip_unwinnable_indexes:
            return []
        plan = self._read_plan(table)
        if plan is None or plan.index is not None or not plan.index_skipped:
            return []
        if abs(rows - plan.rows) > RECALIBRATE_GROWTH * max(plan.rows, 1):
            return []
        if not self._searched_in_memory(rows, self.dimension(table)):
            return []
        return [dict(s) for s in plan.index_skipped]

    def _searched_in_memory(self, rows: int, dim: int) -> bool:
        """Whether a table of this size can be served from the in-memory copy: the copy is on
        and fits both the per-table and the process's bound."""
        need = copies_bytes(rows, dim)
        return (
            self.exact_search_max_rows > 0
            and need <= self.exact_cache_max_bytes
            and need <= self.exact_cache_total_bytes
        )

    def _compact_fits(self, rows: int, dim: int) -> bool:
        """Whether a compact copy of the projected search (8-bit vectors and scan) fits
        ``exact_cache_max_bytes`` where the float copy does not."""
        if self.exact_search_max_rows <= 0 or rows * dim * 4 <= self.exact_cache_max_bytes:
            return False
        grid = projected_grid(rows, dim, self.exact_cache_max_bytes, compact=True)
        return bool(grid) and int8_scan_available(rows * max(d for d, _ in grid))

    def _choose_index(
        self, table: str, handle: Any, configs: list[Any]
    ) -> tuple[Any | None, list[dict[str, Any]], list[dict[str, Any]]]:
        """Build the candidate index kinds that can win, calibrate each one's query
        parameters, and keep the cheaper; returns the kind in place (None: none built), the
        builds compared (``index_builds``) and the kinds skipped (``index_skipped``).

        One kind (above ``index_candidates_max_rows``, or IVF_PQ): built, nothing measured.
        Otherwise, when the table is searched in memory (:meth:`_searched_in_memory`), the
        exact and projected searches are first timed with LanceDB's per-query floor (a plain
        query returning ``k`` rows with the columns a search returns: an index query also
        plans and reads those rows, then searches): when the in-memory configuration the plan
        would keep is below the floor in the median round (paired ratio < 1), no index could
        win and none is built (20k-50k real passages: each HNSW build took 22-52 s, none was
        served). Else IVF_HNSW_SQ (cheaper to build, smaller) is built, and IVF_HNSW_FLAT only
        when SQ came within ``TIE_BAND x KIND_SPREAD`` of the in-memory best, where a kind
        ``KIND_SPREAD`` faster could still win (or SQ did not reach the target). Kinds built
        are timed with exact search in the same interleaved rounds, each on the table version
        that carries it, and the one in place is kept unless another that reached the target
        beats it by the band (:func:`~contextkit.stores._vector_timing.pick`; rebuilt then)."""
        if len(configs) == 1:
            handle.create_index("vector", config=configs[0])
            return configs[0], [], []
        probe = self._probe(table, handle, sample=self.calibration_sample)
        in_memory: dict[str, Callable[[np.ndarray], Any]] = {}
        if self.skip_unwinnable_indexes and self._searched_in_memory(
            handle.count_rows(), probe.queries.shape[1]
        ):
            in_memory = self._in_memory_paths(probe)
        best, floor = None, {}
        if in_memory:
            times = interleaved_rounds({**in_memory, "floor": self._floor_path(handle, probe)},
                                       probe.queries)  # fmt: skip
            medians, p50 = round_medians(times), overall_p50(times)
            best = pick(medians, PREFERENCE).chosen
            under = paired_ratio(medians[best], medians["floor"])
            floor = {
                "best": best,
                "best_p50_ms": round(p50[best], 3),
                "floor_p50_ms": round(p50["floor"], 3),
                "vs_floor": round(under, 3),
                "exact_p50_ms": round(p50["exact"], 3),
                "exact_vs_floor": round(paired_ratio(medians["exact"], medians["floor"]), 3),
            }  # recorded with the first build when one is made
            if under < 1.0:
                reason = (
                    f"not built: the {best} search measured {p50[best]:.2f} ms, {under:.2f}x "
                    f"LanceDB's per-query floor on this table ({p50['floor']:.2f} ms, a plain "
                    f"query of {probe.k} rows) in the median of {len(medians[best])} paired "
                    "rounds: no index query answers below that floor"
                )
                return None, [], [{"index": _kind(c), "reason": reason, **floor} for c in configs]
        builds: list[dict[str, Any]] = []
        paths: dict[str, Callable[[np.ndarray], Any]] = {}
        skipped: list[dict[str, Any]] = []
        for n, config in enumerate(configs):
            began = _perf()
            handle.create_index("vector", config=config, replace=True)
            build_s = _perf() - began
            kind = vector_index_type(handle) or _kind(config)
            params, recall, reached = self._walk_ann(handle, probe, _grid_for(kind))
            pinned = self._db.open_table(table, version=int(handle.version))
            paths[f"ann{n}"] = self._ann_path(pinned, probe, params)
            builds.append(
                {"index": kind, "build_s": round(build_s, 2), "params": params,
                 "recall": round(recall, 4), "reached": reached}
            )  # fmt: skip
            if n == 0 and best is not None:
                times = interleaved_rounds({"ann0": paths["ann0"], best: in_memory[best]},
                                           probe.queries)  # fmt: skip
                medians, p50 = round_medians(times), overall_p50(times)
                behind = paired_ratio(medians["ann0"], medians[best])
                builds[0].update(p50_ms=round(p50["ann0"], 3), timed_with=[best],
                                 round_p50_ms=[round(m, 3) for m in medians["ann0"]],
                                 floor_check=floor)  # fmt: skip
                if behind >= TIE_BAND * KIND_SPREAD and builds[0]["reached"]:
                    reason = (
                        f"not built: {kind} measured {behind:.2f}x the {best} search in the "
                        f"median of {len(medians[best])} paired rounds; the HNSW kinds measured "
                        f"within {KIND_SPREAD}x of each other, so none could come "
                        f"{1 - TIE_BAND:.0%} under it"
                    )
                    skipped = [
                        {"index": _kind(c), "reason": reason, "first": kind,
                         "vs_best": round(behind, 3), "best": best,
                         "best_p50_ms": round(p50[best], 3)}
                        for c in configs[1:]
                    ]  # fmt: skip
                    builds[0]["chosen"] = True
                    return config, builds, skipped
        if probe.cache is not None:
            paths["exact"] = self._exact_path(probe)
        times = interleaved_rounds(paths, probe.queries)
        medians, p50 = round_medians(times), overall_p50(times)
        order = list(paths)
        for n, build in enumerate(builds):
            build["p50_ms"] = round(p50[f"ann{n}"], 3)
            build["round_p50_ms"] = [round(m, 3) for m in medians[f"ann{n}"]]
            build["reference_p50_ms"] = round(p50["exact"], 3) if "exact" in p50 else None
            build["timed_with"] = [
                builds[int(o[3:])]["index"] if o.startswith("ann") else o
                for o in order
                if o != f"ann{n}"
            ]
        reached = [n for n, b in enumerate(builds) if b["reached"]] or list(range(len(builds)))
        # the kind in place (the last built) first: keeping it costs no rebuild
        choice = pick(medians, [f"ann{n}" for n in reversed(reached)])
        for n, build in enumerate(builds):
            if n in reached:
                build["vs_fastest"] = round(choice.vs_fastest[f"ann{n}"], 3)
        best_n = int(choice.chosen[3:])
        builds[best_n]["chosen"] = True
        if best_n != len(configs) - 1:
            began = _perf()
            handle.create_index("vector", config=configs[best_n], replace=True)
            builds[best_n]["rebuild_s"] = round(_perf() - began, 2)
        return configs[best_n], builds, skipped

    def _in_memory_paths(self, probe: _Probe) -> dict[str, Callable[[np.ndarray], Any]]:
        """Exact search over the in-memory copy, and the projected search when calibrated
        parameters reach the target (none without the copy)."""
        if probe.cache is None:
            return {}
        paths = {"exact": self._exact_path(probe)}
        projection, params, _, reached = self._walk_projected(probe, self.exact_cache_max_bytes)
        if projection is not None and reached:  # (never compact: the float copy fits here)
            paths["projected"] = self._projected_path(probe, projection, params, None)
        return paths

    # -- calibration ------------------------------------------------------------------------------

    def _spill_folder(self, table: str) -> str | None:
        """Where a compact copy's float vectors are spilled: the plans' folder of a local store
        (the tables' disk), the temporary folder for S3."""
        if self._local is None:
            return None
        folder = Path(self._plan_location(table)).parent
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

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
        self._put(where, json.dumps(plan.as_dict(), indent=1).encode())
        with self._lock:
            self._plans[table] = (plan, _monotonic())

    def _write_projection(self, table: str, projection: np.ndarray) -> None:
        """The projected search's directions, next to the plan (written before it)."""
        where = self._plan_location(table).removesuffix(".json") + ".projection.npy"
        buffer = io.BytesIO()
        np.save(buffer, projection.astype(np.float32))
        self._put(where, buffer.getvalue())

    def _put(self, where: str, data: bytes) -> None:
        """Write a calibration file whole: readers see the old file or the new one, never half
        (a local temp file renamed into place, named per process and call so that two serving
        processes calibrating at once do not share it; on S3 one PUT)."""
        if self._local is not None:
            target = Path(where)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.{uuid.uuid4().hex}.tmp")
            partial.write_bytes(data)
            partial.replace(target)
        else:
            assert self._loc is not None
            with self._loc.filesystem.open_output_stream(where) as f:
                f.write(data)

    def _read_projection(self, table: str) -> np.ndarray | None:
        where = self._plan_location(table).removesuffix(".json") + ".projection.npy"
        try:
            if self._local is not None:
                raw = Path(where).read_bytes()
            else:
                assert self._loc is not None
                with self._loc.filesystem.open_input_stream(where) as f:
                    raw = f.read()
            return np.load(io.BytesIO(raw), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def _delete_plan(self, table: str) -> None:
        where = self._plan_location(table)
        for path in (where, where.removesuffix(".json") + ".projection.npy"):
            try:
                if self._local is not None:
                    Path(path).unlink(missing_ok=True)
                else:
                    assert self._loc is not None
                    self._loc.filesystem.delete_file(path)
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

    @reads_table
    def search_plan(self, table: str) -> SearchPlan | None:
        """The table's calibrated search plan (None before :meth:`calibrate` ran on it)."""
        self._open(table)
        return self._read_plan(table)

    @object_store("calibrating a table")
    @reads_table
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
        index = vector_index_type(handle)
        plan = self._read_plan(table)
        stale = (
            force
            or plan is None
            or plan.index != index
            or abs(rows - plan.rows) > growth * max(plan.rows, 1)
        )
        if stale:
            return self.calibrate(table, sample=self.calibration_sample), True
        assert plan is not None
        if plan.version != version:
            plan = SearchPlan.from_dict({**plan.as_dict(), "version": version})
            self._write_plan(table, plan)
        return plan, False

    @object_store("calibrating a table")
    @reads_table
    def calibrate(
        self,
        table: str,
        *,
        k: int = CALIBRATION_K,
        sample: int = CALIBRATION_SAMPLE,
        target: float = CALIBRATION_TARGET,
        seed: int = 0,
        index_builds: list[dict[str, Any]] | None = None,
        index_skipped: list[dict[str, Any]] | None = None,
        methods: Sequence[str] = METHODS,
    ) -> SearchPlan:
        """Measure the candidate configurations on ``sample`` queries made from the table's own
        vectors and store the plan every process then follows (see :class:`SearchPlan`).

        A quarter of the sampled rows are queries themselves (their own row left out of both
        rankings), a quarter are paired up and their normalised midpoints are queries, as many
        queries are drawn from a Gaussian with the sample's mean and covariance, and a quarter
        of the rows are whitened (their deviation from the mean rescaled to equal variance in
        every direction); the target must be reached on each kind. The
        truth is exact cosine search (numpy over the in-memory copy when the table fits
        ``exact_cache_max_bytes``, else LanceDB's flat search). Candidates: exact search (when
        the copy fits); the projected search over the copy, its directions and shortlist raised
        step by step until recall@k reaches ``target``; the ANN index, its query parameters
        raised the same way (``ef``, then ``refine_factor`` over quantized vectors; ``nprobes``
        x ``refine_factor`` for IVF_PQ). Those that reach the target are timed with exact search
        in interleaved rounds, as serving calls them, and chosen by paired per-round ratios
        (:func:`~contextkit.stores._vector_timing.pick`): an approximate one must beat exact
        search by 10% in the median round (:data:`EXACT_MARGIN`), and one beats another only by
        the same band (:data:`PREFERENCE` within it). A table too large for the copy is served
        by the ANN even when no parameters reached the target. ``index_builds`` and
        ``index_skipped`` are what :meth:`ensure_indexes` built and skipped (default: the
        previous plan's while the index is the same); the ANN parameters calibrated for the
        kind built and kept are used as they are, not walked again.
        ``methods`` narrows the choice (exact search is measured all the same, as the reference;
        benchmarks use it to time one configuration); exact search stays the fallback when none
        of them reaches the target.
        """
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown search methods {sorted(unknown)}; use {list(METHODS)}")
        handle = self._open(table)
        version = int(handle.version)
        rows = handle.count_rows()
        index = vector_index_type(handle)
        now = datetime.now(UTC).isoformat()
        built_now = index_builds is not None  # by ensure_indexes just before: walks reusable
        if index_builds is None or index_skipped is None:
            previous = self._read_plan(table)
            same = previous is not None and previous.index == index
            if index_builds is None:
                index_builds = previous.index_builds if same else []
            if index_skipped is None:
                index_skipped = previous.index_skipped if same else []
        base = {"rows": rows, "version": version, "k": k, "target": target, "index": index,
                "calibrated_at": now, "index_builds": index_builds,
                "index_skipped": index_skipped}  # fmt: skip
        if rows <= k + 1 or self.exact_search_max_rows <= 0 and index is None:
            plan = SearchPlan(
                method="exact", sample=0, recall=None, params={}, exact_p50_ms=None,
                ann_p50_ms=None, reason="too few rows to measure", **base,
            )  # fmt: skip
            self._write_plan(table, plan)
            return plan
        probe = self._probe(table, handle, k=k, sample=sample, target=target, seed=seed)
        cache = probe.cache
        paths: dict[str, Callable[[np.ndarray], Any]] = {}
        candidates: dict[str, dict[str, Any]] = {}
        # the float copy was read only to calibrate a compact copy: exact search is not served
        limit = self.exact_cache_max_bytes
        compact = cache is not None and copies_bytes(*cache.matrix.shape) > limit
        if cache is not None and not compact:
            paths["exact"] = self._exact_path(probe)
            candidates["exact"] = {"method": "exact", "params": {}, "recall": 1.0,
                                   "reached": True}  # fmt: skip
        projection, skipped = None, ""
        if cache is not None:
            projection, params, recall, reached = self._walk_projected(
                probe, self.exact_cache_max_bytes
            )
            if projection is None and projected_grid(len(cache.ids), cache.matrix.shape[1]):
                what = (
                    "no compact copy (8-bit vectors and scan, with ONNX Runtime) fits"
                    if compact
                    else "no projection's copy fits beside the exact copy"
                )
                skipped = (
                    f"projected search not tried: {what} within exact_cache_max_bytes "
                    f"({self.exact_cache_max_bytes})"
                )
            elif params:
                candidates["projected"] = {
                    "method": "projected", "params": params, "recall": round(recall, 4),
                    "reached": reached,
                }  # fmt: skip
                if reached:
                    folder = self._spill_folder(table)
                    paths["projected"] = self._projected_path(probe, projection, params, folder)
        if index is not None:
            walked = built_now and _walked_for(index_builds, index, k, sample, target, seed, self)
            params, recall, reached = walked or self._walk_ann(handle, probe, _grid_for(index))
            candidates["ann"] = {"method": "ann", "index": index, "params": params,
                                 "recall": round(recall, 4), "reached": reached}  # fmt: skip
            if reached or cache is None:
                paths["ann"] = self._ann_path(handle, probe, params)
        times = interleaved_rounds(paths, probe.queries) if paths else {}
        p50, medians = overall_p50(times), round_medians(times)
        for name, ms in p50.items():
            candidates[name]["p50_ms"] = round(ms, 3)
            if "exact" in medians:
                candidates[name]["vs_exact"] = round(
                    paired_ratio(medians[name], medians["exact"]), 3
                )
        method, reason = self._choose(
            candidates, p50, index, target, cache is not None and not compact, tuple(methods),
            medians,
            floor=_floor_check(index_skipped) if index is None else None,
        )  # fmt: skip
        if skipped:
            reason = f"{reason}; {skipped}"
        if index_skipped:
            kinds = ", ".join(s["index"] for s in index_skipped)
            reason = f"{reason}; ANN index kinds {kinds} " + "; ".join(
                dict.fromkeys(s["reason"] for s in index_skipped)
            )
        chosen = candidates.get(method, {})
        if method == "projected":
            assert projection is not None
            self._write_projection(table, projection[:, : chosen["params"]["dims"]])
        plan = SearchPlan(
            method=method,
            sample=len(probe.own),
            recall=None if method == "exact" else chosen.get("recall"),
            params=dict(chosen.get("params", {})),
            p50_ms=None if method not in p50 else round(p50[method], 3),
            exact_p50_ms=None if "exact" not in p50 else round(p50["exact"], 3),
            ann_p50_ms=None if "ann" not in p50 else round(p50["ann"], 3),
            reason=reason,
            candidates=list(candidates.values()),
            **base,
        )
        self._write_plan(table, plan)
        with self._lock:  # searches pick the plan up with the next layout check
            self._layouts.pop(table, None)
        if method != "ann" and cache is not None and not compact:
            self._keep_copy(table, cache)  # within the process's budget, else not kept
        return plan

    @staticmethod
    def _choose(
        candidates: Mapping[str, Mapping[str, Any]],
        p50: Mapping[str, float],
        index: str | None,
        target: float,
        fits: bool,
        methods: tuple[str, ...] = METHODS,
        rounds: Mapping[str, Sequence[float]] | None = None,
        floor: Mapping[str, Any] | None = None,
    ) -> tuple[str, str]:
        """The configuration to serve, and why: from the per-round medians ``rounds`` (timed in
        the same rounds; default: each ``p50`` as one round) by
        :func:`~contextkit.stores._vector_timing.pick` with :data:`PREFERENCE`.

        Exact search first when ``floor`` (the check that skipped the index builds,
        :meth:`_choose_index`) measured it under LanceDB's per-query floor: no index query
        answers faster there, so an approximate configuration would trade recall for a p50
        already below LanceDB's default query. On 20k real passages the projected search's
        recall on real questions was what calibration measured (0.9957 against 0.996, at the
        0.995 target), so exact search there is the margin; the projected search is served where
        exact search is over the floor (50k and 200k real passages)."""
        if not fits:
            compact = "projected" in p50 and "projected" in methods
            if compact:  # a compact copy fits: it against the ANN, when that reached the target
                rivals = [
                    m
                    for m in ("projected", "ann")
                    if m in p50 and m in methods and candidates[m]["reached"]
                ]
                per_round = rounds if rounds is not None else {m: [v] for m, v in p50.items()}
                best = pick(per_round, [m for m in PREFERENCE if m in rivals]).chosen
                recall = candidates[best]["recall"]
                against = [f"{m} {p50[m]:.2f} ms" for m in rivals if m != best]
                return best, (
                    f"{best} reached recall {recall:.3f} at p50 {p50[best]:.2f} ms"
                    + (f" ({', '.join(against)})" if against else "")
                    + "; the table's float copy does not fit exact_cache_max_bytes, its "
                    "compact copy (8-bit vectors) does"
                )
            if index is None:
                return "exact", "no ANN index (LanceDB's flat search)"
            if candidates["ann"]["reached"]:
                return "ann", "the table is too large for exact search in memory"
            return "ann", (
                f"no ANN parameters reached recall {target} and the table is too large for "
                "exact search in memory"
            )
        approximate = [m for m in ("projected", "ann") if m in p50 and m in methods]
        under = None if floor is None else floor.get("exact_vs_floor")
        if approximate and "exact" in methods and under is not None and under < 1.0:
            return "exact", (
                f"exact search measured {floor['exact_p50_ms']:.2f} ms, {under:.2f}x LanceDB's "
                f"per-query floor on this table ({floor['floor_p50_ms']:.2f} ms) in the paired "
                "rounds that skipped the index builds: recall 1 under any index query's p50, "
                f"so no approximate configuration is served (the {approximate[0]} search "
                f"measured {p50[approximate[0]]:.2f} ms here)"
            )
        if not approximate:
            missed = [
                f"{m} reached only recall {c['recall']:.3f}"
                for m, c in candidates.items()
                if m != "exact" and not c["reached"]
            ]
            why = ([] if index is not None else ["no ANN index"]) + missed
            if not why:
                return "exact", f"no approximate configuration reached recall {target}"
            return "exact", "; ".join(why) + (f" (target {target})" if missed else "")
        per_round = rounds if rounds is not None else {m: [v] for m, v in p50.items()}
        if "exact" not in methods:
            best = pick(per_round, [m for m in PREFERENCE if m in approximate]).chosen
            recall = candidates[best]["recall"]
            allowed = ", ".join(methods)
            return best, f"{best} reached recall {recall:.3f} (methods allowed: {allowed})"
        choice = pick(per_round, [m for m in PREFERENCE if m == "exact" or m in approximate])
        n = len(per_round["exact"])
        if choice.chosen != "exact":
            best = choice.chosen
            ratio = paired_ratio(per_round[best], per_round["exact"])
            return best, (
                f"{best} reached recall {candidates[best]['recall']:.3f} at p50 "
                f"{p50[best]:.2f} ms, exact search {p50['exact']:.2f} ms ({ratio:.2f}x exact "
                f"in the median of {n} paired rounds)"
            )
        best = min(approximate, key=lambda m: paired_ratio(per_round[m], per_round["exact"]))
        ratio = paired_ratio(per_round[best], per_round["exact"])
        return "exact", (
            f"exact search measured {p50['exact']:.2f} ms; the fastest approximate "
            f"configuration ({best}, {p50[best]:.2f} ms) was {ratio:.2f}x exact in the median "
            f"of {n} paired rounds, not under {EXACT_MARGIN}x"
        )

    # -- calibration pieces -----------------------------------------------------------------------

    def _probe(
        self,
        table: str,
        handle: Any,
        *,
        k: int = CALIBRATION_K,
        sample: int = CALIBRATION_SAMPLE,
        target: float = CALIBRATION_TARGET,
        seed: int = 0,
    ) -> _Probe:
        """Calibration queries from ``sample`` of the table's rows, and their exact top-k."""
        version = int(handle.version)
        layout = self._layout(table, handle, version)
        index = vector_index_type(handle)
        rows = handle.count_rows()
        # The float copy, also when only a compact copy would be kept for serving: calibration
        # reads the table's vectors whole once (rows x dim x 4 bytes for its duration).
        fits = rows * layout.dim * 4 <= self.exact_cache_max_bytes or self._compact_fits(
            rows, layout.dim
        )
        cache = None
        if fits:  # the copy kept for serving when it is of this version, else a fresh one
            with self._lock:
                kept = self._exact.get(table)
            usable = kept is not None and kept.version == version and kept.matrix is not None
            cache = kept if usable else self._load_exact(table, version)
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(rows, size=min(sample, rows), replace=False))
        if cache is not None:
            picked, picked_ids = cache.matrix[picks], [cache.ids[i] for i in picks]
        else:
            got = handle.take_offsets(picks.tolist()).select(["id", "vector"]).to_arrow()
            picked, picked_ids = as_matrix(got.column("vector")), got.column("id").to_pylist()
        picked = picked / np.maximum(np.linalg.norm(picked, axis=1, keepdims=True), 1e-12)
        # Four kinds of queries, a quarter each, and the target must hold for each kind. A
        # query lies between documents, not on one: rows alone (their own row left out) made
        # the ANN look better than it is (on MiniLM vectors of real passages, ef 16 reached
        # 0.995 on rows but 0.87 on real questions). Midpoints of two rows were harder than the
        # real questions for HNSW over quantized vectors, but not for HNSW over float vectors
        # on clustered data, where queries away from every cluster missed most: draws from a
        # Gaussian with the sampled rows' mean and covariance stand for those. And real
        # questions rank by directions the passages vary little in (MiniLM, 20k passages: 65%
        # of a question's energy within the passages' top 96 directions, against 80% for rows),
        # which is what a projection onto those directions misses: whitened rows (a row's
        # deviation from the mean scaled by 1 / sqrt(variance) along each principal direction,
        # then back to its length) stand for those; on 300 real questions a projected search
        # at 20k rows reached 0.994 (96 directions, shortlist 800) and 0.998 (128, 400) where
        # calibration with whitened rows chose the latter (and half-whitened rows the former).
        quarter = len(picked) // 4
        pairs = picked[quarter : 2 * quarter]
        between = _unit(pairs + pairs[rng.permutation(len(pairs))])
        mean = picked.mean(axis=0)
        variance, axes = np.linalg.eigh(np.cov(picked, rowvar=False))
        # (a sample smaller than the dimension leaves directions without variance: floored)
        variance = np.maximum(variance, max(float(variance.max()), 1e-12) * 1e-4)
        normal = rng.standard_normal((quarter, len(mean))) * np.sqrt(variance)
        draws = _unit(mean + normal @ axes.T)
        deviation = picked[3 * quarter :] - mean
        whitened = ((deviation @ axes) / np.sqrt(variance)) @ axes.T
        whitened *= np.linalg.norm(deviation, axis=1, keepdims=True) / np.maximum(
            np.linalg.norm(whitened, axis=1, keepdims=True), 1e-12
        )
        whitened = _unit(mean + whitened)
        queries = np.concatenate([picked[:quarter], between, draws, whitened]).astype(np.float32)
        own: list[str | None] = [*picked_ids[:quarter], *([None] * (len(picked) - quarter))]
        kinds = np.repeat([0, 1, 2, 3], [quarter, len(between), len(draws), len(whitened)])
        ok = np.linalg.norm(queries, axis=1) > 0.5  # two opposite rows cancel out
        queries, kinds = queries[ok], kinds[ok]
        own = [q for q, keep in zip(own, ok, strict=True) if keep]
        probe = _Probe(queries, own, kinds, [], k, target, cache, layout.columns)
        for q, mine in zip(queries, own, strict=True):
            if cache is not None:
                found = exact_search(cache, q, [], k + 1)
            else:
                found = lance_vector_search(
                    handle, q, [], k + 1, ["id"], bypass_index=index is not None
                )
            probe.truth.append(set(probe.top([r["id"] for r in found], mine)))
        return probe

    @staticmethod
    def _walk_ann(
        handle: Any, probe: _Probe, grid: Sequence[Mapping[str, int]]
    ) -> tuple[dict[str, int], float, bool]:
        """The first parameters of ``grid`` whose recall reaches the target (or the last ones),
        their recall, and whether they reached it."""
        allowed = probe.allowed()
        recall = 0.0
        for candidate in grid:
            misses = np.zeros(QUERY_KINDS, dtype=np.int64)
            for q, own, want, kind in zip(
                probe.queries, probe.own, probe.truth, probe.kinds, strict=True
            ):
                found = lance_vector_search(
                    handle, q, [], probe.k + 1, ["id"], exact=False,
                    params=scaled_params(candidate, probe.k + 1, probe.k + 1),
                )  # fmt: skip
                misses[kind] += len(want - set(probe.top([r["id"] for r in found], own)))
                if misses[kind] > allowed[kind] and candidate is not grid[-1]:
                    break  # cannot reach the target: try the next parameters
            recall = probe.recall(misses)
            if (misses <= allowed).all():
                return dict(candidate), recall, True
        return dict(grid[-1]), recall, False

    @staticmethod
    def _walk_projected(
        probe: _Probe, max_bytes: int | None = None
    ) -> tuple[np.ndarray | None, dict[str, int], float, bool]:
        """The projected search's directions and the cheapest ``dims`` x ``shortlist`` (by rows
        scanned: rows x dims + shortlist x dim x 2) whose recall reaches the target; only
        projections whose copy fits next to the exact copy within ``max_bytes``. When the float
        copy itself does not fit ``max_bytes``, the compact copy's search is measured instead
        (:func:`~contextkit.stores._vector_query.compact_search`: the shortlist ranked by the
        8-bit vectors, the best ``rerank`` (:data:`COMPACT_RERANKS` x k) by the float ones;
        cost + rerank x dim x :data:`REREAD_COST`), with projections whose compact copy fits.
        A query made from a row reads one row more (its own row is left out), the others
        exactly ``rerank``, as a search of k rows does."""
        cache = probe.cache
        assert cache is not None
        rows, dim = cache.matrix.shape
        compact = max_bytes is not None and copies_bytes(rows, dim) > max_bytes
        grid = projected_grid(rows, dim, max_bytes, compact)
        bits = 8 if grid and int8_scan_available(rows * max(d for d, _ in grid)) else 32
        if not grid or compact and bits != 8:  # a compact copy is counted with the 8-bit scan
            return None, {}, 0.0, False
        projection = projection_of(cache.matrix, max(d for d, _ in grid))
        allowed = probe.allowed()
        index_of = {i: n for n, i in enumerate(cache.ids)}
        own_row = [index_of.get(o, -1) for o in probe.own]
        reranks = [0]  # none: the exact cosine over the whole shortlist
        if compact:
            refine_scale, refine_codes = quantize_vectors(cache.matrix)
            reranks = [m * probe.k for m in COMPACT_RERANKS]
        best: tuple[float, dict[str, int], float] | None = None
        last: tuple[dict[str, int], float] = ({}, 0.0)

        def params_of(measured: dict[str, int], shortlist: int, rerank: int) -> dict[str, int]:
            extra = {"refine_bits": 8, "rerank": rerank} if compact else {}
            return {**measured, **extra, "shortlist": shortlist}

        for dims, shortlists in grid:
            if best is not None and rows * dims >= best[0]:
                break  # even the shortest shortlist costs more than the best found
            scan = ProjectedScan(np.ascontiguousarray(cache.matrix @ projection[:, :dims]), bits)
            queries = probe.queries @ projection[:, :dims]
            misses = np.zeros((len(shortlists), len(reranks), QUERY_KINDS), dtype=np.int64)
            longest = shortlists[-1]
            for start in range(0, len(queries), 32):
                scores = scan.scores(queries[start : start + 32]).T  # rows x chunk
                # every row's exact cosine for the chunk, in one product: gathering the
                # shortlist's rows per query took 10x longer (20k x 384, 400 queries)
                exact_all = cache.matrix @ probe.queries[start : start + 32].T
                for j in range(scores.shape[1]):
                    i = start + j
                    column = scores[:, j]
                    ranked = np.argpartition(column, rows - longest)[rows - longest :]
                    ranked = ranked[np.argsort(-column[ranked], kind="stable")]
                    exact = exact_all[ranked, j]
                    if compact:
                        folded = probe.queries[i] * refine_scale
                        gathered = np.take(refine_codes, ranked, axis=0)
                        approximate = gathered.astype(np.float32) @ folded
                    want, kind = probe.truth[i], probe.kinds[i]
                    extra = int(own_row[i] >= 0)  # its own row takes one of the slots
                    for n, c in enumerate(shortlists):
                        for r, rerank in enumerate(reranks):
                            deep = rerank + extra
                            kept = np.arange(c)  # of ranked: the rows the exact cosine ranks
                            if compact and c > deep:
                                kept = np.argpartition(-approximate[:c], deep - 1)[:deep]
                            part = exact[kept]
                            take = min(probe.k + 1, len(part))
                            top = np.argpartition(-part, take - 1)[:take]
                            top = kept[top[np.argsort(-part[top], kind="stable")]]
                            got = [cache.ids[ranked[t]] for t in top if ranked[t] != own_row[i]]
                            misses[n, r, kind] += len(want - set(got[: probe.k]))
            measured = {"dims": dims, "bits": scan.bits}  # the scan the shortlists were timed on
            last = (params_of(measured, longest, reranks[-1]), probe.recall(misses[-1, -1]))
            for n, c in enumerate(shortlists):
                for r, rerank in enumerate(reranks):
                    if not (misses[n, r] <= allowed).all():
                        continue
                    cost = rows * dims + 2 * c * dim + rerank * REREAD_COST * dim
                    if best is None or cost < best[0]:
                        best = (cost, params_of(measured, c, rerank), probe.recall(misses[n, r]))
        if best is None:
            return projection, last[0], float(last[1]), False
        return projection, best[1], float(best[2]), True

    @staticmethod
    def _exact_path(probe: _Probe) -> Callable[[np.ndarray], Any]:
        cache = probe.cache
        assert cache is not None
        return lambda q: exact_search(cache, q, [], probe.k)

    @staticmethod
    def _projected_path(
        probe: _Probe, projection: np.ndarray, params: Mapping[str, int], folder: str | None
    ) -> Callable[[np.ndarray], Any]:
        """The projected search as calibrated, over ``probe``'s copy (a compact copy made from
        it when ``params`` say so, its float vectors' file in ``folder``)."""
        cache = probe.cache
        assert cache is not None
        if is_compact(params):
            small = compact_copy(cache, projection[:, : params["dims"]], "calibration", folder)
            shortlist, rerank = params["shortlist"], params["rerank"]
            return lambda q: compact_search(small, q, probe.k, shortlist, rerank)
        trial = with_projection(
            cache, projection[:, : params["dims"]], "calibration", scan_bits(params)
        )
        return lambda q: projected_search(trial, q, probe.k, params["shortlist"])

    @staticmethod
    def _floor_path(handle: Any, probe: _Probe) -> Callable[[np.ndarray], Any]:
        """LanceDB's per-query floor on this table: a plain query returning ``k`` rows with the
        columns a search returns (what every index query does besides its search)."""
        return lambda q: handle.search().select(probe.columns).limit(probe.k).to_arrow()

    @staticmethod
    def _ann_path(
        handle: Any, probe: _Probe, params: Mapping[str, int]
    ) -> Callable[[np.ndarray], Any]:
        scaled = scaled_params(params, probe.k, probe.k)
        return lambda q: lance_vector_search(
            handle, q, [], probe.k, probe.columns, exact=False, params=scaled
        )


def _walked_for(
    builds: Sequence[Mapping[str, Any]],
    index: str,
    k: int,
    sample: int,
    target: float,
    seed: int,
    store: Any,
) -> tuple[dict[str, int], float, bool] | None:
    """The ANN parameters :meth:`SearchPlanning._choose_index` calibrated for the index in
    place, when they hold for this calibration: the kind kept and not rebuilt since, measured
    on the same calibration queries (the default k, sample, target and seed)."""
    same_probe = (k, sample, target, seed) == (
        CALIBRATION_K,
        store.calibration_sample,
        CALIBRATION_TARGET,
        0,
    )
    if not same_probe:
        return None
    for build in builds:
        if build.get("chosen") and build["index"] == index and "rebuild_s" not in build:
            return dict(build["params"]), float(build["recall"]), bool(build["reached"])
    return None


def _floor_check(skipped: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The floor check recorded with the index kinds skipped under LanceDB's per-query floor
    (with exact search's time; older records have none), or None."""
    return next((s for s in skipped if "exact_vs_floor" in s), None)


def _unit(m: np.ndarray) -> np.ndarray:
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def with_projection(
    cache: ExactCache, projection: np.ndarray, made_for: str, bits: int
) -> ExactCache:
    """A view of ``cache`` carrying the projected copy for ``projection`` (dim x dims), scanned
    at ``bits`` (:class:`~contextkit.stores._vector_query.ProjectedScan`)."""
    scan = ProjectedScan(np.ascontiguousarray(cache.matrix @ projection, dtype=np.float32), bits)
    return replace(cache, projected_for=made_for, projection=projection, scan=scan)


def compact_copy(
    cache: ExactCache, projection: np.ndarray, made_for: str, folder: str | None = None
) -> ExactCache:
    """A compact copy (:class:`~contextkit.stores._vector_query.CompactRows`: 8-bit vectors,
    the 8-bit scan over ``projection`` and the float vectors in a file) made from the
    float copy ``cache`` (the file in ``folder``): what calibration times. Serving builds the
    same codes reading the table in batches (``VectorSearch._load_compact``)."""
    matrix = cache.matrix
    assert matrix is not None
    scan = ProjectedScan(matrix @ projection, bits=8)
    spill = SpilledVectors(*matrix.shape, folder)
    spill.write(0, matrix)
    scale, codes = quantize_vectors(matrix)
    rows = CompactRows(codes, scale, spill)
    return replace(
        cache, matrix=None, projected_for=made_for, projection=projection, scan=scan, compact=rows
    )


def is_compact(params: Mapping[str, int]) -> bool:
    """Whether a projected plan's parameters are a compact copy's (8-bit vectors)."""
    return params.get("refine_bits") == 8


def scan_bits(params: Mapping[str, int]) -> int:
    """The scan a projected plan was calibrated with: ``bits`` in its parameters (8 or 32); 32
    for plans calibrated before the 8-bit scan, which record none."""
    return int(params.get("bits", 32))
