"""Indexes and the search plan: which indexes a table gets (:func:`ann_config`), and how its vector
queries are answered (:class:`SearchPlan`: exact or ANN, and the ANN's query parameters), measured
on the table's own vectors by :meth:`SearchPlanning.calibrate` and stored next to the tables for
every process. A mixin of :class:`~contextkit.stores.vector.LanceVectorStore`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from contextkit.stores._vector_common import (
    as_matrix,
    object_store,
    reads_table,
)
from contextkit.stores._vector_query import exact_search, lance_vector_search

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


def scaled_params(params: Mapping[str, int], limit: int, k: int) -> dict[str, int]:
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
class IndexReport:
    """What :meth:`LanceVectorStore.ensure_indexes` did."""

    rows: int
    created: list[str] = field(default_factory=list)
    optimized: bool = False
    plan: SearchPlan | None = None  # how vector queries are answered now
    calibrated: bool = False  # the plan was measured in this call (not only carried on)


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
        - from ``ann_min_rows`` rows: the ANN index on ``vector`` (:func:`ann_config`, cosine)
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
                config = ann_config(rows, self.dimension(table))
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
            return self.calibrate(table), True
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
        index = vector_index_type(handle)
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
            picked, picked_ids = as_matrix(got.column("vector")), got.column("id").to_pylist()
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
                found = exact_search(cache, q, [], k + 1)
            else:
                found = lance_vector_search(
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
                    found = lance_vector_search(
                        handle, q, [], k + 1, ["id"], exact=False,
                        params=scaled_params(candidate, k + 1, k + 1),
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
