"""The vector search a ``LanceVectorStore`` runs for a table, done with the raw libraries.

Benchmarks compare the endpoints with "the same work, done raw". For the search that work
depends on the table: the store reads its calibrated plan (``_contextkit_search/<table>.json``
next to the tables, written by ``ensure_indexes``) and its settings, and answers from

* ``exact``: an in-memory numpy copy (cosine over every row), when the plan says exact, or
  when there is no plan and the table has at most ``exact_search_max_rows`` rows;
* ``projected``: the same copy, a shortlist by a projection onto a few directions (stored next
  to the plan as ``<table>.projection.npy``; scored in 8 bits by ONNX Runtime when the plan
  says ``bits: 8``), then exact cosine over the shortlist;
* ``ann``: LanceDB's vector index, with the plan's query parameters (``ef``, ``refine_factor``,
  ``nprobes``) scaled to the depth asked, as the store scales them;
* ``flat``: LanceDB without the index.

:func:`search_path` works that out from the files and settings (not from the store's code), and
:func:`raw_search` returns the search done with numpy or LanceDB alone, returning the k rows'
columns with ``_distance``. The plan is read as JSON; its format is the store's, and so is the
scaling of its parameters to the depth asked (``scaled_params``). Assumed: the table's copy is
let in by the store's memory bounds (one table per benchmark); tests/bench/test_raw_search.py
checks that the raw search returns the store's top k.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLAN_FOLDER = "_contextkit_search"
HIDDEN = ("vector", "content_hash", "row_hash")


def read_plan(vector_path: Path, table: str) -> dict[str, Any] | None:
    try:
        return json.loads((vector_path / PLAN_FOLDER / f"{table}.json").read_text())
    except FileNotFoundError:
        return None


def search_path(store, tbl, plan: dict[str, Any] | None) -> str:
    """Which search the store runs for an unfiltered vector query on ``tbl``: ``exact``,
    ``projected``, ``ann`` or ``flat`` (see the module docstring)."""
    rows = tbl.count_rows()
    dim = tbl.schema.field("vector").type.list_size
    indexed = any(tuple(index.columns) == ("vector",) for index in tbl.list_indices())
    if store.exact_search_max_rows > 0:
        if plan is None:
            limit = store.exact_search_max_rows
        elif plan["method"] == "ann":
            limit = 0
        else:
            limit = max(store.exact_search_max_rows, store.exact_cache_max_bytes // (4 * dim))
        if rows <= limit:
            if plan is not None and plan["method"] == "projected":
                dims = plan["params"]["dims"]
                if rows * (dim + dims) * 4 <= store.exact_cache_max_bytes:
                    return "projected"
            return "exact"
    if indexed and (plan is None or plan["method"] == "ann"):
        return "ann"
    return "flat"


def best_rows(scores, n: int):
    """The indices of the ``n`` highest scores, as fast as numpy alone gets them: from 32,768
    scores on, keep the scores at or above a cut read from 4,096 evenly spaced ones (set well
    below where the n-th best of them should fall), then partition only those; a full
    ``argpartition`` when too few pass. The store does the same (its ``top_rows``), so the raw
    projected search is not handicapped by a full partition of every score (1.5 ms at 200k)."""
    import math

    import numpy as np

    total = len(scores)
    if total >= 32768:
        sample = scores[:: total // 4096]
        expected = n * len(sample) / total
        place = len(sample) - 1 - min(len(sample) - 1, math.ceil(expected + 4 * expected**0.5 + 8))
        cut = np.partition(sample, place)[place]
        kept = np.flatnonzero(scores >= cut)
        if len(kept) >= n:
            return kept[np.argpartition(scores[kept], len(kept) - n)[len(kept) - n :]]
    return np.argpartition(scores, total - n)[total - n :]


def int8_scan(reduced):
    """A callable scoring a projected query against ``reduced`` (rows x dims) as the store's
    8-bit scan does (``bits: 8`` in the plan), with onnx and ONNX Runtime alone: each direction
    rounded to -63..63 on its own scale (no 16-bit saturation on CPUs without VNNI), the query
    (those scales folded in) to 8 bits on its own, ``MatMulInteger`` on the calling thread (and
    a second one past 32 MiB of codes). The store's ``ProjectedScan`` does the same: change
    both together."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    top = np.abs(reduced).max(axis=0)
    scale = np.where(top > 0, top / 63, 1).astype(np.float32)
    codes = np.clip(np.rint(reduced / scale), -63, 63).astype(np.int8)
    rows, dims = reduced.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["q", "rows", "zero"], ["s"])],
        "scan",
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, dims])],
        [helper.make_tensor_value_info("s", TensorProto.INT32, [1, rows])],
        [
            numpy_helper.from_array(np.ascontiguousarray(codes.T), "rows"),
            numpy_helper.from_array(np.array(128, dtype=np.uint8), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1 if codes.nbytes <= 32 << 20 else 2  # past the cache: 2
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(model.SerializeToString(), options)

    def score(projected):
        folded = projected * scale
        step = np.abs(folded).max() / 127 or 1.0
        q = (np.clip(np.rint(folded / step), -127, 127) + 128).astype(np.uint8)
        return session.run(None, {"q": q[None, :]})[0][0]

    return score


class RawInMemory:
    """Cosine top k in plain numpy over the table's vectors, normalized once (what the store's
    in-memory copy holds), exact or through a projected shortlist; returns the k rows' columns
    and distances, ties ordered by id as the store orders them."""

    def __init__(
        self, tbl, top_k: int, projection=None, shortlist: int | None = None, bits: int = 32
    ) -> None:
        import numpy as np

        data = tbl.to_arrow()
        vectors = data.column("vector").combine_chunks()
        dim = vectors.type.list_size
        matrix = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        matrix = matrix.reshape(len(vectors), dim)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        self.matrix = np.ascontiguousarray(matrix / norms)
        self.rows = data.drop_columns([c for c in HIDDEN if c in data.column_names])
        self.rows = self.rows.combine_chunks()
        self.ids = np.asarray(self.rows.column("id").to_pylist(), dtype=object)
        self.top_k = top_k
        self.projection = projection
        self.shortlist = shortlist
        self.reduced = (
            np.ascontiguousarray(self.matrix @ projection, dtype=np.float32)
            if projection is not None
            else None
        )
        # 8 bits unless the codes are over what one ONNX model holds (the store scans in float32
        # there too)
        eight = bits == 8 and self.reduced is not None and self.reduced.size <= 1 << 30
        self.scan = int8_scan(self.reduced) if eight else None

    def __call__(self, vector) -> list[dict]:
        import numpy as np
        import pyarrow as pa

        query = np.asarray(vector, dtype=np.float32)
        query = query / np.linalg.norm(query)
        rows_of = None
        # einsum: single-threaded; ``matrix @ query`` goes through multi-threaded BLAS, measured
        # 2-6x slower on these 2 busy cores (the store uses einsum for the same reason).
        if self.reduced is None:
            similarity = np.einsum("ij,j->i", self.matrix, query)
        else:
            if self.scan is not None:
                scores = self.scan(query @ self.projection)
            else:
                scores = np.einsum("ij,j->i", self.reduced, query @ self.projection)
            rows_of = best_rows(scores, min(self.shortlist, len(scores)))
            similarity = np.einsum("ij,j->i", self.matrix[rows_of], query)
        k = min(self.top_k, len(similarity))
        # the k best plus any within rounding of the k-th, ordered by (distance, id)
        kth = np.partition(similarity, len(similarity) - k)[len(similarity) - k]
        candidates = np.flatnonzero(similarity >= kth - 1e-6)
        distances = (np.float32(1.0) - similarity[candidates]).astype(np.float32)
        if rows_of is not None:
            candidates = rows_of[candidates]
        ids = self.ids[candidates]
        order = sorted(range(len(candidates)), key=lambda i: (distances[i], ids[i]))
        chosen = order[:k]
        rows = self.rows.take(pa.array(candidates[chosen], pa.int64())).to_pylist()
        for row, i in zip(rows, chosen, strict=True):
            row["_distance"] = float(distances[i])
        return rows


class RawLance:
    """LanceDB's vector query with the store's parameters: cosine, ``limit(k)``, the plan's
    ``ef``/``refine_factor``/``nprobes`` (``ann``), or the flat scan (``flat``)."""

    def __init__(self, tbl, top_k: int, params: dict[str, int] | None, flat: bool) -> None:
        self.tbl, self.top_k, self.params, self.flat = tbl, top_k, params or {}, flat
        self.columns = [f.name for f in tbl.schema if f.name not in HIDDEN]

    def __call__(self, vector) -> list[dict]:
        builder = (
            self.tbl.search(vector, vector_column_name="vector")
            .distance_type("cosine")
            .limit(self.top_k + 8 if self.flat else self.top_k)  # flat: ties ordered by id
            .select([*self.columns, "_distance"])
        )
        for name, value in self.params.items():
            builder = getattr(builder, name)(int(value))
        if self.flat:
            builder = builder.bypass_vector_index()
        rows = builder.to_arrow().to_pylist()
        rows.sort(key=lambda r: (r["_distance"], r["id"]))
        return rows[: self.top_k]


def raw_search(store, vector_path: Path, table: str, top_k: int) -> tuple[str, Any]:
    """``(path, search)``: the store's path for ``table`` and that search done raw, a callable
    from a query vector to the top ``top_k`` rows (columns and ``_distance``)."""
    import lancedb
    import numpy as np

    # The plan's parameters scaled to the depth asked, as the store scales them (its function:
    # the parameters are the store's; the searches below are numpy's and LanceDB's own).
    from contextkit.stores._vector_plan import scaled_params as scaled

    tbl = lancedb.connect(str(vector_path)).open_table(table)
    plan = read_plan(vector_path, table)
    path = search_path(store, tbl, plan)
    if path == "exact":
        return path, RawInMemory(tbl, top_k)
    if path == "projected":
        assert plan is not None
        projection = np.load(vector_path / PLAN_FOLDER / f"{table}.projection.npy")
        shortlist = scaled(plan["params"], top_k, plan["k"])["shortlist"]
        bits = plan["params"].get("bits", 32)  # 32: plans from before the 8-bit scan
        return path, RawInMemory(tbl, top_k, projection.astype(np.float32), shortlist, bits)
    params = scaled(plan["params"], top_k, plan["k"]) if path == "ann" and plan else None
    return path, RawLance(tbl, top_k, params, flat=path == "flat")


LABELS = {
    "exact": "numpy exact search over the same vectors (the store's in-memory copy)",
    "projected": "numpy projected shortlist + exact rescoring (the store's calibrated plan)",
    "ann": "LanceDB index query, the plan's parameters (the store's path: ANN index)",
    "flat": "LanceDB flat query (the store's path: no index)",
}
